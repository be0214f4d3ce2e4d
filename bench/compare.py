"""ftkit against LLaMA-Factory 0.9.5 and a hand-written Trainer + peft loop, on the same run, side by side.

    python bench/compare.py [--examples 1000] [--rounds 2] [--threads 2]

Builds (deterministically, no network) a ~5M-parameter random Llama with ftkit's locally trained tokenizer and
bilingual chat data of mixed length, then trains each contender on the same examples once (1 epoch, batch 8,
cutoff 512, LoRA r=8 on all linear layers, lr 1e-3, cosine, the same ChatML template and system prompt),
alternating the contenders round by round. Each run is its own process; the same patches on
transformers.Trainer (bench/_run.py) time the first step and count real tokens against token cells. The
held-out loss of every saved adapter is computed by one evaluator. Then ftkit as a notebook starts it: from
`ftkit.launch` (a `%%finetune` cell) to the first step, with a child started for the run and with the warm child
`%load_ext ftkit` keeps (bench/_notebook.py). Prints a table and ratios, and writes bench/results/compare-<date>.json.

Each tool runs in a virtualenv of its own dependencies, installed on first use: ftkit (bench/.venv-ftkit, this
checkout, editable; the hand-written loop runs there too) and LLaMA-Factory (bench/.venv-llamafactory), with the traps
worked around: torch 2.13.0 (CPU) first and pinned, PyPI's torchvision removed (a CUDA build that breaks
transformers beside the CPU torch; text SFT does not use it), and torchaudio's native libraries moved aside
(LLaMA-Factory imports torchaudio at top level and the wheel's libraries fail to load here).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
VENV = BENCH / ".venv-llamafactory"
FTKIT_VENV = BENCH / ".venv-ftkit"
SYSTEM = "You are a helpful assistant."
COMMON = dict(batch=8, cutoff_len=512, lora_rank=8, learning_rate=1e-3, seed=42)


# ---- the baseline's environment -------------------------------------------------------------------------------

def baseline_python() -> Path:
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import llamafactory.train.tuner"],
                                      capture_output=True).returncode == 0:
        return py
    print(f"installing LLaMA-Factory 0.9.5 into {VENV} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    constraints = VENV / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")
    subprocess.run(pip + ["llamafactory==0.9.5", "-c", str(constraints)], check=True)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    aside = VENV / "torchaudio-native-aside"
    aside.mkdir(exist_ok=True)
    for lib in (site / "torchaudio" / "lib").glob("*.so"):
        shutil.move(str(lib), aside / lib.name)
    subprocess.run([str(py), "-c", "import llamafactory.train.tuner"], check=True)
    return py


def ftkit_python() -> Path:
    """ftkit (this checkout, editable) with its own dependencies and nothing else, as `pip install ftkit` leaves
    it: packages that merely happen to be installed cost start-up (transformers imports datasets, pandas and scipy
    whenever they are there, ~0.6 s here), and the baseline gets a virtualenv of exactly its own too."""
    py = FTKIT_VENV / "bin" / "python"
    probe = "import ftkit, sys; sys.exit(ftkit.__file__ != %r)" % str(ROOT / "ftkit" / "__init__.py")
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return py
    print(f"installing ftkit into {FTKIT_VENV} (a minute or two, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(FTKIT_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-e", str(ROOT)], check=True)
    subprocess.run([str(py), "-c", probe], check=True)
    return py


# ---- model and data ----------------------------------------------------------------------------------------------

def build(examples: int) -> dict:
    """The shared model folder and data files; deterministic for a given seed and package versions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftkit.data import load_conversations
    from ftkit.model import load_tokenizer, resolve

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = WORK / "model"
    tok = load_tokenizer(resolve("tiny"))
    eos = tok.eos_token_id
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    demo = [c for c in load_conversations(ROOT / "data" / "demo_zh_en.json") if c[0]["role"] != "system"]
    rng = random.Random(0)
    chats = []
    for _ in range(examples + 100):  # chats of 1 to 20 demo conversations: median ~53 tokens, p90 ~255, max ~760
        k = min(20, 1 + int(rng.lognormvariate(-0.3, 1.6)))
        chats.append([{"role": "system", "content": SYSTEM}] + sum(rng.sample(demo, k), []))
    train, held_out = chats[:examples], chats[examples:]
    (WORK / "train.json").write_text(json.dumps([{"conversation": c} for c in train], ensure_ascii=False))
    (WORK / "eval.json").write_text(json.dumps([{"conversation": c} for c in held_out], ensure_ascii=False))
    (WORK / "lf_train.json").write_text(json.dumps([{"messages": c} for c in train], ensure_ascii=False))
    (WORK / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "lf_train.json", "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    lengths = sorted(len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"])
                     for c in train)
    return {"model": str(model_dir), "params": sum(p.numel() for p in LlamaForCausalLM(config).parameters()),
            "examples": examples, "tokens_median": lengths[len(lengths) // 2],
            "tokens_p90": lengths[int(len(lengths) * 0.9)], "tokens_max": lengths[-1]}


def configs(model: str) -> dict[str, tuple[str, dict]]:
    """contender -> (tool, config) for the same run."""
    c = COMMON
    lf = dict(model_name_or_path=model, stage="sft", do_train=True, finetuning_type="lora", lora_target="all",
              lora_rank=c["lora_rank"], dataset="bench", dataset_dir=str(WORK), template="qwen",
              default_system=SYSTEM, cutoff_len=c["cutoff_len"],
              preprocessing_num_workers=1, per_device_train_batch_size=c["batch"], gradient_accumulation_steps=1,
              learning_rate=c["learning_rate"], num_train_epochs=1.0, lr_scheduler_type="cosine", logging_steps=10,
              save_strategy="no", report_to="none", use_cpu=True, seed=c["seed"], overwrite_output_dir=True)
    return {
        "ftkit": ("ftkit", dict(model_name_or_path=model, dataset=str(WORK / "train.json"), template="auto",
                                cutoff_len=c["cutoff_len"], lora_rank=c["lora_rank"], lora_target="all",
                                per_device_train_batch_size=c["batch"], learning_rate=c["learning_rate"],
                                num_train_epochs=1, lr_scheduler_type="cosine", logging_steps=10,
                                save_steps=10**6, seed=c["seed"], overwrite_output_dir=True)),
        "llamafactory": ("llamafactory", lf),
        "llamafactory-neat-packing": ("llamafactory", {**lf, "packing": True, "neat_packing": True}),
        "hf-trainer-peft": ("hf", dict(model=model, data=str(WORK / "train.json"), **c)),
    }


# ---- running and scoring ------------------------------------------------------------------------------------------

def run_one(name: str, tool: str, cfg: dict, python: Path, threads: int, round_: int, cuda: bool = False) -> dict:
    out = WORK / "runs" / f"{name}-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {**cfg, "output_dir": str(out)}
    cfg_path, result_path = out.with_suffix(".config.json"), out.with_suffix(".result.json")
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "BENCH_START": repr(time.time()), "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.time()
    proc = subprocess.Popen([str(python), str(BENCH / "_run.py"), tool, str(cfg_path), str(result_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{name} failed:\n{log[-4000:]}")
    r = json.loads(result_path.read_text())
    r.update(name=name, wall_s=time.time() - t0, peak_rss_mib=usage.ru_maxrss / 1024,
             tokens_per_s=r["real_tokens"] / r["train_s"], utilisation=r["real_tokens"] / r["cells"])
    return r


def notebook_first_step(cfg: dict, python: Path, threads: int, rounds: int) -> dict:
    """Seconds from `ftkit.launch` (a `%%finetune` cell) to the child's first step: cold, and warm (bench/_notebook.py)."""
    out = WORK / "runs" / "notebook"
    shutil.rmtree(out, ignore_errors=True)
    cfg_path = out.with_suffix(".config.json")
    cfg_path.write_text(json.dumps({**cfg, "output_dir": str(out), "overwrite_output_dir": True}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(python), str(BENCH / "_notebook.py"), str(cfg_path), str(rounds)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"notebook launch failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return {k: statistics.median(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def held_out_loss(model: str, adapter: str) -> float:
    """Mean loss per trained token on the held-out chats, the same evaluator for every contender."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftkit.data import encode, load_conversations
    from ftkit.model import load_tokenizer
    from ftkit.templates import get_template

    tok = load_tokenizer(model)
    examples, _ = encode(load_conversations(WORK / "eval.json"), tok, get_template("auto", tok), COMMON["cutoff_len"])
    net = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), adapter).eval()
    total = count = 0
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            n = int((labels[0, 1:] != -100).sum())
            total += net(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return total / count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", help="contenders to run (default: all)")
    a = p.parse_args(argv)

    data = build(a.examples)
    print(f"model {data['params'] / 1e6:.1f}M parameters; {a.examples} examples, tokens per example median "
          f"{data['tokens_median']}, p90 {data['tokens_p90']}, max {data['tokens_max']}", flush=True)
    contenders = {k: v for k, v in configs(data["model"]).items() if not a.only or k in a.only}
    ftkit_py = ftkit_python()
    pythons = {"ftkit": ftkit_py, "hf": ftkit_py}  # the hand-written loop needs only what ftkit installs
    if any(tool == "llamafactory" for tool, _ in contenders.values()):
        pythons["llamafactory"] = baseline_python()
    runs = []
    for round_ in range(a.rounds):
        order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))  # A B ... then ... B A
        for name in order:
            tool, cfg = contenders[name]
            r = run_one(name, tool, cfg, pythons[tool], a.threads, round_)
            r["held_out_loss"] = held_out_loss(data["model"], r["adapter_dir"])
            runs.append(r)
            print(f"  {name:<26} round {round_}: {r['wall_s']:6.1f}s wall, {r['tokens_per_s']:7.0f} tok/s, "
                  f"{r['peak_rss_mib']:6.0f} MiB, eval loss {r['held_out_loss']:.4f}", flush=True)
    summary = {}
    for name in contenders:
        mine = [r for r in runs if r["name"] == name]
        summary[name] = {k: statistics.median(r[k] for r in mine) for k in
                         ("wall_s", "train_s", "first_step_s", "tokens_per_s", "utilisation", "peak_rss_mib",
                          "train_loss", "held_out_loss")}
    print(f"\n{'':<26}{'wall s':>8}{'train s':>9}{'1st step s':>11}{'tok/s':>8}{'util':>6}{'RSS MiB':>9}"
          f"{'train loss':>11}{'eval loss':>10}")
    for name, s in summary.items():
        print(f"{name:<26}{s['wall_s']:>8.1f}{s['train_s']:>9.1f}{s['first_step_s']:>11.1f}{s['tokens_per_s']:>8.0f}"
              f"{s['utilisation']:>6.0%}{s['peak_rss_mib']:>9.0f}{s['train_loss']:>11.4f}{s['held_out_loss']:>10.4f}")
    if "ftkit" in summary:
        f = summary["ftkit"]
        print()
        for name, s in summary.items():
            if name != "ftkit":
                print(f"ftkit vs {name}: whole process {s['wall_s'] / f['wall_s']:.2f}x faster, time to first step "
                      f"{f['first_step_s'] / s['first_step_s']:.2f}x, peak RSS {f['peak_rss_mib'] / s['peak_rss_mib']:.2f}x, "
                      f"eval loss {f['held_out_loss'] / s['held_out_loss']:.3f}x")
    notebook = None
    if "ftkit" in contenders:
        notebook = notebook_first_step(contenders["ftkit"][1], pythons["ftkit"], a.threads, a.rounds)
        print(f"\nftkit from a notebook (`%%finetune`, ftkit.launch) to its first step: {notebook['cold']:.1f} s with a "
              f"child started for the run, {notebook['warm']:.1f} s with the warm child %load_ext keeps")
        for name, s in summary.items():
            if name != "ftkit":
                print(f"  vs {name}'s time to first step: {notebook['warm'] / s['first_step_s']:.2f}x")
    out = BENCH / "results" / f"compare-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "data": data, "args": vars(a),
                               "summary": summary, "notebook_first_step_s": notebook, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
