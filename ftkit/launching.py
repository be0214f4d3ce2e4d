"""Run a config in a child process and relay its events here: what `%%finetune` does by default.

The child is `python -m ftkit.launching` (or `accelerate launch -m ftkit.launching` for several processes). It
trains with `ftkit.train` and prints each event as one JSON line on stdout, after a marker; the parent reads
them and hands them to the same callbacks an in-process run would get. The parent never loads the model,
so the memory returns when the child exits, and a crash or an out-of-memory kill in training is a message
here, not a dead notebook kernel.

Starting: with `keep_warm()` on (`%load_ext ftkit` turns it on) one child is started ahead and imports the
engine (torch, transformers, peft: ~3 s on 2 cores) while the notebook does other things; the next single-process
run hands it its config on stdin and reaches its first step in a fraction of a second. A new one is started when a
run ends. A waiting child holds ~0.5 GB and exits when this process does; one started under other environment
variables than the run's is not used.

Stopping: `run.stop()` (a Stop button, a subscriber returning "stop") creates a stop file the child checks
after every step; a Ctrl-C (kernel interrupt) here sends the child SIGINT (one process) or creates the stop
file (several): either way it saves what was trained and exits. A second Ctrl-C stops it at once.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ftkit import errors
from ftkit.config import RunConfig
from ftkit.events import Emitter, RunMetrics

MARK = "@ftkit-event "
CONFIG_ENV, STOP_ENV = "FTKIT_LAUNCH_CONFIG", "FTKIT_STOP_FILE"
STOP_FILE = ".ftkit-stop"  # in the run's output folder


class LaunchedRun(RunMetrics):
    """A run in a child process. Fills in like `train`'s Run as events arrive; `wait()` and `stop()` control it."""

    model = tokenizer = None  # the model lives in the child; ftkit.generate(run) loads the saved adapter

    def __init__(self, config: RunConfig, process: subprocess.Popen, callbacks, nproc: int):
        self.config, self.process, self.nproc = config, process, nproc
        self.output_dir = config.run_dir
        self.adapter_dir: Path | None = None
        self.metrics: list[dict] = []
        self.stopped = False
        self.log = collections.deque(maxlen=200)  # the child's other output (warnings, tracebacks)
        self.error: errors.FtkitError | None = None
        self._emit = Emitter([self.record, *callbacks])
        self._interrupts = 0
        self._thread: threading.Thread | None = None

    # ---- the Run interface ----
    def record(self, event: dict) -> None:
        self.metrics.append(event)
        if event["kind"] == "end":
            self.adapter_dir, self.stopped = Path(event["adapter_dir"]), event["stopped"]

    @property
    def done(self) -> bool:
        return self.process.poll() is not None and not (self._thread and self._thread.is_alive())

    def stop(self) -> None:
        """Ask the child to end after the current step; what was trained is saved."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / STOP_FILE).touch()

    def wait(self, timeout: float | None = None) -> "LaunchedRun":
        """Block until the child has exited (a background run); raises if it failed."""
        if self._thread:
            self._thread.join(timeout)
        else:
            self._pump()
        if self.error:
            raise self.error
        return self

    def __repr__(self) -> str:
        state = "running" if not self.done else ("failed" if self.error else "stopped" if self.stopped else "done")
        last = f", loss {self.losses[-1][1]:.4f}" if self.losses else ""
        return f"LaunchedRun({str(self.output_dir)!r}, {state}{last})"

    # ---- relaying ----
    def _pump(self) -> None:
        """Read the child's output to its end, relaying events; a Ctrl-C here is passed on as a stop."""
        while True:
            try:
                for line in self.process.stdout:
                    self._line(line)
                break
            except KeyboardInterrupt:
                self._interrupt()
        self.process.wait()
        self.process.stdout.close()
        _warm_up()  # for the next run, now that this one no longer needs the cores
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)
        if self.error is None and not any(e["kind"] == "end" for e in self.metrics):
            self.error = errors.RunError(self._crash_text())
        if self.error is not None and not any(e["kind"] == "error" for e in self.metrics):
            self._emit("error", error=type(self.error).__name__, message=str(self.error))

    def _line(self, line: str) -> None:
        if not line.startswith(MARK):
            self.log.append(line.rstrip("\n"))
            return
        event = json.loads(line[len(MARK):])
        kind = event.pop("kind")
        if kind == "error":  # the child refused the run: the same error class as in-process
            cls = getattr(errors, event["error"], errors.FtkitError)
            self.error = cls(event["problems"], title=event.get("title"))
            event = {"error": event["error"], "message": str(self.error)}
        self._emit(kind, **{k: v for k, v in event.items() if k != "time"})
        if self._emit.stop_requested:
            self.stop()

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self.nproc == 1:  # the child's own handler: first SIGINT stops after the step, a second at once
            self.process.send_signal(signal.SIGINT)
        elif self._interrupts == 1:
            self.stop()
        else:
            os.killpg(self.process.pid, signal.SIGINT)

    def _crash_text(self) -> str:
        rc = self.process.returncode
        how = (f"was killed by signal {-rc}" + (" (SIGKILL: usually the system ran out of memory)"
                                                if rc == -signal.SIGKILL else "")) if rc < 0 else f"exited with code {rc}"
        tail = [line for line in self.log if line.strip()][-1:]
        begin = next((e for e in self.metrics if e["kind"] == "begin"), None)
        advice = (f"the pre-flight estimate was {begin['memory']}; " if begin else "") + (
            "if memory ran out, lower per_device_train_batch_size or cutoff_len, set gradient_checkpointing: true "
            "or quantization_bit: 4; run.log holds the process's last output")
        return f"the training process {how}" + (f": {tail[0]}" if tail else "") + f"; {advice}"


