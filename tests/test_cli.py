"""The `ftkit` command end to end, as a user runs it (subprocesses, offline, one thread)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, REPO


def ftkit(*args, cwd, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "ftkit.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_train_merge_chat_from_the_command_line(workdir):
    (workdir / "lora.yaml").write_text(
        f"model_name_or_path: tiny\ndataset: {DATA / 'demo_zh_en.json'}\nlora_config:\n  r: 8\n"
        "train:\n  per_device_train_batch_size: 8\n  learning_rate: 3.0e-3\n")
    p = ftkit("train", "lora.yaml", "max_steps=6", "--logging_steps", "3", "--output_dir", "outputs/cli",
              "threads=1", cwd=workdir)
    assert "step 6/6" in p.stdout and "end-of-turn token trained: yes" in p.stdout
    run_yaml = (workdir / "outputs/cli/run.yaml").read_text()
    assert "max_steps: 6" in run_yaml and "lora_rank: 8" in run_yaml

    p = ftkit("merge", "--adapter", "outputs/cli", cwd=workdir)
    assert "check: max |logit difference|" in p.stdout and (workdir / "outputs/cli/merged/model.safetensors").exists()

    p = ftkit("chat", "--model", "outputs/cli/merged", "--prompt", "Who are you?", "--max_new_tokens", "12",
              cwd=workdir)
    assert p.stdout.strip() and "<|im_end|>" not in p.stdout
    p = ftkit("chat", "--model", "tiny", "--adapter", "outputs/cli", "--prompt", "Who are you?",
              "--max_new_tokens", "12", cwd=workdir)
    assert p.stdout.strip()


@pytest.mark.slow
def test_chat_repl_keeps_history_and_quits(workdir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ftkit.cli", "chat", "--model", "tiny", "--max_new_tokens", "5"],
                          input="hello\nagain\nclear\nexit\n", capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2


@pytest.mark.slow
def test_train_with_seed_style_flags_only(workdir):
    p = ftkit("train", "--stage", "sft", "--model_name_or_path", "tiny", "--dataset", "seed_examples",
              "--template", "qwen", "--lora_target", "q_proj,v_proj", "--per_device_train_batch_size", "2",
              "--max_steps", "2", "--output_dir", "outputs/flags", "--threads", "1", cwd=workdir)
    assert "LoRA r=8 on q_proj,v_proj" in p.stdout


def test_bad_config_is_one_clear_message_without_traceback(workdir):
    p = ftkit("train", "--dataset", "demo", "--lerning_rate", "1e-4", "--quantization_bit", "3", cwd=workdir,
              check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "did you mean learning_rate?" in p.stderr and "quantization_bit: 3 is not supported" in p.stderr
    p = ftkit("train", "missing.yaml", cwd=workdir, check=False)
    assert p.returncode == 2 and "missing.yaml: no such config file" in p.stderr


def test_bad_data_is_named_without_traceback(workdir):
    (workdir / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}]}\n{oops\n')
    p = ftkit("train", "--dataset", "bad.jsonl", "--dataset_dir", ".", cwd=workdir, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "bad.jsonl: line 2: invalid JSON" in p.stderr
    p = ftkit("train", "--dataset", "bad.jsonl", "--debug", cwd=workdir, check=False)
    assert "Traceback" in p.stderr


def test_convert_and_models_and_help(workdir):
    p = ftkit("convert", "--input", DATA / "formats/alpaca.json", "--output", "out/formatted.json",
              "--from", "alpaca", cwd=workdir)
    assert "wrote 3 conversations" in p.stdout
    records = json.loads((workdir / "out/formatted.json").read_text(encoding="utf-8"))
    assert records[0] == {"conversation": [{"role": "user", "content": "Translate into Chinese.\nGood morning."},
                                           {"role": "assistant", "content": "早上好。"}]}
    p = ftkit("models", cwd=workdir)
    assert "llama" in p.stdout and "chatglm3" in p.stdout and "deepseek" in p.stdout
    p = ftkit("train", "--help", cwd=workdir)
    assert "--learning_rate (float, default 0.0001)" in p.stdout and "--quantization_bit" in p.stdout
    p = ftkit("nonsense", cwd=workdir, check=False)
    assert p.returncode == 2 and "unknown command" in p.stderr


@pytest.mark.slow
def test_demo_runs_offline_and_shows_the_change(workdir):
    p = ftkit("demo", "--epochs", "3", "--out", "outputs/demo", cwd=workdir)
    assert "loss " in p.stdout and "base " in p.stdout and "fine-tuned" in p.stdout
    assert (workdir / "outputs/demo/merged/model.safetensors").exists()


def test_console_script_is_installed():
    import shutil

    here = Path(sys.executable).parent  # the interpreter's own scripts: PATH may lead to another install
    assert shutil.which("ftkit", path=str(here)), f"pip install -e . puts `ftkit` in {here}"
    assert (REPO / "ftkit" / "assets" / "tiny" / "model.safetensors").exists()


@pytest.mark.slow
def test_quick_exit_loses_nothing_a_run_writes(workdir):
    """`ftkit train` ends without tearing down every module (files.exit_now): the logs, TensorBoard events and
    output a run writes are all complete, the exit code is kept."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    p = ftkit("train", "--dataset", DATA / "demo_zh_en.json", "--max_steps", "5", "--logging_steps", "1",
              "--report_to", "tensorboard", "--output_dir", "out/q", "--threads", "1", cwd=workdir)
    assert p.stdout.rstrip().endswith("saved out/q/adapter")
    (events,) = list((workdir / "out/q/runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 5
    assert [json.loads(line)["kind"] for line in (workdir / "out/q/metrics.jsonl").read_text().splitlines()][-1] == "end"
    assert ftkit("train", "--dataset", "missing.json", cwd=workdir, check=False).returncode == 2


@pytest.mark.slow
def test_ctrl_c_saves_says_where_and_resume_continues(workdir):
    import signal

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "ftkit", "train", "--dataset", DATA / "demo_zh_en.json", "--max_steps", "400",
            "--logging_steps", "1", "--per_device_train_batch_size", "8", "--output_dir", "out/c", "--threads", "1"]
    proc = subprocess.Popen(list(map(str, args)), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step   3/"):
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopping after this step and saving" in err and "what was trained is saved in out/c/adapter" in err
    assert "Traceback" not in err and "stopped early at step" in out
    step = int(out.split("stopped early at step ")[1].split(":")[0])
    assert (workdir / f"out/c/checkpoint-{step}").is_dir() and (workdir / "out/c/adapter").is_dir()
    p = ftkit("train", "out/c/run.yaml", "resume_from_checkpoint=true", "max_steps=" + str(step + 2), cwd=workdir)
    assert f"step {step + 1}/{step + 2}" in p.stdout and f"done at step {step + 2}" in p.stdout


@pytest.mark.slow
def test_nproc_2_from_the_command_line_and_through_accelerate_launch(workdir):
    """DDP over 2 CPU processes (gloo), 4 examples each: the losses of 1 process with 8."""
    common = ["--dataset", DATA / "demo_zh_en.json", "--max_steps", "3", "--logging_steps", "1", "--threads", "1"]
    one = ftkit("train", *common, "--per_device_train_batch_size", "8", "--output_dir", "out/one", cwd=workdir)
    two = ftkit("train", *common, "--per_device_train_batch_size", "4", "--output_dir", "out/two", "--nproc", "2",
                cwd=workdir)
    losses = lambda text: [float(line.split("loss ")[1].split()[0]) for line in text.splitlines()  # noqa: E731
                           if line.startswith("step ")]
    assert len(losses(two.stdout)) == 3 and losses(two.stdout) == pytest.approx(losses(one.stdout), rel=1e-4)
    assert "4 x 1 accumulation x 2 processes" in two.stdout
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    accel = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ftkit",
                            "train", *map(str, common), "--per_device_train_batch_size", "4", "--output_dir",
                            "out/accel"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert accel.returncode == 0, accel.stderr[-2000:]
    assert losses(accel.stdout) == pytest.approx(losses(one.stdout), rel=1e-4)


def test_which_runs_need_bitsandbytes(tmp_path):
    from ftkit.config import RunConfig
    from ftkit.process import uses_bitsandbytes

    def needs(**keys):
        return uses_bitsandbytes(RunConfig.from_dict({"dataset": "demo", **keys}))

    quantized = tmp_path / "quantized"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True}}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not needs() and not needs(model_name_or_path=str(plain)) and not needs(optim="adamw_torch")
    assert needs(quantization_bit=4) and needs(quantization_bit=8) and needs(optim="paged_adamw_8bit")
    assert needs(optim="adamw_bnb_8bit") and needs(model_name_or_path=str(quantized))
    assert needs(model_name_or_path="nobody/not-a-cached-model")  # might be quantized: not known offline


