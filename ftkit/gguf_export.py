"""GGUF export (llama.cpp, Ollama, LM Studio), in Python: the `gguf` package's writer, tensor names and quantizers.

A model folder (a merged run, or any) is written streamed: the tensor infos from the safetensors headers, then
each tensor's data in blocks of rows, renamed to llama.cpp's names (gguf.get_tensor_name_map), Llama-style
query/key rows reordered for llama.cpp's rotary layout, Gemma's norms shifted, quantized (f16, bf16, q8_0, q5_x,
q4_x; the package cannot write K-quants) where a tensor's shape allows. Its tokenizer (SentencePiece or
byte-fallback BPE as llama.cpp's llama vocabulary, byte-level BPE as its gpt2 one, special and added tokens) and
chat template go into the metadata. The file is written under a temporary name and renamed into place once a
check passed: transformers loads it back and must tokenize the probes the same and give the same logits (a model
too large to hold twice in free memory: every tensor read back within the quant's tolerance). An Ollama Modelfile
is written beside it (ftkit/ollama.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftkit.errors import ModelError
from ftkit.model import quiet


@dataclass(frozen=True)
class Arch:
    gguf_name: str              # gguf.MODEL_ARCH member name
    permute_qk: bool = False    # llama.cpp's LLaMA rope wants q/k rows interleaved per head (NEOX-style models do not)
    norm_shift: float = 0.0     # added to every norm weight (Gemma's models scale by 1 + w, llama.cpp by w)
    readable: bool = True       # transformers reads this architecture's GGUF files back (the logits check)


ARCHS = {"llama": Arch("LLAMA", permute_qk=True), "mistral": Arch("LLAMA", permute_qk=True), "qwen2": Arch("QWEN2"),
         "qwen3": Arch("QWEN3"), "gemma": Arch("GEMMA", norm_shift=1.0, readable=False),
         "gemma2": Arch("GEMMA2", norm_shift=1.0), "gemma3_text": Arch("GEMMA3", norm_shift=1.0),
         "phi3": Arch("PHI3")}
REFUSED = {"gemma3": "Gemma 3 with its vision tower: export the language model alone (model_type gemma3_text)"}
QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")  # what the gguf package can write
UNWRITABLE = ("q2_k", "q3_k", "q4_k", "q4_k_m", "q4_k_s", "q5_k", "q5_k_m", "q6_k")  # it reads them, cannot write them
# the check of a written file: logits of the file (loaded back by transformers) against the model's, as a share of
# the largest logit; the quantized types must also pick the same next token on each probe (q8_0) or stay close
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "bf16": 2e-2, "q8_0": 5e-2, "q5_1": 0.15, "q5_0": 0.15, "q4_1": 0.25,
             "q4_0": 0.25}
PROBES = ["What is LoRA?", "你好，请介绍一下你自己。"]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (each head's first half, then second half) -> llama.cpp's (pairs interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _source(file: Path, key: str, arch: Arch, heads: int, kv_heads: int) -> np.ndarray:
    """A model tensor as llama.cpp wants it, in f32: q/k rows reordered (LLaMA-style rope), norms shifted (Gemma)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        tensor = f.get_tensor(key).to(torch.float32).numpy()
    if arch.permute_qk and key.endswith("q_proj.weight"):
        return _permute(tensor, heads)
    if arch.permute_qk and key.endswith("k_proj.weight"):
        return _permute(tensor, kv_heads)
    if arch.norm_shift and key.endswith("norm.weight"):
        return tensor + arch.norm_shift
    return tensor


def _qtype(quant: str, shape):
    """The GGML type a tensor is written in: 1-D tensors (norms, biases) stay f32; a matrix whose rows do not split
    into the type's blocks falls back to f16."""
    import gguf

    if len(shape) == 1 or quant == "f32":
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[quant.upper()]
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


def check_quant(quant: str) -> None:
    if quant in UNWRITABLE:
        raise ModelError(f"quant: {quant} is a K-quant, which the gguf package reads but cannot write; export f16 "
                         "and run llama.cpp's llama-quantize on it, or choose one of " + ", ".join(QUANTS))
    if quant not in QUANTS:
        raise ModelError(f"quant: {quant!r} is not one of {', '.join(QUANTS)}")


