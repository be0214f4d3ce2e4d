"""The plan: everything about a run that needs no weights.

Check the config, load the tokenizer and template, tokenize the data, refuse runs
that cannot learn to stop or cannot fit, size the model on the meta device, and
build the TrainingArguments. `--dry-run` and `ftkit.plan` stop here; `ftkit.train`
starts from the plan.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftkit.config import LOW_RANK_NAMES, PREFERENCE_STAGES, RUN_CONFIG, TRL_STAGES, RunConfig
from ftkit.errors import ConfigError, DataError
from ftkit.model import quiet


UNITS = {"pt": "texts", "dpo": "pairs", "rm": "pairs", "kto": "labelled answers", "grpo": "prompts"}  # what stats.examples counts
STAGE_NAMES = {"pt": "pre-training", "rm": "reward model", "kto": "KTO"}  # (dpo and grpo: _method_text)


@dataclass
class Plan:
    """Everything known about a run before its weights load: what `--dry-run` shows and `train` starts from."""

    config: RunConfig
    model_path: str
    tokenizer: Any
    template: Any
    data: Any            # data.Prepared
    counts: dict         # parameters: total, trainable, quantizable
    max_steps: int
    memory: Any          # memory.Estimate
    memory_available: int
    args: Any            # transformers.TrainingArguments (None for a plan only, where building them would set up CUDA)
    memory_note: str = ""
    device: str = ""     # where the run is sized for: "cpu", "cuda", or a GPU named with --device

    def summary(self, packed: bool | None = None) -> dict:
        """The pre-flight figures (the `begin` event's content); `packed` is known once the model is loaded."""
        from ftkit.model import device

        cfg, stats = self.config, self.data.stats
        lengths = np.sort(stats.lengths)
        return dict(
            examples=stats.examples, unit=UNITS.get(cfg.stage, "examples"), eval_examples=len(self.data.eval),
            tokens=stats.tokens,
            length_median=int(lengths[len(lengths) // 2]), length_max=int(lengths[-1]),
            trained_tokens=stats.trained_tokens, sampled=stats.sampled,
            eot_trained=stats.eot_trained, truncated=_truncation_text(cfg, stats),
            trainable_params=self.counts["trainable"], total_params=self.counts["total"], max_steps=self.max_steps,
            batch_tokens=_batch_text(cfg, packed), packed=packed, device=self.device or device(),
            model=cfg.model_name_or_path,
            finetuning=_method_text(cfg), output_dir=str(cfg.run_dir), memory=self.memory.text() + self.memory_note,
            memory_mb=self.memory.total / 2**20, memory_available_mb=self.memory_available / 2**20,
            accepted=", ".join(cfg.accepted) or None, placeholders=_placeholder_text(self.data.sources),
            config=cfg.to_dict())


@quiet()
def plan(config, device: str | None = None, training: bool = False) -> Plan:
    """Check, tokenize and size a run without loading weights; refuses runs that cannot learn or cannot fit.
    `device` (t4, l4, a10g, a100-40g, a100-80g, h100, cpu) sizes it for that device instead of this machine: its
    memory, its precision; a run that does not fit is refused with the levers that would make it fit. `training`:
    this process trains the run next (its TrainingArguments, which set up the device, are built here)."""
    cfg = load_config(config)
    from ftkit import data, memory, model as M, templates

    gpu = target_gpu(device)
    check_run(cfg, device)
    cfg = with_precision(cfg, gpu)

    model_path = M.resolve(cfg.model_name_or_path)
    tokenizer = M.load_tokenizer(model_path, cfg.tokenizer_name_or_path, cfg.trust_remote_code, cfg.added_tokens)
    template = templates.get_template(cfg.template, tokenizer, M.model_type(model_path), cfg.enable_thinking)
    data_template = templates.TextTemplate.for_tokenizer(tokenizer) if cfg.stage == "pt" else template
    if cfg.stage in PREFERENCE_STAGES:
        from ftkit import preference

        prepared = preference.prepare(cfg, tokenizer, template)
    elif cfg.stage == "grpo":
        from ftkit import grpo

        prepared = grpo.prepare(cfg, tokenizer, template)
    elif cfg.streaming:
        from ftkit import streaming

        prepared = streaming.prepare(cfg, tokenizer, data_template)
    else:
        prepared = data.prepare(cfg, tokenizer, data_template)
    stats = prepared.stats
    if not stats.eot_trained and not cfg.train_on_prompt and cfg.stage != "pt":
        raise DataError(f"template {cfg.template}: its end-of-turn marker ({' / '.join(template.stop)}) is never "
                        "among the trained tokens, so the model would never learn to stop; check the template "
                        "and cutoff_len")
    skeleton = M.skeleton(cfg, model_path, tokenizer)
    if cfg.extra.get("optim_target_modules") == "all" and cfg.low_rank_optimizer:  # GaLore/APOLLO: `all` as OFT's
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "optim_target_modules": M.linear_targets(skeleton)})
    sizer = Sizer(cfg, model_path, tokenizer, skeleton, stats, gpu)
    estimate = sizer(cfg)
    budget = gpu.memory if gpu else memory.available()
    where = f"the {gpu.name} has" if gpu else "of RAM available"
    note = ""
    if cfg.gradient_checkpointing is None and estimate.total > budget:  # checkpointing where it pays
        checkpointed = dataclasses.replace(cfg, gradient_checkpointing=True)
        lower = sizer(checkpointed)
        if lower.total <= budget:
            note = f"; gradient checkpointing on to fit (without it ~{estimate.total / 2**20:,.0f} MiB)"
            cfg, estimate = checkpointed, lower
    if estimate.total > budget and not cfg.ignore_memory_estimate:
        raise ConfigError(
            f"memory: this run needs {estimate.text()}, more than the {budget / 2**30:.1f} GiB {where}. "
            "What would make it fit, with the estimated peak:\n" + "\n".join(f"    {line}" for line in
                                                                     sizer.levers(cfg, budget))
            + "\n  (or ignore_memory_estimate: true tries anyway)")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.max_steps > 0:  # a stream (streaming: true) has no length: it always names max_steps
        max_steps = cfg.max_steps
    else:
        per_epoch = math.ceil(len(prepared.train) / (cfg.per_device_train_batch_size * world))
        max_steps = math.ceil(math.ceil(per_epoch / cfg.gradient_accumulation_steps) * cfg.num_train_epochs)
    args = None
    if training or (device is None and not cuda_untouched()):
        args = training_arguments(cfg, max_steps, evaluate=bool(prepared.eval))
    else:  # a plan only, in a process that leaves CUDA alone (a notebook's kernel) or sized for another device:
        # the keys checked as on a CPU, since TrainingArguments sets up its device (which would initialise CUDA)
        cpu = dataclasses.replace(cfg, fp16=False, bf16=False, pure_bf16=False)
        training_arguments(cpu, max_steps, evaluate=bool(prepared.eval), cpu=True)
    return Plan(cfg, model_path, tokenizer, template, prepared, sizer.counts(cfg), max_steps, estimate, budget,
                args, note, _device_text(cfg, gpu) if device else "")


def target_gpu(device: str | None):
    """The GPU a run is sized for: the one named (`--device t4`; None for cpu), else this machine's."""
    from ftkit import model as M

    if device is None:
        return M.gpu()
    if device.lower() not in M.DEVICES:
        raise ConfigError(f"--device: {device!r} is not one of {', '.join(M.DEVICES)}")
    return M.DEVICES[device.lower()]


def _device_text(cfg: RunConfig, gpu) -> str:
    if gpu is None:
        return "a CPU (planned; fp32)"
    attention = "fa2" if cfg.flash_attn == "fa2" else "eager" if cfg.flash_attn == "eager" else "sdpa"
    precision = "bf16" if cfg.bf16 or cfg.pure_bf16 else "fp16 with loss scaling" if cfg.fp16 else "fp32"
    return f"a {gpu.name} (planned; {precision}, {attention} attention)"


class Sizer:
    """A run's peak memory for variants of its config (the levers): its data's lengths, the model's shape."""

    def __init__(self, cfg: RunConfig, model_path: str, tokenizer, skeleton, stats, gpu=None):
        from ftkit import memory

        self.model_path, self.tokenizer, self.stats, self.gpu = model_path, tokenizer, stats, gpu
        self.model_config = skeleton.config
        self._counts = {self._shape(cfg): memory.model_counts(skeleton)}  # per shape: each is counted once

    @staticmethod
    def _shape(c: RunConfig):  # what decides which parameters train
        return c.finetuning_type, c.lora_rank, tuple(c.lora_targets), c.freeze_trainable_layers, c.oft_rank

    def counts(self, c: RunConfig) -> dict:
        from ftkit import memory, model as M

        key = self._shape(c)
        if key not in self._counts:
            self._counts[key] = memory.model_counts(M.skeleton(c, self.model_path, self.tokenizer))
        return self._counts[key]

    def __call__(self, c: RunConfig):
        from ftkit import memory

        lengths = self.stats.lengths
        seq_len = min(c.cutoff_len, int(lengths.max()))
        if c.stage == "grpo":  # a prompt and its sampled answer
            seq_len = int(lengths.max()) + c.max_completion_length
        rows = 2 if c.stage in ("dpo", "rm") else 1  # a pair is two sequences in the batch
        return memory.estimate(c, self.model_config, self.counts(c), c.per_device_train_batch_size * rows, seq_len)

    def levers(self, cfg: RunConfig, budget: int) -> list[str]:
        """What would make the run fit, each with its estimate, and the first set of them, in this order, that
        fits: checkpointing, a batch of 1 (more accumulation keeps the batch), LoRA, QLoRA, a shorter cutoff."""
        steps = []
        if not cfg.gradient_checkpointing:
            steps.append(("gradient_checkpointing: true", dict(gradient_checkpointing=True)))
        if cfg.per_device_train_batch_size > 1:
            n, k = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
            steps.append((f"per_device_train_batch_size: 1, gradient_accumulation_steps: {n * k} (the same batch)",
                          dict(per_device_train_batch_size=1, gradient_accumulation_steps=n * k)))
        if not cfg.trains_adapter:
            steps.append(("finetuning_type: lora", dict(finetuning_type="lora")))
        if not cfg.quantization_bit:
            steps.append(("quantization_bit: 4 (QLoRA)", dict(quantization_bit=4, finetuning_type=cfg.finetuning_type
                                                               if cfg.trains_adapter else "lora")))
        if self.gpu and not cfg.extra.get("use_liger_kernel"):
            steps.append(("use_liger_kernel: true (pip install liger-kernel; the loss without whole logits)",
                          dict(extra={**cfg.extra, "use_liger_kernel": True})))
        longest = min(cfg.cutoff_len, int(self.stats.lengths.max()))
        if longest > 256:
            steps.append((f"cutoff_len: {longest // 2}", dict(cutoff_len=longest // 2)))
        if not steps:
            return ["nothing in the config is left to lower: a GPU with more memory is needed"]
        gib = lambda e: f"~{e.total / 2**30:.1f} GiB"  # noqa: E731
        lines = []
        for text, change in steps:
            e = self(dataclasses.replace(cfg, **change))
            lines.append(f"{text}: {gib(e)}" + (", which fits" if e.total <= budget else ""))
        if any(line.endswith("fits") for line in lines):
            return lines
        together = {}
        for i, (_, change) in enumerate(steps):
            together = {**together, **change, "extra": {**together.get("extra", cfg.extra), **change.get("extra", {})}}
            e = self(dataclasses.replace(cfg, **together))
            if e.total <= budget:
                names = " + ".join(text.split(" (")[0] for text, _ in steps[:i + 1])
                return lines + [f"together, {names}: {gib(e)}, which fits"]
        return lines + [f"all of them together: {gib(e)}, which still does not fit: a GPU with more memory"]


def with_precision(cfg: RunConfig, gpu) -> RunConfig:
    """The config with its precision decided for the device: `precision: auto` trains in bf16 on a GPU that has
    it, in fp16 (with loss scaling) on one that does not (T4, V100), in fp32 on a CPU; an explicit choice (the
    precision key, or LLaMA-Factory's bf16/fp16) stands as it is."""
    if cfg.precision == "auto" and not (cfg.bf16 or cfg.fp16 or cfg.pure_bf16):
        return dataclasses.replace(cfg, bf16=bool(gpu and gpu.bf16), fp16=bool(gpu and not gpu.bf16))
    return dataclasses.replace(cfg, bf16=cfg.bf16 or cfg.precision == "bf16", fp16=cfg.fp16 or cfg.precision == "fp16")


def load_config(source, overrides=None) -> RunConfig:
    """A RunConfig from a config, dict or YAML path (plus overrides), with every problem in one error: the keys'
    and, for the keys that were fine, the files' (model folder, datasets, template, DeepSpeed file, output)."""
    if isinstance(source, RunConfig) and not overrides:
        return _with_shipped_rewards(source)
    try:
        return _with_shipped_rewards(RunConfig.from_any(source, overrides))
    except ConfigError as e:
        partial = getattr(e, "partial", None)
        if partial is None:
            raise
        try:
            check_run(partial)
        except ConfigError as files:
            problems = list(dict.fromkeys(e.problems + files.problems))
            raise ConfigError(problems, title="invalid run config") from None
        raise


def _with_shipped_rewards(cfg: RunConfig) -> RunConfig:
    """GRPO's reward functions given as objects, as their source (ftkit.rewards): the config stays plain data, saved
    with the run and sent to a training process as it is."""
    if not any(callable(f) for f in cfg.reward_funcs):
        return cfg
    from ftkit.rewards import shipped

    return dataclasses.replace(cfg, reward_funcs=shipped(cfg.reward_funcs))


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_run(cfg: RunConfig, device: str | None = None) -> None:
    """What can be checked without loading weights, reported at once: model folder, datasets, template name,
    device (this machine's, or the one named: `--device t4`), output folder."""
    import importlib.util

    from ftkit import model as M
    from ftkit.data import resolve_datasets
    from ftkit.errors import FtkitError
    from ftkit.templates import check_template_name

    problems = []
    for check in [lambda: M.resolve(cfg.model_name_or_path),
                  lambda: cfg.tokenizer_name_or_path and M.resolve(cfg.tokenizer_name_or_path),
                  *[lambda name=name: problems.extend(_stage_data_problems(cfg, resolve_datasets([name],
                                                                                                 cfg.dataset_dir)))
                    for name in cfg.datasets + cfg.eval_datasets]]:
        try:
            check()
        except FtkitError as e:
            problems += e.problems
    problems += filter(None, [check_template_name(cfg.template)])
    if cfg.adapter_name_or_path and "," not in cfg.adapter_name_or_path:
        from ftkit.folders import adapter_folder

        try:
            adapter_folder(cfg.adapter_name_or_path)
        except FtkitError as e:
            problems += [f"adapter_name_or_path: {p}" for p in e.problems]
    problems += _deepspeed_problems(cfg.extra.get("deepspeed"))
    if cfg.extra.get("use_liger_kernel") and device is None and \
            not (torch_cuda() and importlib.util.find_spec("liger_kernel")):
        problems.append("use_liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs (pip install "
                        "liger-kernel there); without them the run computes the same, only slower: remove it "
                        "on this machine")
    if cfg.stage in TRL_STAGES and importlib.util.find_spec("trl") is None:
        problems.append(f"stage: {cfg.stage} trains with TRL's trainers, not installed here: pip install "
                        "'ftkit[trl]' (or pip install trl)")
    low_rank = cfg.low_rank_optimizer
    if low_rank and importlib.util.find_spec(f"{low_rank}_torch") is None:
        problems.append(f"use_{low_rank}: needs the {low_rank}-torch package, not installed here: pip install "
                        f"{low_rank}-torch (or pip install ftkit[optimizers])")
    code = None if cfg.trust_remote_code else M.shipped_code(cfg.model_name_or_path)
    if code:
        problems.append(f"model_name_or_path: {cfg.model_name_or_path} ships its own code ({code}), "
                        + M.REMOTE_CODE_ADVICE)
    asked = cfg.fp16 or cfg.bf16 or cfg.pure_bf16 or cfg.precision in ("fp16", "bf16") or cfg.flash_attn == "fa2"
    # (the GPU is asked for only then: a config checked in a notebook's kernel leaves torch unimported)
    gpu = target_gpu(device) if asked or device else None
    if (cfg.fp16 or cfg.precision == "fp16") and gpu is None:
        problems.append("fp16: needs a CUDA GPU and none is present; remove it to train in fp32 on this CPU")
    if (cfg.bf16 or cfg.pure_bf16 or cfg.precision == "bf16") and gpu is not None and not gpu.bf16:
        problems.append(f"bf16: the {gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}) has no "
                        "bf16 (it needs 8.0, Ampere or newer); set fp16: true instead, or leave precision to auto, "
                        "which trains in fp16 with loss scaling on this GPU")
    if cfg.flash_attn == "fa2" and gpu is not None and not gpu.fa2:
        problems.append(f"flash_attn: fa2 (FlashAttention-2) needs compute capability 8.0 (Ampere or newer); the "
                        f"{gpu.name} has {gpu.capability[0]}.{gpu.capability[1]}: set flash_attn: sdpa (what auto "
                        "picks there)")
    from ftkit.hub import push_problems

    problems += push_problems(cfg.hub_model_id) if cfg.push_to_hub else []
    out = cfg.run_dir
    if cfg.resume_from_checkpoint is True and not list(out.glob("checkpoint-*")):
        problems.append(f"resume_from_checkpoint: {out} has no checkpoint-N folder to resume from; "
                        "set save_steps so runs leave checkpoints, or name a checkpoint folder")
    elif isinstance(cfg.resume_from_checkpoint, str) and not Path(cfg.resume_from_checkpoint).is_dir():
        problems.append(f"resume_from_checkpoint: {cfg.resume_from_checkpoint} is not a folder")
    elif (out / RUN_CONFIG).exists() and not (cfg.overwrite_output_dir or cfg.resume_from_checkpoint):
        problems.append(f"output_dir: {out} already holds a run; choose another output_dir, set "
                        "overwrite_output_dir: true to replace it, or resume_from_checkpoint: true to continue it")
    if problems:
        raise ConfigError(problems, title="cannot start this run")


STAGE_DATA = {"dpo": ("pairs",), "rm": ("pairs",), "kto": ("labelled", "pairs")}  # kto splits pairs (TRL's way)
DATA_KINDS = {"pairs": "preference pairs (ranking: chosen/rejected), for stage dpo or rm",
              "labelled": "answers labelled good or bad (kto_tag), for stage kto",
              "conversations": "conversations, for stage sft (or pt)"}


def _stage_data_problems(cfg: RunConfig, sources) -> list[str]:
    """A dataset_info.json entry's kind of data against the run's stage (files without an entry are checked as
    they are read)."""
    wanted = STAGE_DATA.get(cfg.stage, ("conversations",))
    return [f"dataset {src.name}: {DATA_KINDS[src.kind]}; this run has stage: {cfg.stage}" for src in sources
            if src.kind and src.kind not in wanted]


def _deepspeed_problems(ds) -> list[str]:
    """`deepspeed: path/to/ds.json` (or an inline dict) is handed to the Trainer; check what can be checked here."""
    import importlib.util
    import json

    if ds is None:
        return []
    problems = []
    if isinstance(ds, str):
        path = Path(ds)
        if not path.is_file():
            return [f"deepspeed: {ds} is not a file; name a DeepSpeed JSON config (examples/deepspeed/ has ZeRO-2/3)"]
        try:
            ds = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return [f"deepspeed: {path}: line {e.lineno}: invalid JSON ({e.msg})"]
    if not isinstance(ds, dict):
        return [f"deepspeed: expected a JSON file or a mapping, got {type(ds).__name__}"]
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed: zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("deepspeed: the deepspeed package is not installed; pip install deepspeed on a CUDA "
                        "machine and start with ftkit train CONFIG --nproc N (or accelerate launch)")
    return problems


def cuda_untouched() -> bool:
    """Whether this process could use CUDA and has not initialised it (a notebook's kernel on a GPU machine):
    then planning must leave it so."""
    import torch

    return torch.cuda.is_available() and not torch.cuda.is_initialized()


def training_arguments(cfg: RunConfig, max_steps: int, evaluate: bool, cpu: bool = False):
    """transformers.TrainingArguments for the run (TRL's subclass for a preference stage, with its settings);
    passthrough keys may refine ftkit's choices. `cpu`: as on a CPU (to check the keys without touching CUDA)."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available() and not cpu

    kwargs = dict(
        output_dir=str(cfg.run_dir),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=max_steps,
        max_grad_norm=cfg.max_grad_norm, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
        fp16=cfg.fp16, bf16=cfg.bf16 and not cfg.pure_bf16,  # pure bf16: the weights are bf16, no autocast
        activation_checkpointing=bool(cfg.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps, logging_first_step=True, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.eval_steps or max(1, max_steps // 5),
        report_to=cfg.report_to, seed=cfg.seed, include_num_input_tokens_seen="non_padding",
        disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=cuda, use_cpu=not cuda,
    )
    if cfg.streaming:  # each process reads the stream and takes its batches: accelerate's dispatching (the first
        # process reads, the others are sent slices) would cut the packed batch's per-position fields to its rows
        kwargs["accelerator_config"] = {"dispatch_batches": False}
    cls = TrainingArguments
    if cfg.stage in PREFERENCE_STAGES:
        from ftkit.preference import args_class, stage_arguments

        cls, kwargs = args_class(cfg), {**kwargs, **stage_arguments(cfg)}
    elif cfg.stage == "grpo":
        from trl import GRPOConfig

        from ftkit.grpo import stage_arguments

        cls, kwargs = GRPOConfig, {**kwargs, **stage_arguments(cfg)}
    try:
        return cls(**{**kwargs, **cfg.extra})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"TrainingArguments refused the config: {str(e).splitlines()[0]}") from None


def _placeholder_text(sources) -> str | None:
    """Data with {{names}} left to fill (LLaMA-Factory's identity.json): say which, where, and how to fill them."""
    holes = {s.path.name: s.placeholders for s in sources if s.placeholders}
    if not holes:
        return None
    names = sorted({n for ns in holes.values() for n in ns})
    return ("; ".join(f"{file} holds unfilled {', '.join('{{' + n + '}}' for n in ns)}" for file, ns in holes.items())
            + f": fill them with replace: {{{', '.join(f'{n}: ...' for n in names)}}} (ftkit train ... --replace "
            + " ".join(f"{n}=..." for n in names) + "), or they are trained as written")


def _truncation_text(cfg: RunConfig, stats) -> str | None:
    parts = []
    if stats.truncated_turns:
        parts.append(f"{stats.truncated_turns} examples longer than cutoff_len={cfg.cutoff_len} kept only their "
                     "whole leading turns")
    if stats.truncated_answer:
        parts.append(f"{stats.truncated_answer} had an answer cut mid-way (it loses its end-of-turn)")
    if stats.dropped:
        parts.append(f"{stats.dropped} dropped: no answer token fits in cutoff_len")
    return "; ".join(parts) or None


def _batch_text(cfg: RunConfig, packed: bool | None = None) -> str:
    world = int(os.environ.get("WORLD_SIZE", 1))
    per = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    how = {True: ", packed without padding", False: ", padded", None: ""}[packed]
    return f"{per} examples ({cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps} accumulation" + (
        f" x {world} processes" if world > 1 else "") + f"{how})"


def _method_text(cfg: RunConfig) -> str:
    n, pro = cfg.freeze_trainable_layers, " of the expanded blocks (LLaMA Pro)" if cfg.use_llama_pro else ""
    if cfg.finetuning_type in ("lora", "oft"):
        name = {"lora": "LoRA", "oft": "OFT"}[cfg.finetuning_type]
        q = f"Q{name} {cfg.quantization_bit}-bit " if cfg.quantization_bit else f"{name} "
        text = q + (f"r={cfg.lora_rank} on {','.join(cfg.lora_targets)}" if cfg.finetuning_type == "lora" else
                    (f"{cfg.oft_rank} blocks" if cfg.oft_rank else f"blocks of {cfg.oft_block_size}") +
                    f" on {cfg.oft_target if isinstance(cfg.oft_target, str) else ','.join(cfg.oft_target)}")
        text += f" ({n}{pro})" if cfg.use_llama_pro else ""
        text += f", LoRA+ (B learns {cfg.loraplus_lr_ratio:g}x faster)" if cfg.loraplus_lr_ratio else ""
    elif cfg.finetuning_type == "freeze":
        text = f"freeze ({n}{pro} train)" if cfg.use_llama_pro else \
            f"freeze ({'last' if n > 0 else 'first'} {abs(n)} layers train)"
    else:
        text = "full fine-tuning"
    if cfg.stage == "dpo":
        ftx = f" + {cfg.pref_ftx:g} x SFT" if cfg.pref_ftx and cfg.pref_loss != "orpo" else ""
        name = {"orpo": "ORPO", "simpo": f"SimPO (gamma {cfg.simpo_gamma:g}"}.get(cfg.pref_loss, f"DPO ({cfg.pref_loss}")
        text = (f"{name}{ftx}, beta {cfg.pref_beta:g}), " if cfg.pref_loss != "orpo" else
                f"ORPO (lambda {cfg.pref_beta:g}), ") + text
    elif cfg.stage == "grpo":
        from ftkit.rewards import name_of

        text = (f"GRPO ({cfg.num_generations} answers a prompt, rewards "
                f"{', '.join(name_of(f) for f in cfg.reward_funcs)}), " + text)
    elif cfg.stage != "sft":
        text = f"{STAGE_NAMES[cfg.stage]}, " + text
    if cfg.low_rank_optimizer:
        text += f", {LOW_RANK_NAMES[cfg.low_rank_optimizer]} ({cfg.extra['optim']}, {cfg.extra.get('optim_args')})"
    return text + (", Muon + AdamW" if cfg.use_muon else "")
