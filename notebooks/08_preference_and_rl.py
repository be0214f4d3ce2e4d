# Source of 08_preference_and_rl.ipynb: python scripts/make_notebook.py notebooks/08_preference_and_rl.py notebooks/08_preference_and_rl.ipynb
CELLS = [
("markdown", """
# 08 · Beyond SFT: preference tuning (DPO) and GRPO with your own reward / 偏好对齐与 GRPO

Supervised fine-tuning shows the model good answers. Two more stages teach it to **prefer** some answers over
others:

- **DPO** learns from pairs: for one prompt, a *chosen* answer and a *rejected* one. It raises the chosen
  answer's likelihood against the rejected one's, measured against a frozen **reference** (the model before
  DPO). With LoRA the reference is the same weights with the adapter switched off: no second copy in memory.
- **GRPO** needs no answers at all: it samples several answers per prompt, scores them with **reward functions
  you write in a cell**, and moves the model towards the better-scored ones.

Both are `stage:` keys of the same config (`stage: dpo`, `kto`, `rm`, `grpo`, and `pt` for raw text), run by
TRL's trainers behind ftkit's data, templates, live panel and atomic saves. LLaMA-Factory's
`qwen3_lora_dpo.yaml` runs as it is.

**On a GPU with a real model:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"`, more steps, and DPO's usual learning rate
(5e-6 to 5e-5 for full models; 5e-5 to 5e-4 with LoRA).
"""),
("code", """
import json
import os

import torch

import ftkit
from ftkit.data import resolve_dataset

%load_ext ftkit

SMOKE = "CI" in os.environ
MODEL = "tiny"                       # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct"
SFT_STEPS, DPO_STEPS, GRPO_STEPS = (60, 30, 10) if SMOKE else (120, 60, 20)
torch.set_num_threads(1 if SMOKE else os.cpu_count())
"""),
("markdown", """
## 1. Preference pairs / 偏好数据

`demo_dpo` holds 282 bilingual pairs in LLaMA-Factory's sharegpt ranking shape: the conversation so far, then
`chosen` and `rejected`. The chosen answers are the demo set's own; the rejected ones are plausible but wrong
(a sum off by one), off-task (a sentence left untranslated), or answer another question. ftkit also reads TRL's
`prompt`/`chosen`/`rejected` records and OpenAI messages with `chosen`/`rejected`.
"""),
("code", """
pairs = json.loads(resolve_dataset("demo_dpo").path.read_text(encoding="utf-8"))
for pair in pairs[:4]:
    print(pair["conversations"][-1]["value"], "\\n   chosen:  ", pair["chosen"]["value"],
          "\\n   rejected:", pair["rejected"]["value"])
assert len(pairs) >= 200
"""),
("markdown", """
## 2. First SFT, then DPO from it / 先做 SFT，再在其上做 DPO

DPO starts from a model that already answers; here the LoRA adapter of a short SFT run. Continuing that adapter
(`adapter_name_or_path`), the reference is the SFT adapter as it was when DPO started.
"""),
("code", """
sft = ftkit.train(dict(model_name_or_path=MODEL, dataset="demo", per_device_train_batch_size=8, max_steps=SFT_STEPS,
                       learning_rate=2e-3, lora_rank=16, logging_steps=10, output_dir="outputs/pref-sft",
                       overwrite_output_dir=True), console=False)
print(f"SFT: loss {sft.losses[0][1]:.2f} -> {sft.losses[-1][1]:.2f}")
"""),
("markdown", """
The live panel of a DPO run shows, beside the loss, the **reward margin** (how much more the policy prefers the
chosen answer than the reference did, in units of `pref_beta`), the **reward accuracy** (the share of pairs where
the chosen answer wins) and the chosen and rejected rewards. At the first step the policy *is* the reference:
every reward is 0 and the loss is log 2 = 0.693.
"""),
("code", """
%%finetune --name dpo
model_name_or_path: {MODEL}
stage: dpo
dataset: demo_dpo
adapter_name_or_path: outputs/pref-sft
pref_beta: 0.1
pref_loss: sigmoid           # DPO; hinge and ipo are the other losses; pref_ftx adds an SFT term
per_device_train_batch_size: 8
learning_rate: 5.0e-4
max_steps: {DPO_STEPS}
logging_steps: 5
val_size: 32
eval_on_start: true
eval_steps: 15
output_dir: outputs/pref-dpo
overwrite_output_dir: true
"""),
("code", """
held_out = [(e["step"], e["metrics"]) for e in dpo.metrics if e["kind"] == "eval"]
for step, m in held_out:
    print(f"step {step:>3}: reward margin {m['reward_margin']:+.3f}, accuracy {m['reward_accuracy']:.2f}")
first, last = held_out[0][1], held_out[-1][1]
assert abs(first["reward_margin"]) < 1e-6               # the policy starts as its reference
assert last["reward_margin"] > 0.1 and last["reward_accuracy"] > 0.5   # it now prefers the chosen answers
"""),
("markdown", """
How did the answers change? `ftkit.compare` asks both runs the same questions, greedy. (A 5M-parameter model
after a few dozen steps is not a good assistant; on a real model the same cells show DPO fixing the kinds of
mistakes in the rejected answers.)
"""),
("code", """
ftkit.compare(["What is 48 + 8?", "Translate into Chinese: The bus is late again.", "翻译成英文：早上好。"],
              runs=[sft, dpo], max_new_tokens=30)
"""),
("markdown", """
## 3. GRPO with a reward written here / 在单元格里写奖励函数做 GRPO

A reward function gets the sampled answers (`completions`), the `question` each answers, and any other column of
the dataset by keyword, and returns one number per answer. This one rewards answering in the question's
language, and a little, being brief. `%%finetune` ships it to the training process by its source (with the
modules and values it uses); a lambda or a function nested in another is refused with advice.
"""),
("code", """
import re

CJK = re.compile(r"[\\u4e00-\\u9fff]")


def chinese_share(text):
    letters = [c for c in text if c.isalpha()]
    return sum(bool(CJK.match(c)) for c in letters) / len(letters) if letters else 0.0


def same_language(completions, question, **kwargs):
    return [0.0 if not c.strip() else 1.0 - abs(chinese_share(q) - chinese_share(c))
            for q, c in zip(question, completions)]


def brief(completions, **kwargs):
    return [-len(c) / 100 for c in completions]


print(same_language(["Hello there.", "你好。"], ["什么是LoRA？", "什么是LoRA？"]))
"""),
("markdown", """
`CJK` is a compiled pattern, which cannot travel to the training process: the cell below shows what
`%%finetune` says about such a reward, so you can fix it. `chinese_share` as written above uses it...
"""),
("code", """
from ftkit.errors import ConfigError
from ftkit.rewards import ship

try:
    ship(same_language)
except ConfigError as e:
    print(e)
    assert "uses CJK (a Pattern)" in str(e)
"""),
("markdown", """
... so write the pattern as text, which travels (and `re` is imported again in the training process):
"""),
("code", """
CJK = r"[\\u4e00-\\u9fff]"


def chinese_share(text):
    letters = [c for c in text if c.isalpha()]
    return sum(bool(re.match(CJK, c)) for c in letters) / len(letters) if letters else 0.0


assert ship(same_language)["helpers"][0]["constants"] == {"CJK": CJK}
"""),
("markdown", """
Each step samples `num_generations` answers for each of `per_device_train_batch_size / num_generations` prompts,
scores them, and compares each answer with the others of its prompt. The panel shows the mean reward, each
function's, their spread and the answers' length, and (`preview_prompts`) how the model answers two questions as
it trains.
"""),
("code", """
%%finetune --name grpo
model_name_or_path: {MODEL}
stage: grpo
dataset: demo                  # prompts: the demo conversations without their last answer
adapter_name_or_path: outputs/pref-sft
reward_funcs: [{same_language}, {brief}]
reward_weights: [1.0, 0.2]
num_generations: 4
max_completion_length: 48
preview_prompts: ["什么是LoRA？", "What is a tokenizer?"]
per_device_train_batch_size: 8
learning_rate: 5.0e-4
max_steps: {GRPO_STEPS}
logging_steps: 1
output_dir: outputs/pref-grpo
overwrite_output_dir: true
"""),
("code", """
rewards = [e["metrics"]["reward_mean"] for e in grpo.metrics if e["kind"] == "step"]
print("mean reward by step:", [round(r, 2) for r in rewards])
early, late = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
print(f"first three steps {early:.3f}, last three {late:.3f}")
assert late > early
"""),
("markdown", """
## 4. Other stages / 其他阶段

- `stage: kto`: answers labelled good or bad (`kto_tag`, LLaMA-Factory's `kto_en_demo`); pairs work too, split
  into a good and a bad answer.
- `stage: rm`: a reward model, the LM with a score head, trained on pairs; its held-out accuracy is logged.
- `stage: pt`: continued pre-training on raw text (a `text` column or a `.txt` file, a document a line), every
  token trained, long documents cut into `cutoff_len` pieces.

Merge, chat and compare work on the adapters of every stage but `rm` (a reward model scores, it does not write).
"""),
]