@quiet()
def export_gguf(model, out=None, quant: str = "q8_0", adapter=None, console: bool = True) -> Path:
    """Write `model` (a model folder; a run or an adapter is merged first) as a GGUF file, check it, keep it.

    The file is written as NAME.partial.gguf; transformers loads it back and its tokenizer must encode the probes
    to the same ids and its logits must match the model's (within TOLERANCE[quant] of the largest logit; q8_0 also
    the same greedy token); only then is it renamed to `out`. Returns the path."""
    import tempfile

    from ftkit.generation import where
    from ftkit.merging import merge

    check_quant(quant)
    base, adapters = where(model, adapter)
    with tempfile.TemporaryDirectory(prefix="ftkit-gguf-") as scratch:
        folder = Path(merge(adapters, Path(scratch) / "merged", console=False)) if adapters else Path(base)
        from ftkit.model import resolve

        folder = Path(resolve(str(folder), key="model"))
        if out is None:  # beside the run, or the model folder given; a model given by name (tiny, a hub id): outputs/
            out = Path(adapters.split(",")[-1]).parent / f"model-{quant}.gguf" if adapters else \
                folder / f"model-{quant}.gguf" if Path(str(model)).is_dir() else \
                Path("outputs") / f"{folder.name}-{quant}.gguf"
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".partial.gguf")
        try:
            add_bos, sources = write(folder, tmp, quant)
            proof = verify(folder, tmp, quant, sources)
            recipe, about = _modelfile(folder, out, add_bos)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(out)
    recipe_file = out.with_suffix(".Modelfile")
    recipe_file.write_text(recipe, encoding="utf-8")
    if console:
        print(f"exported {folder} -> {out} ({quant}, {out.stat().st_size / 2**20:,.1f} MiB)\n  check: {proof}\n"
              f"  Ollama: {recipe_file.name} ({about}); next: cd {out.parent} && ollama create "
              f"{_ollama_name(out)} -f {recipe_file.name}")
    return out


def _ollama_name(out: Path) -> str:
    parent = out.parent.name if out.stem.startswith("model-") else out.stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in parent.lower()) or "ftkit-model"


def _modelfile(folder: Path, out: Path, add_bos: bool) -> tuple[str, str]:
    """The Modelfile for `out`: the chat template ftkit chats with for `folder` (the run's, else the tokenizer's)."""
    from ftkit.errors import FtkitError
    from ftkit.folders import run_config_of
    from ftkit.generation import _tokenizer_and_template
    from ftkit.ollama import modelfile

    try:
        tokenizer, template = _tokenizer_and_template(str(folder), None, None, run_config_of(folder))
    except FtkitError as e:
        return f"FROM ./{out.name}\n", f"no TEMPLATE: {e}"
    return modelfile(out, template, add_bos=add_bos, bos=tokenizer.bos_token)


