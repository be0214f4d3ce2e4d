"""Data preparation on real tokenizers (Llama 3, Qwen2, Phi-3, DeepSeek: tokenizer-only folders converted from
llama.cpp's vocabularies, tests/real.py), not only on tiny's: label masks, the end-of-turn token, the preview and
packed batches, with each family's built-in template and with its official template through `auto`."""
import json

import pytest

from conftest import DATA
from ftkit.data import IGNORE, encode, token_pieces
from ftkit.model import load_tokenizer
from ftkit.templates import get_template, single_token_ids
from real import llama_cpp_templates, real_tokenizer, vocab_vectors

# vocabulary: (built-in template, official template for `auto`, end-of-turn token, llama.cpp's test vectors the
# converted tokenizer reproduces, of 45 non-empty)
FAMILIES = {
    "llama-bpe": ("llama3", "meta-llama-Llama-3.1-8B-Instruct", "<|eot_id|>", 44),  # of 45: not "ied 4 ½ months"
    "qwen2": ("qwen", "Qwen-Qwen2.5-7B-Instruct", "<|im_end|>", 45),
    "phi-3": ("phi", "microsoft-Phi-3.5-mini-instruct", "<|end|>", 45),
    "deepseek-llm": ("deepseek", None, "<｜end▁of▁sentence｜>", 44),  # of 45: not "Cửa Việt"
}
CASES = [(v, kind) for v in FAMILIES for kind in ("builtin", "auto") if kind == "builtin" or FAMILIES[v][1]]


def conversations(n=60):
    """The demo set's first conversations: English and Chinese, single and multi-turn."""
    records = json.loads((DATA / "demo_zh_en.json").read_text(encoding="utf-8"))[:n]
    convs = [r["conversation"] for r in records]
    assert any(len(c) > 2 for c in convs) and any("的" in m["content"] for c in convs for m in c)
    return convs


def tokenizer_and_template(vocab: str, kind: str):
    builtin, official, _, _ = FAMILIES[vocab]
    tok = load_tokenizer(str(real_tokenizer(vocab)))
    if kind == "auto":
        tok.chat_template = (llama_cpp_templates() / f"{official}.jinja").read_text(encoding="utf-8")
        return tok, get_template("auto", tok)
    return tok, get_template(builtin, tok)


@pytest.mark.parametrize("vocab", sorted(FAMILIES))
def test_converted_tokenizers_match_llama_cpps_vectors(vocab):
    tok = load_tokenizer(str(real_tokenizer(vocab)))
    vectors = [(t, ids) for t, ids in vocab_vectors(vocab) if t or ids]
    missed = [t for t, ids in vectors if tok(t, add_special_tokens=False)["input_ids"] != ids]
    assert len(vectors) - len(missed) >= FAMILIES[vocab][3], (len(vectors), missed)


@pytest.mark.parametrize("vocab, kind", CASES)
def test_labels_are_the_answers_and_end_of_turn_on_real_tokenizers(vocab, kind):
    tok, template = tokenizer_and_template(vocab, kind)
    eot = FAMILIES[vocab][2]
    (eot_id,) = single_token_ids(tok, [eot])  # one token in the real vocabulary
    convs = conversations()
    rows, stats = encode(convs, tok, template, cutoff_len=4096)
    assert stats.examples == len(convs) and stats.eot_trained and not stats.truncated_turns
    for conv, row in zip(convs, rows):
        rendered = template.render(conv)
        enc = tok(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == row["input_ids"]  # one tokenization of the whole text
        covered = {i for (a, b), label in zip(enc["offset_mapping"], row["labels"]) if label != IGNORE
                   for i in range(a, b)}  # byte-level tokens of one character share its offsets: a set
        assert covered == {i for a, b in rendered.spans for i in range(a, b)}  # token edges on span edges
        trained = tok.decode([t for t in row["labels"] if t != IGNORE])
        answers = [m["content"] for m in conv if m["role"] == "assistant"]
        assert [l for l in row["labels"] if l == eot_id] == [eot_id] * len(answers)  # each answer ends with it
        assert all(a in trained for a in answers)


@pytest.mark.parametrize("vocab", sorted(FAMILIES))
def test_preview_pieces_and_packed_batches_on_real_tokenizers(vocab):
    from ftkit.training import collator

    tok, template = tokenizer_and_template(vocab, "builtin")
    convs = [c for c in conversations() if any("的" in m["content"] for m in c)][:3]
    rows, _ = encode(convs, tok, template, cutoff_len=4096)
    for row in rows:
        pieces = token_pieces(tok, row["input_ids"])
        assert "".join(p for p, _, _ in pieces) == tok.decode(row["input_ids"]) and not any("\ufffd" in p for p, _, _ in pieces)
    batch = collator(tok, packed=True)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + len(r["input_ids"]))
    assert batch["position_ids"][0, starts].tolist() == [0] * len(rows)
    assert batch["labels"][0, starts].tolist() == [IGNORE] * len(rows)  # nothing predicted across examples


