"""The live panel under a `%%finetune` cell, and the function that runs a config with it.

LivePanel is one more event subscriber. In a Jupyter kernel it is an ipywidgets box (loss curve as a PNG in
an Image widget, step/lr/tokens/ETA line, memory gauge, preview answers, Stop button), redrawn in place at most
`fps` times a second; a background run's thread only assigns traits. When the run ends the box is replaced in
place by a static image and a text summary, so a saved notebook (GitHub, nbval, Colab) still shows the result.
Elsewhere (terminal IPython, scripts) it prints the console progress lines.
"""
from __future__ import annotations

import gc
import html
import io
import sys
import time

from ftkit.events import ConsoleProgress, _clock
from ftkit.notebook import need, use_widgets


class LivePanel:
    """Draws one run from its events; `stop_requested` (the Stop button) makes the next event answer "stop"."""

    def __init__(self, title: str = "", widgets: bool | None = None, fps: float = 4.0):
        self.title, self.fps = title, fps
        self.widgets = use_widgets() if widgets is None else widgets
        self.begin: dict | None = None
        self.last: dict | None = None      # the last step event
        self.steps: list[tuple[int, float]] = []
        self.evals: list[tuple[int, float]] = []
        self.samples: dict[str, dict[int, str]] = {}  # prompt -> step -> answer
        self.outcome: dict | None = None   # the end or error event
        self.stop_requested = False
        self.on_stop = None                # called by the Stop button (a background run's run.stop)
        self._drawn = 0.0
        self._handle = None
        self._text = None if self.widgets else ConsoleProgress()
        if self.widgets:
            self._build()

    # ---- events ----
    def __call__(self, e: dict):
        kind = e["kind"]
        if kind == "begin":
            self.begin = e
        elif kind == "step":
            self.last = e
            self.steps.append((e["step"], e["loss"]))
        elif kind == "eval":
            self.evals.append((e["step"], e["eval_loss"]))
        elif kind == "sample":
            for s in e["samples"]:
                self.samples.setdefault(s["prompt"], {})[e["step"]] = s["answer"]
        elif kind in ("end", "error"):
            self.outcome = e
        if self._text:
            self._text(e)
        elif kind in ("end", "error"):
            self.finish()
        elif kind != "step" or time.time() - self._drawn >= 1 / self.fps:
            self.draw()
        return "stop" if self.stop_requested else None

    def stop(self, *_) -> None:
        """What the Stop button does: end the run after the current step (what was trained is saved)."""
        self.stop_requested = True
        if self.widgets:
            self.stop_button.disabled, self.stop_button.description = True, "Stopping…"
        if self.on_stop:
            self.on_stop()

    # ---- widgets ----
    def _build(self) -> None:
        w = need("ipywidgets")
        self.header = w.HTML(f"<b>ftkit</b> {html.escape(self.title)} · starting (loading model and data)…")
        self.chart = w.Image(format="png", layout=w.Layout(width="620px"))
        self.stats = w.HTML()
        self.memory = w.FloatProgress(value=0, min=0, max=1, description="memory", bar_style="info")
        self.memory_text = w.Label()
        self.sample_box = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="End training after the current step and save what was trained "
                                            "(interrupting the kernel does the same)")
        self.stop_button.on_click(self.stop)
        self.box = w.VBox([self.header, self.chart, self.stats, w.HBox([self.memory, self.memory_text]),
                           self.sample_box, self.stop_button])

    def show(self) -> None:
        if self.widgets:
            from IPython.display import display

            self._handle = display(self.box, display_id=True)

    def draw(self) -> None:
        if not self.widgets:
            return
        self._drawn = time.time()
        b, s = self.begin, self.last
        if b:
            self.header.value = (f"<b>ftkit</b> {html.escape(self.title)} · {html.escape(b['model'])} · "
                                 f"{html.escape(b['finetuning'])} · {b['examples']:,} {b.get('unit', 'examples')} · {b['max_steps']:,} steps"
                                 f" → <code>{html.escape(b['output_dir'])}</code>")
        if s:
            self.stats.value = html.escape(_stats_line(s))
            self.memory.max, self.memory.value = max(s["memory_total_mb"], 1), s["memory_mb"]
            self.memory.bar_style = "danger" if s["memory_mb"] > 0.9 * s["memory_total_mb"] else "info"
            self.memory_text.value = _memory_text(s)
        if self.steps:
            self.chart.value = self.png()
        if self.samples:
            self.sample_box.value = samples_html(self.samples)

    def png(self) -> bytes:
        return loss_png(self.steps, self.evals, self.last["max_steps"] if self.last else None)

    def finish(self) -> None:
        """The run is over: leave a static image and a text summary where the live panel was."""
        if not self.widgets:
            return
        bundle = {"text/plain": self.summary()}
        if self.steps:
            import base64

            bundle["image/png"] = base64.b64encode(self.png()).decode()
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
        self.box.close()

    def summary(self) -> str:
        o = self.outcome or {}
        if o.get("kind") == "error":
            return f"ftkit {self.title}: failed: {o['message']}"
        lines = [f"ftkit {self.title}: {'stopped early' if o.get('stopped') else 'done'} at step {o.get('step', '?')}"
                 + (f", train loss {o['train_loss']:.4f}" if o.get("train_loss") is not None else "")
                 + (f", {o['runtime_s']:.0f}s" if o.get("runtime_s") is not None else "")]
        if self.steps:
            lines.append(f"  loss {self.steps[0][1]:.4f} -> {self.steps[-1][1]:.4f} over {len(self.steps)} logged steps")
        if self.evals:
            lines.append(f"  eval loss {self.evals[0][1]:.4f} -> {self.evals[-1][1]:.4f}")
        if self.last:
            lines.append(f"  {_stats_line(self.last)}; {_memory_text(self.last)}")
        for prompt, answers in self.samples.items():
            last = max(answers)
            lines.append(f"  sample {prompt!r} at step {last}: {answers[last]!r}")
        if o.get("adapter_dir"):
            lines.append(f"  saved {o['adapter_dir']}")
        return "\n".join(lines)


