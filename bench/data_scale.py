"""Data preparation at real sizes: ftkit against LLaMA-Factory 0.9.5 on 20k, 200k and 2M conversations.

    python bench/data_scale.py [--sizes 20000,200000,2000000] [--baseline-max 200000]

Builds deterministic chat datasets from ftkit's bundled texts (bench/_data_scale_data.py: English and Chinese,
single and multi-turn, lengths spread like real chat sets) and a small Qwen2 model with Qwen2's real 151k-token
tokenizer (converted from llama.cpp's vocabulary, tests/real.py). Then, each in its own process, side by side:

- ftkit's data preparation, what `ftkit train --dry-run` does, with `preprocessing_num_workers` 1 and 2 (processes
  that render and tokenize, one thread each), from an empty tokenization cache; and again with the cache the run
  before left (a second run of the same data);
- LLaMA-Factory's preprocessing of the same file (its run_sft up to get_dataset, `preprocessing_num_workers` 1 and
  2, its `datasets` cache fresh), with the same template (qwen) and cutoff_len (1024);
- the time from the process's start to the first training step (max_steps 1), for both;
- ftkit with `streaming: true`: the first step and the memory of a run that never tokenizes the whole set.

Reports the seconds to prepared data, examples/s, tokens/s and the peak memory of the process and its children
(their RSS summed, sampled every 50 ms), prints the ratios and a cost-vs-size table, and writes
bench/results/data-scale-<date>.json. LLaMA-Factory runs up to --baseline-max conversations (at 2M it alone would
take most of an hour on 2 cores); ftkit runs every size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work" / "data_scale"
CUTOFF = 1024
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))


def model_folder() -> Path:
    """A 2-layer Qwen2 with Qwen2's real tokenizer: small weights, the real vocabulary (its embeddings dominate)."""
    folder = WORK / "qwen2-tiny"
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from real import real_tokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    return save_random(Qwen2ForCausalLM, config, tok, folder)


def save_random(cls, config, tokenizer, folder: Path, dtype: str | None = None, **save) -> Path:
    """A randomly initialised model (seed 0) of `cls` and the tokenizer, written whole or not at all (in `dtype`,
    with save_pretrained's `save` options)."""
    import torch

    torch.manual_seed(0)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model = cls(config)
    (model.to(getattr(torch, dtype)) if dtype else model).save_pretrained(partial, **save)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def dataset(n: int) -> Path:
    from _data_scale_data import write_jsonl

    path = WORK / "data" / f"chat-{n}.jsonl"
    if not path.exists():
        print(f"writing {n:,} conversations to {path}", flush=True)
        write_jsonl(path, n)
    (path.parent / "dataset_info.json").write_text(json.dumps({
        path.stem: {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "system_tag": "system"}}
        for path in path.parent.glob("chat-*.jsonl")}))
    return path


# ---- one measured process ------------------------------------------------------------------------------------

