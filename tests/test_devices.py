"""Sizing a run for a GPU this machine does not have: `ftkit train --dry-run --device t4`, `%%finetune --dry-run
--device t4`, `ftkit.plan(config, device=...)`. Real models enter as their published config.json files
(tests/fixtures/models, weights excluded), planned for a free Colab T4 (14.741 GiB as torch reports it there,
compute capability 7.5: no bf16, no FlashAttention-2)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ftkit
from conftest import base_config
from ftkit import model as M
from ftkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "fixtures" / "models"
_spec = importlib.util.spec_from_file_location("t4_table", ROOT / "bench" / "t4_table.py")
t4_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(t4_table)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    return t4_table.long_data(tmp_path_factory.mktemp("long"))


def real(model: str, data, out, **keys) -> dict:
    return dict(model_name_or_path=str(MODELS / model), tokenizer_name_or_path="tiny", dataset=str(data),
                output_dir=str(out), cutoff_len=2048, **keys)


def test_a_t4_trains_in_fp16_with_sdpa_and_its_memory(workdir):
    p = ftkit.plan(base_config(workdir / "run"), device="t4")
    assert p.config.fp16 and not p.config.bf16
    assert p.memory_available == M.DEVICES["t4"].memory
    assert p.summary()["device"] == "a Tesla T4 (planned; fp16 with loss scaling, sdpa attention)"
    a100 = ftkit.plan(base_config(workdir / "run"), device="a100-40g")
    assert a100.config.bf16 and not a100.config.fp16 and "bf16" in a100.summary()["device"]
    cpu = ftkit.plan(base_config(workdir / "run"), device="cpu")
    assert not (cpu.config.bf16 or cpu.config.fp16)


def test_a_device_sizes_the_half_precision_weights(workdir):
    """The same LoRA run: the frozen base in fp16 on a T4 takes half the bytes of the CPU's fp32."""
    t4, cpu = (ftkit.plan(base_config(workdir / "run"), device=d).memory for d in ("t4", "cpu"))
    assert t4.weights < 0.6 * cpu.weights


def test_bf16_and_fa2_on_a_t4_are_refused_naming_the_gpu(workdir):
    with pytest.raises(ConfigError, match=r"bf16: the Tesla T4 \(compute capability 7\.5\) has no bf16"):
        ftkit.plan(base_config(workdir / "run", bf16=True), device="t4")
    with pytest.raises(ConfigError, match=r"flash_attn: fa2 .* the Tesla T4 has 7\.5: set flash_attn: sdpa"):
        ftkit.plan(base_config(workdir / "run", flash_attn="fa2"), device="t4")
    assert ftkit.plan(base_config(workdir / "run", flash_attn="fa2", bf16=True), device="h100").config.bf16


def test_an_unknown_device_is_refused_with_the_names(workdir):
    with pytest.raises(ConfigError, match="--device: 'v100' is not one of t4, l4, a10g, a100-40g, a100-80g, h100, cpu"):
        ftkit.plan(base_config(workdir / "run"), device="v100")


def test_full_fine_tuning_of_a_7b_on_a_t4_is_refused_with_the_levers(workdir, long_data):
    with pytest.raises(ConfigError) as e:
        ftkit.plan(real("Qwen2.5-7B", long_data, workdir / "run", finetuning_type="full"), device="t4")
    text = str(e.value)
    assert "more than the 14.7 GiB the Tesla T4 has" in text
    levers = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    named = [line.split(":")[0] for line in levers]
    assert named[:5] == ["gradient_checkpointing", "per_device_train_batch_size", "finetuning_type",
                         "quantization_bit", "use_liger_kernel"]
    # none alone fits a 7.6B model's full fine-tuning; together they do, QLoRA among them
    assert not any(line.endswith("which fits") for line in levers[:-1])
    assert re.match(r"together, .*finetuning_type: lora \+ quantization_bit: 4: ~\d+\.\d GiB, which fits",
                    levers[-1])


def test_qlora_of_a_7b_at_2048_fits_a_t4_and_lora_does_not(workdir, long_data):
    keys = dict(per_device_train_batch_size=1, gradient_checkpointing=True)
    qlora = ftkit.plan(real("Qwen2.5-7B", long_data, workdir / "q", quantization_bit=4, **keys), device="t4")
    assert qlora.memory.total < M.DEVICES["t4"].memory and qlora.config.fp16
    assert 7.5e9 < qlora.counts["total"] < 7.7e9  # Qwen2.5-7B's 7.6B parameters, from its config alone
    with pytest.raises(ConfigError, match=r"quantization_bit: 4 \(QLoRA\): ~\d+\.\d GiB, which fits"):
        ftkit.plan(real("Qwen2.5-7B", long_data, workdir / "l", **keys), device="t4")


