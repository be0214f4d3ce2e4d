"""`%%finetune`, `%merge`, `%%chat` and `%ftkit`: each parses its line and cell and calls the engine.

Registered by `%load_ext ftkit`. Runs are bound in the user namespace under their name and kept in
`ftkit.runs`. Config and data errors show as a short message (`--debug` shows the traceback).
"""
from __future__ import annotations

import contextlib
import json
import re
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import ftkit
from ftkit.errors import ConfigError, FtkitError

PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def fill(cell: str, namespace: dict) -> str:
    """Replace `{name}` with the value of the notebook variable `name` (only names: nothing is evaluated); a
    function (a GRPO reward) becomes its shipped source (ftkit.rewards)."""
    def value(m):
        if m.group(1) not in namespace:
            raise UsageError(f"%%finetune: {{{m.group(1)}}} names no notebook variable; define it, "
                             "or write {{...}} for literal braces")
        v = namespace[m.group(1)]
        if isinstance(v, str):
            return v
        if callable(v):
            from ftkit.rewards import ship

            return json.dumps(ship(v))
        return json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)  # YAML reads JSON values

    return PLACEHOLDER.sub(value, cell).replace("{{", "{").replace("}}", "}")


def with_named_rewards(raw: dict, namespace: dict) -> dict:
    """reward_funcs given by a bare name (`[format_reward]`): the notebook's function of that name, shipped."""
    funcs = raw.get("reward_funcs") if isinstance(raw, dict) else None
    if not isinstance(funcs, list):
        return raw
    from ftkit.rewards import ship

    named = [ship(namespace[f]) if isinstance(f, str) and ":" not in f and callable(namespace.get(f)) else f
             for f in funcs]
    return {**raw, "reward_funcs": named}


@contextlib.contextmanager
def people_errors(debug: bool):
    """ftkit's errors as a short UsageError (no traceback), unless --debug."""
    try:
        yield
    except FtkitError as e:
        if debug:
            raise
        raise UsageError(str(e)) from None


@magics_class
class FtkitMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.histories: dict[str, list[dict]] = {}  # %%chat conversations, per run

    @magic_arguments()
    @argument("--name", default="run", help="variable (and ftkit.runs key) the run is bound to")
    @argument("--dry-run", action="store_true", help="check config and data, show the plan; load no weights")
    @argument("--device", help="with --dry-run: plan for t4, l4, a10g, a100-40g, a100-80g, h100 or cpu")
    @argument("--background", action="store_true", help="return at once; run.wait() / run.stop()")
    @argument("--inline", action="store_true", help="train in this kernel (run.model stays live)")
    @argument("--nproc", type=int, default=1, help="processes, through accelerate launch")
    @argument("--debug", action="store_true", help="show tracebacks")
    @cell_magic
    def finetune(self, line, cell, awaiting: bool = False):
        """Fine-tune as the YAML cell body says (the `ftkit train` schema); `{var}` takes a notebook variable."""
        args = parse_argstring(self.finetune, line)
        foreground = not (args.inline or args.background or args.dry_run)
        from ftkit.config import parse_yaml

        with people_errors(args.debug):
            from ftkit.planning import load_config

            raw = parse_yaml(fill(cell, self.shell.user_ns), where="%%finetune cell") or {}
            cfg = load_config(with_named_rewards(raw, self.shell.user_ns))
            from ftkit.notebook.live import dry_run_text, run_with_panel

            if args.device and not args.dry_run:
                raise ConfigError("--device plans a run for a device (--dry-run --device t4); training runs on "
                                  "the device this kernel has")
            if args.dry_run:
                return print(dry_run_text(cfg, args.device))
            if cfg.do_predict:  # a predict run answers and scores eval_dataset in this kernel; nothing trains
                self.shell.user_ns[args.name] = result = ftkit.predict(cfg)
                return result

            run = run_with_panel(cfg, args.name, args.inline, args.background or awaiting and foreground, args.nproc)
        self.shell.user_ns[args.name] = ftkit.runs[args.name] = run
        return _until_done(run, args.debug) if awaiting and foreground else run

    @magic_arguments()
    @argument("target", help="a run's name, or a run or adapter folder")
    @argument("--out", help="merged model folder (default: <run>/merged)")
    @argument("--debug", action="store_true")
    @line_magic
    def merge(self, line):
        """Fold a run's LoRA adapter into its base model; returns the merged folder."""
        args = parse_argstring(self.merge, line)
        target = self._run(args.target)
        with people_errors(args.debug):
            path = ftkit.merge(getattr(target, "output_dir", target), out=args.out)
        print(f"merged model: {path}")
        return path

    @magic_arguments()
    @argument("target", help="a run's name, or a run, adapter or model folder")
    @argument("--out", help="the .gguf file (default: model-QUANT.gguf in the run or model "
                   "folder; outputs/NAME-QUANT.gguf for a model given by name)")
    @argument("--quant", default="q8_0", help="q8_0 | f16 | bf16 | q4_0 | ... (K-quants: llama.cpp's llama-quantize)")
    @argument("--debug", action="store_true")
    @line_magic
    def export_gguf(self, line):
        """One GGUF file for llama.cpp, Ollama and LM Studio (a run's adapter merged first), checked by loading it
        back, with an Ollama Modelfile beside it; returns the file's path."""
        args = parse_argstring(self.export_gguf, line)
        target = self._run(args.target)
        with people_errors(args.debug):
            return ftkit.export_gguf(getattr(target, "output_dir", target), out=args.out, quant=args.quant)

    @magic_arguments()
    @argument("--run", help="a run's name, a model folder or `tiny` (default: the latest run)")
    @argument("--max_new_tokens", type=int, default=256)
    @argument("--temperature", type=float, default=0.0, help="0 = greedy")
    @argument("--system", help="system message")
    @argument("--reset", action="store_true", help="forget this run's conversation")
    @argument("--debug", action="store_true")
    @line_cell_magic
    def chat(self, line, cell=None):
        """The cell is your message; the answer streams in; the conversation continues until --reset."""
        args = parse_argstring(self.chat, line)
        key = args.run or (next(reversed(ftkit.runs)) if ftkit.runs else None)
        if args.reset:
            self.histories.pop(key, None)
            print(f"conversation with {key} forgotten")
            return
        if not (cell or "").strip():
            raise UsageError("%%chat: the cell body is your message (write it below the %%chat line)")
        if key is None:
            raise UsageError("%%chat: no run yet in this kernel; train one with %%finetune or give --run MODEL_DIR")
        history = self.histories.get(key, [])
        sampling = {"temperature": args.temperature} if args.temperature > 0 else {}
        with people_errors(args.debug):
            answer = ftkit.generate(self._run(key), history + [{"role": "user", "content": cell.strip()}],
                                    max_new_tokens=args.max_new_tokens, system=args.system,
                                    stream=lambda piece: print(piece, end="", flush=True), **sampling)
        print()
        self.histories[key] = history + [{"role": "user", "content": cell.strip()},
                                         {"role": "assistant", "content": answer}]

    @line_magic
    def ftkit(self, line):
        """`%ftkit preview dataset=... template=... model=...`: the data as the model will see it."""
        words = shlex.split(line)
        if not words or words[0] != "preview":
            raise UsageError("usage: %ftkit preview dataset=NAME [template=auto] [model=tiny] [n=3] [cutoff_len=N]")
        from ftkit.config import parse_overrides

        with people_errors("--debug" in words):
            return ftkit.preview(**parse_overrides([w for w in words[1:] if w != "--debug"]))

    def _run(self, key: str):
        """A run bound by %%finetune (by name), else the text itself (a folder, `tiny`)."""
        return ftkit.runs.get(key, key)