def write(folder: Path, out: Path, quant: str) -> tuple[bool, dict]:
    """The GGUF file itself: metadata, tokenizer, then the tensors one by one from the safetensors files. Returns
    whether the file tells llama.cpp to add the bos token itself, and where each of its tensors came from."""

    import gguf
    from safetensors import safe_open

    config = read_config(folder)
    kind = config["model_type"]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights to export")
    arch = ARCHS[kind]
    gguf_arch = gguf.MODEL_ARCH[arch.gguf_name]
    layers = config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    names = gguf.get_tensor_name_map(gguf_arch, layers)

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf_arch])
    writer.add_name(folder.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    rope = config.get("rope_parameters") or {}
    rope = rope.get("full_attention", rope)  # Gemma 3: the global layers' (local ones use llama.cpp's 10000)
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("sliding_window") and kind.startswith("gemma"):
        writer.add_sliding_window(config["sliding_window"])
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key):
            getattr(writer, f"add_{key}")(config[key])
    writer.add_vocab_size(config["vocab_size"])
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}.get(quant, f"MOSTLY_{quant.upper()}")
    writer.add_file_type(gguf.LlamaFileType[file_type])
    add_bos = _add_tokenizer(writer, folder, config["vocab_size"])
    try:
        # streamed: every tensor's name, shape and type first (from the safetensors headers), then the data one
        # block of rows at a time, so memory holds a block (as f32 and quantized), never a whole tensor or model
        plan = []  # (llama.cpp's name, file, key, type, bytes) per tensor, in the file's order
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    found = names.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
                    if found is None:
                        raise ModelError(f"{file.name}: tensor {key} has no llama.cpp name for {kind}")
                    shape = f.get_slice(key).get_shape()
                    qtype = _qtype(quant, shape)
                    row = gguf.quants.quantize(np.zeros((1, shape[-1]), np.float32), qtype)  # the type's layout
                    nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * row.nbytes
                    writer.add_tensor_info(found[1], (*shape[:-1], row.shape[-1]), row.dtype, nbytes, raw_dtype=qtype)
                    plan.append((found[1], file, key, qtype, nbytes))
        from ftkit.memory import check_room

        check_room("the GGUF file", 0, sum(n for *_, n in plan), out.parent, "")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        align = writer.data_alignment
    finally:
        writer.close()
    # the data section, as GGUF lays it out: each tensor's bytes at an offset aligned to general.alignment, in the
    # order of the infos above (what GGUFWriter.write_tensor_data does with a whole tensor, here block by block)
    with open(out, "ab") as fout:
        for _, file, key, qtype, nbytes in plan:
            fout.write(bytes(gguf.GGUFWriter.ggml_pad(fout.tell(), align) - fout.tell()))
            written = 0
            for block in _blocks(file, key, arch, heads, kv_heads):
                data = gguf.quants.quantize(block, qtype)
                data.tofile(fout)
                written += data.nbytes
            if written != nbytes:
                raise ModelError(f"{file.name}: tensor {key} gave {written} bytes where {nbytes} were planned")
        fout.write(bytes(gguf.GGUFWriter.ggml_pad(fout.tell(), align) - fout.tell()))
    return add_bos, {name: (file, key, arch, heads, kv_heads) for name, file, key, *_ in plan}


BLOCK_BYTES = 64 * 2**20  # of f32 rows converted and quantized at once


def _blocks(file: Path, key: str, arch: Arch, heads: int, kv_heads: int):
    """A tensor as llama.cpp wants it (_source), in blocks of whole rows of at most BLOCK_BYTES as f32; whole when
    its rows are reordered or it has one dimension. The file is opened per block, so its mapping goes with it."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        shape = f.get_slice(key).get_shape()
    if len(shape) == 1 or (arch.permute_qk and key.endswith(("q_proj.weight", "k_proj.weight"))):
        yield _source(file, key, arch, heads, kv_heads)
        return
    rows = max(1, BLOCK_BYTES // (4 * int(np.prod(shape[1:]))))
    for start in range(0, shape[0], rows):
        with safe_open(str(file), framework="pt") as f:
            yield f.get_slice(key)[start:start + rows].to(torch.float32).numpy()


def read_config(folder: Path) -> dict:
    """The model's config.json, refused before any work when its architecture cannot be exported."""
    import json

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kind = config.get("model_type")
    if kind in REFUSED:
        raise ModelError(f"{folder}: model_type {kind!r} cannot be exported to GGUF: {REFUSED[kind]}")
    if kind not in ARCHS:
        raise ModelError(f"{folder}: model_type {kind!r} cannot be exported to GGUF yet; supported: "
                         f"{', '.join(ARCHS)}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type") not in (None, "default", "linear") and "full_attention" not in rope:
        raise ModelError(f"{folder}: rope_type {rope['rope_type']!r} (long-context rope scaling) cannot be exported "
                         "to GGUF yet")
    return config


