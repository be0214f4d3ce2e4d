"""Static views: the data preview (tokens the model sees, trained ones marked) and side-by-side answers.

Both return plain objects with an HTML view for notebooks and a text view for terminals and logs.
"""
from __future__ import annotations

import base64
import html
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftkit.data import IGNORE
from ftkit.model import quiet

TRAINED_STYLE = "background:#c8f7c5;color:#064;"   # tokens the loss is computed on
MASKED_STYLE = "background:#f0f0f0;color:#888;"    # prompt/system tokens: seen, not trained
SAMPLE = 2000  # conversations of each dataset a preview reads (the first ones): a preview samples, never scans
TOKEN_STYLE = "border-right:1px solid #fff;padding:0 1px;white-space:pre-wrap;font-family:monospace;"


@dataclass
class Preview:
    """Examples as tokenized and labelled for training, plus length statistics against cutoff_len."""

    examples: list[list[tuple[str, bool]]]  # per example: (text of a token, or of the few tokens a character
                                            # is split over; trained)
    lengths: list[int]                      # tokens per example before cutoff
    cutoff_len: int
    template: str
    trained_share: float
    eot_trained: bool
    sampled: bool = False                   # the figures are of each dataset's first SAMPLE conversations

    @property
    def over_cutoff(self) -> int:
        return int((np.asarray(self.lengths) > self.cutoff_len).sum())

    def stats_text(self) -> str:
        s = np.sort(self.lengths)
        return (f"{len(s):,} examples{' (the first of each dataset: sampled)' if self.sampled else ''}, template "
                f"{self.template}: tokens per example median {s[len(s) // 2]}, "
                f"max {s[-1]}; {self.over_cutoff} longer than cutoff_len {self.cutoff_len}; "
                f"{100 * self.trained_share:.0f}% of tokens trained; end-of-turn trained: "
                f"{'yes' if self.eot_trained else 'NO (the model would never learn to stop)'}")

    def __repr__(self) -> str:
        parts = [self.stats_text(), "[[...]] = trained tokens, | = token boundary"]
        for i, ex in enumerate(self.examples):
            text, open_ = "", False
            for tok, trained in ex:
                if trained != open_:
                    text += "[[" if trained else "]]"
                    open_ = trained
                text += tok + "|"
            parts.append(f"--- example {i}\n{text}{']]' if open_ else ''}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        from ftkit.notebook import need

        need("matplotlib")
        rows = [f"<p>{html.escape(self.stats_text())}</p>",
                f"<p><span style='{TRAINED_STYLE}'>trained token</span> "
                f"<span style='{MASKED_STYLE}'>masked token (no loss)</span></p>"]
        for i, ex in enumerate(self.examples):
            spans = "".join(f"<span style='{TOKEN_STYLE}{TRAINED_STYLE if t else MASKED_STYLE}' title='{i}'>"
                            f"{html.escape(tok).replace(chr(10), '↵<br>')}</span>" for tok, t in ex)
            rows.append(f"<div style='margin:6px 0;line-height:1.7'><b>example {i}</b><br>{spans}</div>")
        png = base64.b64encode(lengths_png(self.lengths, self.cutoff_len)).decode()
        rows.append(f"<img src='data:image/png;base64,{png}'/>")
        return "\n".join(rows)


def lengths_png(lengths: list[int], cutoff_len: int) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2, 2.2), dpi=100)
    ax = fig.add_subplot()
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#1f77b4")
    if cutoff_len <= max(lengths) * 1.5:
        ax.axvline(cutoff_len, color="#d62728", ls="--", label=f"cutoff_len {cutoff_len}")
        ax.legend(frameon=False)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


_TOKENIZER: dict = {}  # the last preview's tokenizer: the next preview of the same model starts at once


