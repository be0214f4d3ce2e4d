"""Reward functions for GRPO: named as `module:function`, or written in a notebook cell and shipped by source.

A run may train in another process (a notebook's `%%finetune`, `ftkit train --nproc`), so a function given as an
object travels as its source: `ship(fn)` keeps the source of a top-level `def`, the modules it uses (imported again
by name), the JSON values it reads (copied) and the other top-level functions it calls (shipped the same way);
`load(spec)` turns either form back into a callable. What cannot travel (a lambda, a closure, a global that is
neither a module, a JSON value nor a function) is refused with what to write instead.

A reward function takes the prompts and completions (as text), the `question` (the last user message) and any
other dataset columns by keyword, and returns one number per completion, as TRL's GRPOTrainer calls it:

    def short(completions, **kwargs):
        return [-len(c) / 100 for c in completions]
"""
from __future__ import annotations

import importlib
import inspect
import json
import textwrap
import types

from ftkit.errors import ConfigError


def _names(code: types.CodeType) -> set[str]:
    """Global names a function's code (and the code nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _json_value(value) -> bool:
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


def ship(fn, _seen: set | None = None) -> dict:
    """A function as {"function", "source", "imports", "constants", "helpers"}: what `load` rebuilds it from in
    another process. ConfigError says why a function cannot be shipped and how to write it."""
    name = getattr(fn, "__name__", repr(fn))
    where = f"reward_funcs: {name}"
    if not inspect.isfunction(fn):
        raise ConfigError(f"{where} is a {type(fn).__name__}, not a function; write a `def` (or name it as "
                          "'module:function')")
    if name == "<lambda>":
        raise ConfigError("reward_funcs: a lambda cannot be sent to the training process; write it as a `def` at "
                          "the top level of a cell")
    if fn.__closure__:
        outer = ", ".join(fn.__code__.co_freevars)
        raise ConfigError(f"{where} is defined inside another function and uses its {outer}; define it at the top "
                          "level of a cell, with those as module-level values or arguments")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise ConfigError(f"{where}: its source cannot be read (defined through exec?); define it in a cell or a "
                          "file, or name it as 'module:function'") from None
    seen = (_seen or set()) | {name}
    imports, constants, helpers = {}, {}, []
    for ref in sorted(_names(fn.__code__)):
        if ref not in fn.__globals__:  # a builtin, or an attribute's name (c.strip)
            continue
        value = fn.__globals__[ref]
        if isinstance(value, types.ModuleType):
            imports[ref] = value.__name__
        elif inspect.isfunction(value) and value.__module__ not in ("__main__", None) and \
                not value.__module__.startswith("__"):
            imports[ref] = f"{value.__module__}:{value.__qualname__}"  # a library's function: imported again
        elif inspect.isfunction(value):
            if ref not in seen:
                helpers.append(ship(value, seen))
        elif _json_value(value):
            constants[ref] = value
        else:
            raise ConfigError(f"{where} uses {ref} (a {type(value).__name__}) from the notebook, which cannot be "
                              f"sent to the training process; create it inside the function, or make it a number, "
                              "text, list or dict")
    return {"function": name, "source": source, "imports": imports, "constants": constants, "helpers": helpers}


def load(spec):
    """A reward function from `module:function`, a shipped function (see `ship`), or a callable (as it is)."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        if not attr:
            raise ConfigError(f"reward_funcs: {spec!r} is not 'module:function' (a name alone is resolved only in a "
                              "notebook, where %%finetune finds the function)")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"reward_funcs: {spec}: cannot import {module} ({e})") from None
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if not callable(obj):
            raise ConfigError(f"reward_funcs: {spec}: {module} has no function {attr}")
        return obj
    if not isinstance(spec, dict) or not {"function", "source"} <= set(spec):
        raise ConfigError(f"reward_funcs: {spec!r} is neither 'module:function' nor a function")
    namespace: dict = {}
    for alias, target in spec.get("imports", {}).items():
        module, _, attr = target.partition(":")
        value = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            value = getattr(value, part)
        namespace[alias] = value
    namespace.update(spec.get("constants", {}))
    for helper in spec.get("helpers", []):
        namespace[helper["function"]] = load(helper)
    exec(compile(spec["source"], f"<reward function {spec['function']}>", "exec"), namespace)  # noqa: S102
    return namespace[spec["function"]]


def name_of(spec) -> str:
    if isinstance(spec, dict):
        return spec["function"]
    if isinstance(spec, str):
        return spec.rpartition(":")[2].rpartition(".")[2]
    return getattr(spec, "__name__", repr(spec))


def shipped(specs) -> list:
    """reward_funcs with every function object shipped (strings and shipped ones as they are)."""
    return [ship(s) if callable(s) else s for s in specs or []]


# ---- ready-made rewards (reward_funcs: [ftkit.rewards:same_language]) ---------------------------------------------

def _chinese_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters) if letters else 0.0


def same_language(completions, question, **kwargs) -> list[float]:
    """1 for an answer written in the language of the question it answers (by the share of Chinese characters among
    the letters), less as it drifts into the other; 0 for an empty answer."""
    return [0.0 if not c.strip() else 1.0 - abs(_chinese_share(q) - _chinese_share(c))
            for q, c in zip(question, completions)]


def concise(completions, **kwargs) -> list[float]:
    """Shorter answers score higher: minus the length in hundreds of characters."""
    return [-len(c) / 100 for c in completions]
