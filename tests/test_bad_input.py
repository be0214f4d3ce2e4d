"""Thirty-odd mistakes a workshop makes, each through the three faces: the Python API, the `ftkit` command and
the `%%finetune` magic. Every one must give a short message naming the culprit (file, line or record, key) and
what to do, with no traceback on the command line or in the notebook, and must not start training."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import DATA, base_config
from IPython.core.error import UsageError

import ftkit
from ftkit import cli
from ftkit.errors import FtkitError

DEMO = [{"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]


def conv(*turns):
    return [{"conversation": [{"role": r, "content": c} for r, c in turns]}]


# name -> (files to write, config changes, expected message pattern)
CASES = {
    "malformed json": ({"d.json": '[{"conversation": [\n'}, {"dataset": "d.json"}, r"d\.json: line \d+: invalid JSON"),
    "malformed jsonl line": ({"d.jsonl": json.dumps(DEMO[0]) + "\n" + json.dumps(DEMO[0]) + "\n{oops\n"},
                             {"dataset": "d.jsonl"}, r"d\.jsonl: line 3: invalid JSON"),
    "empty file": ({"d.json": ""}, {"dataset": "d.json"}, r"d\.json: the file is empty"),
    "no records": ({"d.json": "[]"}, {"dataset": "d.json"}, r"d\.json: no records"),
    "not a list": ({"d.json": '{"a": 1}'}, {"dataset": "d.json"}, r"d\.json: expected a JSON list of records"),
    "mixed formats": ({"d.json": json.dumps(DEMO + [{"instruction": "a", "input": "", "output": "b"}])},
                      {"dataset": "d.json"}, r"d\.json.*record 1"),
    "no assistant turn": ({"d.json": json.dumps(DEMO + conv(("user", "Hi")))}, {"dataset": "d.json"},
                          r"record 1.*(no assistant turn|ends with a user turn)"),
    "roles out of order": ({"d.json": json.dumps(DEMO + conv(("assistant", "a"), ("user", "b")))},
                           {"dataset": "d.json"}, r"record 1.*expected a user turn, got assistant"),
    "unknown role": ({"d.json": json.dumps(DEMO + conv(("user", "a"), ("bot", "b")))}, {"dataset": "d.json"},
                     r"record 1.*unknown role 'bot'"),
    "non-string content": ({"d.json": json.dumps(DEMO + [{"conversation": [{"role": "user", "content": 3},
                                                                         {"role": "assistant", "content": "x"}]}])},
                           {"dataset": "d.json"}, r"record 1.*content must be text, got int"),
    "record not an object": ({"d.json": json.dumps(DEMO + ["just text"])}, {"dataset": "d.json"}, r"record 1"),
    "unsupported file type": ({"d.docx": "hello"}, {"dataset": "d.docx"}, r"d\.docx: unsupported file type \.docx"),
    "raw text for sft": ({"d.txt": "hello"}, {"dataset": "d.txt"}, r"d\.txt: raw text .* set stage: pt"),
    "dataset name not in dataset_info": ({}, {"dataset": "my_set"},
                                         r"dataset: 'my_set' is neither a file nor a name in dataset_info\.json"),
    "dataset_info entry without file": ({"data/dataset_info.json": '{"mine": {"formatting": "alpaca"}}'},
                                        {"dataset": "mine"}, r"entry 'mine' has no file_name"),
    "unknown key": ({}, {"lerning_rate": 1e-4}, r"lerning_rate.*did you mean learning_rate"),
    "wrong type": ({}, {"lora_rank": "eight"}, r"lora_rank: expected int, got 'eight'"),
    "negative learning rate": ({}, {"learning_rate": -1e-4}, r"learning_rate: must be positive"),
    "zero batch": ({}, {"per_device_train_batch_size": 0}, r"per_device_train_batch_size: must be at least 1"),
    "zero steps": ({}, {"max_steps": 0}, r"max_steps: 0 would train nothing"),
    "zero epochs": ({}, {"max_steps": -1, "num_train_epochs": 0}, r"num_train_epochs: must be positive"),
    "3-bit": ({}, {"quantization_bit": 3}, r"quantization_bit: 3"),
    "4-bit full tuning": ({}, {"quantization_bit": 4, "finetuning_type": "full"},
                          r"QLoRA needs finetuning_type: lora"),
    "unknown method": ({}, {"finetuning_type": "qlora"}, r"finetuning_type"),
    "unsupported stage": ({}, {"stage": "ppo"}, r"stage: 'ppo' is not one of pt, sft, rm, dpo, kto, grpo"),
    "val_size too big": ({}, {"val_size": 1.5}, r"val_size: 1\.5"),
    "unknown attention": ({}, {"flash_attn": "fa3"}, r"flash_attn: 'fa3' is not one of"),
    "TrainingArguments refuses": ({}, {"optim": "adamw_fake"}, r"TrainingArguments refused the config.*adamw_fake"),
    "lora_target matches nothing": ({}, {"lora_target": "nonexistent_proj"}, r"nonexistent_proj.*q_proj"),
    "model folder without config.json": ({"m/tokenizer.json": "{}"}, {"model_name_or_path": "m"},
                                         r"m.*config\.json"),
    "model folder without tokenizer": ("model without tokenizer", {"model_name_or_path": "m"},
                                      r"cannot load a tokenizer.*tokenizer_name_or_path"),
    "output folder holds another run": ({"out/run/run.yaml": "dataset: demo\n"}, {},
                                        r"output_dir: out/run already holds a run.*overwrite_output_dir"),
    "unknown template": ({}, {"template": "llama4"}, r"template.*llama4"),
    "cutoff shorter than every prompt": ({}, {"cutoff_len": 3}, r"cutoff_len: 3 tokens leaves no trained token"),
    "fp16 on CPU": ({}, {"fp16": True}, r"fp16: needs a CUDA GPU"),
}
YAML_CASES = {  # cell or file text that is not valid YAML
    "tabs": ("dataset: demo\n\tmax_steps: 3\n", r"line 2.*tab"),
    "syntax error": ("dataset: demo\nlora_target: [q_proj, v_proj\n", r"line \d+"),
}
assert len(CASES) + len(YAML_CASES) >= 30


def _setup(workdir, files):
    if files == "model without tokenizer":
        from ftkit.model import resolve

        (workdir / "m").mkdir()
        for f in ("config.json", "model.safetensors", "generation_config.json"):
            if (src := (Path(resolve("tiny")) / f)).exists():
                shutil.copy(src, workdir / "m" / f)
        return
    for name, text in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text, encoding="utf-8")


def _config(changes):
    cfg = base_config("out/run", max_steps=2, dataset=str(DATA / "demo_zh_en.json"))
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("case", list(CASES))
def test_api(workdir, case):
    files, changes, pattern = CASES[case]
    _setup(workdir, files)
    with pytest.raises(FtkitError, match="(?s)" + pattern):
        ftkit.train(_config(changes), console=False)
    assert not (workdir / "out/run/adapter").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_cli(workdir, case, capsys):
    files, changes, pattern = CASES[case]
    _setup(workdir, files)
    (workdir / "run.yaml").write_text(yaml.safe_dump(_config(changes)), encoding="utf-8")
    assert cli.main(["train", "run.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftkit train: error: ") and "Traceback" not in err
    assert re.search(pattern, err, re.S), err


@pytest.fixture
def ip(workdir):
    from IPython.testing.globalipapp import get_ipython

    from ftkit import notebook

    shell = get_ipython()
    shell.run_line_magic("load_ext", "ftkit")
    notebook.DISPLAY, before = "text", notebook.DISPLAY
    yield shell
    notebook.DISPLAY = before


@pytest.mark.parametrize("case", list(CASES))
def test_magic(ip, workdir, case):
    files, changes, pattern = CASES[case]
    _setup(workdir, files)
    result = ip.run_cell("%%finetune --inline\n" + yaml.safe_dump(_config(changes)))
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec  # shown without a traceback
    assert re.search(pattern, str(result.error_in_exec), re.S)


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_yaml_errors_name_the_line(ip, workdir, case, capsys):
    text, pattern = YAML_CASES[case]
    result = ip.run_cell("%%finetune\n" + text)
    assert isinstance(result.error_in_exec, UsageError) and re.search(pattern, str(result.error_in_exec))
    (workdir / "bad.yaml").write_text(text, encoding="utf-8")
    assert cli.main(["train", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(pattern, err)
    with pytest.raises(FtkitError, match="(?s)" + pattern):
        ftkit.train(str(workdir / "bad.yaml"))


def test_a_full_disk_while_saving_loses_nothing_already_saved(workdir, monkeypatch):
    """The save fails with ENOSPC: a clear error, no half-written adapter folder, the checkpoint intact."""
    import errno

    from peft import PeftModel

    def full_disk(self, path, *a, **kw):
        (Path(path)).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = base_config("out/disk", max_steps=4, save_steps=2)
    original = PeftModel.save_pretrained

    def fail_the_final_save(self, path, *a, **kw):
        if "adapter" in str(path) and "checkpoint" not in str(path):
            return full_disk(self, path)
        return original(self, path, *a, **kw)

    monkeypatch.setattr(PeftModel, "save_pretrained", fail_the_final_save)
    with pytest.raises(FtkitError, match=r"out/disk/adapter: could not save \(no space left on device\); the last "
                                         r"checkpoint \(out/disk/checkpoint-4\) is intact.*resume_from_checkpoint"):
        ftkit.train(cfg, console=False)
    assert not (workdir / "out/disk/adapter").exists()
    assert not [p for p in (workdir / "out/disk").iterdir() if ".partial" in p.name]
    assert (workdir / "out/disk/checkpoint-4/adapter_model.safetensors").stat().st_size > 1000
