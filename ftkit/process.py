"""The start and end of a process that exists for one run (`ftkit train`, the notebook's child): what it imports
ahead, whether it needs bitsandbytes, and a quick exit."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def exit_now(code: int) -> None:
    """End the process without tearing down every imported module one by one: after torch and transformers that
    teardown takes about 1.4 s on a 2-core machine and does nothing for the user. Everything a run writes is
    saved and closed before this point; atexit handlers (logging, TensorBoard, wandb) still run and the output
    streams are flushed. Only for a process's own entry point, never for code that called in."""
    import logging

    from ftkit.internals import run_atexit_handlers

    run_atexit_handlers()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# optimizers that transformers takes from bitsandbytes (TrainingArguments.optim)
_BNB_OPTIMIZERS = ("bnb", "8bit", "paged", "lion", "ademamix")


def uses_bitsandbytes(cfg) -> bool:
    """Whether a run needs bitsandbytes: QLoRA, one of its optimizers, or a base saved quantized. A hub model not
    in the local cache might be quantized: assumed so."""
    optim = str(cfg.extra.get("optim", "")).lower()
    if cfg.quantization_bit or any(k in optim for k in _BNB_OPTIMIZERS):
        return True
    name = cfg.model_name_or_path
    if name == "tiny":
        return False
    config = Path(name).expanduser() / "config.json"
    if not config.parent.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return True
        cached = try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            return True
        config = Path(cached)
    try:
        return "quantization_config" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True


def start_own_process(cfg) -> None:
    """Set up a process that exists only to train `cfg`, before the engine loads. peft imports bitsandbytes
    whenever it is installed (0.8 s of the start on 2 cores) though only quantized runs use it: a run that does
    not marks it absent, the documented way (None in sys.modules), so peft and transformers see no bitsandbytes.
    With the engine imported, gc.freeze() moves the ~0.5 M objects of torch and transformers out of the cyclic
    collector's sight: the Trainer's gc.collect() before the first step took 0.25 s walking them. Only for a
    process's own entry point: a process that called in may want bitsandbytes later."""
    if not uses_bitsandbytes(cfg) and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None
    preload_engine()


def preload_engine() -> None:
    """Import the engine (torch, transformers, peft) and freeze what it made out of the collector's sight."""
    import gc

    import ftkit.training  # noqa: F401

    gc.freeze()