# ---- a foreground run that still hears its Stop button ----
# A Jupyter kernel handles widget messages (a button click) only between cells, or while a cell awaits. So in
# a kernel with widgets, a %%finetune cell is rewritten to await its run; the run trains in its child process
# as always, and the kernel's interrupt cancels the wait, which is passed on to the run as a stop.

_CALL = "get_ipython().run_cell_magic('finetune', "


def await_finetune(lines: list[str]) -> list[str]:
    """IPython input transformer: in a kernel with widgets, a %%finetune cell awaits `finetune_awaiting`."""
    from ftkit.notebook import use_widgets

    if lines and lines[0].startswith(_CALL) and use_widgets():
        call = "await __import__('ftkit.notebook.magics', fromlist=['_']).finetune_awaiting(get_ipython(), "
        return [lines[0].replace(_CALL, call, 1), *lines[1:]]
    return lines


async def finetune_awaiting(ip, line: str, cell: str):
    line = ip.var_expand(line)  # what run_cell_magic does to the line: --nproc {NPROC} -> --nproc 2
    result = ip.magics_manager.registry["FtkitMagics"].finetune(line, cell, awaiting=True)
    return await result if hasattr(result, "__await__") else result


async def _until_done(run, debug: bool):
    import asyncio

    while not run.done:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:  # the kernel's interrupt, in an awaiting cell: stop the run, keep waiting
            asyncio.current_task().uncancel()
            run._interrupt()
    with people_errors(debug):
        return run.wait()


MAGICS = {"cell": ["finetune", "chat"], "line": ["merge", "export_gguf", "chat", "ftkit"]}


def load(ip) -> None:
    from ftkit.launching import keep_warm

    ip.register_magics(FtkitMagics)
    keep_warm()  # the first %%finetune finds its child's imports done
    if await_finetune not in ip.input_transformers_post:
        ip.input_transformers_post.append(await_finetune)


def unload(ip) -> None:
    from ftkit.launching import keep_warm

    keep_warm(False)
    for kind, names in MAGICS.items():
        for name in names:
            ip.magics_manager.magics[kind].pop(name, None)
    if await_finetune in ip.input_transformers_post:
        ip.input_transformers_post.remove(await_finetune)
