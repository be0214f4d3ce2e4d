"""A run on the Hugging Face Hub: its trained adapter (or model, or merged model) uploaded with a model card that
says what it is: the base model, the run config, the data, the loss curve.

`push_to_hub: true` uploads at the end of training (checked before the first step: a machine that is offline or
not logged in is told so in one line, and nothing trains); `ftkit push RUN` uploads a finished run later. The
login is huggingface_hub's own: HF_TOKEN, `hf auth login`, or Colab's secrets.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ftkit.errors import ModelError

OFF = ("1", "true", "yes", "on")


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in OFF for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def push_problems(repo_id: str | None) -> list[str]:
    """What stops a push to `repo_id`, known before training or merging (so a run never trains to fail at its
    upload)."""
    later = "set push_to_hub: false and upload the run later with `ftkit push RUN_DIR --hub_model_id USER/NAME`"
    if offline():
        return [f"push_to_hub: this machine is offline for the Hub (HF_HUB_OFFLINE=1); {later}"]
    problems = []
    if not repo_id or repo_id.count("/") != 1:
        problems.append("hub_model_id: name the Hub repository to push to, as USER/NAME (e.g. hub_model_id: "
                        "your-name/qwen2.5-7b-lora)")
    from huggingface_hub import get_token

    if not get_token():
        problems.append("push_to_hub: not logged in to the Hugging Face Hub: set HF_TOKEN (on Colab: the key icon, "
                        "a secret named HF_TOKEN), or run `hf auth login`")
    return problems


def model_card(run_dir: Path, folder: Path, repo_id: str, config: dict) -> str:
    """README.md for the uploaded folder: front matter the Hub reads, how to use it, the run config (`config`, the
    run's run.yaml), the data and the loss curve (from its metrics.jsonl)."""
    import yaml

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip()] if (run_dir / "metrics.jsonl").exists() else []
    begin = next((e for e in events if e["kind"] == "begin"), {})
    steps = [e for e in events if e["kind"] == "step" and e.get("loss") is not None]
    adapter = (folder / "adapter_config.json").exists()
    base = config.get("model_name_or_path", "")
    front = {"library_name": "peft" if adapter else "transformers", "tags": ["ftkit", config.get("stage", "sft"),
                                                                             config.get("finetuning_type", "lora")]}
    if base and not Path(base).is_absolute() and base.count("/") == 1:  # a Hub model: the card links to it
        front["base_model"] = base
    use = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("
           f"\"{repo_id}\")" if adapter else
           f"from transformers import AutoModelForCausalLM\n"
           f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")")
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"{'A LoRA adapter' if adapter else 'A model'} fine-tuned from `{base}` with "
             f"[ftkit]: {begin.get('finetuning', config.get('finetuning_type', ''))}.", "",
             "```python", use, "```"]
    data = config.get("dataset")
    if data:
        lines += ["", "## Data", "", f"`{data}`: {begin.get('examples', '?'):,} {begin.get('unit', 'examples')}, "
                  f"{begin.get('tokens', 0):,} tokens ({begin.get('trained_tokens', 0):,} trained), "
                  f"cutoff_len {config.get('cutoff_len')}." if begin else f"`{data}`."]
    if steps:
        every = max(1, len(steps) // 20)
        shown = steps[::every] + ([steps[-1]] if (len(steps) - 1) % every else [])
        lines += ["", "## Loss", "", "![loss](loss.png)" if (run_dir / "training_loss.png").exists() else "", "",
                  "| step | loss |", "|---|---|", *[f"| {e['step']} | {e['loss']:.4f} |" for e in shown]]
    lines += ["", "## Run config", "", "```yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True).strip(),
              "```", ""]
    return "\n".join(lines)


def push(run_dir, repo_id: str | None = None, private: bool = True, folder=None) -> str:
    """Upload a run's adapter/ (or model/, or `folder`, e.g. merged/) with its model card; returns the repo URL."""
    import yaml

    from ftkit.config import RUN_CONFIG
    from ftkit.folders import trained_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run folder; name a run's output_dir")
    if folder is None and not (run_dir / RUN_CONFIG).exists():
        raise ModelError(f"{run_dir}: not a run folder (no {RUN_CONFIG}); name a run's output_dir, or the folder "
                         "to upload inside it with --folder")
    config = (yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}) \
        if (run_dir / RUN_CONFIG).exists() else {}
    repo_id = repo_id or config.get("hub_model_id")
    if not repo_id:
        raise ModelError(f"{run_dir}: name the Hub repository (hub_model_id: USER/NAME, or --hub_model_id)")
    if folder is None:
        from ftkit.config import RunConfig

        folder = trained_dir(RunConfig.from_dict(config), run_dir)
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: nothing to upload there (no trained adapter or model)")
    if offline():
        raise ModelError(f"push: this machine is offline for the Hub (HF_HUB_OFFLINE=1); {run_dir} is kept: run "
                         f"`ftkit push {run_dir} --hub_model_id {repo_id}` where the Hub is reachable")
    from huggingface_hub import CommitOperationAdd, HfApi

    card = model_card(run_dir, folder, repo_id, config)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    operations = [CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in files if p.name != "README.md"]
    operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    if (run_dir / "training_loss.png").exists():  # plot_loss: true
        operations.append(CommitOperationAdd("loss.png", str(run_dir / "training_loss.png")))
    if (run_dir / RUN_CONFIG).exists() and not (folder / RUN_CONFIG).exists():
        operations.append(CommitOperationAdd(RUN_CONFIG, str(run_dir / RUN_CONFIG)))
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=f"ftkit: {folder.name} of {run_dir.name}")
    except Exception as e:  # noqa: BLE001 - network, auth, permissions: one line, the run stays on disk
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"push to {repo_id} failed ({first}); {run_dir} is kept: run `ftkit push {run_dir} "
                         f"--hub_model_id {repo_id}` to try again") from None
    return str(url)
