"""Training: config -> data -> model -> transformers.Trainer, with events out.

`plan()` does everything that needs no weights: check the config, load the
tokenizer and template, tokenize the data, refuse runs that cannot learn to stop
or cannot fit, size the model on the meta device. `train()` then loads and adapts
the model, trains, and saves atomically. One callback adapter translates the
Trainer's hooks into ftkit events; everything that shows a run subscribes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback  # ftkit.train is the engine: importing it loads transformers

from ftkit.config import ADAPTER_CONFIG, RUN_CONFIG, RunConfig
from ftkit.errors import ConfigError, DataError, RunError
from ftkit.events import ConsoleProgress, Emitter, JsonlLog, RunMetrics
from ftkit.files import partial_dir, replace_dir


@dataclass
class Run(RunMetrics):
    """What a run leaves behind; in-process runs also keep `model` and `tokenizer`."""

    config: RunConfig
    output_dir: Path
    adapter_dir: Path | None = None
    metrics: list[dict] = field(default_factory=list)
    stopped: bool = False
    model: Any = None
    tokenizer: Any = None
    _stop_requested: bool = False

    def stop(self) -> None:
        """Ask the run to end after the current step (the adapter trained so far is saved)."""
        self._stop_requested = True

    def record(self, event: dict) -> None:
        self.metrics.append(event)

    def __repr__(self) -> str:
        last = f", loss {self.losses[-1][1]:.4f}" if self.losses else ""
        return f"Run({str(self.output_dir)!r}{last}{', stopped' if self.stopped else ''})"


@dataclass
class Plan:
    """Everything known about a run before its weights load: what `--dry-run` shows and `train` starts from."""

    config: RunConfig
    model_path: str
    tokenizer: Any
    template: Any
    data: Any            # data.Prepared
    counts: dict         # parameters: total, trainable, quantizable
    max_steps: int
    memory: Any          # memory.Estimate
    memory_available: int
    args: Any            # transformers.TrainingArguments
    memory_note: str = ""

    def summary(self, packed: bool | None = None) -> dict:
        """The pre-flight figures (the `begin` event's content); `packed` is known once the model is loaded."""
        from ftkit.model import device

        cfg, stats = self.config, self.data.stats
        lengths = sorted(stats.lengths)
        return dict(
            examples=stats.examples, eval_examples=len(self.data.eval), tokens=stats.tokens,
            length_median=lengths[len(lengths) // 2], length_max=lengths[-1], trained_tokens=stats.trained_tokens,
            eot_trained=stats.eot_trained, truncated=_truncation_text(cfg, stats),
            trainable_params=self.counts["trainable"], total_params=self.counts["total"], max_steps=self.max_steps,
            batch_tokens=_batch_text(cfg, packed), packed=packed, device=device(), model=cfg.model_name_or_path,
            finetuning=_method_text(cfg), output_dir=str(cfg.run_dir), memory=self.memory.text() + self.memory_note,
            memory_mb=self.memory.total / 2**20, memory_available_mb=self.memory_available / 2**20,
            config=cfg.to_dict())


def plan(config) -> Plan:
    """Check, tokenize and size a run without loading weights; refuses runs that cannot learn or cannot fit."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_any(config)
    check_run(cfg)
    from ftkit import data, memory, model as M, templates

    M.quiet()
    model_path = M.resolve(cfg.model_name_or_path)
    tokenizer = M.load_tokenizer(model_path, cfg.tokenizer_name_or_path, cfg.trust_remote_code, cfg.added_tokens)
    template = templates.get_template(cfg.template, tokenizer, M.model_type(model_path))
    prepared = data.prepare(cfg, tokenizer, template)
    stats = prepared.stats
    if not stats.eot_trained and not cfg.train_on_prompt:
        raise DataError(f"template {cfg.template}: its end-of-turn marker ({' / '.join(template.stop)}) is never "
                        "among the trained tokens, so the model would never learn to stop; check the template "
                        "and cutoff_len")
    skeleton = M.skeleton(cfg, model_path, tokenizer)
    counts = memory.model_counts(skeleton)
    seq_len = min(cfg.cutoff_len, max(stats.lengths))
    def size(c: RunConfig):
        return memory.estimate(c, skeleton.config, counts, c.per_device_train_batch_size, seq_len)

    estimate = size(cfg)
    budget = memory.available(M.device())
    note = ""
    if cfg.gradient_checkpointing is None and estimate.total > budget:  # checkpointing where it pays
        checkpointed = dataclasses.replace(cfg, gradient_checkpointing=True)
        lower = size(checkpointed)
        if lower.total <= budget:
            note = f"; gradient checkpointing on to fit (without it ~{estimate.total / 2**20:,.0f} MiB)"
            cfg, estimate = checkpointed, lower
    if estimate.total > budget and not cfg.ignore_memory_estimate:
        raise ConfigError(
            f"memory: this run needs {estimate.text()}, more than the {budget / 2**30:.1f} GiB "
            f"{'the GPU has' if M.device() == 'cuda' else 'of RAM available'}; lower per_device_train_batch_size "
            "(raise gradient_accumulation_steps to keep the batch), lower cutoff_len, set gradient_checkpointing: "
            "true, or use QLoRA (quantization_bit: 4); ignore_memory_estimate: true tries anyway")
    world = int(os.environ.get("WORLD_SIZE", 1))
    per_epoch = math.ceil(len(prepared.train) / (cfg.per_device_train_batch_size * world))
    updates = math.ceil(per_epoch / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(updates * cfg.num_train_epochs)
    args = training_arguments(cfg, max_steps, evaluate=bool(prepared.eval))
    return Plan(cfg, model_path, tokenizer, template, prepared, counts, max_steps, estimate, budget, args, note)


def train(config, callbacks=(), console: bool = True, should_stop=None) -> Run:
    """Fine-tune as `config` (RunConfig, dict or YAML path) says; returns the Run.

    `callbacks` receive the run's events; one returning "stop", `should_stop()` turning true, or a first Ctrl-C
    (SIGINT) ends the run after the current step, a second Ctrl-C at once; either way what was trained is saved.
    """
    import torch
    from transformers import set_seed

    from ftkit import model as M

    cfg = config if isinstance(config, RunConfig) else RunConfig.from_any(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    p = plan(cfg)
    cfg = p.config  # with what the plan decided (gradient checkpointing when it was left unset)
    out, tokenizer = cfg.run_dir, p.tokenizer

    set_seed(cfg.seed)  # LoRA's initial weights come from the global RNG: seed before adapting
    model = M.load_model(cfg, p.model_path)
    packed = cfg.packing is not False and M.packing_isolates(model)
    if cfg.packing and not packed:
        raise ConfigError(f"packing: {M.model_type(p.model_path)} models ignore position_ids when building their "
                          "attention mask, so packed examples would attend to each other; set packing: false")
    if packed and cfg.flash_attn == "auto":  # an explicit sdpa or eager is taken literally
        M.use_packed_attention(model, cfg.cutoff_len)
    M.match_vocab(model, tokenizer)
    model = M.make_trainable(model, cfg)
    out.mkdir(parents=True, exist_ok=True)
    main = int(os.environ.get("RANK", "0")) == 0  # with several processes, the first one writes and prints
    run = Run(cfg, out)
    subscribers = [run.record]
    if main:
        subscribers += [JsonlLog(out / "metrics.jsonl")] + ([ConsoleProgress()] if console else [])
    emit = Emitter(subscribers + list(callbacks))
    trainer = _trainer(model, tokenizer, p, emit, run, packed, should_stop)
    if main:
        import shutil

        shutil.rmtree(out / ".staging", ignore_errors=True)  # a checkpoint a killed process left half-written
        if cfg.overwrite_output_dir and cfg.resume_from_checkpoint in (None, False):
            _clear_previous_run(out)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        cfg.save(out / RUN_CONFIG)
    # after the clearing above, which removes a previous run's lora_init: the final save reads this one back
    initial = _save_initial_adapter(model, cfg, out) if main else None
    emit("begin", **p.summary(packed), note=_notes(cfg, model))

    resume = cfg.resume_from_checkpoint
    try:
        with _soft_interrupt(run):
            trainer.train(resume_from_checkpoint=resume if resume not in (None, False) else None)
    except KeyboardInterrupt:
        run.stopped = True  # save what was trained below; the caller sees run.stopped
    run.stopped = run.stopped or run._stop_requested or emit.stop_requested
    run.adapter_dir = trained_dir(cfg, out)
    if main:
        save_trained(trainer.model, tokenizer, p.template, cfg, out, initial)
    state = trainer.state
    train_loss = next((h["train_loss"] for h in reversed(state.log_history) if "train_loss" in h), None)
    emit("end", step=state.global_step, train_loss=train_loss, runtime_s=time.time() - run.metrics[0]["time"],
         output_dir=str(out), adapter_dir=str(run.adapter_dir), stopped=run.stopped)
    run.model, run.tokenizer = trainer.model, tokenizer
    return run


def _clear_previous_run(out: Path) -> None:
    """overwrite_output_dir: remove what the previous run left that would mix with this one (its checkpoints,
    which a later resume would pick up, its TensorBoard curves, its merged model); its adapter is replaced
    atomically when this run saves."""
    import shutil

    for old in [*out.glob("checkpoint-*"), out / "runs", out / "merged", out / "lora_init"]:
        shutil.rmtree(old, ignore_errors=True)


def check_run(cfg: RunConfig) -> None:
    """What can be checked without loading weights, reported at once: model folder, datasets, template name,
    device, output folder."""
    from ftkit import model as M
    from ftkit.data import resolve_dataset
    from ftkit.errors import FtkitError
    from ftkit.templates import check_template_name

    problems = []
    for check in [lambda: M.resolve(cfg.model_name_or_path),
                  lambda: cfg.tokenizer_name_or_path and M.resolve(cfg.tokenizer_name_or_path),
                  *[lambda name=name: resolve_dataset(name, cfg.dataset_dir) for name in cfg.datasets]]:
        try:
            check()
        except FtkitError as e:
            problems += e.problems
    problems += filter(None, [check_template_name(cfg.template)])
    problems += _deepspeed_problems(cfg.extra.get("deepspeed"))
    code = None if cfg.trust_remote_code else M.shipped_code(cfg.model_name_or_path)
    if code:
        problems.append(f"model_name_or_path: {cfg.model_name_or_path} ships its own code ({code}), "
                        + M.REMOTE_CODE_ADVICE)
    if cfg.fp16 and M.device() == "cpu":
        problems.append("fp16: needs a CUDA GPU and none is present; remove it to train in fp32 on this CPU")
    out = cfg.run_dir
    if cfg.resume_from_checkpoint is True and not list(out.glob("checkpoint-*")):
        problems.append(f"resume_from_checkpoint: {out} has no checkpoint-N folder to resume from; "
                        "set save_steps so runs leave checkpoints, or name a checkpoint folder")
    elif isinstance(cfg.resume_from_checkpoint, str) and not Path(cfg.resume_from_checkpoint).is_dir():
        problems.append(f"resume_from_checkpoint: {cfg.resume_from_checkpoint} is not a folder")
    elif (out / RUN_CONFIG).exists() and not (cfg.overwrite_output_dir or cfg.resume_from_checkpoint):
        problems.append(f"output_dir: {out} already holds a run; choose another output_dir, set "
                        "overwrite_output_dir: true to replace it, or resume_from_checkpoint: true to continue it")
    if problems:
        raise ConfigError(problems, title="cannot start this run")


def _deepspeed_problems(ds) -> list[str]:
    """`deepspeed: path/to/ds.json` (or an inline dict) is handed to the Trainer; check what can be checked here."""
    import importlib.util
    import json

    if ds is None:
        return []
    problems = []
    if isinstance(ds, str):
        path = Path(ds)
        if not path.is_file():
            return [f"deepspeed: {ds} is not a file; name a DeepSpeed JSON config (examples/deepspeed/ has ZeRO-2/3)"]
        try:
            ds = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return [f"deepspeed: {path}: line {e.lineno}: invalid JSON ({e.msg})"]
    if not isinstance(ds, dict):
        return [f"deepspeed: expected a JSON file or a mapping, got {type(ds).__name__}"]
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed: zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("deepspeed: the deepspeed package is not installed; pip install deepspeed on a CUDA "
                        "machine and start with ftkit train CONFIG --nproc N (or accelerate launch)")
    return problems


def _notes(cfg: RunConfig, model) -> str | None:
    from ftkit.model import device

    notes = [getattr(model, "ftkit_attention_note", None), getattr(model, "ftkit_lora_note", None)]
    if cfg.bf16 and device() == "cpu":
        notes.append("bf16 on a CPU: correct but slow unless the CPU has bf16 instructions (AVX512-BF16/AMX)")
    return "; ".join(n for n in notes if n) or None


def training_arguments(cfg: RunConfig, max_steps: int, evaluate: bool):
    """transformers.TrainingArguments for the run; passthrough keys may refine ftkit's choices."""
    import torch
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(cfg.run_dir),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=max_steps,
        max_grad_norm=cfg.max_grad_norm, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
        fp16=cfg.fp16, bf16=cfg.bf16, activation_checkpointing=bool(cfg.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps, logging_first_step=True, save_steps=cfg.save_steps,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.eval_steps or max(1, max_steps // 5),
        report_to=cfg.report_to, seed=cfg.seed, include_num_input_tokens_seen="non_padding",
        disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )
    try:
        return TrainingArguments(**{**kwargs, **cfg.extra})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"TrainingArguments refused the config: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def _soft_interrupt(run: Run):
    """First Ctrl-C (SIGINT, also a notebook kernel's interrupt): finish this step, save, stop; a second: now."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if run._stop_requested:
            raise KeyboardInterrupt
        run.stop()
        print("\nftkit: stopping after this step and saving (interrupt again to stop at once)", file=sys.stderr,
              flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _trainer(model, tokenizer, p: Plan, emit, run, packed: bool, should_stop=None):
    from transformers import PrinterCallback, ProgressCallback

    bridge = EventBridge(emit, run, should_stop, Previewer(p, tokenizer))
    trainer = AtomicCheckpointTrainer(model=model, args=p.args, data_collator=collator(tokenizer, packed),
                                      train_dataset=p.data.train, eval_dataset=p.data.eval or None,
                                      processing_class=tokenizer, callbacks=[bridge])
    for cb in (PrinterCallback, ProgressCallback):  # ftkit's own subscribers show progress
        trainer.remove_callback(cb)
    return trainer


class AtomicCheckpointTrainer(Trainer):
    """transformers.Trainer with two changes.

    Checkpoints: checkpoint-N is written in a staging folder and renamed into place once complete, so a process
    killed mid-save never leaves a checkpoint-N that looks whole (resume picks the last complete one).

    Loss on packed rows: the head only scores the positions whose next token is trained (`logits_to_keep`), so
    the vocabulary-wide logits of prompt tokens are never computed or kept; the loss is the same sum over
    trained tokens divided by the same count as transformers' causal-LM loss.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        labels = inputs.get("labels")
        if labels is None or labels.shape[0] != 1 or self.label_smoother is not None or not _keeps_logits(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        target = labels[0, 1:]
        keep = (target != -100).nonzero().squeeze(-1)
        outputs = model(**inputs, logits_to_keep=keep)
        loss = torch.nn.functional.cross_entropy(outputs.logits[0].float(), target[keep], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(keep.numel(), 1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer.compute_loss does
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = self.args.output_dir
        staging = os.path.join(run_dir, ".staging")
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = run_dir
        if not self.args.should_save:
            return
        name = f"checkpoint-{self.state.global_step}"
        replace_dir(Path(staging) / name, Path(run_dir) / name)
        with contextlib.suppress(OSError):
            os.rmdir(staging)
        if self.state.best_model_checkpoint:
            self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(staging, run_dir)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most current architectures do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(cls) -> bool:  # asked every step: inspect each class once
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def collator(tokenizer, packed: bool = False):
    """transformers' collators. Packed (padding-free): one row holding the batch's examples end to end,
    position_ids restarting at each, no attention mask, so transformers builds a block-diagonal causal mask: same
    examples and loss, no padding; -100 on each example's first label, so no token is predicted across examples.
    Padded: right-padded input_ids, labels padded with -100, an attention mask."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packed:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


class EventBridge(TrainerCallback):
    """Translates transformers.Trainer callbacks into ftkit events."""

    def __init__(self, emit, run: Run, should_stop=None, previewer=None):
        self.emit, self.run, self.should_stop, self.previewer = emit, run, should_stop, previewer
        self.t0 = self.t_last = None
        self.tokens_last = 0
        self.eval_s = 0.0  # evaluation and preview time since the last step event, left out of tokens/s
        self.sampled_at = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._sample(state, model)
        self.t0 = self.t_last = time.time()
        self.tokens_last, self.eval_s = state.num_input_tokens_seen, 0.0

    def on_step_end(self, args, state, control, model=None, **kw):
        if self._stop_wanted(args):  # save a checkpoint here: resume_from_checkpoint continues exactly
            control.should_training_stop = control.should_save = self.run._stop_requested = True
        if model is not None and self.previewer and state.global_step % self.previewer.every == 0:
            self._sample(state, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        self._sample(state, model)

    def _sample(self, state, model) -> None:
        if not (self.previewer and model is not None and state.is_world_process_zero):
            return
        if self.sampled_at == state.global_step:
            return
        t = time.time()
        self.sampled_at = state.global_step
        self.emit("sample", step=state.global_step, samples=self.previewer(model))
        self.eval_s += time.time() - t

    def _stop_wanted(self, args) -> bool:
        stop = self.run._stop_requested or self.emit.stop_requested or bool(self.should_stop and self.should_stop())
        if args.world_size > 1:  # every process must stop at the same step, or the others wait forever
            import torch
            import torch.distributed as dist

            flag = torch.tensor([float(stop)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        now = time.time()
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            rate = (tokens - self.tokens_last) / max(now - self.t_last - self.eval_s, 1e-9)
            self.t_last, self.tokens_last, self.eval_s = now, tokens, 0.0
            elapsed = now - self.t0
            used, total, allocated = _memory_mb()
            self.emit("step", step=state.global_step, max_steps=state.max_steps, epoch=logs.get("epoch", state.epoch),
                      loss=logs["loss"], lr=logs.get("learning_rate", 0.0), grad_norm=logs.get("grad_norm"),
                      tokens_per_s=rate, memory_mb=used, memory_total_mb=total, memory_allocated_mb=allocated,
                      elapsed_s=elapsed,
                      eta_s=elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step))
        if "eval_loss" in logs:
            self.eval_s += logs.get("eval_runtime", 0.0)
            self.emit("eval", step=state.global_step, eval_loss=logs["eval_loss"])
        if args.world_size == 1 and (self.run._stop_requested or self.emit.stop_requested):
            control.should_training_stop = control.should_save = True  # a subscriber asked to stop (with several
            # processes, the next step's agreement in _stop_wanted stops them all together)

    def on_save(self, args, state, control, **kw):
        self.emit("save", step=state.global_step, path=os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


class Previewer:
    """Answers the run's preview_prompts with the model as it trains (greedy, short): the `sample` event."""

    def __init__(self, p: Plan, tokenizer):
        self.prompts, self.tokenizer, self.template = p.config.preview_prompts, tokenizer, p.template
        self.every = p.config.preview_steps or max(1, p.max_steps // 4)
        self.max_new_tokens = p.config.preview_max_new_tokens

    def __bool__(self) -> bool:
        return bool(self.prompts)

    def __call__(self, model) -> list[dict]:
        from ftkit.generate import answer

        was_training = model.training
        model.eval()  # no dropout while answering
        try:
            return [{"prompt": q, "answer": answer(model, self.tokenizer, self.template,
                                                     [{"role": "user", "content": q}], self.max_new_tokens)}
                    for q in self.prompts]
        finally:
            model.train(was_training)


def _memory_mb() -> tuple[float, float, float | None]:
    """(used, total, allocated) MiB: CUDA memory reserved (and allocated by tensors) against the GPU's, else this
    process's RSS against machine RAM (allocated None)."""
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return torch.cuda.memory_reserved() / 2**20, total / 2**20, torch.cuda.memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20, psutil.virtual_memory().total / 2**20, None


def _save_initial_adapter(model, cfg: RunConfig, out: Path) -> Path | None:
    """PiSSA/OLoRA/CorDA start by moving part of the base weights into the adapter; saving the start lets the
    final adapter be converted to one that applies to the original base model (what merge and chat load)."""
    init = cfg.lora_init
    if cfg.finetuning_type != "lora" or not isinstance(init, str) or init in ("gaussian", "eva", "orthogonal"):
        return None
    path = out / "lora_init"  # peft names the adapter after the folder: no dots
    peft_config = model.peft_config["default"]
    peft_config.init_lora_weights = True  # the saved start must load as a plain adapter
    model.save_pretrained(path, safe_serialization=True)
    peft_config.init_lora_weights = init
    return path


def trained_dir(cfg: RunConfig, out: Path) -> Path:
    """Where a run's result lives: adapter/ (LoRA) or model/ (full and freeze tuning)."""
    return out / ("adapter" if cfg.finetuning_type == "lora" else "model")


def save_trained(model, tokenizer, template, cfg: RunConfig, out: Path, initial: Path | None = None) -> Path:
    """Adapter (LoRA) or model (full/freeze) + tokenizer + run config, written atomically."""
    import errno
    import shutil

    final = trained_dir(cfg, out)
    tmp = partial_dir(final)
    try:
        if initial:  # rank 2r adapter for the original base
            model.save_pretrained(tmp, safe_serialization=True, path_initial_model_for_weight_conversion=str(initial))
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.chat_template = template.jinja()
        tokenizer.save_pretrained(tmp)
        cfg.save(tmp / ADAPTER_CONFIG)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave half a folder; a previous adapter stays as it was
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        kept = sorted(out.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]))
        where = f"the last checkpoint ({kept[-1]}) is intact" if kept else "no checkpoint was kept (set save_steps)"
        raise RunError(f"{final}: could not save ({e.strerror.lower()}); {where}; free space or choose another "
                       "output_dir, then resume with resume_from_checkpoint: true") from None
    replace_dir(tmp, final)
    return final


def _truncation_text(cfg: RunConfig, stats) -> str | None:
    parts = []
    if stats.truncated_turns:
        parts.append(f"{stats.truncated_turns} examples longer than cutoff_len={cfg.cutoff_len} kept only their "
                     "whole leading turns")
    if stats.truncated_answer:
        parts.append(f"{stats.truncated_answer} had an answer cut mid-way (it loses its end-of-turn)")
    if stats.dropped:
        parts.append(f"{stats.dropped} dropped: no answer token fits in cutoff_len")
    return "; ".join(parts) or None


def _batch_text(cfg: RunConfig, packed: bool | None = None) -> str:
    world = int(os.environ.get("WORLD_SIZE", 1))
    per = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    how = {True: ", packed without padding", False: ", padded", None: ""}[packed]
    return f"{per} examples ({cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps} accumulation" + (
        f" x {world} processes" if world > 1 else "") + f"{how})"


def _method_text(cfg: RunConfig) -> str:
    if cfg.finetuning_type == "lora":
        q = f"QLoRA {cfg.quantization_bit}-bit" if cfg.quantization_bit else "LoRA"
        return f"{q} r={cfg.lora_rank} on {','.join(cfg.lora_targets)}"
    if cfg.finetuning_type == "freeze":
        return f"freeze (last {cfg.freeze_trainable_layers} layers train)"
    return "full fine-tuning"
