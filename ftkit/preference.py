"""Preference stages: DPO and reward models learn from pairs of answers, KTO from answers labelled good or bad.

Records in LLaMA-Factory's shapes (sharegpt or alpaca with `chosen`/`rejected` and `ranking: true`; KTO's
`kto_tag`), TRL's (`prompt`/`chosen`/`rejected`, with or without the prompt; `prompt`/`completion`/`label`) and
OpenAI messages become (prompt messages, answer) conversations, tokenized by the same encoder and template as
supervised fine-tuning (only the final answer trained, so the first trained token is where the answer starts).
TRL's trainers (DPOTrainer, KTOTrainer, RewardTrainer) train on those token ids: they compute the losses, ftkit
keeps its data, templates, model loading, events, atomic checkpoints and resume. With LoRA the reference model is
the base with the adapter off: no second copy of the weights.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ftkit.data import (MAX_LISTED, SHAREGPT_ROLES, Prepared, Source, _apply_tags, _from_value, _keys,
                        _rename_columns, _role_content, _with_system, check_messages, encode_rows, from_alpaca,
                        iter_records, preprocessing_workers, resolve_datasets)
from ftkit.errors import DataError
from ftkit.rows import CUT_ANSWER, CUT_TURNS, DROPPED

# TRL's logged metrics -> the names ftkit's events and panel use, per stage
METRICS = {
    "dpo": {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
            "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward",
            "log_odds_ratio": "log_odds_ratio", "nll_loss": "nll_loss"},  # (the last two: ORPO's)
    "kto": {"kl": "kl", "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward",
            "rewards/margins": "reward_margin"},
    "rm": {"accuracy": "reward_accuracy", "margin": "reward_margin"},
}


# ---- records -> (prompt, answers) ----------------------------------------------------------------------------

def _answer(value, where: str) -> dict:
    """One answer: text, a sharegpt turn, an OpenAI message, or a list holding one assistant message."""
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict) and "from" in value:
        msg = _from_value([value], where, SHAREGPT_ROLES)[0]
    elif isinstance(value, dict) and "role" in value:
        msg = _role_content([value], where)[0]
    else:
        raise ValueError(f"{where}: expected the answer as text or one assistant message, got "
                         f"{type(value).__name__}{f' of {len(value)} messages' if isinstance(value, list) else ''}")
    if msg["role"] != "assistant":
        raise ValueError(f"{where}: the answer is a {msg['role']} turn, not the assistant's")
    return msg


def _prompt(rec: dict) -> list[dict] | None:
    """The conversation before the answer(s), from whichever shape the record has (None: the record has none)."""
    if isinstance(rec.get("conversations"), list):  # LLaMA-Factory's sharegpt (tags already applied)
        return _with_system(rec, _from_value(rec["conversations"], "conversations", SHAREGPT_ROLES))
    if isinstance(rec.get("messages"), list):
        return _with_system(rec, _role_content(rec["messages"], "messages"))
    if "instruction" in rec:  # LLaMA-Factory's alpaca
        return from_alpaca({**rec, "output": ""})[:-1]
    prompt = rec.get("prompt")
    if isinstance(prompt, str):
        return _with_system(rec, [{"role": "user", "content": prompt}])
    if isinstance(prompt, list):
        return _with_system(rec, _role_content(prompt, "prompt"))
    return None


def pair_of(rec) -> tuple[list[dict], dict, dict]:
    """(prompt, chosen, rejected) of a preference record; ValueError says what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    missing = [side for side in ("chosen", "rejected") if rec.get(side) in (None, "", [], {})]
    if missing:
        raise ValueError(f"no {' and no '.join(missing)} answer (keys: {_keys(rec)}); a pair needs both")
    chosen, rejected, prompt = rec["chosen"], rec["rejected"], _prompt(rec)
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):  # TRL's implicit prompt
        c, r = _role_content(chosen, "chosen"), _role_content(rejected, "rejected")
        shared = 0
        while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
            shared += 1
        prompt, chosen, rejected = c[:shared], c[shared:], r[shared:]
    if prompt is None:
        raise ValueError(f"no prompt (keys: {_keys(rec)}); give conversations, messages, instruction or prompt")
    pair = (prompt, _answer(chosen, "chosen"), _answer(rejected, "rejected"))
    if pair[1]["content"] == pair[2]["content"]:
        raise ValueError("chosen and rejected are the same answer: nothing to prefer")
    return pair


