import io
import json

import pytest

from ftkit.config import RunConfig
from ftkit.events import ConsoleProgress, Emitter, JsonlLog, read_jsonl

BEGIN = dict(examples=10, eval_examples=2, tokens=400, length_median=35, length_max=80, trained_tokens=150,
             eot_trained=True, truncated=None, trainable_params=1000, total_params=100000, max_steps=5,
             batch_tokens="8 examples (8 x 1 accumulation)", device="cpu", model="tiny",
             finetuning="LoRA r=8 on all", output_dir="outputs/x", note=None, memory="~700 MiB at peak (...)",
             memory_mb=700.0, memory_available_mb=20480.0)
STEP = dict(step=2, max_steps=5, epoch=0.4, loss=1.2345, lr=1e-4, grad_norm=0.5, tokens_per_s=1234.5,
            memory_mb=600.0, memory_total_mb=24000.0, elapsed_s=3.0, eta_s=4.5)


def test_emitter_feeds_subscribers_and_jsonl(tmp_path):
    seen = []
    emit = Emitter([seen.append, JsonlLog(tmp_path / "m.jsonl")])
    emit("begin", **BEGIN)
    emit("step", **STEP)
    assert [e["kind"] for e in seen] == ["begin", "step"]
    assert read_jsonl(tmp_path / "m.jsonl") == json.loads(json.dumps(seen))


def test_a_broken_subscriber_warns_once_and_the_run_goes_on():
    calls = []

    def broken(e):
        calls.append(e)
        raise RuntimeError("display gone")

    emit = Emitter([broken])
    with pytest.warns(UserWarning, match="display gone"):
        emit("step", **STEP)
    emit("step", **STEP)
    assert len(calls) == 1


def test_stop_request():
    emit = Emitter([lambda e: "stop" if e["step"] >= 2 else None])
    emit("step", **{**STEP, "step": 1})
    assert not emit.stop_requested
    emit("step", **STEP)
    assert emit.stop_requested


def test_console_lines():
    out = io.StringIO()
    show = ConsoleProgress(out)
    show({"kind": "begin", **BEGIN})
    show({"kind": "step", **STEP})
    show({"kind": "eval", "step": 2, "eval_loss": 1.5})
    text = out.getvalue()
    assert "10 examples (2 held out), 400 tokens (median 35, longest 80), 150 trained (38%)" in text
    assert "step 2/5  epoch 0.40  loss 1.2345  lr 1.00e-04  1,234 tok/s  mem 600 MiB" in text
    assert "eta 0:04" in text and "eval at step 2: loss 1.5000" in text


def test_bare_flash_attn_flag_means_fa2():
    assert RunConfig.from_dict({"dataset": "d", "flash_attn": True}).flash_attn == "fa2"