def _stats_line(s: dict) -> str:
    stage = "".join(f"{name.replace('_', ' ')} {value:.4g} · " for name, value in s.get("metrics", {}).items())
    return (f"step {s['step']}/{s['max_steps']} · epoch {s['epoch']:.2f} · loss {s['loss']:.4f} · {stage}"
            f"lr {s['lr']:.2e} · {s['tokens_per_s']:,.0f} tok/s · elapsed {_clock(s['elapsed_s'])} · "
            f"ETA {_clock(s['eta_s'])}")


def _memory_text(s: dict) -> str:
    total = s["memory_total_mb"] / 1024
    if s.get("memory_allocated_mb") is not None:
        return (f"GPU: {s['memory_allocated_mb'] / 1024:.1f} GiB allocated, {s['memory_mb'] / 1024:.1f} GiB reserved "
                f"of {total:.1f} GiB")
    return f"RAM: {s['memory_mb']:,.0f} MiB used by training of {total:.1f} GiB"


def loss_png(steps, evals, max_steps=None) -> bytes:
    """The loss curve (train, and eval when there is one) as PNG bytes (matplotlib, no pyplot state)."""
    need("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2, 2.6), dpi=100)
    ax = fig.add_subplot()
    ax.plot(*zip(*steps), color="#1f77b4", lw=1.4, label="train")
    if evals:
        ax.plot(*zip(*evals), "o-", color="#d62728", lw=1.2, ms=4, label="eval")
    if max_steps:
        ax.set_xlim(0, max_steps)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def samples_html(samples: dict[str, dict[int, str]]) -> str:
    """Preview answers: the first and the latest for each prompt (one column until a second step answers)."""
    steps = sorted({s for a in samples.values() for s in a})
    shown = steps[:1] + steps[-1:] if len(steps) > 1 else steps
    rows = []
    for prompt, answers in samples.items():
        cells = "".join(f"<td>{html.escape(answers.get(step, ''))}</td>" for step in shown)
        rows.append(f"<tr><td><b>{html.escape(prompt)}</b></td>{cells}</tr>")
    head = "".join(f"<th>step {step}</th>" for step in shown)
    return f"<table><tr><th>prompt</th>{head}</tr>" + "".join(rows) + "</table>"


def run_with_panel(config, title: str = "run", inline: bool = False, background: bool = False, nproc: int = 1):
    """Run `config` with a live panel: in a child process (default, `ftkit.launch`) or in this one (`inline`)."""
    import ftkit
    from ftkit.config import RunConfig
    from ftkit.errors import ConfigError

    cfg = config if isinstance(config, RunConfig) else RunConfig.from_any(config)
    if inline and (background or nproc > 1):
        raise ConfigError("--inline trains in this kernel, one process, in the foreground; drop --background and "
                          "--nproc, or drop --inline")
    panel = LivePanel(title)
    panel.show()
    try:
        if inline:
            return ftkit.train(cfg, callbacks=[panel], console=False, should_stop=lambda: panel.stop_requested)
        run = ftkit.launch(cfg, callbacks=[panel], nproc=nproc, background=background)
        panel.on_stop = run.stop
        return run
    except BaseException as e:
        if panel.outcome is None:  # failed before the run said so itself
            panel.outcome = {"kind": "error", "message": str(e).splitlines()[0] if str(e) else type(e).__name__}
            panel.finish()
        raise
    finally:
        if inline:
            free_memory()


def dry_run_text(cfg, device: str | None = None) -> str:
    """What `%%finetune --dry-run` prints: the keys away from their defaults, resolved, and the pre-flight plan."""
    import yaml

    import ftkit
    from ftkit.config import RunConfig
    from ftkit.events import preflight_text

    defaults = RunConfig().to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if k == "output_dir" or v != defaults.get(k)}
    return ("resolved config (other keys at their defaults: `ftkit train --help`):\n"
            + yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)
            + "\n" + preflight_text(ftkit.plan(cfg, device).summary()) + "\n(dry run: no weights loaded)")


def free_memory() -> None:
    """After an in-kernel run: collect the trainer's cycles and hand cached GPU memory back."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
