import json
import re

import pytest

from conftest import DATA
from ftkit.config import RunConfig
from ftkit.data import (FORMATS, IGNORE, convert, detect_format, encode, load_conversations, prepare,
                        read_records, resolve_dataset)
from ftkit.errors import DataError
from ftkit.templates import get_template

U, A, S = "user", "assistant", "system"


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize("name, fmt, first", [
    ("seed_examples", "conversation", msgs((U, "如何做番茄炒蛋？"), (A, "1. 鸡蛋打散，加少许盐。2. 热油炒蛋，凝固后盛出。"
                                                                "3. 番茄切块炒软，倒回鸡蛋，调味翻炒即可。"))),
    ("alpaca_example", "alpaca", msgs((U, "Translate into Chinese.\nGood morning."), (A, "早上好。"))),
    ("sharegpt_example", "sharegpt", msgs((U, "What is LoRA?"),
                                          (A, "LoRA trains small low-rank matrices beside frozen weights."))),
    ("openai_example", "openai", msgs((S, "Answer briefly."), (U, "What is an epoch?"),
                                      (A, "One full pass over the training data."))),
    ("moss_example", "moss", msgs((S, "You are an AI assistant whose name is MOSS."), (U, "什么是量化？"),
                                  (A, "量化用更少的比特存储权重，以节省内存。"), (U, "Say it in English."),
                                  (A, "Quantization stores weights with fewer bits to save memory."))),
    ("chatglm3_example", "chatglm3", msgs((S, "你是一个乐于助人的助手。"), (U, "什么是分词器？"),
                                          (A, "分词器把文本切成词元，并把每个词元映射成数字。"))),
    ("qwen_example", "qwen", msgs((U, "你好"), (A, "你好！我是一个小助手。"))),
])
def test_every_format_is_detected_and_converted(name, fmt, first):
    src = resolve_dataset(name, DATA)
    assert detect_format(read_records(src.path)[0]) == fmt
    assert load_conversations(src.path)[0] == first  # auto-detected
    assert load_conversations(src.path, fmt)[0] == first  # named


def test_alpaca_system_and_history():
    convs = load_conversations(DATA / "formats/alpaca.json")
    assert convs[1][0] == {"role": "system", "content": "你是一个简洁的助手。"}
    assert convs[2] == msgs((U, "什么是学习率？"), (A, "学习率决定每一步更新的大小。"), (U, "And in English?"),
                            (A, "The learning rate sets the size of each update."))


def test_sharegpt_top_level_system():
    assert load_conversations(DATA / "formats/sharegpt.json")[1][0] == {"role": "system",
                                                                         "content": "You are a translator."}


def test_demo_set_is_bilingual_single_and_multi_turn():
    convs = load_conversations(DATA / "demo_zh_en.json")
    assert len(convs) >= 200
    assert sum(len(c) > 2 for c in convs) >= 30 and sum(len(c) == 2 for c in convs) >= 100
    zh = [c for c in convs if any("\u4e00" <= ch <= "\u9fff" for ch in c[0]["content"] + c[1]["content"])]
    en = [c for c in convs if c[0]["content"].isascii()]
    assert len(zh) >= 80 and len(en) >= 80


def test_csv_parquet_jsonl_read_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": "Hi", "input": "", "output": "Hello"}, {"instruction": "你好", "input": "", "output": "好"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        f.write("instruction,input,output\nHi,,Hello\n你好,,好\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    got = [load_conversations(tmp_path / f"a.{ext}") for ext in ("jsonl", "csv", "parquet")]
    assert got[0] == got[1] == got[2] == [msgs((U, "Hi"), (A, "Hello")), msgs((U, "你好"), (A, "好"))]