def labelled_of(rec) -> tuple[list[dict], dict, bool]:
    """(prompt, answer, good?) of a KTO record: LLaMA-Factory's messages + kto_tag, TRL's prompt/completion/label."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    label = rec.get("kto_tag", rec.get("label"))
    if not isinstance(label, bool):
        raise ValueError(f"no true/false label (kto_tag or label; keys: {_keys(rec)})")
    if "completion" in rec:
        prompt = _prompt(rec)
        if prompt is None:
            raise ValueError(f"no prompt (keys: {_keys(rec)})")
        return prompt, _answer(rec["completion"], "completion"), label
    msgs = _prompt(rec)
    if not msgs:
        raise ValueError(f"no messages (keys: {_keys(rec)}); give messages (or conversations) ending with the "
                         "answer, or prompt and completion")
    return msgs[:-1], _answer(msgs[-1], f"message {len(msgs) - 1}"), label


def read_examples(src: Source, kind: str) -> list[tuple]:
    """Every record of a dataset as pairs (kind "pairs") or labelled answers ("labelled"); the file is refused with
    each bad record's index and reason."""
    convert = pair_of if kind == "pairs" else labelled_of
    problems, out, count = [], [], 0
    for i, rec in enumerate(iter_records(src.path)):
        count += 1
        if isinstance(rec, dict):
            rec = _rename_columns(rec, src.columns) if src.columns else rec
            rec = _apply_tags(rec, src.tags) if src.tags else rec
        try:
            if kind == "labelled" and isinstance(rec, dict) and "chosen" in rec:  # a pair: a good and a bad answer
                prompt, chosen, rejected = pair_of(rec)
                examples = [(prompt, chosen, True), (prompt, rejected, False)]
            else:
                examples = [convert(rec)]
            for example in examples:
                for answer in example[1:3] if kind == "pairs" else example[1:2]:
                    reason = check_messages(_conversation(example[0], answer))
                    if reason:
                        raise ValueError(reason)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"record {i}: {e if not isinstance(e, KeyError) else f'missing key {e}'}")
            continue
        out += examples
    if problems:
        what = "preference pairs" if kind == "pairs" else "labelled answers (KTO)"
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        raise DataError(problems[:MAX_LISTED] + more,
                        title=f"{src.path}: {len(problems)} of {count} records cannot be used as {what}")
    return out


def _conversation(prompt: list[dict], answer: dict) -> list[dict]:
    """The prompt and one answer, only that answer trained (earlier answers are context)."""
    return [{**m, "loss_weight": 0} if m["role"] == "assistant" else m for m in prompt] + [answer]


# ---- tokenized -----------------------------------------------------------------------------------------------

def _split(rows, k: int) -> tuple[list[int], list[int]] | None:
    """Row k as (prompt ids, answer ids): the answer starts at the first trained token; None if it was dropped."""
    a, b = int(rows.starts[k]), int(rows.starts[k + 1])
    trained = np.asarray(rows.trained[a:b])
    if rows.cut[k] == DROPPED or not trained.any():
        return None
    ids = np.asarray(rows.ids[a:b]).tolist()
    first = int(trained.argmax())
    return ids[:first], ids[first:]


@dataclass
class Counts:
    examples: int = 0
    truncated: int = 0  # an answer cut by cutoff_len (it loses its end-of-turn)
    dropped: int = 0    # no answer token fits in cutoff_len


def trainer_kind(cfg) -> str:
    """Which TRL trainer a run needs: dpo, orpo, cpo (SimPO), kto or rm."""
    if cfg.stage == "dpo":
        return {"orpo": "orpo", "simpo": "cpo"}.get(cfg.pref_loss, "dpo")
    return cfg.stage


