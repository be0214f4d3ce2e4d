"""The notebook face: magics, the live training panel, the config form, data preview and compare.

A thin layer: it parses, draws and subscribes to the engine's events; the engine does the work. Importing it
costs almost nothing (ipywidgets and matplotlib load when something is drawn).

`DISPLAY` picks how runs are shown: "auto" (widgets in a Jupyter kernel with ipywidgets, text elsewhere),
"widgets" or "text".
"""
from __future__ import annotations

DISPLAY = "auto"


def use_widgets() -> bool:
    if DISPLAY != "auto":
        return DISPLAY == "widgets"
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None or getattr(ip, "kernel", None) is None:  # terminal IPython, a script
        return False
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("ipywidgets", "matplotlib"))


def need(module: str, extra: str = "notebook"):
    """Import an optional dependency or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from ftkit.errors import FtkitError

        raise FtkitError(f"{module} is not installed: pip install 'ftkit[{extra}]' (or pip install {module})") from None
