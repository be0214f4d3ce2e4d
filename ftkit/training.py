"""Training: a plan -> model -> transformers.Trainer, with events out.

`train()` takes the plan (ftkit.planning: config, tokenizer, data, sizes), loads
and adapts the model, trains, and saves atomically. One callback adapter
translates the Trainer's hooks into ftkit events; everything that shows a run
subscribes.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback  # ftkit.training is the engine: importing it loads transformers

from ftkit.config import ADAPTER_CONFIG, PREFERENCE_STAGES, RUN_CONFIG, TRL_STAGES, RunConfig
from ftkit.errors import ConfigError, RunError
from ftkit.events import ConsoleProgress, Emitter, JsonlLog, LossPlot, RunMetrics
from ftkit.folders import partial_dir, replace_dir, trained_dir
from ftkit.planning import Plan, load_config, plan
from ftkit.templates import chat_template_to_save


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


def train(config, callbacks=(), console: bool = True, should_stop=None) -> Run:
    """Fine-tune as `config` (RunConfig, dict or YAML path) says; returns the Run.

    `callbacks` receive the run's events; one returning "stop", `should_stop()` turning true, or a first Ctrl-C
    (SIGINT) ends the run after the current step, a second Ctrl-C at once; either way what was trained is saved.
    """
    cfg = load_config(config)  # every problem of a dict or file at once
    if cfg.do_predict:  # LLaMA-Factory's predict runs come through train as well
        from ftkit.predicting import predict

        return predict(cfg, console=console)
    import torch

    from ftkit import model as M

    threads = torch.get_num_threads()
    try:
        with M.quiet():
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            return _train(cfg, callbacks, console, should_stop)
    finally:  # the caller's process (a notebook kernel) keeps its own setting
        torch.set_num_threads(threads)


def _train(cfg: RunConfig, callbacks, console: bool, should_stop) -> Run:
    from transformers import set_seed

    from ftkit import model as M

    p = plan(cfg, training=True)  # with the TrainingArguments: on a GPU they set up the device, once
    cfg = p.config  # with what the plan decided (gradient checkpointing when it was left unset)
    out, tokenizer = cfg.run_dir, p.tokenizer

    set_seed(cfg.seed)  # LoRA's initial weights come from the global RNG: seed before adapting
    model = M.load_model(cfg, p.model_path)
    packed = cfg.packing is not False and cfg.stage not in TRL_STAGES and M.packing_isolates(model)  # TRL pads
    if cfg.packing and not packed:
        raise ConfigError(f"packing: {M.model_type(p.model_path)} models ignore position_ids when building their "
                          "attention mask, so packed examples would attend to each other; set packing: false")
    if packed and cfg.flash_attn == "auto":  # an explicit sdpa or eager is taken literally
        M.use_packed_attention(model, cfg.cutoff_len)
    M.match_vocab(model, tokenizer)
    if M.reward_head(model) is not None:  # the score is read at the last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    notes = [M.attention_impl(cfg.flash_attn)[1], chat_template_to_save(p.template, tokenizer)[1],
             _reasoning_note(p)]
    model = M.make_trainable(model, cfg, notes)
    out.mkdir(parents=True, exist_ok=True)
    main = int(os.environ.get("RANK", "0")) == 0  # with several processes, the first one writes and prints
    run = Run(cfg, out)
    subscribers = [run.record]
    if main:
        subscribers += [JsonlLog(out / "metrics.jsonl")] + ([ConsoleProgress()] if console else [])
        subscribers += [LossPlot(out)] if cfg.plot_loss else []
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
    emit("begin", **p.summary(packed), note=_notes(cfg, notes))

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
    if cfg.push_to_hub and main:  # after everything is saved: a failed upload loses nothing
        from ftkit.hub import push

        print(f"ftkit: pushed {run.adapter_dir.name}/ to {push(out, cfg.hub_model_id, cfg.hub_private_repo)}",
              flush=True)
    return run


def _clear_previous_run(out: Path) -> None:
    """overwrite_output_dir: remove what the previous run left that would mix with this one (its checkpoints,
    which a later resume would pick up, its TensorBoard curves, its merged model); its adapter is replaced
    atomically when this run saves."""
    import shutil

    for old in [*out.glob("checkpoint-*"), out / "runs", out / "merged", out / "lora_init"]:
        shutil.rmtree(old, ignore_errors=True)


def _reasoning_note(p) -> str | None:
    lost = p.data.stats.reasoning_lost
    if not lost:
        return None
    return (f"{lost} examples carry reasoning in their final answer that template {p.config.template} does not "
            "render, so it is not trained (DeepSeek-R1's official template drops it; template: deepseekr1 keeps it)")


def _notes(cfg: RunConfig, notes: list[str | None]) -> str | None:
    from ftkit.model import device

    if (cfg.bf16 or cfg.pure_bf16) and device() == "cpu":
        notes.append("bf16 on a CPU: correct but slow unless the CPU has bf16 instructions (AVX512-BF16/AMX)")
    return "; ".join(n for n in notes if n) or None


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

    previewer = Previewer(p, tokenizer) if p.config.stage != "rm" else None  # a reward model does not write
    if p.config.stage in PREFERENCE_STAGES:
        from ftkit import preference

        bridge = EventBridge(emit, run, should_stop, previewer, preference.METRICS[p.config.stage])
        trainer = preference.make_trainer(model, tokenizer, p, [bridge], FtkitTrainerMixin)
    elif p.config.stage == "grpo":
        from ftkit import grpo

        bridge = EventBridge(emit, run, should_stop, previewer, grpo.metric_names(p.config))
        trainer = grpo.make_trainer(model, tokenizer, p, [bridge], FtkitTrainerMixin)
    if p.config.stage in TRL_STAGES:
        trainer.ftkit_config = p.config
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        return trainer
    bridge = EventBridge(emit, run, should_stop, previewer)
    # packed rows: the head scores only the positions whose next token is trained (logits_to_keep), so the
    # vocabulary-wide logits of prompt tokens are never computed or kept; Trainer hands them to trained_tokens_loss
    keep = packed and _keeps_logits(model) and not p.args.label_smoothing_factor
    trainer = AtomicCheckpointTrainer(model=model, args=p.args, data_collator=collator(tokenizer, packed, keep),
                                      train_dataset=p.data.train, eval_dataset=p.data.eval or None,
                                      processing_class=tokenizer, callbacks=[bridge],
                                      compute_loss_func=trained_tokens_loss if keep else None)
    trainer.ftkit_config = p.config  # LoRA+ and Muon: create_optimizer below
    for cb in (PrinterCallback, ProgressCallback):  # ftkit's own subscribers show progress
        trainer.remove_callback(cb)
    return trainer


class FtkitTrainerMixin:
    """What ftkit adds to a Trainer (transformers' or TRL's): checkpoint-N is written in a staging folder and renamed
    into place once complete, so a process killed mid-save never leaves a checkpoint-N that looks whole (resume
    picks the last complete one; no public hook runs before a checkpoint is written: see
    internals.save_checkpoint_atomically); LoRA+ and Muon optimizers."""

    ftkit_config = None

    def create_optimizer(self, model=None):
        from ftkit.optimizers import create_optimizer

        if self.optimizer is None and self.ftkit_config is not None:
            self.optimizer = create_optimizer(self, self.ftkit_config)
        return super().create_optimizer(model)

    def _save_checkpoint(self, model, trial):
        from ftkit.internals import save_checkpoint_atomically

        save_checkpoint_atomically(self, super()._save_checkpoint, model, trial, replace_dir)


class AtomicCheckpointTrainer(FtkitTrainerMixin, Trainer):
    """transformers.Trainer with ftkit's atomic checkpoints and optimizers (supervised fine-tuning, pre-training)."""


