"""Padding-free packing: a batch's examples end to end in one row, kept apart by position_ids."""
import pytest
import torch

import ftkit
from conftest import DATA, base_config
from ftkit.data import encode, load_conversations
from ftkit.templates import get_template
from ftkit.training import collator


def test_each_packed_example_scores_as_if_alone(tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from ftkit.model import resolve

    model = AutoModelForCausalLM.from_pretrained(resolve("tiny")).eval()
    examples, _ = encode(load_conversations(DATA / "demo_zh_en.json")[:6], tiny_tokenizer,
                         get_template("auto", tiny_tokenizer), 256)
    batch = collator(tiny_tokenizer, packed=True)(examples)
    assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples)) and "attention_mask" not in batch

    def per_token(logits, labels):
        return torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none", ignore_index=-100)

    with torch.no_grad():
        packed = per_token(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 use_cache=False).logits, batch["labels"])
        start = 0
        for e in examples:
            n = len(e["input_ids"])
            alone = per_token(model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits,
                              torch.tensor([e["labels"]]))
            assert torch.allclose(packed[start:start + n - 1], alone, atol=1e-4)
            start += n
    assert (batch["labels"][0, [0, len(examples[0]["input_ids"])]] == -100).all(), "no label across examples"


@pytest.mark.slow
def test_packed_training_matches_padded_training(workdir):
    padded = ftkit.train(base_config(workdir / "pad", max_steps=4, packing=False), console=False)
    packed = ftkit.train(base_config(workdir / "pack", max_steps=4, packing=True), console=False)
    assert [l for _, l in packed.losses] == pytest.approx([l for _, l in padded.losses], abs=2e-4)
    assert packed.metrics[0]["packed"] and not padded.metrics[0]["packed"]
    assert "packed without padding" in packed.metrics[0]["batch_tokens"]
    default = ftkit.train(base_config(workdir / "default", max_steps=1), console=False)
    assert default.metrics[0]["packed"], "packing is on by default where the model keeps examples apart"


@pytest.mark.slow
def test_packing_refused_where_the_model_ignores_position_ids(workdir, tiny_tokenizer):
    from arch_configs import build
    from ftkit.errors import ConfigError

    folder = build("opt", workdir / "opt", tiny_tokenizer)
    with pytest.raises(ConfigError, match="packing: opt models ignore position_ids"):
        ftkit.train(base_config(workdir / "run", model_name_or_path=str(folder), packing=True), console=False)
    run = ftkit.train(base_config(workdir / "auto", model_name_or_path=str(folder), max_steps=1), console=False)
    assert not run.metrics[0]["packed"], "the default falls back to padding"


def _scores_apart(model, tokenizer, n=5):
    """Per-token losses of n demo examples packed in one row, and each alone."""
    examples, _ = encode(load_conversations(DATA / "demo_zh_en.json")[:n], tokenizer,
                         get_template("chatml", tokenizer), 256)
    batch = collator(tokenizer, packed=True)(examples)

    def per_token(logits, labels):
        return torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], reduction="none",
                                                 ignore_index=-100)

    with torch.no_grad():
        packed = per_token(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 use_cache=False).logits, batch["labels"])
        alone = [per_token(model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits,
                           torch.tensor([e["labels"]])) for e in examples]
    starts = [0]
    for e in examples:
        starts.append(starts[-1] + len(e["input_ids"]))
    return [packed[a:b - 1] for a, b in zip(starts, starts[1:])], alone


@pytest.mark.slow
def test_per_example_attention_where_it_matches_and_sdpa_elsewhere(tmp_path, tiny_tokenizer):
    """On CPU, packed rows attend within each example (one causal sdpa call each) wherever a probe shows the
    model's own logits; every architecture that switches scores each packed example exactly as if alone."""
    from arch_configs import ARCH_CONFIGS, build
    from transformers import AutoModelForCausalLM

    from ftkit.model import PACKED_ATTENTION, packing_isolates, use_packed_attention

    switched = []
    for model_type in ARCH_CONFIGS:
        model = AutoModelForCausalLM.from_pretrained(build(model_type, tmp_path / model_type, tiny_tokenizer)).eval()
        if getattr(model.config, "_attn_implementation", None) != "sdpa" or not packing_isolates(model):
            continue
        if use_packed_attention(model, max_len=256):
            assert model.config._attn_implementation == PACKED_ATTENTION
            switched.append(model_type)
            for packed, alone in zip(*_scores_apart(model, tiny_tokenizer)):
                assert torch.allclose(packed, alone, atol=1e-4), model_type
        else:
            assert model.config._attn_implementation == "sdpa", model_type
    assert {"llama", "qwen2", "qwen3", "mistral"} <= set(switched), switched
    window = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    window.config.sliding_window = 128  # shorter than the examples may be: the per-example path would ignore it
    assert not use_packed_attention(window, max_len=256) and window.config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_training_takes_the_per_example_path_with_the_same_losses(workdir, monkeypatch):
    import ftkit.model as M

    fast = ftkit.train(base_config("out/fast", max_steps=4), console=False)
    assert fast.model.base_model.model.config._attn_implementation == M.PACKED_ATTENTION
    monkeypatch.setattr(M, "use_packed_attention", lambda model, max_len: False)
    masked = ftkit.train(base_config("out/masked", max_steps=4), console=False)
    assert masked.model.base_model.model.config._attn_implementation == "sdpa"
    assert [loss for _, loss in fast.losses] == pytest.approx([loss for _, loss in masked.losses], rel=1e-5)
