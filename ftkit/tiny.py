"""The embedded default model, `model_name_or_path: tiny`.

A 4-layer Llama with a byte-level BPE tokenizer, both trained on CPU from the
bilingual text in `data/corpus/` by this module, and shipped in
`ftkit/assets/tiny/` (fp32 safetensors, about 15 MB). It is a *base* model: it
has read plain text, never the chat format, so fine-tuning visibly changes it.

Rebuild it (about 8 minutes on one core; deterministic for a given torch build and thread count):

    python -m ftkit.tiny --corpus data/corpus --out ftkit/assets/tiny --steps 900 --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets" / "tiny"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MODEL_SHAPE = dict(
    hidden_size=256, intermediate_size=640, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
)


def path() -> Path:
    """Folder of the shipped tiny model; a clear error if the package lost it."""
    if not (ASSET_DIR / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the embedded model is missing from {ASSET_DIR}; reinstall ftkit or rebuild it with "
            "`python -m ftkit.tiny`"
        )
    return ASSET_DIR


def corpus_lines(corpus: Path) -> list[str]:
    lines = []
    for f in sorted(corpus.glob("*")):
        if f.suffix in (".txt", ".md"):
            lines += [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise FileNotFoundError(f"no .txt/.md text found in {corpus}")
    return lines


def train_tokenizer(lines: list[str], vocab_size: int = 4096):
    """Byte-level BPE (GPT-2 style pre-tokenizer) wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHATML, model_max_length=1024,
    )


def build_model(vocab_size: int, eos_id: int, **shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=eos_id, **{**MODEL_SHAPE, **shape})
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def pretrain(corpus: Path, out: Path, steps: int = 900, batch: int = 16, seq: int = 128,
             lr: float = 3e-3, threads: int = 2, log_every: int = 50, **shape) -> dict:
    """Next-token pretraining on random windows of the corpus; returns final figures."""
    import torch

    torch.set_num_threads(threads)
    lines = corpus_lines(corpus)
    tokenizer = train_tokenizer(lines)
    eos = tokenizer.eos_token_id
    stream = []
    for ln in lines:  # documents separated by <|endoftext|>, as in GPT-2 pretraining
        stream += tokenizer(ln, add_special_tokens=False)["input_ids"] + [eos]
    data = torch.tensor(stream)
    model = build_model(len(tokenizer), eos, **shape)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps))))
    gen = torch.Generator().manual_seed(1234)
    t0, losses = time.time(), []
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"corpus_tokens": len(stream), "steps": steps, "batch": batch, "seq": seq,
            "final_loss": round(sum(losses[-log_every:]) / len(losses[-log_every:]), 4),
            "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0)}
    (out / "pretraining.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m ftkit.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--out", type=Path, default=ASSET_DIR)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--threads", type=int, default=1, help="1 reproduces the shipped weights bit for bit")
    args = p.parse_args(argv)
    print(json.dumps(pretrain(args.corpus, args.out, steps=args.steps, threads=args.threads), indent=1))


if __name__ == "__main__":
    main()
