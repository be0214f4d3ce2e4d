"""ONNX export of a merged model: onnxruntime's logits equal PyTorch's and `ftkit chat --onnx` answers alike."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import ftkit
from conftest import base_config

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ftkit.export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    run = ftkit.train(base_config(root / "run", max_steps=60, learning_rate=2e-3, logging_steps=30), console=False)
    merged = ftkit.merge(run.adapter_dir, console=False)
    return merged, export_onnx(merged, root / "onnx", console=False)


def test_onnxruntime_logits_match_pytorch(exported):
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    merged, onnx_dir = exported
    assert (onnx_dir / "model.onnx").exists() and (onnx_dir / "tokenizer.json").exists()
    ids = torch.randint(3, 2000, (3, 23), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - want)[mask.numpy().astype(bool)].max() < 1e-4


def test_chat_with_onnx_answers_like_pytorch(exported, tmp_path):
    merged, onnx_dir = exported
    via_torch = ftkit.generate(merged, "Who are you?", max_new_tokens=30)
    via_onnx = ftkit.generate(onnx_dir, "Who are you?", max_new_tokens=30)
    assert via_onnx == via_torch and via_onnx
    p = subprocess.run([sys.executable, "-m", "ftkit.cli", "chat", "--onnx", str(onnx_dir), "--prompt", "Who are you?",
                        "--max_new_tokens", "30"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == via_torch


def test_onnx_sampling_honours_temperature_top_p_and_seed(exported):
    from ftkit.errors import ModelError

    _, onnx_dir = exported
    ask = lambda **kw: ftkit.generate(onnx_dir, "Write an English meeting invitation.", max_new_tokens=12, **kw)  # noqa: E731
    greedy = ask()
    assert ask(temperature=1.5, seed=0) == ask(temperature=1.5, seed=0), "a seed repeats a sampled answer"
    hot = {ask(temperature=1.5, seed=s) for s in range(4)}
    assert len(hot) > 1 and hot != {greedy}, "a high temperature samples"
    assert {ask(temperature=0.01, seed=s) for s in range(3)} == {greedy}, "a temperature near 0 is greedy"
    assert ask(temperature=1.5, top_p=1e-9, seed=1) == greedy, "top_p keeps only the most likely token"
    with pytest.raises(ModelError, match="not top_k"):
        ask(temperature=0.7, top_k=5)


def test_export_cli_and_refusals(exported, tmp_path):
    from ftkit.errors import ModelError
    from ftkit.export import export_onnx

    merged, _ = exported
    p = subprocess.run([sys.executable, "-m", "ftkit.cli", "export-onnx", "--model", str(merged), "--out",
                        str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "check: max |logit difference| onnxruntime vs PyTorch" in p.stdout
    with pytest.raises(ModelError, match="this is a LoRA adapter; merge it first"):
        export_onnx(merged.parent / "adapter", tmp_path / "x")
    with pytest.raises(ModelError, match="cannot take an adapter"):
        ftkit.generate(tmp_path / "cli", "hi", adapter=merged.parent / "adapter")
