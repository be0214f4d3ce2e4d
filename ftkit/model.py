"""Model: resolve, load (optionally quantized), and make trainable (LoRA, full, freeze)."""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ftkit.errors import ConfigError, ModelError
from ftkit.internals import attn_implementation, keep_bnb_trainable_layout


@contextlib.contextmanager
def quiet():
    """Silence start-up chatter that says nothing to a user (progress bars, optional-kernel notices) while the block
    (or decorated function) runs; the process's own settings (a notebook kernel's logging) come back after it."""
    import logging

    import transformers

    hf = transformers.utils.logging
    verbosity, bars = hf.get_verbosity(), hf.is_progress_bar_enabled()
    bnb = logging.getLogger("bitsandbytes.autograd._functions")  # 8-bit on fp32 inputs logs the (expected) cast on
    bnb_level = bnb.level                                          # every matmul
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf.disable_progress_bar()
    hf.set_verbosity_error()
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")  # peft calls it
            yield
    finally:
        hf.set_verbosity(verbosity)
        if bars:
            hf.enable_progress_bar()
        bnb.setLevel(bnb_level)
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


def resolve(name_or_path: str, key: str = "model_name_or_path") -> str:
    """`tiny` -> the embedded model; a folder must hold a model (config.json), or be a run folder: a full or freeze
    run gives its model/, a LoRA run its merged/; anything else is a hub name. `key` names the setting in errors."""
    if name_or_path == "tiny":
        from ftkit import tiny

        return str(tiny.path())
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        from ftkit.folders import model_and_adapter

        located = model_and_adapter(p)
        if located and not located[1]:
            return located[0]
        if located and (p / "merged" / "config.json").exists():
            return str(p / "merged")
        if located:
            raise ModelError(f"{p}: a LoRA run or adapter (it applies to {located[0]}); merge it first (ftkit merge "
                             f"--adapter {p}) and give {key} the merged folder, or use {located[0]} with the adapter")
        raise ModelError(f"{p}: not a model folder (no config.json); point {key} at the folder that holds "
                         "config.json and the weights, a run's output_dir, or a merged model folder")
    if p.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"{name_or_path}: no such model folder ({key})")
    return name_or_path  # a Hugging Face hub name


def model_type(model_path: str) -> str | None:
    """config.json's model_type, without loading weights (None when it cannot be read)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path).model_type
    except (OSError, ValueError):
        return None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]  # CUDA compute capability: bf16 from 8.0 (Ampere) on
    memory: int = 0              # bytes of GPU memory (0: not known)

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def fa2(self) -> bool:  # FlashAttention-2 runs on Ampere and newer
        return self.capability >= (8, 0)


GiB = 2**30
# The GPUs people train on, for planning a run on one this machine does not have (`--device`): the name and total
# memory torch reports there, as printed by published notebook runs (torch.cuda.get_device_properties), and the
# compute capability NVIDIA lists (developer.nvidia.com/cuda-gpus)
DEVICES = {
    "t4": Gpu("Tesla T4", (7, 5), int(14.741 * GiB)),            # huggingface/trl sft_trl_lora_qlora.ipynb (Colab)
    "l4": Gpu("NVIDIA L4", (8, 9), int(22.168 * GiB)),           # an Unsloth notebook's output on Colab's L4
    "a10g": Gpu("NVIDIA A10G", (8, 6), int(21.988 * GiB)),       # an Unsloth run's banner on an AWS A10G
    "a100-40g": Gpu("NVIDIA A100-SXM4-40GB", (8, 0), int(39.557 * GiB)),  # Unsloth notebook outputs (Colab)
    "a100-80g": Gpu("NVIDIA A100 80GB PCIe", (8, 0), int(79.151 * GiB)),  # an Unsloth notebook's output
    "h100": Gpu("NVIDIA H100 80GB HBM3", (9, 0), int(79.151 * GiB)),      # 80 GB as the A100 80GB (not a print)
    "cpu": None,
}


def gpu() -> Gpu | None:
    """The GPU a run trains on (the first visible CUDA device), or None on a CPU. Asked of nvidia-smi while this
    process has not initialised CUDA, so planning in a notebook's kernel leaves it uninitialised (a launched run
    can still use the GPUs); torch's answer otherwise."""
    import torch

    if not torch.cuda.is_available():
        return None
    if not torch.cuda.is_initialized():
        answer = _nvidia_smi("name,compute_cap,memory.total", 0)
        if answer:
            name, cap, mib = answer
            # what torch can use: the total less what the driver and firmware keep (a T4: 15,360 MiB less 265,
            # torch's 14.741 GiB); drivers before 510 do not report the reserve
            reserved = _nvidia_smi("memory.reserved", 0)
            keep = float(reserved[0]) if reserved and reserved[0].replace(".", "", 1).isdigit() else 0
            return Gpu(name, tuple(int(x) for x in cap.split(".")), int((float(mib) - keep) * 2**20))
    props = torch.cuda.get_device_properties(0)
    return Gpu(props.name, (props.major, props.minor), props.total_memory)


