# Source of 03_lora.ipynb: python scripts/make_notebook.py notebooks/03_lora.py notebooks/03_lora.ipynb
CELLS = [
("markdown", """
# 03 · LoRA: rank, alpha, targets, learning rate / LoRA 的关键参数

LoRA freezes the model and trains, beside chosen linear layers `W`, two small matrices `B·A` of rank `r`; the
layer computes `W·x + (alpha / r)·B·A·x`. Four knobs matter most: **which layers** get LoRA
(`lora_target`), **the rank** `lora_rank`, **the scale** `lora_alpha`, and **the learning rate**. This notebook
trains a few small runs side by side and compares their loss curves, then builds a config with the form and
logs a run to TensorBoard.

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"` (and `STEPS`).
"""),
("code", """
import os

import matplotlib.pyplot as plt
import torch

import ftkit

%load_ext ftkit

SMOKE = "CI" in os.environ
MODEL = "tiny"                       # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct"
STEPS = 40 if SMOKE else 240
torch.set_num_threads(1 if SMOKE else os.cpu_count())
BASE = dict(model_name_or_path=MODEL, dataset="demo", per_device_train_batch_size=8, max_steps=STEPS,
            logging_steps=5, val_size=16, eval_steps=STEPS, eval_on_start=True, overwrite_output_dir=True)
"""),
("markdown", """
## 1. Where LoRA goes, and how many parameters train / LoRA 加在哪些层，训练多少参数

`lora_target: all` puts LoRA on every linear layer except the output head; a list (`q_proj,v_proj`) picks
some. `ftkit.plan` sizes a run without loading weights: the same numbers `%%finetune --dry-run` prints.
"""),
("code", """
for target, rank in [("q_proj,v_proj", 8), ("all", 8), ("all", 32)]:
    p = ftkit.plan({**BASE, "lora_target": target, "lora_rank": rank})
    print(f"lora_target {target:<14} r={rank:<3} {p.counts['trainable']:>9,} of {p.counts['total']:,} parameters train")
counts = {t: ftkit.plan({**BASE, "lora_target": t}).counts["trainable"] for t in ("q_proj,v_proj", "all")}
assert counts["q_proj,v_proj"] < counts["all"]
"""),
("markdown", """
## 2. Four runs side by side / 四组实验对比

The same data and steps; one knob changed at a time. `alpha` defaults to `2 x rank`, so the update's scale
`alpha / r` stays 2 when the rank changes (`use_rslora: true` scales by `alpha / sqrt(r)` instead, steadier
at high ranks).
"""),
("code", """
experiments = {
    "r=8 all lr 2e-3": dict(lora_rank=8, lora_target="all", learning_rate=2e-3),
    "r=8 q,v lr 2e-3": dict(lora_rank=8, lora_target="q_proj,v_proj", learning_rate=2e-3),
    "r=32 all lr 2e-3": dict(lora_rank=32, lora_target="all", learning_rate=2e-3),
    "r=8 all lr 2e-4": dict(lora_rank=8, lora_target="all", learning_rate=2e-4),
}
runs = {}
for i, (name, knobs) in enumerate(experiments.items()):
    runs[name] = ftkit.train({**BASE, **knobs, "output_dir": f"outputs/lora-{i}"}, console=False)
    held_out = runs[name].eval_losses
    print(f"{name:<18} train loss {runs[name].losses[0][1]:.2f} -> {runs[name].losses[-1][1]:.2f}   "
          f"held-out {held_out[0][1]:.2f} -> {held_out[-1][1]:.2f}")
"""),
("code", """
fig, ax = plt.subplots(figsize=(7, 3.2))
for name, run in runs.items():
    ax.plot(*zip(*run.losses), label=name)
ax.set_xlabel("step"); ax.set_ylabel("training loss"); ax.legend(frameon=False); ax.grid(alpha=0.3)
plt.show()
final = {name: run.eval_losses[-1][1] for name, run in runs.items()}
assert all(run.eval_losses[-1][1] < run.eval_losses[0][1] for run in runs.values())  # every run learned
assert final["r=8 all lr 2e-4"] > final["r=8 all lr 2e-3"]  # ten times less learning rate: slower
"""),
("markdown", """
What to take away: the learning rate matters most (LoRA wants a larger one than full tuning: 1e-4 to 2e-3);
all linear layers usually beat attention-only targets for the same rank; a larger rank trains more parameters
and rarely changes much on a small dataset.

## 3. Build a config with the form / 用表单生成配置

`ftkit.panel()` is a form over the same schema; each field's tooltip is its documentation. It shows the YAML
as you edit, validates it without loading weights, inserts it as a `%%finetune` cell, or runs it.
"""),
("code", """
form = ftkit.panel(dataset="demo", lora_rank=16, learning_rate=2e-3, max_steps=STEPS)
assert "lora_rank: 16" in form.yaml() and form.config().lora_rank == 16
form
"""),
("markdown", """
## 4. TensorBoard / 用 TensorBoard 查看训练曲线

`report_to: tensorboard` writes the Trainer's scalars to `<output_dir>/runs/`. In Jupyter:
`%load_ext tensorboard` then `%tensorboard --logdir outputs/lora-tb/runs` (in a terminal:
`tensorboard --logdir outputs`).
"""),
("code", """
%%finetune --name tb
model_name_or_path: tiny
dataset: demo
lora_rank: 16
learning_rate: 2.0e-3
per_device_train_batch_size: 8
max_steps: {STEPS}
logging_steps: 5
report_to: tensorboard
output_dir: outputs/lora-tb
overwrite_output_dir: true
"""),
("code", """
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

(events,) = list((tb.output_dir / "runs").rglob("events.out.tfevents.*"))
acc = EventAccumulator(str(events.parent)); acc.Reload()
logged = acc.Scalars("train/loss")
print(len(logged), "loss points in TensorBoard; last", round(logged[-1].value, 3), "at step", logged[-1].step)
assert len(logged) == len(tb.losses) and logged[-1].step == STEPS
"""),
]
