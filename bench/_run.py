"""One benchmark run in its own process: `python bench/_run.py TOOL CONFIG.json RESULT.json`.

TOOL is ftkit, llamafactory or hf (a hand-written transformers.Trainer + peft loop); each starts as its command
line does. The same patches on transformers.Trainer, applied just before each tool's work, measure every tool
alike: the time of the first training step, and real tokens against token cells in every batch the model sees.
Runs with whichever Python has the tool installed.
"""
from __future__ import annotations

import json
import os
import sys
import time

START = float(os.environ.get("BENCH_START", time.time()))


def patch_trainer(record: dict) -> None:
    import transformers

    step = transformers.Trainer.training_step
    train = transformers.Trainer.train

    def training_step(self, model, inputs, *args, **kwargs):
        if "first_step_s" not in record:
            record["first_step_s"] = time.time() - START
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        record["cells"] = record.get("cells", 0) + ids.numel()
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        if mask is not None and mask.dim() == 2:
            real = int((mask > 0).sum())  # padded batches, and packed ones with segment ids
        else:  # padding-free rows: pad tokens (if any even rows out) are the only ones not real
            real = int((ids != pad).sum()) if pad is not None else ids.numel()
        record["real_tokens"] = record.get("real_tokens", 0) + real
        return step(self, model, inputs, *args, **kwargs)

    def train_(self, *args, **kwargs):
        t = time.time()
        out = train(self, *args, **kwargs)
        record["train_s"] = time.time() - t
        record["train_loss"] = out.training_loss
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():  # a GPU run (bench/gpu/compare_gpu.py)
            record["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            record["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        return out

    transformers.Trainer.training_step = training_step
    transformers.Trainer.train = train_


def run_ftkit(cfg: dict, record: dict) -> str:
    import ftkit
    from ftkit.config import RunConfig
    from ftkit.process import start_own_process

    start_own_process(RunConfig.from_dict(cfg))  # what `ftkit train` does first (cli.cmd_train)
    patch_trainer(record)
    return str(ftkit.train(cfg, console=False).adapter_dir)


def run_llamafactory(cfg: dict, record: dict) -> str:
    from llamafactory.train.tuner import run_exp

    patch_trainer(record)
    run_exp(cfg)
    return cfg["output_dir"]


def run_hf(cfg: dict, record: dict) -> str:
    """What a user writes by hand: chat template, prompt masking, padding collator, Trainer, peft."""
    import torch

    patch_trainer(record)
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(cfg["model"])
    records = json.load(open(cfg["data"], encoding="utf-8"))
    def encode(msgs, **kw):
        return tok(tok.apply_chat_template(msgs, tokenize=False, **kw), add_special_tokens=False)["input_ids"]

    examples = []
    for r in records:
        msgs = r["conversation"]
        ids = encode(msgs)
        labels = [-100] * len(ids)
        for k, m in enumerate(msgs):  # mark each answer: the tokens between its prefix and itself
            if m["role"] == "assistant":
                start, end = len(encode(msgs[:k], add_generation_prompt=True)), len(encode(msgs[:k + 1]))
                labels[start:end] = ids[start:end]
        examples.append({"input_ids": ids[:cfg["cutoff_len"]], "labels": labels[:cfg["cutoff_len"]]})
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg["lora_rank"], lora_alpha=2 * cfg["lora_rank"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=cfg["output_dir"], per_device_train_batch_size=cfg["batch"],
                             learning_rate=cfg["learning_rate"], num_train_epochs=1, lr_scheduler_type="cosine",
                             logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True, seed=cfg["seed"])
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()
    model.save_pretrained(cfg["output_dir"])
    return cfg["output_dir"]


def main() -> None:
    tool, config_path, result_path = sys.argv[1:4]
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    record: dict = {"tool": tool}
    cfg = json.load(open(config_path, encoding="utf-8"))
    record["adapter_dir"] = {"ftkit": run_ftkit, "llamafactory": run_llamafactory, "hf": run_hf}[tool](cfg, record)
    with open(result_path, "w") as f:
        json.dump(record, f)
    if tool == "ftkit":  # end the way `ftkit train` ends (ftkit.process.exit_now); the others end as their CLIs do
        from ftkit.process import exit_now

        exit_now(0)


if __name__ == "__main__":
    main()
