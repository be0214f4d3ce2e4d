"""`precision: auto` and the bf16/fp16 keys against the device, decided before any weights load. The GPU is faked
(its name and CUDA compute capability), as on a free Colab T4 (7.5), a V100 (7.0), an A100 (8.0): the capabilities
NVIDIA lists at developer.nvidia.com/cuda-gpus; bf16 from 8.0 as torch.cuda.is_bf16_supported decides."""
import pytest

import ftkit
from conftest import base_config
from ftkit import memory, model as M
from ftkit.config import RunConfig
from ftkit.errors import ConfigError
from ftkit.planning import with_precision

T4, V100 = M.Gpu("Tesla T4", (7, 5)), M.Gpu("Tesla V100-SXM2-16GB", (7, 0))
A100 = M.Gpu("NVIDIA A100-SXM4-40GB", (8, 0))


def precision(cfg: RunConfig, gpu) -> str:
    c = with_precision(cfg, gpu)
    return "bf16" if c.bf16 or c.pure_bf16 else "fp16" if c.fp16 else "fp32"


@pytest.mark.parametrize("gpu, picked", [(None, "fp32"), (T4, "fp16"), (V100, "fp16"), (A100, "bf16")])
def test_auto_picks_what_the_device_has(gpu, picked):
    assert precision(RunConfig(), gpu) == picked


def test_an_explicit_choice_stands():
    assert precision(RunConfig(precision="fp32"), A100) == "fp32"
    assert precision(RunConfig(bf16=True), A100) == "bf16"
    assert precision(RunConfig(precision="fp16"), A100) == "fp16"
    assert precision(RunConfig(fp16=True), T4) == "fp16"


def test_precisions_that_disagree_or_do_not_exist_are_refused():
    with pytest.raises(ConfigError, match="precision: fp32 and bf16: true ask for different precisions"):
        RunConfig.from_dict({"dataset": "demo", "precision": "fp32", "bf16": True})
    with pytest.raises(ConfigError, match="precision: 'tf32' is not one of auto, bf16, fp16, fp32"):
        RunConfig.from_dict({"dataset": "demo", "precision": "tf32"})
    assert RunConfig.from_dict({"dataset": "demo", "precision": "bf16", "bf16": True}).bf16


def test_bf16_on_a_t4_is_refused_before_loading_naming_the_gpu_and_the_fix(workdir, monkeypatch):
    monkeypatch.setattr(M, "gpu", lambda: T4)
    monkeypatch.setattr(M, "load_model", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=r"bf16: the Tesla T4 \(compute capability 7\.5\) has no bf16 .* set fp16: "
                                          r"true instead, or leave precision to auto"):
        ftkit.train(base_config(workdir / "run", bf16=True))


def test_fp16_without_a_gpu_is_refused(workdir):
    with pytest.raises(ConfigError, match="fp16: needs a CUDA GPU"):
        ftkit.plan(base_config(workdir / "run", precision="fp16"))


def test_the_memory_estimate_follows_the_precision_picked(workdir):
    """On a T4, auto's fp16 halves the frozen base's bytes against the CPU's fp32 (the same run sized twice)."""
    p = ftkit.plan(base_config(workdir / "run"))
    on_t4 = with_precision(p.config, T4)
    cpu = memory.estimate(p.config, M.skeleton(p.config, p.model_path, p.tokenizer).config, p.counts, 4, 64)
    t4 = memory.estimate(on_t4, M.skeleton(on_t4, p.model_path, p.tokenizer).config, p.counts, 4, 64)
    assert p.config.bf16 is False and p.config.fp16 is False and on_t4.fp16 is True
    assert t4.weights < 0.6 * cpu.weights


def test_the_gpu_is_asked_of_nvidia_smi_so_planning_leaves_cuda_uninitialised(tmp_path, monkeypatch):
    """In a notebook's kernel CUDA must stay uninitialised (notebook_launcher and --nproc fork or launch the run):
    the GPU's name and capability come from nvidia-smi, never from torch.cuda's device queries."""
    import torch

    smi = tmp_path / "nvidia-smi"
    # --format=csv,noheader,nounits (memory in MiB); memory.reserved asked on its own (older drivers lack it)
    smi.write_text('#!/bin/sh\ncase "$1" in *reserved*) echo 265;; *) echo "Tesla T4, 7.5, 15360";; esac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: pytest.fail("CUDA queried through torch"))
    assert M.gpu() == M.Gpu("Tesla T4", (7, 5), (15360 - 265) * 2**20)  # what torch reports there: 14.741 GiB
