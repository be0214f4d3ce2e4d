# Source of 05_merge_and_generate.ipynb: python scripts/make_notebook.py notebooks/05_merge_and_generate.py notebooks/05_merge_and_generate.ipynb
CELLS = [
("markdown", """
# 05 · Merge, generate, sample, export / 合并、生成、采样与导出

A LoRA run leaves a small adapter beside an untouched base model. To ship it, fold the adapter into the base
(`merge`): the result is an ordinary `transformers` model folder that any tool loads. This notebook merges a
run, checks the merged model answers like base + adapter, runs it through a plain `transformers` pipeline as
the seed tutorial does, tries sampling settings, and exports it to ONNX.

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"` (and `STEPS`).
"""),
("code", """
import os
from pathlib import Path

import torch

import ftkit

SMOKE = "CI" in os.environ
MODEL = "tiny"                       # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct"
STEPS = 120 if SMOKE else 720
torch.set_num_threads(1 if SMOKE else os.cpu_count())
run = ftkit.train(dict(model_name_or_path=MODEL, dataset="demo", lora_rank=16, learning_rate=2e-3,
                       per_device_train_batch_size=8, max_steps=STEPS, logging_steps=40,
                       output_dir="outputs/merge-demo", overwrite_output_dir=True))
"""),
("markdown", """
## 1. Merge / 合并

The base is reloaded in full precision (also after QLoRA, whose base trained in 4 bits), the adapter applied
and folded in, and before anything is written the merged model's logits on a probe batch are compared with
base + adapter's. The folder carries the run's chat template and stops at the end of a turn.
"""),
("code", """
merged = ftkit.merge(run.adapter_dir)
print(sorted(p.name for p in merged.iterdir()))
assert (merged / "model.safetensors").exists() and (merged / "chat_template.jinja").exists()
"""),
("code", """
prompts = ["Who are you?", "什么是LoRA？", "Translate into Chinese: Good morning."]
for p in prompts:
    with_adapter = ftkit.generate(run, p, max_new_tokens=40)   # base + adapter
    folded = ftkit.generate(merged, p, max_new_tokens=40)      # the merged folder
    print(f"{p}\\n  {folded}")
    assert folded == with_adapter and folded
"""),
("markdown", """
## 2. A plain `transformers` pipeline / 直接用 transformers 推理

Nothing ftkit-specific is needed to use the merged folder: the chat template inside it formats the messages,
and `generation_config.json` stops at the end-of-turn token.
"""),
("code", """
from transformers import pipeline

chat = pipeline("text-generation", model=str(merged))
reply = chat([{"role": "user", "content": prompts[2]}], max_new_tokens=40, do_sample=False)
answer = reply[0]["generated_text"][-1]["content"]
print(answer)
assert answer == ftkit.generate(merged, prompts[2], max_new_tokens=40)
"""),
("markdown", """
## 3. Sampling settings / 采样参数

Greedy decoding (the default here) always gives the same answer. Sampling draws each token at random from the
model's distribution: `temperature` sharpens (< 1) or flattens (> 1) it, `top_p` keeps the smallest set of
tokens whose probabilities add up to p, `top_k` the k most likely, `repetition_penalty` discourages repeats.
Seed torch's generator for reproducible samples.
"""),
("code", """
settings = {"greedy": {}, "t=0.7, top_p=0.9": dict(temperature=0.7, top_p=0.9),
            "t=1.5": dict(temperature=1.5), "t=0.7, top_k=5, rep 1.3": dict(temperature=0.7, top_k=5,
                                                                            repetition_penalty=1.3)}
answers = {}
for name, kw in settings.items():
    torch.manual_seed(0)
    answers[name] = ftkit.generate(merged, "Who are you?", max_new_tokens=30, **kw)
    print(f"{name:<24} {answers[name]}")
torch.manual_seed(0)
assert ftkit.generate(merged, "Who are you?", max_new_tokens=30, temperature=1.5) == answers["t=1.5"]
"""),
("markdown", """
## 4. Before and after / 微调前后对比
"""),
("code", """
table = ftkit.compare(prompts, runs=[MODEL, merged], max_new_tokens=40)
assert all(row[0] != row[1] for row in table.answers)
table
"""),
("markdown", """
## 5. Export to ONNX / 导出 ONNX

`ftkit export-onnx` (or `ftkit.export.export_onnx`) writes `model.onnx` with its weights, the tokenizer and the
template; it checks onnxruntime's logits against torch's before finishing. `ftkit.generate` and `ftkit chat
--onnx` run it without torch's model code. Needs `pip install 'ftkit[onnx]'`.
"""),
("code", """
import importlib.util

if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
    from ftkit.export import export_onnx

    onnx_dir = export_onnx(merged, "outputs/merge-demo/onnx")
    onnx_answer = ftkit.generate(str(onnx_dir), prompts[0], max_new_tokens=40)
    print(onnx_answer)
    assert onnx_answer == ftkit.generate(merged, prompts[0], max_new_tokens=40)
else:
    print("onnxruntime/onnxscript not installed: pip install 'ftkit[onnx]'")
"""),
("markdown", """
## 6. Export to GGUF for llama.cpp, Ollama, LM Studio / 导出 GGUF（llama.cpp、Ollama、LM Studio）

One call, pure Python (the `gguf` package, llama.cpp's own writer and tensor names): no llama.cpp clone, no
compiler. A run is merged first. The file is written under a temporary name and kept only once it loads back
with `transformers` and gives the same token ids and logits (the proof line). Beside it, an Ollama
`Modelfile`: the run's chat template in Ollama's template language, its stop tokens. `q8_0` halves the size of
`f16` at a small cost; `q4_0` quarters it. In a notebook: `%export_gguf RUN --quant q8_0`.

一行导出：先合并，再写出 GGUF，并用 transformers 读回校验（同样的 token id 与 logits）；旁边生成 Ollama 的
`Modelfile`，之后 `ollama create 名字 -f Modelfile` 即可在本机运行。
"""),
("code", """
gguf_file = ftkit.export_gguf(run.output_dir, quant="q8_0")
modelfile = gguf_file.with_suffix(".Modelfile")
print(modelfile.read_text())
assert gguf_file.stat().st_size < 0.6 * (merged / "model.safetensors").stat().st_size
assert "PARAMETER stop" in modelfile.read_text()
"""),
("markdown", """
On your laptop, with [Ollama](https://ollama.com) installed, the next step is the line the export printed:

```bash
cd outputs/merge-demo && ollama create merge-demo -f model-q8_0.Modelfile && ollama run merge-demo
```

LM Studio and llama.cpp (`llama-cli -m model-q8_0.gguf -cnv`) open the `.gguf` file directly; the chat template
travels inside it. K-quants (`q4_k_m`, ...) cannot be written by the `gguf` package: export `f16` and run
llama.cpp's `llama-quantize` on it.
"""),
]
