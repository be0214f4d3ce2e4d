"""Atomic folder writes: build beside the target, then swap it in, so a reader never sees half a folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def partial_dir(final: Path) -> Path:
    """An empty staging folder next to `final` (same filesystem, so the swap is a rename)."""
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; the old one goes only after the new one is there."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
