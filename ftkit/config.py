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
FINETUNING_TYPES = ("lora", "full", "freeze")
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
    max_samples: int | None = _f(None, "Use at most this many examples from each dataset.")
    cutoff_len: int = _f(1024, "Maximum tokens per example; longer ones are cut at the last whole answer that fits.")
    packing: bool | None = _f(None, "Padding-free batches: a batch's examples end to end in one row, attention kept "
                                    "within each (same loss, no padding). Default: on where the model supports it.")
    train_on_prompt: bool = _f(False, "Also train on system and user tokens (default: assistant turns only).")
    # method
    stage: str = _f("sft", "Training stage. Only `sft` (supervised fine-tuning) is supported.")
    finetuning_type: str = _f("lora", "lora | full | freeze.")
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
    freeze_trainable_layers: int = _f(2, "freeze tuning: how many of the last decoder layers train.")
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
    fp16: bool = _f(False, "fp16 mixed precision (CUDA only).")
    bf16: bool = _f(False, "bf16 mixed precision (Ampere or newer GPU).")
    gradient_checkpointing: bool | None = _f(None, "Recompute activations in backward: ~40% less activation memory, "
                                                   "~20% slower. Unset: on only when the run fits in memory with it "
                                                   "and not without.")
    logging_steps: int = _f(10, "Log loss, lr and throughput every N updates.")
    save_steps: int = _f(500, "Save a checkpoint every N updates.")
    eval_steps: int | None = _f(None, "Evaluate every N updates (default: 5 times per run when val_size > 0).")
    report_to: str | list[str] = _f("none", "Extra loggers: none | tensorboard | wandb ...")
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
        raw = flatten(raw)
        known, hints, problems, values, extra = cls.fields(), _hints(), [], {}, dict(raw.pop("extra", None) or {})
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
        cfg = cls(**values, extra=extra)
        problems += cfg.check()
        if problems:
            raise ConfigError(problems, title="invalid run config")
        return cfg

    # ---- checks (no weights, no files) -----------------------------------

    def check(self) -> list[str]:
        p = []
        if not self.dataset:
            p.append("dataset: missing; name a file (data/demo_zh_en.json) or a dataset_info.json entry (demo)")
        if self.stage != "sft":
            p.append(f"stage: {self.stage!r} is not supported; ftkit does supervised fine-tuning, stage: sft")
        if self.finetuning_type not in FINETUNING_TYPES:
            p.append(f"finetuning_type: {self.finetuning_type!r} is not one of {', '.join(FINETUNING_TYPES)}")
        if self.quantization_bit not in (None, 4, 8):
            p.append(f"quantization_bit: {self.quantization_bit} is not supported; use 4 or 8 (or leave it out)")
        elif self.quantization_bit and self.finetuning_type != "lora":
            p.append(f"quantization_bit: {self.quantization_bit}-bit weights cannot be trained directly; "
                     f"QLoRA needs finetuning_type: lora (you have {self.finetuning_type})")
        if self.quantization_type not in ("nf4", "fp4"):
            p.append(f"quantization_type: {self.quantization_type!r} is not nf4 or fp4")
        if self.flash_attn not in FLASH_ATTN:
            p.append(f"flash_attn: {self.flash_attn!r} is not one of {', '.join(FLASH_ATTN)}")
        if self.fp16 and self.bf16:
            p.append("fp16 and bf16: choose one mixed precision")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "cutoff_len",
                    "logging_steps", "save_steps", "lora_rank", "freeze_trainable_layers", "preview_steps",
                    "preview_max_new_tokens"):
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
        if self.max_samples is not None and self.max_samples < 1:
            p.append(f"max_samples: must be at least 1, got {self.max_samples}")
        if self.eval_steps is not None and self.eval_steps < 1:
            p.append(f"eval_steps: must be at least 1, got {self.eval_steps}")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        init = self.init_lora_weights
        if isinstance(init, str) and init not in LORA_INITS and not re.fullmatch(r"pissa_niter_\d+", init):
            p.append(f"init_lora_weights: {init!r} is not one of true, false, {', '.join(LORA_INITS)}, pissa_niter_N")
        if self.threads is not None and self.threads < 1:
            p.append(f"threads: must be at least 1, got {self.threads}")
        return p

    # ---- views -----------------------------------------------------------

    @property
    def lora_targets(self) -> list[str]:
        return _names(self.lora_target)

    @property
    def lora_init(self):
        return "pissa_niter_16" if self.pissa_init else self.init_lora_weights

    @property
    def extra_modules(self) -> list[str]:
        return _names(self.modules_to_save)

    @property
    def added_tokens(self) -> list[str]:
        return _names(self.new_special_tokens)

    @property
    def datasets(self) -> list[str]:
        return [s.strip() for s in (self.dataset or "").split(",") if s.strip()]

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


KEY_ALIASES = {"additional_target": "modules_to_save"}  # LLaMA-Factory's name for the same thing


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
