"""What a Colab run meets besides its GPU: output on Google Drive (another filesystem than the runtime's disk),
disconnects (resume from the last checkpoint there), a small disk (checkpoints rotated by default), and the Hub
(push_to_hub: refused before training when it cannot work; what is uploaded, with its model card)."""
import os
from pathlib import Path

import pytest
import yaml

import ftkit
from conftest import base_config
from ftkit.config import RunConfig
from ftkit.errors import ConfigError, ModelError


def other_filesystem(workdir: Path) -> Path:
    """A folder on a filesystem other than the working directory's (tmpfs /dev/shm here), as Drive's FUSE mount is
    on Colab."""
    for candidate in (Path("/dev/shm"), Path("/run/user") / str(os.getuid())):
        if candidate.is_dir() and os.access(candidate, os.W_OK) and \
                candidate.stat().st_dev != workdir.stat().st_dev:
            folder = candidate / f"ftkit-drive-{os.getpid()}"
            folder.mkdir(exist_ok=True)
            return folder
    pytest.skip("no second writable filesystem on this machine")


@pytest.mark.slow
def test_a_run_on_another_filesystem_checkpoints_atomically_and_resumes_exactly(workdir):
    """The run folder on a second filesystem: checkpoints are staged inside it (a rename never crosses
    filesystems), two are kept by default, and a run cut off after step 4 resumes there with the losses of the
    run that was never cut off."""
    import shutil

    drive = other_filesystem(workdir)
    try:
        whole = ftkit.train(base_config(workdir / "whole", max_steps=8), console=False)
        out = drive / "run"
        stop_at_4 = lambda e: "stop" if e["kind"] == "step" and e["step"] == 4 else None  # noqa: E731
        ftkit.train(base_config(out, max_steps=8, save_steps=1), callbacks=[stop_at_4], console=False)
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
        assert not list(out.glob(".*partial*")) and not (out / ".staging").exists()
        resumed = ftkit.train(base_config(out, max_steps=8, save_steps=1, resume_from_checkpoint=True),
                              console=False)
        steps = [e for e in resumed.metrics if e["kind"] == "step"]
        reference = {e["step"]: e["loss"] for e in whole.metrics if e["kind"] == "step"}
        assert [e["step"] for e in steps] == [5, 6, 7, 8]
        assert [e["loss"] for e in steps] == pytest.approx([reference[s] for s in (5, 6, 7, 8)], rel=1e-5)
        assert (out / "adapter" / "adapter_model.safetensors").exists()
    finally:
        shutil.rmtree(drive, ignore_errors=True)


def test_checkpoints_kept_default_to_two_and_null_keeps_all():
    assert RunConfig().save_total_limit == 2
    assert RunConfig.from_dict({"dataset": "demo", "save_total_limit": None}).save_total_limit is None


def test_push_to_hub_offline_is_one_line_before_anything_trains(workdir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ftkit import model as M

    monkeypatch.setattr(M, "load_model", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError) as e:
        ftkit.train(base_config(workdir / "run", push_to_hub=True, hub_model_id="me/tiny-lora"), console=False)
    lines = [p for p in e.value.problems if p.startswith("push_to_hub")]
    assert lines == ["push_to_hub: this machine is offline for the Hub (HF_HUB_OFFLINE=1); set push_to_hub: false "
                     "and upload the run later with `ftkit push RUN_DIR --hub_model_id USER/NAME`"]
    assert not (workdir / "run").exists()


def test_push_to_hub_wants_a_repository_and_a_login(workdir, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError) as e:
        ftkit.plan(base_config(workdir / "run", push_to_hub=True))
    text = str(e.value)
    assert "hub_model_id: name the Hub repository to push to, as USER/NAME" in text
    assert "push_to_hub: not logged in to the Hugging Face Hub: set HF_TOKEN" in text


@pytest.mark.slow
def test_a_push_uploads_the_adapter_with_its_model_card(workdir, monkeypatch):
    """The upload itself, with huggingface_hub's HfApi recording what it is asked to create and commit (no Hub
    here): the adapter's files, run.yaml, and a README.md model card with the run config, the data and the loss."""
    import huggingface_hub

    run = ftkit.train(base_config(workdir / "run", max_steps=4), console=False)
    calls = {}

    class Recorder:
        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def create_commit(self, repo_id, operations, commit_message):
            calls["files"] = {op.path_in_repo: op.path_or_fileobj for op in operations}

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    from ftkit.hub import push

    assert push(run.output_dir, "me/tiny-lora") == "https://huggingface.co/me/tiny-lora"
    assert calls["repo"] == ("me/tiny-lora", True, True)
    files = calls["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "run.yaml"} <= set(files)
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "ftkit" in front["tags"]
    assert "AutoPeftModelForCausalLM.from_pretrained(\"me/tiny-lora\")" in card
    assert "demo_zh_en.json`: 282 examples" in card
    losses = [e["loss"] for e in run.metrics if e["kind"] == "step"]
    assert f"| 4 | {losses[-1]:.4f} |" in card
    assert "max_steps: 4" in card.split("## Run config")[1]


def test_a_failed_push_keeps_the_run_and_says_how_to_retry(workdir, monkeypatch):
    import huggingface_hub

    folder = workdir / "run" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (workdir / "run" / "run.yaml").write_text(yaml.safe_dump(base_config(workdir / "run")))

    class Unreachable:
        def create_repo(self, *a, **k):
            raise OSError("Connection refused\nmore detail")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    from ftkit.hub import push

    with pytest.raises(ModelError, match="not a run folder"):
        push(workdir, "me/x")
    with pytest.raises(ModelError, match=r"push to me/x failed \(Connection refused\); .* is kept: run `ftkit push "
                                         r".* --hub_model_id me/x` to try again"):
        push(workdir / "run", "me/x")
    assert (folder / "adapter_config.json").exists()
