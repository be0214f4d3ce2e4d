"""The stages beyond supervised fine-tuning: pt (raw text), dpo, kto and rm (TRL's trainers on ftkit's data).

Each trains a few real steps on the embedded model with its metric moving the right way; the data shapes of
LLaMA-Factory, TRL and OpenAI read; bad records are refused with file, record and reason.
"""
import json

import pytest

import ftkit
from conftest import DATA, base_config
from ftkit.errors import ConfigError, DataError


def stage_config(out, stage, **kw):
    return base_config(out, **{"stage": stage, "dataset": "demo_dpo", "val_size": 32, "eval_on_start": True,
                               "cutoff_len": 256, "max_steps": 16, "eval_steps": 16, "learning_rate": 5e-4,
                               "lora_rank": 16, **kw})


def evals(run) -> list[dict]:
    return [e for e in run.metrics if e["kind"] == "eval"]


# ---- data ------------------------------------------------------------------------------------------------------

def test_preference_shapes_read_the_same_pair(workdir):
    """LLaMA-Factory's sharegpt and alpaca ranking records, TRL's explicit and implicit prompts and OpenAI
    messages with chosen/rejected are the same (prompt, chosen, rejected)."""
    from ftkit.preference import pair_of

    q, good, bad = "What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."
    want = ([{"role": "user", "content": q}], {"role": "assistant", "content": good},
            {"role": "assistant", "content": bad})
    shapes = [
        {"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": good},
         "rejected": {"from": "gpt", "value": bad}},
        {"instruction": q, "input": "", "chosen": good, "rejected": bad},
        {"prompt": q, "chosen": good, "rejected": bad},
        {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
         "rejected": [{"role": "assistant", "content": bad}]},
        {"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
         "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]},
        {"messages": [{"role": "user", "content": q}], "chosen": good, "rejected": bad},
    ]
    for rec in shapes:
        assert pair_of(rec) == want, rec


def test_bad_pairs_are_refused_with_file_record_and_reason(workdir):
    path = workdir / "pairs.jsonl"
    records = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
               {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."},
               {"prompt": "Hi", "chosen": "Hello!"},
               {"chosen": "Hello!", "rejected": "Go away."}]
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    with pytest.raises(DataError) as e:
        ftkit.plan(base_config(workdir / "run", stage="dpo", dataset=str(path)))
    text = str(e.value)
    assert f"{path}: 3 of 4 records cannot be used as preference pairs" in text
    assert "record 1: chosen and rejected are the same answer" in text
    assert "record 2: no rejected answer" in text
    assert "record 3: no prompt" in text


def test_stage_and_data_must_agree(workdir):
    """Pairs given to stage sft, conversations given to dpo: refused before anything loads, naming the stage."""
    with pytest.raises(ConfigError, match="dataset demo_dpo: preference pairs .* this run has stage: sft"):
        ftkit.plan(base_config(workdir / "a", dataset="demo_dpo"))
    with pytest.raises(ConfigError, match="dataset demo: conversations, for stage sft .* this run has stage: dpo"):
        ftkit.plan(base_config(workdir / "b", stage="dpo", dataset="demo"))
    with pytest.raises(ConfigError, match="stage: 'ppo' is not one of pt, sft, rm, dpo, kto"):
        ftkit.plan(base_config(workdir / "c", stage="ppo"))
    with pytest.raises(ConfigError, match="pref_loss: 'kto_pair' is not one of sigmoid, hinge, ipo, orpo, simpo"):
        ftkit.plan(base_config(workdir / "d", stage="dpo", dataset="demo_dpo", pref_loss="kto_pair"))


