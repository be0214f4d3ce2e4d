"""Sizing real models for a free Colab T4, from their published config.json files (no weights), and ftkit's
estimate against published measured peaks of the same configurations.

    python bench/t4_table.py [--device t4] [--cutoff 2048]

1. The README's T4 table: LoRA and QLoRA (r=8 on every projection, batch 1, gradient checkpointing) of
   Qwen2.5-0.5B/1.5B/7B, Llama-3.2-1B/3B, Llama-3.1-8B and Qwen3-14B at cutoff_len 2048, each planned by
   `ftkit.plan(config, device="t4")` (what `ftkit train --dry-run --device t4` prints): the precision picked,
   the peak estimate, whether it fits, and for a run that does not fit the levers.
2. The estimate against measurements: huggingface/trl's notebook examples/notebooks/sft_trl_lora_qlora.ipynb ran
   QLoRA (nf4, double quantization, fp16 compute, r=32 on the seven projections, batch 1, max_length 1024,
   gradient checkpointing, Liger kernels, paged_adamw_8bit, activation offloading) on a Colab T4 and printed
   torch.cuda.max_memory_reserved(): 14.041 GB for Qwen3-14B (Unsloth's pre-quantized checkpoint), and states
   ~12.8 / ~10.8 / ~4.7 / ~10.9 GB for Qwen3-8B, Qwen2.5-7B-Instruct, Llama-3.2-3B-Instruct and
   Llama-3.1-8B-Instruct. The same configuration is planned here and the ratio estimate / measured printed.

The data is one long bilingual conversation made of the demo data, so the longest example reaches the cutoff;
the tokenizer is the embedded one (lengths only; the models' vocabulary sizes come from their configs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "fixtures" / "models"
TABLE = ["Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-7B", "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Qwen3-14B"]
# (model, peak GiB as torch.cuda.max_memory_reserved() / 2**30, how the notebook gives it)
PUBLISHED = [("Qwen3-14B", 14.041, "printed after training"), ("Qwen3-8B", 12.8, "stated, ~"),
             ("Qwen2.5-7B", 10.8, "stated, ~"), ("Llama-3.2-3B", 4.7, "stated, ~"), ("Llama-3.1-8B", 10.9, "stated, ~")]
TRL_RECIPE = dict(quantization_bit=4, double_quantization=True, lora_rank=32, lora_alpha=32,
                  lora_target="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", per_device_train_batch_size=1,
                  gradient_accumulation_steps=4, cutoff_len=1024, gradient_checkpointing=True, use_liger_kernel=True,
                  optim="paged_adamw_8bit")
GiB = 2**30
TABLE_RUN = dict(lora_rank=8, per_device_train_batch_size=1, gradient_accumulation_steps=8,
                 gradient_checkpointing=True)  # what a T4 run sets


def long_data(folder: Path) -> Path:
    """One conversation holding every turn of the demo data (about 9,000 tokens): the longest example reaches any
    cutoff up to that."""
    rows = json.loads((ROOT / "data" / "demo_zh_en.json").read_text(encoding="utf-8"))
    turns = [t for r in rows for t in r["conversation"] if t["role"] != "system"]
    path = folder / "long.json"
    path.write_text(json.dumps([{"conversation": turns}], ensure_ascii=False), encoding="utf-8")
    return path


def planned(model: str, data: Path, out: Path, device: str, **keys) -> dict:
    import ftkit
    from ftkit.errors import ConfigError

    cfg = dict(model_name_or_path=str(MODELS / model), tokenizer_name_or_path="tiny", dataset=str(data),
               output_dir=str(out / model), ignore_memory_estimate=True, **keys)
    plan = ftkit.plan(cfg, device=device)
    row = dict(model=model, params_b=plan.counts["total"] / 1e9, precision=plan.device,
               peak_gib=plan.memory.total / GiB, budget_gib=plan.memory_available / GiB,
               parts_gib={k: getattr(plan.memory, k) / GiB for k in ("weights", "trainable_state", "activations",
                                                                       "logits")},
               checkpointing=bool(plan.config.gradient_checkpointing))
    row["fits"] = plan.memory.total <= plan.memory_available
    if not row["fits"]:  # what the refusal names
        try:
            ftkit.plan({**cfg, "ignore_memory_estimate": False}, device=device)
        except ConfigError as e:
            row["levers"] = [line.strip() for line in str(e).splitlines() if line.startswith("    ")]
    return row


def fitting(row: dict) -> str:
    """The lever (or set of them) the refusal names as making the run fit."""
    fits = [line for line in row.get("levers", []) if line.endswith("which fits")]
    return fits[0].removesuffix(", which fits") if fits else row.get("levers", [""])[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="t4")
    ap.add_argument("--cutoff", type=int, default=2048)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    results = dict(device=a.device, cutoff_len=a.cutoff, table=[], published=[])
    with tempfile.TemporaryDirectory() as tmp:
        data = long_data(Path(tmp))
        print(f"| model | method | precision | estimated peak (GiB) | fits a {a.device} | else |")
        print("|---|---|---|---|---|---|")
        for model in TABLE:
            for method, keys in (("LoRA", {}), ("QLoRA 4-bit", dict(quantization_bit=4))):
                row = planned(model, data, Path(tmp), a.device, **TABLE_RUN, cutoff_len=a.cutoff, **keys)
                row["method"] = method
                results["table"].append(row)
                print(f"| {model} | {method} | {row['precision'].split('; ')[1].split(',')[0]} | "
                      f"{row['peak_gib']:.1f} | {'yes' if row['fits'] else 'no'} | {fitting(row)} |")
        print("\nestimate against published peaks (huggingface/trl sft_trl_lora_qlora.ipynb, Colab T4, "
              "max_memory_reserved):")
        print("| model | published peak (GiB) | ftkit estimate (GiB) | ratio |")
        print("|---|---|---|---|")
        for model, peak, how in PUBLISHED:
            row = planned(model, data, Path(tmp), "t4", **TRL_RECIPE)
            row.update(published_gib=peak, how=how, ratio=row["peak_gib"] / peak)
            results["published"].append(row)
            print(f"| {model} | {peak} ({how}) | {row['peak_gib']:.2f} | {row['ratio']:.2f} |")
    out = ROOT / "bench" / "results" / f"t4-table-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