def _tokenizer(path: str, cfg):
    """The model's tokenizer, kept for the next preview (a 150k-token vocabulary takes a second or two to load, and
    its fast encoder as long again to build)."""
    from ftkit import model as M

    folder = Path(path)
    stamp = max((f.stat().st_mtime_ns for f in folder.glob("tokenizer*")), default=0) if folder.is_dir() else 0
    key = (path, stamp, cfg.tokenizer_name_or_path, cfg.trust_remote_code, tuple(cfg.added_tokens or ()))
    if key not in _TOKENIZER:
        _TOKENIZER.clear()
        _TOKENIZER[key] = M.load_tokenizer(path, cfg.tokenizer_name_or_path, cfg.trust_remote_code, cfg.added_tokens)
    return _TOKENIZER[key]


@quiet()
def preview(dataset, template: str = "auto", model: str = "tiny", n: int = 3, **config) -> Preview:
    """Tokenize `dataset` as a run with these keys would (same schema as `ftkit train`) and show `n` examples."""
    from ftkit import data, model as M, templates
    from ftkit.config import RunConfig

    cfg = RunConfig.from_dict({"dataset": dataset, "template": template, "model_name_or_path": model, **config})
    path = M.resolve(cfg.model_name_or_path)
    tokenizer = _tokenizer(path, cfg)
    tmpl = templates.get_template(cfg.template, tokenizer, M.model_type(path), cfg.enable_thinking)
    conversations, sampled = [], False
    for src in data.resolve_datasets(cfg.datasets, cfg.dataset_dir):  # a sample, not a scan: the first ones
        limit = min(SAMPLE, cfg.max_samples or SAMPLE)
        first = list(itertools.islice(data.source_conversations(src, cfg, stream=True), limit + 1))
        sampled = sampled or (len(first) > limit and limit == SAMPLE)  # more there than max_samples would take
        conversations += first[:limit]
    rows = data.encode_rows(conversations, tokenizer, tmpl, 10**9, cfg.train_on_prompt)  # lengths before the cutoff
    _, whole = data.collect(rows)
    examples = []
    for row in rows:
        trained = [cfg.train_on_prompt or label != IGNORE for label in row["labels"]]
        ids, trained, _ = data.truncate(row["input_ids"], trained, cfg.cutoff_len, cfg.train_on_prompt)
        if any(trained):  # as training sees it: an example with no answer token left is dropped
            examples.append([(text, any(trained[a:b])) for text, a, b in data.token_pieces(tokenizer, ids)])
        if len(examples) == n:
            break
    return Preview(examples, whole.lengths, cfg.cutoff_len, tmpl.name, whole.trained_tokens / max(whole.tokens, 1),
                   whole.eot_trained, sampled)


@dataclass
class Comparison:
    """Answers per prompt (rows) and model or run (columns)."""

    prompts: list[str]
    labels: list[str]
    answers: list[list[str]] = field(default_factory=list)  # [prompt][model]

    def __repr__(self) -> str:
        out = []
        for prompt, row in zip(self.prompts, self.answers):
            out.append(f"> {prompt}")
            out += [f"  {label}: {answer}" for label, answer in zip(self.labels, row)]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(label)}</th>" for label in self.labels)
        body = "".join(
            f"<tr><td><b>{html.escape(p)}</b></td>" + "".join(f"<td>{html.escape(a)}</td>" for a in row) + "</tr>"
            for p, row in zip(self.prompts, self.answers))
        return f"<table><tr><th>prompt</th>{head}</tr>{body}</table>"


def compare(prompts, runs=("tiny",), max_new_tokens: int = 64, **sampling) -> Comparison:
    """Each model (a folder, `tiny`, a hub name) or run answers each prompt; greedy unless told otherwise."""
    import ftkit

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    names = {id(r): name for name, r in ftkit.runs.items()}
    labels = [names.get(id(r)) or (f"base ({r})" if isinstance(r, str) else str(getattr(r, "output_dir", r)))
              for r in runs]
    table = Comparison(prompts, labels)
    for model in runs:  # model by model: each loads once (generate keeps the last one)
        answers = [ftkit.generate(model, p, max_new_tokens=max_new_tokens, **sampling) for p in prompts]
        table.answers = [row + [a] for row, a in zip(table.answers or [[] for _ in prompts], answers)]
    return table