def launch(config, callbacks=(), nproc: int = 1, background: bool = False) -> LaunchedRun:
    """Train `config` in a child process (`accelerate launch` for nproc > 1), relaying events to `callbacks`.

    Returns when the run ends (raising its error if it failed), or at once with `background=True`
    (then `run.wait()` and `run.stop()`).
    """
    from ftkit.planning import load_config

    cfg = load_config(config)  # config errors stay here, all at once
    if nproc < 1:
        raise errors.ConfigError(f"nproc: must be at least 1, got {nproc}")
    (cfg.run_dir / STOP_FILE).unlink(missing_ok=True)
    run_env = {CONFIG_ENV: json.dumps(cfg.to_dict(), default=str), STOP_ENV: str(cfg.run_dir / STOP_FILE)}
    process = _take_warm(run_env) if nproc == 1 else None
    if process is None:
        process = _start(nproc, run_env)
    run = LaunchedRun(cfg, process, callbacks, nproc)
    if background:
        run._thread = threading.Thread(target=run._pump, name="ftkit-launch", daemon=True)
        run._thread.start()
        return run
    return run.wait()


def _start(nproc: int = 1, run_env: dict | None = None) -> subprocess.Popen:
    """A child that trains the config in `run_env`, or (None) a warm one that waits for it on stdin."""
    child = [sys.executable, "-m", "ftkit.launching"] + ["--wait-for-config"] * (run_env is None)
    if nproc > 1:
        # --multi_gpu is accelerate's name for "one process per device through torchrun"; on a CPU it starts
        # nproc processes that train with gloo (its --cpu would start one)
        child = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ftkit.launching"]
    env = {**os.environ, **(run_env or {}),
           "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.Popen(child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL if run_env else subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", env=env, start_new_session=True)


# ---- a child started ahead --------------------------------------------------------------------------------------

_warm: dict = {"on": False, "process": None, "environ": None}
_warm_lock = threading.Lock()  # a background run ends (and warms up) on its own thread


# what ftkit sets in every child anyway (model.quiet, the CLI), and pytest's name of the test phase
_UNCOMPARED = ("TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTEST_CURRENT_TEST")


def _environ() -> dict:
    """The environment a child inherits, as far as it can matter to a run (a change means a fresh child)."""
    return {k: v for k, v in os.environ.items() if k not in _UNCOMPARED}


def keep_warm(on: bool = True) -> None:
    """Keep one child started ahead for the next single-process run (see the module's docstring), or stop doing
    so and end the waiting one."""
    _warm["on"] = on
    if on:
        _warm_up()
    else:
        with _warm_lock:
            _dismiss()


def _warm_up() -> None:
    with _warm_lock:
        process = _warm["process"]
        if _warm["on"] and (process is None or process.poll() is not None):
            _dismiss()
            _warm["process"], _warm["environ"] = _start(), _environ()


def _take_warm(run_env: dict) -> subprocess.Popen | None:
    """The waiting child, given this run (and this folder: paths in a config are relative to it); None if there
    is none, it died, or the environment changed since it started (it imported under the old one)."""
    with _warm_lock:
        process = _warm["process"]
        if process is None or process.poll() is not None or _warm["environ"] != _environ():
            _dismiss()
            return None
        _warm["process"] = None
    try:
        process.stdin.write(json.dumps({**run_env, "cwd": os.getcwd()}) + "\n")
        process.stdin.close()
    except OSError:  # it ended between the poll and the write
        _end(process)
        return None
    return process


def _dismiss() -> None:
    process, _warm["process"], _warm["environ"] = _warm["process"], None, None
    if process is not None:
        _end(process)


def _end(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:  # stdin's unsent config, when the child ended before it was written
            pass


def _wait_for_config() -> None:
    """The warm child's side: import the engine, then wait for a run's config (exit when the parent goes)."""
    from ftkit.process import exit_now, preload_engine

    preload_engine()  # bitsandbytes too, if installed: the run's config is not known yet
    line = sys.stdin.readline()
    if not line:
        exit_now(0)
    message = json.loads(line)
    cwd = message.pop("cwd")
    os.chdir(cwd)
    sys.path[0] = cwd  # where `python -m` started it, as for a child started now
    os.environ.update(message)


def _child() -> int:
    """The child's side: train with events on stdout (rank 0 only), errors as one event line."""
    cfg = RunConfig.from_dict(json.loads(os.environ[CONFIG_ENV]))
    stop_file = Path(os.environ[STOP_ENV])
    main = int(os.environ.get("RANK", "0")) == 0

    def relay(event: dict) -> None:
        if main:
            sys.stdout.write(MARK + json.dumps(event, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()

    try:
        from ftkit.process import start_own_process

        start_own_process(cfg)
        from ftkit.training import train

        train(cfg, callbacks=[relay], console=False, should_stop=stop_file.exists)
    except errors.FtkitError as e:
        relay({"kind": "error", "error": type(e).__name__, "problems": e.problems, "title": e.title})
        return 2
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            relay({"kind": "error", "error": "RunError", "title": None, "problems": [
                f"out of memory: {str(e).splitlines()[0]}; lower per_device_train_batch_size or cutoff_len, "
                "set gradient_checkpointing: true or quantization_bit: 4"]})
            return 3
        raise
    return 0


if __name__ == "__main__":
    from ftkit.process import exit_now

    if "--wait-for-config" in sys.argv:
        _wait_for_config()
    exit_now(_child())