def _nvidia_smi(fields: str, device: int) -> list[str] | None:
    """nvidia-smi's answer for a visible CUDA device (its index as torch counts them), or None (no nvidia-smi, or
    a driver too old for the fields)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not smi:
        return None
    try:
        line = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i",
                               visible[device] if device < len(visible) else str(device)],
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        parts = [part.strip() for part in line.rsplit(",", fields.count(","))]
        return parts if len(parts) == fields.count(",") + 1 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def import_bitsandbytes_leaving_cuda() -> None:
    """Import bitsandbytes (peft imports it) without initialising CUDA in this process. Its import asks torch for
    every GPU's compute capability, which initialises CUDA: in a notebook's kernel that would hold a CUDA context
    for the whole session and poison forked workers. While it imports, the capabilities come from nvidia-smi."""
    import importlib.util
    import sys

    import torch

    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None or \
            not torch.cuda.is_available() or torch.cuda.is_initialized():
        return
    asked = torch.cuda.get_device_capability

    def from_nvidia_smi(device=None):
        index = getattr(device, "idx", device)
        answer = _nvidia_smi("compute_cap", int(index or 0))
        return tuple(int(x) for x in answer[0].split(".")) if answer else asked(device)

    torch.cuda.get_device_capability = from_nvidia_smi
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is reported where bitsandbytes is used, as before
        pass
    finally:
        torch.cuda.get_device_capability = asked


def compute_dtype(cfg):
    """The precision a config computes in."""
    import torch

    if cfg.bf16 or cfg.pure_bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


def load_tokenizer(model_path: str, tokenizer_path: str | None = None, trust_remote_code: bool = False,
                   new_tokens: list[str] = ()):
    from transformers import AutoTokenizer

    where = resolve(tokenizer_path, key="tokenizer_name_or_path") if tokenizer_path else model_path
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{where}: cannot load a tokenizer ({_first_line(e)}); if it lives elsewhere, "
                         "set tokenizer_name_or_path") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if new_tokens:
        tok.add_tokens(list(new_tokens), special_tokens=True)
    tok.padding_side = "right"
    return tok


def attention_impl(choice: str) -> tuple[str | None, str | None]:
    """(implementation, note). `auto` lets transformers pick (sdpa where the architecture has it, else eager);
    fa2 only where flash-attn is installed and CUDA is present, else the same automatic choice."""
    import importlib.util

    if choice in ("sdpa", "eager"):
        return choice, None
    if choice == "fa2":
        if device() == "cuda" and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2", None
        why = "no CUDA device" if device() != "cuda" else "flash-attn is not installed"
        return None, f"flash_attn: fa2 unavailable ({why}); using the default attention (sdpa where supported)"
    return None, None


def load_model(cfg, model_path: str):
    """The base model to train, in the precision and quantization the config asks for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    dtype = compute_dtype(cfg)
    attn, note = attention_impl(cfg.flash_attn)
    # frozen base weights (LoRA) live in the half precision asked for; weights that train stay fp32 masters under
    # autocast, which fp16's gradient scaler needs (it refuses to unscale fp16 gradients)
    load_dtype = dtype if cfg.trains_adapter or cfg.pure_bf16 else torch.float32
    kwargs = dict(dtype=load_dtype, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code,
                  **safe_weights(model_path, cfg.allow_pickle))
    if cfg.quantization_bit == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quantization_type,
            bnb_4bit_use_double_quant=cfg.double_quantization, bnb_4bit_compute_dtype=dtype)
    elif cfg.quantization_bit == 8:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if cfg.quantization_bit and device() == "cuda":
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if cfg.stage == "rm":  # a reward model: the causal LM's body, a new linear head giving one score
        kwargs["num_labels"] = 1
    try:
        auto = AutoModelForSequenceClassification if cfg.stage == "rm" else AutoModelForCausalLM
        model = auto.from_pretrained(model_path, **kwargs)
    except ImportError as e:
        raise ModelError(f"{model_path}: {_first_line(e)}") from None
    except (OSError, ValueError) as e:
        raise _load_error(model_path, e) from None
    model.config.use_cache = False  # training: no KV cache (and packed rows need it off)
    keep_bnb_trainable_layout(model)  # else an evaluation breaks the backward of 4-bit layers on a CPU
    return model


