"""Stage grpo: prompts in, answers sampled and scored by reward functions, TRL's GRPOTrainer learning from them.

Prompts come from any dataset shape ftkit reads (a `prompt` column, or conversations whose last answer is left
out) and are rendered by the run's template with the generation prompt, so the model answers as it will be
chatted with; other columns of a record (an `answer` to check against) reach the reward functions by keyword.
Generation stops at the template's end-of-turn. The reward functions are ftkit.rewards' (names or shipped
functions), called in the training process.
"""
from __future__ import annotations

import json
import random

import numpy as np

from ftkit.data import (MAX_LISTED, Prepared, _apply_tags, _keys, _rename_columns, iter_records, resolve_datasets,
                        single_token_ids)
from ftkit.errors import DataError
from ftkit.rows import Stats


def _prompt_messages(rec) -> list[dict]:
    from ftkit.data import FORMATS, detect_format
    from ftkit.preference import _prompt

    fmt = detect_format(rec) if isinstance(rec, dict) and "prompt" not in rec else None
    msgs = FORMATS[fmt].convert(rec) if fmt else _prompt(rec) if isinstance(rec, dict) else None
    if not msgs:
        raise ValueError(f"no prompt (keys: {_keys(rec)}); give prompt, instruction, messages or conversations")
    if msgs[-1]["role"] == "assistant":  # a conversation: its last answer is what the model will write
        msgs = msgs[:-1]
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        raise ValueError("the prompt must end with a user turn")
    return msgs


def _columns(rec: dict) -> dict:
    """The record's other JSON columns, passed to the reward functions by keyword."""
    skip = {"prompt", "instruction", "input", "messages", "conversations", "system", "history", "output"}
    return {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            for k, v in rec.items() if k not in skip}


def read_prompts(names, cfg) -> tuple[list[tuple[list[dict], dict]], list]:
    sources = resolve_datasets(names, cfg.dataset_dir)
    out = []
    for src in sources:
        problems, part = [], []
        for i, rec in enumerate(iter_records(src.path)):
            if isinstance(rec, dict):
                rec = _rename_columns(rec, src.columns) if src.columns else rec
                rec = _apply_tags(rec, src.tags) if src.tags else rec
            try:
                part.append((_prompt_messages(rec), _columns(rec)))
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"record {i}: {e}")
        if problems:
            more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
            raise DataError(problems[:MAX_LISTED] + more,
                            title=f"{src.path}: {len(problems)} records have no prompt to answer")
        out += part[: cfg.max_samples] if cfg.max_samples else part
    return out, sources


def prepare(cfg, tokenizer, template) -> Prepared:
    """The prompts, rendered and held out as `val_size` says, as `datasets.Dataset`s with a `prompt` column of
    text (and the records' other columns); stats count prompts and their tokens."""
    import datasets

    prompts, sources = read_prompts(cfg.datasets, cfg)
    order = list(range(len(prompts)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = int(cfg.val_size) if cfg.val_size >= 1 else round(len(prompts) * cfg.val_size)
    if n_eval >= len(prompts):
        raise DataError(f"val_size: {cfg.val_size} leaves no prompts out of {len(prompts)}")

    def table(picked):
        rows = [{"prompt": template.render(msgs, add_generation_prompt=True).text, "question": msgs[-1]["content"],
                 **extra} for msgs, extra in picked]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})

    train = table([prompts[i] for i in order[n_eval:]])
    evals = table([prompts[i] for i in order[:n_eval]]) if n_eval else datasets.Dataset.from_dict({})
    lengths = np.array([len(ids) for ids in tokenizer(list(train["prompt"]), add_special_tokens=False)["input_ids"]],
                       dtype=np.int32)
    stats = Stats(examples=len(train), tokens=int(lengths.sum()), lengths=lengths, eot_trained=True)
    return Prepared(train, evals, stats, sources)


METRICS = {"reward": "reward_mean", "reward_std": "reward_std", "completions/mean_length": "completion_length",
           "completions/clipped_ratio": "clipped_ratio"}


def metric_names(cfg) -> dict:
    """TRL's logged GRPO metrics -> ftkit's: the mean reward, its spread, the answers' length, each function's mean."""
    from ftkit.rewards import name_of

    return {**METRICS, **{f"rewards/{name_of(f)}/mean": f"reward_{name_of(f)}" for f in cfg.reward_funcs}}


def stage_arguments(cfg) -> dict:
    generation = cfg.generation or {}
    return dict(num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                beta=cfg.beta, loss_type=cfg.loss_type, temperature=generation.get("temperature", 1.0),
                top_p=generation.get("top_p", 1.0), reward_weights=cfg.reward_weights,
                gradient_checkpointing=bool(cfg.gradient_checkpointing))


def make_trainer(model, tokenizer, p, callbacks, mixin):
    """TRL's GRPOTrainer on ftkit's rendered prompts, generating until the template's end-of-turn. Written against
    TRL 1.16: `_tokenize_prompts` is where it tokenizes prompts; ftkit's are rendered text, tokenized without
    adding special tokens again (the template wrote them)."""
    import trl

    from ftkit.preference import starts_as_identity
    from ftkit.rewards import load

    stop = sorted(set(single_token_ids(tokenizer, p.template.stop)) | {tokenizer.eos_token_id} - {None})
    model.generation_config.eos_token_id = stop

    def _tokenize_prompts(self, prompts):
        return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}

    cls = type("FtkitGRPOTrainer", (mixin, trl.GRPOTrainer), {"_tokenize_prompts": _tokenize_prompts})
    trainer = cls(model=model, reward_funcs=[load(f) for f in p.config.reward_funcs], args=p.args,
                  train_dataset=p.data.train, eval_dataset=p.data.eval or None, processing_class=tokenizer,
                  callbacks=callbacks)
    if "ref" in getattr(trainer.model, "peft_config", {}) and starts_as_identity(p.config):
        trainer.model.delete_adapter("ref")
    return trainer
