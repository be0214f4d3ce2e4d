"""Library internals that ftkit touches, behind one door.

Each function here reaches past a library's public API because none does the job; each names the version it was
written against, and tests/test_internals.py fails loudly, naming the function, when the installed library no
longer has what it relies on. Nothing else in ftkit touches a private name of another package, and this module imports nothing of ftkit.
"""
from __future__ import annotations


def run_atexit_handlers() -> None:
    """Run the atexit handlers now, before a quick os._exit (process.exit_now). CPython 3.11-3.13:
    `atexit._run_exitfuncs`; the public API can register handlers, not run them."""
    import atexit

    atexit._run_exitfuncs()


# bitsandbytes 0.50.2: its 4-bit layers repack their weights for CPU inference on the first no-grad forward in
# eval mode (an evaluation) when this flag is true, and after that their backward drops the input gradient, so the
# LoRA layers below learn from wrong gradients. Training keeps the trainable layout.
BNB_CPU_REPACK_FLAG = "support_avx512bf16_for_cpu"


def keep_bnb_trainable_layout(model) -> None:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights on every layer that has it."""
    for module in model.modules():
        if hasattr(module, BNB_CPU_REPACK_FLAG):
            setattr(module, BNB_CPU_REPACK_FLAG, False)


def attn_implementation(model) -> str | None:
    """The attention implementation a transformers model runs with (transformers 5.24: `config._attn_implementation`,
    what `set_attn_implementation` sets; there is no public getter)."""
    return getattr(model.config, "_attn_implementation", None)


def save_checkpoint_atomically(trainer, save_checkpoint, model, trial, replace_dir) -> None:
    """transformers 5.24: `Trainer._save_checkpoint(model, trial)` writes checkpoint-N under `args.output_dir` and
    then rotates checkpoints there (`trainer_utils.rotate_checkpoints`). Here it writes under output_dir/.staging;
    the finished checkpoint-N is then moved into place (`replace_dir(staged, final)`) and rotation runs on the real
    folder."""
    import contextlib
    import os
    from pathlib import Path

    from transformers.trainer_utils import rotate_checkpoints

    args, state = trainer.args, trainer.state
    run_dir = args.output_dir
    staging = os.path.join(run_dir, ".staging")
    args.output_dir = staging
    try:
        save_checkpoint(model, trial)
    finally:
        args.output_dir = run_dir
    if not args.should_save:
        return
    name = f"checkpoint-{state.global_step}"
    replace_dir(Path(staging) / name, Path(run_dir) / name)
    with contextlib.suppress(OSError):
        os.rmdir(staging)
    if state.best_model_checkpoint:
        state.best_model_checkpoint = state.best_model_checkpoint.replace(staging, run_dir)
    rotate_checkpoints(output_dir=run_dir, save_total_limit=args.save_total_limit,
                       best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)


def training_argument_fields() -> set[str] | None:
    """The init fields of transformers.TrainingArguments, read from its source without importing it: importing it
    imports torch (~2 s, and a notebook kernel should never hold torch just to check a config key). transformers
    5.24 defines the dataclass in transformers/training_args.py. None when that file no longer holds it (then the
    caller imports the class)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "training_args.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments")
    except (OSError, SyntaxError, StopIteration):
        return None

    def init(value) -> bool:  # field(..., init=False) is not an argument
        return not (isinstance(value, ast.Call) and any(
            k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords))

    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and not n.target.id.startswith("_") and init(n.value)} or None
