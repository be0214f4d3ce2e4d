"""LLaMA-Factory's own files, unchanged but for the model path, as a migrating user brings them: its example
configs, its argument names and its demo datasets (fetched from its sdist on PyPI into the cache, tests/real.py).
"""
import pytest

from ftkit.config import (KEY_ALIASES, LF_ELSEWHERE, LF_GENERATION, LF_NOT_NEEDED, LF_REFUSED, LOW_RANK_KEYS,
                          RunConfig, read_yaml, training_argument_names)
from ftkit.errors import ConfigError
from real import llama_factory, llama_factory_argument_names

# training examples that ftkit runs as they are (model path aside); every other training example is refused by
# name: the method or setting it exists to show, which ftkit does not have
RUN_UNCHANGED = {
    "train_lora/qwen3_lora_sft.yaml", "train_lora/qwen3_lora_sft_ds3.yaml", "train_full/qwen3_full_sft.yaml",
    "extras/pissa/llama3_lora_sft.yaml", "extras/fsdp_qlora/llama3_lora_sft.yaml",
    "train_qlora/qwen3_lora_sft_otfq.yaml", "train_qlora/qwen3_lora_sft_bnb_npu.yaml",
    # these load a model quantized beforehand (AWQ, GPTQ, AQLM): the config is ftkit's; such weights load only
    # where transformers has the matching kernels
    "train_qlora/llama3_lora_sft_awq.yaml", "train_qlora/llama3_lora_sft_gptq.yaml",
    "train_qlora/llama3_lora_sft_aqlm.yaml",
    "extras/nlg_eval/llama3_lora_predict.yaml",  # a predict run (do_predict): answers and scores eval_dataset
    "train_lora/qwen3_preprocess.yaml",  # tokenized_path: tokenizes, saves and stops; then trains from it
    # the methods of extras/ that a maintained library gives (tests/test_optimizers.py checks each is that method)
    "extras/loraplus/llama3_lora_sft.yaml", "extras/muon/qwen2_full_sft.yaml", "extras/oft/llama3_oft_sft.yaml",
    "extras/galore/llama3_full_sft.yaml", "extras/apollo/llama3_full_sft.yaml",
    "extras/llama_pro/llama3_freeze_sft.yaml",  # on a model `ftkit expand` wrote, as its expand.sh does first
    "extras/qoft/llama3_oft_sft_bnb_npu.yaml", "extras/qoft/llama3_oft_sft_awq.yaml",
    "extras/qoft/llama3_oft_sft_gptq.yaml",
    # the other stages: continued pre-training, reward model, DPO, KTO (TRL's trainers)
    "train_lora/qwen3_lora_pretrain.yaml", "train_lora/qwen3_lora_reward.yaml", "train_lora/qwen3_lora_dpo.yaml",
    "train_lora/qwen3_lora_kto.yaml",
}
STAGE_EXAMPLES = {"train_lora/qwen3_lora_pretrain.yaml": ("pt", "texts"), "train_lora/qwen3_lora_reward.yaml":
                  ("rm", "pairs"), "train_lora/qwen3_lora_dpo.yaml": ("dpo", "pairs"),
                  "train_lora/qwen3_lora_kto.yaml": ("kto", "labelled answers")}


def training_examples() -> dict[str, dict]:
    root = llama_factory() / "examples"
    files = {str(f.relative_to(root)): read_yaml(f) for f in sorted(root.rglob("*.yaml"))}
    return {name: raw for name, raw in files.items() if "model_name_or_path" in raw and "stage" in raw}


def test_every_llama_factory_argument_name_is_known():
    """Each of LLaMA-Factory's 241 argument names is honoured, accepted as not needed, or refused by name; none is
    an unknown key, and none is dropped without a word."""
    names = llama_factory_argument_names()
    assert len(names) >= 200
    mapped = {"disable_gradient_checkpointing", "pissa_iter", "enable_liger_kernel", *LF_GENERATION}
    known = {*RunConfig.fields(), *training_argument_names(), *KEY_ALIASES, *LF_NOT_NEEDED, *LF_REFUSED,
             *LF_ELSEWHERE, *LOW_RANK_KEYS, *mapped}
    assert set(names) - known == set()
    for name in names:
        try:
            cfg = RunConfig.from_dict({"dataset": "demo", name: True})
        except ConfigError as e:
            assert not any("unknown key" in p for p in e.problems), (name, e.problems)
            assert any(name in p or KEY_ALIASES.get(name, name) in p for p in e.problems), (name, e.problems)
            continue
        assert name in RunConfig.fields() or name in cfg.accepted or name in cfg.extra or name in KEY_ALIASES \
            or name in mapped, name
        if name in LF_GENERATION:
            assert cfg.generation == {name: True}, name  # kept for predict runs


