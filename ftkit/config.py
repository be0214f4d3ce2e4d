"""RunConfig: the one schema behind `ftkit train`, `ftkit.train()` and `%%finetune`.

Keys are LLaMA-Factory's flat names. The same config is accepted as a flat
YAML, as the seed's grouped YAML (``lora_config: {r, target_modules}``,
``train: {...}``) or as CLI flags / ``key=value`` overrides. Any other
``transformers.TrainingArguments`` field passes through. Everything is
checked here, before any weights load, and all problems are reported at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftkit.errors import ConfigError

RUN_CONFIG = "run.yaml"            # in the output folder: reproduces the run
ADAPTER_CONFIG = "ftkit_run.yaml"  # beside saved weights: lets merge, chat and export find base and template
FINETUNING_TYPES = ("lora", "oft", "full", "freeze")
STAGES = ("pt", "sft", "rm", "dpo", "kto", "grpo")
PREFERENCE_STAGES = ("rm", "dpo", "kto")  # data: pairs (rm, dpo) or answers labelled good or bad (kto)
TRL_STAGES = (*PREFERENCE_STAGES, "grpo")  # trained by TRL's trainers
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")  # DPO's (TRL's DPOTrainer), ORPO's, SimPO's (CPOTrainer)
ADAPTERS = ("lora", "oft")  # methods that train and save a peft adapter beside the frozen base
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FLASH_ATTN = ("auto", "fa2", "sdpa", "eager")
LORA_INITS = ("gaussian", "pissa", "olora", "corda", "eva", "orthogonal")


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    """A fine-tuning run. Every field's help text is shown by `ftkit train --help`."""

    # model
    model_name_or_path: str = _f("tiny", "Local folder or Hugging Face name of a causal LM; `tiny` is the embedded default.")
    tokenizer_name_or_path: str | None = _f(None, "Where the tokenizer lives, if not beside the model (a mismatch garbles output).")
    trust_remote_code: bool = _f(False, "Allow code shipped with the model to run. Off unless you trust its source.")
    allow_pickle: bool = _f(False, "Load weights from pickled .bin/.pt files (unpickling can run code hidden in the "
                                   "file). Off: safetensors only.")
    template: str = _f("auto", "Chat template: `auto` (the tokenizer's own) or a built-in name (see `ftkit models`).")
    enable_thinking: bool | None = _f(None, "Thinking models (Qwen3, ...): false turns thinking off (the empty think "
                                            "block goes into the prompt); passed to templates that read it. "
                                            "Default: the template's own.")
    flash_attn: str = _f("auto", "Attention kernel: auto | fa2 | sdpa | eager. fa2 needs CUDA and flash-attn installed.")
    # data
    dataset: str | None = _f(None, "Data file(s) or name(s) from dataset_info.json, comma-separated.")
    dataset_dir: str = _f("data", "Folder holding dataset files and dataset_info.json.")
    formatting: str = _f("auto", "Record shape: auto | conversation | openai | sharegpt | alpaca | moss | chatglm3 | qwen.")
    val_size: float = _f(0.0, "Held-out share (0-1) or number of examples for evaluation.")
    mix_strategy: str = _f("concat", "How several datasets combine: concat (all of each), interleave_under (drawn "
                                     "in turn until one runs out), interleave_over (until each has been used up, "
                                     "repeating the smaller).")
    interleave_probs: str | list[float] | None = _f(None, "interleave_*: the chance of drawing from each dataset, "
                                                          "e.g. 0.7,0.3 (default: in turn).")
    tokenized_path: str | None = _f(None, "A folder for the tokenized data: a run that finds it empty tokenizes, "
                                          "saves there and stops; later runs train from it (LLaMA-Factory's "
                                          "preprocessing runs).")
    eval_dataset: str | None = _f(None, "Dataset(s) to evaluate on instead of holding out part of `dataset`, "
                                        "comma-separated, like `dataset`.")
    max_samples: int | None = _f(None, "Use at most this many examples from each dataset.")
    preprocessing_num_workers: int | None = _f(None, "Processes that render and tokenize a dataset of more than "
                                                     "4,096 conversations (at most one per CPU core); default: one per "
                                                     "core, up to 8.")
    streaming: bool = _f(False, "Read and tokenize the data as training goes, a chunk at a time, never the whole set "
                                "(for sets larger than memory): needs max_steps; the pre-flight figures come from "
                                "the first examples.")
    buffer_size: int = _f(16384, "streaming: examples held and drawn from at random (a shuffle buffer, seeded).")
    cutoff_len: int = _f(1024, "Maximum tokens per example; longer ones are cut at the last whole answer that fits.")
    packing: bool | None = _f(None, "Padding-free batches: a batch's examples end to end in one row, attention kept "
                                    "within each (same loss, no padding). Default: on where the model supports it.")
    train_on_prompt: bool = _f(False, "Also train on system and user tokens (default: assistant turns only).")
    replace: dict = _f({}, "Fill {{key}} placeholders in the data, e.g. {name: Tiny, author: ftkit} for "
                           "LLaMA-Factory's identity.json (`--replace name=Tiny author=ftkit`).")
    # method
    stage: str = _f("sft", "What training does: sft (supervised fine-tuning on conversations), pt (continued "
                           "pre-training on raw text: every token trained), dpo (preference pairs, TRL's DPO), kto "
                           "(answers labelled good or bad, TRL's KTO), rm (a reward model: a score head trained on "
                           "pairs), grpo (prompts; answers sampled and scored by reward_funcs, TRL's GRPO).")
    pref_beta: float = _f(0.1, "dpo/kto: beta, how strongly the policy is held to the reference model (the base "
                               "before training; with LoRA, the base with the adapter off: no second copy).")
    pref_loss: str = _f("sigmoid", "dpo: the loss, sigmoid (DPO) | hinge (SLiC) | ipo | orpo | simpo (ORPO and "
                                   "SimPO need no reference model; pref_beta is ORPO's lambda).")
    pref_ftx: float = _f(0.0, "dpo: weight of a supervised loss on the chosen answers, added to the DPO or SimPO "
                              "loss (ORPO has its own).")
    simpo_gamma: float = _f(0.5, "dpo with pref_loss simpo: the target reward margin gamma.")
    dpo_label_smoothing: float = _f(0.0, "dpo (sigmoid): the chance a pair's labels are flipped (robust DPO), in "
                                         "[0, 0.5).")
    kto_chosen_weight: float = _f(1.0, "kto: weight of the loss on good answers.")
    kto_rejected_weight: float = _f(1.0, "kto: weight of the loss on bad answers.")
    reward_funcs: list = _f([], "grpo: the reward functions, each 'module:function' or (in a notebook, or from "
                                "Python) a function: f(prompts, completions, **columns) -> one number per "
                                "completion. In %%finetune, [{my_reward}] or [my_reward] takes a cell's `def`.")
    reward_weights: list[float] | None = _f(None, "grpo: weight of each reward function (default: 1 each).")
    num_generations: int = _f(4, "grpo: answers sampled per prompt and compared with each other; "
                                 "per_device_train_batch_size x gradient_accumulation_steps must be a multiple.")
    max_completion_length: int = _f(256, "grpo: the most tokens an answer may have.")
    beta: float = _f(0.0, "grpo: weight of the KL term to the reference (0: none, no reference forward).")
    loss_type: str = _f("dapo", "grpo: TRL's GRPO loss, dapo | grpo | dr_grpo | bnpo ...")
    finetuning_type: str = _f("lora", "lora | oft | full | freeze. oft: orthogonal fine-tuning (peft's OFT), an "
                                      "adapter that rotates each weight's input space.")
    adapter_name_or_path: str | None = _f(None, "A LoRA adapter (its folder or its run's) to go on training: its rank, "
                                                "targets and weights are kept.")
    lora_target: str | list[str] = _f("all", "Modules that get LoRA: `all` (every linear layer but the head) or names like q_proj,v_proj.")
    lora_rank: int = _f(8, "LoRA rank r: size of the low-rank matrices.")
    lora_alpha: int | None = _f(None, "LoRA scaling alpha; default 2 x lora_rank.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input.")
    use_dora: bool = _f(False, "DoRA: LoRA with a learned magnitude per output (weight-decomposed); slower, often better.")
    use_rslora: bool = _f(False, "rsLoRA: scale updates by alpha/sqrt(r) instead of alpha/r (stable at high ranks).")
    init_lora_weights: bool | str = _f(True, "LoRA init: true (B=0), gaussian, pissa, pissa_niter_N, olora, corda.")
    pissa_init: bool = _f(False, "Shorthand for init_lora_weights: pissa_niter_16 (PiSSA from principal components).")
    modules_to_save: str | list[str] | None = _f(None, "Whole modules that train and are saved besides LoRA, e.g. embed_tokens,lm_head.")
    new_special_tokens: str | list[str] | None = _f(None, "Tokens to add to the tokenizer; embeddings grow and train.")
    loraplus_lr_ratio: float | None = _f(None, "LoRA+: the B matrices learn this many times faster than A "
                                               "(lr_B / lr_A; 16 in its paper); peft's LoRA+ optimizer.")
    loraplus_lr_embedding: float = _f(1e-6, "LoRA+: learning rate of LoRA on embedding layers.")
    oft_rank: int = _f(0, "OFT: number of blocks per rotation (set this or oft_block_size, not both).")
    oft_block_size: int = _f(32, "OFT: size of each rotation block (must divide the adapted layers' input size).")
    oft_target: str | list[str] = _f("all", "OFT: modules that get it, like lora_target.")
    module_dropout: float = _f(0.0, "OFT: chance of dropping a whole block's rotation in training.")
    freeze_trainable_layers: int = _f(2, "freeze tuning: how many of the last decoder layers train (negative: the "
                                         "first ones).")
    freeze_trainable_modules: str | list[str] = _f("all", "freeze tuning: which parts of those layers train: all, or "
                                                          "names like mlp,self_attn.")
    freeze_extra_modules: str | list[str] | None = _f(None, "freeze tuning: modules outside the decoder layers that "
                                                            "train too, e.g. embed_tokens,norm.")
    use_llama_pro: bool = _f(False, "LLaMA Pro: a model whose blocks were expanded (`ftkit expand`) trains only its "
                                    "added blocks (freeze_trainable_layers of them, spread evenly); with LoRA, only "
                                    "they get LoRA.")
    use_muon: bool = _f(False, "Muon (torch.optim.Muon) for the hidden weight matrices, AdamW for the rest, AdamW's "
                               "learning rate and weight decay for both (Moonshot's RMS matching).")
    quantization_bit: int | None = _f(None, "Load the base in 4 or 8 bits (QLoRA, bitsandbytes).")
    quantization_type: str = _f("nf4", "4-bit type: nf4 | fp4.")
    double_quantization: bool = _f(True, "4-bit: also quantize the quantization constants (saves ~0.4 bit/param).")
    # training
    per_device_train_batch_size: int = _f(2, "Examples per device per step.")
    gradient_accumulation_steps: int = _f(1, "Steps whose gradients add up before one update.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    num_train_epochs: float = _f(3.0, "Passes over the training data.")
    max_steps: int = _f(-1, "If > 0, stop after this many optimizer updates (overrides num_train_epochs).")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule: linear | cosine | constant | ... (transformers names).")
    warmup_ratio: float = _f(0.0, "Share of steps with linear warmup.")
    precision: str = _f("auto", "Mixed precision: auto (bf16 on GPUs that have it, fp16 with loss scaling on those "
                                "that do not, as a T4 or V100; fp32 on a CPU) | bf16 | fp16 | fp32. The bf16 and fp16 "
                                "keys (LLaMA-Factory's) choose it too.")
    fp16: bool = _f(False, "fp16 mixed precision (CUDA only).")
    bf16: bool = _f(False, "bf16 mixed precision (Ampere or newer GPU).")
    pure_bf16: bool = _f(False, "Train in bf16 throughout: weights, gradients and optimizer state, no fp32 master "
                                "copy (about half the memory of full fine-tuning; updates lose precision).")
    gradient_checkpointing: bool | None = _f(None, "Recompute activations in backward: ~40% less activation memory, "
                                                   "~20% slower. Unset: on only when the run fits in memory with it "
                                                   "and not without.")
    logging_steps: int = _f(10, "Log loss, lr and throughput every N updates.")
    save_steps: int = _f(500, "Save a checkpoint every N updates.")
    save_total_limit: int | None = _f(2, "Checkpoints kept: the newest N, older ones deleted as new ones land "
                                         "(bounds the disk a long run takes, as on Colab's disk or Drive; two keep "
                                         "a whole one if the newest is cut off); null keeps all.")
    eval_steps: int | None = _f(None, "Evaluate every N updates (default: 5 times per run when val_size > 0).")
    report_to: str | list[str] = _f("none", "Extra loggers: none | tensorboard | wandb ...")
    do_predict: bool = _f(False, "Instead of training: answer every conversation of eval_dataset with the model "
                                 "(and adapter_name_or_path) and score the answers (BLEU-4, ROUGE), as "
                                 "LLaMA-Factory's predict runs do.")
    predict_with_generate: bool = _f(True, "do_predict generates the answers (the only kind of predict run here).")
    generation: dict = _f({}, "Generation settings for do_predict: max_new_tokens, temperature, top_p, top_k, "
                              "do_sample, repetition_penalty (LLaMA-Factory's generation keys land here).")
    plot_loss: bool = _f(False, "Write the loss curves as training_loss.png (and training_eval_loss.png) in the run "
                                "folder at the end (needs matplotlib).")
    push_to_hub: bool = _f(False, "At the end, upload the trained adapter (or model) with a model card (the run "
                                  "config, the data, the loss curve) to hub_model_id, logged in the huggingface_hub "
                                  "way (HF_TOKEN, `hf auth login`, Colab's secrets); checked before training starts.")
    hub_model_id: str | None = _f(None, "The Hub repository push_to_hub uploads to (user/name).")
    hub_private_repo: bool = _f(True, "Create the Hub repository private (an existing one keeps its visibility).")
    seed: int = _f(42, "Random seed for data order and initialisation.")
    output_dir: str | None = _f(None, "Run folder; default outputs/<model>-<finetuning_type>.")
    overwrite_output_dir: bool = _f(False, "Reuse an output_dir that holds another run.")
    resume_from_checkpoint: bool | str | None = _f(None, "true (last checkpoint in output_dir) or a checkpoint folder.")
    ignore_memory_estimate: bool = _f(False, "Start even when the memory estimate exceeds what the device has.")
    threads: int | None = _f(None, "CPU threads for torch; default: all cores (set 1 when processes share cores).")
    # watching a run
    preview_prompts: list[str] = _f([], "Prompts answered by the model being trained, before the first step, every "
                                        "preview_steps and at the end (the `sample` event; the notebook panel shows them).")
    preview_steps: int | None = _f(None, "Answer the preview prompts every N updates (default: 4 times per run).")
    preview_max_new_tokens: int = _f(48, "Length limit of each preview answer, in tokens (greedy decoding).")
    # passthrough TrainingArguments fields (optim, weight_decay, ...), filled by from_dict
    extra: dict = _f({}, "Other transformers.TrainingArguments fields, passed through.", internal=True)
    accepted: list = _f([], "LLaMA-Factory keys accepted and not needed (listed in the pre-flight).", internal=True)

    # ---- construction ----------------------------------------------------

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}

    @classmethod
    def from_any(cls, source: "RunConfig | dict | str | Path", overrides: dict | list[str] | None = None) -> "RunConfig":
        """A RunConfig from a config object, a dict or a YAML file, plus overrides."""
        if isinstance(source, RunConfig):
            raw = source.to_dict()
        elif isinstance(source, dict):
            raw = dict(source)
        else:
            raw = read_yaml(Path(source))
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        return cls.from_dict({**flatten(raw), **flatten(overrides or {})})

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        raw, accepted, problems = llama_factory_keys(flatten(raw))
        known, hints, values, extra = cls.fields(), _hints(), {}, dict(raw.pop("extra", None) or {})
        accepted = sorted({*accepted, *(raw.pop("accepted", None) or [])})
        passthrough = None
        if isinstance(raw.get("flash_attn"), bool):  # a bare --flash_attn asks for fa2 (with a fallback)
            raw["flash_attn"] = "fa2" if raw["flash_attn"] else "sdpa"
        for key, value in raw.items():
            if key in known:
                try:
                    values[key] = _coerce(value, hints[key])
                except (TypeError, ValueError):
                    problems.append(f"{key}: expected {_type_name(hints[key])}, got {value!r}")
                continue
            passthrough = passthrough if passthrough is not None else training_argument_names()
            if key in passthrough:
                extra[key] = value
            else:
                problems.append(_unknown(key, list(known) + sorted(passthrough)))
        cfg = cls(**values, extra=extra, accepted=accepted)
        problems += cfg.check()
        if problems:
            error = ConfigError(problems, title="invalid run config")
            error.partial = cfg  # the keys that were fine: lets the file checks run too, so all is said at once
            raise error
        return cfg

    # ---- checks (no weights, no files) -----------------------------------

    def check(self) -> list[str]:
        p = []
        if self.do_predict:
            if not self.eval_dataset:
                p.append("eval_dataset: missing; a predict run (do_predict) answers the conversations of eval_dataset")
            if not self.predict_with_generate:
                p.append("predict_with_generate: false asks for a predict run without generation (loss only), which "
                         "ftkit does not do; remove it")
        elif not self.dataset and not self.tokenized_path:
            p.append("dataset: missing; name a file (data/demo_zh_en.json) or a dataset_info.json entry (demo)")
        p += self._stage_problems()
        if self.finetuning_type not in FINETUNING_TYPES:
            p.append(f"finetuning_type: {self.finetuning_type!r} is not one of {', '.join(FINETUNING_TYPES)}")
        if self.quantization_bit not in (None, 4, 8):
            p.append(f"quantization_bit: {self.quantization_bit} is not supported; use 4 or 8 (or leave it out)")
        elif self.quantization_bit and self.finetuning_type not in ADAPTERS:
            p.append(f"quantization_bit: {self.quantization_bit}-bit weights cannot be trained directly; "
                     f"QLoRA needs finetuning_type: lora (you have {self.finetuning_type})")
        if self.quantization_type not in ("nf4", "fp4"):
            p.append(f"quantization_type: {self.quantization_type!r} is not nf4 or fp4")
        if self.flash_attn not in FLASH_ATTN:
            p.append(f"flash_attn: {self.flash_attn!r} is not one of {', '.join(FLASH_ATTN)}")
        if self.fp16 and (self.bf16 or self.pure_bf16):
            p.append(f"fp16 and {'bf16' if self.bf16 else 'pure_bf16'}: choose one mixed precision")
        if self.precision not in PRECISIONS:
            p.append(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        else:
            asked = [k for k in ("bf16", "fp16", "pure_bf16") if getattr(self, k)]
            if asked and self.precision not in ("auto", asked[0].replace("pure_", "")):
                p.append(f"precision: {self.precision} and {asked[0]}: true ask for different precisions; keep one")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "cutoff_len",
                    "logging_steps", "save_steps", "lora_rank", "preview_steps", "preview_max_new_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                p.append(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("learning_rate", "max_grad_norm"):
            if not getattr(self, key) > 0:
                p.append(f"{key}: must be positive, got {getattr(self, key)}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            p.append(f"num_train_epochs: must be positive when max_steps is not set, got {self.num_train_epochs}")
        if self.max_steps == 0:
            p.append("max_steps: 0 would train nothing; use a positive number or -1 (use num_train_epochs)")
        if not (0 <= self.val_size < 1 or float(self.val_size).is_integer()):
            p.append(f"val_size: {self.val_size} is neither a share in [0, 1) nor a whole number of examples")
        if self.mix_strategy not in MIX_STRATEGIES:
            p.append(f"mix_strategy: {self.mix_strategy!r} is not one of {', '.join(MIX_STRATEGIES)}")
        probs = self.mix_probs
        if probs is not None and (len(probs) != len(self.datasets) or abs(sum(probs) - 1) > 1e-6 or min(probs) < 0):
            p.append(f"interleave_probs: {self.interleave_probs} must give one chance per dataset "
                     f"({len(self.datasets)}), each at least 0, adding up to 1")
        if self.eval_dataset and self.val_size:
            p.append(f"eval_dataset and val_size: evaluate on {self.eval_dataset} or hold out val_size of the "
                     "training data, not both")
        if self.max_samples is not None and self.max_samples < 1:
            p.append(f"max_samples: must be at least 1, got {self.max_samples}")
        if self.streaming:
            p += [m for m in (
                self.max_steps <= 0 and "streaming: a stream has no length to count epochs in; set max_steps",
                self.buffer_size < 1 and f"buffer_size: must be at least 1, got {self.buffer_size}",
                0 < self.val_size < 1 and f"val_size: {self.val_size} is a share, and a stream has no length to "
                "take it of; with streaming give a number of examples (the stream's first ones are held out)",
                self.tokenized_path and "tokenized_path: tokenizing the whole set ahead is what streaming avoids; "
                "use one or the other",
                self.mix_strategy != "concat" and f"mix_strategy: {self.mix_strategy} is not available with "
                "streaming (datasets are read one after another: concat)") if m]
        if self.eval_steps is not None and self.eval_steps < 1:
            p.append(f"eval_steps: must be at least 1, got {self.eval_steps}")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.adapter_name_or_path and self.finetuning_type not in ADAPTERS:
            p.append(f"adapter_name_or_path: an adapter goes on training with finetuning_type: lora or oft (you "
                     f"have {self.finetuning_type})")
        p += self._method_problems()
        if self.adapter_name_or_path and "," in self.adapter_name_or_path:
            p.append(f"adapter_name_or_path: {self.adapter_name_or_path} names several adapters; merge all but the "
                     "last into the base (ftkit merge) and go on training the last")
        init = self.init_lora_weights
        if isinstance(init, str) and init not in LORA_INITS and not re.fullmatch(r"pissa_niter_\d+", init):
            p.append(f"init_lora_weights: {init!r} is not one of true, false, {', '.join(LORA_INITS)}, pissa_niter_N")
        if self.threads is not None and self.threads < 1:
            p.append(f"threads: must be at least 1, got {self.threads}")
        return p

    def _stage_problems(self) -> list[str]:
        p = []
        if self.stage not in STAGES:
            hint = " (PPO: ftkit does not train with PPO; dpo or kto learn from the same preferences)" \
                if self.stage == "ppo" else ""
            p.append(f"stage: {self.stage!r} is not one of {', '.join(STAGES)}{hint}")
        if self.pref_loss not in PREF_LOSSES:
            p.append(f"pref_loss: {self.pref_loss!r} is not one of {', '.join(PREF_LOSSES)}")
        if not 0 <= self.dpo_label_smoothing < 0.5:
            p.append(f"dpo_label_smoothing: must be in [0, 0.5), got {self.dpo_label_smoothing}")
        if self.pref_beta <= 0:
            p.append(f"pref_beta: must be positive, got {self.pref_beta}")
        if self.stage == "grpo":
            rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps
            p += [m for m in (
                not self.reward_funcs and "reward_funcs: stage grpo needs at least one reward function "
                "('module:function', or a function from the notebook)",
                self.num_generations < 2 and f"num_generations: GRPO compares answers to the same prompt; needs "
                f"2 or more, got {self.num_generations}",
                self.num_generations >= 2 and rollouts % self.num_generations and
                f"per_device_train_batch_size x gradient_accumulation_steps ({rollouts}) must be a multiple of "
                f"num_generations ({self.num_generations}): each step scores whole groups of answers",
                self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs) and
                f"reward_weights: {len(self.reward_weights)} weights for {len(self.reward_funcs)} reward functions",
                self.streaming and "streaming: stage grpo reads its prompts whole; remove streaming") if m]
        if self.stage in PREFERENCE_STAGES and self.streaming:
            p.append(f"streaming: stage {self.stage} reads its (pairwise) data whole; remove streaming")
        if self.stage in TRL_STAGES and self.packing:
            p.append(f"packing: stage {self.stage} trains on padded pairs and answers (TRL's collators); remove "
                     "packing")
        if self.stage == "rm" and self.finetuning_type == "oft":
            p.append("finetuning_type: oft is not available for reward models (stage rm); use lora, freeze or full")
        return p

    def _method_problems(self) -> list[str]:
        p, kind, optim = [], self.finetuning_type, self.extra.get("optim")
        if self.freeze_trainable_layers == 0:
            p.append("freeze_trainable_layers: 0 would train nothing; the last N layers train (or the first N, "
                     "given as -N)")
        if self.loraplus_lr_ratio is not None and kind != "lora":
            p.append(f"loraplus_lr_ratio: LoRA+ sets the learning rates of LoRA's matrices; it needs "
                     f"finetuning_type: lora (you have {kind})")
        elif self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio > 0:
            p.append(f"loraplus_lr_ratio: must be positive, got {self.loraplus_lr_ratio}")
        if self.oft_rank < 0 or self.oft_block_size < 0 or (self.oft_rank == 0 and self.oft_block_size == 0):
            p.append(f"oft_rank, oft_block_size: give a positive oft_block_size (or oft_rank), got "
                     f"{self.oft_rank} and {self.oft_block_size}")
        if not 0 <= self.module_dropout < 1:
            p.append(f"module_dropout: must be in [0, 1), got {self.module_dropout}")
        if self.use_llama_pro and kind not in ("freeze", "lora"):
            p.append(f"use_llama_pro: trains the expanded blocks of a model by freeze tuning or LoRA, not "
                     f"{kind}")
        low_rank = self.low_rank_optimizer
        if low_rank and kind in ADAPTERS:
            p.append(f"use_{low_rank}: {LOW_RANK_NAMES[low_rank]} projects the gradients of whole weight matrices; "
                     f"use it with finetuning_type full or freeze, not {kind}")
        if self.use_muon and optim not in (None, "adamw_torch"):
            p.append(f"use_muon: Muon is an optimizer; it replaces {'use_' + low_rank if low_rank else 'optim'}"
                     f" ({optim}); choose one")
        if self.use_muon and self.loraplus_lr_ratio:
            p.append("use_muon and loraplus_lr_ratio: both choose the optimizer; choose one")
        return p

    # ---- views -----------------------------------------------------------

    @property
    def low_rank_optimizer(self) -> str | None:
        """galore or apollo when the optimizer is one of theirs (transformers' optim names)."""
        optim = str(self.extra.get("optim", ""))
        return optim.split("_")[0] if optim.split("_")[0] in LOW_RANK_NAMES else None

    @property
    def trains_adapter(self) -> bool:
        return self.finetuning_type in ADAPTERS

    @property
    def lora_targets(self) -> list[str]:
        return _names(self.lora_target)

    @property
    def lora_init(self):
        if self.adapter_name_or_path:
            return True  # the adapter's own weights are the start
        return "pissa_niter_16" if self.pissa_init else self.init_lora_weights

    @property
    def extra_modules(self) -> list[str]:
        return _names(self.modules_to_save)

    @property
    def added_tokens(self) -> list[str]:
        return _names(self.new_special_tokens)

    @property
    def datasets(self) -> list[str]:
        return _names(self.dataset)

    @property
    def mix_probs(self) -> list[float] | None:
        if self.interleave_probs is None:
            return None
        try:
            return [float(x) for x in _names(self.interleave_probs)] if isinstance(self.interleave_probs, str) \
                else [float(x) for x in self.interleave_probs]
        except ValueError:
            return []

    @property
    def eval_datasets(self) -> list[str]:
        return _names(self.eval_dataset)

    @property
    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        model = Path(self.model_name_or_path.rstrip("/")).name or "model"
        return Path("outputs") / f"{model}-{self.finetuning_type}"

    def to_dict(self) -> dict:
        """Flat dict of every key (passthrough keys inlined): what run.yaml holds."""
        d = {k: getattr(self, k) for k in self.fields()}
        d["output_dir"] = str(self.run_dir)
        return {**d, **self.extra}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: Path) -> None:
        path.write_text("# ftkit run config: `ftkit train` this file to reproduce the run\n" + self.to_yaml(),
                        encoding="utf-8")


