"""Training events and their plain subscribers (console progress, JSONL log).

A run emits a small fixed set of events; anything that shows or records a run
(console line, notebook panel, JSONL file) is a callable that receives them.
Events are plain dicts with a `kind`, so they cross process boundaries as JSON
lines unchanged. A subscriber that returns "stop" asks the run to end after the
current step (a Stop button does this); what was trained is saved.

    begin  {examples, eval_examples, tokens, length_median, length_max, trained_tokens, sampled (streaming: the figures are
            of the stream's first `sampled` examples), eot_trained, truncated, trainable_params,
            total_params, max_steps, batch_tokens, device, model, finetuning, output_dir, memory, memory_mb,
            memory_available_mb, accepted, placeholders, note, config}
    step   {step, max_steps, epoch, loss, lr, grad_norm, tokens_per_s, memory_mb, memory_total_mb,
            memory_allocated_mb (CUDA only), elapsed_s, eta_s, metrics (preference stages: {reward_margin,
            reward_accuracy, chosen_reward, rejected_reward, kl} as the stage logs them)}
    eval   {step, eval_loss, metrics}
    sample {step, samples: [{prompt, answer}]}   (when the config lists preview_prompts)
    save   {step, path}
    end    {step, train_loss, runtime_s, output_dir, adapter_dir, stopped}
    error  {error, message}   (a run in a child process failed: see ftkit.launching)
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

Event = dict
Callback = Callable[[Event], None]
KINDS = ("begin", "step", "eval", "sample", "save", "end", "error")


class Emitter:
    """Sends each event to every subscriber; a broken subscriber warns once and is dropped."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        self.stop_requested = False

    def __call__(self, kind: str, **data) -> Event:
        assert kind in KINDS, kind
        event = {"kind": kind, "time": time.time(), **data}
        for cb in list(self.callbacks):
            try:
                if cb(event) == "stop":
                    self.stop_requested = True
            except Exception as e:  # a display must never kill a run
                warnings.warn(f"ftkit: event subscriber {cb!r} failed and was removed: {e!r}", stacklevel=2)
                self.callbacks.remove(cb)
        return event


class RunMetrics:
    """The loss curves of a run that records its events in `self.metrics` (in-process and launched runs)."""

    metrics: list[Event]

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["loss"]) for e in self.metrics if e["kind"] == "step"]

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["eval_loss"]) for e in self.metrics if e["kind"] == "eval"]


class JsonlLog:
    """Appends every event as one JSON line (the run's metrics.jsonl)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, event: Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")


class LossPlot(RunMetrics):
    """LLaMA-Factory's plot_loss: at the end, the loss curves as training_loss.png (and training_eval_loss.png when
    the run evaluated) in the run folder."""

    def __init__(self, folder: Path):
        self.folder, self.metrics = Path(folder), []

    def __call__(self, event: Event) -> None:
        self.metrics.append(event)
        if event["kind"] != "end":
            return
        import matplotlib

        matplotlib.use("Agg")  # files only, whatever backend the caller's process has
        from matplotlib.figure import Figure

        for name, points, label in (("training_loss.png", self.losses, "train loss"),
                                    ("training_eval_loss.png", self.eval_losses, "eval loss")):
            if points:
                fig = Figure(figsize=(6, 4), dpi=100)
                ax = fig.subplots()
                ax.plot(*zip(*points), label=label)
                ax.set(xlabel="step", ylabel="loss", title=f"{label}: {self.folder.name}")
                fig.savefig(self.folder / name)


def read_jsonl(path: Path) -> list[Event]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class ConsoleProgress:
    """One compact line per logged step, plus the pre-flight block and a closing line."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, e: Event) -> None:
        kind = e["kind"]
        if kind == "begin":
            self._print(preflight_text(e))
        elif kind == "step":
            width = len(str(e["max_steps"]))
            self._print(
                f"step {e['step']:>{width}}/{e['max_steps']}  epoch {e['epoch']:.2f}  loss {e['loss']:.4f}  "
                + "".join(f"{name.replace('_', ' ')} {value:.4g}  " for name, value in e.get("metrics", {}).items()) +
                f"lr {e['lr']:.2e}  {e['tokens_per_s']:,.0f} tok/s  mem {e['memory_mb']:,.0f} MiB  "
                f"elapsed {_clock(e['elapsed_s'])}  eta {_clock(e['eta_s'])}")
        elif kind == "eval":
            self._print(f"eval at step {e['step']}: loss {e['eval_loss']:.4f}"
                        + "".join(f", {name.replace('_', ' ')} {value:.4g}" for name, value in e.get("metrics", {}).items()))
        elif kind == "sample":
            for s in e["samples"]:
                self._print(f"sample at step {e['step']}: {s['prompt']!r} -> {s['answer']!r}")
        elif kind == "error":
            self._print(f"failed: {e['message']}")
        elif kind == "end":
            how = "stopped early" if e.get("stopped") else "done"
            loss = f"train loss {e['train_loss']:.4f}, " if e.get("train_loss") is not None else ""
            self._print(f"{how} at step {e['step']}: {loss}{e['runtime_s']:.0f}s; saved {e['adapter_dir']}")


def preflight_text(e: Event) -> str:
    """The short block printed before the first step."""
    trainable, total = e["trainable_params"], e["total_params"]
    data = (f"  data     {'streaming, the first ' if e.get('sampled') else ''}{e['examples']:,} "
            f"{e.get('unit', 'examples')} ({e['eval_examples']:,} held out), {e['tokens']:,} tokens "
            f"(median {e['length_median']}, longest {e['length_max']})")
    prompts = e.get("unit") == "prompts"  # GRPO: nothing is labelled; its answers are sampled as it trains
    if not prompts:
        data += f", {e['trained_tokens']:,} trained ({100 * e['trained_tokens'] / max(e['tokens'], 1):.0f}%)"
    lines = [
        f"ftkit run -> {e['output_dir']}", data,
        *([] if prompts else [f"  labels   end-of-turn token trained: {'yes' if e['eot_trained'] else 'NO'}"]),
        f"  model    {e['model']} on {e['device']}, {e['finetuning']}: {trainable:,} of {total:,} parameters "
        f"train ({100 * trainable / max(total, 1):.2f}%)",
        f"  steps    {e['max_steps']:,} updates of {e['batch_tokens']}",
        f"  memory   {e['memory']}; {e['memory_available_mb'] / 1024:,.1f} GiB available",
    ]
    if e.get("truncated"):
        lines.insert(2, f"  cutoff   {e['truncated']}")
    if e.get("placeholders"):
        lines.insert(2, f"  fill     {e['placeholders']}")
    if e.get("accepted"):
        lines.append(f"  config   accepted, not needed here: {e['accepted']}")
    if e.get("note"):  # absent from a dry run
        lines.append(f"  note     {e['note']}")
    return "\n".join(lines)
