"""`streaming: true`: train from a dataset read and tokenized as training goes, never whole.

The datasets are read one after another (a .jsonl file line by line), CHUNK conversations at a time rendered and
tokenized as `ftkit.data.encode_rows` does, and the kept examples pass through a shuffle buffer of `buffer_size`
(seeded, reseeded each epoch): memory holds one chunk and the buffer, whatever the size of the set. A stream has no
length, so the run needs max_steps; the pre-flight figures (lengths, truncation, the end-of-turn check) come from
the stream's first SAMPLE conversations and say so. `val_size: N` holds out the stream's first N conversations.

The order is a function of the data, the seed and the epoch only, so a run resumed from a checkpoint (Trainer
skips the batches it had consumed by drawing them again) continues with exactly the batches it would have had.
With several data loader workers each reads the whole stream and keeps its share of the chunks.
"""
from __future__ import annotations

import itertools
import random

import torch

from ftkit import data
from ftkit.rows import DROPPED, IGNORE

SAMPLE = 2000  # conversations the pre-flight figures come from


class Stream(torch.utils.data.IterableDataset):
    """The run's training examples as a stream of {"input_ids", "labels"}, shuffled through a buffer."""

    def __init__(self, cfg, tokenizer, template, sources: list, skip: int = 0):
        self.cfg, self.tokenizer, self.template, self.sources, self.skip = cfg, tokenizer, template, sources, skip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Trainer calls it at each pass over the stream
        self.epoch = epoch

    def conversations(self):
        """The datasets' conversations one after another (max_samples of each), the held-out ones skipped."""
        parts = []
        for src in self.sources:
            part = data.source_conversations(src, self.cfg, stream=True)
            parts.append(itertools.islice(part, self.cfg.max_samples) if self.cfg.max_samples else part)
        return itertools.islice(itertools.chain.from_iterable(parts), self.skip, None)

    def rows(self):
        """Kept examples as (ids, trained) arrays, in stream order; a worker keeps every n-th chunk."""
        info = torch.utils.data.get_worker_info()
        share, of = (info.id, info.num_workers) if info else (0, 1)
        for k, chunk in enumerate(data.chunks(self.conversations(), data.CHUNK)):
            if k % of != share:
                continue
            rows = data.encode_rows(chunk, self.tokenizer, self.template, self.cfg.cutoff_len,
                                    self.cfg.train_on_prompt)
            for r in range(len(rows.cut)):
                if rows.cut[r] != DROPPED:
                    a, b = int(rows.starts[r]), int(rows.starts[r + 1])
                    yield rows.ids[a:b], rows.trained[a:b]

    def __iter__(self):
        rng = random.Random(f"{self.cfg.seed}-{self.epoch}")
        buffer, size = [], self.cfg.buffer_size
        for row in self.rows():
            if len(buffer) < size:
                buffer.append(row)
                continue
            k = rng.randrange(size)
            out, buffer[k] = buffer[k], row
            yield _example(out)
        rng.shuffle(buffer)
        for row in buffer:
            yield _example(row)


def _example(row) -> dict:
    ids, trained = row
    return {"input_ids": ids.tolist(), "labels": [t if keep else IGNORE for t, keep in zip(ids.tolist(), trained)]}


def prepare(cfg, tokenizer, template) -> data.Prepared:
    """The run's data as a stream: the held-out examples (the stream's first val_size, or eval_dataset) and the
    statistics of the first SAMPLE conversations after them, tokenized now; the rest as training goes."""
    sources = data.resolve_datasets(cfg.datasets, cfg.dataset_dir)
    n_eval = int(cfg.val_size) if cfg.val_size >= 1 else 0
    head = Stream(cfg, tokenizer, template, sources).conversations()
    held_out = list(itertools.islice(head, n_eval))
    sample = list(itertools.islice(head, SAMPLE))
    if not sample:
        raise data.DataError(f"val_size: {n_eval} leaves no training examples in the stream")
    rows = data.encode_rows(sample, tokenizer, template, cfg.cutoff_len, cfg.train_on_prompt)
    stats = rows.stats()
    stats.sampled = len(sample)
    if rows.holes:
        for src in sources:
            src.placeholders = list(rows.holes)
    evals = data.encode_rows(held_out, tokenizer, template, cfg.cutoff_len, cfg.train_on_prompt).kept()
    if cfg.eval_dataset:
        eval_rows, eval_sources = data.dataset_rows(cfg, tokenizer, template, cfg.cutoff_len, cfg.eval_datasets)
        evals, sources = eval_rows.kept(), sources + eval_sources
    if not stats.examples:
        raise data.DataError(f"cutoff_len: {cfg.cutoff_len} tokens leaves no trained token in any of the stream's "
                             f"first {len(sample):,} examples (every prompt is longer); raise cutoff_len")
    return data.Prepared(Stream(cfg, tokenizer, template, sources, skip=n_eval), evals, stats, sources)
