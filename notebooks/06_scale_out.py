# Source of 06_scale_out.ipynb: python scripts/make_notebook.py notebooks/06_scale_out.py notebooks/06_scale_out.ipynb
CELLS = [
("markdown", """
# 06 · From one process to several / 从单进程到多卡

The same config scales out unchanged: ftkit trains with `transformers.Trainer`, so `accelerate launch` runs it
as N processes (DDP: one per GPU with NCCL, or CPU processes with gloo, as here). From a notebook there are
two ways:

1. **`%%finetune --nproc N`** / `ftkit.launch(config, nproc=N)`: the run as a child `accelerate launch`, its
   events streamed to the live panel. The usual choice: works at any point in a notebook.
2. **`accelerate.notebook_launcher(fn, num_processes=N)`**: forks the kernel N times to run a function of your
   own. The kernel must not have trained or imported bitsandbytes before (accelerate refuses), so it comes
   first here.

Each process takes `per_device_train_batch_size` examples, so 2 processes x 4 examples train on the same
global batch as 1 process x 8, and give the same losses. **On a GPU machine, change one line:**
`NPROC = torch.cuda.device_count()`.
"""),
("code", """
import os

import torch

import ftkit
from ftkit.events import read_jsonl

%load_ext ftkit

SMOKE = "CI" in os.environ
NPROC = 2                          # on a machine with GPUs: torch.cuda.device_count()
STEPS = 6 if SMOKE else 30        # less than one epoch (282 examples / 8 = 35 steps): see section 3
CONFIG = dict(model_name_or_path="tiny", dataset="demo", learning_rate=2e-3, max_steps=STEPS, logging_steps=1,
              threads=1, overwrite_output_dir=True)
"""),
("markdown", """
## 1. `accelerate.notebook_launcher` with a function of your own / 用 notebook_launcher 运行自定义函数

The function runs in N forked copies of this kernel; each calls `ftkit.train`, and the Trainer joins them into
one DDP group. Only the first process writes the run's files.
"""),
("code", """
from accelerate import notebook_launcher


def train_fn(config):
    ftkit.train(config, console=False)


notebook_launcher(train_fn, ({**CONFIG, "per_device_train_batch_size": 4, "output_dir": "outputs/scale-nl"},),
                  num_processes=NPROC)
forked = [(e["step"], e["loss"]) for e in read_jsonl("outputs/scale-nl/metrics.jsonl") if e["kind"] == "step"]
print([round(loss, 4) for _, loss in forked])
assert [step for step, _ in forked] == list(range(1, STEPS + 1))
"""),
("markdown", """
## 2. `%%finetune --nproc 2`: two processes, 4 examples each / 两个进程，每个 4 条

The pre-flight block says `4 x 1 accumulation x 2 processes`; only the first process reports events.
"""),
("code", """
%%finetune --nproc {NPROC} --name two
model_name_or_path: tiny
dataset: demo
learning_rate: 2.0e-3
max_steps: {STEPS}
logging_steps: 1
threads: 1
per_device_train_batch_size: 4
output_dir: outputs/scale-2
overwrite_output_dir: true
"""),
("markdown", """
The same from Python, and from a terminal:

```python
run = ftkit.launch(config, nproc=2)          # returns when done; background=True returns at once
```
```bash
ftkit train my_config.yaml --nproc 2
accelerate launch --multi_gpu --num_processes 2 -m ftkit train my_config.yaml   # the same thing by hand
```

## 3. One process, 8 examples a step: the same losses / 单进程每步 8 条：损失相同

Within the first epoch the losses match step for step (to about 1e-7). From the second epoch on they differ in
detail, not in level: several processes share a `DistributedSampler`, whose shuffle of the next epoch is not
the one a single process draws.
"""),
("code", """
one = ftkit.train({**CONFIG, "per_device_train_batch_size": 8, "output_dir": "outputs/scale-1"}, console=False)
for name, losses in [("1 x 8", one.losses), ("2 x 4, %%finetune", two.losses), ("2 x 4, notebook_launcher", forked)]:
    print(f"{name:<26}", [round(loss, 4) for _, loss in losses])
for other in (two.losses, forked):
    assert all(abs(a - b) <= 1e-3 * abs(b) for (_, a), (_, b) in zip(other, one.losses))
"""),
("markdown", """
## 4. Larger models: DeepSpeed ZeRO and FSDP / 更大的模型

When the model does not fit one GPU even with QLoRA, shard it. Both are plain config keys passed to the
Trainer; ready files are in `examples/`:

- `deepspeed: examples/deepspeed/ds_z3_config.json` (also ZeRO-2 and ZeRO-3 with CPU offload), see
  `examples/llama3_lora_sft_ds3.yaml`; needs `pip install deepspeed` and CUDA;
- `fsdp: true` with `fsdp_config: {transformer_layer_cls_to_wrap: [LlamaDecoderLayer]}`, see
  `examples/llama3_full_sft_fsdp.yaml`.

ftkit checks them before starting (the file exists, is valid JSON, the ZeRO stage, the package is installed):
"""),
("code", """
from pathlib import Path

from ftkit.config import RunConfig
from ftkit.planning import check_run

ds = Path("../examples/deepspeed/ds_z3_config.json")
print(ds.read_text()[:300], "...")
try:
    check_run(RunConfig.from_dict({"dataset": "demo", "deepspeed": str(ds)}))
    print("deepspeed is installed: ready for ftkit train CONFIG --nproc N on GPUs")
except ftkit.ConfigError as e:
    print(e)
"""),
]
