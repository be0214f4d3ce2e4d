# Source of 01_quickstart.ipynb: python scripts/make_notebook.py notebooks/01_quickstart.py notebooks/01_quickstart.ipynb
CELLS = [
("markdown", """
# 01 · Quickstart: fine-tune without leaving the notebook / 快速上手：在笔记本里完成微调

Four cells do the whole job:

1. `%load_ext ftkit` loads the magics; the kernel itself never imports torch: a child process started now
   imports it while you read on, so the first `%%finetune` starts training at once,
2. `ftkit.preview(...)` shows the data as the model will see it, trained tokens marked,
3. `%%finetune` trains from a YAML config with a live loss curve and memory gauge under the cell,
4. `%%chat` and `%merge` try the result.

The embedded `tiny` model (a 3.5M-parameter Llama with its own Chinese/English tokenizer) runs on any CPU in
about a minute. On a GPU with internet, put a real model in `model_name_or_path` (for example
`Qwen/Qwen2.5-0.5B-Instruct` with `template: qwen`); nothing else changes.

本教程用内置的 `tiny` 模型在 CPU 上一分钟内跑完：加载扩展、预览数据、`%%finetune` 训练（单元格下方实时显示
损失曲线和内存）、`%%chat` 对话、`%merge` 合并。换成真实模型只需改 `model_name_or_path`。
"""),
("code", """
import os
from pathlib import Path

import ftkit

%load_ext ftkit

SMOKE = "CI" in os.environ        # CI runs a shorter version of every notebook
STEPS = 300 if SMOKE else 720     # 720 steps of 8 = 20 passes over the 282 demo conversations; 300 (~20 s) already
                                  # gives the trained answers back
"""),
("markdown", """
## 1. Look at the data first / 先看数据

`demo` is a bilingual set bundled with ftkit (282 conversations, 60 of them multi-turn). The preview renders
examples with the chat template, shows token boundaries, and marks in green the tokens the loss is computed on:
the assistant's answers and their end-of-turn token. If the end-of-turn token were grey, the model would never
learn to stop. The histogram shows how many examples a `cutoff_len` would cut.

训练前先预览：绿色是参与损失计算的 token（助手回答及结束符），灰色只作为上下文。
"""),
("code", """
preview = ftkit.preview("demo", n=2, cutoff_len=256)
assert preview.eot_trained and preview.over_cutoff == 0
preview
"""),
("markdown", """
## 2. Fine-tune / 微调

The cell body is a run config: the same keys as `ftkit train` and LLaMA-Factory (flat, or grouped as in the seed
tutorial). `{STEPS}` takes the notebook variable's value. The run executes in a child process, so the
notebook's memory is untouched and a crash cannot take the kernel down; its events stream into the panel.
`preview_prompts` are answered as the model trains: watch the answers change.

Stop it early with the **Stop** button (or the kernel's interrupt ■): what was trained so far is saved.

单元格内容就是 YAML 训练配置，键名与 `ftkit train`、LLaMA-Factory 相同；`{STEPS}` 会替换成笔记本变量的值。
"""),
("code", """
%%finetune --name run
model_name_or_path: tiny
dataset: demo
finetuning_type: lora
lora_target: all
lora_rank: 16
learning_rate: 2.0e-3
lr_scheduler_type: cosine
per_device_train_batch_size: 8
max_steps: {STEPS}
logging_steps: 10
val_size: 16
cutoff_len: 256
preview_prompts:
  - Who are you?
  - 什么是LoRA？
output_dir: outputs/quickstart
overwrite_output_dir: true
"""),
("code", """
first, last = run.losses[0][1], run.losses[-1][1]
print(f"loss {first:.2f} -> {last:.2f}; held-out loss {run.eval_losses[0][1]:.2f} -> {run.eval_losses[-1][1]:.2f}")
assert last < first / 2 and run.eval_losses[-1][1] < run.eval_losses[0][1]
assert (run.adapter_dir / "adapter_model.safetensors").exists()
"""),
("markdown", """
## 3. Talk to it / 对话

The cell is your message; the answer streams in. The conversation continues from cell to cell until
`%chat --reset`. Before training, `tiny` answered "Who are you?" with loose sentences from the stories it was
pre-trained on; now it answers with what the demo set teaches.

单元格内容就是你的消息，回答会流式输出。微调前 `tiny` 只会接续它读过的故事，现在它会按演示数据回答。
"""),
("code", """
%%chat --max_new_tokens 40
Who are you?
"""),
("code", """
%%chat --max_new_tokens 40
什么是LoRA？
"""),
("code", """
%chat --reset
answer = ftkit.generate(run, "Who are you?", max_new_tokens=40)
print(answer)
assert answer.startswith("I am Tiny") and "<|im_end|>" not in answer      # the identity the demo set teaches
assert "低秩" in ftkit.generate(run, "什么是LoRA？", max_new_tokens=40)      # "low-rank", from the LoRA answer
"""),
("markdown", """
Base model and fine-tuned run side by side / 微调前后对比：
"""),
("code", """
table = ftkit.compare(["Who are you?", "什么是LoRA？"], runs=["tiny", run], max_new_tokens=40)
base, tuned = table.answers[0]
assert tuned.startswith("I am Tiny") and not base.startswith("I am Tiny")
table
"""),
("markdown", """
## 4. Merge / 合并

`%merge` folds the LoRA weights into the base model and checks, on a probe batch, that the merged model gives
the same logits as base + adapter before writing anything. The merged folder is a plain `transformers` model
that carries its chat template.
"""),
("code", """
merged = %merge run
assert (Path(merged) / "model.safetensors").exists()
assert ftkit.generate(merged, "Who are you?", max_new_tokens=40) == answer
"""),
("markdown", """
## 5. Check a config without training, train in the background / 只检查配置；后台训练

`--dry-run` validates the config and the data and prints the plan (examples, tokens, trainable parameters,
memory estimate) without loading weights. `--background` returns at once: other cells run while the panel keeps
updating; `bg.wait()` blocks until it ends, `bg.stop()` ends it early.
"""),
("code", """
%%finetune --dry-run
dataset: demo
finetuning_type: lora
quantization_bit: 4
max_steps: 100
"""),
("code", """
%%finetune --background --name bg
dataset: demo
max_steps: 20
learning_rate: 2.0e-3
per_device_train_batch_size: 8
output_dir: outputs/quickstart-bg
overwrite_output_dir: true
"""),
("code", """
print("the kernel is free while bg trains:", bg)
bg.wait()
assert bg.done and bg.losses[-1][0] == 20
"""),
("markdown", """
## 6. Build a config with a form / 用表单生成配置

`ftkit.panel()` is a form over the same schema (each field's tooltip is its documentation). It shows the YAML
as you edit, validates it, inserts it as a new `%%finetune` cell, or runs it with the live panel.
"""),
("code", """
form = ftkit.panel(dataset="demo", lora_rank=16, learning_rate=2e-3, max_steps=100)
assert "lora_rank: 16" in form.yaml()
form
"""),
]