def test_csv_with_json_messages_column(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('messages\n"[{""role"": ""user"", ""content"": ""Hi""}, {""role"": ""assistant"", ""content"": ""Yo""}]"\n')
    assert load_conversations(p) == [msgs((U, "Hi"), (A, "Yo"))]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def conv_json(*convs):
    return json.dumps([{"conversation": c} for c in convs], ensure_ascii=False)


@pytest.mark.parametrize("name, text, expect", [
    ("bad.json", '[{"conversation": []}\n,,]', r"bad.json: line 2: invalid JSON"),
    ("bad.jsonl", '{"messages": []}\n{"messages": [}\n', r"bad.jsonl: line 2: invalid JSON"),
    ("lines.json", '{"messages": []}\n{"messages": []}\n', r"name the file .jsonl"),
    ("empty.json", "  \n", r"empty.json: the file is empty"),
    ("none.json", "[]", r"none.json: no records"),
    ("obj.json", '{"a": 1, "b": 2}', r"expected a JSON list of records"),
    ("x.docx", "hello", r"unsupported file type .docx"),
    ("x.txt", "hello", r"x.txt: raw text .* set stage: pt"),
    ("shape.json", '[{"question": "q", "answer": "a"}]', r"record 0: unrecognised shape \(keys: answer, question\)"),
    ("mixed.json", json.dumps([{"conversation": msgs((U, "a"), (A, "b"))}, {"instruction": "a", "output": "b"}]),
     r"record 1: looks like alpaca but this file is conversation \(mixed formats"),
    ("noasst.json", conv_json(msgs((U, "a"))), r"record 0: no assistant turn"),
    ("endsuser.json", conv_json(msgs((U, "a"), (A, "b"), (U, "c"))), r"record 0: ends with a user turn"),
    ("order.json", conv_json(msgs((U, "a"), (A, "b")), msgs((A, "b"), (U, "a"), (A, "c"))),
     r"record 1: message 0: expected a user turn, got assistant"),
    ("role.json", conv_json(msgs((U, "a"), ("bot", "b"))), r"record 0: message 1: unknown role 'bot'"),
    ("content.json", json.dumps([{"conversation": [{"role": "user", "content": "a"},
                                                   {"role": "assistant", "content": 42}]}]),
     r"record 0: message 1 \(assistant\): content must be text, got int"),
    ("sys.json", conv_json(msgs((U, "a"), (S, "b"), (A, "c"))), r"message 1: a system message may only come first"),
    ("blank.json", conv_json(msgs((U, "a"), (A, "  "))), r"message 1 \(assistant\): empty content"),
    ("gpt.json", json.dumps([{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}]),
     r"unknown speaker 'robot'"),
    ("keys.json", json.dumps([{"conversation": [{"role": "user"}]}]), r"conversation\[0\] needs 'role' and 'content'"),
])
def test_bad_files_and_records_name_file_record_and_reason(tmp_path, name, text, expect):
    with pytest.raises(DataError, match=expect):
        load_conversations(write(tmp_path, name, text))


def test_every_bad_record_is_listed(tmp_path):
    bad = [msgs((U, "a"))] * 12 + [msgs((U, "ok"), (A, "ok"))]
    with pytest.raises(DataError) as e:
        load_conversations(write(tmp_path, "many.json", conv_json(*bad)))
    assert "12 of 13 records cannot be used" in str(e.value) and "... and 2 more" in str(e.value)


def test_dataset_names_resolve_and_missing_ones_list_known(tmp_path):
    assert resolve_dataset("demo", DATA).path == DATA / "demo_zh_en.json"
    assert resolve_dataset("demo", tmp_path).path.name == "demo_zh_en.json"  # bundled data is a fallback
    with pytest.raises(DataError, match=r"'nope' is neither a file nor a name .*known names: .*demo"):
        resolve_dataset("nope", DATA)


def test_dataset_info_columns_rename(tmp_path):
    write(tmp_path, "qa.json", json.dumps([{"q": "Hi", "a": "Hello"}]))
    write(tmp_path, "dataset_info.json", json.dumps(
        {"qa": {"file_name": "qa.json", "formatting": "alpaca", "columns": {"prompt": "q", "response": "a"}}}))
    src = resolve_dataset("qa", tmp_path)
    assert load_conversations(src.path, src.formatting, src.columns) == [msgs((U, "Hi"), (A, "Hello"))]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_convert_writes_the_seed_conversation_format(tmp_path, fmt):
    src = {"conversation": "seed_examples.json", "alpaca": "formats/alpaca.json", "sharegpt": "formats/sharegpt.json",
           "openai": "formats/openai.jsonl", "moss": "formats/moss.json", "chatglm3": "formats/chatglm3.json",
           "qwen": "formats/qwen.json"}[fmt]
    n = convert(DATA / src, tmp_path / "out.json", fmt)
    records = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert n == len(records) > 0 and all(set(r) == {"conversation"} for r in records)
    assert load_conversations(tmp_path / "out.json") == load_conversations(DATA / src)


def labelled_text(tokenizer, ex):
    return tokenizer.decode([t for t in ex["labels"] if t != IGNORE])


def test_labels_cover_only_answers_and_end_of_turn(tiny_tokenizer):
    t = get_template("auto", tiny_tokenizer)
    conv = msgs((S, "Be brief."), (U, "What is LoRA?"), (A, "Small matrices."), (U, "In Chinese?"), (A, "小矩阵。"))
    (ex,), stats = encode([conv], tiny_tokenizer, t, cutoff_len=512)
    assert labelled_text(tiny_tokenizer, ex) == "Small matrices.<|im_end|>小矩阵。<|im_end|>"  # not the newline after
    assert stats.eot_trained and stats.examples == 1
    assert tiny_tokenizer.decode(ex["input_ids"]) == t.render(conv).text  # one tokenization of the whole text


def test_end_of_turn_found_when_it_is_several_tokens(tiny_tokenizer):
    """llama3's <|eot_id|> is not one token for the tiny tokenizer: the trained text is checked instead."""
    t = get_template("llama3", tiny_tokenizer)
    assert len(tiny_tokenizer("<|eot_id|>", add_special_tokens=False)["input_ids"]) > 1
    (ex,), stats = encode([msgs((U, "Hi"), (A, "Hello"))], tiny_tokenizer, t, 512)
    assert stats.eot_trained and labelled_text(tiny_tokenizer, ex) == "Hello<|eot_id|>"


def test_train_on_prompt_trains_everything(tiny_tokenizer):
    t = get_template("auto", tiny_tokenizer)
    (ex,), _ = encode([msgs((U, "Hi"), (A, "Hello"))], tiny_tokenizer, t, 512, train_on_prompt=True)
    assert IGNORE not in ex["labels"] and ex["labels"] == ex["input_ids"]


def test_cutoff_keeps_whole_turns_and_counts(tiny_tokenizer):
    t = get_template("auto", tiny_tokenizer)
    long = msgs((U, "What is LoRA?"), (A, "Small matrices."), (U, "More?"), (A, "x " * 200))
    short = msgs((U, "Hi"), (A, "Hello"))
    cut_answer = msgs((U, "Hi"), (A, "word " * 200))
    exs, stats = encode([long, short, cut_answer], tiny_tokenizer, t, cutoff_len=40)
    assert stats.truncated_turns == 1 and stats.truncated_answer == 1 and stats.examples == 3
    assert labelled_text(tiny_tokenizer, exs[0]) == "Small matrices.<|im_end|>"
    assert len(exs[2]["input_ids"]) == 40 and max(len(e["input_ids"]) for e in exs) <= 40


def test_prompt_longer_than_cutoff_is_dropped_and_all_dropped_is_refused(tiny_tokenizer, tmp_path):
    t = get_template("auto", tiny_tokenizer)
    _, stats = encode([msgs((U, "long " * 100), (A, "a"))], tiny_tokenizer, t, cutoff_len=16)
    assert stats.dropped == 1 and stats.examples == 0
    path = write(tmp_path, "long.json", conv_json(msgs((U, "long " * 100), (A, "a"))))
    cfg = RunConfig.from_dict({"dataset": str(path), "cutoff_len": 16})
    with pytest.raises(DataError, match="cutoff_len: 16 tokens leaves no trained token"):
        prepare(cfg, tiny_tokenizer, t)


def test_prepare_splits_samples_and_mixes_datasets(tiny_tokenizer):
    t = get_template("auto", tiny_tokenizer)
    cfg = RunConfig.from_dict({"dataset": "demo,seed_examples", "dataset_dir": str(DATA), "val_size": 0.1,
                               "max_samples": 100})
    p = prepare(cfg, tiny_tokenizer, t)
    assert len(p.train) + len(p.eval) == 102 and len(p.eval) == 10
    assert [s.name for s in p.sources] == ["demo", "seed_examples"]
    cfg2 = RunConfig.from_dict({"dataset": "demo", "dataset_dir": str(DATA), "val_size": 25})
    assert len(prepare(cfg2, tiny_tokenizer, t).eval) == 25


def test_tokenized_data_is_cached_and_a_changed_file_is_tokenized_again(tiny_tokenizer, tmp_path, monkeypatch):
    import ftkit.data as D

    monkeypatch.setenv("FTKIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "mine.json"
    data.write_text((DATA / "demo_zh_en.json").read_text("utf-8"), "utf-8")
    t = get_template("auto", tiny_tokenizer)
    cfg = RunConfig.from_dict({"dataset": str(data), "val_size": 10, "seed": 3})
    first = prepare(cfg, tiny_tokenizer, t)
    (entry,) = (tmp_path / "cache").glob("*/rows.json")
    assert sorted(f.name for f in entry.parent.iterdir()) == [  # raw columns, nothing pickled
        "cut.bin", "eot.bin", "ids.bin", "lengths.bin", "lost.bin", "n_trained.bin", "rows.json", "trained.bin"]

    def no_tokenizing(*a, **kw):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(D, "encode_rows", no_tokenizing)
    monkeypatch.setattr(D, "load_conversations", no_tokenizing)
    again = prepare(cfg, tiny_tokenizer, t)  # from the cache: the same split, examples and statistics
    assert (again.train, again.eval, again.stats) == (first.train, first.eval, first.stats)
    monkeypatch.undo()
    monkeypatch.setenv("FTKIT_CACHE_DIR", str(tmp_path / "cache"))

    records = json.loads(data.read_text("utf-8"))
    records[0]["conversation"][-1]["content"] = "A changed answer."
    data.write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    changed = prepare(cfg, tiny_tokenizer, t)
    assert len(list((tmp_path / "cache").glob("*/rows.json"))) == 2
    text = [tiny_tokenizer.decode(ex["input_ids"]) for ex in [*changed.train, *changed.eval]]
    assert sum("A changed answer." in x for x in text) == 1
    assert prepare(cfg.__class__.from_dict({**cfg.to_dict(), "cutoff_len": 20}), tiny_tokenizer, t).stats != \
        changed.stats  # another setting, another entry
    assert len(list((tmp_path / "cache").glob("*/rows.json"))) == 3

    monkeypatch.setenv("FTKIT_CACHE_DIR", "off")
    assert prepare(cfg, tiny_tokenizer, t).train == changed.train
    assert len(list((tmp_path / "cache").glob("*/rows.json"))) == 3


def test_tool_calling_records_keep_their_tools_through_convert(tmp_path):
    """LLaMA-Factory's tool-calling sharegpt record converts to the conversation shape with its tools, calls and
    results, and reads back the same; a bad call or a dangling call is refused with the record and reason."""
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    record = {"conversations": [{"from": "human", "value": "Weather?"},
                                {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
                                {"from": "observation", "value": '{"temp_c": -3}'},
                                {"from": "gpt", "value": "Cold."}], "tools": json.dumps(tools)}
    (tmp_path / "in.json").write_text(json.dumps([record]))
    assert convert(tmp_path / "in.json", tmp_path / "out.json") == 1
    (out,) = json.loads((tmp_path / "out.json").read_text())
    assert out["tools"] == [{"type": "function", "function": tools[0]}]
    assert out["conversation"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    (back,), (orig,) = load_conversations(tmp_path / "out.json"), load_conversations(tmp_path / "in.json")
    assert back == orig and back.tools == orig.tools
    for bad, why in [({"from": "function_call", "value": "{not json"}, "function_call: not valid JSON"),
                     ({"from": "function_call", "value": '{"arguments": {}}'}, 'function_call must hold'),
                     ({"from": "observation", "value": "x"}, "message 1: expected an assistant turn, got tool")]:
        rec = {**record, "conversations": [record["conversations"][0], bad, record["conversations"][3]]}
        (tmp_path / "bad.json").write_text(json.dumps([rec]))
        with pytest.raises(DataError, match=f"record 0: {re.escape(why)}"):
            load_conversations(tmp_path / "bad.json")


def test_content_parts_and_loss_weight(tmp_path, tiny_tokenizer):
    """Messages whose content is a list of text parts (OpenAI's and LLaMA-Factory v1's shape) read as their text;
    an answer with loss_weight 0 stays untrained; media parts and a trained user turn are refused by name."""
    parts = lambda t: [{"type": "text", "value": t}]  # noqa: E731
    rec = {"messages": [{"role": "user", "content": parts("Hi"), "loss_weight": 0.0},
                        {"role": "assistant", "content": parts("Hello!"), "loss_weight": 0.0},
                        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                        {"role": "assistant", "content": parts("4"), "loss_weight": 1.0}]}
    (tmp_path / "v1.jsonl").write_text(json.dumps(rec) + "\n")
    (conv,) = load_conversations(tmp_path / "v1.jsonl")
    assert [m["content"] for m in conv] == ["Hi", "Hello!", "2+2?", "4"]
    (row,), _ = encode([conv], tiny_tokenizer, get_template("auto", tiny_tokenizer), 1024)
    assert labelled_text(tiny_tokenizer, row) == "4<|im_end|>"
    import ftkit

    assert ftkit.render(conv).labels == row["labels"]  # render shows what training trains, weights included
    for bad, why in [({"role": "user", "content": [{"type": "image", "image": "x.png"}]}, "an image part"),
                     ({"role": "user", "content": "Hi", "loss_weight": 1.0}, "loss_weight 1 trains a user turn")]:
        (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [bad, rec["messages"][3]]}) + "\n")
        with pytest.raises(DataError, match=why):
            load_conversations(tmp_path / "bad.jsonl")
