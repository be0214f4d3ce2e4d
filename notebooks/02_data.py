# Source of 02_data.ipynb: python scripts/make_notebook.py notebooks/02_data.py notebooks/02_data.ipynb
CELLS = [
("markdown", """
# 02 · Data: formats, conversion, templates, masks / 数据：格式、转换、模板与掩码

Most failed fine-tunes fail in the data: a format read wrongly, a template that is not the model's, answers cut
off by `cutoff_len`, or an end-of-turn token that is never trained (the model then never stops talking). This
notebook reads every format ftkit accepts, converts them, and looks at the tokens a run trains on.

**On a GPU with a real model, change one line:** `MODEL = "Qwen/Qwen2.5-0.5B-Instruct"` (templates and token
counts then follow that model's tokenizer).
"""),
("code", """
import json
import os
from pathlib import Path

import ftkit
from ftkit.data import FORMATS, detect_format, load_conversations, read_records, resolve_dataset

%load_ext ftkit

SMOKE = "CI" in os.environ   # nothing here trains: the same in CI and in a workshop
MODEL = "tiny"               # on a GPU: "Qwen/Qwen2.5-0.5B-Instruct"
DATA = Path("../data")
WORK = Path("outputs/data"); WORK.mkdir(parents=True, exist_ok=True)
"""),
("markdown", """
## 1. The seed's format / 种子教程的数据格式

One record is one conversation: a list of `role`/`content` messages, single- or multi-turn. This is ftkit's
canonical form; every other format is converted to it.
"""),
("code", """
seed = read_records(DATA / "seed_examples.json")
print(json.dumps(seed[0], ensure_ascii=False, indent=1)[:600])
assert detect_format(seed[0]) == "conversation"
"""),
("markdown", """
## 2. Every other format is recognised / 其他格式自动识别

Alpaca (`instruction`/`input`/`output`, optional `system` and `history`), ShareGPT (`conversations` with
`from`/`value`), OpenAI `messages`, and the MOSS, ChatGLM3 and Qwen fine-tuning formats the seed converts to.
Each file below holds the same kind of content in another shape.
"""),
("code", """
for path in sorted((DATA / "formats").iterdir()):
    records = read_records(path)
    fmt = detect_format(records[0])
    convs = load_conversations(path)
    roles = [m["role"] for m in convs[0]]
    print(f"{path.name:<15} {fmt:<12} {len(convs)} conversations; first: {roles}")
    assert fmt in FORMATS and convs and roles[-1] == "assistant"
"""),
("markdown", """
`ftkit.convert` (or `ftkit convert --input ... --output ... --from alpaca` in a terminal) writes any of them in
the seed's format; the result trains exactly like the original.
"""),
("code", """
n = ftkit.convert(DATA / "formats/alpaca.json", WORK / "alpaca_converted.json")
converted = read_records(WORK / "alpaca_converted.json")
print(n, "records;", json.dumps(converted[0], ensure_ascii=False)[:300])
assert n == len(converted) and detect_format(converted[0]) == "conversation"
"""),
("markdown", """
The same from a shell cell. `{sys.executable} -m ftkit` is the `ftkit` command of this kernel's Python: a bare
`!ftkit` runs whichever `ftkit` comes first on the shell's PATH, which may be another install, or none when the
kernel runs in a virtual environment that was never activated.

在笔记本里调用命令行时用 `{sys.executable} -m ftkit`，保证用的是当前内核所在环境里的 ftkit。
"""),
("code", """
import sys

!{sys.executable} -m ftkit convert --input ../data/formats/sharegpt.json --output outputs/data/sharegpt_converted.json --from sharegpt
assert detect_format(read_records(WORK / "sharegpt_converted.json")[0]) == "conversation"
"""),
("markdown", """
## 3. Naming datasets / 给数据集起名字

Like LLaMA-Factory, a `dataset_info.json` in `dataset_dir` maps names to files, with the format and, for
tables, which column holds what. A run then says `dataset: my_faq` (several: `dataset: demo,my_faq`).
"""),
("code", """
rows = [{"question": "What is ftkit?", "answer": "A kit for fine-tuning language models from a notebook."},
        {"question": "ftkit 是什么？", "answer": "一个在笔记本里微调语言模型的工具。"}]
(WORK / "faq.json").write_text(json.dumps(rows, ensure_ascii=False))
(WORK / "dataset_info.json").write_text(json.dumps({
    "my_faq": {"file_name": "faq.json", "formatting": "alpaca",
               "columns": {"instruction": "question", "output": "answer"}}}))
source = resolve_dataset("my_faq", WORK)
faq = load_conversations(source.path, source.formatting, source.columns)
print(faq[1])
assert faq[1][-1] == {"role": "assistant", "content": "一个在笔记本里微调语言模型的工具。"}
"""),
("markdown", """
## 4. What the model sees / 模型实际看到的内容

`ftkit.preview` renders examples with the chat template and tokenizes them exactly as a run will. Green tokens
are trained (the loss is computed on them): the assistant's answers and their end-of-turn token. Grey tokens
are context only. The histogram shows tokens per example.
"""),
("code", """
preview = ftkit.preview("demo", model=MODEL, n=2)
assert preview.eot_trained and 0.2 < preview.trained_share < 0.8
preview
"""),
("markdown", """
## 5. Choosing `cutoff_len` / 如何选择 `cutoff_len`

Longer examples are cut at the last whole answer that fits; an answer cut mid-way loses its end-of-turn token.
Pick a cutoff that keeps (nearly) every example whole: memory grows with it, so not much more.
"""),
("code", """
lengths = sorted(preview.lengths)
p50, p99 = lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.99)]
for cutoff in (16, 32, 64, p99, 256):
    cut = sum(n > cutoff for n in lengths)
    print(f"cutoff_len {cutoff:>4}: {cut:>3} of {len(lengths)} examples would be cut")
print(f"median {p50} tokens, 99th percentile {p99}, longest {lengths[-1]}")
assert sum(n > 256 for n in lengths) == 0
"""),
("markdown", """
`%%finetune --dry-run` tokenizes with the config's cutoff and reports what was cut, without loading weights:
"""),
("code", """
%%finetune --dry-run
dataset: demo
cutoff_len: 32
max_steps: 10
"""),
("markdown", """
## 6. Templates, and what a wrong one does / 模板，以及用错模板的后果

The template turns messages into the exact text the model was trained on. Here is one conversation in three
formats:
"""),
("code", """
from ftkit.model import load_tokenizer, resolve
from ftkit.templates import TEMPLATES, single_token_ids

tok = load_tokenizer(resolve(MODEL))
chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
for name in ("chatml", "llama3", "alpaca"):  # bind: fill in this tokenizer's end-of-sequence token
    print(f"--- {name}\\n{TEMPLATES[name].bind(tok).render(chat).text}")
"""),
("markdown", """
The `tiny` model's tokenizer was built for ChatML: `<|im_end|>` is one special token, which the model learns to
emit and generation stops on. Llama 3's end-of-turn marker `<|eot_id|>` is not in this vocabulary: it falls
apart into many ordinary pieces, so the examples get longer, the model has to learn a long string to stop, and
generation cannot stop on a single token. `template: auto` uses the tokenizer's own template and avoids this.
"""),
("code", """
print("<|im_end|> ->", tok.tokenize("<|im_end|>"), "  <|eot_id|> ->", tok.tokenize("<|eot_id|>"))
wrong = ftkit.preview("demo", model=MODEL, template="llama3", n=1)
print(f"tokens per example, median: auto {sorted(preview.lengths)[len(preview.lengths) // 2]}, "
      f"llama3 {sorted(wrong.lengths)[len(wrong.lengths) // 2]}")
assert single_token_ids(tok, ["<|im_end|>"]) and not single_token_ids(tok, ["<|eot_id|>"])
assert sum(wrong.lengths) > sum(preview.lengths)
"""),
("markdown", """
## 7. Bad data is refused, with the record and the reason / 坏数据会被拒绝，并指出哪条记录

A run never silently drops what it cannot read: the whole file is refused, and the message names the file, the
record or line, and the reason.
"""),
("code", """
bad = [{"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
       {"conversation": [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "?"}]},
       {"conversation": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}]
(WORK / "bad.json").write_text(json.dumps(bad))
try:
    load_conversations(WORK / "bad.json")
except ftkit.DataError as e:
    print(e)
    message = str(e)
assert "record 1" in message and "record 2" in message and "unknown role 'bot'" in message
"""),
]