def test_the_cli_plans_for_a_device(workdir):
    out = subprocess.run([sys.executable, "-m", "ftkit", "train", "--dry-run", "--device", "t4",
                          "--model_name_or_path", "tiny", "--dataset", "demo", "--output_dir", str(workdir / "c")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "on a Tesla T4 (planned; fp16 with loss scaling, sdpa attention)" in out.stdout
    assert "14.7 GiB available" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ftkit", "train", "--device", "t4", "--model_name_or_path", "tiny",
                          "--dataset", "demo", "--output_dir", str(workdir / "c")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and "--device: plans a run for a device (--dry-run --device t4)" in bad.stderr


def test_the_readme_t4_table_is_what_the_plan_computes(workdir, long_data):
    """Every row of the README's T4 table, planned again from the shipped configs: the table cannot go stale."""
    rows = re.findall(r"^\| (\S+) \| (LoRA|QLoRA 4-bit) \| fp16[^|]* \| ([\d.]+) \| (yes|no) \|",
                      (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    assert len(rows) == 2 * len(t4_table.TABLE)
    for model, method, peak, fits in rows:
        keys = dict(quantization_bit=4) if method.startswith("QLoRA") else {}
        row = t4_table.planned(model, long_data, workdir, "t4", **t4_table.TABLE_RUN, cutoff_len=2048, **keys)
        assert (f"{row['peak_gib']:.1f}", "yes" if row["fits"] else "no") == (peak, fits), (model, method)


CUDA_IN_THE_KERNEL = r'''
import os, sys, traceback
import torch

# a machine with two CUDA GPUs (Kaggle's 2 x T4), as far as the kernel can tell without initialising CUDA;
# initialising it (torch.cuda._lazy_init, whatever calls it) is recorded, and on this CPU build it fails anyway
initialised = []
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
def lazy_init():
    initialised.append("".join(traceback.format_stack(limit=12)))
    raise RuntimeError("CUDA initialised in the kernel")
torch.cuda._lazy_init = lazy_init
torch._C._cuda_getCurrentRawStream = lambda device: 0  # what bitsandbytes takes from a CUDA build at import

from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ftkit")
import ftkit
cells = [
    "import ftkit",
    "ftkit.preview('demo', n=1)",
    "p = ftkit.plan(dict(model_name_or_path='tiny', dataset='demo', output_dir='out/plan'))",
    "print(p.summary()['device'], p.config.fp16)",
    "ftkit.panel()",
    "%%finetune --dry-run\nmodel_name_or_path: tiny\ndataset: demo\noutput_dir: out/dry\n",
    "%%finetune --dry-run --device t4\nmodel_name_or_path: tiny\ndataset: demo\noutput_dir: out/dry\n",
]
for code in cells:
    result = ip.run_cell(code)
    if not result.success:
        print("FAILED:", code.splitlines()[0], repr(result.error_in_exec or result.error_before_exec))
print("initialised:", len(initialised), "is_initialized:", torch.cuda.is_initialized())
print("".join(initialised[:1]))
'''


def test_the_kernel_never_initialises_cuda(tmp_path):
    """`%%finetune --nproc 2` on Kaggle's two T4s starts its processes from a kernel: CUDA must stay uninitialised
    there (its context would hold memory on GPU 0 for the whole session). On a machine that looks like one with
    two GPUs, %load_ext, preview, plan, the panel and dry runs never initialise it: the GPU is read from
    nvidia-smi (faked here: a T4)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\ncase "$1" in *name*) echo "Tesla T4, 7.5, 15360";; *reserved*) echo 265;; '
                   '*) echo "7.5";; esac\n')
    smi.chmod(0o755)
    import os

    env = {**os.environ, "PATH": f"{smi.parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CUDA_IN_THE_KERNEL], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED" not in out.stdout, out.stdout[-3000:]
    assert "initialised: 0 is_initialized: False" in out.stdout, out.stdout[-3000:]
    assert "cuda True" in out.stdout  # the plan saw the GPU (fp16 on a T4) without initialising CUDA
