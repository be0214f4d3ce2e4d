"""Twenty runs in one process, as a notebook kernel sees them: train, merge, generate, again and again."""
import gc
import threading

import psutil
import pytest
from conftest import base_config

import ftkit


@pytest.mark.slow
def test_twenty_runs_in_one_process_do_not_accumulate(workdir):
    me = psutil.Process()
    rss, threads, files = [], [], []
    for i in range(20):
        run = ftkit.train(base_config(f"out/{i}", max_steps=2), console=False)
        merged = ftkit.merge(run.adapter_dir, console=False)
        answer = ftkit.generate(merged, "Who are you?", max_new_tokens=4)
        assert isinstance(answer, str) and answer
        del run
        gc.collect()
        rss.append(me.memory_info().rss)
        threads.append(threading.active_count())
        files.append(len(me.open_files()))
    print("RSS MiB per run:", [round(r / 2**20) for r in rss], "threads:", threads, "open files:", files)
    baseline = max(rss[:3])
    assert max(rss[3:]) <= baseline * 1.10, [round(r / 2**20) for r in rss]
    assert max(threads[3:]) <= max(threads[:3]), threads
    assert max(files[3:]) <= max(files[:3]), files


@pytest.mark.slow
def test_a_run_writes_only_inside_its_output_folder(workdir, tmp_path_factory, monkeypatch):
    """With the tokenization cache off, training, merging and chatting write nothing outside outputs/<run>
    (the cache, when on, is the one shared place: ~/.cache/ftkit/tokenized or $FTKIT_CACHE_DIR)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FTKIT_CACHE_DIR", "off")
    before = {p for p in workdir.rglob("*")}
    run = ftkit.train(base_config("outputs/mine", max_steps=2, save_steps=1, report_to="tensorboard"), console=False)
    ftkit.merge(run.adapter_dir, console=False)
    ftkit.generate(run, "Hi", max_new_tokens=2)
    new = {p for p in workdir.rglob("*")} - before
    outside = sorted(str(p.relative_to(workdir)) for p in new if not p.is_relative_to(workdir / "outputs/mine")
                     and p != workdir / "outputs")
    assert outside == [] and list(home.rglob("*")) == []