def test_example_configs_run_unchanged_or_are_refused_by_name(capsys):
    examples, ran, refused = training_examples(), [], {}
    for name, raw in examples.items():
        try:
            RunConfig.from_dict({**raw, "model_name_or_path": "tiny"})
            ran.append(name)
        except ConfigError as e:
            refused[name] = e.problems
    with capsys.disabled():
        print(f"\nLLaMA-Factory's training examples: {len(ran)} of {len(examples)} read unchanged; refused: "
              + "; ".join(f"{k} ({' | '.join(v)})" for k, v in refused.items()))
    assert set(ran) == RUN_UNCHANGED
    for name, problems in refused.items():
        assert not any("unknown key" in p for p in problems), (name, problems)
        assert not any(p.startswith("stage:") for p in problems), (name, problems)  # every stage of theirs reads


@pytest.mark.slow
def test_example_configs_plan_on_llama_factorys_datasets(workdir, monkeypatch):
    """The unchanged examples plan (tokenize LLaMA-Factory's demo data through its dataset_info.json, size the
    run) from LLaMA-Factory's folder, as its README runs them; the not-needed keys are listed once."""
    import ftkit

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ftkit.tiny import path as tiny

    root = llama_factory()
    # LLaMA Pro's example trains a model expanded by 8 blocks (its expand.sh): tiny's shape with 8 layers, expanded
    config = AutoConfig.from_pretrained(tiny())
    config.num_hidden_layers = 8
    AutoModelForCausalLM.from_config(config).save_pretrained(workdir / "tiny8")
    AutoTokenizer.from_pretrained(tiny()).save_pretrained(workdir / "tiny8")
    expanded = ftkit.expand(str(workdir / "tiny8"), 8, workdir / "tiny8-pro")
    monkeypatch.chdir(root)
    for name in sorted(RUN_UNCHANGED - {"train_full/qwen3_full_sft.yaml", "train_lora/qwen3_lora_sft_ds3.yaml",
                                        "extras/nlg_eval/llama3_lora_predict.yaml", "train_lora/qwen3_preprocess.yaml",
                                        *STAGE_EXAMPLES}):
        raw = read_yaml(root / "examples" / name)
        model = str(expanded) if "llama_pro" in name else "tiny"
        plan = ftkit.plan({**raw, "model_name_or_path": model, "output_dir": str(workdir / name)})
        summary = plan.summary()
        assert summary["examples"] == 1090 and "do_train" in summary["accepted"], name  # identity + alpaca_en_demo
    with pytest.raises(ConfigError, match="deepspeed: the deepspeed package is not installed"):  # ZeRO-3: GPUs
        ftkit.plan({**read_yaml(root / "examples/train_full/qwen3_full_sft.yaml"), "model_name_or_path": "tiny",
                    "output_dir": str(workdir / "full")})


@pytest.mark.slow
def test_stage_examples_plan_on_llama_factorys_datasets(workdir, monkeypatch):
    """Its pre-training, reward, DPO and KTO examples plan unchanged (model path aside) on its demo datasets, named
    as it names them (c4_demo, dpo_en_demo, kto_en_demo): every record read, pairs counted as pairs."""
    import ftkit

    root = llama_factory()
    monkeypatch.chdir(root)
    for name, (stage, unit) in STAGE_EXAMPLES.items():
        raw = read_yaml(root / "examples" / name)
        summary = ftkit.plan({**raw, "model_name_or_path": "tiny", "output_dir": str(workdir / name)}).summary()
        assert (summary["unit"], raw["stage"]) == (unit, stage), name
        dropped = int(summary["truncated"].split(" dropped")[0].split()[-1]) if "dropped" in (
            summary["truncated"] or "") else 0
        if stage == "pt":  # c4_demo's 300 texts, the long ones cut into pieces of cutoff_len tokens, none lost
            assert summary["examples"] >= 300 and summary["trained_tokens"] == summary["tokens"], summary
        else:  # dpo_en_demo's 300 pairs, or kto_en_demo's 300 labelled answers, less those whose prompt alone
            assert summary["examples"] + dropped == 300, (name, summary)  # fills cutoff_len
        assert summary["examples"] > 250, (name, summary)


