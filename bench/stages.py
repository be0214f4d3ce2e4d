"""Memory and speed of the preference stages against supervised fine-tuning, side by side in one run.

    python bench/stages.py [--steps 8]

A 110M-parameter Llama (random weights, tiny's tokenizer; built once under bench/.work/stages) trains, each run in
its own process on the CPU's cores: LoRA SFT on the demo conversations (4 sequences a step), LoRA DPO on the demo
pairs (2 pairs a step: the same 4 sequences' worth of chosen and rejected answers, plus the reference's forward
with the adapter off), and for contrast full-parameter DPO, where TRL keeps a second, frozen copy of the model as
the reference. Reports the peak memory of each process (RSS, sampled every 50 ms), the seconds per step, the
ratio of LoRA DPO to LoRA SFT (the target: within 1.3x), and writes bench/results/stages-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work" / "stages"
sys.path.insert(0, str(BENCH))


def model_folder() -> Path:
    folder = WORK / "llama-110m"
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from data_scale import save_random
    from ftkit.tiny import path as tiny

    tok = AutoTokenizer.from_pretrained(tiny())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_random(LlamaForCausalLM, config, tok, folder)


RUN = """
import json, pathlib, sys, time, ftkit
cfg = json.loads(sys.argv[1])
t = {}
def clock(e):
    if e["kind"] == "step" and e["step"] == 1:
        t["first"] = time.time()
    if e["kind"] == "step":
        t["last"], t["step"] = time.time(), e["step"]
ftkit.train(cfg, callbacks=[clock], console=False)
timing = {"s_per_step": (t["last"] - t["first"]) / max(t["step"] - 1, 1)}  # after the first step
pathlib.Path(cfg["output_dir"], "timing.json").write_text(json.dumps(timing))
"""


def run(name: str, cfg: dict) -> dict:
    from data_scale import measured

    out = WORK / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = {**cfg, "output_dir": str(out)}
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "FTKIT_CACHE_DIR": "off"}
    r = measured([sys.executable, "-c", RUN, json.dumps(cfg)], env, name)
    return {**r, **json.loads((out / "timing.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    model = str(model_folder())
    common = dict(model_name_or_path=model, cutoff_len=256, max_steps=a.steps, logging_steps=1, learning_rate=1e-4,
                  lora_rank=16, save_steps=10**6, packing=False, seed=0)
    runs = {
        "LoRA SFT, 4 sequences a step": dict(common, dataset="demo", per_device_train_batch_size=4),
        "LoRA DPO, 2 pairs a step": dict(common, stage="dpo", dataset="demo_dpo", per_device_train_batch_size=2),
        "full DPO, 2 pairs a step": dict(common, stage="dpo", dataset="demo_dpo", per_device_train_batch_size=2,
                                         finetuning_type="full"),
    }
    started, results = time.time(), {}
    print(f"{'run':<32} {'peak memory':>12} {'s/step':>8}")
    for name, cfg in runs.items():
        results[name] = run(name.split(",")[0].replace(" ", "-").lower(), cfg)
        print(f"{name:<32} {results[name]['peak_rss_mib']:>8,.0f} MiB {results[name]['s_per_step']:>7.2f} s",
              flush=True)
    sft, dpo, full = (results[n]["peak_rss_mib"] for n in runs)
    summary = (f"LoRA DPO's peak memory is {dpo / sft:.2f}x LoRA SFT's ({dpo:,.0f} vs {sft:,.0f} MiB; target "
               f"<= 1.3x): the reference is the base with the adapter off. Full DPO: {full:,.0f} MiB "
               f"({full / sft:.2f}x), with TRL's second copy of the model as its reference.")
    print(summary)
    out = BENCH / "results" / f"stages-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "steps": a.steps, "total_s": time.time() - started,
                               "results": results, "summary": summary}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
