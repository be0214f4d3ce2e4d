"""Methods LLaMA-Factory's extras/ examples exist to show, done with the libraries that give them: LoRA+ (peft),
Muon (torch), GaLore and APOLLO (transformers' optimizers of those names), OFT (peft), LLaMA Pro (block expansion
and training of the added blocks), freeze tuning of named modules, pure bf16. Each is checked for what makes it
that method, not only for training."""
import json

import pytest
import torch

import ftkit
from conftest import base_config, eval_drop, scored_config
from ftkit.config import RunConfig
from ftkit.errors import ConfigError


def _optimizer_state(checkpoint):
    return torch.load(checkpoint / "optimizer.pt", weights_only=False)


@pytest.mark.slow
def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate(workdir):
    run = ftkit.train(scored_config(workdir / "lp", loraplus_lr_ratio=16, save_steps=8), console=False)
    assert eval_drop(run) > 0.5
    groups = _optimizer_state(workdir / "lp/checkpoint-8")["param_groups"]  # saved by the run's Trainer
    lrs = {group["initial_lr"] for group in groups if group["params"]}  # before the schedule
    assert len(lrs) == 2 and max(lrs) == pytest.approx(16 * min(lrs))  # A at the schedule's lr, B at 16x
    assert "LoRA+" in run.metrics[0]["finetuning"]


def test_loraplus_optimizer_groups_lora_b_apart():
    """create_optimizer (what the run's Trainer calls) puts every lora_B at ratio x lr and every lora_A at lr."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from ftkit.optimizers import create_optimizer
    from ftkit.tiny import path as tiny_path

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path()),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = Trainer(model=model, args=TrainingArguments("unused", learning_rate=1e-3, use_cpu=True,
                                                          report_to="none"))
    cfg = RunConfig.from_dict({"dataset": "demo", "loraplus_lr_ratio": 16})
    optimizer = create_optimizer(trainer, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(lr_of[id(p)] == pytest.approx(16e-3 if "lora_B" in n else 1e-3) for n, p in lora)


def test_muon_with_adamw_steps_as_torch_muon_and_adamw_do():
    """One step of the combined optimizer equals torch.optim.Muon on the hidden matrices plus torch.optim.AdamW on
    the rest, run separately on a copy; a state dict round trip keeps both states."""
    import copy

    from ftkit.optimizers import MuonWithAdamW, muon_parameter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                              torch.nn.Linear(32, 16))
    twin = copy.deepcopy(net)
    names = dict(net.named_parameters())
    names = {("embed." + n if n.startswith("0.") else n): p for n, p in names.items()}

    def loss(m):
        return m(torch.arange(8).unsqueeze(0)).pow(2).mean()

    ours = MuonWithAdamW(names.items(), decay=set(), lr=0.01, weight_decay=0.1)
    loss(net).backward()
    ours.step()
    twin_names = {("embed." + n if n.startswith("0.") else n): p for n, p in twin.named_parameters()}
    hidden = [p for n, p in twin_names.items() if muon_parameter(n, p)]
    other = [p for n, p in twin_names.items() if not muon_parameter(n, p)]
    assert len(hidden) == 2 and len(other) == 5  # two Linear weights; embedding, two biases, the norm's two
    # the split LLaMA-Factory 0.9.5 makes (src/llamafactory/train/trainer_utils.py, _create_muon_optimizer: 2-D,
    # "embed" and "lm_head" not in the name), on a real architecture's parameter names
    from transformers import AutoModelForCausalLM

    from ftkit.tiny import path as tiny_path

    llama = AutoModelForCausalLM.from_pretrained(tiny_path())
    assert all(muon_parameter(n, p) == (p.ndim == 2 and "embed" not in n and "lm_head" not in n)
               for n, p in llama.named_parameters())
    muon = torch.optim.Muon(hidden, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": other, "weight_decay": 0.0}], lr=0.01)
    loss(twin).backward()
    muon.step()
    adamw.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    state = ours.state_dict()
    again = MuonWithAdamW(names.items(), decay=set(), lr=0.01, weight_decay=0.1)
    again.load_state_dict(state)
    kinds = {k for s in again._muon.state.values() for k in s} | {k for s in again._adamw.state.values() for k in s}
    assert {"momentum_buffer", "exp_avg", "exp_avg_sq"} <= kinds


@pytest.mark.slow
def test_muon_trains_and_resumes_exactly(workdir):
    """use_muon on full fine-tuning: Muon momentum for the hidden matrices in the checkpoint, AdamW moments for the
    rest, and a run stopped at step 4 and resumed has the unbroken run's losses."""
    kw = dict(finetuning_type="full", use_muon=True, learning_rate=1e-3)
    whole = ftkit.train(base_config("out/whole", max_steps=8, **kw), console=False)
    stop_at_4 = lambda e: "stop" if e["kind"] == "step" and e["step"] == 4 else None  # noqa: E731
    ftkit.train(base_config("out/part", max_steps=8, **kw), callbacks=[stop_at_4], console=False)
    state = _optimizer_state(workdir / "out/part/checkpoint-4")
    kinds = {k for s in state["state"].values() for k in s}
    assert {"momentum_buffer", "exp_avg"} <= kinds and any(g["muon"] for g in state["param_groups"])
    resumed = ftkit.train(base_config("out/part", max_steps=8, resume_from_checkpoint=True, **kw), console=False)
    steps = [e for e in resumed.metrics if e["kind"] == "step"]
    reference = {e["step"]: e["loss"] for e in whole.metrics if e["kind"] == "step"}
    assert [e["loss"] for e in steps] == pytest.approx([reference[s] for s in (5, 6, 7, 8)], rel=1e-5)
    assert whole.losses[-1][1] < 0.8 * whole.losses[0][1]