def _add_tokenizer(writer, folder: Path, n_vocab: int) -> bool:
    """The tokenizer as llama.cpp reads it: a SentencePiece model (tokenizer.model) or a byte-fallback BPE
    tokenizer.json (Llama 2, Mistral, Gemma, Phi-3) as its llama vocabulary with scores, a byte-level BPE
    (Llama 3, Qwen, GPT-2) as its gpt2 vocabulary; their token types (special added tokens are control tokens),
    merges, special token ids and the chat template. Returns whether llama.cpp is to add the bos token."""
    import json

    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab, SpecialVocab

    kinds = ((SentencePieceVocab, "llama"), (LlamaHfVocab, "llama"), (BpeVocab, "gpt2"))
    for make, model in kinds if (folder / "tokenizer.model").exists() else kinds[1:]:
        try:
            vocab = make(folder)
            break
        except (FileNotFoundError, TypeError):  # not this kind (LlamaHfVocab: TypeError for Llama 3's)
            continue
    else:
        raise ModelError(f"{folder}: its tokenizer is neither SentencePiece nor BPE (tokenizer.json), which is what "
                         "llama.cpp reads")
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")) \
        if (folder / "tokenizer.json").exists() else {}
    special = {t["id"]: gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
               for t in spec.get("added_tokens", [])}
    ranks = _merge_ranks(spec["model"]) if isinstance(vocab, LlamaHfVocab) else {}
    tokens, scores, types = [], [], []
    for i, (text, score, kind) in enumerate(vocab.all_tokens()):
        tokens.append(text if isinstance(text, bytes) else text.encode())
        # llama.cpp's llama tokenizer merges by score: the gguf package gives a tokenizer.json's tokens none
        # (-1000 each), so a merged token scores minus its merge's rank, as SentencePiece orders BPE pieces
        scores.append(-float(ranks[i]) if kind == gguf.TokenType.NORMAL and i in ranks else
                      0.0 if ranks and kind == gguf.TokenType.NORMAL else score)
        types.append(special.get(i, kind))
    while len(tokens) < n_vocab:  # embedding rows past the vocabulary (padded sizes)
        tokens.append(f"[PAD{len(tokens)}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(model)
    if model == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer") or {}))
    else:
        writer.add_token_scores(scores)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    ids = SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    ids.add_to_gguf(writer, quiet=True)
    return bool(ids.add_special_token.get("bos"))


def _merge_ranks(model: dict) -> dict[int, int]:
    """Token id -> the rank of the merge in tokenizer.json's model that makes it (the first, where several do)."""
    ranks: dict[int, int] = {}
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(model["vocab"].get(left + right, -1), rank)
    ranks.pop(-1, None)
    return ranks


PRE_NAMES = ("llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o")  # llama.cpp's names for the splits it knows


def _pre_tokenizer(pre: dict) -> str:
    """llama.cpp's name for how a byte-level BPE tokenizer splits text before merging (the regex of tokenizer.json's
    pre_tokenizer), found among the splits transformers' GGUF reader knows by those names; "default" (GPT-2's)
    otherwise."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
    except ImportError:
        return "default"
    regexes = {p.get("pattern", {}).get("Regex") for p in [pre, *pre.get("pretokenizers", [])]
               if p.get("type") == "Split"}
    named = [n for n in PRE_NAMES if splits.get(n) in regexes] + [n for n, r in splits.items() if r in regexes]
    return named[0] if named else "default"


TENSOR_TOLERANCE = {"f32": 1e-6, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1.5e-2, "q5_1": 0.1, "q5_0": 0.1, "q4_1": 0.2,
                    "q4_0": 0.2}  # a tensor read back, against the model's, as a share of its largest value


def verify(folder: Path, file: Path, quant: str, sources: dict | None = None) -> str:
    """Load `file` back with transformers and compare it with the model in `folder`: the tokenizer's ids on the
    probes (plain and rendered by the chat template), then the logits. A model too large to hold twice in f32 in
    the free memory is compared tensor by tensor instead (the file memory-mapped, each tensor dequantized against
    the model's; needs `sources`, from write). ModelError says which part differs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftkit.memory import available, weight_count

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = list(PROBES)
    if getattr(tokenizer, "chat_template", None):
        texts += [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                add_generation_prompt=True) for p in PROBES]
    f32_bytes = 4 * weight_count(folder)
    if sources and not ARCHS[read_config(folder)["model_type"]].readable:
        return _check_vocabulary(file, tokenizer) + "; " + _check_tensors(file, quant, sources, "transformers "
                                                                          "cannot read this architecture back")
    try:
        read = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        for text in texts:
            want, got = tokenizer(text, add_special_tokens=False)["input_ids"], read(text, add_special_tokens=False)[
                "input_ids"]
            if want != got:
                raise ModelError(f"{file}: its tokenizer encodes {text[:40]!r} as {got[:12]} where the model's gives "
                                 f"{want[:12]}; nothing was kept")
        if sources and 3 * f32_bytes > available():  # measured: 2.8x at 0.5B (bench/gguf_export.py)
            return f"tokenizer gives the same ids on {len(texts)} probes; " + _check_tensors(
                file, quant, sources, "the model is too large to run twice in the free memory")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        back = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file: which part failed, in one line
        raise ModelError(f"{file}: the GGUF file does not load back ({str(e).splitlines()[0]}); nothing was kept") \
            from None
    worst, same_token = 0.0, True
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            a, b = model(input_ids=ids).logits[0], back(input_ids=ids).logits[0]
        diff = (a - b).abs().max().item()
        diff = diff if math.isfinite(diff) else math.inf  # nan logits are a difference too
        worst = max(worst, diff / max(1.0, a.abs().max().item()))
        # the file's next token is the model's, or one the model scores within the difference of its best (a tie)
        gap = (a[-1].max() - a[-1][b[-1].argmax()]).item()
        same_token = same_token and gap <= 2 * diff
    allowed = TOLERANCE[quant]
    if worst > allowed or (quant in ("f32", "f16", "bf16", "q8_0") and not same_token):
        raise ModelError(f"{file}: its logits differ from the model's by {worst:.3g} of the largest (allowed "
                         f"{allowed:g})" + ("" if same_token else " and it picks another next token")
                         + "; nothing was kept")
    return (f"tokenizer gives the same ids on {len(texts)} probes; logits within {worst:.2e} of the largest "
            f"(allowed {allowed:g}); next token {'the same (or tied)' if same_token else 'differs on a probe'}")


def _check_vocabulary(file: Path, tokenizer) -> str:
    """The file's token list against the tokenizer's, id by id (where the file cannot be read back as a
    tokenizer)."""
    import gguf

    field = gguf.GGUFReader(file).fields["tokenizer.ggml.tokens"]
    written = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    want = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    wrong = next((i for i, (a, b) in enumerate(zip(written, want)) if a != b), None)
    if wrong is not None or len(written) < len(want):
        at = wrong if wrong is not None else len(written)
        raise ModelError(f"{file}: its vocabulary differs from the tokenizer's at id {at}; nothing was kept")
    return f"its {len(want):,} tokens are the tokenizer's, id by id"


def _check_tensors(file: Path, quant: str, sources: dict, why: str) -> str:
    """Every tensor of the file (memory-mapped, dequantized one at a time) against the model's, within
    TENSOR_TOLERANCE[quant] of its largest value."""
    import gguf

    worst, allowed = 0.0, TENSOR_TOLERANCE[quant]
    reader = gguf.GGUFReader(file)  # for the layout; the data is read block by block, so none stays mapped
    with open(file, "rb") as fh:
        for t in reader.tensors:
            start, most, largest = 0, 0.0, 0.0
            row_bytes = t.n_bytes // (t.data.shape[0] if t.data.ndim > 1 else 1)
            for want in _blocks(*sources[t.name]):  # the model's rows, against the same rows of the file
                n = want.shape[0] if want.ndim > 1 else 1
                fh.seek(t.data_offset + start * row_bytes)
                rows = np.frombuffer(fh.read(n * row_bytes), dtype=t.data.dtype)
                got = gguf.quants.dequantize(rows.reshape(n, -1) if want.ndim > 1 else rows,
                                             t.tensor_type).reshape(want.shape)
                with np.errstate(all="ignore"):  # a corrupted block may hold inf or nan: that is the finding
                    gap = float(np.abs(got - want).max())
                most = max(most, gap if np.isfinite(gap) else np.inf)
                largest = max(largest, float(np.abs(want).max()))
                start += n
            diff = most / max(1e-6, largest)
            if diff > allowed or not np.isfinite(diff):
                raise ModelError(f"{file}: tensor {t.name} differs from the model's by {diff:.3g} of its largest "
                                 f"value (allowed {allowed:g}); nothing was kept")
            worst = max(worst, diff)
    return (f"{len(reader.tensors)} tensors within {worst:.2e} of the model's (allowed {allowed:g}; compared tensor by "
            f"tensor: {why})")