# ---- spellings ---------------------------------------------------------------

# grouped YAML as in the seed: group name -> {key inside the group -> flat key}
_LORA_KEYS = {"r": "lora_rank", "rank": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout",
              "target_modules": "lora_target", "target": "lora_target"}
GROUP_ALIASES = {"lora_config": _LORA_KEYS, "lora": _LORA_KEYS, "train": {}, "model": {}, "data": {},
                 "output": {}, "quantization": {}}


KEY_ALIASES = {"additional_target": "modules_to_save", "add_special_tokens": "new_special_tokens"}  # LLaMA-Factory's
# names for the same thing


# ---- LLaMA-Factory's argument names --------------------------------------------
# Every name LLaMA-Factory 0.9.5 takes (its hparams dataclasses; tests/test_llama_factory.py reads them from its
# source) is a RunConfig field, a TrainingArguments field, an alias above, or one of these: bookkeeping ftkit does
# not need (accepted; the pre-flight lists them once), or a method or setting ftkit does not have (refused by name
# when it asks for something, with the reason; `use_galore: false` asks for nothing and is accepted).

def _group(names: str, why: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), why)


LF_NOT_NEEDED = {
    **_group("do_train preprocessing_batch_size overwrite_cache data_shared_file_system "
             "use_fast_tokenizer low_cpu_mem_usage print_param_status include_effective_tokens_per_second "
             "ignore_pad_token_for_loss use_kv_cache pissa_convert cache_dir hf_hub_token ms_hub_token "
             "om_hub_token quantization_method", "bookkeeping ftkit does itself"),
    **_group("max_length skip_special_tokens infer_backend infer_dtype default_system",
             "chat settings: ftkit chat reads them"),
}
# GaLore and APOLLO: transformers' optimizers of those names (optim, optim_target_modules, optim_args), from the
# galore-torch and apollo-torch packages; LLaMA-Factory's keys and defaults -> transformers' optim_args names
LOW_RANK_NAMES = {"galore": "GaLore", "apollo": "APOLLO"}
LOW_RANK_OPTIMIZERS = {
    "galore": {"rank": ("rank", 16), "update_interval": ("update_proj_gap", 200), "scale": ("scale", 2.0),
               "proj_type": ("proj_type", "std")},
    "apollo": {"rank": ("rank", 16), "update_interval": ("update_proj_gap", 200), "scale": ("scale", 32.0),
               "proj": ("proj", "random"), "proj_type": ("proj_type", "std"), "scale_type": ("scale_type", "channel")},
}
LOW_RANK_KEYS = {f"{kind}_{k}" for kind, keys in LOW_RANK_OPTIMIZERS.items() for k in [*keys, "target", "layerwise"]} \
    | {"use_galore", "use_apollo", "apollo_scale_front"}


