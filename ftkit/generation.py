"""Generate: one answer (or a chat) from a model folder, optionally with a LoRA adapter.

The chat template is the run's (found in `ftkit_run.yaml` beside the weights),
else the one named, else the tokenizer's own. Generation stops at the
template's end-of-turn token. The last loaded model is kept, so a REPL or a
notebook asking again does not reload it (unless its folder was rewritten).
"""
from __future__ import annotations

from pathlib import Path

from ftkit.errors import ModelError
from ftkit.folders import adapter_folder, model_and_adapter, run_config_of
from ftkit.model import quiet
from ftkit.templates import single_token_ids

ONNX_FILE = "model.onnx"


def require_onnx():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ModelError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'ftkit[onnx]'") from None


def is_onnx_folder(path) -> bool:
    return (Path(path) / ONNX_FILE).exists()


_CACHE: dict = {}


def _stamp(folder) -> tuple | None:
    """Identity of a folder on disk: ftkit replaces folders whole (merge, save), so a new one has a new inode."""
    try:
        st = Path(str(folder)).stat()
        return st.st_ino, st.st_mtime_ns
    except (OSError, TypeError):
        return None


def _run_config(*folders):
    """The run config saved beside the first of these folders that has one (the adapter's, else the model's)."""
    return next((c for c in (run_config_of(Path(f)) for f in folders if f) if c), None)


def _tokenizer_and_template(path: str, adapter: str | None, template: str | None, run):
    from ftkit import model as M, templates

    tokenizer = M.load_tokenizer(adapter or path)  # an adapter folder carries the run's tokenizer
    tokenizer.padding_side = "left"
    name = template or (run.template if run else "auto")  # the run's template and thinking setting, unless named
    return tokenizer, templates.get_template(name, tokenizer, M.model_type(path), run.enable_thinking if run else None)


@quiet()
def load(model: str, adapter: str | None = None, template: str | None = None):
    """(model, tokenizer, template) ready to generate; cached for the last (model, adapter, template).
    An exported ONNX folder gives an OnnxLM in place of the torch model."""
    model, adapter = where(model, adapter)
    adapters = adapter.split(",") if adapter else []  # several: merged in turn, as LLaMA-Factory loads them
    adapter = adapters[-1] if adapters else None  # the last one's run gives the tokenizer and template
    key = (model, *adapters, template, _stamp(model), *map(_stamp, adapters))  # a rewritten folder reloads
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()  # keep one model in memory
    from ftkit import model as M

    path = M.resolve(model, key="model")
    run_cfg = _run_config(adapter, path)
    if run_cfg and run_cfg.stage == "rm":
        raise ModelError(f"{adapter or model} is a reward model (stage rm): it scores answers, it does not write; "
                         "ftkit.score(model, prompt, answer) gives its reward")
    tokenizer, tmpl = _tokenizer_and_template(path, adapter, template, run_cfg)
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
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                   **M.safe_weights(path, bool(run_cfg and run_cfg.allow_pickle)))
    except (OSError, ValueError) as e:
        raise ModelError(f"{model}: cannot load the model ({M._first_line(e)})") from None
    if adapter:
        from peft import PeftModel

        M.match_vocab(net, tokenizer)  # the run may have added tokens
        for k, one in enumerate(adapters):
            net = PeftModel.from_pretrained(net, one)
            if k < len(adapters) - 1:
                net = net.merge_and_unload()
    net.to(dev).eval()
    _CACHE[key] = (net, tokenizer, tmpl)
    return _CACHE[key]


