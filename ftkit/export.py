"""Export: a merged (or any causal LM) folder to ONNX for CPU inference with onnxruntime.

`export_onnx` traces the model with `torch.onnx.export` (dynamo) for any batch
and sequence length, writes `model.onnx` (weights in `model.onnx.data`) beside
the tokenizer, chat template and run config, then checks on a left-padded probe
batch that onnxruntime's logits equal PyTorch's (else it fails and keeps
nothing). `ftkit.generate` and `ftkit chat --onnx` answer from such a folder
(generation.OnnxLM).
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from ftkit.config import ADAPTER_CONFIG
from ftkit.errors import ModelError
from ftkit.folders import partial_dir, replace_dir
from ftkit.generation import ONNX_FILE, OnnxLM, require_onnx
from ftkit.model import quiet


@quiet()
def export_onnx(model_dir: str | Path, out: str | Path, tolerance: float = 1e-4, console: bool = True) -> Path:
    """Export and verify; returns the output folder."""
    require_onnx()
    from ftkit import model as M

    import torch
    from transformers import AutoModelForCausalLM

    if (Path(model_dir) / "adapter_config.json").exists():
        raise ModelError(f"{model_dir}: this is a LoRA adapter; merge it first (ftkit merge --adapter {model_dir}) "
                         "and export the merged folder")
    src = Path(M.resolve(str(model_dir)))
    net = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **M.safe_weights(str(src))).eval()
    net.config.use_cache = False
    tokenizer = M.load_tokenizer(str(src))
    out = Path(out)
    tmp = partial_dir(out)
    tmp.mkdir()

    wrapped = _logits_only(net)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping torchvision::nms", ...
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter narrates each pass
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            torch.onnx.export(wrapped, (ids, torch.ones_like(ids)), str(tmp / ONNX_FILE), dynamo=True,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    finally:  # the logger is the process's, not this export's
        quiet.setLevel(level)
    diff = _check(wrapped, tmp, len(tokenizer))
    if not diff <= tolerance:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"ONNX check failed: onnxruntime logits differ from PyTorch's by {diff:.3g} "
                         f"(allowed {tolerance}); nothing was written")
    tokenizer.save_pretrained(tmp)
    net.generation_config.save_pretrained(tmp)
    net.config.save_pretrained(tmp)
    if (src / ADAPTER_CONFIG).exists():
        shutil.copy(src / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
    replace_dir(tmp, out)
    if console:
        size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        print(f"exported {src} -> {out} ({size:.0f} MiB)\n"
              f"  check: max |logit difference| onnxruntime vs PyTorch, left-padded batch = {diff:.2e}")
    return out


def _logits_only(net):
    """input_ids, attention_mask -> logits, without a cache: the graph ONNX gets."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask):
            return self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly().eval()


def _check(wrapped, folder: Path, vocab: int) -> float:
    import numpy as np
    import torch

    ids = torch.randint(3, vocab, (2, 19), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding, as batched generation uses
    session = OnnxLM.session(folder)
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = wrapped(ids, mask).numpy()
    keep = mask.numpy().astype(bool)
    return float(np.abs(got - want)[keep].max())
