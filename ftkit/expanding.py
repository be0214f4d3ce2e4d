"""LLaMA Pro block expansion: a model with copies of some of its decoder blocks inserted, each starting as an
identity, so that training only the new blocks (use_llama_pro) adds knowledge without overwriting the old.

After every len(layers) / num_expand original blocks, a copy of the last of them is inserted with its output
projections (attention's and the MLP's, which write into the residual stream) zeroed: the copy adds nothing
until it trains. This is the layout LLaMA-Factory's scripts/llama_pro.py writes, so its use_llama_pro configs
(freeze_trainable_layers: num_expand) pick the same blocks. The expanded model is checked to give the original's
logits before it is saved.
"""
from __future__ import annotations

import copy
from pathlib import Path

from ftkit.errors import ConfigError, ModelError
from ftkit.folders import partial_dir, replace_dir
from ftkit.model import quiet

# the linear layers through which a block writes into the residual stream, by the names architectures give them
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "c_proj", "dense", "dense_4h_to_h", "w2", "fc2")


@quiet()
def expand(model: str, num_expand: int, out: str | Path | None = None, trust_remote_code: bool = False,
           allow_pickle: bool = False) -> Path:
    """Write `model` with `num_expand` identity blocks added (LLaMA Pro) to `out` (default models/NAME-pro);
    returns the folder. Train it with finetuning_type: freeze, freeze_trainable_layers: num_expand,
    use_llama_pro: true."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftkit import model as M

    path = M.resolve(model)
    out = Path(out) if out else Path("models") / f"{Path(str(model).rstrip('/')).name}-pro"
    tokenizer = M.load_tokenizer(path, trust_remote_code=trust_remote_code)
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=trust_remote_code,
                                                   **M.safe_weights(path, allow_pickle))
    except (OSError, ValueError) as e:
        raise M._load_error(path, e) from None
    net.eval()
    layers = M.decoder_layers(net)
    count = len(layers)
    if num_expand < 1 or count % num_expand:
        raise ConfigError(f"num_expand: {num_expand} must be a positive divisor of the model's {count} layers "
                          "(the copies go in evenly, one after every len(layers) / num_expand)")
    probe = torch.tensor([tokenizer("Block expansion keeps the model as it was. 扩展后模型不变。").input_ids])
    with torch.no_grad():
        before = net(input_ids=probe).logits.float()

    split, blocks, origins = count // num_expand, [], []
    for i, layer in enumerate(layers):
        blocks.append(layer)
        origins.append(i)
        if (i + 1) % split == 0:
            blocks.append(_identity_copy(layer))
            origins.append(i)
    for index, block in enumerate(blocks):  # attention modules know their place (the KV cache is indexed by it)
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    del layers[:]
    layers.extend(blocks)
    _expand_config(net.config, count, origins)

    gap = _gap(net, probe, before)
    if gap is not None:
        raise ModelError(f"{model}: the added blocks do not leave the model's output unchanged (logits differ by "
                         f"{gap:.3g}); block expansion knows blocks whose outputs go through "
                         f"{', '.join(OUTPUT_PROJECTIONS)}")
    tmp = partial_dir(out)
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del net, layers, blocks
        # what was saved loads as the same model (the config describes the new layout)
        gap = _gap(AutoModelForCausalLM.from_pretrained(tmp, dtype="auto", trust_remote_code=trust_remote_code),
                   probe, before)
        if gap is not None:
            raise ModelError(f"{model}: the expanded model, saved and loaded again, gives other logits (by "
                             f"{gap:.3g}); its config could not describe the new layout")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return out


def _gap(net, probe, before) -> float | None:
    """How far the model's logits on the probe are from `before`, when beyond rounding; None when they agree."""
    import torch

    with torch.no_grad():
        gap = (net.eval()(input_ids=probe).logits.float() - before).abs().max().item()
    return gap if gap > 1e-4 * before.abs().max().clamp(min=1.0).item() else None


def _identity_copy(layer):
    """A copy of a decoder block whose output projections are zero: it passes the residual stream through."""
    block = copy.deepcopy(layer)
    zeroed = 0
    for name, module in block.named_modules():
        if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS and hasattr(module, "weight"):
            module.weight.data.zero_()
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
            zeroed += 1
    if not zeroed:
        raise ModelError(f"{type(layer).__name__}: no output projection ({', '.join(OUTPUT_PROJECTIONS)}) found "
                         "to zero; this architecture cannot be block-expanded here")
    return block


def _expand_config(config, count: int, origins: list[int]) -> None:
    """num_hidden_layers, and every per-layer list of the config (layer_types, ...), for the new layout."""
    text = config.get_text_config()
    for key, value in list(vars(text).items()):
        if isinstance(value, list) and len(value) == count:
            setattr(text, key, [value[i] for i in origins])
    text.num_hidden_layers = len(origins)
