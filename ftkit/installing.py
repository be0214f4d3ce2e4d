"""After `pip install` in a running notebook: does the kernel need a restart?

A kernel keeps the modules it has imported. When pip has since replaced one of them with another version, the
kernel runs the old code beside new files until it restarts. ftkit's install never replaces torch, and its
Colab/Kaggle cell installs nothing those platforms import at start, so the answer should be no; this says so
from what this kernel actually holds.
"""
from __future__ import annotations

import sys
from importlib import metadata

from packaging.version import InvalidVersion, Version


def stale_modules() -> list[tuple[str, str, str]]:
    """(distribution, version loaded in this process, version installed now) for each imported package whose
    installed distribution changed version after it was imported."""
    stale, seen = [], set()
    owners = metadata.packages_distributions()
    for name, module in list(sys.modules.items()):
        if "." in name or module is None:
            continue
        loaded = getattr(module, "__version__", None)
        for dist in owners.get(name, ()):
            if dist in seen or not isinstance(loaded, str):
                continue
            seen.add(dist)
            try:
                installed = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            if not same_release(loaded, installed):
                stale.append((dist, loaded, installed))
    return sorted(stale)


def same_release(a: str, b: str) -> bool:
    """Whether a module's own version string and its installed metadata name one release. Packages spell
    them differently: certifi's module says 2026.05.20 for metadata 2026.5.20, and 2026.10.19 for
    2026.10.19.post1; torch's metadata carries +cu128. So epoch, release and pre-release are compared."""
    try:
        va, vb = Version(a), Version(b)
    except InvalidVersion:
        return a.split("+")[0] == b.split("+")[0]
    return (va.epoch, va.release, va.pre) == (vb.epoch, vb.release, vb.pre)


def restart_needed() -> str:
    """One line: whether this kernel must restart to use what pip installed (the packages it loaded before)."""
    stale = stale_modules()
    if not stale:
        return "ftkit: no restart needed (no package this kernel has loaded was replaced)"
    return ("ftkit: restart the kernel (Colab: Runtime > Restart session), then run on: this kernel loaded "
            + ", ".join(f"{d} {old} before pip installed {new}" for d, old, new in stale))
