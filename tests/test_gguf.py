"""GGUF export (issue 17, in progress): files written with the gguf package, read back by transformers' own GGUF
loader (the oracle: a different reader than the writer), the tokenizer and the logits compared."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ftkit
from arch_configs import build
from ftkit.errors import ModelError
from ftkit.gguf_export import ARCHS, PROBES, export_gguf

HERE = Path(__file__).parent


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_tiny_exports_and_loads_back_the_same(workdir, quant, capsys):
    out = export_gguf("tiny", workdir / f"tiny-{quant}.gguf", quant)
    assert out.exists() and not list(workdir.glob("*.partial.gguf"))
    assert "tokenizer gives the same ids on 4 probes" in capsys.readouterr().out


SHAPES = {"qwen3": {"head_dim": 128},  # transformers' GGUF reader takes Qwen3's head_dim as 128, as in every Qwen3
          # Gemma 2 and 3 scale attention by query_pre_attn_scalar; llama.cpp by head_dim (as in their 1-12B models)
          "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256},
          "gemma3_text": {"head_dim": 256, "query_pre_attn_scalar": 256}}
TOLERANCE = {"f16": 2e-2, "q8_0": 6e-2}  # llama.cpp's pick against transformers' best, as a share of the largest


def in_llama_cpp(jobs: list[dict]) -> list[dict]:
    """llama.cpp's tokenization of each job's text and its greedy tokens after it (tests/llama_cpp_run.py)."""
    from real import llama_cpp_python

    env = {**os.environ, "PYTHONPATH": str(llama_cpp_python())}
    p = subprocess.run([sys.executable, str(HERE / "llama_cpp_run.py")], input=json.dumps(jobs), env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def check_in_llama_cpp(folder: Path, files: dict[str, Path], steps: int = 6, tolerance=TOLERANCE) -> list[bool]:
    """Each exported file, run by llama.cpp on the probes with the chat template applied, tokenizes them as the
    model's tokenizer does and greedily picks, at each of `steps` tokens, transformers' best next token on the
    model (or one it scores within the quant's tolerance of the best: a tie). Returns, per file and probe, whether
    every token is exactly transformers' best."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROBES]
    jobs = [{"gguf": str(f), "text": t, "steps": steps, "quant": q} for q, f in files.items() for t in texts]
    same = []
    for job, got in zip(jobs, in_llama_cpp(jobs)):
        want = tokenizer(job["text"], add_special_tokens=False)["input_ids"]
        assert got["ids"] == want, f"{job['gguf']}: llama.cpp tokenizes {job['text']!r} otherwise"
        assert len(got["generated"]) == steps
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([want + got["generated"]])).logits[0, len(want) - 1:-1]
        for k, (row, token) in enumerate(zip(logits, got["generated"])):
            gap = (row.max() - row[token]).item() / max(1.0, row.abs().max().item())
            assert gap <= tolerance[job["quant"]], f"{job['gguf']}: step {k}, llama.cpp's token is {gap:.3g} below"
        same.append(logits.argmax(-1).tolist() == got["generated"])  # (llama.cpp generates on past an eos)
    return same


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_tiny_runs_in_llama_cpp_as_in_transformers(workdir):
    """The trained tiny model: llama.cpp generates transformers' greedy tokens from f16 and q8_0 files, exactly or
    where transformers itself scores two tokens within 0.2% (seen: 14.402 and 14.391 after "What is LoRA?")."""
    from ftkit.model import resolve

    files = {q: export_gguf("tiny", workdir / f"tiny-{q}.gguf", q, console=False) for q in ("f16", "q8_0")}
    same = check_in_llama_cpp(Path(resolve("tiny")), files, steps=8, tolerance={"f16": 2e-3, "q8_0": 1e-2})
    assert sum(same) >= len(same) // 2


@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"llama"}))
def test_architectures_export_and_run_in_llama_cpp(workdir, arch, tiny_tokenizer):
    # (a folder named "random": a file named "mistral" reads back as transformers' mistral GGUF type, which its
    # reader lacks, and llama.cpp gives a model named "phi3" Phi-3's special tokens, which the tiny tokenizer lacks)
    folder = build(arch, workdir / "random", tiny_tokenizer, **SHAPES.get(arch, {}))
    files = {q: export_gguf(str(folder), workdir / f"{arch}-{q}.gguf", q, console=False) for q in ("f16", "q8_0")}
    check_in_llama_cpp(folder, files)


@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("arch, vocab", [("phi3", "phi-3"), ("mistral", "mistral-v3"), ("qwen2", "qwen2"),
                                         ("llama", "llama-bpe")])
