"""End-to-end runs on the embedded tiny Llama, on CPU: every method learns, files land, merge is exact."""
import json

import pytest
import torch

import ftkit
from conftest import DATA, base_config, eval_drop, scored_config
from ftkit.config import RunConfig
from ftkit.errors import ConfigError, DataError
from ftkit.events import read_jsonl

pytestmark = pytest.mark.slow


def test_lora_run_writes_everything_and_learns(workdir):
    out = workdir / "run"
    run = ftkit.train(scored_config(out), console=False)
    assert eval_drop(run) > 0.5
    assert {p.name for p in out.iterdir()} >= {"run.yaml", "metrics.jsonl", "adapter"}
    assert {p.name for p in run.adapter_dir.iterdir()} >= {
        "adapter_model.safetensors", "adapter_config.json", "ftkit_run.yaml", "tokenizer.json", "chat_template.jinja"}
    kinds = [e["kind"] for e in read_jsonl(out / "metrics.jsonl")]
    assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("step") == 8 and "eval" in kinds
    begin = run.metrics[0]
    assert begin["eot_trained"] and 0 < begin["trainable_params"] < begin["total_params"]
    step = next(e for e in run.metrics if e["kind"] == "step")
    assert step["tokens_per_s"] > 0 and step["memory_mb"] > 0 and step["lr"] > 0
    assert not list(out.glob(".adapter*")), "no partial folder is left behind"


def test_run_yaml_alone_reproduces_the_run(workdir):
    first = ftkit.train(base_config(workdir / "a", max_steps=4), console=False)
    cfg = RunConfig.from_any(workdir / "a" / "run.yaml", ["output_dir=" + str(workdir / "b")])
    second = ftkit.train(cfg, console=False)
    assert cfg.to_dict() | {"output_dir": None} == first.config.to_dict() | {"output_dir": None}
    assert [l for _, l in second.losses] == pytest.approx([l for _, l in first.losses], abs=1e-5)


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_learns_on_cpu(workdir, bits, layer):
    from safetensors import safe_open

    run = ftkit.train(scored_config(workdir / f"q{bits}", quantization_bit=bits), console=False)
    assert eval_drop(run) > 0.3
    q_proj = run.model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == layer
    with safe_open(run.adapter_dir / "adapter_model.safetensors", "pt") as f:
        blocks = run.model.config.num_hidden_layers
        assert len([k for k in f.keys() if "lora_" in k]) == 2 * 7 * blocks  # A and B on 7 linear layers a block
    assert not run.metrics[0]["note"], "a dense model's adapter holds every layer: no MoE note"  # peft's wrapper
    # of a 4-bit layer shares the bare layer's class name; it once read as "LoRA not applied"


@pytest.mark.parametrize("method, extra", [("full", {}), ("freeze", {"freeze_trainable_layers": 1})])
def test_full_and_freeze_learn_and_save_a_whole_model(workdir, method, extra):
    from transformers import AutoModelForCausalLM

    run = ftkit.train(scored_config(workdir / method, finetuning_type=method, learning_rate=1e-3, **extra),
                      console=False)
    assert eval_drop(run) > 0.5
    begin = run.metrics[0]
    if method == "full":
        assert begin["trainable_params"] == begin["total_params"]
    else:
        layer = sum(p.numel() for p in run.model.model.layers[-1].parameters())
        assert begin["trainable_params"] == layer
        assert not any(p.requires_grad for p in run.model.model.layers[0].parameters())
    assert run.adapter_dir.name == "model"
    reloaded = AutoModelForCausalLM.from_pretrained(run.adapter_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, run.model.eval()(ids).logits, atol=1e-5)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("bits", [None, 4])
