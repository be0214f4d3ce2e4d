"""examples/ are generated from the schema, parse, and (the tiny ones) train."""
import sys

import pytest

import ftkit
from conftest import REPO
from ftkit.config import RunConfig

sys.path.insert(0, str(REPO / "scripts"))
import make_examples  # noqa: E402

TRAIN_EXAMPLES = sorted(make_examples.EXAMPLES)


def test_examples_are_up_to_date():
    for name, text in make_examples.render_all().items():
        assert (REPO / "examples" / name).read_text(encoding="utf-8") == text, \
            f"examples/{name} is stale: run python scripts/make_examples.py"


@pytest.mark.parametrize("name", TRAIN_EXAMPLES)
def test_example_configs_validate(name):
    cfg = RunConfig.from_any(REPO / "examples" / name)
    assert cfg.dataset == ("demo_dpo" if cfg.stage == "dpo" else "demo")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAIN_EXAMPLES
                                  if make_examples.EXAMPLES[n][1]["model_name_or_path"] == "tiny"])
def test_tiny_examples_train(name, workdir):
    run = ftkit.train(RunConfig.from_any(REPO / "examples" / name, ["max_steps=2", "threads=1", "val_size=0",
                                                                   f"output_dir={workdir / 'out'}"]), console=False)
    assert len(run.losses) >= 1 and run.adapter_dir.exists()


@pytest.mark.slow
def test_merge_and_inference_yaml(workdir):
    from ftkit.cli import main

    ftkit.train(RunConfig.from_any(REPO / "examples/lora_sft.yaml", ["max_steps=2", "threads=1", "val_size=0"]),
                console=False)
    assert main(["merge", str(REPO / "examples/merge.yaml")]) == 0
    assert (workdir / "outputs/tiny-lora/merged/model.safetensors").exists()
    assert main(["chat", str(REPO / "examples/inference.yaml"), "--prompt", "hi", "--max_new_tokens", "4"]) == 0


def test_notebooks_match_their_sources():
    import json
    import runpy

    from make_notebook import notebook

    for src in sorted((REPO / "notebooks").glob("*.py")):
        built = notebook(runpy.run_path(str(src))["CELLS"])
        committed = json.loads(src.with_suffix(".ipynb").read_text(encoding="utf-8"))
        assert committed == built, f"{src.name}: rebuild with scripts/make_notebook.py"


def test_notebooks_run_the_kernels_ftkit():
    """A shell cell's bare `ftkit` is whatever comes first on PATH (another install, or none in a kernel started
    from a virtualenv that was never activated): notebooks call `{sys.executable} -m ftkit` or the Python API."""
    import re
    import runpy

    shell = re.compile(r"^\s*(!|%%(?:bash|sh|script)\b|%sx\b|%system\b)")
    for src in sorted((REPO / "notebooks").glob("*.py")):
        for kind, cell in runpy.run_path(str(src))["CELLS"]:
            lines = [line for line in cell.splitlines() if kind == "code" and shell.match(line)]
            for line in lines:
                assert not re.search(r"(^|[\s!])ftkit\b(?!\.)", line.replace("-m ftkit", "")), f"{src.name}: {line}"
                assert "ftkit" not in line or "{sys.executable} -m ftkit" in line, f"{src.name}: {line}"


def test_demo_data_and_corpus_match_their_generator():
    import json

    import make_demo_data

    committed = json.loads((REPO / "data" / "demo_zh_en.json").read_text(encoding="utf-8"))
    assert committed == make_demo_data.build(), "rebuild with python scripts/make_demo_data.py"
    assert (REPO / "data" / "corpus" / "glossary.txt").read_text(encoding="utf-8") == make_demo_data.corpus_text()


def test_deepspeed_and_fsdp_examples_validate_without_a_gpu(workdir):
    import importlib.util
    import json

    from ftkit.config import RunConfig
    from ftkit.errors import ConfigError
    from ftkit.planning import check_run, training_arguments

    for name in ("ds_z2_config.json", "ds_z3_config.json", "ds_z3_offload_config.json"):
        ds = json.loads((REPO / "examples/deepspeed" / name).read_text())
        assert ds["zero_optimization"]["stage"] in (2, 3) and ds["train_micro_batch_size_per_gpu"] == "auto"
    ds3 = RunConfig.from_any(REPO / "examples/llama3_lora_sft_ds3.yaml",
                             ["model_name_or_path=tiny", f"deepspeed={REPO / 'examples/deepspeed/ds_z3_config.json'}"])
    assert ds3.extra["deepspeed"].endswith("ds_z3_config.json")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="deepspeed: the deepspeed package is not installed"):
            check_run(ds3)
    (workdir / "bad.json").write_text('{"zero_optimization": {"stage": 3,}}')
    (workdir / "five.json").write_text('{"zero_optimization": {"stage": 5}}')
    for value, pattern in [("missing.json", r"deepspeed: missing\.json is not a file"),
                           ("bad.json", r"deepspeed: bad\.json: line 1: invalid JSON"),
                           ("five.json", r"zero_optimization\.stage 5 is not 0, 1, 2 or 3")]:
        with pytest.raises(ConfigError, match=pattern):
            check_run(RunConfig.from_dict({"dataset": "demo", "deepspeed": value}))
    fsdp = RunConfig.from_any(REPO / "examples/llama3_full_sft_fsdp.yaml", ["model_name_or_path=tiny"])
    args = training_arguments(fsdp, max_steps=10, evaluate=False)
    assert args.fsdp and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
