"""`ftkit demo`: the whole loop on the embedded tiny model, offline, in about a minute on 2 CPU cores."""
from __future__ import annotations

import time

PROMPTS = ["Who are you?", "什么是LoRA？"]

DEMO_CONFIG = dict(
    model_name_or_path="tiny", dataset="demo", template="auto", finetuning_type="lora", lora_target="all",
    lora_rank=16, learning_rate=2e-3, num_train_epochs=20, per_device_train_batch_size=8,
    lr_scheduler_type="cosine", warmup_ratio=0.05, cutoff_len=256, logging_steps=10, save_steps=10_000,
    overwrite_output_dir=True, seed=42,
)


def demo(out: str = "outputs/demo", epochs: float | None = None) -> dict:
    """Train, merge, and print base and fine-tuned answers side by side; returns the figures."""
    import ftkit
    from ftkit.generation import generate

    t0 = time.time()
    before = {p: generate("tiny", p, max_new_tokens=40) for p in PROMPTS}
    cfg = {**DEMO_CONFIG, "output_dir": out}
    if epochs:
        cfg["num_train_epochs"] = epochs
    run = ftkit.train(cfg)
    merged = ftkit.merge(run.adapter_dir)
    after = {p: generate(str(merged), p, max_new_tokens=40) for p in PROMPTS}
    first, last = run.losses[0][1], run.losses[-1][1]
    print(f"\nloss {first:.3f} -> {last:.3f} over {run.losses[-1][0]} steps; merged model in {merged}\n")
    for p in PROMPTS:
        print(f"prompt      {p}\n  base      {before[p] or '(nothing)'}\n  fine-tuned {after[p]}\n")
    print(f"demo finished in {time.time() - t0:.0f}s. Try: ftkit chat --model {merged}")
    return {"before": before, "after": after, "first_loss": first, "last_loss": last, "merged": merged, "run": run}
