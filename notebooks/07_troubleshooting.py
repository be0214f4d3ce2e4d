# Source of 07_troubleshooting.ipynb: python scripts/make_notebook.py notebooks/07_troubleshooting.py notebooks/07_troubleshooting.ipynb
CELLS = [
("markdown", """
# 07 · Troubleshooting, live / 常见问题现场演示

The seed tutorial's troubleshooting table, reproduced on the tiny model where it can be:

| symptom | cause | what to change |
| --- | --- | --- |
| out of memory | batch x length too large for the device | smaller batch (more accumulation), shorter `cutoff_len`, `gradient_checkpointing`, QLoRA |
| loss not falling | learning rate, labels, data | the pre-flight block; `learning_rate`; the data preview |
| garbled output | tokenizer or template not the model's | `tokenizer_name_or_path`; `template: auto` |
| never stops talking | end-of-turn token never trained | `cutoff_len`, template; ftkit refuses such runs |
| slow answers | adapter applied on the fly, sampling settings | merge first; greedy or fewer tokens |

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"`.
"""),
("code", """
import json
import os
import shutil
import time
from pathlib import Path

import torch

import ftkit
from ftkit.model import resolve

SMOKE = "CI" in os.environ
MODEL = "tiny"                      # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct"
STEPS = 120 if SMOKE else 720
torch.set_num_threads(1 if SMOKE else os.cpu_count())
WORK = Path("outputs/trouble"); WORK.mkdir(parents=True, exist_ok=True)
"""),
("markdown", """
## 1. Out of memory / 显存不足

Every run estimates its peak memory before loading weights and refuses one that cannot fit, naming the levers.
Here a model of Qwen2.5-7B's shape (config only, nothing downloaded) with a batch far too large:
"""),
("code", """
shape = WORK / "qwen2.5-7b-shape"
shutil.rmtree(shape, ignore_errors=True); shape.mkdir()
for f in Path(resolve("tiny")).iterdir():
    if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
        shutil.copy(f, shape / f.name)
(shape / "config.json").write_text(json.dumps({
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "tie_word_embeddings": False}))
too_big = dict(model_name_or_path=str(shape), dataset="demo", bf16=True, per_device_train_batch_size=64,
               cutoff_len=4096)
try:
    ftkit.plan(too_big)
except ftkit.ConfigError as e:
    print(e)
    refused = str(e)
assert "memory: this run needs" in refused and "gradient_checkpointing" in refused
"""),
("code", """
levers = {"as asked": {}, "batch 1, accumulation 64": dict(per_device_train_batch_size=1,
                                                           gradient_accumulation_steps=64),
          "+ gradient checkpointing": dict(per_device_train_batch_size=1, gradient_accumulation_steps=64,
                                           gradient_checkpointing=True),
          "+ QLoRA 4-bit": dict(per_device_train_batch_size=1, gradient_accumulation_steps=64,
                                gradient_checkpointing=True, quantization_bit=4)}
gib = {}
for name, change in levers.items():
    p = ftkit.plan({**too_big, **change, "ignore_memory_estimate": True})
    gib[name] = p.memory.total / 2**30
    print(f"{name:<26} {gib[name]:8.1f} GiB   {p.memory.text()}")
assert gib["+ QLoRA 4-bit"] < gib["+ gradient checkpointing"] < gib["batch 1, accumulation 64"] < gib["as asked"]
"""),
("markdown", """
## 2. Loss not falling / 损失不下降

First suspect: the learning rate. LoRA wants 1e-4 to 2e-3; at 1e-6 nothing moves.
"""),
("code", """
base = dict(model_name_or_path=MODEL, dataset="demo", per_device_train_batch_size=8, max_steps=30, logging_steps=5,
            val_size=16, eval_on_start=True, eval_steps=30, overwrite_output_dir=True)
for lr in (1e-6, 2e-3):
    r = ftkit.train({**base, "learning_rate": lr, "output_dir": f"outputs/trouble/lr-{lr}"}, console=False)
    drop = r.eval_losses[0][1] - r.eval_losses[-1][1]
    print(f"learning_rate {lr:g}: held-out loss {r.eval_losses[0][1]:.3f} -> {r.eval_losses[-1][1]:.3f}")
    assert (drop > 1.0) if lr == 2e-3 else (abs(drop) < 0.1)
"""),
("markdown", """
Second suspect: what is trained. The pre-flight block says how many tokens train and whether the end-of-turn
token is among them; `ftkit.preview` shows which ones (02_data). With `train_on_prompt: true` every token
trains, questions included: the loss then mostly measures how well the model predicts the questions.

## 3. Never stops talking / 回答停不下来

If no example keeps its end-of-turn token (answers cut by a short `cutoff_len`, or a template whose end marker
the data never reaches), the model never learns to stop. ftkit refuses such a run:
"""),
("code", """
long_answers = [{"conversation": [{"role": "user", "content": f"Tell me about topic {i}."},
                                  {"role": "assistant", "content": "This is a long answer. " * 20}]}
                for i in range(8)]
(WORK / "long.json").write_text(json.dumps(long_answers))
try:
    ftkit.train({**base, "dataset": str(WORK / "long.json"), "cutoff_len": 40, "val_size": 0,
                 "output_dir": "outputs/trouble/never-stops"}, console=False)
except ftkit.DataError as e:
    print(e)
    message = str(e)
assert "never among the trained tokens" in message
"""),
("markdown", """
## 4. Garbled output / 输出乱码

The seed's cure for garbled text is `tokenizer_name_or_path`: the tokenizer must be the one the model was
trained with. Here the tiny model's weights beside a different tokenizer (trained in a second on the bundled
glossary): the same model, now reading and writing the wrong tokens.
"""),
("code", """
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from ftkit.data import bundled_data_dir

wrong = WORK / "tiny-wrong-tokenizer"
shutil.rmtree(wrong, ignore_errors=True)
shutil.copytree(resolve("tiny"), wrong)
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
bpe.train([str(bundled_data_dir() / "corpus/glossary.txt")],
          trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|im_start|>", "<|im_end|>"]))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>")
tok.chat_template = (Path(resolve("tiny")) / "chat_template.jinja").read_text()
tok.save_pretrained(wrong)
right = ftkit.generate(MODEL, "What is LoRA?", max_new_tokens=25)
garbled = ftkit.generate(str(wrong), "What is LoRA?", max_new_tokens=25)
print("right tokenizer:", right, "\\nwrong tokenizer:", garbled)
assert right != garbled
"""),
("markdown", """
The template matters the same way: the model learned one exact text format. A run's adapter and merged folder
remember the run's template; asking with another gives worse answers, or ones that never end:
"""),
("code", """
run = ftkit.train(dict(model_name_or_path=MODEL, dataset="demo", lora_rank=16, learning_rate=2e-3,
                       per_device_train_batch_size=8, max_steps=STEPS, logging_steps=40,
                       output_dir="outputs/trouble/tuned", overwrite_output_dir=True), console=False)
own = ftkit.generate(run, "Who are you?", max_new_tokens=40)
other = ftkit.generate(run, "Who are you?", max_new_tokens=40, template="alpaca")
print("the run's template:", own, "\\nalpaca template:   ", other)
assert own != other
"""),
("markdown", """
## 5. Slow answers / 推理慢

An adapter applied on the fly adds two small matrix products to every layer; merging folds them in. Long
answers cost one forward pass per token: keep `max_new_tokens` to what you need.
"""),
("code", """
merged = ftkit.merge(run.adapter_dir, console=False)
speed = {}
for name, model in [("base + adapter", run), ("merged", merged)]:
    ftkit.generate(model, "Who are you?", max_new_tokens=5)       # load once
    t = time.time()
    for _ in range(3):
        ftkit.generate(model, "什么是LoRA？", max_new_tokens=40)
    speed[name] = (time.time() - t) / 3
    print(f"{name:<15} {speed[name] * 1000:6.0f} ms per answer")
assert ftkit.generate(merged, "什么是LoRA？", max_new_tokens=40) == ftkit.generate(run, "什么是LoRA？", max_new_tokens=40)
"""),
]