def measured(cmd: list[str], env: dict, label: str) -> dict:
    """Run cmd; its wall time and the peak of its and its children's RSS summed (sampled every 50 ms)."""
    env = {**os.environ, **env, "BENCH_START": repr(time.time()), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, peak = psutil.Process(proc.pid), 0
    log = []
    import threading

    reader = threading.Thread(target=lambda: log.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    reader.join()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{''.join(log)[-4000:]}")
    return {"wall_s": wall, "peak_rss_mib": peak / 2**20}


def prepare(tool: str, python: Path, cfg: dict, threads: int, env: dict, label: str) -> dict:
    out = WORK / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg_path, result_path = out / "config.json", out / "result.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": str(threads), **env}
    r = measured([str(python), str(BENCH / "_prepare.py"), tool, str(cfg_path), str(result_path)], env, label)
    return {**r, **json.loads(result_path.read_text())}


def first_step(tool: str, python: Path, cfg: dict, threads: int, env: dict, label: str) -> dict:
    out = WORK / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = {**cfg, "output_dir": str(out / "run")}
    cfg_path, result_path = out / "config.json", out / "result.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads), **env}
    r = measured([str(python), str(BENCH / "_run.py"), tool, str(cfg_path), str(result_path)], env, label)
    return {**r, "first_step_s": json.loads(result_path.read_text())["first_step_s"]}


# ---- the runs -------------------------------------------------------------------------------------------------

def configs(model: Path, data: Path) -> tuple[dict, dict]:
    ftkit = dict(model_name_or_path=str(model), dataset=str(data), template="qwen", cutoff_len=CUTOFF,
                 per_device_train_batch_size=2, overwrite_output_dir=True, output_dir=str(WORK / "runs" / "plan"),
                 save_steps=10**6, logging_steps=1)
    lf = dict(model_name_or_path=str(model), stage="sft", do_train=True, finetuning_type="lora", lora_target="all",
              dataset=data.stem, dataset_dir=str(data.parent), template="qwen", cutoff_len=CUTOFF,
              overwrite_cache=True, per_device_train_batch_size=2, output_dir=str(WORK / "runs" / "lf-plan"),
              overwrite_output_dir=True, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1)
    return ftkit, lf


def run_size(n: int, baseline: bool, lf_py: Path, ft_py: Path, model: Path) -> dict:
    data = dataset(n)
    ftkit, lf = configs(model, data)
    rows: dict[str, dict] = {}

    def show(name, r):
        rows[name] = r
        rate = f"{n / r['prepared_s']:,.0f} conv/s" if "prepared_s" in r else f"first step {r['first_step_s']:.1f} s"
        print(f"  {n:>9,}  {name:<34} {r.get('prepared_s', r['wall_s']):8.1f} s  {rate:>18}  "
              f"{r['peak_rss_mib']:8,.0f} MiB", flush=True)

    cache = WORK / "cache" / str(n)
    workers = (1, 2) if n <= 200_000 else (2,)
    for w in workers:
        shutil.rmtree(cache, ignore_errors=True)
        show(f"ftkit prepare, {w} worker{'s' * (w > 1)}",
             prepare("ftkit", ft_py, {**ftkit, "preprocessing_num_workers": w}, w, {"FTKIT_CACHE_DIR": str(cache)},
                     f"ftkit-{n}-{w}"))
    ftkit = {**ftkit, "preprocessing_num_workers": 2}
    show("ftkit prepare, cached (second run)",
         prepare("ftkit", ft_py, ftkit, 2, {"FTKIT_CACHE_DIR": str(cache)}, f"ftkit-{n}-cached"))
    if baseline:
        for w in (1, 2):
            hf_cache = WORK / "hf-cache" / str(n)
            shutil.rmtree(hf_cache, ignore_errors=True)
            show(f"LLaMA-Factory prepare, {w} worker{'s' * (w > 1)}",
                 prepare("llamafactory", lf_py, {**lf, "preprocessing_num_workers": w}, w,
                         {"HF_DATASETS_CACHE": str(hf_cache)}, f"lf-{n}-{w}"))
    step = {"max_steps": 1}
    if n <= 200_000:  # (at 2M the cache the preparations above left is used: tokenizing again takes minutes)
        shutil.rmtree(cache, ignore_errors=True)
        show("ftkit first step, empty cache", first_step("ftkit", ft_py, {**ftkit, **step}, 2,
                                                         {"FTKIT_CACHE_DIR": str(cache)}, f"ftkit-{n}-step"))
    show("ftkit first step, cached", first_step("ftkit", ft_py, {**ftkit, **step}, 2,
                                                {"FTKIT_CACHE_DIR": str(cache)}, f"ftkit-{n}-step-cached"))
    show("ftkit first step, streaming", first_step("ftkit", ft_py, {**ftkit, **step, "streaming": True}, 2,
                                                   {"FTKIT_CACHE_DIR": "off"}, f"ftkit-{n}-stream"))
    if baseline:
        hf_cache = WORK / "hf-cache" / str(n)
        shutil.rmtree(hf_cache, ignore_errors=True)
        show("LLaMA-Factory first step, 2 workers",
             first_step("llamafactory", lf_py, {**lf, **step, "preprocessing_num_workers": 2}, 2,
                        {"HF_DATASETS_CACHE": str(hf_cache)}, f"lf-{n}-step"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,200000,2000000")
    ap.add_argument("--baseline-max", type=int, default=200_000, help="largest size LLaMA-Factory runs on")
    a = ap.parse_args()
    from compare import baseline_python, ftkit_python

    lf_py, ft_py = baseline_python(), ftkit_python()
    model = model_folder()
    sizes = [int(s) for s in a.sizes.split(",")]
    started = time.time()
    print(f"{'size':>11}  {'run':<34} {'seconds':>10}  {'rate':>18}  {'peak memory':>12}")
    results = {n: run_size(n, n <= a.baseline_max, lf_py, ft_py, model) for n in sizes}
    report = summary(results)
    print(report)
    out = BENCH / "results" / f"data-scale-{datetime.datetime.now():%Y%m%d-%H%M}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cutoff_len": CUTOFF, "template": "qwen", "cpu_count": os.cpu_count(),
                               "total_s": time.time() - started, "results": results, "summary": report}, indent=1))
    print(f"written {out} ({(time.time() - started) / 60:.1f} min)")


def summary(results: dict) -> str:
    lines = ["", "ratios (ftkit over LLaMA-Factory; > 1: ftkit faster, < 1: ftkit uses less memory):"]
    for n, rows in results.items():
        for t in (1, 2):
            ft, lf = rows.get(f"ftkit prepare, {t} worker{'s' * (t > 1)}"), rows.get(
                f"LLaMA-Factory prepare, {t} worker{'s' * (t > 1)}")
            if ft and lf:
                lines.append(f"  {n:>9,}  {t} worker{'s' * (t > 1)}: speed {lf['prepared_s'] / ft['prepared_s']:.2f}x, "
                             f"memory {ft['peak_rss_mib'] / lf['peak_rss_mib']:.2f}x")
        ft, lf = rows.get("ftkit first step, empty cache"), rows.get("LLaMA-Factory first step, 2 workers")
        if ft and lf:
            lines.append(f"  {n:>9,}  first step: {lf['first_step_s'] / ft['first_step_s']:.2f}x sooner")
    sizes = sorted(results)
    lines += ["", "cost against size (ftkit, 2 workers, empty cache):"]
    for small, big in zip(sizes, sizes[1:]):
        a, b = results[small]["ftkit prepare, 2 workers"], results[big]["ftkit prepare, 2 workers"]
        lines.append(f"  {small:,} -> {big:,} ({big / small:.0f}x the data): time {b['prepared_s'] / a['prepared_s']:.1f}x, "
                     f"memory {b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x")
        sa, sb = results[small].get("ftkit first step, streaming"), results[big].get("ftkit first step, streaming")
        if sa and sb:
            lines.append(f"    streaming: first step {sa['first_step_s']:.1f} s -> {sb['first_step_s']:.1f} s, memory "
                         f"{sb['peak_rss_mib'] / sa['peak_rss_mib']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
