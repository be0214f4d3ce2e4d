"""The notebook face through a real IPython InteractiveShell: magics, live panel, form, preview, chat.

Widgets are checked through their traits (no browser here; that is the tutorials' browser test).
"""
import datetime
import json
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from conftest import DATA, base_config
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ftkit
from ftkit import notebook
from ftkit.config import RunConfig
from ftkit.notebook.live import LivePanel
from ftkit.notebook.magics import fill


@pytest.fixture
def ip(workdir, monkeypatch):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()  # one shell for the session, as a kernel has
    shell.run_line_magic("load_ext", "ftkit")
    monkeypatch.setattr(ftkit, "runs", {})
    monkeypatch.setattr(notebook, "DISPLAY", "text")
    yield shell
    shell.run_line_magic("unload_ext", "ftkit")


def cell(out, **kw) -> str:
    return yaml.safe_dump(base_config(out, **kw), allow_unicode=True)


def run_cell(ip, line: str, body: str):
    """Run a cell; raise what it raised (run_cell itself only reports)."""
    result = ip.run_cell(f"%%{line}\n{body}")
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_load_ext_is_light_and_reloads():
    code = textwrap.dedent("""
        import sys, time
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        t = time.perf_counter()
        ip.run_line_magic("load_ext", "ftkit")
        took = time.perf_counter() - t
        heavy = sorted(m for m in ("torch", "transformers", "ipywidgets", "matplotlib", "peft") if m in sys.modules)
        loaded = "finetune" in ip.magics_manager.magics["cell"]
        ip.run_line_magic("unload_ext", "ftkit")
        unloaded = "finetune" not in ip.magics_manager.magics["cell"] and "merge" not in ip.magics_manager.magics["line"]
        ip.run_line_magic("load_ext", "ftkit")
        print(took, heavy, loaded, unloaded, "chat" in ip.magics_manager.magics["cell"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    took, rest = float(out[0]), out[1].strip()
    assert rest == "[] True True True", rest  # nothing heavy imported; unload removes, reload restores
    assert took < 0.5, f"%load_ext ftkit took {took:.2f}s"


def test_placeholders_take_values_and_never_evaluate():
    ns = {"lr": 2e-4, "name": "demo", "targets": ["q_proj", "v_proj"], "flag": True}
    assert fill("learning_rate: {lr}\ndataset: {name}\nlora_target: {targets}\npacking: {flag}", ns) == \
        'learning_rate: 0.0002\ndataset: demo\nlora_target: ["q_proj", "v_proj"]\npacking: true'
    assert fill("x: {{lr}}", ns) == "x: {lr}"  # doubled braces are literal
    assert fill("x: {__import__('os').getcwd()}", ns) == "x: {__import__('os').getcwd()}"  # not a name: left alone
    with pytest.raises(UsageError, match=r"\{missing\} names no notebook variable"):
        fill("dataset: {missing}", ns)


@pytest.mark.slow
def test_finetune_default_runs_in_a_child_and_binds_the_run(ip):
    ip.user_ns["steps"] = 6
    ip.user_ns["demo_file"] = str(DATA / "demo_zh_en.json")
    body = cell("out/a", preview_prompts=["Who are you?"]).replace("max_steps: 8", "max_steps: {steps}")
    body = body.replace(str(DATA / "demo_zh_en.json"), "{demo_file}")
    with capture_output() as cap:
        run = run_cell(ip, "finetune --name first", body)
    assert ip.user_ns["first"] is run is ftkit.runs["first"]
    assert type(run).__name__ == "LaunchedRun" and run.model is None  # the kernel never held the model
    assert [s for s, _ in run.losses] == [1, 2, 3, 4, 5, 6]
    assert (run.adapter_dir / "adapter_model.safetensors").exists()
    samples = [e for e in run.metrics if e["kind"] == "sample"]
    assert samples[0]["step"] == 0 and samples[-1]["step"] == 6 and samples[0]["samples"][0]["prompt"] == "Who are you?"
    assert "step 6/6" in cap.stdout and "sample at step 0" in cap.stdout  # the text panel of a terminal shell


REWARD = "import math\n\ndef short(completions, **kwargs):\n    return [-math.log1p(len(c)) for c in completions]\n"


def grpo_cell(out, rewards: str) -> str:
    return cell(out, stage="grpo", dataset="demo", num_generations=2, max_completion_length=12,
                per_device_train_batch_size=4, max_steps=2) + f"reward_funcs: {rewards}\n"


def test_a_reward_function_from_a_cell_goes_into_the_config(ip):
    """`{short}` (a placeholder) and `short` (a bare name) both take the cell's function, shipped by source."""
    ip.run_cell(REWARD)
    with capture_output() as cap:
        run_cell(ip, "finetune --dry-run", grpo_cell("out/g1", "[{short}]"))
    assert "GRPO (2 answers a prompt, rewards short)" in cap.stdout
    from ftkit.notebook.magics import with_named_rewards

    named = with_named_rewards({"reward_funcs": ["short", "ftkit.rewards:concise"]}, ip.user_ns)["reward_funcs"]
    assert named[0]["function"] == "short" and "math.log1p" in named[0]["source"] and named[1] == \
        "ftkit.rewards:concise"


@pytest.mark.slow
def test_grpo_with_a_cells_reward_trains_in_the_child(ip):
    ip.run_cell(REWARD)
    with capture_output():
        run = run_cell(ip, "finetune --name g", grpo_cell("out/g2", "[short]"))
    assert type(run).__name__ == "LaunchedRun"
    steps = [e for e in run.metrics if e["kind"] == "step"]
    assert len(steps) == 2 and "reward_short" in steps[-1]["metrics"]


def test_dry_run_plans_for_a_device_the_kernel_does_not_have(ip, workdir):
    with capture_output() as out:
        run_cell(ip, "finetune --dry-run --device l4", cell("out/l4"))
    assert "on a NVIDIA L4 (planned; bf16, sdpa attention)" in out.stdout and "22.2 GiB available" in out.stdout
    with pytest.raises(UsageError, match="--device plans a run for a device"):
        run_cell(ip, "finetune --device t4", cell("out/t4"))


def test_dry_run_checks_and_shows_the_plan_without_weights(ip, workdir):
    with capture_output() as cap:
        run_cell(ip, "finetune --dry-run", cell("out/dry"))
    assert "dry run: no weights loaded" in cap.stdout and "143,360 of 3,636,736 parameters" in cap.stdout
    assert "memory   ~" in cap.stdout and "steps    8 updates" in cap.stdout
    assert not (workdir / "out/dry").exists()


def test_config_errors_are_short_unless_debug(ip):
    with pytest.raises(UsageError, match="lerning_rate.*did you mean learning_rate"):
        run_cell(ip, "finetune", "dataset: demo\nlerning_rate: 1e-4\n")
    with pytest.raises(UsageError, match="line 2"):
        run_cell(ip, "finetune", "dataset: demo\n\tmax_steps: 3\n")
    with pytest.raises(ftkit.ConfigError):
        run_cell(ip, "finetune --debug", "dataset: demo\nlerning_rate: 1e-4\n")
    with pytest.raises(UsageError, match="dataset: 'nope.json' is neither a file"):  # found by the child
        run_cell(ip, "finetune", cell("out/e", dataset="nope.json"))


@pytest.mark.slow
def test_a_crash_in_the_child_is_a_short_error_and_the_kernel_lives(ip, workdir):
    (workdir / "not_a_checkpoint").mkdir()
    with pytest.raises(UsageError, match=r"the training process exited with code 1: .*not_a_checkpoint.*memory"):
        run_cell(ip, "finetune", cell("out/c", resume_from_checkpoint="not_a_checkpoint"))
    assert ip.run_cell("1 + 1").result == 2


@pytest.mark.slow
def test_a_warm_child_takes_the_next_run_and_trains_it_the_same(ip, workdir, monkeypatch):
    """%load_ext starts a child ahead (its imports done before the cell runs); the run it takes trains exactly as a
    child started for it, in the folder the run was started from; a new one waits after each run; one started
    under another environment is not used; %unload_ext ends it."""
    from ftkit import launching as launch

    waiting = launch._warm["process"]
    assert launch._warm["on"] and waiting.poll() is None
    warm = ftkit.launch(base_config("out/w"))
    assert warm.process is waiting and "--wait-for-config" in warm.process.args
    assert (workdir / "out/w/adapter/adapter_model.safetensors").exists()
    launch.keep_warm(False)
    assert waiting.poll() is not None and launch._warm["process"] is None
    cold = ftkit.launch(base_config("out/c"))
    assert "--wait-for-config" not in cold.process.args
    assert [l for _, l in warm.losses] == [l for _, l in cold.losses]

    launch.keep_warm()
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    waiting = launch._warm["process"]
    run = ftkit.launch(base_config("out/e", max_steps=2))
    assert run.process is waiting and (workdir / "elsewhere/out/e/adapter").is_dir()
    waiting = launch._warm["process"]
    assert waiting is not None and waiting is not run.process  # the next one, started as this run ended
    monkeypatch.setenv("FTKIT_TEST_SETTING", "changed")
    run = ftkit.launch(base_config("out/v", max_steps=2))
    assert run.process is not waiting and waiting.poll() is not None
    waiting = launch._warm["process"]
    ip.run_line_magic("unload_ext", "ftkit")
    assert waiting.poll() is not None and not launch._warm["on"]
    ip.run_line_magic("load_ext", "ftkit")


def test_a_warm_child_ends_with_its_parent():
    code = ("from ftkit import launching as launch\n"
            "launch.keep_warm()\n"
            "print(launch._warm['process'].pid)\n")
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(parent.stdout.split()[-1])
    import psutil

    deadline = time.time() + 60  # it finishes its imports, then finds its stdin closed
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_a_killed_child_is_reported_with_advice(workdir):
    run = ftkit.launch(base_config("out/k", max_steps=400), background=True)
    while not run.losses:
        time.sleep(0.05)
    run.process.kill()
    with pytest.raises(ftkit.FtkitError, match=r"killed by signal 9 \(SIGKILL: usually the system ran out of memory\)"
                                               r".*pre-flight estimate was ~\d+ MiB"):
        run.wait()
    assert [e["kind"] for e in run.metrics][-1] == "error"


def _interrupt_at_step(n):
    def callback(e):
        if e["kind"] == "step" and e["step"] == n:
            raise KeyboardInterrupt  # what a kernel interrupt raises in the cell's thread
    return callback


@pytest.mark.slow
@pytest.mark.parametrize("inline", [False, True], ids=["child", "inline"])
def test_interrupt_saves_what_was_trained_and_leaves_the_kernel_usable(ip, monkeypatch, inline):
    original = LivePanel.__call__
    stop_at = _interrupt_at_step(3)
    monkeypatch.setattr(LivePanel, "__call__", lambda self, e: stop_at(e) or original(self, e))
    run = run_cell(ip, "finetune" + " --inline" * inline, cell("out/i", max_steps=200))
    assert run.stopped and 3 <= run.losses[-1][0] < 10
    assert (run.adapter_dir / "adapter_model.safetensors").exists()
    assert ip.run_cell("1 + 1").result == 2
    if inline:
        assert run.model is not None  # --inline keeps the trained model live in the kernel


@pytest.mark.slow
def test_background_returns_at_once_and_stops_on_request(ip):
    t = time.time()
    run = run_cell(ip, "finetune --background --name bg", cell("out/bg", max_steps=400))
    assert time.time() - t < 2 and not run.done
    assert ip.run_cell("2 + 2").result == 4  # the kernel is free while it trains
    while not run.losses:
        time.sleep(0.05)
    run.stop()
    assert run.wait() is run and run.done and run.stopped and run.losses[-1][0] < 400
    assert (run.adapter_dir / "adapter_model.safetensors").exists()
    assert not (run.output_dir / ".ftkit-stop").exists()


def test_inline_refuses_background(ip):
    with pytest.raises(UsageError, match="--inline trains in this kernel"):
        run_cell(ip, "finetune --inline --background", cell("out/x"))


@pytest.mark.slow
def test_memory_is_not_kept_across_runs():
    """Kernel RSS after the third %%finetune within 10% of after the first, in a child and --inline."""
    code = textwrap.dedent(f"""
        import json, os, sys, yaml, psutil, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(DATA.parent / "tests")!r})
        from conftest import base_config
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "ftkit")
        import ftkit.notebook
        ftkit.notebook.DISPLAY = "text"
        rss = {{}}
        for mode in ("", " --inline"):
            rss[mode] = []
            for i in range(3):
                body = yaml.safe_dump(base_config("out/m", max_steps=4, overwrite_output_dir=True))
                result = ip.run_cell("%%finetune" + mode + "\\n" + body)
                assert result.success, result.error_in_exec
                rss[mode].append(psutil.Process().memory_info().rss)
        print(json.dumps(rss))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(DATA.parent / "outputs"))
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    for mode, (first, _, third) in rss.items():
        assert third <= first * 1.10, f"%%finetune{mode}: RSS {first / 2**20:.0f} -> {third / 2**20:.0f} MiB"


# ---- the live panel's widgets, fed a real run's events ----

@pytest.fixture(scope="module")
def events(tmp_path_factory):
    out = tmp_path_factory.mktemp("events") / "run"
    run = ftkit.train(base_config(out, max_steps=6, val_size=8, eval_steps=3, preview_prompts=["Who are you?"]),
                      console=False)
    return run.metrics


def test_panel_draws_curve_stats_memory_and_samples(events):
    panel = LivePanel("t", widgets=True, fps=1e9)
    for e in events[:-1]:
        assert panel(e) is None
    assert bytes(panel.chart.value).startswith(b"\x89PNG")
    assert "step 6/6" in panel.stats.value and "tok/s" in panel.stats.value and "ETA" in panel.stats.value
    assert 0 < panel.memory.value <= panel.memory.max and panel.memory_text.value.startswith("RAM: ")
    assert "Who are you?" in panel.sample_box.value and "step 0" in panel.sample_box.value
    assert panel.evals and len(panel.steps) == 6


def test_panel_samples_show_one_column_a_step(events):
    from ftkit.notebook.live import samples_html

    panel = LivePanel("t", widgets=True, fps=1e9)
    samples = [e for e in events if e["kind"] == "sample"]
    panel(samples[0])  # before the first step: one column, step 0
    assert panel.sample_box.value.count("<th>step ") == 1 and "<th>step 0</th>" in panel.sample_box.value
    for e in samples[1:]:
        panel(e)
    last = samples[-1]["step"]
    assert panel.sample_box.value.count("<th>step ") == 2 and f"<th>step {last}</th>" in panel.sample_box.value
    assert "<td>a</td><td>c</td></tr>" in samples_html({"q": {0: "a", 3: "b", 6: "c"}})  # the first and the latest


def test_panel_ends_as_a_static_image_and_summary(events):
    panel = LivePanel("t", widgets=True)
    with capture_output() as cap:
        panel.show()
        for e in events:
            panel(e)
    final = cap.outputs[-1].data
    assert final["image/png"] and "done at step 6" in final["text/plain"] and "eval loss" in final["text/plain"]
    assert panel.box.comm is None  # the live widgets are closed


def test_stop_button_sets_the_flag_that_ends_training(workdir):
    panel = LivePanel("t", widgets=True)
    clicked = []

    def click_at_2(e):
        if e["kind"] == "step" and e["step"] == 2:
            panel.stop_button.click()
            clicked.append(panel.stop_requested)

    run = ftkit.train(base_config("out/s", max_steps=50), callbacks=[click_at_2, panel], console=False,
                      should_stop=lambda: panel.stop_requested)
    assert clicked == [True] and panel.stop_button.disabled
    assert run.stopped and run.losses[-1][0] == 2
    assert (run.adapter_dir / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_kernel_keeps_its_logging_threads_and_warnings(ip, workdir, monkeypatch):
    """preview, an --inline run, merge and generate change the process's settings only while they run."""
    import logging
    import os
    import warnings

    import torch
    import transformers.utils.logging as hf

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    threads, verbosity = torch.get_num_threads(), hf.get_verbosity()
    hf.set_verbosity_info()
    torch.set_num_threads(2)

    def settings():
        return (hf.get_verbosity(), hf.is_progress_bar_enabled(), torch.get_num_threads(),
                logging.getLogger("bitsandbytes.autograd._functions").level, os.environ.get("TOKENIZERS_PARALLELISM"),
                list(warnings.filters))

    before = settings()
    try:
        with capture_output():
            ftkit.preview("demo", n=1)
            assert settings() == before, "preview"
            run = run_cell(ip, "finetune --inline --name kept", cell("out/k", max_steps=2))  # threads: 1 for the run
            assert settings() == before, "an --inline run"
            merged = ftkit.merge(run.adapter_dir, console=False)
            assert settings() == before, "merge"
            ftkit.generate(merged, "Who are you?", max_new_tokens=3)
            assert settings() == before, "generate"
    finally:
        hf.set_verbosity(verbosity)
        torch.set_num_threads(threads)


# ---- form, preview, chat, merge, compare ----

def test_form_round_trips_to_the_same_yaml_with_schema_tooltips():
    form = ftkit.panel()
    fields = RunConfig.fields()
    rate = form.widgets["learning_rate"]  # ipywidgets 8: tooltip; 7 (Colab's): description_tooltip
    assert (getattr(rate, "tooltip", None) or rate.description_tooltip) == fields["learning_rate"].metadata["help"]
    assert form.widgets["lora_rank"].value == RunConfig.lora_rank  # defaults from the schema
    w = form.widgets
    w["dataset"].value, w["method"].value, w["lora_rank"].value = "demo", "QLoRA (4-bit)", 16
    w["lora_target"].value, w["learning_rate"].value, w["precision"].value = "q_proj,v_proj", 2e-4, "bf16"
    w["max_steps"].value, w["output_dir"].value = 30, "outputs/form"
    text = form.yaml()
    assert "%%finetune" in form.yaml_view.value and "quantization_bit: 4" in form.yaml_view.value
    cfg = RunConfig.from_dict(yaml.safe_load(text))
    assert (cfg.quantization_bit, cfg.lora_rank, cfg.lora_target, cfg.bf16) == (4, 16, ["q_proj", "v_proj"], True)
    again = ftkit.panel()
    again.set_config(cfg)
    assert again.yaml() == text


def test_form_buttons_validate_and_show_errors(ip, monkeypatch, workdir):
    form = ftkit.panel(dataset="demo", max_steps=3)
    form.validate()
    assert "parameters" in form.message.value and "end-of-turn token trained: yes" in form.message.value
    form.widgets["dataset"].value = "nope.json"
    form.validate()
    assert "nope.json" in form.message.value and "color:#b00" in form.message.value
    form.widgets["dataset"].value = "demo"
    cells = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: cells.append(text))
    form.to_cell()
    assert cells[0].startswith("%%finetune\nmodel_name_or_path: tiny\ndataset: demo\n")
    mine = (DATA / "formats" / "alpaca.json").read_bytes()  # the file picker: what a browser upload hands over
    import ipywidgets

    if ipywidgets.__version__.startswith("7."):  # Colab's: a dict name -> {metadata, content}, set by the browser
        form.upload.set_trait("value", {"mine.json": {"metadata": {"name": "mine.json", "type": "application/json",
                                                                   "size": len(mine), "lastModified": 0},
                                                      "content": mine}})
    else:
        form.upload.value = ({"name": "mine.json", "type": "application/json", "size": len(mine),
                              "content": memoryview(mine), "last_modified": datetime.datetime.now()},)
    assert (workdir / "data" / "mine.json").read_bytes() == mine and form.widgets["dataset"].value == "data/mine.json"
    form.validate()
    assert "3 examples" in form.message.value


def test_preview_marks_trained_tokens_and_counts_long_examples(ip):
    p = ftkit.preview("demo", n=2, cutoff_len=40)
    assert len(p.examples) == 2 and len(p.lengths) == 282 and p.over_cutoff == sum(n > 40 for n in p.lengths) > 0
    trained = "".join(t for t, keep in p.examples[0] if keep)
    assert trained.rstrip("\n").endswith("<|im_end|>") and "<|im_start|>" not in trained  # answers and their end, no prompt
    assert "[[" in repr(p) and "end-of-turn trained: yes" in repr(p)
    html = p._repr_html_()
    assert "data:image/png;base64," in html and "background:#c8f7c5" in html
    with capture_output():
        shown = ip.run_line_magic("ftkit", "preview dataset=demo n=1 template=chatml")
    assert shown.template == "chatml" and len(shown.examples) == 1
    with pytest.raises(UsageError, match="usage: %ftkit preview"):
        ip.run_line_magic("ftkit", "")


def test_a_second_preview_keeps_the_tokenizer(monkeypatch):
    """The tokenizer (a second or two for a 150k vocabulary, its fast encoder as long) loads once for previews of
    the same model."""
    from ftkit import model as M

    loads = []
    real = M.load_tokenizer
    monkeypatch.setattr(M, "load_tokenizer", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    for _ in range(2):
        ftkit.preview("demo", n=1)
    assert len(loads) <= 1


def test_preview_shows_chinese_and_emoji_whole(tmp_path, tiny_tokenizer):
    """tiny's tokenizer is byte-level BPE: rare characters and emoji split over tokens that alone decode to U+FFFD."""
    import json

    answer = "饕餮是传说中的怪兽🐉，贪吃。"
    record = {"conversation": [{"role": "user", "content": "饕餮是什么？😀"}, {"role": "assistant", "content": answer}]}
    (tmp_path / "zh.json").write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    assert "\ufffd" in tiny_tokenizer.decode(tiny_tokenizer.encode("饕")[:1]), "the case this test is about"
    (example,) = ftkit.preview(str(tmp_path / "zh.json"), n=1).examples
    texts = [t for t, _ in example]
    assert not any("\ufffd" in t for t in texts) and "饕" in texts and "🐉" in texts
    assert "".join(t for t, trained in example if trained) == answer + "<|im_end|>"
    assert "".join(texts) == tiny_tokenizer.apply_chat_template(record["conversation"], tokenize=False)


@pytest.mark.slow
def test_chat_streams_keeps_history_merge_and_compare(ip):
    run = run_cell(ip, "finetune --inline --name tuned", cell("out/t", max_steps=20))
    with capture_output() as cap:
        run_cell(ip, "chat --max_new_tokens 12", "Who are you?")
    history = ip.magics_manager.registry["FtkitMagics"].histories["tuned"]
    assert cap.stdout.strip() == history[1]["content"] != ""
    with capture_output():
        run_cell(ip, "chat --run tuned --max_new_tokens 12", "什么是LoRA？")
    assert [m["role"] for m in ip.magics_manager.registry["FtkitMagics"].histories["tuned"]] == \
        ["user", "assistant"] * 2
    with capture_output():
        ip.run_line_magic("chat", "--reset")
    assert "tuned" not in ip.magics_manager.registry["FtkitMagics"].histories
    with capture_output() as cap:
        merged = ip.run_line_magic("merge", "tuned --out out/t_merged")
    assert (merged / "config.json").exists() and "merged model: out/t_merged" in cap.stdout
    with capture_output() as cap:
        gguf = ip.run_line_magic("export_gguf", "tuned --quant q8_0")
    assert gguf == run.output_dir / "model-q8_0.gguf" and gguf.with_suffix(".Modelfile").exists()
    assert "check: tokenizer gives the same ids" in cap.stdout and "ollama create" in cap.stdout
    table = ftkit.compare(["Who are you?"], runs=["tiny", run], max_new_tokens=12)
    assert table.labels == ["base (tiny)", "tuned"] and len(table.answers[0]) == 2
    assert table.answers[0][1] == ftkit.generate(run, "Who are you?", max_new_tokens=12)
    assert "<table>" in table._repr_html_() and "> Who are you?" in repr(table)
    with pytest.raises(UsageError, match="cell body is your message"):
        ip.run_line_magic("chat", "--max_new_tokens 3")


@pytest.mark.slow
def test_nproc_2_runs_ddp_through_accelerate_with_the_same_losses(ip):
    """Two CPU processes (gloo) with 4 examples each match one process with 8, step for step."""
    two = run_cell(ip, "finetune --nproc 2 --name two", cell("out/two", max_steps=4, per_device_train_batch_size=4))
    one = run_cell(ip, "finetune --inline --name one", cell("out/one", max_steps=4, per_device_train_batch_size=8))
    assert [s for s, _ in two.losses] == [1, 2, 3, 4]
    assert [loss for _, loss in two.losses] == pytest.approx([loss for _, loss in one.losses], rel=1e-4)
    assert len(two.metrics) == len(one.metrics)  # events relayed once, from the first process
    assert (two.adapter_dir / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_form_run_button_trains_in_the_background(ip):
    form = ftkit.panel(dataset="demo", max_steps=3, output_dir="out/form", per_device_train_batch_size=8)
    form.run()
    assert "training in a child process" in form.message.value
    run = form.run_object.wait()
    assert run.done and run.metrics[-1]["kind"] == "end" and run.metrics[-1]["step"] == 3


def test_memory_gauge_reads_gpu_figures_when_the_run_reports_them(events):
    """On CUDA, step events carry allocated and reserved memory against the GPU's total (CI has no GPU:
    the event is a CPU run's with the fields a CUDA run adds)."""
    step = {**next(e for e in events if e["kind"] == "step"),
            "memory_mb": 6144.0, "memory_allocated_mb": 5120.0, "memory_total_mb": 81559.0}
    panel = LivePanel("t", widgets=True, fps=1e9)
    panel(step)
    assert panel.memory_text.value == "GPU: 5.0 GiB allocated, 6.0 GiB reserved of 79.6 GiB"
    assert (panel.memory.value, panel.memory.max, panel.memory.bar_style) == (6144.0, 81559.0, "info")
    panel({**step, "memory_mb": 80000.0})
    assert panel.memory.bar_style == "danger"  # over 90% of the device


def test_a_predict_cell_answers_scores_and_binds_the_predictions(ip, workdir):
    """A %%finetune cell with do_predict (LLaMA-Factory's predict runs) answers eval_dataset in the kernel and
    shows the scores; the result is bound like a run."""
    body = yaml.safe_dump({"model_name_or_path": "tiny", "do_predict": True, "eval_dataset": str(DATA / "seed_examples.json"),
                           "output_dir": str(workdir / "pred"), "max_new_tokens": 8})
    with capture_output() as cap:
        result = run_cell(ip, "finetune --name scored", body)
    assert ip.user_ns["scored"] is result and len(result.rows) == 2
    assert "bleu-4" in repr(result) and "rouge-l" in cap.stdout and (workdir / "pred/predict_results.json").exists()
