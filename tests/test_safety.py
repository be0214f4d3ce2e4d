"""Nothing in a model folder, a config or a chat template runs code unless the config says so."""
import json
import shutil
from pathlib import Path

import pytest
from conftest import base_config

import ftkit
from ftkit.errors import FtkitError
from ftkit.model import resolve


def _copy_tiny(dest: Path, pickled: bool = False) -> Path:
    from transformers import AutoModelForCausalLM

    shutil.copytree(resolve("tiny"), dest)
    if pickled:  # the same weights as a pickled pytorch_model.bin
        import torch

        model = AutoModelForCausalLM.from_pretrained(dest)
        (dest / "model.safetensors").unlink()
        torch.save(model.state_dict(), dest / "pytorch_model.bin")
    return dest


def test_pickled_weights_are_refused_unless_allowed(workdir):
    folder = _copy_tiny(workdir / "pickled", pickled=True)
    with pytest.raises(FtkitError, match=r"pickled.*unpickling can run code.*allow_pickle: true"):
        ftkit.train(base_config("out/p", model_name_or_path=str(folder), max_steps=1), console=False)
    with pytest.raises(FtkitError, match=r"pickled.*allow_pickle"):
        ftkit.generate(str(folder), "Hi", max_new_tokens=2)
    run = ftkit.train(base_config("out/a", model_name_or_path=str(folder), max_steps=1, allow_pickle=True),
                      console=False)
    assert (run.adapter_dir / "adapter_model.safetensors").exists()  # what ftkit writes is never pickled
    answer = ftkit.generate(run, "Hi", max_new_tokens=2)  # the run's config carries the permission
    merged = ftkit.merge(run.adapter_dir, console=False)
    assert (merged / "model.safetensors").exists() and not list(merged.glob("*.bin"))
    assert answer and answer == ftkit.generate(merged, "Hi", max_new_tokens=2)  # the pickled base, with the adapter


def test_code_shipped_with_a_model_does_not_run_by_default(workdir):
    folder = _copy_tiny(workdir / "remote")
    marker = workdir / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                    "from transformers import LlamaConfig as EvilConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil"  # a type only its own code knows
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FtkitError, match="trust_remote_code"):
        ftkit.train(base_config("out/r", model_name_or_path=str(folder), max_steps=1), console=False)
    assert not marker.exists()


def test_config_yaml_cannot_build_python_objects(workdir):
    marker = workdir / "pwned"
    (workdir / "bad.yaml").write_text(f"dataset: demo\nseed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(FtkitError, match=r"bad\.yaml"):
        ftkit.train(str(workdir / "bad.yaml"), console=False)
    assert not marker.exists()


def test_chat_templates_render_in_a_sandbox(workdir, tiny_tokenizer):
    from ftkit.templates import get_template

    folder = _copy_tiny(workdir / "tmpl")
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = escape
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    from ftkit.model import load_tokenizer

    tok = load_tokenizer(str(folder))
    with pytest.raises(Exception, match="unsafe|SecurityError|not safely callable"):
        get_template("auto", tok).render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