def test_pairs_tokenize_as_prompt_and_answers(workdir):
    """A pair's prompt is the template's rendering up to the answer, its answers what sft would train: the same
    tokens as the chosen conversation (earlier answers as context) tokenized for sft, split where the trained
    tokens start."""
    from ftkit import data, preference
    from ftkit.model import load_tokenizer, resolve
    from ftkit.planning import load_config
    from ftkit.templates import get_template

    cfg = load_config(base_config(workdir / "run", stage="dpo", dataset="demo_dpo"))
    tok = load_tokenizer(resolve("tiny"))
    template = get_template("auto", tok, "llama")
    pairs = preference.read_examples(data.resolve_dataset("demo_dpo"), "pairs")[:20]
    cols, counts, _ = preference.tokenize(pairs, "dpo", cfg, tok, template)
    assert counts.examples == 20 and counts.dropped == 0
    for k, (prompt, chosen, rejected) in enumerate(pairs):
        row = data.reference_rows([preference._conversation(prompt, chosen)], tok, template, cfg.cutoff_len)[0]
        first = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert cols["prompt_ids"][k] == row["input_ids"][:first]
        assert cols["chosen_ids"][k] == row["input_ids"][first:]
        assert cols["rejected_ids"][k] != cols["chosen_ids"][k]
        rendered = template.render(prompt, add_generation_prompt=True).text
        assert tok.decode(cols["prompt_ids"][k]) == rendered