def _is_linear(module) -> bool:
    import torch

    # plain, bitsandbytes 4/8-bit, and GPT-2 style Conv1D (a linear layer with transposed weight)
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D")


def lora_candidates(model) -> tuple[dict[str, str], dict[str, str]]:
    """Where LoRA can go: {leaf name: module type} of linear layers (the head excluded), and
    {parameter name: "module.param"} of 3-D expert weights in mixture-of-experts blocks."""
    head = model.get_output_embeddings()
    linear, experts = {}, {}
    for full, module in model.named_modules():
        if module is head or full.endswith("lm_head") or module is reward_head(model):
            continue
        leaf = full.rsplit(".", 1)[-1]
        if _is_linear(module):
            linear[leaf] = type(module).__name__
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:  # fused experts: (n_experts, out, in)
                experts[pname] = f"{leaf}.{pname}"
    return linear, experts


def task_type(cfg) -> str:
    """peft's task type: a reward model is a sequence classifier (peft keeps its score head whole)."""
    return "SEQ_CLS" if cfg.stage == "rm" else "CAUSAL_LM"


def lora_config(model, cfg):
    """peft LoraConfig for the config's targets; `all` = every linear layer and expert weight, not head or router."""
    from peft import LoraConfig

    from ftkit.architectures import ROUTER_NAMES

    linear, experts = lora_candidates(model)
    wanted = cfg.lora_targets
    if wanted == ["all"]:
        wanted = [n for n in dict.fromkeys([*linear, *experts]) if n not in ROUTER_NAMES]
    missing = [t for t in wanted if t not in linear and t not in experts]
    if missing:
        available = sorted(linear) + sorted(f"{e} (experts)" for e in experts)
        raise ConfigError(f"lora_target: {', '.join(missing)} match no linear layer of this model; "
                          f"it has: {', '.join(available)} (or use all)")
    modules = sorted(t for t in wanted if t in linear)
    params = sorted({experts[t] for t in wanted if t in experts})  # a name may be both (dense and expert MLPs)
    save = _saved_modules(model, cfg)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, lora_dropout=cfg.lora_dropout,
                        target_modules=modules, target_parameters=params or None, task_type=task_type(cfg),
                        fan_in_fan_out=any(linear[m] == "Conv1D" for m in modules), use_dora=cfg.use_dora,
                        use_rslora=cfg.use_rslora, init_lora_weights=cfg.lora_init, modules_to_save=save,
                        ensure_weight_tying=bool(save), layers_to_transform=_expanded_layers(model, cfg))
    return config


def linear_targets(model) -> list[str]:
    """`all` for OFT, GaLore and APOLLO: the leaf names of every linear layer but the head and routers."""
    from ftkit.architectures import ROUTER_NAMES

    return sorted(n for n in lora_candidates(model)[0] if n not in ROUTER_NAMES)