def test_plot_loss_writes_the_loss_curve(workdir):
    import ftkit
    from conftest import base_config

    run = ftkit.train(base_config(workdir / "run", max_steps=3, plot_loss=True, val_size=0.2, eval_steps=3),
                      console=False)
    for png in ("training_loss.png", "training_eval_loss.png"):
        assert (run.output_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


@pytest.mark.slow
def test_train_merge_export_and_chat_with_llama_factorys_files(workdir, monkeypatch, capsys):
    """LLaMA-Factory's LoRA example trains (a few steps, on the CPU), then its merge_lora and inference files run
    through `ftkit merge` and `ftkit chat` with only the paths changed on the command line; its full-model export
    file saves a whole model as it is, in shards of export_size."""
    import json

    from ftkit.cli import main

    root = llama_factory()
    monkeypatch.chdir(root)  # its examples name data/ relative to its own folder
    run, merged, exported = workdir / "sft", workdir / "merged", workdir / "exported"
    assert main(["train", "examples/train_lora/qwen3_lora_sft.yaml", "model_name_or_path=tiny",
                 f"output_dir={run}", "max_steps=3", "bf16=false", "max_samples=64"]) == 0
    out = capsys.readouterr().out
    assert "accepted, not needed here: do_train" in out
    assert (run / "training_loss.png").exists()  # plot_loss: true

    assert main(["merge", "examples/merge_lora/qwen3_lora_sft.yaml", "model_name_or_path=tiny",
                 f"adapter_name_or_path={run}", f"export_dir={merged}"]) == 0
    assert (merged / "model.safetensors").exists() and "merged" in capsys.readouterr().out
    assert main(["chat", "examples/inference/qwen3_lora_sft.yaml", "model_name_or_path=tiny",
                 f"adapter_name_or_path={run}", "--prompt", "Hi", "max_new_tokens=8"]) == 0
    assert capsys.readouterr().out.strip()

    assert main(["export", "examples/merge_lora/qwen3_full_sft.yaml", f"model_name_or_path={merged}",
                 f"export_dir={exported}", "export_size=0.005"]) == 0  # 5 MB shards of the 14 MB model
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    assert main(["chat", "examples/inference/qwen3.yaml", f"model_name_or_path={exported}", "--prompt", "Hi",
                 "max_new_tokens=8"]) == 0
    assert main(["merge", "examples/merge_lora/qwen3_lora_sft.yaml", "model_name_or_path=tiny",
                 f"adapter_name_or_path={run},{run}", f"export_dir={merged}"]) == 0  # several merge in turn
    assert f"merged {run / 'adapter'}, {run / 'adapter'} into tiny" in capsys.readouterr().out


def test_llama_factorys_demo_datasets_load_by_name_or_are_refused_by_name(workdir):
    """Its text datasets load through its dataset_info.json; media, preference and KTO sets are refused by name
    (by name from dataset_info.json, and by path from the records), not misread as conversations."""
    from ftkit.data import load_conversations, resolve_dataset
    from ftkit.errors import DataError

    data = llama_factory() / "data"
    for name, n in [("alpaca_en_demo", 999), ("alpaca_zh_demo", 1000), ("identity", 91),
                    ("glaive_toolcall_en_demo", 300), ("glaive_toolcall_zh_demo", 300)]:
        src = resolve_dataset(name, data)
        convs = load_conversations(src.path, src.formatting, src.columns, src.tags)
        assert len(convs) == n, name
    (call,) = [m for m in convs[0] if m.get("tool_calls")][:1]
    assert convs[0].tools and call["tool_calls"][0]["function"]["name"]
    with pytest.raises(DataError, match="has images; vision and audio fine-tuning is not supported"):
        resolve_dataset("mllm_demo", data)
    assert [resolve_dataset(n, data).kind for n in ("dpo_en_demo", "kto_en_demo", "identity")] == \
        ["pairs", "labelled", "conversations"]  # for stages dpo/rm and kto (tests/test_stages.py)
    for file, why in [("mllm_demo.json", "hold images"), ("dpo_en_demo.json", "preference pairs .* set stage: dpo"),
                      ("kto_en_demo.json", "labelled good or bad .* set stage: kto")]:
        with pytest.raises(DataError, match=f"{file}: .*{why}"):
            load_conversations(data / file)


def test_dataset_info_tags_and_num_samples(workdir):
    import json

    import ftkit
    from conftest import base_config

    records = [{"dialog": [{"speaker": "me", "text": f"Q{i}?"}, {"speaker": "bot", "text": f"A{i}."}]}
               for i in range(5)]
    (workdir / "d.json").write_text(json.dumps(records))
    (workdir / "dataset_info.json").write_text(json.dumps({"mine": {
        "file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "dialog"}, "num_samples": 12,
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}}))
    plan = ftkit.plan(base_config(workdir / "run", dataset="mine", dataset_dir=str(workdir)))
    assert plan.data.stats.examples == 12  # 5 conversations drawn 12 times: each twice, 2 of them thrice


def test_placeholders_are_reported_and_filled(workdir):
    import ftkit
    from conftest import base_config

    root = llama_factory()
    cfg = base_config(workdir / "run", dataset="identity", dataset_dir=str(root / "data"))
    summary = ftkit.plan(cfg).summary()
    assert "identity.json holds unfilled {{author}}, {{name}}" in summary["placeholders"]
    assert "--replace author=... name=..." in summary["placeholders"]
    filled = ftkit.plan({**cfg, "replace": {"name": "Tiny", "author": "ftkit"}})
    assert filled.summary()["placeholders"] is None
    text = filled.tokenizer.decode(filled.data.train[0]["input_ids"])
    assert "{{" not in text and ("Tiny" in text or "ftkit" in text)


@pytest.mark.slow
def test_llama_factorys_demo_sets_train_together_by_name(workdir):
    """identity (its placeholders filled), the alpaca demos and the tool-calling demos, by name from its
    dataset_info.json, with the template its examples use: the calls are trained, the tool results are not."""
    import ftkit
    from conftest import base_config
    from ftkit.data import IGNORE

    cfg = base_config(workdir / "run", dataset="identity,alpaca_en_demo,alpaca_zh_demo,glaive_toolcall_en_demo,"
                      "glaive_toolcall_zh_demo", dataset_dir=str(llama_factory() / "data"), template="qwen3_nothink",
                      max_samples=16, max_steps=2, cutoff_len=2048, replace={"name": "Tiny", "author": "ftkit"})
    plan = ftkit.plan(cfg)
    texts = [plan.tokenizer.decode([t for t in r["labels"] if t != IGNORE]) for r in plan.data.train]
    calls = [t for t in texts if "<tool_call>" in t]
    assert len(plan.data.train) == 80 and calls and not any("<tool_response>" in t for t in texts)
    run = ftkit.train(cfg, console=False)
    assert len(run.losses) == 2 and all(loss == loss for _, loss in run.losses)


@pytest.mark.slow
def test_adapter_name_or_path_goes_on_training_that_adapter(workdir):
    """LLaMA-Factory's adapter_name_or_path in a training file: the run starts from that adapter's weights (its
    rank and targets too) and trains them; a learning rate near zero leaves them as they were."""
    import torch
    from safetensors.torch import load_file

    import ftkit
    from conftest import base_config

    first = ftkit.train(base_config(workdir / "a", max_steps=3, lora_rank=4), console=False)
    again = ftkit.train(base_config(workdir / "b", max_steps=1, learning_rate=1e-12,
                                    adapter_name_or_path=str(first.output_dir)), console=False)
    a, b = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (first, again))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(t.abs().sum() > 0 for k, t in a.items() if "lora_B" in k)  # trained, so not the zero start
    assert again.losses[0][1] < ftkit.train(base_config(workdir / "c", max_steps=1, lora_rank=4),
                                            console=False).losses[0][1]
    with pytest.raises(ConfigError, match="adapter_name_or_path: .* no LoRA adapter here"):
        ftkit.plan(base_config(workdir / "d", adapter_name_or_path=str(workdir)))