@quiet()
def score(model, prompt, answer: str, adapter=None, template=None) -> float:
    """A reward model's (stage rm's) score of `answer` to `prompt` (a string, or the messages before the answer):
    the conversation rendered by the run's template, scored at its last token."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ftkit import model as M

    model, adapter = where(model, adapter)
    path = M.resolve(model, key="model")
    run_cfg = _run_config(adapter, path)
    tokenizer, tmpl = _tokenizer_and_template(path, adapter, template, run_cfg)
    if adapter:
        if not (run_cfg and run_cfg.stage == "rm"):
            raise ModelError(f"{adapter}: not a reward model's adapter (stage rm); score needs one")
        net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **M.safe_weights(path))
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    else:
        net = AutoModelForSequenceClassification.from_pretrained(path, **M.safe_weights(path))
        if net.config.num_labels != 1:
            raise ModelError(f"{model}: not a reward model (it has {net.config.num_labels} outputs, not 1)")
    net.config.pad_token_id = tokenizer.pad_token_id
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = tmpl.render(messages + [{"role": "assistant", "content": answer}]).text
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return float(net.eval()(**ids).logits[0, 0])


def where(model, adapter=None) -> tuple[str, str | None]:
    """(model, adapter folder) to load: a run folder stands for what it trained (its model/, or its base with its
    adapter/), an adapter folder for its base with it. Several adapters (comma-separated) come back
    comma-separated."""
    located = model_and_adapter(model)
    if located and located[1]:
        if adapter:
            raise ModelError(f"{model}: a LoRA run or adapter already names its base model; give it alone, or give "
                             "the base model with the adapter")
        return located
    adapters = ",".join(str(adapter_folder(a.strip())) for a in str(adapter).split(",")) if adapter else None
    return (located[0] if located else str(model)), adapters


def stop_ids(tokenizer, template) -> list[int]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(dict.fromkeys(eos + single_token_ids(tokenizer, template.stop)))


@quiet()
def generate(model, prompt, adapter=None, template=None, max_new_tokens: int = 256, system: str | None = None,
             stream=None, **sampling) -> str:
    """Answer `prompt` (a string, or a list of messages for a multi-turn chat).

    `model` is a folder, a hub name, `tiny`, or a Run (its adapter is used).
    `stream`, a callable, receives the answer's text piece by piece as it is generated.
    Sampling keywords go to `transformers` `generate` (temperature, top_p, top_k,
    repetition_penalty, ...); with no temperature the answer is greedy. `seed` makes a sampled answer repeatable
    without touching the process's random state. An ONNX folder takes temperature, top_p and seed.
    """
    if hasattr(model, "adapter_dir") and hasattr(model, "config"):  # a Run
        run = model
        model, adapter = run.config.model_name_or_path, adapter or run.adapter_dir
        if not run.config.trains_adapter:
            model, adapter = run.adapter_dir, None
    net, tokenizer, tmpl = load(str(model), str(adapter) if adapter else None, template)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    if isinstance(net, OnnxLM):
        other = sorted(set(sampling) - {"temperature", "top_p", "seed"})
        if other:
            raise ModelError(f"{model}: generation from an ONNX export takes temperature, top_p and seed, not "
                             f"{', '.join(other)}; use the merged torch model for those")
        text = tmpl.render(messages, add_generation_prompt=True).text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        new = net.generate(ids, max_new_tokens, stop_ids(tokenizer, tmpl), sampling.get("temperature", 0.0),
                           sampling.get("top_p", 1.0), sampling.get("seed"))
        answer_text = _clean(tokenizer.decode(new, skip_special_tokens=True), tmpl)
        if stream:
            stream(answer_text)
        return answer_text
    seed = sampling.pop("seed", None)
    if seed is None:
        return answer(net, tokenizer, tmpl, messages, max_new_tokens, stream=stream, **sampling)
    import torch

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
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


# ---- an exported ONNX folder (ftkit export-onnx) -------------------------------------------------------------

class OnnxLM:
    """Greedy or sampled generation with onnxruntime from an exported folder."""

    def __init__(self, folder: str | Path):
        require_onnx()
        self.folder = Path(folder)
        self.session_ = self.session(self.folder)

    @staticmethod
    def session(folder: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(Path(folder) / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def generate(self, input_ids: list[int], max_new_tokens: int, stop_ids: list[int], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[int]:
        import numpy as np

        rng = np.random.default_rng(seed)
        ids = list(input_ids)
        new: list[int] = []
        for _ in range(max_new_tokens):
            x = np.array([ids], dtype=np.int64)
            logits = self.session_.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0, -1]
            token = int(logits.argmax()) if temperature <= 0 else _sample(logits, temperature, top_p, rng)
            if token in stop_ids:
                break
            ids.append(token)
            new.append(token)
        return new


def _sample(logits, temperature: float, top_p: float, rng) -> int:
    import numpy as np

    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    return int(rng.choice(keep, p=p[keep] / p[keep].sum()))
