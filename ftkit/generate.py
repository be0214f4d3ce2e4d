"""Generate: one answer (or a chat) from a model folder, optionally with a LoRA adapter.

The chat template is the run's (found in `ftkit_run.yaml` beside the weights),
else the one named, else the tokenizer's own. Generation stops at the
template's end-of-turn token. The last loaded model is kept, so a REPL or a
notebook asking again does not reload it (unless its folder was rewritten).
"""
from __future__ import annotations

from pathlib import Path

from ftkit.errors import ModelError
from ftkit.export import OnnxLM
from ftkit.templates import single_token_ids

_CACHE: dict = {}


def _stamp(folder) -> tuple | None:
    """Identity of a folder on disk: ftkit replaces folders whole (merge, save), so a new one has a new inode."""
    try:
        st = Path(str(folder)).stat()
        return st.st_ino, st.st_mtime_ns
    except (OSError, TypeError):
        return None


def _template_name(*folders) -> str | None:
    from ftkit.merge import run_config_of

    for f in folders:
        cfg = run_config_of(Path(f)) if f else None
        if cfg:
            return cfg.template
    return None


def _tokenizer_and_template(path: str, adapter: str | None, template: str | None):
    from ftkit import model as M, templates

    tokenizer = M.load_tokenizer(adapter or path)  # an adapter folder carries the run's tokenizer
    tokenizer.padding_side = "left"
    name = template or _template_name(adapter, path) or "auto"
    return tokenizer, templates.get_template(name, tokenizer, M.model_type(path))


def load(model: str, adapter: str | None = None, template: str | None = None):
    """(model, tokenizer, template) ready to generate; cached for the last (model, adapter, template).
    An exported ONNX folder gives an OnnxLM in place of the torch model."""
    key = (str(model), str(adapter), template, _stamp(model), _stamp(adapter))  # a rewritten folder reloads
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()  # keep one model in memory
    from ftkit import model as M
    from ftkit.export import is_onnx_folder

    M.quiet()
    if adapter:
        from ftkit.merge import adapter_folder

        adapter = str(adapter_folder(adapter))
    path = M.resolve(str(model))
    tokenizer, tmpl = _tokenizer_and_template(path, adapter, template)
    if is_onnx_folder(path):
        if adapter:
            raise ModelError(f"{model}: an ONNX export cannot take an adapter; merge before exporting")
        _CACHE[key] = (OnnxLM(path), tokenizer, tmpl)
        return _CACHE[key]
    import torch
    from transformers import AutoModelForCausalLM

    dev = M.device()
    dtype = torch.bfloat16 if dev == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"{model}: cannot load the model ({M._first_line(e)})") from None
    if adapter:
        from peft import PeftModel

        M.match_vocab(net, tokenizer)  # the run may have added tokens
        net = PeftModel.from_pretrained(net, adapter)
    net.to(dev).eval()
    _CACHE[key] = (net, tokenizer, tmpl)
    return _CACHE[key]


def stop_ids(tokenizer, template) -> list[int]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(dict.fromkeys(eos + single_token_ids(tokenizer, template.stop)))


def generate(model, prompt, adapter=None, template=None, max_new_tokens: int = 256, system: str | None = None,
             **sampling) -> str:
    """Answer `prompt` (a string, or a list of messages for a multi-turn chat).

    `model` is a folder, a hub name, `tiny`, or a Run (its adapter is used).
    Sampling keywords go to `transformers` `generate` (temperature, top_p, top_k,
    repetition_penalty, ...); with no temperature the answer is greedy.
    """
    if hasattr(model, "adapter_dir") and hasattr(model, "config"):  # a Run
        run = model
        model, adapter = run.config.model_name_or_path, adapter or run.adapter_dir
        if run.config.finetuning_type != "lora":
            model, adapter = run.adapter_dir, None
    net, tokenizer, tmpl = load(str(model), str(adapter) if adapter else None, template)
    import torch

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    text = tmpl.render(messages, add_generation_prompt=True).text
    if isinstance(net, OnnxLM):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        new = net.generate(ids, max_new_tokens, stop_ids(tokenizer, tmpl), sampling.get("temperature", 0.0),
                           sampling.get("top_p", 1.0), sampling.get("seed"))
        return _clean(tokenizer.decode(new, skip_special_tokens=True), tmpl)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(net.device)
    sampling.setdefault("do_sample", sampling.get("temperature", 0) > 0)
    multi = [s for s in tmpl.stop if len(tokenizer(s, add_special_tokens=False)["input_ids"]) > 1]
    with torch.no_grad():
        out = net.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_ids(tokenizer, tmpl),
                           pad_token_id=tokenizer.pad_token_id, stop_strings=multi or None,
                           tokenizer=tokenizer if multi else None, **sampling)
    return _clean(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), tmpl)


def _clean(answer: str, tmpl) -> str:
    for s in tmpl.stop:  # a stop string that is not one special token stays in the text: cut it
        answer = answer.split(s)[0]
    return answer.strip()
