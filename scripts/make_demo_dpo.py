"""Writes demo_dpo_zh_en.json: preference pairs made from the SFT demo set (demo_zh_en.json).

    python scripts/make_demo_dpo.py

Each pair keeps a demo conversation up to its last answer; the chosen answer is the demo's own (the assistant's
voice), the rejected one is plausible but wrong or off-task, by the kind of question:
- sums (English and Chinese): the result off by one or ten;
- translations (either way, and "say that in Chinese/English" follow-ups): the sentence repeated untranslated;
- concept questions: the answer to another concept in the same language (fluent, but not what was asked);
- greetings and who-are-you questions: a reply that forgets the assistant's name.
Written in LLaMA-Factory's sharegpt ranking shape (conversations + chosen + rejected). Deterministic.
"""
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "data"
SUM = re.compile(r"^What is (\d+) ([+-]) (\d+)\?$")
SUM_ZH = re.compile(r"^(\d+) (加|减) (\d+) 等于多少？$")
CONCEPT = re.compile(r"^(What is |什么是)")
NAMELESS = {"en": "I am a language model. I do not have a name.", "zh": "我是一个语言模型，没有名字。"}


def language(text: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def rejected_for(messages: list[dict], k: int, concepts: dict) -> str:
    question, answer = messages[-2]["content"], messages[-1]["content"]
    m = SUM.match(question)
    if m:
        a, op, b = int(m[1]), m[2], int(m[3])
        wrong = (a + b if op == "+" else a - b) + (1, -1, 10)[k % 3]
        return f"{a} {op} {b} = {wrong}."
    m = SUM_ZH.match(question)
    if m:
        a, op, b = int(m[1]), m[2], int(m[3])
        wrong = (a + b if op == "加" else a - b) + (1, -1, 10)[k % 3]
        return f"{a} {op} {b} 等于 {wrong}。"
    for mark in ("Translate into Chinese:", "翻译成英文：", "再翻译一句："):
        if question.startswith(mark):
            return question[len(mark):].strip()
    if question in ("Please say that in Chinese.", "请用英文再说一遍。"):
        return messages[-3]["content"]
    if any(w in question for w in ("Who", "yourself", "Hello", "谁", "你好", "介绍")):
        return NAMELESS[language(answer)]
    pool = [a for a in concepts[language(answer)] if a != answer]
    return pool[k % len(pool)]


def main() -> None:
    demo = json.loads((HERE / "demo_zh_en.json").read_text(encoding="utf-8"))
    concepts = {"en": [], "zh": []}
    for rec in demo:
        m = rec["conversation"]
        if len(m) == 2 and CONCEPT.match(m[0]["content"]) and not SUM.match(m[0]["content"]):
            concepts[language(m[1]["content"])].append(m[1]["content"])
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    pairs = []
    for k, rec in enumerate(demo):
        messages = rec["conversation"]
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [{"from": names[m["role"]], "value": m["content"]} for m in messages[:-1] if m["role"] != "system"]
        pair = {"conversations": turns, "chosen": {"from": "gpt", "value": messages[-1]["content"]},
                "rejected": {"from": "gpt", "value": rejected_for(messages, k, concepts)}}
        pairs.append(pair | ({"system": system[0]} if system else {}))
    out = HERE / "demo_dpo_zh_en.json"
    out.write_text(json.dumps(pairs, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(pairs)} pairs to {out}")


if __name__ == "__main__":
    main()
