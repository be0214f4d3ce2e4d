"""ftkit: fine-tune causal LLMs with LoRA and QLoRA from a notebook, a script or the command line.

`import ftkit` is light: torch and transformers load on first use. The functions here are the Python API; the
engine's modules have names of their own (ftkit.training, ftkit.merging, ftkit.generation, ftkit.launching, ...),
so `import ftkit.training` never changes what `ftkit.train` is.
"""
from __future__ import annotations

import logging

__version__ = "0.1.0"
# bitsandbytes warns at import that an optional CPU kernel package is missing; it changes nothing here
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from ftkit.config import RunConfig  # noqa: E402  (light: yaml only)
from ftkit.errors import ConfigError, DataError, FtkitError, ModelError  # noqa: E402


def train(config, callbacks=(), console: bool = True, should_stop=None):
    """Fine-tune in this process; `config` is a RunConfig, a dict or a YAML path. Returns a Run.
    A callback returning "stop", `should_stop()` turning true or Ctrl-C ends it after the step, saved."""
    from ftkit.training import train as _train

    return _train(config, callbacks=callbacks, console=console, should_stop=should_stop)


def launch(config, callbacks=(), nproc: int = 1, background: bool = False):
    """The same run in a child process (`accelerate launch` for nproc > 1), its events relayed to `callbacks`."""
    from ftkit.launching import launch as _launch

    return _launch(config, callbacks=callbacks, nproc=nproc, background=background)


def predict(config, console: bool = True):
    """Answer every conversation of the config's eval_dataset with its model (and adapter_name_or_path) and score
    the answers against the references (BLEU-4, ROUGE-1/2/L, as LLaMA-Factory reports them). Returns Predictions."""
    from ftkit.predicting import predict as _predict

    return _predict(config, console=console)


def plan(config, device: str | None = None):
    """Check and size a run without loading weights (what `--dry-run` prints); see Plan.summary(). `device` (t4,
    l4, a10g, a100-40g, a100-80g, h100, cpu) sizes it for that device instead of this machine."""
    from ftkit.planning import plan as _plan

    return _plan(config, device)


def merge(adapter_dir, out=None, **kw):
    """Fold a LoRA adapter into its base model; returns the merged folder."""
    from ftkit.merging import merge as _merge

    return _merge(adapter_dir, out=out, **kw)


def expand(model, num_expand: int, out=None, **kw):
    """LLaMA Pro: write `model` with `num_expand` identity blocks added; returns the folder (train it with
    finetuning_type: freeze, freeze_trainable_layers: num_expand, use_llama_pro: true)."""
    from ftkit.expanding import expand as _expand

    return _expand(model, num_expand, out, **kw)


def generate(model, prompt, adapter=None, template=None, max_new_tokens: int = 256, **sampling) -> str:
    """One answer from a model folder (or `tiny`, or a Run), optionally with an adapter."""
    from ftkit.generation import generate as _generate

    return _generate(model, prompt, adapter=adapter, template=template, max_new_tokens=max_new_tokens, **sampling)


def convert(input, output, source_format: str = "auto") -> int:
    """Rewrite a data file in the seed's conversation format; returns the record count."""
    from ftkit.data import convert as _convert

    return _convert(input, output, source_format)


def render(messages, template: str = "auto", model: str = "tiny", add_generation_prompt: bool = False, tools=None,
           train_on_prompt: bool = False, enable_thinking: bool | None = None):
    """What the model sees for `messages`: `.text`, `.input_ids`, `.labels` (-100 where not trained),
    `.trained_text`; the same code path as training. `model` may be a folder holding only a tokenizer."""
    from ftkit.data import render as _render

    return _render(messages, template=template, model=model, add_generation_prompt=add_generation_prompt,
                   tools=tools, train_on_prompt=train_on_prompt, enable_thinking=enable_thinking)


runs: dict = {}  # runs started by %%finetune in this kernel, by name


def preview(dataset, template: str = "auto", model: str = "tiny", n: int = 3, **config):
    """A few examples as the model will see them (trained tokens marked) and their length statistics."""
    from ftkit.notebook.views import preview as _preview

    return _preview(dataset, template=template, model=model, n=n, **config)


def export_gguf(model, out=None, quant: str = "q8_0", adapter=None, console: bool = True):
    """One GGUF file for llama.cpp, Ollama and LM Studio (a run or an adapter is merged first), kept only once
    transformers loads it back with the same tokenizer ids and logits; returns its path."""
    from ftkit.gguf_export import export_gguf as _export_gguf

    return _export_gguf(model, out, quant, adapter=adapter, console=console)


def score(model, prompt, answer: str, adapter=None) -> float:
    """A reward model's score (a stage rm run, its adapter or merged folder) of `answer` to `prompt`."""
    from ftkit.generation import score as _score

    return _score(model, prompt, answer, adapter=adapter)


def compare(prompts, runs=("tiny",), max_new_tokens: int = 64, **sampling):
    """Answers of several models or runs to the same prompts, side by side (a table in a notebook)."""
    from ftkit.notebook.views import compare as _compare

    return _compare(prompts, runs, max_new_tokens=max_new_tokens, **sampling)


def panel(**values):
    """A form that builds a run config from the schema, shows its YAML, validates and runs it."""
    from ftkit.notebook.form import ConfigForm

    return ConfigForm(**values)


def restart_needed() -> str:
    """After `pip install` in a notebook: one line saying whether the kernel must restart (it loaded a package
    that pip has since replaced)."""
    from ftkit.installing import restart_needed as _restart_needed

    return _restart_needed()


def load_ipython_extension(ip) -> None:
    """`%load_ext ftkit`: registers %%finetune, %merge, %%chat and %ftkit."""
    from ftkit.notebook.magics import load

    load(ip)


def unload_ipython_extension(ip) -> None:
    from ftkit.notebook.magics import unload

    unload(ip)


__all__ = ["RunConfig", "ConfigError", "DataError", "FtkitError", "ModelError",
           "train", "launch", "plan", "merge", "expand", "generate", "score", "export_gguf", "convert", "render", "preview", "compare",
           "panel", "runs", "restart_needed",
           "__version__"]
