"""One data preparation in its own process: `python bench/_prepare.py TOOL CONFIG.json RESULT.json`.

TOOL ftkit: what `ftkit train --dry-run` does (ftkit.plan: read, render, tokenize, mask, cut, count; no weights).
TOOL llamafactory: what LLaMA-Factory 0.9.5's run_sft does before it loads the model (its arguments, tokenizer,
template, then get_dataset: load, convert, tokenize and mask with `preprocessing_num_workers` processes).
The result holds the seconds from the process's start (BENCH_START, set by the caller) to the prepared data, and
the examples and tokens each counted afterwards; the caller samples the process's memory.
"""
from __future__ import annotations

import json
import os
import sys
import time

START = float(os.environ.get("BENCH_START", time.time()))


def ftkit_prepare(cfg: dict) -> dict:
    import ftkit

    plan = ftkit.plan(cfg)
    prepared_s = time.time() - START
    stats = plan.data.stats
    return {"prepared_s": prepared_s, "examples": stats.examples, "tokens": stats.tokens, "trained_tokens": stats.trained_tokens}


def llamafactory_prepare(cfg: dict) -> dict:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    prepared_s = time.time() - START
    train = module["train_dataset"]
    lengths = [len(ids) for ids in train["input_ids"]]
    trained = sum(sum(label != -100 for label in labels) for labels in train["labels"])
    return {"prepared_s": prepared_s, "examples": len(lengths), "tokens": sum(lengths), "trained_tokens": trained}


def main() -> None:
    tool, config_path, result_path = sys.argv[1:4]
    cfg = json.load(open(config_path, encoding="utf-8"))
    result = {"ftkit": ftkit_prepare, "llamafactory": llamafactory_prepare}[tool](cfg)
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
