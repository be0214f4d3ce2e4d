# Source of 04_qlora.ipynb: python scripts/make_notebook.py notebooks/04_qlora.py notebooks/04_qlora.ipynb
CELLS = [
("markdown", """
# 04 · QLoRA and memory / QLoRA 与显存

QLoRA keeps the frozen base in 4 bits (nf4, bitsandbytes) and trains LoRA on top in 16 or 32 bits: a 7B model
that needs ~17 GB for bf16 LoRA fits in ~8 GB. This notebook sizes runs of a real model's shape without
downloading it, then trains 4-bit and 8-bit QLoRA on the tiny model (bitsandbytes runs on CPU too), and shows
what gradient checkpointing trades.

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-7B-Instruct"` in section 1 sizes the
real thing (it reads only its config).
"""),
("code", """
import json
import os
import shutil
from pathlib import Path

import torch

import ftkit
from ftkit.model import resolve

SMOKE = "CI" in os.environ
STEPS = 30 if SMOKE else 200
torch.set_num_threads(1 if SMOKE else os.cpu_count())
"""),
("markdown", """
## 1. Sizing a 7B run before downloading anything / 不下载权重也能估算显存

`ftkit.plan` (and `%%finetune --dry-run`) builds the model on PyTorch's meta device (shapes, no memory) and
estimates one training step's peak: weights, trainable state (gradients and AdamW moments), activations,
logits. Here, a folder with only the config of Qwen2.5-7B's shape and the tiny tokenizer:
"""),
("code", """
MODEL = Path("outputs/qwen2.5-7b-shape")   # on a machine with internet: MODEL = "Qwen/Qwen2.5-7B-Instruct"
if isinstance(MODEL, Path):
    shutil.rmtree(MODEL, ignore_errors=True); MODEL.mkdir(parents=True)
    for f in Path(resolve("tiny")).iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, MODEL / f.name)
    (MODEL / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 32768, "tie_word_embeddings": False}))
base = dict(model_name_or_path=str(MODEL), dataset="demo", cutoff_len=1024, per_device_train_batch_size=2,
            bf16=True, ignore_memory_estimate=True)   # size it even where it would not fit
methods = {"LoRA (bf16 base)": {}, "QLoRA 8-bit": {"quantization_bit": 8}, "QLoRA 4-bit": {"quantization_bit": 4},
           "LoRA + gradient checkpointing": {"gradient_checkpointing": True},
           "freeze (last 2 layers)": {"finetuning_type": "freeze"}, "full": {"finetuning_type": "full"}}
sizes = {}
for name, knobs in methods.items():
    p = ftkit.plan({**base, **knobs})
    sizes[name] = p.memory.total / 2**30
    print(f"{name:<30} {p.memory.text()}")
assert sizes["QLoRA 4-bit"] < sizes["QLoRA 8-bit"] < sizes["LoRA (bf16 base)"] < sizes["full"]
assert sizes["LoRA + gradient checkpointing"] < sizes["LoRA (bf16 base)"]
"""),
("markdown", """
Read it as: the base's weights dominate LoRA runs (4-bit stores ~0.5 byte per weight plus quantization
constants); full tuning adds gradients and two AdamW moments for every weight; gradient checkpointing keeps
one activation per layer and recomputes the rest in the backward pass (about 20% slower). A run whose estimate
exceeds the device's memory is refused before loading, with these levers named (`ignore_memory_estimate: true`
tries anyway).

The same plan for the GPU the run will meet: `device="t4"` (`%%finetune --dry-run --device t4`) sizes it for
a free Colab T4, its 14.7 GiB and its precision (fp16 with loss scaling: a T4 has no bf16), from this machine.
A run that does not fit is refused with each lever's estimate and the set of them that fits.
为 Colab 免费 T4 估算：`device="t4"`，放不下时会列出每个办法的估算显存。
"""),
("code", """
on_t4 = {**base, "bf16": False, "ignore_memory_estimate": False, "per_device_train_batch_size": 1}
t4 = ftkit.plan({**on_t4, "quantization_bit": 4, "gradient_checkpointing": True}, device="t4")
print(t4.summary()["device"], "|", t4.memory.text(), f"of {t4.memory_available / 2**30:.1f} GiB")
assert t4.config.fp16 and t4.memory.total < t4.memory_available
try:  # full fine-tuning of the 7B does not fit a T4: the refusal says what would
    ftkit.plan({**on_t4, "finetuning_type": "full"}, device="t4")
except ftkit.ConfigError as e:
    print(e)
    assert "quantization_bit: 4" in str(e) and "which fits" in str(e)
"""),
("markdown", """
## 2. QLoRA on the tiny model / 在 tiny 模型上跑 QLoRA

The same run three ways. On this CPU the 4-bit kernels are slower than plain fp32 matrix products, and the tiny
model is too small for memory to matter: on a GPU with a 7B model, 4-bit is what makes it fit.
"""),
("code", """
runs = {}
for name, bits in [("LoRA fp32", None), ("QLoRA 8-bit", 8), ("QLoRA 4-bit nf4", 4)]:
    runs[name] = ftkit.train(dict(model_name_or_path="tiny", dataset="demo", quantization_bit=bits, lora_rank=16,
                                  learning_rate=2e-3, per_device_train_batch_size=8, max_steps=STEPS,
                                  logging_steps=5, val_size=16, eval_on_start=True, eval_steps=STEPS,
                                  output_dir=f"outputs/qlora-{bits or 32}", overwrite_output_dir=True), console=False)
    r = runs[name]
    layer = type(r.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__
    print(f"{name:<16} base layers {layer:<14} held-out loss {r.eval_losses[0][1]:.2f} -> {r.eval_losses[-1][1]:.2f}")
    assert r.eval_losses[-1][1] < r.eval_losses[0][1]
assert type(runs["QLoRA 4-bit nf4"].model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ \\
    == "Linear4bit"
"""),
("markdown", """
The QLoRA adapter applies to the full-precision base: `ftkit.merge` reloads the base unquantized, folds the
adapter in and checks the logits, so the merged model loses nothing to 4-bit storage.
"""),
("code", """
merged = ftkit.merge(runs["QLoRA 4-bit nf4"].adapter_dir, console=False)
print(ftkit.generate(merged, "Who are you?", max_new_tokens=30))
assert (merged / "model.safetensors").exists()
"""),
("markdown", """
## 3. Gradient checkpointing / 梯度检查点

Same losses, less activation memory, more compute: on the tiny model the step time shows the recomputation.
"""),
("code", """
import time

timing = {}
for flag in (False, True):
    t = time.time()
    r = ftkit.train(dict(model_name_or_path="tiny", dataset="demo", gradient_checkpointing=flag,
                         per_device_train_batch_size=8, max_steps=STEPS, logging_steps=5,
                         output_dir=f"outputs/ckpt-{flag}", overwrite_output_dir=True), console=False)
    timing[flag] = (time.time() - t, [loss for _, loss in r.losses])
    print(f"gradient_checkpointing={flag!s:<5} {timing[flag][0]:.1f}s  last loss {timing[flag][1][-1]:.4f}")
assert all(abs(a - b) < 1e-3 for a, b in zip(timing[False][1], timing[True][1]))
"""),
]