def _paired_row(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    """ORPO's and CPO's layout (TRL's older one): prompt, and each answer whole with its labels."""
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        row[f"{side}_input_ids"] = prompt + answer
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{side}_labels"] = [-100] * len(prompt) + answer
    return row


def tokenize(examples: list[tuple], stage: str, cfg, tokenizer, template) -> tuple[dict, Counts, object]:
    """Columns TRL's trainers take (dpo: prompt_ids/chosen_ids/rejected_ids; orpo and cpo: prompt and answers with
    labels; rm: chosen_ids/rejected_ids, prompt and answer whole; kto: prompt_ids/completion_ids/label), the counts,
    and the chosen (or only) answers' rows."""
    kind = trainer_kind(cfg)
    workers = preprocessing_workers(cfg.preprocessing_num_workers)
    encode = lambda answers: encode_rows([_conversation(e[0], a) for e, a in zip(examples, answers)],  # noqa: E731
                                         tokenizer, template, cfg.cutoff_len, workers=workers)
    first = encode([e[1] for e in examples])
    second = encode([e[2] for e in examples]) if stage in ("dpo", "rm") else None
    cols: dict[str, list] = {}
    counts = Counts()
    for k in range(len(examples)):
        a = _split(first, k)
        b = _split(second, k) if second is not None else a
        if a is None or b is None:
            counts.dropped += 1
            continue
        counts.examples += 1
        cut = first.cut[k] in (CUT_ANSWER, CUT_TURNS) or (second is not None and second.cut[k] in (CUT_ANSWER,
                                                                                                  CUT_TURNS))
        counts.truncated += bool(cut)
        prompt = a[0] if a[0] == b[0] else a[0][:_shared(a[0], b[0])]
        if kind == "dpo":
            row = {"prompt_ids": prompt, "chosen_ids": a[0][len(prompt):] + a[1],
                   "rejected_ids": b[0][len(prompt):] + b[1]}
        elif kind in ("orpo", "cpo"):
            row = _paired_row(prompt, a[0][len(prompt):] + a[1], b[0][len(prompt):] + b[1])
        elif stage == "rm":
            row = {"chosen_ids": a[0] + a[1], "rejected_ids": b[0] + b[1]}
        else:
            row = {"prompt_ids": a[0], "completion_ids": a[1], "label": examples[k][2]}
        for key, value in row.items():
            cols.setdefault(key, []).append(value)
    return cols, counts, first


def _shared(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def prepare(cfg, tokenizer, template) -> Prepared:
    """A preference run's data: every dataset read, tokenized, split into training and held-out examples (pairs
    for dpo and rm, labelled answers for kto), as `datasets.Dataset`s for TRL; stats count pairs, not rows."""
    import datasets

    kind = "labelled" if cfg.stage == "kto" else "pairs"

    def read(names):
        sources = resolve_datasets(names, cfg.dataset_dir)
        examples = []
        for src in sources:
            part = read_examples(src, kind)
            examples += part[: cfg.max_samples] if cfg.max_samples else part
        return examples, sources

    examples, sources = read(cfg.datasets)
    order = list(range(len(examples)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = int(cfg.val_size) if cfg.val_size >= 1 else round(len(examples) * cfg.val_size)
    if n_eval >= len(examples):
        raise DataError(f"val_size: {cfg.val_size} leaves no training examples out of {len(examples)}")
    held = [examples[i] for i in order[:n_eval]]
    if cfg.eval_dataset:
        held, eval_sources = read(cfg.eval_datasets)
        sources += eval_sources
    train_cols, counts, rows = tokenize([examples[i] for i in order[n_eval:]], cfg.stage, cfg, tokenizer, template)
    if not counts.examples:
        raise DataError(f"cutoff_len: {cfg.cutoff_len} tokens leaves no answer token in any of "
                        f"{len(examples) - n_eval} examples (every prompt is longer); raise cutoff_len")
    if cfg.stage == "kto":
        train_cols["KL_completion_ids"] = _mismatched(train_cols["completion_ids"], cfg.per_device_train_batch_size)
        labels = train_cols["label"]
        if all(labels) or not any(labels):
            raise DataError(f"dataset {cfg.dataset}: every answer is labelled {labels[0]}; KTO needs good and bad "
                            "answers (kto_tag true and false)")
    stats = rows.stats()
    stats.examples, stats.truncated_answer, stats.truncated_turns, stats.dropped = \
        counts.examples, counts.truncated, 0, counts.dropped
    evals = datasets.Dataset.from_dict({})
    if held:
        eval_cols, _, _ = tokenize(held, cfg.stage, cfg, tokenizer, template)
        if cfg.stage == "kto" and eval_cols:
            eval_cols["KL_completion_ids"] = _mismatched(eval_cols["completion_ids"], cfg.per_device_train_batch_size)
        evals = datasets.Dataset.from_dict(eval_cols)
    return Prepared(datasets.Dataset.from_dict(train_cols), evals, stats, sources)


def _mismatched(completions: list, batch: int) -> list:
    """KTO's KL term compares each prompt with another example's answer: within each batch-sized group, the
    previous one's (as TRL pairs them)."""
    out = []
    for a in range(0, len(completions), max(batch, 2)):
        group = completions[a:a + max(batch, 2)]
        out += [group[-1]] + group[:-1]
    return out


# ---- trainers ------------------------------------------------------------------------------------------------

def _trl(kind: str) -> tuple:
    """(config class, trainer class) of TRL for a trainer kind; ORPO and CPO live in trl.experimental (TRL 1.16)."""
    import trl

    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    if kind == "cpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOConfig, CPOTrainer
    return {"dpo": (trl.DPOConfig, trl.DPOTrainer), "kto": (trl.KTOConfig, trl.KTOTrainer),
            "rm": (trl.RewardConfig, trl.RewardTrainer)}[kind]


def args_class(cfg):
    """TRL's TrainingArguments subclass for a run."""
    return _trl(trainer_kind(cfg))[0]


def stage_arguments(cfg) -> dict:
    """The stage's TRL settings, from ftkit's (LLaMA-Factory's) keys. Data arrive tokenized and cut to cutoff_len,
    so TRL cuts nothing (max_length None)."""
    common = dict(max_length=None, gradient_checkpointing=bool(cfg.gradient_checkpointing), dataset_num_proc=None)
    kind = trainer_kind(cfg)
    if kind == "orpo":  # ORPO: the chosen answers' NLL plus beta x the odds-ratio loss; no reference
        return {**common, "max_length": cfg.cutoff_len, "beta": cfg.pref_beta}
    if kind == "cpo":  # SimPO: length-normalised rewards with a target margin; no reference; pref_ftx adds NLL
        return {**common, "max_length": cfg.cutoff_len, "loss_type": "simpo", "beta": cfg.pref_beta,
                "simpo_gamma": cfg.simpo_gamma, "cpo_alpha": cfg.pref_ftx}
    if cfg.stage == "dpo":
        losses, weights = [cfg.pref_loss], [1.0]
        if cfg.pref_ftx:
            losses, weights = losses + ["sft"], weights + [cfg.pref_ftx]
        return {**common, "beta": cfg.pref_beta, "loss_type": losses, "loss_weights": weights,
                "label_smoothing": cfg.dpo_label_smoothing}
    if cfg.stage == "kto":
        return {**common, "beta": cfg.pref_beta, "desirable_weight": cfg.kto_chosen_weight,
                "undesirable_weight": cfg.kto_rejected_weight}
    return common


def trainer_class(kind: str, mixin):
    """TRL's trainer for the kind, with ftkit's mixin (optimizers, atomic checkpoints), taking ftkit's tokenized
    data as they are. Written against TRL 1.16: `_prepare_dataset` (DPO, KTO, reward) and `tokenize_row` (ORPO,
    CPO) are where its trainers tokenize; the stage tests fail if they tokenize again."""
    base = _trl(kind)[1]

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset  # tokenized by ftkit (see the module's docstring)

    def tokenize_row(self, feature, model=None):
        return feature

    hook = {"tokenize_row": tokenize_row} if kind in ("orpo", "cpo") else {"_prepare_dataset": _prepare_dataset}
    return type(f"Ftkit{base.__name__}", (mixin, base), hook)


def make_trainer(model, tokenizer, p, callbacks, mixin):
    """The stage's TRL trainer on the prepared data. With an adapter that starts as the identity (a new LoRA or
    OFT), the reference is the model with the adapter off: TRL's copy of the adapter as "ref" is removed."""
    cls = trainer_class(trainer_kind(p.config), mixin)
    trainer = cls(model=model, args=p.args, train_dataset=p.data.train, eval_dataset=p.data.eval or None,
                  processing_class=tokenizer, callbacks=callbacks)
    peft = getattr(trainer.model, "peft_config", {})
    if "ref" in peft and starts_as_identity(p.config):
        trainer.model.delete_adapter("ref")
    return trainer


def starts_as_identity(cfg) -> bool:
    """Whether the adapter adds nothing before training (LoRA's B = 0, OFT's rotations = I): then the model with
    the adapter off is the reference."""
    init = cfg.lora_init
    return not cfg.adapter_name_or_path and (cfg.finetuning_type == "oft" or init in (True, "gaussian"))