def trained_tokens_loss(outputs, labels, num_items_in_batch=None):
    """Trainer's compute_loss_func for a packed row scored only where the next token is trained: the same sum over
    trained tokens, divided by the same count, as transformers' causal-LM loss (Trainer does the rest: gradient
    accumulation, averaging across processes)."""
    import torch

    target = labels[0, 1:]
    target = target[target != -100]
    loss = torch.nn.functional.cross_entropy(outputs.logits[0].float(), target, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(target.numel(), 1))


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most current architectures do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def collator(tokenizer, packed: bool = False, keep_trained_logits: bool = False):
    """transformers' collators. Packed (padding-free): one row holding the batch's examples end to end,
    position_ids restarting at each, no attention mask, so transformers builds a block-diagonal causal mask: same
    examples and loss, no padding; -100 on each example's first label, so no token is predicted across examples.
    `keep_trained_logits` adds `logits_to_keep`, the positions whose next token is trained.
    Padded: right-padded input_ids, labels padded with -100, an attention mask."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if not packed:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    if not keep_trained_logits:
        return flatten

    def packed_trained(batch: list[dict]) -> dict:
        out = flatten(batch)
        out["logits_to_keep"] = (out["labels"][0, 1:] != -100).nonzero().squeeze(-1)
        return out

    return packed_trained


class EventBridge(TrainerCallback):
    """Translates transformers.Trainer callbacks into ftkit events."""

    def __init__(self, emit, run: Run, should_stop=None, previewer=None, metric_names: dict | None = None):
        self.emit, self.run, self.should_stop, self.previewer = emit, run, should_stop, previewer
        self.metric_names = metric_names or {}  # a preference stage's logged metrics -> ftkit's names
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
                      eta_s=elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step),
                      **self._metrics(logs, ""))
        if "eval_loss" in logs:
            self.eval_s += logs.get("eval_runtime", 0.0)
            self.emit("eval", step=state.global_step, eval_loss=logs["eval_loss"], **self._metrics(logs, "eval_"))
        if args.world_size == 1 and (self.run._stop_requested or self.emit.stop_requested):
            control.should_training_stop = control.should_save = True  # a subscriber asked to stop (with several
            # processes, the next step's agreement in _stop_wanted stops them all together)

    def _metrics(self, logs: dict, prefix: str) -> dict:
        found = {name: logs[prefix + key] for key, name in self.metric_names.items() if prefix + key in logs}
        return {"metrics": found} if found else {}

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
        from ftkit.generation import answer

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
    try:
        tmp = partial_dir(path)
        model.save_pretrained(tmp, safe_serialization=True)
        replace_dir(tmp, path)
    finally:
        peft_config.init_lora_weights = init
    return path


def save_trained(model, tokenizer, template, cfg: RunConfig, out: Path, initial: Path | None = None) -> Path:
    """Adapter (LoRA) or model (full/freeze) + tokenizer + run config, written atomically."""
    import errno
    import shutil

    final = trained_dir(cfg, out)
    tmp = partial_dir(final)
    try:
        if initial:  # rank 2r adapter for the original base
            model.save_pretrained(tmp, safe_serialization=True, path_initial_model_for_weight_conversion=str(initial))
        elif "ref" in getattr(model, "peft_config", {}):  # DPO/KTO's frozen copy of the starting adapter stays out
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.chat_template, _ = chat_template_to_save(template, tokenizer)  # the note: the begin event
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
