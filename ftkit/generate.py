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
    from ftkit.merge import run_config_of

    run_cfg = next((c for c in (run_config_of(Path(f)) for f in (adapter, path) if f) if c), None)
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                   **M.safe_weights(path, bool(run_cfg and run_cfg.allow_pickle)))
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
             stream=None, **sampling) -> str:
    """Answer `prompt` (a string, or a list of messages for a multi-turn chat).

    `model` is a folder, a hub name, `tiny`, or a Run (its adapter is used).
    `stream`, a callable, receives the answer's text piece by piece as it is generated.
    Sampling keywords go to `transformers` `generate` (temperature, top_p, top_k,
    repetition_penalty, ...); with no temperature the answer is greedy.
    """
    if hasattr(model, "adapter_dir") and hasattr(model, "config"):  # a Run
        run = model
        model, adapter = run.config.model_name_or_path, adapter or run.adapter_dir
        if run.config.finetuning_type != "lora":
            model, adapter = run.adapter_dir, None
    net, tokenizer, tmpl = load(str(model), str(adapter) if adapter else None, template)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    if isinstance(net, OnnxLM):
        text = tmpl.render(messages, add_generation_prompt=True).text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        new = net.generate(ids, max_new_tokens, stop_ids(tokenizer, tmpl), sampling.get("temperature", 0.0),
                           sampling.get("top_p", 1.0), sampling.get("seed"))
        answer_text = _clean(tokenizer.decode(new, skip_special_tokens=True), tmpl)
        if stream:
            stream(answer_text)
        return answer_text
    return answer(net, tokenizer, tmpl, messages, max_new_tokens, stream=stream, **sampling)


def answer(net, tokenizer, tmpl, messages: list[dict], max_new_tokens: int, stream=None, **sampling) -> str:
    """One assistant turn from a loaded torch model (also what a run's preview samples use)."""
    import torch

    text = tmpl.render(messages, add_generation_prompt=True).text
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(net.device)
    sampling.setdefault("do_sample", sampling.get("temperature", 0) > 0)
    multi = [s for s in tmpl.stop if len(tokenizer(s, add_special_tokens=False)["input_ids"]) > 1]
    streamer = _Streamer(tokenizer, tmpl, stream) if stream else None
    with torch.no_grad():
        out = net.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_ids(tokenizer, tmpl),
                           pad_token_id=tokenizer.pad_token_id, stop_strings=multi or None,
                           tokenizer=tokenizer if multi else None, streamer=streamer, **sampling)
    return _clean(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), tmpl)


def _clean(answer: str, tmpl) -> str:
    for s in tmpl.stop:  # a stop string that is not one special token stays in the text: cut it
        answer = answer.split(s)[0]
    return answer.strip()


class _Streamer:
    """Hands `callback` the new text of the answer as tokens arrive (whole characters only), without the stop
    string and surrounding whitespace that the returned answer leaves out: the pieces add up to the answer."""

    def __init__(self, tokenizer, tmpl, callback):
        self.tokenizer, self.tmpl, self.callback = tokenizer, tmpl, callback
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        self._send(_clean(text, self.tmpl), final=False)

    def end(self) -> None:
        self._send(_clean(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.tmpl), final=True)

    def _send(self, text: str, final: bool) -> None:
        if not final:  # a stop string may be arriving token by token: hold back what could be its start
            text = text[:len(text) - max((_overlap(text, s) for s in self.tmpl.stop), default=0)]
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.callback(text[len(self.sent):])
            self.sent = text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop`."""
    return next((n for n in range(min(len(text), len(stop) - 1), 0, -1) if stop.startswith(text[-n:])), 0)