def _low_rank_optimizer(raw: dict, kind: str) -> tuple[dict, list[str]]:
    """use_galore / use_apollo with their keys as transformers' optim, optim_target_modules and optim_args."""
    if raw.get("optim") not in (None, "adamw_torch"):
        return {}, [f"use_{kind}: {kind} is an optimizer; it replaces optim: {raw['optim']} (remove one)"]
    args = ",".join(f"{name}={raw.get(f'{kind}_{key}', default)}"
                    for key, (name, default) in LOW_RANK_OPTIMIZERS[kind].items())
    target = raw.get(f"{kind}_target", "all")
    return {"optim": f"{kind}_adamw" + ("_layerwise" if raw.get(f"{kind}_layerwise") else ""), "optim_args": args,
            "optim_target_modules": target if target == "all" else _names(target)}, []


LF_REFUSED = {
    "apollo_scale_front": "APOLLO's norm-growth limiter in front of the scaling (transformers' APOLLO has none)",
    **_group("use_badam badam_mode badam_start_block badam_switch_mode badam_switch_interval badam_update_ratio "
             "badam_mask_mode badam_verbose", "BAdam"),
    **_group("use_adam_mini", "Adam-mini"),
    **_group("use_dft_loss use_asft_loss asft_alpha use_eaft_loss eaft_alpha", "the DFT/ASFT/EAFT losses"),
    **_group("pref_bco_weight ld_alpha", "BCO and LD-DPO (stage dpo with pref_loss sigmoid, hinge, ipo, orpo or "
             "simpo works)"),
    **_group("ref_model ref_model_adapters ref_model_quantization_bit", "a separate reference model (the "
             "reference is the model before training: with LoRA, the base with the adapter off)"),
    **_group("ppo_buffer_size ppo_epochs ppo_score_norm ppo_target ppo_whiten_rewards reward_model "
             "reward_model_adapters reward_model_quantization_bit reward_model_type", "PPO (stage dpo or kto learns "
             "from preferences without a reward model)"),
    **_group("use_swanlab swanlab_project swanlab_workspace swanlab_run_name swanlab_mode swanlab_api_key "
             "swanlab_logdir swanlab_lark_webhook_url swanlab_lark_secret", "SwanLab logging (report_to: "
             "tensorboard works)"),
    **_group("use_unsloth use_unsloth_gc", "Unsloth's kernels"), **_group("use_v1_kernels", "LLaMA-Factory's v1 "
                                                                         "kernels (NPU)"),
    **_group("mixture_of_depths", "mixture-of-depths conversion"), **_group("shift_attn", "shift short attention"),
    **_group("rope_scaling", "RoPE scaling"),
    **_group("use_mca use_hyper_parallel hyper_parallel_args tensor_model_parallel_size sequence_parallel "
             "pipeline_model_parallel_size bias_activation_fusion apply_rope_fusion use_distributed_optimizer "
             "overlap_param_gather overlap_grad_reduce moe_grouped_gemm moe_token_dispatcher_type "
             "expert_model_parallel_size recompute_granularity", "Megatron-Core and hyper-parallel training"),
    **_group("fp8 fp8_backend fp8_enable_fsdp_float8_all_gather", "FP8 training"),
    **_group("use_kt kt_weight_path kt_expert_checkpoint_path kt_use_lora_experts kt_lora_expert_num "
             "kt_lora_expert_intermediate_size", "KTransformers"),
    **_group("ray_num_workers ray_init_kwargs master_addr master_port", "Ray (use `ftkit train --gpus N` or "
             "torchrun)"),
    **_group("enable_torch_profiler profiler_output_dir profiler_wait_steps profiler_warmup_steps "
             "profiler_active_steps profiler_repeat profiler_record_shapes profiler_profile_memory "
             "profiler_with_stack profile_modules", "the torch profiler"),
    **_group("media_dir image_max_pixels image_min_pixels image_do_pan_and_scan crop_to_patches video_max_pixels "
             "video_min_pixels video_fps video_maxlen use_audio_in_video audio_sampling_rate freeze_vision_tower "
             "freeze_multi_modal_projector freeze_language_model", "vision and audio fine-tuning"),
    **_group("vllm_maxlen vllm_gpu_util vllm_enforce_eager vllm_max_lora_rank vllm_config sglang_maxlen "
             "sglang_mem_fraction sglang_tp_size sglang_config sglang_lora_backend", "vLLM and SGLang inference"),

    **_group("task task_dir batch_size lang n_shot save_dir download_mode", "benchmark evaluation (MMLU, C-Eval)"),
    **_group("eval_num_beams eval_on_each_dataset", "a separate evaluation dataset"),
    **_group("mask_history", "training only the last turn (every answer trains)"),
    **_group("neat_packing block_diag_attn", "neat packing (packing keeps attention within each example already)"),
    **_group("tool_format", "a tool format other than the model's own template's"),
    **_group("preserve_thinking", "keeping earlier turns' reasoning"),
    **_group("adapter_folder create_new_adapter", "a new adapter on top of an existing one (adapter_name_or_path "
             "goes on training the adapter it names)"),
    **_group("resize_vocab split_special_tokens add_tokens new_special_tokens_config init_special_tokens",
             "these vocabulary settings (new_special_tokens adds special tokens)"),
    **_group("train_from_scratch", "training from scratch"), **_group("model_revision", "hub revisions (use a "
                                                                      "local folder)"),
    **_group("offload_folder device_map quantization_device_map compute_dtype model_max_length",
             "these loading settings"),
    **_group("moe_aux_loss_coef", "a MoE auxiliary loss weight"), **_group("use_reentrant_gc", "reentrant checkpointing"),
    **_group("upcast_layernorm upcast_lmhead_output", "upcasting layers to fp32"),
    **_group("compute_accuracy", "token accuracy during evaluation"), **_group("disable_shuffling", "unshuffled data"),
    **_group("early_stopping_steps", "early stopping"),
}


