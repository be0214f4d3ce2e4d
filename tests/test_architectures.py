"""Every verified architecture, end to end on a 2-layer random model: LoRA (all), merge, generate."""
import pytest
import torch

import ftkit
from arch_configs import ARCH_CONFIGS, build
from conftest import base_config
from ftkit.architectures import DEFAULT_TEMPLATES, ROUTER_NAMES
from ftkit.errors import ConfigError, ModelError

MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"}


def test_matrix_covers_every_listed_architecture():
    assert set(ARCH_CONFIGS) == set(DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) >= 25


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(ARCH_CONFIGS))
def test_architecture_lora_merge_generate(model_type, tmp_path, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = build(model_type, tmp_path / "base", tiny_tokenizer)
    run = ftkit.train(base_config(tmp_path / "run", model_name_or_path=str(folder), max_steps=3, max_samples=32,
                                  cutoff_len=64, learning_rate=1e-2), console=False)
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert not any(f".{r}." in n for n in trained for r in ROUTER_NAMES), "routers stay frozen"
    assert not any("lm_head" in n or "embed" in n for n in trained)
    if model_type in MOE:
        assert any("experts" in n for n in trained), "LoRA reaches the experts"
    note = run.metrics[0]["note"] or ""
    assert ("LoRA not applied to" in note) == (model_type == "deepseek_v3"), note
    assert any("attn" in n or "attention" in n for n in trained)

    merged = ftkit.merge(run.adapter_dir, console=False)  # merge() checks its own probe batch too
    ids = torch.randint(3, len(tiny_tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        reference = PeftModel.from_pretrained(base, run.adapter_dir).eval()(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
    assert torch.allclose(got, reference, atol=1e-4)
    answer = ftkit.generate(merged, "Who are you?", max_new_tokens=4)
    assert answer == ftkit.generate(str(folder), "Who are you?", adapter=run.adapter_dir, max_new_tokens=4)


def test_router_only_when_asked(tmp_path, tiny_tokenizer):
    from ftkit.config import RunConfig
    from ftkit.model import load_model, lora_config

    folder = build("qwen2_moe", tmp_path / "moe", tiny_tokenizer)
    model = load_model(RunConfig.from_dict({"dataset": "demo"}), str(folder))
    everything = lora_config(model, RunConfig.from_dict({"dataset": "demo"}))
    assert "shared_expert_gate" not in everything.target_modules
    assert set(everything.target_parameters) == {"experts.gate_up_proj", "experts.down_proj"}
    asked = lora_config(model, RunConfig.from_dict({"dataset": "demo", "lora_target": "q_proj,shared_expert_gate"}))
    assert set(asked.target_modules) == {"q_proj", "shared_expert_gate"} and not asked.target_parameters
    with pytest.raises(ConfigError, match=r"it has: .*gate_up_proj \(experts\)"):
        lora_config(model, RunConfig.from_dict({"dataset": "demo", "lora_target": "w1"}))


def test_unsupported_architecture_fails_clearly(tmp_path, tiny_tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=len(tiny_tokenizer), d_model=32, d_ff=64, num_layers=1,
                                        num_heads=2, d_kv=16)).save_pretrained(tmp_path / "t5")
    tiny_tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelError, match="model type 't5' is not a causal"):
        ftkit.train(base_config(tmp_path / "run", model_name_or_path=str(tmp_path / "t5")), console=False)


def test_auto_falls_back_to_the_family_template(tiny_tokenizer):
    from ftkit.templates import Template, TokenizerTemplate, get_template

    saved = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = None
        t = get_template("auto", tiny_tokenizer, "qwen2")
        assert isinstance(t, Template) and t.name == "qwen"
        with pytest.raises(ConfigError, match="auto needs a tokenizer with a chat_template"):
            get_template("auto", tiny_tokenizer, "cohere")
    finally:
        tiny_tokenizer.chat_template = saved
    assert isinstance(get_template("auto", tiny_tokenizer, "qwen2"), TokenizerTemplate)