def test_text_documents_are_cut_into_pieces_every_token_trained(workdir):
    """Stage pt: a long document becomes pieces of cutoff_len tokens that together are the whole text and its
    end-of-sequence token; a .txt file is a document per line."""
    from ftkit import data
    from ftkit.model import load_tokenizer, resolve
    from ftkit.templates import TextTemplate

    tok = load_tokenizer(resolve("tiny"))
    template = TextTemplate.for_tokenizer(tok)
    lines = [line for line in (DATA / "corpus" / "essays.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    path = workdir / "text.txt"
    path.write_text("\n".join(lines[:12]), encoding="utf-8")
    texts = list(data.iter_texts(data.Source("text", path)))
    assert len(texts) == 12
    rows = data.encode_rows(texts, tok, template, cutoff_len=32)
    whole = [tok(t[0]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    assert len(rows) == sum(-(-len(ids) // 32) for ids in whole) > 12
    flat = [i for r in rows for i in r["input_ids"]]
    assert flat == [i for ids in whole for i in ids]
    assert all(label != -100 for r in rows for label in r["labels"])
    assert data.reference_rows(texts, tok, template, cutoff_len=32) and [
        r["input_ids"] for r in data.reference_rows(texts, tok, template, cutoff_len=32)] == [r["input_ids"]
                                                                                          for r in rows]


# ---- training --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dpo_raises_the_reward_margin_without_a_second_model(workdir):
    run = ftkit.train(stage_config(workdir / "dpo", "dpo"), console=False)
    first, last = evals(run)[0]["metrics"], evals(run)[-1]["metrics"]
    assert first["reward_margin"] == pytest.approx(0, abs=1e-6)  # the policy starts as the reference
    assert last["reward_margin"] > 0.1 and last["reward_accuracy"] > 0.6, (first, last)
    assert "ref" not in run.model.peft_config  # the reference is the base with the adapter off
    assert sorted(p.name for p in run.adapter_dir.iterdir() if p.is_dir()) == []
    steps = [e for e in run.metrics if e["kind"] == "step"]
    assert {"reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"} <= set(steps[-1]["metrics"])
    begin = run.metrics[0]
    assert begin["unit"] == "pairs" and begin["finetuning"].startswith("DPO (sigmoid, beta 0.1)")


@pytest.mark.slow
def test_dpo_losses_and_sft_term(workdir):
    """pref_loss hinge and ipo and pref_ftx (an SFT term) reach TRL's DPO as its loss types; orpo and simpo run
    TRL's ORPO and CPO (loss_type simpo, simpo_gamma) trainers, with no reference; each trains."""
    for loss, ftx in (("hinge", 0.0), ("ipo", 0.0), ("sigmoid", 1.0), ("orpo", 0.0), ("simpo", 0.0)):
        cfg = stage_config(workdir / loss, "dpo", pref_loss=loss, pref_ftx=ftx, max_steps=4, eval_steps=4,
                           learning_rate=2e-3 if loss in ("orpo", "simpo") else 5e-4)
        args = ftkit.plan(cfg).args
        if loss in ("orpo", "simpo"):
            assert type(args).__name__ == {"orpo": "ORPOConfig", "simpo": "CPOConfig"}[loss], loss
            assert loss == "orpo" or (args.loss_type, args.simpo_gamma, args.cpo_alpha) == ("simpo", 0.5, 0.0)
        else:
            assert args.loss_type == [loss] + (["sft"] if ftx else []) and args.beta == 0.1
        run = ftkit.train(cfg, console=False)
        first, last = evals(run)[0], evals(run)[-1]
        if loss in ("orpo", "simpo"):  # no reference: the margin does not start at 0; the held-out loss falls
            assert last["eval_loss"] < first["eval_loss"], (loss, first, last)
        else:
            assert last["metrics"]["reward_margin"] > first["metrics"]["reward_margin"], (loss, first, last)


@pytest.mark.slow
def test_kto_loss_falls_on_answers_labelled_good_and_bad(workdir):
    """KTO on the demo pairs unpaired (chosen good, rejected bad, as TRL unpairs them): held-out loss falls."""
    run = ftkit.train(stage_config(workdir / "kto", "kto", kto_rejected_weight=1.5), console=False)
    assert run.metrics[0]["unit"] == "labelled answers" and run.metrics[0]["examples"] == 2 * 282 - 32
    first, last = evals(run)[0], evals(run)[-1]
    assert last["eval_loss"] < first["eval_loss"] - 0.01, (first, last)
    assert "kl" in last["metrics"]


@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs_above_chance(workdir):
    from ftkit.model import reward_head

    run = ftkit.train(stage_config(workdir / "rm", "rm", max_steps=30, eval_steps=30, learning_rate=2e-3),
                      console=False)
    first, last = evals(run)[0]["metrics"], evals(run)[-1]["metrics"]
    assert last["reward_accuracy"] >= 0.75 and last["reward_margin"] > first["reward_margin"], (first, last)
    assert reward_head(run.model.get_base_model()) is not None
    saved = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]
    # it scores (the adapter, and the merged model alike), and refuses to write
    question, good, bad = "What is 48 + 8?", "48 + 8 = 56.", "48 + 8 = 57."
    scores = ftkit.score(run.output_dir, question, good), ftkit.score(run.output_dir, question, bad)
    merged = ftkit.merge(run.output_dir, console=False)
    assert ftkit.score(merged, question, good) == pytest.approx(scores[0], abs=1e-4)
    assert scores[0] != scores[1]
    with pytest.raises(ftkit.ModelError, match="is a reward model \\(stage rm\\): it scores answers"):
        ftkit.generate(run.output_dir, question)


@pytest.mark.slow
def test_pretraining_on_raw_text_lowers_the_loss(workdir):
    text = workdir / "answers.jsonl"  # a {"text": ...} per line: the demo's answers, which the base has not seen
    demo = json.loads((DATA / "demo_zh_en.json").read_text(encoding="utf-8"))
    text.write_text("\n".join(json.dumps({"text": " ".join(m["content"] for m in r["conversation"][1::2])},
                                         ensure_ascii=False) for r in demo), encoding="utf-8")
    run = ftkit.train(base_config(workdir / "pt", stage="pt", dataset=str(text), val_size=8, eval_on_start=True,
                                  eval_steps=12, max_steps=12, cutoff_len=128), console=False)
    assert run.metrics[0]["unit"] == "texts" and run.metrics[0]["packed"]
    first, last = evals(run)[0]["eval_loss"], evals(run)[-1]["eval_loss"]
    assert last < first - 0.3, (first, last)


@pytest.mark.slow
def test_dpo_stops_and_resumes_exactly(workdir):
    """Stopped after step 2 (a subscriber's "stop", as the panel's Stop button), then resumed from its checkpoint:
    steps 3-4 have the unbroken run's losses."""
    whole = ftkit.train(stage_config(workdir / "whole", "dpo", max_steps=4, eval_steps=4, val_size=0,
                                     eval_on_start=False, save_steps=2), console=False)
    out = workdir / "broken"
    stopped = ftkit.train(stage_config(out, "dpo", max_steps=4, eval_steps=4, val_size=0, eval_on_start=False,
                                       save_steps=2),
                          callbacks=[lambda e: "stop" if e["kind"] == "step" and e["step"] == 2 else None],
                          console=False)
    assert stopped.stopped and (out / "checkpoint-2").is_dir()
    resumed = ftkit.train(stage_config(out, "dpo", max_steps=4, eval_steps=4, val_size=0, eval_on_start=False,
                                       save_steps=2, resume_from_checkpoint=True), console=False)
    assert [s for s, _ in resumed.losses] == [3, 4]
    assert [loss for _, loss in resumed.losses] == pytest.approx([loss for _, loss in whole.losses[-2:]], rel=1e-4)


# ---- GRPO and its reward functions -------------------------------------------------------------------------------

def cell(source: str) -> dict:
    """Run source as a notebook cell does: in __main__'s namespace, its text in linecache (where inspect finds
    it, as IPython registers each cell)."""
    import linecache

    filename = f"<ipython-input-{abs(hash(source))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


REWARD_CELL = """
import math
WORDS = ["LoRA", "QLoRA"]

def _mentions(text):
    return sum(word in text for word in WORDS)

def mentions_lora(completions, **kwargs):
    return [math.tanh(_mentions(c)) for c in completions]
"""


def test_reward_functions_ship_by_source_and_come_back():
    """A cell's reward function travels with the modules it uses, the JSON values it reads and the functions it
    calls, and computes the same in a process that never ran the cell."""
    from ftkit.rewards import load, ship

    fn = cell(REWARD_CELL)["mentions_lora"]
    shipped = ship(fn)
    assert shipped["imports"] == {"math": "math"} and shipped["helpers"][0]["function"] == "_mentions"
    assert shipped["helpers"][0]["constants"] == {"WORDS": ["LoRA", "QLoRA"]}
    again = load(json.loads(json.dumps(shipped)))  # as a child process gets it
    assert again(["LoRA and QLoRA", "nothing"]) == fn(["LoRA and QLoRA", "nothing"]) != [0.0, 0.0]
    assert load("ftkit.rewards:concise")(["abc"]) == [-0.03]


def test_reward_functions_that_cannot_travel_are_refused_with_advice():
    from ftkit.rewards import ship

    with pytest.raises(ConfigError, match="a lambda cannot be sent .* write it as a `def`"):
        ship(cell("f = lambda completions, **kw: [0.0] * len(completions)")["f"])
    closure = cell("def outer(limit):\n    def short(completions, **kw):\n        return [float(len(c) < limit) "
                   "for c in completions]\n    return short\nf = outer(10)")["f"]
    with pytest.raises(ConfigError, match="short is defined inside another function and uses its limit"):
        ship(closure)
    pattern = cell("import re\nWORD = re.compile('LoRA')\ndef has(completions, **kw):\n"
                   "    return [float(bool(WORD.search(c))) for c in completions]")["has"]
    with pytest.raises(ConfigError, match="uses WORD \\(a Pattern\\) from the notebook"):
        ship(pattern)


def test_grpo_config_checks():
    with pytest.raises(ConfigError) as e:
        ftkit.plan(base_config("out", stage="grpo", per_device_train_batch_size=6, num_generations=4))
    text = str(e.value)
    assert "reward_funcs: stage grpo needs at least one reward function" in text
    assert "per_device_train_batch_size x gradient_accumulation_steps (6) must be a multiple of num_generations (4)" \
        in text


@pytest.mark.slow
def test_grpo_raises_the_mean_reward_on_a_learnable_reward(workdir):
    """Ten steps of 4 answers per prompt on tiny (the issue's budget: under 3 minutes on 2 cores), rewarded for
    answering in the question's language: the mean reward of the last steps above the first ones'."""
    run = ftkit.train(base_config(workdir / "grpo", stage="grpo", dataset="demo",
                                  reward_funcs=["ftkit.rewards:same_language", "ftkit.rewards:concise"],
                                  reward_weights=[1.0, 0.2], num_generations=4, max_completion_length=48,
                                  per_device_train_batch_size=8, max_steps=10, learning_rate=5e-4, lora_rank=16),
                      console=False)
    rewards = [e["metrics"]["reward_mean"] for e in run.metrics if e["kind"] == "step"]
    assert len(rewards) == 10 and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    step = [e for e in run.metrics if e["kind"] == "step"][-1]["metrics"]
    assert {"reward_same_language", "reward_concise", "reward_std", "completion_length"} <= set(step)
    assert run.metrics[-1]["runtime_s"] < 180
