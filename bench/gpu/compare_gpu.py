"""ftkit against LLaMA-Factory 0.9.5 on the same GPU, the same model shape and the same data, side by side.

    python bench/gpu/compare_gpu.py [--shape Qwen2.5-0.5B|Qwen2.5-1.5B|Llama-3.2-1B] [--examples 2000] [--rounds 2]
                                    [--llamafactory-python PY]

The model is a random-initialised copy of a real one (its published config.json, tests/fixtures/models; no
download) with the embedded tokenizer; the data, the run (1 epoch, LoRA r=8 on every projection, batch 8, cutoff
512, lr 1e-3, cosine; bf16 where the GPU has it, else fp16) and the measuring patches on transformers.Trainer are
bench/compare.py's. ftkit runs twice: as planned (gradient checkpointing only where the run would not fit
otherwise) and with gradient_checkpointing: true, as LLaMA-Factory runs by default (like for like in memory). Per
contender: tokens/s, time to the first step, peak GPU memory allocated and reserved, train loss. Prints ratios
and writes bench/results/compare-gpu-<device>-<date>.json.

LLaMA-Factory runs from this Python when it can import llamafactory, else from --llamafactory-python. The lent GPU
machine reaches no network: carry llamafactory==0.9.5 and the packages it needs as wheels (the device tool's
notes). Without CUDA this says so and exits 0 (CI has no GPU); without LLaMA-Factory it measures ftkit alone and
says so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/compare.py: data, configs, one run in its own process)


def build_model(shape: str, folder: Path) -> str:
    """A random model of a real shape with the embedded tokenizer, saved in bf16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftkit.model import load_tokenizer, resolve

    tok = load_tokenizer(resolve("tiny"))
    config = AutoConfig.from_pretrained(ROOT / "tests" / "fixtures" / "models" / shape)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = tok.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="Qwen2.5-0.5B", choices=["Qwen2.5-0.5B", "Qwen2.5-1.5B", "Llama-3.2-1B"])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--llamafactory-python", type=Path, default=None)
    p.add_argument("--rehearse", action="store_true", help="run the whole script on this CPU (bf16, few examples), "
                   "LLaMA-Factory from bench/compare.py's virtualenv: proves it before GPU time is spent")
    a = p.parse_args(argv)
    import torch

    if a.rehearse:
        a.examples, a.rounds = min(a.examples, 8), 1  # one step of batch 8 each
        a.llamafactory_python = a.llamafactory_python or compare.baseline_python()
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: the GPU comparison did not run (it runs on a lent GPU machine)")
        return 0
    gpu = "cpu" if a.rehearse else torch.cuda.get_device_name(0)
    bf16 = not a.rehearse and torch.cuda.is_bf16_supported()
    data = compare.build(a.examples)  # the chats (and a small CPU model, unused here)
    model = build_model(a.shape, compare.WORK / f"gpu-{a.shape}")
    lf_python = a.llamafactory_python or (Path(sys.executable) if subprocess.run(
        [sys.executable, "-c", "import llamafactory.train.tuner"], capture_output=True).returncode == 0 else None)
    precision = {} if a.rehearse else {"bf16": True} if bf16 else {"fp16": True}
    contenders = {}
    for name, (tool, cfg) in compare.configs(model).items():
        if name not in ("ftkit", "llamafactory", "llamafactory-neat-packing"):
            continue
        if tool == "llamafactory":
            if lf_python is None:
                continue
            cfg = {**cfg, "use_cpu": a.rehearse, **precision}
        else:
            # on a CPU LLaMA-Factory computes in the saved model's dtype (bf16): the rehearsal does the same
            cfg = {**cfg, "precision": "bf16" if a.rehearse or bf16 else "fp16"}
        contenders[name] = (tool, cfg, lf_python if tool == "llamafactory" else Path(sys.executable))
        if name == "ftkit":  # LLaMA-Factory checkpoints by default; ftkit only where the plan needs it
            contenders["ftkit-checkpointing"] = (tool, {**cfg, "gradient_checkpointing": True}, Path(sys.executable))
    if lf_python is None:
        print("LLaMA-Factory is not importable here (pip install llamafactory==0.9.5, or --llamafactory-python): "
              "measuring ftkit alone")
    print(f"{gpu}, {'bf16' if a.rehearse or bf16 else 'fp16'}; {a.shape} shape; {a.examples} chats, tokens per "
          f"example median {data['tokens_median']}, max {data['tokens_max']}", flush=True)
    runs = []
    for round_ in range(a.rounds):
        order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
        for name in order:
            tool, cfg, python = contenders[name]
            r = compare.run_one(name, tool, cfg, python, threads=2 if a.rehearse else 4, round_=round_,
                                cuda=not a.rehearse)
            r.setdefault("peak_allocated_mib", r["peak_rss_mib"])  # rehearsal: the process's peak RSS
            r.setdefault("peak_reserved_mib", r["peak_rss_mib"])
            runs.append(r)
            print(f"  {name:<26} round {round_}: {r['tokens_per_s']:8.0f} tok/s, first step {r['first_step_s']:5.1f}s, "
                  f"peak {'RSS' if a.rehearse else 'allocated'} {r['peak_allocated_mib']:7.0f} MiB", flush=True)
    keys = ("train_s", "first_step_s", "tokens_per_s", "peak_allocated_mib", "peak_reserved_mib", "train_loss")
    summary = {n: {k: statistics.median(r[k] for r in runs if r["name"] == n) for k in keys} for n in contenders}
    for mine in (n for n in summary if n.startswith("ftkit")):
        for name, s in ((n, s) for n, s in summary.items() if not n.startswith("ftkit")):
            f = summary[mine]
            print(f"{mine} vs {name}: {f['tokens_per_s'] / s['tokens_per_s']:.2f}x the tokens/s, time to first step "
                  f"{f['first_step_s'] / s['first_step_s']:.2f}x, peak allocated "
                  f"{f['peak_allocated_mib'] / s['peak_allocated_mib']:.2f}x")
    if a.rehearse:
        print("(a rehearsal on this CPU: nothing written)")
        return 0
    out = BENCH / "results" / f"compare-gpu-{gpu.replace(' ', '-')}-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps({"gpu": gpu, "shape": a.shape, "data": data, "summary": summary, "runs": runs},
                              indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
