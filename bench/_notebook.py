"""What a `%%finetune` cell waits for: `ftkit.launch` to the child's first step, cold and with the warm child.

    python bench/_notebook.py CONFIG.json ROUNDS   (prints JSON: seconds per round, cold and warm)

A cold launch starts `python -m ftkit.launching`, which imports the engine; with `keep_warm()` (what `%load_ext ftkit`
turns on) a child started ahead has done that while the notebook was busy elsewhere: here, until its CPU time
stops growing. The time runs from the call to the arrival of the first `step` event, so it includes the first
step itself (the processes' own first-step times in compare.py stop at its start).
"""
from __future__ import annotations

import json
import sys
import time

import psutil

import ftkit
from ftkit import launching as launch


def to_first_step(cfg: dict) -> float:
    t, seen = time.time(), {}

    def callback(event):
        if event["kind"] == "step" and "s" not in seen:
            seen["s"] = time.time() - t
            return "stop"  # saved and done: the rest of the run is the same either way

    ftkit.launch(cfg, callbacks=[callback])
    return seen["s"]


def settled(pid: int) -> None:
    process, last = psutil.Process(pid), -1.0
    while (now := sum(process.cpu_times()[:2])) - last > 0.02:
        last = now
        time.sleep(0.5)


def main() -> None:
    cfg, rounds = json.load(open(sys.argv[1], encoding="utf-8")), int(sys.argv[2])
    result = {"cold": [], "warm": []}
    for _ in range(rounds):
        launch.keep_warm(False)
        result["cold"].append(to_first_step(cfg))
        launch.keep_warm()
        settled(launch._warm["process"].pid)
        result["warm"].append(to_first_step(cfg))
    launch.keep_warm(False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