def test_eval_dataset_is_evaluated_on(workdir):
    import ftkit
    from conftest import DATA, base_config

    plan = ftkit.plan(base_config(workdir / "run", eval_dataset=str(DATA / "seed_examples.json")))
    assert len(plan.data.eval) == 2 and plan.data.stats.examples == 282  # all of demo trains; the seed's 2 evaluate
    with pytest.raises(ConfigError, match="eval_dataset and val_size: evaluate on .* or hold out"):
        ftkit.plan(base_config(workdir / "run", eval_dataset="demo", val_size=0.1))



def test_scores_are_llama_factorys():
    """BLEU-4 on characters (nltk, smoothing 3) and ROUGE F1 on jieba words, x100 and averaged: an exact answer
    scores 100, an empty one 0, a half-right one in between, computed here from the same libraries."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from ftkit.predicting import scores

    assert scores(["巴黎现在22度。"], ["巴黎现在22度。"]) == {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0,
                                                          "rouge-l": 100.0}
    assert scores([""], ["x"]) == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    half = scores(["Hello there"], ["Hello friend"])
    bleu = sentence_bleu([list("Hello friend")], list("Hello there"), smoothing_function=SmoothingFunction().method3)
    assert half["rouge-1"] == 50.0 and half["rouge-2"] == 0.0 and half["bleu-4"] == round(100 * bleu, 4)


@pytest.mark.slow
def test_llama_factorys_predict_file_answers_and_scores(workdir, monkeypatch):
    """Its nlg_eval predict file (do_predict, predict_with_generate, eval_dataset) after a short training: answers
    and scores written under LLaMA-Factory's file names."""
    import json

    from ftkit.cli import main

    root = llama_factory()
    monkeypatch.chdir(root)
    run, out = workdir / "sft", workdir / "predict"
    assert main(["train", "examples/train_lora/qwen3_lora_sft.yaml", "model_name_or_path=tiny", f"output_dir={run}",
                 "max_steps=2", "bf16=false", "max_samples=16"]) == 0
    assert main(["train", "examples/extras/nlg_eval/llama3_lora_predict.yaml", "model_name_or_path=tiny",
                 f"adapter_name_or_path={run}", "template=qwen3_nothink", f"output_dir={out}", "max_samples=3",
                 "max_new_tokens=12"]) == 0
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"prompt", "predict", "label"} for r in rows)  # 3 from each dataset
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    metrics = json.loads((out / "predict_results.json").read_text())
    assert {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"} <= set(metrics)
    assert all(0 <= metrics[k] <= 100 for k in metrics if "bleu" in k or "rouge" in k)


def test_mix_strategy_interleaves_as_hugging_face_datasets_does(workdir):
    """LLaMA-Factory mixes datasets with `datasets.interleave_datasets`; the expected lists are that function's
    docstring examples (huggingface/datasets, src/datasets/combine.py)."""
    import ftkit
    from conftest import DATA, base_config
    from ftkit.data import interleave

    d1, d2, d3 = [0, 1, 2], [10, 11, 12, 13], [20, 21, 22, 23, 24]
    assert interleave([d1, d2, d3], None, False, 0) == [0, 10, 20, 1, 11, 21, 2, 12, 22]
    assert interleave([d1, d2, d3], None, True, 0) == [0, 10, 20, 1, 11, 21, 2, 12, 22, 0, 13, 23, 1, 10, 24]
    drawn = interleave([d1, d2, d3], [0.7, 0.2, 0.1], False, 42)  # random draws until a drawn one is used up
    assert all(drawn.count(x) == 1 for x in drawn) and any(all(x in drawn for x in d) for d in (d1, d2, d3))
    over = interleave([d1, d2, d3], [0.7, 0.2, 0.1], True, 42)  # until each has been used up once
    assert all(x in over for x in d1 + d2 + d3)

    both = f"{DATA / 'seed_examples.json'},demo"  # 2 and 282 conversations
    plan = ftkit.plan(base_config(workdir / "a", dataset=both, mix_strategy="interleave_under"))
    assert plan.data.stats.examples == 4  # two whole rounds
    plan = ftkit.plan(base_config(workdir / "b", dataset=both, mix_strategy="interleave_over"))
    assert plan.data.stats.examples == 2 * 282
    with pytest.raises(ConfigError, match="interleave_probs: .* one chance per dataset"):
        ftkit.plan(base_config(workdir / "c", dataset=both, mix_strategy="interleave_under", interleave_probs="0.5"))


def test_a_dataset_may_be_a_folder_of_files(workdir):
    """dataset_info.json's file_name may name a folder: every data file in it, in name order (as LLaMA-Factory
    loads a folder); a folder path works as a dataset too."""
    import json
    import shutil

    import ftkit
    from conftest import DATA, base_config

    (workdir / "parts").mkdir()
    shutil.copy(DATA / "seed_examples.json", workdir / "parts" / "a.json")
    more = [{"conversation": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(3)]
    (workdir / "parts" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
    (workdir / "dataset_info.json").write_text(json.dumps({"both": {"file_name": "parts"}}))
    by_name = ftkit.plan(base_config(workdir / "r1", dataset="both", dataset_dir=str(workdir)))
    by_path = ftkit.plan(base_config(workdir / "r2", dataset=str(workdir / "parts")))
    assert by_name.data.stats.examples == by_path.data.stats.examples == 2 + 3


def test_tokenized_path_tokenizes_once_then_trains_from_it(workdir, monkeypatch, capsys):
    """LLaMA-Factory's preprocess example: a run with a new tokenized_path tokenizes, saves and stops; the same
    file run again trains from the saved rows; another template is refused rather than misused."""
    import ftkit
    from ftkit.cli import main

    root = llama_factory()
    monkeypatch.chdir(root)
    folder = workdir / "tok"
    args = ["train", "examples/train_lora/qwen3_preprocess.yaml", "model_name_or_path=tiny", f"tokenized_path={folder}",
            f"output_dir={workdir / 'run'}", "max_samples=20"]
    assert main(args) == 0
    assert "tokenized 40 examples (0 held out) into" in capsys.readouterr().out and (folder / "train" / "rows.json").exists()
    plan = ftkit.plan({"model_name_or_path": "tiny", "template": "qwen3_nothink", "tokenized_path": str(folder),
                       "cutoff_len": 2048, "output_dir": str(workdir / "run")})  # no dataset needed now
    assert plan.data.stats.examples == 40 and plan.data.stats.eot_trained
    with pytest.raises(Exception, match="was tokenized with another template"):
        ftkit.plan({"model_name_or_path": "tiny", "template": "chatml", "tokenized_path": str(folder),
                    "cutoff_len": 2048, "output_dir": str(workdir / "run")})
    assert main([*args[:1], *args[1:], "max_steps=1"]) == 0  # the preprocess file itself now trains


@pytest.mark.slow
def test_v1_configs_and_their_dataset_file_train(workdir, monkeypatch):
    """LLaMA-Factory's v1 format (examples/v1/): model, peft_config, train_dataset naming a dataset file whose
    records have content parts and per-message loss_weight, micro/global batch sizes. Those that ask for what ftkit
    lacks (dynamic batching, context parallelism) are refused by name; Liger kernels are transformers'
    use_liger_kernel, refused by the pre-flight where there is no CUDA GPU to run them."""
    import ftkit

    root = llama_factory()
    monkeypatch.chdir(root)
    ran, refused = [], {}
    for f in sorted((root / "examples" / "v1").rglob("*.yaml")):
        try:
            RunConfig.from_any(f, {"model_name_or_path": "tiny"})
            ran.append(f.name)
        except ConfigError as e:
            refused[f.name] = e.problems
    assert set(refused) == {"train_full_fsdp2_dynamic_batching.yaml", "train_full_fsdp2_dynamic_padding_free.yaml",
                            "train_full_ulysses_cp.yaml", "export_lora.yaml"}, refused
    liger = RunConfig.from_any(root / "examples/v1/train_full/train_full_liger_kernel.yaml",
                               {"model_name_or_path": "tiny"})
    assert liger.extra["use_liger_kernel"] is True
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use_liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs"):
            ftkit.plan(liger)
    assert not any("unknown key" in p for ps in refused.values() for p in ps)
    lora = RunConfig.from_any(root / "examples/v1/train_lora/train_lora_sft.yaml", {"model_name_or_path": "tiny"})
    assert (lora.finetuning_type, lora.lora_rank, lora.lora_alpha, lora.lora_target) == ("lora", 16, 32, "all")
    freeze = RunConfig.from_any(root / "examples/v1/train_freeze/train_freeze_sft.yaml", {"model_name_or_path": "tiny"})
    assert (freeze.finetuning_type, freeze.per_device_train_batch_size, freeze.gradient_accumulation_steps) == \
        ("freeze", 1, 4)
    with pytest.raises(ConfigError, match="global_batch_size: 5 is not a multiple of micro_batch_size 2"):
        RunConfig.from_dict({"model": "tiny", "train_dataset": "x.yaml", "micro_batch_size": 2, "global_batch_size": 5})
    run = ftkit.train(RunConfig.from_any(root / "examples/v1/train_lora/train_lora_sft.yaml", {
        "model_name_or_path": "tiny", "output_dir": str(workdir / "v1"), "max_steps": 2}), console=False)
    plan = ftkit.plan(run.config.to_dict() | {"output_dir": str(workdir / "v1b")})
    assert plan.data.stats.examples == 91 + 500  # identity (its v1 messages) and alpaca_en_demo, size 500
    first = plan.tokenizer.decode([t for t in plan.data.train[0]["labels"] if t != -100])
    assert first and run.losses and (run.adapter_dir / "adapter_model.safetensors").exists()
    from ftkit.cli import main

    assert main(["merge", "examples/v1/train_lora/export_lora.yaml", "model_name_or_path=tiny",  # its v1 export file
                 f"adapter_name_or_path={run.output_dir}", f"export_dir={workdir / 'merged'}"]) == 0
    assert (workdir / "merged" / "config.json").exists()


def test_hub_datasets_load_through_datasets_or_say_why(workdir):
    """A dataset_info.json entry with hf_hub_url is loaded by the `datasets` package; without the package (or the
    network, here) the run stops at one line naming the dataset, the URL and what to do."""
    import importlib.util
    import json

    import ftkit
    from conftest import base_config

    (workdir / "dataset_info.json").write_text(json.dumps({"hub": {"hf_hub_url": "llamafactory/alpaca_en"}}))
    why = "pip install datasets" if importlib.util.find_spec("datasets") is None else "cannot load llamafactory/alpaca_en"
    with pytest.raises(Exception, match=f"dataset hub: .*{why}"):
        ftkit.plan(base_config(workdir / "run", dataset="hub", dataset_dir=str(workdir)))


def test_every_problem_of_a_file_is_said_at_once(workdir):
    """A file with wrong keys, a missing dataset and an unknown template gets one error listing all of them, not
    a round per kind (keys first, files next)."""
    import ftkit

    with pytest.raises(ConfigError) as e:
        ftkit.plan({"model_name_or_path": "tiny", "dataset": "no_such_dataset", "template": "llama-3",
                    "use_badam": True, "lora_rnak": 8, "output_dir": str(workdir / "run")})
    said = "\n".join(e.value.problems)
    for part in ("use_badam: ftkit does not support BAdam", "lora_rnak: unknown key; did you mean lora_rank",
                 "dataset: 'no_such_dataset' is neither a file", "template: 'llama-3' is not a known template"):
        assert part in said, said


# ---- chat templates and tool formats, against LLaMA-Factory's own template code --------------------------------

# ftkit's built-ins that render a conversation as LLaMA-Factory 0.9.5's template of the same name does (text and
# trained answers), the tool formats included where both write the same one
SAME_AS_LLAMA_FACTORY = {"alpaca", "chatml", "deepseek3", "default", "gemma", "gemma3", "llama3", "phi4", "qwen"}
# those that differ: each follows the model's official template instead (checked in test_templates.py and
# test_real_templates.py against the official templates themselves)
FOLLOWS_OFFICIAL = {
    "chatglm3": "THUDM/chatglm3-6b's template writes a space after each role line; its fine-tuning ends with eos",
    "deepseek": "DeepSeek-LLM's template writes 'Assistant: ' (a space) before the answer",
    "deepseekr1": "R1's template writes no think block into answers (LLaMA-Factory writes an empty one into each)",
    "glm4": "GLM-4's fine-tuning ends the text with eos",
    "llama2": "Llama-2-chat's template writes ' ANSWER ' between [/INST] and </s>",
    "mistral": "Mistral v0.3 puts the system text into the last user turn (mistral-common)",
    "phi": "Phi-3.5's template ends a training text with <|endoftext|>",
    "qwen3": "Qwen3's template drops the think block from earlier answers",
    "qwen3_nothink": "Qwen3's template with enable_thinking=False writes an empty think block before the last answer",
}
# where the same name writes tools otherwise: ftkit's ChatML writes Qwen's tool format; LLaMA-Factory's llama3 writes
# Llama 3.1's JSON calls under a system header with today's date, ftkit's llama3 LLaMA-Factory's default format
# (template: auto renders the model's own tool format)
TOOLS_DIFFER = {"chatml", "llama3"}
# (bos, eos) of each family's real tokenizer (its tokenizer_config.json), which LLaMA-Factory's templates write
# through the tokenizer where ftkit's built-ins write the text
FAMILY_TOKENS = {"llama2": ("<s>", "</s>"), "mistral": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"),
                 "gemma3": ("<bos>", "<eos>"), "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
                 "phi": ("<s>", "<|endoftext|>"), "phi4": (None, "<|im_end|>"),
                 **{n: ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>") for n in ("deepseek", "deepseek3", "deepseekr1")}}
LF_ROLES = {"human": "user", "gpt": "assistant", "function_call": "function", "observation": "observation"}


@pytest.fixture(scope="module")
def lf_templates():
    from real import llama_factory_templates

    return llama_factory_templates()


def family_tokenizer(name: str):
    """Qwen2's real tokenizer (byte-level, so decoding gives back the exact text) with the family's bos and eos and
    the special strings of both templates as single tokens."""
    import re

    from real import real_tokenizer
    from transformers import AutoTokenizer

    from ftkit.templates import TEMPLATES

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    t = TEMPLATES[name]
    text = "".join((t.user, t.assistant, t.header, t.system, t.prefix, t.sep, t.suffix, t.tool, t.system_in_user))
    specials = set(re.findall(r"<[|｜][^>]*?[|｜]>|<[a-z_]+>|<</?SYS>>|</?s>|\[/?INST\]", text))
    bos, eos = FAMILY_TOKENS.get(name, (None, "<|endoftext|>"))
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(specials | {"[gMASK]", "sop"}), "eos_token": eos,
                                  **({"bos_token": bos} if bos else {})})
    if bos is None:
        tokenizer.bos_token = None
    return tokenizer


def llama_factory_render(template, tokenizer, messages, system=None, tools=None) -> tuple[str, list[str]]:
    """LLaMA-Factory's encoding of a conversation in its own roles, decoded: the text and each trained response."""
    pairs = template.encode_multiturn(tokenizer, messages, system=system, tools=tools)
    return "".join(tokenizer.decode(p + r) for p, r in pairs), [tokenizer.decode(r) for _, r in pairs]


def test_every_shared_template_name_is_compared():
    from ftkit.templates import TEMPLATES

    from real import llama_factory_templates

    shared = set(TEMPLATES) & set(llama_factory_templates())
    assert shared == SAME_AS_LLAMA_FACTORY | set(FOLLOWS_OFFICIAL)
    assert set(TEMPLATES) - shared == {"llama3_1", "mistral_v1", "moss"}  # names LLaMA-Factory does not have


@pytest.mark.parametrize("name", sorted(SAME_AS_LLAMA_FACTORY | set(FOLLOWS_OFFICIAL)))
def test_builtin_renders_as_llama_factorys_template_of_that_name(name, lf_templates):
    from ftkit.templates import TEMPLATES

    tokenizer = family_tokenizer(name)
    template = TEMPLATES[name].bind(tokenizer)
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好"},
              {"role": "assistant", "content": "再见"}],
             [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "低秩适配。"}]]
    same = []
    for chat in chats:
        system = chat[0]["content"] if chat[0]["role"] == "system" else None
        text, trained = llama_factory_render(lf_templates[name], tokenizer, chat[1 if system else 0:], system)
        mine = template.render(chat)
        # LLaMA-Factory also trains the separator after an answer's end-of-turn marker, which is never generated
        same.append(mine.text == text and [mine.text[a:b] for a, b in mine.spans] ==
                    [t.removesuffix(template.sep) if template.sep else t for t in trained])
    assert all(same) == (name in SAME_AS_LLAMA_FACTORY), FOLLOWS_OFFICIAL.get(name)


