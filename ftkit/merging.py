"""Merge: fold a LoRA adapter into its base model and prove the result is the same model.

For QLoRA the base is reloaded unquantized (fp32 on CPU, bf16 on a bf16 GPU),
so the merged folder is a plain model any `transformers` code can load. Before
saving, the adapter model and the merged model score one probe batch; their
logits must agree, else merge fails loudly and writes nothing.
"""
from __future__ import annotations

from pathlib import Path

from ftkit.config import ADAPTER_CONFIG
from ftkit.errors import ModelError
from ftkit.folders import adapter_folder, model_and_adapter, partial_dir, replace_dir, run_config_of
from ftkit.model import quiet
from ftkit.templates import chat_template_to_save, single_token_ids

PROBE = [[{"role": "user", "content": "What is LoRA?"}],
         [{"role": "user", "content": "你好，请介绍一下你自己。"}]]


@quiet()
def merge(adapter_dir: str | Path | list | None, out: str | Path | None = None, tolerance: float | None = None,
          console: bool = True, base: str | None = None, template: str | None = None,
          shard_size_gb: float | None = None) -> Path:
    """Merge, check on a probe batch, save safetensors + tokenizer (with the run's chat template).

    Several adapters (a list, or comma-separated as LLaMA-Factory's adapter_name_or_path) are merged one after
    another, in order, each checked; the last one's run gives the tokenizer, template and default `out`.
    `base` overrides the base model the first adapter records (a LLaMA-Factory adapter records only its hub name),
    `template` the run's template; `shard_size_gb` splits the weights into files of at most that size. With no
    adapter, `base` (a whole model, a full or freeze run) is saved to `out` as it is: LLaMA-Factory's export."""
    from ftkit import model as M, templates

    import torch
    from peft import PeftModel

    if adapter_dir is None:
        if not (base and out):
            raise ModelError("merge: name an adapter, or a whole model (model_name_or_path) and export_dir")
        return _export(base, Path(out), template, shard_size_gb, console)
    names = [n.strip() for n in adapter_dir.split(",")] if isinstance(adapter_dir, str) else \
        adapter_dir if isinstance(adapter_dir, list) else [adapter_dir]
    adapters = [adapter_folder(n) for n in names if str(n)]
    adapter = adapters[-1]
    cfg = run_config_of(adapter)
    base_name = base or model_and_adapter(adapters[0])[0]  # the run's base, else the one adapter_config.json names
    base_path = M.resolve(base_name, key="model_name_or_path" if base else "base model")
    out = Path(out) if out else adapter.parent / "merged"
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and cfg is not None and cfg.bf16
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    tolerance = tolerance if tolerance is not None else (2e-2 if use_bf16 else 1e-4)
    from ftkit.memory import check_room, weight_count

    size = weight_count(base_path) * (2 if use_bf16 else 4)  # the model as merged and as written
    check_room("merging", int(size * MERGE_RAM) + 2**29, size, out.parent,
               "merge on a machine with more memory, or keep the adapter (small) and merge later")

    tokenizer = M.load_tokenizer(str(adapter))  # the adapter folder carries the run's tokenizer + template
    template = templates.get_template(template or (cfg.template if cfg else "auto"), tokenizer,
                                      M.model_type(base_path), cfg.enable_thinking if cfg else None)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    reward = cfg is not None and cfg.stage == "rm"  # a reward model: the body and its score head
    auto = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    base = auto.from_pretrained(base_path, dtype=dtype, trust_remote_code=bool(cfg and cfg.trust_remote_code),
                                **({"num_labels": 1} if reward else {}),
                                **M.safe_weights(base_path, bool(cfg and cfg.allow_pickle)))
    if reward:
        base.config.pad_token_id = tokenizer.pad_token_id
    M.match_vocab(base, tokenizer)  # the run may have added tokens
    dev = M.device()
    merged, diffs = base.to(dev), []
    probe = _probe_batch(tokenizer, template, dev)
    mask = probe["attention_mask"].bool()
    for one in adapters:  # each onto the model the ones before it were merged into
        model = PeftModel.from_pretrained(merged, str(one)).eval()
        with torch.no_grad():
            before = model(**probe).logits.float()
            merged = model.merge_and_unload()
            after = merged(**probe).logits.float()
        where = mask if before.dim() == 3 else slice(None)  # a reward model gives one score a sequence
        diff = (before - after).abs()[where].max().item()
        scale = before[where].abs().max().item()
        if not diff <= tolerance * max(1.0, scale):
            raise ModelError(f"merge check failed for {one}: merged logits differ from the adapter model's by "
                             f"{diff:.3g} (allowed {tolerance * max(1.0, scale):.3g}); nothing was written")
        diffs.append(diff)

    # the base model's own template is kept unless the run trained on one that renders differently
    template_note = _save(merged, tokenizer, template, cfg, out, shard_size_gb,
                          M.load_tokenizer(base_path, cfg.tokenizer_name_or_path if cfg else None))
    if console:
        print(f"merged {', '.join(map(str, adapters))} into {base_name} -> {out}\n"
              f"  check: max |logit difference| on a probe batch = {max(diffs):.2e} (allowed {tolerance:.0e} x scale)"
              + (f"\n  {template_note}" if template_note else ""))
    return out