LF_ELSEWHERE = {  # keys of LLaMA-Factory's other jobs, in a training file
    **_group("export_dir export_size export_device export_quantization_bit export_quantization_dataset "
             "export_quantization_nsamples export_quantization_maxlen export_legacy_format export_hub_model_id",
             "an export key: it belongs in the file given to `ftkit merge FILE`"),
    "fsdp_transformer_layer_cls_to_wrap": "transformers 5 reads it inside fsdp_config: {transformer_layer_cls_to_wrap: "
                                          "[...]}",
}


LF_GENERATION = ("do_sample", "temperature", "top_p", "top_k", "num_beams", "max_new_tokens", "repetition_penalty",
                 "length_penalty")
LF_V1_KEYS = {"train_dataset", "peft_config", "micro_batch_size", "dist_config", "kernel_config", "model_class",
              "quant_config", "batching_strategy", "sample_backend", "init_config"}


def _from_v1(raw: dict) -> tuple[dict, list[str], list[str]]:
    """LLaMA-Factory's v1 config (its examples/v1/: model, peft_config, train_dataset, micro_batch_size, ...) in
    the flat keys: (the config, keys accepted as not needed, problems)."""
    raw, flat, problems = dict(raw), {}, []
    if "model" in raw:
        flat["model_name_or_path"] = raw.pop("model")
    if raw.pop("model_class", "llm") != "llm":
        problems.append("model_class: only llm (text) models; vision and audio fine-tuning is not supported yet")
    peft = raw.pop("peft_config", None) or {}
    kind = peft.get("name", "full")
    if kind == "lora":
        flat["finetuning_type"] = "lora"
        for theirs, ours in (("r", "lora_rank"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout"),
                             ("target_modules", "lora_target"), ("adapter_name_or_path", "adapter_name_or_path")):
            if theirs in peft:
                flat[ours] = peft[theirs]
    elif kind == "freeze":
        flat["finetuning_type"] = "freeze"
        flat["freeze_trainable_layers"] = peft.get("freeze_trainable_layers", 2)
        if peft.get("freeze_trainable_modules") not in (None, "all") or peft.get("freeze_extra_modules"):
            problems.append("peft_config: freeze tuning of named modules is not supported; freeze tuning trains "
                            "the whole last freeze_trainable_layers layers (freeze_trainable_modules: all)")
    elif kind == "full":
        flat["finetuning_type"] = "full"
    else:
        problems.append(f"peft_config: name {kind!r} is not supported; use lora or freeze, or leave it out (full)")
    if "export_dir" in peft:
        problems.append("peft_config: export_dir makes this an export file: run `ftkit merge FILE`")
    quant = raw.pop("quant_config", None)
    if quant:
        if quant.get("name", "bnb") in ("bnb", "auto") and quant.get("quantization_bit") in (4, 8):
            flat["quantization_bit"] = quant["quantization_bit"]
        else:
            problems.append(f"quant_config: {quant} is not supported; ftkit quantizes with bitsandbytes "
                            "(name: bnb, quantization_bit: 4 or 8)")
    kernels = raw.pop("kernel_config", None) or {}
    if kernels.get("name") == "liger_kernel":
        flat["use_liger_kernel"] = True
    elif kernels.get("name", "auto") != "auto":
        problems.append(f"kernel_config: {kernels['name']} kernels are not supported; use name: auto or liger_kernel")
    dist = raw.pop("dist_config", None) or {}
    if dist.get("name") == "deepspeed" and dist.get("config_file"):
        flat["deepspeed"] = dist["config_file"]
    elif dist.get("cp_mode") or (dist.get("cp_size") or 1) > 1:
        problems.append("dist_config: context parallelism (cp_mode, cp_size) is not supported")
    strategy = raw.pop("batching_strategy", "normal")
    if strategy == "padding_free":
        flat["packing"] = True
    elif strategy != "normal":
        problems.append(f"batching_strategy: {strategy} is not supported; use normal or padding_free (packing)")
    if "train_dataset" in raw:
        flat["dataset"] = raw.pop("train_dataset")
    micro = raw.pop("micro_batch_size", None)
    if micro is not None:
        flat["per_device_train_batch_size"] = micro
    if "global_batch_size" in raw:  # in one process, micro batches per step (llamafactory 0.9.5, v1
        whole, part = int(raw.pop("global_batch_size")), int(micro or 1)  # core/utils/batching.py, which refuses a
        if whole % part:  # global size that micro batches do not divide)
            problems.append(f"global_batch_size: {whole} is not a multiple of micro_batch_size {part}")
        else:
            flat["gradient_accumulation_steps"] = whole // part
    if raw.get("flash_attn") == "flash_attention2":
        raw["flash_attn"] = "fa2"
    accepted = [k for k, given in (("kernel_config", kernels and "use_liger_kernel" not in flat),
                                   ("dist_config", dist and "deepspeed" not in flat), ("sample_backend", raw.pop("sample_backend", None)),
                                   ("init_config", raw.pop("init_config", None))) if given]
    return {**flat, **raw}, accepted, problems  # a flat key given too (a command-line override) wins


def llama_factory_keys(raw: dict) -> tuple[dict, list[str], list[str]]:
    """LLaMA-Factory's names in a flat config: (the config in ftkit's keys, the keys accepted as not needed, the
    problems of keys asking for what ftkit lacks)."""
    if set(raw) & LF_V1_KEYS:
        raw, v1_accepted, v1_problems = _from_v1(raw)
        out, accepted, problems = llama_factory_keys(raw)
        return out, v1_accepted + accepted, v1_problems + problems
    out, accepted, problems, refused = {}, [], [], {}
    for key, value in raw.items():
        if key in LF_GENERATION:  # used by predict runs
            out.setdefault("generation", {})[key] = value
        elif key == "disable_gradient_checkpointing":
            if value and raw.get("gradient_checkpointing") is None:
                out["gradient_checkpointing"] = False
            accepted += [] if value else [key]
        elif key == "enable_liger_kernel":  # transformers' name for the same
            out["use_liger_kernel"] = value
        elif key == "pissa_iter":  # LLaMA-Factory's PiSSA iterations, used with pissa_init
            if raw.get("pissa_init"):
                out["init_lora_weights"] = "pissa" if value == -1 else f"pissa_niter_{value}"
        elif key in LOW_RANK_KEYS:
            kind = key.split("_")[1] if key.startswith("use_") else key.split("_")[0]
            if key == "apollo_scale_front" and value:
                refused.setdefault(LF_REFUSED[key], []).append(key)
            elif not raw.get(f"use_{kind}"):  # settings of an optimizer not asked for (as in LLaMA-Factory)
                accepted.append(key)
            elif key == f"use_{kind}":
                mapped, trouble = _low_rank_optimizer(raw, kind)
                out.update(mapped)
                problems += trouble
        elif key in LF_NOT_NEEDED:
            if key == "quantization_method" and value not in (None, "bnb", "bitsandbytes"):
                problems.append(f"quantization_method: {value!r} is not supported; ftkit quantizes with "
                                "bitsandbytes (quantization_method: bnb)")
            accepted.append(key)
        elif key in LF_ELSEWHERE:
            if value in (None, False, "", [], {}):
                accepted.append(key)
            else:
                problems.append(f"{key}: {LF_ELSEWHERE[key]}")
        elif key in LF_REFUSED:
            if value in (None, False, "", [], {}, "none"):
                accepted.append(key)
            else:
                refused.setdefault(LF_REFUSED[key], []).append(key)
        elif key == "flash_attn" and value == "disabled":  # LLaMA-Factory's name for plain attention
            out[key] = "eager"
        else:
            out[key] = value
    for what, keys in refused.items():
        problems.append(f"{', '.join(keys)}: ftkit does not support {what}; remove "
                        + ("it" if len(keys) == 1 else "these keys"))
    if raw.get("pissa_init") and "init_lora_weights" in out and "pissa_iter" in raw:
        out.pop("pissa_init", None)
    return out, accepted, problems


def flatten(raw: dict) -> dict:
    """Map the seed's grouped spelling onto flat keys; flat keys pass unchanged."""
    flat = {}
    for key, value in raw.items():
        key = KEY_ALIASES.get(key, key)
        aliases = GROUP_ALIASES.get(key)
        if aliases is not None and isinstance(value, dict):
            flat.update({aliases.get(k, k): v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def parse_overrides(args: list[str]) -> dict:
    """`key=value`, `--key value`, `--key=value` and bare `--flag` (true) to a dict; values read as YAML."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1]:
                    value, i = args[i + 1], i + 1
                else:
                    value = "true"
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            raise ConfigError(f"{arg!r}: expected key=value or --key value")
        out[key.replace("-", "_")] = yaml.safe_load(value) if value != "" else None
        i += 1
    return out


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))


def parse_yaml(text: str, where: str = "config") -> dict:
    """safe_load with errors that name the line; tabs get their own hint."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        hint = "; YAML indents with spaces, not tabs" if "\t" in text else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}:{line}: {problem}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of key: value, got {type(data).__name__}")
    return data


# ---- helpers -----------------------------------------------------------------

def _names(value) -> list[str]:
    """A comma-separated string or a list, as a list of names."""
    if not value:
        return []
    return [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]


def training_argument_names() -> set[str]:
    """TrainingArguments fields that may pass through, known without importing torch where possible."""
    from ftkit.internals import training_argument_fields

    names = training_argument_fields()
    if names is None:
        from transformers import TrainingArguments

        names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    own = set(RunConfig.fields()) | {"warmup_steps", "output_dir", "do_train", "do_eval", "local_rank"}
    return names - own


def _unknown(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else "; `ftkit train --help` lists the keys"
    return f"{key}: unknown key{hint}"


def _hints() -> dict:
    return typing.get_type_hints(RunConfig)


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if not args:
        return getattr(hint, "__name__", str(hint))
    return " or ".join(_type_name(a) for a in args if a is not type(None))


def _coerce(value, hint):
    """Accept YAML/CLI values for a field's type; raise on a wrong type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    if typing.get_origin(hint) is list:
        args = [hint]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise TypeError
    for t in args:
        origin = typing.get_origin(t)
        if t is dict:  # a mapping, or "key=value,key=value" from a command line
            if isinstance(value, dict):
                return {str(k): v for k, v in value.items()}
            if isinstance(value, str) and all("=" in part for part in value.split(",")):
                return dict(part.split("=", 1) for part in value.split(","))
            continue
        if t is list:  # any items (reward_funcs: names, or shipped functions)
            if isinstance(value, (list, tuple)):
                return list(value)
            if isinstance(value, str):
                return [value]
            continue
        if origin is list and typing.get_args(t) == (float,):
            if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in value):
                return [float(v) for v in value]
            continue
        if origin is list:
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            if isinstance(value, str) and t is hint:  # one prompt for a list of prompts
                return [value]
            continue
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            continue
        if t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    continue
            continue
        if t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads 2e-5 (no dot) as a string
                except ValueError:
                    continue
            continue
        if t is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise TypeError


def help_text() -> str:
    """The schema as text: `ftkit train --help`, example YAML comments and widget tooltips share it."""
    hints = _hints()
    lines = []
    for name, f in RunConfig.fields().items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{name} ({_type_name(hints[name])}, default {default!r})\n      {f.metadata['help']}")
    return "\n".join(lines)


def example_yaml(values: dict, title: str) -> str:
    """A commented YAML config; each key's comment is its schema help (examples/ are made with this)."""
    fields = RunConfig.fields()
    lines = [f"# {line}".rstrip() for line in title.strip().splitlines()]
    for key, value in values.items():
        help = fields[key].metadata["help"] if key in fields else "passed to transformers.TrainingArguments"
        dumped = yaml.safe_dump({key: value}, allow_unicode=True, default_flow_style=False, sort_keys=False)
        lines += ["", f"# {help}", dumped.rstrip()]
    return "\n".join(lines) + "\n"