def oft_config(model, cfg):
    """peft OFTConfig (orthogonal fine-tuning): a learned block-diagonal rotation of each target layer's input;
    `oft_target: all` = every linear layer but the head and routers."""
    from peft import OFTConfig

    from ftkit.config import _names

    linear, _ = lora_candidates(model)
    wanted = _names(cfg.oft_target)
    if wanted == ["all"]:
        wanted = linear_targets(model)
    missing = [t for t in wanted if t not in linear]
    if missing:
        raise ConfigError(f"oft_target: {', '.join(missing)} match no linear layer of this model; it has: "
                          f"{', '.join(sorted(linear))} (or use all)")
    if not cfg.oft_rank:  # peft would quietly pick another block size
        sizes = {m.in_features for full, m in model.named_modules() if full.rsplit(".", 1)[-1] in wanted
                 and hasattr(m, "in_features")}
        odd = sorted(s for s in sizes if s % cfg.oft_block_size)
        if odd:
            raise ConfigError(f"oft_block_size: {cfg.oft_block_size} does not divide the input size of every "
                              f"adapted layer ({', '.join(map(str, odd))}); choose a common divisor of "
                              f"{', '.join(map(str, sorted(sizes)))}, or set oft_rank (blocks per layer) instead")
    save = _saved_modules(model, cfg)
    return OFTConfig(r=cfg.oft_rank, oft_block_size=0 if cfg.oft_rank else cfg.oft_block_size,
                     target_modules=sorted(wanted), module_dropout=cfg.module_dropout, task_type="CAUSAL_LM",
                     fan_in_fan_out=any(linear[m] == "Conv1D" for m in wanted), modules_to_save=save,
                     layers_to_transform=_expanded_layers(model, cfg))


def _saved_modules(model, cfg) -> list[str] | None:
    """Whole modules an adapter trains and saves: modules_to_save, and for new tokens the embeddings (and the
    head, unless it is tied to them)."""
    save = list(cfg.extra_modules)
    if reward_head(model) is not None:  # a reward model's new score head trains whole
        save.append(_leaf_name(model, reward_head(model)))
    if cfg.added_tokens:
        save += [_leaf_name(model, model.get_input_embeddings())]
        if not model.config.get_text_config().tie_word_embeddings:
            save += [_leaf_name(model, model.get_output_embeddings())]
    return list(dict.fromkeys(save)) or None


def reward_head(model):
    """A reward model's score head (transformers' sequence-classification models name it `score`), else None."""
    head = getattr(model, "score", None)
    return head if getattr(model.config, "num_labels", None) == 1 and hasattr(head, "weight") else None


def trainable_layers(count: int, cfg) -> list[int]:
    """Indexes of the decoder layers that train (freeze tuning, LLaMA Pro): the last freeze_trainable_layers, the
    first ones when it is negative, or with use_llama_pro the expanded blocks, one every count / N layers (where
    `ftkit expand` put them, as LLaMA-Factory's llama_pro script does)."""
    n = cfg.freeze_trainable_layers
    if abs(n) > count:
        raise ConfigError(f"freeze_trainable_layers: {n} is more layers than the {count} this model has")
    if cfg.use_llama_pro:
        if n < 0 or count % n:
            raise ConfigError(f"use_llama_pro: freeze_trainable_layers ({n}) must be the number of blocks `ftkit "
                              f"expand` added, which divides the expanded model's {count} layers")
        stride = count // n
        return list(range(stride - 1, count, stride))
    return list(range(count - n, count)) if n > 0 else list(range(-n))


def _expanded_layers(model, cfg) -> list[int] | None:
    return trainable_layers(len(decoder_layers(model)), cfg) if cfg.use_llama_pro else None


def _leaf_name(model, module) -> str:
    return next(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is module)


def match_vocab(model, tokenizer, mean_init: bool = True) -> None:
    """Grow the embeddings (new rows at the mean of the old) when the tokenizer has more tokens than the model."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=mean_init)


def _unadapted(model, requested: set[str]) -> list[str]:
    """Requested linear names of which some layer is still a bare linear layer (peft wraps the ones it adapts, in a
    layer whose class may share the bare one's name: peft's bnb `Linear4bit` wraps bitsandbytes' `Linear4bit`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sorted({full.rsplit(".", 1)[-1] for full, module in model.named_modules()
                   if full.rsplit(".", 1)[-1] in requested and _is_linear(module)
                   and not isinstance(module, BaseTunerLayer)})


def packing_isolates(model) -> bool:
    """Whether the model keeps examples packed in one row apart (a block-diagonal mask from position_ids):
    the last logits of a sequence must not change when another sequence precedes it in the row."""
    import torch

    first, second = torch.arange(5, 13), torch.arange(20, 26)
    dev = next(model.parameters()).device
    with torch.no_grad():
        alone = model(input_ids=second[None].to(dev), use_cache=False).logits[0, -1].float()
        row = torch.cat([first, second])[None].to(dev)
        positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))])[None].to(dev)
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, -1].float()
    return bool((alone - packed).abs().max() <= 1e-2 * alone.abs().max().clamp(min=1.0))


