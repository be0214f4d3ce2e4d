"""GPU checks, in one go: QLoRA 4-bit, bf16 LoRA (sdpa), gradient checkpointing, flash attention 2 if installed,
fp16 LoRA (gradient scaler) and bf16 full fine-tuning.

    python bench/gpu/check_gpu.py [--steps 30] [--shape qwen2.5-0.5b|llama-3.2-1b]

Builds a random-initialised model of a real small shape (no download), fine-tunes it through `ftkit.train`
on chat examples of about 400 tokens, and records per run: peak GPU memory (allocated and reserved), ftkit's
memory estimate, median tokens/s, and first/last loss, into bench/results/gpu-<device>-<date>.json.
Without CUDA it says so and exits 0 (CI has no GPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {  # the published configs' sizes (random weights: only shapes and speed matter here)
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=32768),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=8192, head_dim=64),
}
RUNS = {
    "qlora-4bit": dict(quantization_bit=4, bf16=True),
    "lora-bf16-sdpa": dict(bf16=True, flash_attn="sdpa"),
    "lora-bf16-checkpointing": dict(bf16=True, flash_attn="sdpa", gradient_checkpointing=True),
    "lora-bf16-fa2": dict(bf16=True, flash_attn="fa2"),
    "lora-fp16": dict(fp16=True),                        # gradient scaler path
    "full-bf16-checkpointing": dict(finetuning_type="full", bf16=True, gradient_checkpointing=True),
}


def build(shape: str, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftkit.model import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("tiny"))
    kw = dict(SHAPES[shape])
    config = AutoConfig.for_model(kw.pop("model_type"), bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **kw)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def long_chats(folder: Path) -> Path:
    """Demo conversations joined into ~400-token multi-turn chats."""
    from ftkit.data import load_conversations

    demo = load_conversations(ROOT / "data" / "demo_zh_en.json")
    chats = [sum((c for c in demo[i:i + 12] if c[0]["role"] != "system"), []) for i in range(0, len(demo), 3)]
    path = folder / "chats.json"
    path.write_text(json.dumps([{"conversation": c} for c in chats], ensure_ascii=False))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: GPU checks skipped")
        return 0
    import importlib.util

    import ftkit

    device = torch.cuda.get_device_name(0)
    results = {"device": device, "shape": a.shape, "steps": a.steps, "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, data = build(a.shape, tmp / "model"), long_chats(tmp)
        for name, extra in RUNS.items():
            if name.endswith("fa2") and not importlib.util.find_spec("flash_attn"):
                results["runs"][name] = {"skipped": "flash-attn is not installed"}
                continue
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run = ftkit.train(dict(model_name_or_path=str(model_dir), dataset=str(data), max_steps=a.steps,
                                   per_device_train_batch_size=8, cutoff_len=512, learning_rate=2e-4,
                                   logging_steps=5, save_steps=10**6, output_dir=str(tmp / name), **extra))
            steps = [e for e in run.metrics if e["kind"] == "step"][1:]  # the first includes warm-up
            results["runs"][name] = {
                "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
                "estimate_mib": round(run.metrics[0]["memory_mb"]),
                "tokens_per_s": round(statistics.median(e["tokens_per_s"] for e in steps)) if steps else None,
                "first_loss": run.losses[0][1], "last_loss": run.losses[-1][1], "note": run.metrics[0].get("note"),
            }
            del run
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    path = a.out / f"gpu-{device.replace(' ', '_')}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'run':<26}{'peak alloc MiB':>15}{'estimate MiB':>14}{'tokens/s':>10}{'loss':>16}")
    for name, r in results["runs"].items():
        if "skipped" in r:
            print(f"{name:<26}skipped: {r['skipped']}")
        else:
            print(f"{name:<26}{r['peak_allocated_mib']:>15,}{r['estimate_mib']:>14,}{r['tokens_per_s'] or 0:>10,}"
                  f"{r['first_loss']:>8.3f}->{r['last_loss']:.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
