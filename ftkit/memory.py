"""A memory estimate for a run, before it starts: weights + trainable state + activations + logits.

The figures are what the accelerator (or, on CPU, the process) must hold at the
peak of a training step, for the given batch, sequence length, method and
precision. They follow the usual accounting for decoder blocks (tensors kept
for the backward pass), checked against measured peaks on CPU in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MiB = 2**20


@dataclass(frozen=True)
class Estimate:
    weights: int
    trainable_state: int   # gradients + AdamW moments (+ fp32 copies of trainable weights in half precision)
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.logits

    def text(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / MiB:,.0f}"
                          for name in ("weights", "trainable_state", "activations", "logits"))
        return f"~{self.total / MiB:,.0f} MiB at peak ({parts.replace('_', ' ')} MiB)"


def model_counts(model) -> dict[str, int]:
    """Parameter counts that decide memory: all, trainable, and those in quantizable linear layers."""
    import torch

    head = model.get_output_embeddings()
    quantizable = sum(m.weight.numel() * (2 if type(m).__name__ == "Linear4bit" else 1)
                      for name, m in model.named_modules()
                      if (isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear4bit", "Linear8bitLt"))
                      and m is not head and "lora_" not in name)
    # LoRA keeps two more tensors the size of each adapted layer's output per token for the backward pass
    lora_out = sum(m.base_layer.out_features for m in model.modules()
                   if hasattr(m, "lora_A") and hasattr(getattr(m, "base_layer", None), "out_features"))
    trained_layers = _trained_layers(model)
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)  # 4-bit packs two values a byte
        total += n
        trainable += n if p.requires_grad else 0
    return {"total": total, "trainable": trainable, "quantizable": quantizable, "lora_out": lora_out,
            "trained_layers": trained_layers}


def _trained_layers(model) -> int:
    """Decoder blocks from the lowest one holding a trainable parameter up: only those keep activations."""
    from ftkit.model import layer_stack

    blocks = layer_stack(model) or []
    trained = [i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())]
    return len(blocks) - trained[0] if trained else 0


def estimate(cfg, model_config, counts: dict[str, int], batch: int, seq_len: int) -> Estimate:
    """Peak memory of one training step of `batch` sequences of `seq_len` tokens."""
    text = model_config.get_text_config()
    h = text.hidden_size
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    inter = getattr(text, "intermediate_size", None) or 4 * h
    vocab = text.vocab_size
    half = cfg.bf16 or cfg.fp16 or cfg.pure_bf16
    width = 2 if half else 4  # activations; frozen LoRA bases load in this precision, trained weights stay fp32
    trained_width = 2 if cfg.pure_bf16 else 4  # ... unless everything is bf16

    quantized = counts["quantizable"] if cfg.quantization_bit else 0
    # nf4/fp4: half a byte a value plus block scales (fp32 per 64, or 8-bit per 64 + fp32 per 16k when doubled)
    bits = {4: 0.5 + (1 / 64 + 4 / 16384 if cfg.double_quantization else 4 / 64), 8: 1.0}.get(cfg.quantization_bit, 0)
    # QLoRA: peft's prepare_model_for_kbit_training turns every weight left unquantized (embeddings, head, norms)
    # to fp32
    frozen_width = 4 if cfg.quantization_bit else width
    weights = (counts["total"] - counts["trainable"] - quantized) * frozen_width + quantized * bits \
        + counts["trainable"] * trained_width

    # gradient + two AdamW moments (from the first update); 8-bit optimizers (bitsandbytes: adamw_8bit,
    # paged_adamw_8bit) keep the moments in a byte each
    moment = 1 if "8bit" in str(cfg.extra.get("optim", "")) else trained_width
    trainable_state = counts["trainable"] * (trained_width + 2 * moment)

    tokens = batch * seq_len
    attn = 2 * heads * head_dim + 4 * kv * head_dim  # q, attention output; k, v before and after rotary
    per_layer = (6 * h + attn + 4 * inter) * tokens * width  # norms, residuals, projections' inputs, MLP
    if cfg.flash_attn == "eager":
        per_layer += 2 * batch * heads * seq_len * seq_len * width  # scores and probabilities
    kept = counts.get("trained_layers", layers) or layers
    per_layer += 2 * counts.get("lora_out", 0) // layers * tokens * width
    if cfg.gradient_checkpointing:
        # each block's input is kept; in backward a recomputed block and the one before it are live together
        activations = kept * h * tokens * width + 2 * per_layer
    else:
        activations = kept * per_layer
    if cfg.extra.get("use_liger_kernel"):
        # Liger's fused linear cross-entropy never holds the whole logits: chunks of rows (its chunk size, a power of
        # two near tokens / ceil(vocab / hidden)), each chunk's fp32 logits and their gradient
        chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(vocab / h))))))
        logits = 2 * min(chunk, tokens) * vocab * 4
    else:
        logits = 3 * tokens * vocab * 4  # logits, their fp32 log-softmax and its gradient
    return Estimate(int(weights), int(trainable_state), int(activations), int(logits))


def available() -> int:
    """Bytes of RAM available to a run on this machine (a GPU's memory is model.Gpu.memory)."""
    import psutil

    return psutil.virtual_memory().available


def weight_count(model_path) -> int:
    """How many numbers a model folder's safetensors weights hold, read from their headers (no weights load)."""
    import math
    from pathlib import Path

    from safetensors import safe_open

    total = 0
    for file in Path(model_path).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                total += math.prod(shape)
    return total


def free_disk(path) -> int:
    """Bytes free on the filesystem that holds `path` (or the nearest folder of it that exists)."""
    import shutil
    from pathlib import Path

    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_room(what: str, ram: int, disk: int, where, advice: str) -> None:
    """Refuse, with the numbers, work that needs more RAM or disk than is free; nothing is started."""
    from ftkit.errors import ModelError

    free_ram, free = available(), free_disk(where)
    if ram > free_ram:
        raise ModelError(f"{what} needs ~{_size(ram)} of RAM, {_size(free_ram)} free: {advice}")
    if disk > free:
        raise ModelError(f"{what} needs ~{_size(disk)} of disk at {where}, {_size(free)} free: free some space or "
                         "write elsewhere")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