# ---- attention for packed rows on a CPU -------------------------------------------------------------------------
# With sdpa, a packed row gets a block-diagonal mask over the whole row: attention costs row_length**2 (8 examples
# of 100 tokens: 640k scores, 80k of them needed) and torch takes its slow masked path. Attending within each
# example instead (one causal sdpa call each) takes the fast causal kernel and none of the masked work: training
# on the benchmark ran 26% faster with the same losses. Used on CPU only where a probe row gives the model's own
# logits (sliding windows, soft-capping and the like keep the masked path). On CUDA, flash-attn's varlen kernel
# does this (flash_attn: fa2).

PACKED_ATTENTION = "ftkit_packed"


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    positions = kwargs.get("position_ids")
    if positions is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # generation steps, padded batches
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    bounds = list(zip(starts, starts[1:] + [query.shape[2]]))
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    p = dropout if module.training else 0.0
    out = [torch.nn.functional.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                            is_causal=True, scale=scaling, dropout_p=p)
           for a, b in bounds]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def use_packed_attention(model, max_len: int) -> bool:
    """Switch a CPU sdpa model to per-example attention for packed rows if a probe row gives the same logits.
    A sliding window shorter than the longest example would be ignored by it: such models keep the mask."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    window = getattr(model.config, "sliding_window", None)
    if device() != "cpu" or attn_implementation(model) != "sdpa" or \
            (window is not None and window < max_len):
        return False
    AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # the fallback (generation) keeps sdpa's masks
    lengths = (9, 5, 7)
    row = torch.cat([torch.arange(10, 10 + 3 * n, 3) for n in lengths])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        reference = model(input_ids=row, position_ids=positions, use_cache=False).logits.float()
        try:
            model.set_attn_implementation(PACKED_ATTENTION)
            mine = model(input_ids=row, position_ids=positions, use_cache=False).logits.float()
            same = attn_implementation(model) == PACKED_ATTENTION and \
                bool((mine - reference).abs().max() <= 1e-4 * reference.abs().max().clamp(min=1.0))
        except Exception:  # noqa: BLE001 - an architecture that cannot take it keeps sdpa
            same = False
    if not same:
        model.set_attn_implementation("sdpa")
    return same


def layer_stack(model):
    """The model's stack of decoder blocks (the longest ModuleList), or None."""
    import torch

    return max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=None)


def decoder_layers(model):
    layers = layer_stack(model)
    if layers is None:
        raise ModelError(f"{type(model).__name__}: no layer list found for freeze tuning")
    return layers