@pytest.mark.parametrize("kind", ["galore", "apollo"])
def test_galore_and_apollo_are_transformers_optimizers_on_every_linear_layer(workdir, kind):
    """LLaMA-Factory's keys become transformers' optim, optim_target_modules (`all`: every linear layer but the
    head, as LoRA's all) and optim_args, and transformers builds the package's optimizer from them."""
    from transformers import AutoModelForCausalLM, Trainer

    from ftkit.tiny import path as tiny_path

    plan = ftkit.plan(base_config(workdir / kind, finetuning_type="full", **{f"use_{kind}": True,
                                                                             f"{kind}_rank": 8}))
    assert plan.args.optim == f"{kind}_adamw"
    assert set(plan.args.optim_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    model = AutoModelForCausalLM.from_pretrained(tiny_path())
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(plan.args, model)
    assert cls.__module__.split(".")[0] == f"{kind}_torch" and cls.__name__ in ("AdamW", "APOLLOAdamW"), cls
    projected = kwargs["params"][1]
    assert projected["rank"] == 8 and len(projected["params"]) == 7 * model.config.num_hidden_layers
    # LLaMA-Factory 0.9.5's defaults (src/llamafactory/hparams/finetuning_args.py: galore_scale 2.0, apollo_scale 32.0)
    assert projected["scale"] == {"galore": 2.0, "apollo": 32.0}[kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["galore", "apollo"])
def test_galore_and_apollo_train(workdir, kind):
    run = ftkit.train(scored_config(workdir / kind, finetuning_type="full", learning_rate=1e-3,
                                    **{f"use_{kind}": True, f"{kind}_rank": 8}), console=False)
    assert eval_drop(run) > 0.5 and kind in run.metrics[0]["finetuning"].lower()


def test_low_rank_optimizers_refuse_adapters_and_each_other():
    with pytest.raises(ConfigError, match="use_galore: GaLore projects the gradients of whole weight matrices"):
        RunConfig.from_dict({"dataset": "demo", "use_galore": True})
    with pytest.raises(ConfigError, match="use_muon: Muon is an optimizer; it replaces use_apollo"):
        RunConfig.from_dict({"dataset": "demo", "finetuning_type": "full", "use_apollo": True, "use_muon": True})
    with pytest.raises(ConfigError, match="loraplus_lr_ratio: LoRA\\+ sets the learning rates"):
        RunConfig.from_dict({"dataset": "demo", "finetuning_type": "full", "loraplus_lr_ratio": 16})
    cfg = RunConfig.from_dict({"dataset": "demo", "galore_rank": 64})  # a setting of an optimizer not asked for
    assert "galore_rank" in cfg.accepted and "optim" not in cfg.extra


@pytest.mark.slow
def test_oft_trains_merges_and_answers(workdir):
    from transformers import AutoModelForCausalLM

    run = ftkit.train(scored_config(workdir / "oft", finetuning_type="oft", oft_block_size=16, learning_rate=1e-2),
                      console=False)
    assert eval_drop(run) > 0.5
    config = run.model.peft_config["default"]
    assert type(config).__name__ == "OFTConfig" and config.oft_block_size == 16
    assert (run.adapter_dir / "adapter_config.json").exists()
    merged = ftkit.merge(run.adapter_dir, console=False)  # merge checks its logits against the adapter's
    ids = torch.randint(3, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = run.model.eval()(input_ids=ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
    assert torch.allclose(mine, theirs, atol=1e-4)
    assert isinstance(ftkit.generate(run, "你好", max_new_tokens=4), str)


def test_oft_block_size_that_does_not_divide_is_named(workdir):
    with pytest.raises(ConfigError, match="oft_block_size"):
        ftkit.train(base_config(workdir / "o", finetuning_type="oft", oft_block_size=48, max_steps=1), console=False)


def _expanded(workdir, model_type="qwen3", layers=4, num_expand=2):
    from arch_configs import build
    from transformers import AutoTokenizer

    from ftkit.tiny import path as tiny_path

    original = build(model_type, workdir / f"{model_type}-base", AutoTokenizer.from_pretrained(tiny_path()),
                     num_hidden_layers=layers)
    return original, ftkit.expand(str(original), num_expand, workdir / f"{model_type}-pro")


@pytest.mark.parametrize("model_type", ["qwen3", "gpt2", "gemma3_text"])
def test_block_expansion_adds_identity_blocks_where_llama_factory_does(workdir, model_type):
    """4 layers, 2 added: a copy after layers 1 and 3 (LLaMA-Factory's scripts/llama_pro.py layout: 0 1 1' 2 3 3'),
    the copies' output projections zero, the config's per-layer lists (Qwen3's layer_types) grown, and the
    expanded model's logits the original's."""
    from transformers import AutoModelForCausalLM

    from ftkit.model import decoder_layers

    original, expanded = _expanded(workdir, model_type)
    base, pro = AutoModelForCausalLM.from_pretrained(original), AutoModelForCausalLM.from_pretrained(expanded)
    config = json.loads((expanded / "config.json").read_text())
    assert pro.config.get_text_config().num_hidden_layers == 6
    if "layer_types" in config:
        assert len(config["layer_types"]) == 6
    old, new = decoder_layers(base), decoder_layers(pro)
    for position, source in enumerate([0, 1, 1, 2, 3, 3]):
        copy = position in (2, 5)
        for (name, a), (_, b) in zip(old[source].named_parameters(), new[position].named_parameters()):
            zeroed = copy and name.split(".")[-2] in ("o_proj", "down_proj", "c_proj")
            assert torch.equal(b, torch.zeros_like(a) if zeroed else a), (position, name)
    ids = torch.randint(3, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(base(input_ids=ids).logits, pro(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="num_expand: 3 must be a positive divisor"):
        ftkit.expand(str(original), 3, workdir / "bad")


@pytest.mark.slow
def test_llama_pro_trains_only_the_added_blocks(workdir):
    from safetensors.torch import load_file

    _, expanded = _expanded(workdir, "qwen3")
    run = ftkit.train(scored_config(workdir / "pro", model_name_or_path=str(expanded), finetuning_type="freeze",
                                    freeze_trainable_layers=2, use_llama_pro=True, learning_rate=3e-3,
                                    template="qwen"), console=False)
    assert eval_drop(run) > 0
    before, after = load_file(expanded / "model.safetensors"), load_file(run.adapter_dir / "model.safetensors")
    changed = {k.split(".")[2] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"2", "5"}
    lora = ftkit.plan(base_config(workdir / "pro-lora", model_name_or_path=str(expanded), use_llama_pro=True,
                                  freeze_trainable_layers=2, template="qwen"))
    assert lora.counts["trainable"] > 0
    from ftkit.model import lora_config, skeleton
    net = skeleton(lora.config, str(expanded), lora.tokenizer)
    adapted = {n.split(".")[4] for n, p in net.named_parameters() if "lora_" in n}
    assert adapted == {"2", "5"}


def test_freeze_tuning_of_named_modules_and_first_layers(workdir):
    from ftkit.model import skeleton

    def trained(**kw):
        plan = ftkit.plan(base_config(workdir / str(len(kw)), finetuning_type="freeze", **kw))
        net = skeleton(plan.config, plan.model_path, plan.tokenizer)
        return {n for n, p in net.named_parameters() if p.requires_grad}

    mlp = trained(freeze_trainable_layers=1, freeze_trainable_modules="mlp", freeze_extra_modules="norm")
    assert mlp and all(n.startswith("model.layers.3.mlp.") for n in mlp - {"model.norm.weight"})
    assert "model.norm.weight" in mlp
    first = trained(freeze_trainable_layers=-1)
    assert first and {n.split(".")[2] for n in first} == {"0"}
    with pytest.raises(ConfigError, match="freeze_trainable_modules: attn is not a part"):
        trained(freeze_trainable_modules="attn")


@pytest.mark.slow
def test_pure_bf16_trains_in_bf16(workdir):
    from safetensors.torch import load_file

    run = ftkit.train(scored_config(workdir / "bf", finetuning_type="full", pure_bf16=True, learning_rate=1e-3),
                      console=False)
    assert eval_drop(run) > 0.5
    assert {t.dtype for t in load_file(run.adapter_dir / "model.safetensors").values()} == {torch.bfloat16}
    assert not ftkit.plan(base_config(workdir / "p", pure_bf16=True, bf16=True)).args.bf16  # no autocast on top
