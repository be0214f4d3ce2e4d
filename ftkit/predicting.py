"""Predict: answer every conversation of `eval_dataset` with the model (and adapter) and score the answers.

A run config with `do_predict: true` (LLaMA-Factory's predict runs, `predict_with_generate`) comes here instead
of training. Each conversation's last assistant turn is the reference; the model answers the turns before it.
Scores are LLaMA-Factory's: BLEU-4 (nltk, smoothing method 3, on characters) and ROUGE-1/2/L F1 (rouge-chinese,
on jieba words), averaged and x100. The output folder gets `generated_predictions.jsonl` (prompt, predict, label)
and `predict_results.json`, LLaMA-Factory's names.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftkit.errors import ConfigError
from ftkit.folders import write_atomic
from ftkit.model import quiet

GENERATION_KEYS = ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "num_beams", "length_penalty")


@dataclass
class Predictions:
    """What a predict run leaves: the scores, and each answer beside its reference."""

    output_dir: Path
    metrics: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        scores = ", ".join(f"{k.removeprefix('predict_')} {v:.2f}" for k, v in self.metrics.items()
                           if k.startswith(("predict_bleu", "predict_rouge")))
        return f"Predictions({str(self.output_dir)!r}, {len(self.rows)} answers: {scores})"


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """BLEU-4 and ROUGE-1/2/L as LLaMA-Factory computes them for `predict_with_generate`, x100."""
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError:
        raise ConfigError("do_predict: scoring needs jieba, nltk and rouge-chinese: pip install 'ftkit[predict]'") \
            from None
    jieba.setLogLevel(60)  # its dictionary-loading chatter
    # per answer, rounded, then the mean: llamafactory 0.9.5, src/llamafactory/train/sft/metric.py ComputeSimilarity
    per = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(predictions, references, strict=True):
        hypothesis, reference = list(jieba.cut(pred)), list(jieba.cut(label))
        if " ".join(hypothesis).split() and " ".join(reference).split():
            rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        else:
            rouge = {k: {"f": 0.0} for k in ("rouge-1", "rouge-2", "rouge-l")}
        for k in ("rouge-1", "rouge-2", "rouge-l"):
            per[k].append(round(rouge[k]["f"] * 100, 4))
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        per["bleu-4"].append(round(bleu * 100, 4))
    return {k: sum(v) / len(v) if v else 0.0 for k, v in per.items()}


@quiet()
def predict(config, console: bool = True) -> Predictions:
    """Answer and score `eval_dataset` as `config` (RunConfig, dict or YAML path) says."""
    from ftkit import data, generation

    from ftkit.planning import load_config

    cfg = load_config(config)
    out = cfg.run_dir
    sampling = {k: cfg.generation[k] for k in GENERATION_KEYS if k in cfg.generation}
    if sampling.get("do_sample") is False or not sampling.get("temperature"):
        sampling = {k: v for k, v in sampling.items() if k in ("repetition_penalty", "num_beams", "length_penalty")}
    max_new_tokens = int(cfg.generation.get("max_new_tokens", 512))
    net, tokenizer, template = generation.load(cfg.model_name_or_path, cfg.adapter_name_or_path,
                                               None if cfg.template == "auto" else cfg.template)
    conversations = []
    for src in data.resolve_datasets(cfg.eval_datasets, cfg.dataset_dir):
        convs = data.source_conversations(src, cfg)
        conversations += convs[: cfg.max_samples] if cfg.max_samples else convs
    rows, start = [], time.time()
    for i, conv in enumerate(conversations, 1):
        last = max(k for k, m in enumerate(conv) if m["role"] == "assistant")
        prompt = template.render(conv[:last], add_generation_prompt=True).text
        answer = generation.answer(net, tokenizer, template, conv[:last], max_new_tokens, **sampling)
        rows.append({"prompt": prompt, "predict": answer, "label": conv[last]["content"]})
        if console and (i == len(conversations) or i % max(1, len(conversations) // 10) == 0):
            print(f"predict {i}/{len(conversations)}  {time.time() - start:.0f}s", flush=True)
    runtime = time.time() - start
    metrics = {f"predict_{k}": v for k, v in scores([r["predict"] for r in rows], [r["label"] for r in rows]).items()}
    metrics |= {"predict_runtime": round(runtime, 2), "predict_samples_per_second": round(len(rows) / runtime, 3)}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "generated_predictions.jsonl",
                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(out / "predict_results.json", json.dumps(metrics, indent=2) + "\n")
    if console:
        print(f"predicted {len(rows)} answers -> {out}\n  " + ", ".join(
            f"{k.removeprefix('predict_')} {v:.2f}" for k, v in metrics.items() if "bleu" in k or "rouge" in k))
    return Predictions(out, metrics, rows)