MERGE_RAM = 1.25  # peak RAM of a merge per byte of the model in its dtype: the model, the probe's activations,
# save_pretrained's buffers (plus 0.5 GB for the libraries); measured 1.20x above a 395 MiB import floor on a 110M
# model in f32 (bench/merge_memory.py, bench/results/merge-memory-20261202-0454.json)


def _save(model, tokenizer, template, cfg, out: Path, shard_size_gb: float | None, own) -> str | None:
    """Weights (safetensors, in shards of at most shard_size_gb), the tokenizer with the chat template to keep
    (`own`'s official one unless the run's renders differently; the note says so), end-of-turn stops and the run
    config, written atomically to `out`."""
    tmp = partial_dir(out)
    model.save_pretrained(tmp, **({"max_shard_size": f"{int(shard_size_gb * 1000)}MB"} if shard_size_gb else {}))
    tokenizer.chat_template, note = chat_template_to_save(template, own)
    tokenizer.save_pretrained(tmp)
    _set_stop_tokens(tmp, tokenizer, template)
    if cfg:
        cfg.save(tmp / ADAPTER_CONFIG)
    replace_dir(tmp, out)
    return note


def _export(model_name: str, out: Path, template: str | None, shard_size_gb: float | None, console: bool) -> Path:
    """A whole model (a full or freeze run's, or any) saved as safetensors shards with its tokenizer, the chat
    template it was trained with and its end-of-turn stops."""
    from transformers import AutoModelForCausalLM

    from ftkit import model as M, templates

    path = M.resolve(model_name)  # a model folder, a full or freeze run's model/, a merged LoRA run
    cfg = run_config_of(Path(path))
    tokenizer = M.load_tokenizer(path)
    tmpl = templates.get_template(template or (cfg.template if cfg else "auto"), tokenizer, M.model_type(path),
                                  cfg.enable_thinking if cfg else None)
    model = AutoModelForCausalLM.from_pretrained(path, **M.safe_weights(path, bool(cfg and cfg.allow_pickle)))
    note = _save(model, tokenizer, tmpl, cfg, out, shard_size_gb, tokenizer)
    if console:
        print(f"exported {path} -> {out}" + (f"\n  {note}" if note else ""))
    return out


def _probe_batch(tokenizer, template, dev):
    texts = [template.render(p, add_generation_prompt=True).text for p in PROBE]
    enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    return {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _set_stop_tokens(folder: Path, tokenizer, template) -> None:
    """generation_config.json lists the end-of-turn tokens, so plain `generate` stops at end of turn."""
    from transformers import GenerationConfig

    ids = single_token_ids(tokenizer, template.stop)
    gen = GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").exists() \
        else GenerationConfig()
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    gen.eos_token_id = list(dict.fromkeys([*ids, *[e for e in eos if e is not None]]))
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(folder)