@pytest.mark.parametrize("name", sorted(SAME_AS_LLAMA_FACTORY - TOOLS_DIFFER))
def test_tool_calls_render_as_llama_factory_writes_them(name, lf_templates):
    """LLaMA-Factory's glaive_toolcall demos (600 conversations, English and Chinese: tools, calls, results) in ftkit's
    built-in and in LLaMA-Factory's template: the same text, the same answers and calls trained. A record whose tools
    column is an empty list is given to LLaMA-Factory as one without tools: given "[]", it writes an empty system
    turn, which ftkit does not. The Jinja form of the built-in (what merged models carry) renders them the same."""
    import json

    from ftkit.data import load_conversations
    from ftkit.templates import TEMPLATES

    tokenizer = family_tokenizer(name)
    template = TEMPLATES[name].bind(tokenizer)
    tokenizer.chat_template = template.jinja()
    checked = with_tools = 0
    for file in ("glaive_toolcall_en_demo.json", "glaive_toolcall_zh_demo.json"):
        path = llama_factory() / "data" / file
        records = json.loads(path.read_text(encoding="utf-8"))
        for k, (record, conversation) in enumerate(zip(records, load_conversations(path), strict=True)):
            messages = [{"role": LF_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]
            tools = record.get("tools") if json.loads(record.get("tools") or "[]") else None
            text, trained = llama_factory_render(lf_templates[name], tokenizer, messages, record.get("system"), tools)
            mine = template.render(list(conversation), tools=conversation.tools)
            assert mine.text == text, f"{file} record {k}"
            assert tokenizer.apply_chat_template(list(conversation), tools=conversation.tools or None,
                                                 tokenize=False) == text, f"{file} record {k}, Jinja"
            assert [mine.text[a:b] for a, b in mine.spans] == [t.removesuffix(template.sep) if template.sep else t
                                                              for t in trained], f"{file} record {k}"
            checked += 1
            with_tools += bool(tools)
    assert checked == 600 and with_tools > 300


def test_galore_and_apollo_defaults_are_llama_factorys():
    """Keys left out of a use_galore / use_apollo file take LLaMA-Factory's defaults, read from its
    hparams/finetuning_args.py (the field defaults), not written from memory."""
    import ast

    from ftkit.config import LOW_RANK_OPTIMIZERS

    source = (llama_factory() / "src/llamafactory/hparams/finetuning_args.py").read_text(encoding="utf-8")
    defaults = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "default":
                    defaults[node.target.id] = ast.literal_eval(kw.value)
    ours = {f"{kind}_{key}": default for kind, keys in LOW_RANK_OPTIMIZERS.items()
            for key, (_, default) in keys.items()}
    assert ours == {name: defaults[name] for name in ours}
    assert defaults["galore_target"] == defaults["apollo_target"] == "all"
