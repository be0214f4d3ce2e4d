"""streaming: true: training from a stream read and tokenized as it goes (the examples equal the prepared ones, the
shuffle buffer is seeded per epoch, data loader workers share it, packing works on it, a resumed run continues
exactly), and what a stream cannot do is refused by name."""
import json

import pytest

import ftkit
from conftest import DATA, base_config
from ftkit.config import RunConfig
from ftkit.errors import ConfigError


@pytest.fixture
def chats(tmp_path):
    """A JSONL file of 120 demo conversations."""
    records = json.loads((DATA / "demo_zh_en.json").read_text(encoding="utf-8"))[:120]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def stream_of(path, monkeypatch, **kw):
    from ftkit import data, streaming
    from ftkit.model import load_tokenizer, resolve
    from ftkit.templates import get_template

    monkeypatch.setattr(data, "CHUNK", 16)  # several chunks from a small file
    tok = load_tokenizer(resolve("tiny"))
    cfg = RunConfig.from_dict({"dataset": str(path), "streaming": True, "max_steps": 1, "cutoff_len": 96, **kw})
    return cfg, tok, get_template("auto", tok), streaming.prepare(cfg, tok, get_template("auto", tok))


def key(example):
    return tuple(example["input_ids"]), tuple(example["labels"])


def test_the_stream_holds_the_examples_preparing_gives(chats, monkeypatch):
    from ftkit import data

    cfg, tok, template, prepared = stream_of(chats, monkeypatch, val_size=10, buffer_size=1)
    whole = data.encode_rows(data.load_conversations(chats), tok, template, 96).kept()
    in_order = [key(e) for e in prepared.train]
    assert in_order == [key(e) for e in whole][10:]  # buffer 1: file order, the first 10 held out
    assert [key(e) for e in prepared.eval] == [key(e) for e in whole][:10]
    assert prepared.stats.sampled == 110 and prepared.stats.examples == len(in_order)

    _, _, _, shuffled = stream_of(chats, monkeypatch, val_size=10, buffer_size=32, seed=3)
    first = [key(e) for e in shuffled.train]
    assert sorted(first) == sorted(in_order) and first != in_order  # the same examples, drawn through the buffer
    assert [key(e) for e in shuffled.train] == first  # seeded: the same order again
    shuffled.train.set_epoch(1)
    again = [key(e) for e in shuffled.train]
    assert sorted(again) == sorted(first) and again != first  # each epoch its own order


def test_data_loader_workers_share_the_stream(chats, monkeypatch):
    import torch

    _, _, _, prepared = stream_of(chats, monkeypatch, buffer_size=8)
    alone = sorted(key(e) for e in prepared.train)
    loader = torch.utils.data.DataLoader(prepared.train, batch_size=None, num_workers=2)
    shared = [key(e) for e in loader]
    assert sorted(shared) == alone and len(shared) == len(alone)  # each example once


def test_a_streamed_run_packs_and_resumes_exactly(chats, workdir, monkeypatch):
    """8 steps of 16 examples from 120 conversations, packed, so into a second pass of the stream; stopped at step 4
    and resumed, steps 5-8 have the losses of the run that was never stopped."""
    from ftkit import data

    monkeypatch.setattr(data, "CHUNK", 16)
    cfg = dict(dataset=str(chats), streaming=True, buffer_size=24, per_device_train_batch_size=16)
    whole = ftkit.train(base_config("out/whole", **cfg), console=False)
    begin = next(e for e in whole.metrics if e["kind"] == "begin")
    assert begin["packed"] and begin["sampled"] == 120
    stop_at_4 = lambda e: "stop" if e["kind"] == "step" and e["step"] == 4 else None  # noqa: E731
    ftkit.train(base_config("out/part", **cfg), callbacks=[stop_at_4], console=False)
    resumed = ftkit.train(base_config("out/part", resume_from_checkpoint=True, **cfg), console=False)
    steps = [e for e in resumed.metrics if e["kind"] == "step"]
    reference = {e["step"]: e for e in whole.metrics if e["kind"] == "step"}
    assert [e["step"] for e in steps] == [5, 6, 7, 8]
    assert [e["loss"] for e in steps] == pytest.approx([reference[s]["loss"] for s in (5, 6, 7, 8)], rel=1e-5)
    assert 8 * 16 > begin["examples"]  # the stream (all of it sampled) was read into a second pass


def test_what_a_stream_cannot_do_is_refused_by_name(chats):
    with pytest.raises(ConfigError, match="set max_steps"):
        RunConfig.from_dict({"dataset": str(chats), "streaming": True})
    for extra, why in [({"val_size": 0.1}, "a share"), ({"tokenized_path": "tok"}, "tokenized_path"),
                       ({"dataset": f"{chats},{chats}", "mix_strategy": "interleave_under"}, "interleave_under")]:
        with pytest.raises(ConfigError, match=why):
            ftkit.plan({"dataset": str(chats), "streaming": True, "max_steps": 2, **extra})