def test_merge_equals_adapter_model(workdir, bits):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftkit.model import resolve

    run = ftkit.train(base_config(workdir / "r", quantization_bit=bits), console=False)
    merged_dir = ftkit.merge(run.adapter_dir, console=False)
    assert merged_dir == workdir / "r" / "merged"
    ids = torch.randint(3, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(resolve("tiny"), dtype=torch.float32)
    base_logits = _logits(base, ids)
    with_adapter = _logits(PeftModel.from_pretrained(base, run.adapter_dir).eval(), ids)
    merged = _logits(AutoModelForCausalLM.from_pretrained(merged_dir).eval(), ids)
    assert torch.allclose(merged, with_adapter, atol=1e-4)  # the same model ...
    assert (merged - base_logits).abs().max() > 1e-2        # ... and not the base
    assert "lora" not in json.dumps(json.loads((merged_dir / "config.json").read_text())).lower()


def test_several_adapters_merge_in_order_as_llama_factory_merges_them(workdir):
    """adapter_name_or_path: a,b (LLaMA-Factory's export: each adapter merged into the model in turn) gives the
    model peft computes with both adapters active at once on the base: base + delta_a + delta_b."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftkit.model import resolve

    a = ftkit.train(base_config(workdir / "a", max_steps=3, learning_rate=1e-2), console=False)
    b = ftkit.train(base_config(workdir / "b", max_steps=3, learning_rate=1e-2, seed=7, lora_rank=4), console=False)
    merged_dir = ftkit.merge(f"{a.adapter_dir},{b.output_dir}", out=workdir / "ab", console=False)
    ids = torch.randint(3, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    both = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve("tiny"), dtype=torch.float32),
                                     a.adapter_dir, adapter_name="a")
    both.load_adapter(b.adapter_dir, adapter_name="b")
    both.base_model.set_adapter(["a", "b"])  # peft's LoRA layers add every active adapter's delta
    merged = _logits(AutoModelForCausalLM.from_pretrained(merged_dir).eval(), ids)
    assert torch.allclose(merged, _logits(both.eval(), ids), atol=1e-4)
    only_b = ftkit.merge(b.adapter_dir, out=workdir / "b-only", console=False)
    assert (merged - _logits(AutoModelForCausalLM.from_pretrained(only_b).eval(), ids)).abs().max() > 1e-3
    from ftkit.generation import load

    net, _, _ = load("tiny", f"{a.output_dir},{b.adapter_dir}")  # chat with several: the same model
    assert torch.allclose(_logits(net, ids), merged, atol=1e-4)


def test_merge_refuses_full_runs_and_missing_adapters(workdir):
    from ftkit.errors import ModelError

    run = ftkit.train(base_config(workdir / "f", finetuning_type="full", max_steps=1), console=False)
    with pytest.raises(ModelError, match="trained the whole model"):
        ftkit.merge(run.output_dir)
    with pytest.raises(ModelError, match="no LoRA adapter here"):
        ftkit.merge(workdir)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """LoRA on the demo set long enough to learn the identity answers and to stop."""
    out = tmp_path_factory.mktemp("chat") / "run"
    run = ftkit.train(base_config(out, max_steps=200, learning_rate=2e-3, lora_rank=16, logging_steps=50,
                                  lr_scheduler_type="constant"), console=False)
    return run, ftkit.merge(run.adapter_dir, console=False)


def test_chat_stops_at_end_of_turn(chat_run):
    from ftkit.generation import load, stop_ids

    run, merged = chat_run
    net, tok, tmpl = load(str(merged))
    text = tmpl.render([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True).text
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    out = net.generate(**enc, max_new_tokens=60, do_sample=False, eos_token_id=stop_ids(tok, tmpl),
                       pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert len(new) < 60 and tok.convert_ids_to_tokens(new[-1]) == "<|im_end|>"
    answer = ftkit.generate(merged, "Who are you?", max_new_tokens=60)
    assert "Tiny" in answer and "<|im_end|>" not in answer


def test_adapter_and_merged_answer_alike_and_pipeline_works(chat_run):
    """The seed's check: a plain transformers pipeline on the merged folder formats and stops the same way."""
    from transformers import pipeline

    run, merged = chat_run
    via_adapter = ftkit.generate("tiny", "你是谁？", adapter=run.adapter_dir, max_new_tokens=40)
    via_merged = ftkit.generate(merged, "你是谁？", max_new_tokens=40)
    via_run = ftkit.generate(run, "你是谁？", max_new_tokens=40)
    assert via_adapter == via_merged == via_run and via_merged
    pipe = pipeline("text-generation", model=str(merged))
    out = pipe([{"role": "user", "content": "你是谁？"}], max_new_tokens=40, do_sample=False)
    assert out[0]["generated_text"][-1] == {"role": "assistant", "content": via_merged}


def test_sampling_settings_pass_through(chat_run):
    run, merged = chat_run
    ask = lambda **kw: ftkit.generate(merged, "Write an English meeting invitation.", max_new_tokens=30, **kw)  # noqa: E731
    greedy = ask()
    state = torch.random.get_rng_state()
    assert ask(temperature=1.5, seed=0) == ask(temperature=1.5, seed=0), "a seed repeats a sampled answer"
    assert torch.equal(torch.random.get_rng_state(), state), "the seed is the answer's, not the process's"
    hot = {ask(temperature=1.5, top_p=0.95, seed=s) for s in range(4)}
    assert len(hot) > 1 and hot != {greedy}, "a high temperature samples"
    assert {ask(temperature=0.01, seed=s) for s in range(3)} == {greedy}, "a temperature near 0 is greedy"
    assert ask(temperature=1.5, top_k=1, seed=1) == greedy, "top_k=1 keeps only the most likely token"


def test_refuses_data_that_never_trains_end_of_turn(workdir):
    long = [{"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 100}]}]
    (workdir / "long.json").write_text(json.dumps(long))
    with pytest.raises(DataError, match="never learn to stop"):
        ftkit.train(base_config(workdir / "x", dataset="long.json", dataset_dir=str(workdir), cutoff_len=24),
                    console=False)


def test_engine_checks_that_need_the_model(workdir):
    with pytest.raises(ConfigError, match=r"lora_target: nope match no linear layer .* q_proj"):
        ftkit.train(base_config(workdir / "t", lora_target="q_proj,nope"), console=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16: needs a CUDA GPU"):
            ftkit.train(base_config(workdir / "h", fp16=True), console=False)


def test_lora_all_means_every_linear_layer_but_the_head(workdir):
    run = ftkit.train(base_config(workdir / "all", max_steps=1), console=False)
    targets = set(run.model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n and "lora" in n for n, _ in run.model.named_parameters())


def test_everything_checkable_without_weights_fails_together(workdir, monkeypatch):
    import ftkit.model

    monkeypatch.setattr(ftkit.model, "load_model", lambda *a, **k: pytest.fail("no model may load"))
    (workdir / "taken" ).mkdir()
    (workdir / "taken" / "run.yaml").write_text("dataset: demo\n")
    with pytest.raises(ConfigError) as e:
        ftkit.train(base_config(workdir / "taken", model_name_or_path=str(workdir / "nomodel"), dataset="nope",
                                template="llama-3"), console=False)
    text = str(e.value)
    for part in ("nomodel: no such model folder", "'nope' is neither a file", "did you mean llama3",
                 "already holds a run"):
        assert part in text
    (workdir / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model folder \\(no config.json\\)"):
        ftkit.train(base_config(workdir / "x", model_name_or_path=str(workdir / "empty")), console=False)


def test_hub_names_go_through_the_real_loader_and_fail_clearly_offline(workdir, monkeypatch):
    from ftkit.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="someorg/no-such-model: cannot load a tokenizer"):
        ftkit.train(base_config(workdir / "hub", model_name_or_path="someorg/no-such-model"), console=False)


def test_bf16_on_cpu_trains_with_a_note(workdir):
    run = ftkit.train(base_config(workdir / "bf", bf16=True, max_steps=1, per_device_train_batch_size=1,
                                  cutoff_len=24), console=False)
    assert "bf16 on a CPU" in run.metrics[0]["note"] and run.losses
    assert next(p for p in run.model.parameters() if not p.requires_grad).dtype == torch.bfloat16


def test_merge_fails_loudly_when_merged_logits_differ(workdir, monkeypatch):
    from peft.tuners.lora import LoraModel

    from ftkit.errors import ModelError

    run = ftkit.train(base_config(workdir / "m", max_steps=2), console=False)
    real = LoraModel.merge_and_unload

    def broken(self, *a, **k):
        merged = real(self, *a, **k)
        with torch.no_grad():
            merged.model.layers[0].self_attn.q_proj.weight.add_(0.5)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", broken)
    with pytest.raises(ModelError, match="merge check failed for .*adapter: merged logits differ"):
        ftkit.merge(run.adapter_dir, console=False)
    assert not (workdir / "m" / "merged").exists() and not list((workdir / "m").glob(".merged*"))


def test_existing_run_folder_is_not_overwritten(workdir):
    ftkit.train(base_config(workdir / "o", max_steps=3, save_steps=3, report_to="tensorboard"), console=False)
    ftkit.merge(workdir / "o", console=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        ftkit.train(base_config(workdir / "o", max_steps=1), console=False)
    ftkit.train(base_config(workdir / "o", max_steps=1, overwrite_output_dir=True), console=False)
    # what the replaced run left is gone: a later resume cannot pick its checkpoints, TensorBoard shows one run
    assert sorted(p.name for p in (workdir / "o").glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (workdir / "o/merged").exists() and not (workdir / "o/runs").exists()


def test_stop_from_a_subscriber_and_interrupt_save_the_adapter(workdir):
    stop_at_3 = lambda e: "stop" if e["kind"] == "step" and e["step"] >= 3 else None  # noqa: E731
    run = ftkit.train(base_config(workdir / "s"), callbacks=[stop_at_3], console=False)
    assert run.stopped and run.losses[-1][0] == 3 and (run.adapter_dir / "adapter_model.safetensors").exists()

    def interrupt(e):
        if e["kind"] == "step" and e["step"] == 2:
            raise KeyboardInterrupt

    run = ftkit.train(base_config(workdir / "k"), callbacks=[interrupt], console=False)
    assert run.stopped and (run.adapter_dir / "adapter_model.safetensors").exists()
    assert run.metrics[-1]["kind"] == "end" and run.metrics[-1]["stopped"]


def test_console_progress_and_preflight(workdir, capsys):
    ftkit.train(base_config(workdir / "c", max_steps=2), console=True)
    text = capsys.readouterr().out
    assert "end-of-turn token trained: yes" in text and "LoRA r=8 on all" in text
    assert "step 1/2" in text and "tok/s" in text and "saved" in text


def test_tensorboard_events_hold_the_loss(workdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ftkit.train(base_config(workdir / "tb", max_steps=4, report_to="tensorboard"), console=False)
    (events,) = list((workdir / "tb" / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 4


def test_tiny_is_a_pretrained_base_model():
    """The shipped weights read the bundled text far better than a random init of the same shape."""
    from ftkit import tiny
    from ftkit.model import load_tokenizer
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny.path()))
    text = " ".join(tiny.corpus_lines(DATA / "corpus")[:6])
    ids = tok(text, return_tensors="pt")["input_ids"][:, :256]
    trained = AutoModelForCausalLM.from_pretrained(tiny.path())
    random_init = tiny.build_model(len(tok), tok.eos_token_id)
    with torch.no_grad():
        assert trained(ids, labels=ids).loss < 1.0 < 5.0 < random_init(ids, labels=ids).loss
    assert (tiny.path() / "model.safetensors").stat().st_size < 20 * 2**20


def test_pretraining_script_builds_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftkit import tiny

    info = tiny.pretrain(DATA / "corpus", tmp_path, steps=3, batch=2, seq=32, threads=1, log_every=1)
    again = tiny.pretrain(DATA / "corpus", tmp_path / "again", steps=3, batch=2, seq=32, threads=1, log_every=1)
    assert info["steps"] == 3 and info["corpus_tokens"] > 5000
    assert info["final_loss"] == again["final_loss"], "the build is deterministic"
    assert (tmp_path / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "llama"


def test_checkpoints_land_whole_rotate_and_resume(workdir):
    out = workdir / "ck"
    run = ftkit.train(base_config(out, max_steps=6, save_steps=2, save_total_limit=2), console=False)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not (out / ".staging").exists() and [e["step"] for e in run.metrics if e["kind"] == "save"] == [2, 4, 6]
    resumed = ftkit.train(base_config(out, max_steps=8, save_steps=2, resume_from_checkpoint=True), console=False)
    assert [s for s, _ in resumed.losses] == [7, 8]
    with pytest.raises(ConfigError, match="no checkpoint-N folder"):
        ftkit.train(base_config(workdir / "none", resume_from_checkpoint=True), console=False)


def test_qlora_gradients_survive_an_evaluation_pass():
    """bitsandbytes repacks 4-bit weights for CPU inference after an eval-mode forward, after which its backward
    drops input gradients; ftkit's training models must give the same gradients with or without an evaluation."""
    from ftkit.model import load_model, make_trainable, resolve

    cfg = RunConfig.from_dict(base_config("unused", quantization_bit=4))
    ids = torch.randint(3, 2000, (2, 16), generator=torch.Generator().manual_seed(0))

    def lora_grads(evaluate_first: bool):
        torch.manual_seed(0)
        model = make_trainable(load_model(cfg, resolve("tiny")), cfg)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
            model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, after_eval = lora_grads(False), lora_grads(True)
    assert plain.keys() == after_eval.keys()
    for name in plain:
        assert torch.allclose(plain[name], after_eval[name], atol=1e-6), name


def test_chat_reloads_a_rewritten_model_folder(workdir):
    from transformers import AutoModelForCausalLM

    from ftkit.generation import load

    q_proj = lambda net: net.model.layers[0].self_attn.q_proj.weight.detach().clone()  # noqa: E731
    first = ftkit.train(base_config(workdir / "r", max_steps=1), console=False)
    merged = ftkit.merge(first.adapter_dir, console=False)
    before = ftkit.generate(merged, "Who are you?", max_new_tokens=4)
    assert isinstance(before, str) and before
    old = q_proj(load(str(merged))[0])
    again = ftkit.train(base_config(workdir / "r", max_steps=20, learning_rate=1e-2, overwrite_output_dir=True),
                        console=False)
    ftkit.merge(again.adapter_dir, console=False)  # same folder, new weights
    now = q_proj(load(str(merged))[0])
    assert torch.equal(now, q_proj(AutoModelForCausalLM.from_pretrained(merged))) and not torch.equal(now, old)


@pytest.mark.parametrize("bits", [None, 4])
def test_preview_answers_arrive_and_leave_training_unchanged(workdir, bits):
    """The sample event: answers before the first step, every preview_steps, at the end; training (QLoRA too,
    whose CPU kernels once broke after a no-grad pass) follows the same trajectory as without previews."""
    plain = ftkit.train(base_config("out/plain", max_steps=6, quantization_bit=bits), console=False)
    watched = ftkit.train(base_config("out/watched", max_steps=6, quantization_bit=bits, preview_steps=4,
                                      preview_prompts=["Who are you?", "什么是LoRA？"]), console=False)
    samples = [e for e in watched.metrics if e["kind"] == "sample"]
    assert [e["step"] for e in samples] == [0, 4, 6]
    assert [s["prompt"] for s in samples[0]["samples"]] == ["Who are you?", "什么是LoRA？"]
    assert all(isinstance(s["answer"], str) for e in samples for s in e["samples"])
    assert [loss for _, loss in watched.losses] == pytest.approx([loss for _, loss in plain.losses], rel=1e-5)
    steps = [e for e in watched.metrics if e["kind"] == "step"]
    assert all(e["tokens_per_s"] < 1e6 for e in steps)  # preview time is left out of throughput, not subtracted twice


@pytest.mark.parametrize("signals", [1, 2])
@pytest.mark.parametrize("before", ["default", "ignored"])
def test_first_interrupt_finishes_the_step_a_second_stops_at_once(workdir, signals, before):
    """`before`: the handler the process had; a process started in the background (`nohup ... &`) ignores SIGINT."""
    import os
    import signal

    def interrupt(e):
        if e["kind"] == "step" and e["step"] == 2:
            for _ in range(signals):  # like Ctrl-C, or a notebook kernel's interrupt
                os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler if before == "default" else signal.SIG_IGN)
    try:
        run = ftkit.train(base_config(f"out/sig{signals}", max_steps=50), callbacks=[interrupt], console=False)
        assert run.stopped and run.losses[-1][0] == 2 and run.metrics[-1]["step"] == 2
        assert (run.adapter_dir / "adapter_model.safetensors").exists()
        expected = signal.default_int_handler if before == "default" else signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is expected  # the handler that was there is put back
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_stopped_run_resumes_where_it_stopped(workdir):
    """Stop at step 4 (Stop button, Ctrl-C), then resume_from_checkpoint: true: steps 5-8 have the losses and
    learning rates of the run that was never stopped (same data order, same schedule)."""
    whole = ftkit.train(base_config("out/whole", max_steps=8), console=False)
    stop_at_4 = lambda e: "stop" if e["kind"] == "step" and e["step"] == 4 else None  # noqa: E731
    stopped = ftkit.train(base_config("out/part", max_steps=8), callbacks=[stop_at_4], console=False)
    assert stopped.stopped and (workdir / "out/part/checkpoint-4").is_dir()
    resumed = ftkit.train(base_config("out/part", max_steps=8, resume_from_checkpoint=True), console=False)
    steps = [e for e in resumed.metrics if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [5, 6, 7, 8]
    reference = {e["step"]: e for e in whole.metrics if e["kind"] == "step"}
    assert [e["loss"] for e in steps] == pytest.approx([reference[s]["loss"] for s in (5, 6, 7, 8)], rel=1e-5)
    assert [e["lr"] for e in steps] == pytest.approx([reference[s]["lr"] for s in (5, 6, 7, 8)], rel=1e-6)


@pytest.mark.slow
def test_killed_mid_save_leaves_the_last_good_checkpoint(workdir):
    """SIGKILL while checkpoint-4 is being written: no checkpoint-4 appears, checkpoint-2 loads, resume continues
    from it and clears the half-written one."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    code = f"""
import sys, time
sys.path.insert(0, {str(REPO / "tests")!r})
import safetensors.torch as st
save = st.save_file
def slow(tensors, filename, *a, **kw):  # bound before peft imports it
    save(tensors, filename, *a, **kw)
    if "checkpoint-4" in str(filename):
        print("SAVING", flush=True)
        time.sleep(120)
st.save_file = slow
from conftest import base_config
import ftkit
ftkit.train(base_config("out/k", max_steps=6, save_steps=2), console=False)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "SAVING"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = workdir / "out/k"
    assert not (out / "checkpoint-4").exists() and (out / ".staging/checkpoint-4").is_dir()
    from safetensors import safe_open

    with safe_open(out / "checkpoint-2/adapter_model.safetensors", "pt") as f:
        assert len(list(f.keys())) > 0
    resumed = ftkit.train(base_config("out/k", max_steps=6, save_steps=2, resume_from_checkpoint=True), console=False)
    assert [e["step"] for e in resumed.metrics if e["kind"] == "step"][0] == 3
    assert not (out / ".staging").exists() and (out / "checkpoint-6").is_dir()


def test_saved_and_merged_models_keep_the_official_template_unless_trained_on_another(workdir, capsys):
    """auto, or a named template that renders what the tokenizer's own renders, keeps the tokenizer's own template
    (its tools, dates and thinking logic); a named template that differs is written, and the run and merge say so."""
    from transformers import AutoTokenizer

    from ftkit.model import resolve

    own = AutoTokenizer.from_pretrained(resolve("tiny")).chat_template
    for template in ("auto", "chatml"):  # chatml renders what tiny's own ChatML template renders
        run = ftkit.train(base_config(workdir / template, max_steps=1, template=template), console=False)
        merged = ftkit.merge(run.adapter_dir, console=False)
        assert AutoTokenizer.from_pretrained(run.adapter_dir).chat_template == own, template
        assert AutoTokenizer.from_pretrained(merged).chat_template == own, template
        assert not run.metrics[0]["note"]
    run = ftkit.train(base_config(workdir / "qwen", max_steps=1, template="qwen"), console=False)
    assert "ftkit's qwen written over the tokenizer's own" in run.metrics[0]["note"]
    saved = AutoTokenizer.from_pretrained(run.adapter_dir).chat_template
    assert saved != own and "You are Qwen, created by Alibaba Cloud" in saved
    capsys.readouterr()
    merged = ftkit.merge(run.adapter_dir)
    assert "ftkit's qwen written over the tokenizer's own" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(merged).chat_template == saved


def test_merge_refuses_with_numbers_when_ram_or_disk_is_short(workdir, monkeypatch):
    """Checked before the base loads: what merging needs (the model in its dtype, with room to save it) against
    the free RAM and disk, faked small here; nothing is written."""
    import ftkit.memory
    from ftkit.errors import ModelError

    run = ftkit.train(base_config(workdir / "m", max_steps=1), console=False)
    monkeypatch.setattr(ftkit.memory, "available", lambda: 300 * 2**20)
    with pytest.raises(ModelError, match=r"merging needs ~5\d\d MB of RAM, 300 MB free: merge on a machine with more "
                                         r"memory, or keep the adapter \(small\) and merge later"):
        ftkit.merge(run.adapter_dir, console=False)
    monkeypatch.setattr(ftkit.memory, "available", lambda: 2**40)
    monkeypatch.setattr(ftkit.memory, "free_disk", lambda path: 2**20)
    with pytest.raises(ModelError, match=r"merging needs ~\d+ MB of disk at .*m, 1 MB free"):
        ftkit.merge(run.adapter_dir, console=False)
    assert not (workdir / "m" / "merged").exists()