@pytest.mark.slow
def test_the_command_starts_lean_and_code_that_calls_in_keeps_bitsandbytes(workdir):
    """`ftkit train` is a process of its own: an unquantized run leaves bitsandbytes unimported (peft would import
    it, 0.8 s) and freezes the imported objects out of the collector's way; main() called from code does neither."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('bnb', sys.modules.get('bitsandbytes', 'absent') is None, "
             "'frozen', gc.get_freeze_count()))\n"
             "from ftkit import cli\n"
             "sys.argv = ['ftkit', 'train', '--dataset', 'demo', '--max_steps', '1', '--output_dir', 'out/lean-' + sys.argv0,"
             " '--threads', '1']\n"
             "cli.entry() if sys.argv0 == 'entry' else sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for how, blocked in (("entry", True), ("main", False)):
        p = subprocess.run([sys.executable, "-c", probe.replace("sys.argv0", repr(how))], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        state = p.stdout.strip().splitlines()[-1].split()
        assert state[1] == str(blocked), (how, p.stdout)
        assert (int(state[3]) > 100_000) == blocked, (how, state)
        assert (workdir / f"out/lean-{how}/adapter/adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_run_folder_works_wherever_a_model_folder_does(workdir):
    """Every kind of run: chat, generate and training take its output_dir as they take a model folder."""
    import ftkit as api
    from conftest import base_config
    from ftkit.errors import FtkitError

    runs = {kind: api.train(base_config(workdir / kind, max_steps=2, finetuning_type=kind, **extra), console=False)
            for kind, extra in [("lora", {}), ("full", {}), ("freeze", {"freeze_trainable_layers": 1})]}
    ask = dict(prompt="Who are you?", max_new_tokens=6)
    for kind, run in runs.items():
        inside = run.adapter_dir if kind != "lora" else None  # the model/ folder of a full or freeze run
        expected = api.generate(inside or "tiny", ask["prompt"], adapter=run.adapter_dir if kind == "lora" else None,
                                  max_new_tokens=6)
        assert api.generate(run.output_dir, **ask) == expected, kind
    for kind in ("full", "lora"):
        p = ftkit("chat", "--model", kind, "--prompt", ask["prompt"], "--max_new_tokens", "6", cwd=workdir)
        assert p.stdout.strip() == api.generate(runs[kind].output_dir, **ask), kind

    assert api.plan(base_config(workdir / "next", model_name_or_path=str(workdir / "full"))).model_path == \
        str(workdir / "full" / "model")  # training on from a full run
    with pytest.raises(FtkitError, match="merge it first"):
        api.plan(base_config(workdir / "next", model_name_or_path=str(workdir / "lora")))
    merged = api.merge(runs["lora"].adapter_dir, console=False)
    assert api.plan(base_config(workdir / "next", model_name_or_path=str(workdir / "lora"))).model_path == str(merged)

    (workdir / "empty").mkdir()
    p = ftkit("chat", "--model", "empty", "--prompt", "hi", cwd=workdir, check=False)
    assert p.returncode == 2 and "point --model at" in p.stderr and "model_name_or_path" not in p.stderr
    assert "Traceback" not in p.stderr