def test_real_tokenizers_are_written_as_llama_cpp_reads_them(workdir, arch, vocab):
    """Real vocabularies: Phi-3's byte-fallback BPE and Mistral v0.3's SentencePiece model as llama.cpp's llama
    vocabulary (with scores), Qwen2's and Llama 3's byte-level BPE as its gpt2 vocabulary (with the pre-tokenizer
    named); read back by transformers and by llama.cpp, each encodes llama.cpp's own test texts for the vocabulary
    (or the probes) to the ids the model's tokenizer gives."""
    from transformers import AutoTokenizer

    from real import mistral_v3, real_tokenizer, vocab_vectors

    source = mistral_v3()[0] if vocab == "mistral-v3" else real_tokenizer(vocab)
    tokenizer = AutoTokenizer.from_pretrained(source)
    folder = build(arch, workdir / f"{arch}-random", tokenizer, **SHAPES.get(arch, {}))
    if (source / "tokenizer.model").exists():
        shutil.copy(source / "tokenizer.model", folder)
    out = export_gguf(str(folder), workdir / f"{arch}.gguf", "f16", console=False)
    texts = PROBES + ([t for t, _ in vocab_vectors(vocab)] if vocab != "mistral-v3" else [])
    got = in_llama_cpp([{"gguf": str(out), "text": t, "steps": 0} for t in texts])
    wrong = [t for t, g in zip(texts, got) if g["ids"] != tokenizer(t, add_special_tokens=False)["input_ids"]]
    assert len(wrong) <= len(texts) // 20, f"{len(wrong)} of {len(texts)} texts tokenized otherwise: {wrong[:3]}"


def test_a_run_is_merged_then_exported(workdir):
    from conftest import base_config

    run = ftkit.train(base_config(workdir / "run", max_steps=2), console=False)
    out = export_gguf(run.output_dir, console=False)
    assert out == run.output_dir / "model-q8_0.gguf" and out.exists()
    import gguf  # the chat template travels inside the file (llama.cpp and LM Studio read it there)
    from ftkit.generation import load

    written = gguf.GGUFReader(out).fields["tokenizer.chat_template"].contents()
    assert written == load(str(run.output_dir))[1].chat_template


def test_a_model_named_not_given_as_a_folder_is_exported_under_outputs(workdir):
    assert export_gguf("tiny", console=False) == Path("outputs") / "tiny-q8_0.gguf"
    assert (workdir / "outputs" / "tiny-q8_0.gguf").exists() and (workdir / "outputs" / "tiny-q8_0.Modelfile").exists()


def test_the_command(workdir, capsys):
    from ftkit.cli import main

    assert main(["export-gguf", "--model", "tiny", "--out", str(workdir / "t.gguf"), "--quant", "q8_0"]) == 0
    assert (workdir / "t.gguf").exists() and "check: tokenizer gives the same ids" in capsys.readouterr().out
    assert ftkit.export_gguf is not None


def test_a_wrong_file_is_caught_and_nothing_kept(workdir, monkeypatch):
    """Query/key rows left in transformers' order (llama.cpp reads them interleaved): the check sees the logits
    differ, and no file is left under either name."""
    import ftkit.gguf_export as G

    monkeypatch.setattr(G, "_permute", lambda w, heads: w)
    with pytest.raises(ModelError, match="its logits differ from the model's"):
        export_gguf("tiny", workdir / "bad.gguf", "f16", console=False)
    assert not list(workdir.glob("*.gguf"))


def test_unsupported_requests_are_refused_by_name(workdir, tiny_tokenizer):
    with pytest.raises(ModelError, match="q4_k_m is a K-quant, which the gguf package reads but cannot write"):
        export_gguf("tiny", workdir / "k.gguf", "q4_k_m")
    folder = build("gpt2", workdir / "gpt2", tiny_tokenizer)
    with pytest.raises(ModelError, match="model_type 'gpt2' cannot be exported to GGUF yet"):
        export_gguf(str(folder), workdir / "g.gguf")
    folder = workdir / "gemma3"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gemma3", "text_config": {}}')
    with pytest.raises(ModelError, match="Gemma 3 with its vision tower"):
        export_gguf(str(folder), workdir / "g.gguf")


def test_a_model_too_large_to_run_twice_is_checked_tensor_by_tensor(workdir, monkeypatch, capsys):
    """With little free memory the check compares each tensor, memory-mapped, with the model's; a corrupted file
    is caught that way too, and nothing is kept."""
    import ftkit.gguf_export as G
    import ftkit.memory

    monkeypatch.setattr(ftkit.memory, "available", lambda: 10_000_000)
    export_gguf("tiny", workdir / "t.gguf", "q8_0")
    assert "tensors within" in capsys.readouterr().out
    written = G.write

    def corrupted(folder, out, quant):  # the file's last bytes (tensor data) overwritten after writing
        result = written(folder, out, quant)
        with open(out, "r+b") as f:
            f.seek(-4096, 2)
            f.write(bytes(range(256)) * 16)
        return result

    monkeypatch.setattr(G, "write", corrupted)
    with pytest.raises(ModelError, match="tensor .* differs from the model's"):
        export_gguf("tiny", workdir / "bad.gguf", "f16", console=False)
    assert not (workdir / "bad.gguf").exists()


def test_too_little_disk_is_refused_with_the_numbers_before_writing(workdir, monkeypatch):
    import ftkit.memory

    monkeypatch.setattr(ftkit.memory, "free_disk", lambda path: 1_000_000)
    with pytest.raises(ModelError, match=r"the GGUF file needs ~7 MB of disk at .*, 1 MB free"):
        export_gguf("tiny", workdir / "t.gguf", "f16", console=False)
    assert not list(workdir.glob("*.gguf"))
