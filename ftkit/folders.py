"""Folders on disk: atomic writes (build beside the target, then swap it in, so a reader never sees half a
folder), and what a run folder holds (adapter/ or model/, merged/, the run config), so a run folder works wherever
a model or adapter folder does."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ftkit.config import ADAPTER_CONFIG, RunConfig
from ftkit.errors import ModelError


def partial_dir(final: Path) -> Path:
    """An empty staging folder next to `final` (same filesystem, so the swap is a rename)."""
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def write_atomic(path: Path, text: str) -> None:
    """A text file written beside its place, then renamed into it: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; the old one goes only after the new one is there."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ---- run folders ------------------------------------------------------------------------------------------------
# A run's output_dir holds run.yaml, adapter/ (LoRA) or model/ (full and freeze tuning), and after a merge merged/;
# adapter/ and model/ carry the run config as ADAPTER_CONFIG beside the weights.

def trained_dir(cfg: RunConfig, out: Path) -> Path:
    """Where a run's result lives: adapter/ (LoRA, OFT) or model/ (full and freeze tuning)."""
    return out / ("adapter" if cfg.trains_adapter else "model")


def adapter_folder(path: str | Path) -> Path:
    """Accept the adapter folder itself or the run folder that holds `adapter/`."""
    p = Path(path)
    if (p / "adapter_config.json").exists():
        return p
    if (p / "adapter" / "adapter_config.json").exists():
        return p / "adapter"
    if (p / "model" / "config.json").exists() or (p / "config.json").exists():
        raise ModelError(f"{p}: this run trained the whole model (full/freeze): its model folder is already "
                         "complete, there is no adapter to merge")
    raise ModelError(f"{p}: no LoRA adapter here (no adapter_config.json); pass the run's output_dir or its adapter/")


def run_config_of(folder: Path | None) -> RunConfig | None:
    """The run config saved beside a run's weights (adapter/, model/ or merged/), if any."""
    f = Path(folder) / ADAPTER_CONFIG if folder else None
    return RunConfig.from_any(f) if f and f.exists() else None


def model_and_adapter(path: str | Path) -> tuple[str, str | None] | None:
    """What a folder given as a model stands for, as (model folder or name, adapter folder or None): a model
    folder is itself; a full or freeze run folder its model/; a LoRA run folder, or an adapter folder, the base it
    was trained on with the adapter. None when `path` is none of these (a hub name, or not a folder)."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "config.json").exists():
        return (str(p), None) if p.is_dir() else None
    if (p / "model" / "config.json").exists():
        return str(p / "model"), None
    adapter = p if (p / "adapter_config.json").exists() else p / "adapter"
    if (adapter / "adapter_config.json").exists():
        cfg = run_config_of(adapter)
        base = cfg.model_name_or_path if cfg else json.loads(
            (adapter / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        return base, str(adapter)
    return None