def test_tool_calling_and_reasoning_files_train_on_a_real_tokenizer(tmp_path):
    """LLaMA-Factory's tool-calling sharegpt shape (function_call / observation turns, a `tools` JSON column) and
    OpenAI's (tools, tool_calls, reasoning_content) read into the same conversations; through Qwen2.5's official
    template on the real Qwen2 tokenizer the call is trained, the tool's result is not."""
    from ftkit.data import load_conversations

    tools = [{"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    sharegpt = {"conversations": [
        {"from": "human", "value": "巴黎天气如何？"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": json.dumps({"temp_c": 22})},
        {"from": "gpt", "value": "巴黎现在22度。"}], "tools": json.dumps(tools, ensure_ascii=False)}
    openai = {"messages": [
        {"role": "user", "content": "巴黎天气如何？"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"temp_c": 22})},
        {"role": "assistant", "content": "巴黎现在22度。", "reasoning_content": "22 is warm."}],
        "tools": [{"type": "function", "function": tools[0]}]}
    (tmp_path / "lf.json").write_text(json.dumps([sharegpt], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "oa.jsonl").write_text(json.dumps(openai, ensure_ascii=False) + "\n", encoding="utf-8")
    (lf,), (oa,) = load_conversations(tmp_path / "lf.json"), load_conversations(tmp_path / "oa.jsonl")
    assert lf.tools == oa.tools and lf[1]["tool_calls"][0]["function"] == oa[1]["tool_calls"][0]["function"]
    assert [m["role"] for m in lf] == ["user", "assistant", "tool", "assistant"]

    tok, template = tokenizer_and_template("qwen2", "auto")
    rows, stats = encode([lf, oa], tok, template, cutoff_len=4096)
    for row in rows:
        trained = tok.decode([t for t in row["labels"] if t != IGNORE])
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in trained
        assert trained.endswith("巴黎现在22度。<|im_end|>") and "temp_c" not in trained and "天气" not in trained
        assert "get_weather" in tok.decode(row["input_ids"]).split("<|im_start|>user")[0]  # the tools, in the system turn
    builtin, _ = encode([lf, oa], tok, get_template("qwen", tok), cutoff_len=4096)  # Qwen's tool format, built in
    assert [r["labels"] for r in builtin] == [r["labels"] for r in rows]
    (row,), _ = encode([lf], tok, get_template("llama3", tok), cutoff_len=4096)  # LLaMA-Factory's default format
    trained = tok.decode([t for t in row["labels"] if t != IGNORE])  # (Qwen2's vocabulary splits <|eot_id|>)
    assert trained.startswith('Action: get_weather\nAction Input: {"city": "Paris"}<|eot_id|>') and \
        "巴黎现在22度。<|eot_id|>" in trained and "temp_c" not in trained
    assert "> Tool Name: get_weather\nTool Description: Weather in a city\n" in tok.decode(row["input_ids"])


def mixed_conversations(n=3000, seed=0):
    """n conversations built from the demo set: 1 to 5 turns, English and Chinese, some with a system prompt, some
    answers with reasoning, some with {{placeholders}}, lengths from a few tokens to a few thousand."""
    import random

    records = json.loads((DATA / "demo_zh_en.json").read_text(encoding="utf-8"))
    pairs = [r["conversation"][i:i + 2] for r in records for i in range(0, len(r["conversation"]) - 1, 2)
             if r["conversation"][i]["role"] == "user"]
    rng = random.Random(seed)
    out = []
    for k in range(n):
        conv = [{"role": "system", "content": rng.choice(["Be brief.", "你是一个助手。", "Answer as {{name}}."])}] \
            if rng.random() < 0.4 else []
        for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 5)):
            user, answer = rng.choice(pairs)
            text = " ".join([answer["content"]] * (1 + int(rng.expovariate(0.3))))
            if rng.random() < 0.15:
                text = f"<think>\n{rng.choice(pairs)[1]['content']}\n</think>\n\n{text}"
            conv += [dict(user), {"role": "assistant", "content": text}]
        out.append(conv)
    return out


