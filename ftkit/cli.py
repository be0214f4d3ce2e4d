"""The `ftkit` command: a dict of subcommands, each a thin call into the engine."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ftkit.errors import ConfigError, FtkitError


def parse_with_yaml(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Flags, optionally after a YAML file whose keys are the same options (examples/merge.yaml): the file's keys
    are read as flags placed before the command line's, so the command line wins and argparse checks both."""
    if not (argv and argv[0].endswith((".yaml", ".yml"))):
        return p.parse_args(argv)
    from ftkit.config import read_yaml

    raw = read_yaml(Path(argv[0]))
    if isinstance(raw.get("peft_config"), dict) and "model" in raw:  # LLaMA-Factory's v1 export file
        raw = {"model_name_or_path": raw["model"], **{k: v for k, v in raw["peft_config"].items() if k != "name"},
               **{k: v for k, v in raw.items() if k not in ("model", "peft_config")}}
    flags = [f"--{key}={value}" for key, value in raw.items() if key != "infer_dtype"]
    rest = [a if a.startswith("-") or "=" not in a else f"--{a}" for a in argv[1:]]  # key=value overrides too
    args, unknown = p.parse_known_args(flags + rest)
    if unknown:
        keys = ", ".join(f.split("=", 1)[0].lstrip("-") for f in unknown if f.startswith("-"))
        raise ConfigError(f"{argv[0]}: unknown key(s) {keys}; `{' '.join(p.prog.split()[:2])} --help` lists the "
                          "keys it takes")
    return args


def cmd_train(argv: list[str]) -> int:
    from ftkit.config import help_text, parse_overrides

    if "-h" in argv or "--help" in argv:
        print("usage: ftkit train [CONFIG.yaml] [key=value | --key value ...] [--dry-run [--device D]] [--nproc N]\n\n"
              "Fine-tune as the config says; flags and key=value override its keys. --dry-run checks the config\n"
              "and data and prints the plan (parameters, steps, memory estimate) without loading weights;\n"
              "--device t4|l4|a10g|a100-40g|a100-80g|h100|cpu plans it for that device (its memory, its\n"
              "precision) instead of this machine, and names what would make a run too big for it fit.\n"
              "--nproc N trains in N processes (one per GPU, or N CPU processes with gloo) through accelerate\n"
              "launch; per_device_train_batch_size is per process.\n\n"
              "keys:\n" + help_text())
        return 0
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    device, argv = _take(argv, "--device")
    if device is not None and not (device and dry_run):
        raise ConfigError("--device: plans a run for a device (--dry-run --device t4); training runs on the "
                          "device this machine has")
    nproc, argv = _take(argv, "--nproc")
    try:
        nproc = 1 if nproc is None else int(nproc)
    except ValueError:
        raise ConfigError("--nproc: expected a number of processes, e.g. --nproc 2") from None
    source, rest = ({}, argv)
    if argv and not argv[0].startswith("--") and "=" not in argv[0]:
        source, rest = Path(argv[0]), argv[1:]
    from ftkit.planning import load_config

    cfg = load_config(source, parse_overrides(_group_replace(rest)))
    import ftkit

    if cfg.do_predict:  # LLaMA-Factory's predict files: answer and score eval_dataset, no training
        if dry_run:
            print(cfg.to_yaml() + f"\n(dry run: a predict run would answer {cfg.eval_dataset} and score the answers)")
        else:
            ftkit.predict(cfg)
        return 0

    if dry_run:
        from ftkit.events import preflight_text

        print(cfg.to_yaml() + "\n" + preflight_text(ftkit.plan(cfg, device).summary()) + "\n(dry run: no weights loaded)")
        return 0

    if nproc > 1:
        from ftkit.events import ConsoleProgress

        run = ftkit.launch(cfg, callbacks=[ConsoleProgress()], nproc=nproc)
    else:
        if OWN_PROCESS:
            from ftkit.process import start_own_process

            start_own_process(cfg)
        run = ftkit.train(cfg)
    if run.stopped:
        print(f"stopped early; what was trained is saved in {run.adapter_dir}", file=sys.stderr)
        return 130
    return 0


