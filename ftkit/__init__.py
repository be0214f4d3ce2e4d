"""ftkit: fine-tune causal LLMs with LoRA and QLoRA from a notebook, a script or the command line.

`import ftkit` is light: torch and transformers load on first use.
"""
from __future__ import annotations

import logging
import sys
import types

__version__ = "0.1.0"
# bitsandbytes warns at import that an optional CPU kernel package is missing; it changes nothing here
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from ftkit.config import RunConfig  # noqa: E402  (light: yaml only)
from ftkit.errors import ConfigError, DataError, FtkitError, ModelError  # noqa: E402


def train(config, callbacks=(), console: bool = True):
    """Fine-tune in this process; `config` is a RunConfig, a dict or a YAML path. Returns a Run."""
    from ftkit.train import train as _train

    return _train(config, callbacks=callbacks, console=console)


def plan(config):
    """Check and size a run without loading weights (what `--dry-run` prints); see Plan.summary()."""
    from ftkit.train import plan as _plan

    return _plan(config)


def merge(adapter_dir, out=None, **kw):
    """Fold a LoRA adapter into its base model; returns the merged folder."""
    from ftkit.merge import merge as _merge

    return _merge(adapter_dir, out=out, **kw)


def generate(model, prompt, adapter=None, template=None, max_new_tokens: int = 256, **sampling) -> str:
    """One answer from a model folder (or `tiny`, or a Run), optionally with an adapter."""
    from ftkit.generate import generate as _generate

    return _generate(model, prompt, adapter=adapter, template=template, max_new_tokens=max_new_tokens, **sampling)


def convert(input, output, source_format: str = "auto") -> int:
    """Rewrite a data file in the seed's conversation format; returns the record count."""
    from ftkit.data import convert as _convert

    return _convert(input, output, source_format)


class _Package(types.ModuleType):
    """Keeps `ftkit.train` & co. the API functions after their modules (ftkit/train.py ...) are imported."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and callable(self.__dict__.get(name)):
            return  # the import system binds submodules on the package; the function keeps the name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["RunConfig", "ConfigError", "DataError", "FtkitError", "ModelError",
           "train", "plan", "merge", "generate", "convert", "__version__"]
