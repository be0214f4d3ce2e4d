# Source of 00_engine_tour.ipynb: python scripts/make_notebook.py notebooks/00_engine_tour.py notebooks/00_engine_tour.ipynb
CELLS = [
("markdown", """
# 00 · The engine in five calls / 五步走完微调流程

ftkit's engine is plain Python: `ftkit.train`, `ftkit.merge`, `ftkit.generate`, `ftkit.convert`.
The notebook magics and the `ftkit` command are thin faces over these same calls.

This tour fine-tunes the embedded `tiny` model (a 3.5M-parameter Llama pretrained on bundled
Chinese/English text) on the bilingual demo set, on CPU, in about a minute.

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"` (and `TEMPLATE = "qwen"`).
"""),
("code", """
import os

import torch

import ftkit

SMOKE = "CI" in os.environ          # CI runs a shorter version of every notebook
MODEL, TEMPLATE = "tiny", "auto"    # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct", "qwen"
torch.set_num_threads(1 if SMOKE else os.cpu_count())
"""),
("markdown", """
## 1. Data / 数据

The seed tutorial's format is a list of `{"conversation": [{"role", "content"}, ...]}` records, single- or
multi-turn. Alpaca, ShareGPT, OpenAI messages, MOSS, ChatGLM3 and Qwen files are recognised automatically;
`ftkit.convert` rewrites any of them in the conversation format.
"""),
("code", """
from ftkit.data import load_conversations, resolve_dataset

demo = load_conversations(resolve_dataset("demo").path)
print(len(demo), "conversations;", sum(len(c) > 2 for c in demo), "multi-turn")
demo[0]
"""),
("code", """
n = ftkit.convert("../data/formats/alpaca.json", "outputs/alpaca_as_conversation.json")
converted = load_conversations(resolve_dataset("outputs/alpaca_as_conversation.json").path)
assert n == len(converted) == 3
converted[2]
"""),
("markdown", """
## 2. Train / 训练

One config, the same keys as `ftkit train` and `%%finetune`. Before the first step ftkit prints a pre-flight
block: examples, tokens, how many are trained, whether the end-of-turn token is trained (or the model never
learns to stop), and how many parameters LoRA trains.
"""),
("code", """
run = ftkit.train({
    "model_name_or_path": MODEL, "template": TEMPLATE, "dataset": "demo",
    "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16,
    "learning_rate": 2e-3, "per_device_train_batch_size": 8,
    "max_steps": 80 if SMOKE else 400, "logging_steps": 20, "val_size": 20,
    "output_dir": "outputs/engine-tour", "overwrite_output_dir": True,
})
first, last = run.losses[0][1], run.losses[-1][1]
assert last < first / 2, (first, last)
print(f"loss {first:.2f} -> {last:.2f}; held-out loss {run.eval_losses[0][1]:.2f} -> {run.eval_losses[-1][1]:.2f}")
"""),
("markdown", """
## 3. Merge and generate / 合并与生成

`ftkit.merge` folds the LoRA weights into the base and checks on a probe batch that the merged model gives the
same logits as base + adapter. The merged folder carries the chat template, so plain `transformers` works on it.
"""),
("code", """
merged = ftkit.merge(run.adapter_dir)
answer = ftkit.generate(merged, "Who are you?", max_new_tokens=40)
print(answer)
assert answer and "<|im_end|>" not in answer
"""),
("code", """
from transformers import pipeline

chat = pipeline("text-generation", model=str(merged))
reply = chat([{"role": "user", "content": "Translate into Chinese: Good morning."}], max_new_tokens=30,
             do_sample=False)[0]["generated_text"][-1]["content"]
print(reply)
assert reply == ftkit.generate(merged, "Translate into Chinese: Good morning.", max_new_tokens=30)
"""),
]