@pytest.mark.parametrize("vocab, kind, path", [
    ("llama-bpe", "builtin", "tiktoken"), ("llama-bpe", "auto", "tiktoken"), ("qwen2", "builtin", "tiktoken"),
    ("qwen2", "auto", "tiktoken"), ("deepseek-llm", "builtin", "tiktoken"), ("phi-3", "builtin", "library"),
    ("qwen2", "builtin", "library")])
def test_the_fast_batch_path_equals_the_per_example_path(vocab, kind, path, monkeypatch):
    """encode_rows (batched through tiktoken where it reproduces the tokenizer, else the tokenizers library's Rust
    backend; trained tokens from the spans' ends; columns) gives the rows the reference path (every token's offsets,
    per example) gives, on 3,000 mixed conversations, with cutoffs that keep everything, cut after whole answers
    and cut mid-answer, and with train_on_prompt."""
    from ftkit import fastbpe
    from ftkit.data import encode_rows, reference_rows

    tok, template = tokenizer_and_template(vocab, kind)
    if path == "library":
        monkeypatch.setattr(fastbpe, "for_tokenizer", lambda tokenizer: None)
    convs, seen = mixed_conversations(), set()
    for cutoff, on_prompt in ((8192, False), (160, False), (24, False), (160, True)):
        fast = encode_rows(iter(convs), tok, template, cutoff, on_prompt)
        reference = reference_rows(convs, tok, template, cutoff, on_prompt)
        assert len(fast) == len(reference) == len(convs)
        for k, (row, ref) in enumerate(zip(fast, reference)):
            assert (row["input_ids"], row["labels"]) == (ref["input_ids"], ref["labels"]), (cutoff, on_prompt, k)
        assert fast.cut.tolist() == [r["cut"] for r in reference], (cutoff, on_prompt)
        assert fast.eot.tolist() == [r["eot"] for r in reference] and fast.lost.tolist() == [r["lost"] for r in reference]
        assert set(fast.holes) == {h for r in reference if r["holes"] for h in r["holes"].split(",")} == {"name"}
        seen |= set(fast.cut.tolist())
    assert seen == {0, 1, 2, 3}, "the cases this test is about: kept, cut after answers, mid-answer, dropped"
    fast = fastbpe.for_tokenizer(tok)
    assert (path == "tiktoken") == bool(fast and fast.trusted and fast.batches)  # the path this case is about


def test_tokenizing_processes_give_the_rows_one_process_gives(tmp_path, monkeypatch):
    """preprocessing_num_workers: chunks rendered and tokenized in forked processes come back in order, equal to
    one process's rows (ids, labels, cuts, end-of-turn, reasoning, placeholders), on Qwen2's real tokenizer."""
    import os

    from ftkit import data

    tok, template = tokenizer_and_template("qwen2", "builtin")
    monkeypatch.setattr(data, "CHUNK", 500)  # 3,000 conversations: 6 chunks, so the processes start
    started = data._one_thread
    monkeypatch.setattr(data, "_one_thread", lambda: ((tmp_path / str(os.getpid())).touch(), started()))
    convs = mixed_conversations()
    one = data.encode_rows(iter(convs), tok, template, 160)
    two = data.encode_rows(iter(convs), tok, template, 160, workers=2)
    pids = {int(f.name) for f in tmp_path.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len(one) == len(two) == len(convs)
    for k in range(len(convs)):
        assert (one[k]["input_ids"], one[k]["labels"]) == (two[k]["input_ids"], two[k]["labels"]), k
    for column in ("cut", "eot", "lost"):
        assert getattr(one, column).tolist() == getattr(two, column).tolist(), column
    assert set(one.holes) == set(two.holes) == {"name"}
