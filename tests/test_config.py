from pathlib import Path

import pytest

from ftkit.config import RunConfig, help_text, parse_overrides, parse_yaml
from ftkit.errors import ConfigError

SEED_LORA_FLAGS = ("--stage sft --model_name_or_path meta-llama/Llama-2-7b-hf --dataset formatted_data "
                   "--template default --lora_target q_proj,v_proj --per_device_train_batch_size 8 "
                   "--gradient_accumulation_steps 4 --learning_rate 2e-5 --max_grad_norm 0.5 --val_size 0.1 "
                   "--max_samples 1000 --fp16 --output_dir outputs/llama2-lora").split()

SEED_QLORA_YAML = """
model_name_or_path: tiny
dataset: demo
quantization_bit: 4
lora_config:
  r: 64
  target_modules: ["q_proj", "k_proj"]
train:
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 16
"""


def test_seed_cli_flags_parse_into_flat_keys():
    cfg = RunConfig.from_any({}, parse_overrides(SEED_LORA_FLAGS))
    assert cfg.lora_targets == ["q_proj", "v_proj"]
    assert cfg.learning_rate == 2e-5 and isinstance(cfg.learning_rate, float)  # YAML reads 2e-5 as a string
    assert cfg.fp16 is True and cfg.val_size == 0.1 and cfg.max_samples == 1000
    assert cfg.gradient_accumulation_steps == 4 and cfg.run_dir == Path("outputs/llama2-lora")


def test_seed_grouped_yaml_maps_onto_flat_keys(tmp_path):
    path = tmp_path / "qlora.yaml"
    path.write_text(SEED_QLORA_YAML)
    cfg = RunConfig.from_any(path)
    assert (cfg.quantization_bit, cfg.lora_rank, cfg.lora_targets) == (4, 64, ["q_proj", "k_proj"])
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 16)


def test_three_spellings_give_one_config(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("model_name_or_path: tiny\ndataset: demo\nlora_rank: 64\nlora_target: q_proj,k_proj\n"
                    "quantization_bit: 4\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 16\n")
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text(SEED_QLORA_YAML)
    flags = RunConfig.from_any({}, ["--dataset", "demo", "--quantization_bit", "4", "lora_rank=64",
                                    "--lora_target=q_proj,k_proj", "per_device_train_batch_size=2",
                                    "--gradient_accumulation_steps", "16"])
    a, b = RunConfig.from_any(flat), RunConfig.from_any(grouped)
    assert a.lora_targets == b.lora_targets == flags.lora_targets
    for key in ("quantization_bit", "lora_rank", "per_device_train_batch_size", "gradient_accumulation_steps"):
        assert getattr(a, key) == getattr(b, key) == getattr(flags, key), key


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: demo\nlearning_rate: 1.0e-4\n")
    assert RunConfig.from_any(path, ["learning_rate=3e-4"]).learning_rate == 3e-4


def test_bare_flag_is_true_and_flag_before_flag():
    assert parse_overrides(["--fp16", "--packing", "--seed", "3"]) == {"fp16": True, "packing": True, "seed": 3}


def test_every_problem_reported_at_once_with_suggestions():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"dataset": "demo", "lerning_rate": 1e-4, "per_device_train_batch_size": "big",
                             "quantization_bit": 4, "finetuning_type": "full", "learning_rate": -1,
                             "stage": "ppo"})
    text = str(e.value)
    assert "lerning_rate: unknown key; did you mean learning_rate?" in text
    assert "per_device_train_batch_size: expected int, got 'big'" in text
    assert "QLoRA needs finetuning_type: lora" in text
    assert "learning_rate: must be positive" in text
    assert "stage: 'ppo' is not one of pt, sft, rm, dpo, kto, grpo (PPO: ftkit does not train with PPO" in text
    assert len(e.value.problems) == 5


@pytest.mark.parametrize("bad, expect", [
    ({"quantization_bit": 3}, "quantization_bit: 3 is not supported"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size: must be at least 1"),
    ({"max_steps": 0}, "max_steps: 0 would train nothing"),
    ({"finetuning_type": "lorra"}, "finetuning_type: 'lorra' is not one of"),
    ({"flash_attn": "fa3"}, "flash_attn: 'fa3' is not one of"),
    ({"fp16": True, "bf16": True}, "choose one mixed precision"),
    ({"val_size": 1.5}, "val_size: 1.5 is neither"),
    ({"num_train_epochs": 0}, "num_train_epochs: must be positive"),
    ({"fp16": "maybe"}, "fp16: expected bool, got 'maybe'"),
])
def test_single_bad_values(bad, expect):
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_dict({"dataset": "demo", **bad})


def test_dataset_is_required():
    with pytest.raises(ConfigError, match="dataset: missing"):
        RunConfig.from_dict({})


def test_training_arguments_pass_through_and_are_checked():
    cfg = RunConfig.from_dict({"dataset": "demo", "optim": "adamw_torch", "weight_decay": 0.01,
                               "ddp_find_unused_parameters": False})
    assert cfg.extra == {"optim": "adamw_torch", "weight_decay": 0.01, "ddp_find_unused_parameters": False}
    with pytest.raises(ConfigError, match="weight_decai: unknown key; did you mean weight_decay"):
        RunConfig.from_dict({"dataset": "demo", "weight_decai": 0.01})


def test_resolved_yaml_reproduces_the_config(tmp_path):
    cfg = RunConfig.from_dict({"dataset": "demo", "lora_rank": 4, "optim": "sgd", "learning_rate": "5e-4"})
    cfg.save(tmp_path / "run.yaml")
    again = RunConfig.from_any(tmp_path / "run.yaml")
    assert again == RunConfig.from_dict({**cfg.to_dict()}) and again.to_dict() == cfg.to_dict()
    assert again.extra == {"optim": "sgd"} and again.output_dir == "outputs/tiny-lora"


def test_yaml_errors_name_the_line_and_tabs():
    with pytest.raises(ConfigError, match=r"cell: line 2: .*tabs"):
        parse_yaml("dataset: demo\n\tlora_rank: 8\n", "cell")
    with pytest.raises(ConfigError, match="line 2"):
        parse_yaml("dataset: demo\nlora_rank: 8: 9\n", "cell")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_yaml("- a\n- b\n")


def test_help_lists_every_key_with_its_doc():
    text = help_text()
    for name, f in RunConfig.fields().items():
        assert f"--{name} " in text and f.metadata["help"] in text
