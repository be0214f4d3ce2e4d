"""peft variants, added tokens, precision and attention options: each trains, saves, and merges to the model it
trained (the merged folder's logits equal the trained in-memory model's)."""
import pytest
import torch

import ftkit
from conftest import base_config
from ftkit.config import RunConfig
from ftkit.errors import ConfigError

pytestmark = pytest.mark.slow


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def merged_equals_trained(run):
    from transformers import AutoModelForCausalLM

    merged = ftkit.merge(run.adapter_dir, console=False)
    ids = torch.randint(3, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    return torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(merged), ids), _logits(run.model, ids),
                          atol=1e-4)


@pytest.mark.parametrize("extra", [
    {"use_dora": True},
    {"use_rslora": True, "lora_rank": 16},
    {"pissa_init": True},
    {"init_lora_weights": "olora"},
    {"init_lora_weights": "gaussian"},
    {"lora_dropout": 0.1},
    {"modules_to_save": "embed_tokens"},
    {"additional_target": "embed_tokens"},
], ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_lora_variants_train_and_merge_to_the_trained_model(workdir, extra):
    run = ftkit.train(base_config(workdir / "v", max_steps=4, **extra), console=False)
    config = run.model.peft_config["default"]
    if extra.get("use_dora"):
        assert config.use_dora and any("lora_magnitude_vector" in n for n, _ in run.model.named_parameters())
    if "embed_tokens" in str(extra):
        assert "embed_tokens" in config.modules_to_save
    assert merged_equals_trained(run)


def test_new_special_tokens_grow_and_train_the_embeddings(workdir):
    import json

    data = [{"conversation": [{"role": "user", "content": "Think first."},
                              {"role": "assistant", "content": "<think>short</think> Done."}]}] * 16
    (workdir / "think.json").write_text(json.dumps(data))
    run = ftkit.train(base_config(workdir / "tok", dataset=str(workdir / "think.json"), max_steps=4,
                                  new_special_tokens="<think>,</think>"), console=False)
    tok = run.tokenizer
    ids = tok("<think>", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and ids[0] >= 2885  # one new token, past the original vocabulary
    emb = run.model.get_input_embeddings()
    assert emb.weight.shape[0] == len(tok)
    saved = run.adapter_dir / "adapter_model.safetensors"
    from safetensors import safe_open

    with safe_open(saved, "pt") as f:
        assert any("embed_tokens" in k for k in f.keys()), "the grown embedding table is saved with the adapter"
    assert merged_equals_trained(run)
    answer = ftkit.generate("tiny", "Think first.", adapter=run.adapter_dir, max_new_tokens=5)
    assert answer == ftkit.generate(run.output_dir / "merged", "Think first.", max_new_tokens=5)  # grown vocabulary
    # loads with the adapter as it does merged


def test_gradient_checkpointing_gives_the_same_training(workdir):
    plain = ftkit.train(base_config(workdir / "a", max_steps=3), console=False)
    ckpt = ftkit.train(base_config(workdir / "b", max_steps=3, gradient_checkpointing=True), console=False)
    assert [l for _, l in ckpt.losses] == pytest.approx([l for _, l in plain.losses], abs=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_choices_agree(workdir, attn):
    run = ftkit.train(base_config(workdir / attn, max_steps=2, flash_attn=attn), console=False)
    assert run.model.config._attn_implementation == attn
    ref = ftkit.train(base_config(workdir / "auto", max_steps=2), console=False)
    assert [l for _, l in run.losses] == pytest.approx([l for _, l in ref.losses], abs=1e-4)


def test_fa2_without_cuda_falls_back_and_says_so(workdir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    run = ftkit.train(base_config(workdir / "fa2", max_steps=1, flash_attn=True), console=False)
    assert "fa2 unavailable (no CUDA device)" in run.metrics[0]["note"]


def test_bad_lora_init_is_a_config_error():
    with pytest.raises(ConfigError, match="init_lora_weights: 'pisa'"):
        RunConfig.from_dict({"dataset": "demo", "init_lora_weights": "pisa"})


@pytest.mark.parametrize("init", ["pissa_niter_4", "olora"])
def test_base_changing_init_survives_overwrite_output_dir(workdir, init):
    """The initial adapter (lora_init/) is read back at the final save: clearing a replaced run must not take it,
    in a fresh folder or over a run of the same kind."""
    for _ in range(2):
        run = ftkit.train(base_config(workdir / "o", max_steps=2, init_lora_weights=init, overwrite_output_dir=True),
                          console=False)
        assert (run.adapter_dir / "adapter_model.safetensors").exists() and (workdir / "o" / "lora_init").is_dir()
    assert merged_equals_trained(run)