def make_trainable(model, cfg, notes: list[str] | None = None, weights: bool = True):
    """Apply the fine-tuning method; returns the model to train. What a user should know about it (LoRA that
    could not go where asked) is added to `notes`. `weights=False` (a meta skeleton) leaves a continued adapter's
    weights unloaded."""
    import torch

    if cfg.trains_adapter:
        import_bitsandbytes_leaving_cuda()
        from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

        from ftkit.folders import adapter_folder

        adapter = adapter_folder(cfg.adapter_name_or_path) if cfg.adapter_name_or_path else None
        method = lora_config if cfg.finetuning_type == "lora" else oft_config
        peft_config = PeftConfig.from_pretrained(str(adapter)) if adapter else method(model, cfg)
        requested = set(peft_config.target_modules or ())  # peft may rewrite target_modules (MoE name conversion)
        if cfg.quantization_bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing),
                gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            if adapter and weights:  # the adapter's weights, trainable: training goes on from them
                model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
            else:
                model = get_peft_model(model, peft_config)
        except ValueError as e:
            if cfg.finetuning_type != "oft":
                raise
            raise ConfigError(f"oft_block_size: {_first_line(e)}") from None
        skipped = _unadapted(model, requested)
        if skipped and notes is not None:  # peft maps v4 expert names onto transformers 5's fused experts, and
            notes.append(f"LoRA not applied to {', '.join(skipped)} (peft reads these names as the fused "
                                     "expert weights on this MoE model); attention and experts are adapted")
    elif cfg.finetuning_type == "freeze":
        _freeze(model, cfg)
        if reward_head(model) is not None:
            reward_head(model).requires_grad_(True)
        if cfg.added_tokens:
            model.get_input_embeddings().requires_grad_(True)
            model.get_output_embeddings().requires_grad_(True)
    else:
        model.requires_grad_(True)
    for p in model.parameters():  # trainable weights stay fp32 even when the frozen base is half precision
        if p.requires_grad and p.dtype != torch.float32 and not cfg.pure_bf16:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _freeze(model, cfg) -> None:
    """Freeze tuning: everything frozen but the chosen layers (or the named parts of them) and the extra modules."""
    from ftkit.config import _names

    layers = decoder_layers(model)
    model.requires_grad_(False)
    parts = _names(cfg.freeze_trainable_modules)
    for i in trainable_layers(len(layers), cfg):
        if parts in ([], ["all"]):
            layers[i].requires_grad_(True)
            continue
        children = dict(layers[i].named_modules())
        missing = [name for name in parts if name not in children]
        if missing:
            raise ConfigError(f"freeze_trainable_modules: {', '.join(missing)} is not a part of this model's decoder "
                              f"layers; they hold {', '.join(n for n, _ in layers[i].named_children())} (or use all)")
        for name in parts:
            children[name].requires_grad_(True)
    inside = {id(p) for p in layers.parameters()}
    for name in _names(cfg.freeze_extra_modules):
        found = [m for full, m in model.named_modules() if full.rsplit(".", 1)[-1] == name
                 and not any(id(p) in inside for p in m.parameters())]
        if not found:
            outside = sorted({full.rsplit(".", 1)[-1] for full, m in model.named_modules() if full and
                              any(True for _ in m.parameters()) and not any(id(p) in inside for p in m.parameters())})
            raise ConfigError(f"freeze_extra_modules: {name} is no module outside the decoder layers; those are "
                              f"{', '.join(outside)}")
        for m in found:
            m.requires_grad_(True)


def skeleton(cfg, model_path: str, tokenizer):
    """The model as the run will train it, on the meta device: shapes and counts without loading weights."""
    import dataclasses

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(model_path, e) from None
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
        except ValueError as e:
            raise _load_error(model_path, e) from None
        match_vocab(model, tokenizer, mean_init=False)  # meta tensors: shapes only
        # quantization and data-dependent inits do not change which parameters train
        plain = dataclasses.replace(cfg, quantization_bit=None, init_lora_weights=True, pissa_init=False)
        return make_trainable(model, plain, weights=False)


def shipped_code(model_path: str) -> str | None:
    """The code a local model folder asks to run (config.json's auto_map), if any."""
    import json

    f = Path(str(model_path)) / "config.json"
    try:
        auto_map = json.loads(f.read_text(encoding="utf-8")).get("auto_map") if f.exists() else None
    except (OSError, ValueError):
        return None
    return ", ".join(sorted(set(auto_map.values()) if isinstance(auto_map, dict) else [])) or None


def safe_weights(model_path: str, allow_pickle: bool = False) -> dict:
    """from_pretrained keywords that load safetensors only, unless pickled weights are allowed; a local folder
    holding only pickled weights is refused with what to do."""
    if allow_pickle:
        return {}
    folder = Path(str(model_path))
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and \
            any(folder.glob(p) for p in ("*.bin", "*.pt", "*.pth", "*.ckpt")):
        raise ModelError(f"{model_path}: its weights are pickled (.bin/.pt), and unpickling can run code hidden in "
                         "the file; convert them to safetensors, or set allow_pickle: true if you trust the source")
    return {"use_safetensors": True}


REMOTE_CODE_ADVICE = ("which ftkit does not run unless told; read it, then set trust_remote_code: true if you "
                      "trust its source")


def _load_error(model_path: str, e: Exception) -> ModelError:
    if "trust_remote_code" in str(e):
        return ModelError(f"{model_path}: the model ships its own code, {REMOTE_CODE_ADVICE}")
    if "Unrecognized configuration class" in str(e):
        return ModelError(f"{model_path}: model type {model_type(model_path)!r} is not a causal (decoder-only) "
                          "language model that transformers' AutoModelForCausalLM can load; ftkit fine-tunes those "
                          "(`ftkit models` lists the verified ones)")
    return ModelError(f"{model_path}: cannot load the model ({_first_line(e)})")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