def _take(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """A flag's value ("" when it ends the line; None when the flag is absent) and the words without the two."""
    if flag not in argv:
        return None, argv
    i = argv.index(flag)
    return (argv[i + 1] if i + 1 < len(argv) else ""), argv[:i] + argv[i + 2:]


def _group_replace(argv: list[str]) -> list[str]:
    """`--replace name=Tiny author=ftkit`: the key=value words after --replace that are not config keys are its."""
    from ftkit.config import RunConfig, training_argument_names

    if "--replace" not in argv:
        return argv
    i = argv.index("--replace")
    keys, j = {*RunConfig.fields(), *training_argument_names()}, i + 1
    while j < len(argv) and "=" in argv[j] and not argv[j].startswith("-") and argv[j].split("=")[0] not in keys:
        j += 1
    return argv[:i] + [f"replace={','.join(argv[i + 1:j])}"] + argv[j:]


def _flag(value: str) -> bool:
    """A YAML boolean given as a flag's value (a LLaMA-Factory file's `export_legacy_format: false`)."""
    import yaml

    parsed = yaml.safe_load(value)
    if not isinstance(parsed, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return parsed


def cmd_merge(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit merge [MERGE.yaml]", description="Fold a LoRA adapter into its base "
                                "model; takes LLaMA-Factory's merge and export files (their key names) as well.")
    p.add_argument("--adapter", "--adapter_name_or_path", dest="adapter",
                   help="adapter folder, or the run's output_dir; several, comma-separated, merge in order")
    p.add_argument("--out", "--export_dir", dest="out", help="merged model folder (default: <run>/merged)")
    p.add_argument("--model_name_or_path", dest="base", help="base model, if not the one the adapter records; "
                   "without an adapter, a whole model (a full or freeze run) saved to --out as it is")
    p.add_argument("--template", help="chat template the merged model carries (default: the run's)")
    p.add_argument("--export_size", type=float, help="largest weight file, in GB (default: one file)")
    p.add_argument("--export_device", choices=["cpu", "auto"], default="auto", help="merge on the CPU, or where "
                   "ftkit trains (auto)")
    p.add_argument("--export_legacy_format", type=_flag, default=False, help="false: safetensors (the only format "
                   "written)")
    p.add_argument("--export_hub_model_id", help="upload the merged model (with a model card) to this Hub repository")
    p.add_argument("--trust_remote_code", type=_flag, default=False)
    a = parse_with_yaml(p, argv)
    from ftkit.hub import push_problems

    problems = [m for m in (
        not (a.adapter or a.base) and "adapter_name_or_path (--adapter): missing; name the adapter or run folder",
        a.export_legacy_format and "export_legacy_format: true asks for .bin weights; ftkit writes safetensors only",
        *(push_problems(a.export_hub_model_id) if a.export_hub_model_id else []),
        not a.adapter and a.base and not a.out and "export_dir (--out): missing; where should the model be saved?")
        if m]
    if problems:
        raise ConfigError(problems, title="cannot merge")
    from ftkit.config import RUN_CONFIG
    import ftkit

    if a.export_device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: merge on the CPU
    merged = ftkit.merge(a.adapter, out=a.out, base=a.base, template=a.template, shard_size_gb=a.export_size)
    if a.export_hub_model_id:
        from ftkit.folders import adapter_folder
        from ftkit.hub import push

        run = Path(merged).parent if (Path(merged).parent / RUN_CONFIG).exists() else \
            adapter_folder(a.adapter.split(",")[-1]).parent if a.adapter else Path(merged)
        print(f"pushed to {push(run, a.export_hub_model_id, folder=merged)}")
    return 0


def cmd_push(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit push", description="Upload a run's adapter (or model, or "
                                "--folder merged) to the Hugging Face Hub with a model card: the run config, the "
                                "data, the loss curve. Logged in the huggingface_hub way (HF_TOKEN, hf auth login).")
    p.add_argument("run", help="the run's output_dir")
    p.add_argument("--hub_model_id", help="USER/NAME (default: the run config's hub_model_id)")
    p.add_argument("--folder", help="what to upload, inside the run (default: adapter/ or model/; e.g. merged)")
    p.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    a = p.parse_args(argv)
    from ftkit.hub import push

    folder = Path(a.run) / a.folder if a.folder else None
    print(f"pushed to {push(a.run, a.hub_model_id, private=not a.public, folder=folder)}")
    return 0


def cmd_chat(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit chat [INFERENCE.yaml]", description="Talk to a model: one answer, or a REPL.")
    p.add_argument("--model", "--model_name_or_path", dest="model",
                   help="model folder, run folder (any kind of run), hub name, or tiny")
    p.add_argument("--onnx", help="an `ftkit export-onnx` folder, run with onnxruntime")
    p.add_argument("--adapter", "--adapter_name_or_path", dest="adapter",
                   help="LoRA adapter folder (or run folder) to apply")
    p.add_argument("--prompt", help="answer this once and exit (default: interactive)")
    p.add_argument("--template", help="chat template (default: the run's, else the tokenizer's)")
    p.add_argument("--system", "--default_system", dest="system", help="system message")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--do_sample", type=_flag, default=None, help="false: greedy, whatever the temperature")
    p.add_argument("--infer_backend", default="huggingface", help="huggingface (vllm, sglang, ktransformers: not "
                   "supported)")
    p.add_argument("--trust_remote_code", type=_flag, default=False)
    a = parse_with_yaml(p, argv)
    if a.infer_backend not in ("huggingface", "hf"):
        raise ConfigError(f"infer_backend: {a.infer_backend} is not supported; ftkit chats through transformers "
                          "(infer_backend: huggingface)")
    if not (a.model or a.onnx):
        p.error("give --model DIR or --onnx DIR")
    a.model = a.onnx or a.model
    from ftkit.generation import generate, where
    from ftkit.model import resolve

    model, _ = where(a.model, a.adapter)  # a run folder, a model folder, an adapter folder
    resolve(model, key="--onnx" if a.onnx else "--model")

    sampling = {"temperature": a.temperature} if a.temperature > 0 and a.do_sample is not False else {}
    if a.top_p is not None and sampling:
        sampling["top_p"] = a.top_p
    if a.top_k is not None and sampling:
        sampling["top_k"] = a.top_k
    ask = lambda msgs: generate(a.model, msgs, adapter=a.adapter, template=a.template,  # noqa: E731
                                max_new_tokens=a.max_new_tokens, system=a.system, **sampling)
    if a.prompt is not None:
        print(ask(a.prompt))
        return 0
    print("ftkit chat: type a message; 'clear' forgets the conversation, 'exit' or Ctrl-D quits.")
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("exit", "quit"):
            return 0
        if text == "clear":
            history = []
            continue
        if text:
            history.append({"role": "user", "content": text})
            answer = ask(history)
            history.append({"role": "assistant", "content": answer})
            print(f"model> {answer}")


def cmd_convert(argv: list[str]) -> int:
    from ftkit.data import FORMATS

    p = argparse.ArgumentParser(prog="ftkit convert",
                                description="Rewrite a data file in the seed's conversation format.")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--from", dest="source", default="auto", choices=["auto", *FORMATS])
    a = p.parse_args(argv)
    from ftkit.data import convert

    n = convert(a.input, a.output, a.source)
    print(f"wrote {n} conversations to {a.output}")
    return 0


def cmd_models(argv: list[str]) -> int:
    from ftkit.architectures import BY_VOCABULARY, DEFAULT_TEMPLATES
    from ftkit.templates import TEMPLATES

    print("architectures verified by ftkit's tests (LoRA on all linear layers and MoE experts, merge, generate),\n"
          "with the template `auto` falls back to when a tokenizer has no chat_template:")
    for arch, template in DEFAULT_TEMPLATES.items():
        by_vocab = "".join(f"; {name} for {low:,}-{high:,} tokens" for low, high, name in BY_VOCABULARY.get(arch, []))
        print(f"  {arch:<12} {template}{by_vocab}")
    print("\nbuilt-in chat templates (template: NAME; `auto` uses the tokenizer's own):")
    for t in TEMPLATES.values():
        print(f"  {t.name:<10} {t.family}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit demo", description="Fine-tune the embedded tiny model on the "
                                "bilingual demo set, merge it, and compare answers before and after.")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--epochs", type=float, default=None)
    a = p.parse_args(argv)
    from ftkit.demo import demo

    demo(a.out, epochs=a.epochs)
    return 0


def cmd_expand(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit expand", description="LLaMA Pro: add identity copies of decoder blocks "
                                "to a model, then train only them (finetuning_type: freeze, use_llama_pro: true).")
    p.add_argument("model", nargs="?", help="model folder (or --model_name_or_path, LLaMA-Factory's name)")
    p.add_argument("--model_name_or_path", "--model", dest="model_flag")
    p.add_argument("--num_expand", "--num-expand", type=int, required=True, help="blocks to add; divides the "
                   "model's layer count")
    p.add_argument("--output_dir", "--out", dest="out", help="default: models/NAME-pro")
    p.add_argument("--trust_remote_code", action="store_true")
    a = p.parse_args(argv)
    model = a.model or a.model_flag
    if not model:
        raise ConfigError("expand: name the model (ftkit expand MODEL --num_expand N)")
    from ftkit.expanding import expand

    out = expand(model, a.num_expand, a.out, trust_remote_code=a.trust_remote_code)
    print(f"wrote {out} ({a.num_expand} blocks added); fine-tune it with:\n  model_name_or_path: {out}\n"
          f"  finetuning_type: freeze\n  freeze_trainable_layers: {a.num_expand}\n  use_llama_pro: true")
    return 0


def cmd_export_onnx(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ftkit export-onnx", description="Export a (merged) model for onnxruntime.")
    p.add_argument("--model", required=True, help="model folder or run folder (a LoRA run once merged)")
    p.add_argument("--out", required=True, help="folder for model.onnx, its weights and the tokenizer")
    a = p.parse_args(argv)
    from ftkit.export import export_onnx
    from ftkit.model import resolve

    resolve(a.model, key="--model")
    export_onnx(a.model, a.out)
    return 0


def cmd_export_gguf(argv: list[str]) -> int:
    from ftkit.gguf_export import QUANTS

    p = argparse.ArgumentParser(prog="ftkit export-gguf", description="Write a model as one GGUF file (llama.cpp, "
                                "Ollama, LM Studio), checked by loading it back.")
    p.add_argument("--model", required=True, help="model folder, or a run (its adapter is merged first)")
    p.add_argument("--adapter", help="a LoRA adapter to merge into --model first")
    p.add_argument("--out", help="the .gguf file (default: model-QUANT.gguf in the run or model "
                   "folder; outputs/NAME-QUANT.gguf for a model given by name)")
    p.add_argument("--quant", default="q8_0", help=f"{' | '.join(QUANTS)} (K-quants: export f16, then "
                   "llama.cpp's llama-quantize)")
    a = p.parse_args(argv)
    from ftkit.gguf_export import export_gguf

    export_gguf(a.model, a.out, a.quant, adapter=a.adapter)
    return 0


# True when this process is the `ftkit` command itself (entry()), not code that called main(): then `train`
# may set the process up for the one run (files.start_own_process)
OWN_PROCESS = False

COMMANDS = {"train": cmd_train, "merge": cmd_merge, "export": cmd_merge, "push": cmd_push, "chat": cmd_chat,
            "convert": cmd_convert, "export-onnx": cmd_export_onnx, "export-gguf": cmd_export_gguf,
            "expand": cmd_expand, "models": cmd_models, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ftkit: unknown command {argv[0]!r}", file=sys.stderr)
        print("usage: ftkit {" + ",".join(COMMANDS) + "} ... [--debug]\n"
              "  train    fine-tune from a YAML config and/or --key value flags\n"
              "  merge    fold a LoRA adapter into its base model (export: the same, LLaMA-Factory's name)\n"
              "  push     upload a run's adapter or model to the Hugging Face Hub, with a model card\n"
              "  chat     answer a prompt, or chat, with a model (+ adapter)\n"
              "  convert  rewrite alpaca/sharegpt/openai/moss/chatglm3/qwen data as conversations\n"
              "  export-onnx  export a merged model for onnxruntime (ftkit chat --onnx DIR)\n"
              "  export-gguf  one GGUF file for llama.cpp, Ollama, LM Studio (+ an Ollama Modelfile)\n"
              "  expand   LLaMA Pro: add identity blocks to a model, to train only them (use_llama_pro)\n"
              "  models   verified architectures and built-in chat templates\n"
              "  demo     the whole loop on the embedded tiny model, offline, in a few minutes")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from ftkit.errors import Tokenized

    try:
        return COMMANDS[argv[0]](argv[1:])
    except Tokenized as e:  # a preprocessing run (tokenized_path): done, not failed
        print(f"ftkit {argv[0]}: {e}")
        return 0
    except FtkitError as e:
        if debug:
            raise
        print(f"ftkit {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `ftkit` console script: main() in a process of its own, then a quick exit (see files.exit_now)."""
    from ftkit.process import exit_now

    global OWN_PROCESS
    OWN_PROCESS = True
    exit_now(main())


if __name__ == "__main__":
    entry()
