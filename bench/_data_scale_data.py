"""Deterministic chat datasets of any size from ftkit's bundled texts (no network), for bench/data_scale.py.

Each conversation: an optional system prompt, then 1 to 6 user/assistant turns (about 55% single-turn), English
or Chinese. A user turn is one demo question, sometimes with a line of context; an answer joins 1 to 40 sentences
drawn from the demo answers and the bundled corpus, the count log-normal (median 5), so lengths spread as real chat sets do:
many short answers, a long tail (Qwen2 tokens a conversation: mean 276, median 165, p90 655, some over 2,000).
Written as JSONL in the OpenAI messages shape, streamed, so 2M conversations never sit in memory.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ["You are a helpful assistant.", "你是一个乐于助人的助手。", "Answer briefly and precisely.",
           "请用中文回答。"]


def _pools() -> tuple[list[str], list[str], list[str], list[str]]:
    """(English questions, Chinese questions, English sentences, Chinese sentences) from the bundled data."""
    demo = json.loads((ROOT / "data" / "demo_zh_en.json").read_text(encoding="utf-8"))
    questions = {"en": [], "zh": []}
    sentences = {"en": [], "zh": []}
    lang = lambda s: "zh" if re.search(r"[\u4e00-\u9fff]", s) else "en"  # noqa: E731
    for record in demo:
        for m in record["conversation"]:
            if m["role"] == "user":
                questions[lang(m["content"])].append(m["content"])
            elif m["role"] == "assistant":
                sentences[lang(m["content"])].append(m["content"])
    for f in sorted((ROOT / "data" / "corpus").glob("*")):
        for part in re.split(r"(?<=[.!?。！？])\s*|\n+", f.read_text(encoding="utf-8")):
            part = part.strip(" #*-")
            if len(part) > 8:
                sentences[lang(part)].append(part)
    return questions["en"], questions["zh"], sentences["en"], sentences["zh"]


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """n conversations into path (JSONL), the same for the same n and seed."""
    q_en, q_zh, s_en, s_zh = _pools()
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as out:
        for _ in range(n):
            zh = rng.random() < 0.5
            questions, sentences, joiner = (q_zh, s_zh, "") if zh else (q_en, s_en, " ")
            messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.4 else []
            turns = 1 if rng.random() < 0.55 else rng.randint(2, 6)
            for _ in range(turns):
                question = rng.choice(questions)
                if rng.random() < 0.3:
                    question = rng.choice(sentences) + "\n" + question
                k = min(80, 1 + int(rng.lognormvariate(1.6, 1.0)))
                answer = joiner.join(rng.choice(sentences) for _ in range(k))
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
