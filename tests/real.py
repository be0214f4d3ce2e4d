"""Real-world fixtures, fetched at test time into a cache (never into the repository): the official chat templates
of ~70 released models, from llama.cpp's `models/templates/`, as shipped inside llama-cpp-python's source
distribution on PyPI. One helper, so a registry that cannot be reached is one clear skip, not 70 failures.

The cache is $FTKIT_REAL_CACHE, else ~/.cache/ftkit/real.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp's models/ folder


def cache() -> Path:
    return Path(os.environ.get("FTKIT_REAL_CACHE") or Path.home() / ".cache" / "ftkit" / "real")


def llama_cpp_templates() -> Path:
    """The folder of official `*.jinja` chat templates (downloaded and unpacked once, ~30 s)."""
    dest = cache() / LLAMA_CPP_PYTHON.replace("==", "-") / "templates"
    if dest.is_dir() and any(dest.glob("*.jinja")):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            LLAMA_CPP_PYTHON, "-d", tmp], capture_output=True, text=True, timeout=900)
        sdist = next(Path(tmp).glob("*.tar.gz"), None)
        if p.returncode or sdist is None:
            reason = (p.stderr.strip().splitlines() or ["no sdist"])[-1]
            pytest.skip(f"real fixtures: pip could not download {LLAMA_CPP_PYTHON} ({reason})")
        partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/models/templates/" in member.name and member.name.endswith(".jinja"):
                    (partial / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
    return dest
