"""Tokenized examples, stored by column.

Every example's token ids end to end (int32) with a trained flag per token (uint8), and a few numbers per example:
where it starts, how many tokens it trains, what the cutoff did to it, whether its end-of-turn marker is trained,
whether the template dropped reasoning it carried. 200k conversations of ~300 tokens take ~300 MB so; as lists of
Python ints they took 12 GB. The tokenization cache keeps these columns as raw files that later runs memory-map,
and a `RowsWriter` given a folder writes them chunk by chunk, so preparing a dataset holds one chunk in memory.

A `Rows` is also a view: `order` picks and orders rows (a shuffle, a split, a sample) without copying a token.
Training indexes a view of the kept rows; each item is {"input_ids": [...], "labels": [...]}, as transformers'
collators take them, with -100 for tokens that are not trained.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = -100
KEPT, CUT_TURNS, CUT_ANSWER, DROPPED = 0, 1, 2, 3  # what cutoff_len did to an example
TOKEN_COLUMNS = {"ids": np.int32, "trained": np.uint8}
ROW_COLUMNS = {"lengths": np.int32, "n_trained": np.int32, "cut": np.int8, "eot": np.bool_, "lost": np.bool_}
META = "rows.json"


@dataclass(eq=False)
class Stats:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated_turns: int = 0    # records that lost whole trailing turns to cutoff_len
    truncated_answer: int = 0   # records whose only answer was cut mid-way (it loses its end-of-turn)
    dropped: int = 0            # records with no trained token left after truncation
    reasoning_lost: int = 0     # records whose final answer's reasoning the template does not render
    eot_trained: bool = False
    sampled: int = 0            # the figures are of a stream's first `sampled` examples (0: of every example)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # of the kept examples

    def __eq__(self, other) -> bool:
        return isinstance(other, Stats) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__)


class Rows:
    """Tokenized examples by column (see the module's docstring); `order` None means every row, in order."""

    def __init__(self, ids, trained, lengths, n_trained, cut, eot, lost, holes=(), order=None, starts=None):
        self.ids, self.trained = ids, trained
        self.row_lengths, self.n_trained, self.cut, self.eot, self.lost = lengths, n_trained, cut, eot, lost
        self.holes = tuple(sorted(set(holes)))  # {{placeholders}} seen in the rendered texts
        self.order = None if order is None else np.asarray(order, dtype=np.int64)
        self.starts = starts if starts is not None else np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))

    # -- what training and the collators see ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.cut)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        r = int(self.order[i]) if self.order is not None else i
        return self.row(r)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other) -> bool:
        """The same rows (tokens, labels and per-row numbers), in the same order."""
        if not isinstance(other, Rows) or len(self) != len(other):
            return False
        return all(np.array_equal(a, b) for a, b in zip(self.columns(), other.columns()))

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows)"

    def row(self, r: int) -> dict:
        """Physical row r as {"input_ids", "labels"} lists."""
        a, b = int(self.starts[r]), int(self.starts[r + 1])
        ids = np.asarray(self.ids[a:b])
        return {"input_ids": ids.tolist(), "labels": np.where(np.asarray(self.trained[a:b]) != 0, ids, IGNORE).tolist()}

    # -- views -----------------------------------------------------------------------------------------------
    def physical(self) -> np.ndarray:
        """The physical row numbers of this view, in its order."""
        return self.order if self.order is not None else np.arange(len(self.cut), dtype=np.int64)

    def select(self, index) -> "Rows":
        """The rows at these positions of this view, in that order (no tokens are copied)."""
        return self._view(self.physical()[np.asarray(index, dtype=np.int64)])

    def kept(self) -> "Rows":
        """The rows training uses: those with a trained token left after the cutoff."""
        p = self.physical()
        return self._view(p[self.cut[p] != DROPPED])

    def lengths(self) -> np.ndarray:
        return np.asarray(self.row_lengths[self.physical()])

    def _view(self, order) -> "Rows":
        return Rows(self.ids, self.trained, self.row_lengths, self.n_trained, self.cut, self.eot, self.lost,
                    self.holes, order, self.starts)

    def stats(self) -> Stats:
        """Statistics of this view: counts over its rows, figures over the kept ones (per-row numbers only: no
        token is read)."""
        p = self.physical()
        cut = np.asarray(self.cut[p])
        k = p[cut != DROPPED]
        lengths = np.asarray(self.row_lengths[k])
        return Stats(examples=len(k), tokens=int(lengths.sum()), trained_tokens=int(self.n_trained[k].sum()),
                     truncated_turns=int((cut == CUT_TURNS).sum()), truncated_answer=int((cut == CUT_ANSWER).sum()),
                     dropped=int((cut == DROPPED).sum()), reasoning_lost=int(self.lost[k].sum()),
                     eot_trained=bool(self.eot[k].any()), lengths=lengths)

    def columns(self) -> tuple:
        """This view's rows as contiguous columns (tokens copied): ids, trained, then the per-row numbers."""
        p = self.physical()
        lengths = np.asarray(self.row_lengths[p], dtype=np.int64)
        at = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(self.starts[p] - (np.cumsum(lengths) - lengths),
                                                                       lengths)
        return (np.asarray(self.ids[at]), np.asarray(self.trained[at]), self.row_lengths[p], self.n_trained[p],
                self.cut[p], self.eot[p], self.lost[p])

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        """One Rows holding these views' rows, in order (tokens copied unless there is one part)."""
        if len(parts) == 1:
            return parts[0]
        writer = RowsWriter()
        for part in parts:
            writer.add(*part.columns(), part.holes)
        return writer.finish()

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """This view's rows into `folder` (written whole, then renamed into place)."""
        writer = RowsWriter(folder)
        p = self.physical()
        for start in range(0, len(p), 65536):
            writer.add(*self._view(p[start:start + 65536]).columns(), self.holes)
        writer.finish()

    @classmethod
    def load(cls, folder: Path) -> "Rows":
        """Rows saved in `folder`, memory-mapped (tokens are read from disk as they are used)."""
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        columns = {}
        for name, dtype in {**TOKEN_COLUMNS, **ROW_COLUMNS}.items():
            path, count = folder / f"{name}.bin", meta["rows" if name in ROW_COLUMNS else "tokens"]
            columns[name] = np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
        for name in ROW_COLUMNS:  # per-row numbers are small: in memory
            columns[name] = np.array(columns[name])
        return cls(columns["ids"], columns["trained"], columns["lengths"], columns["n_trained"], columns["cut"],
                   columns["eot"], columns["lost"], meta.get("holes", ()))


class RowsWriter:
    """Rows built chunk by chunk: in memory, or into `folder` as raw column files (one chunk in memory at a time),
    which `finish` renames into place and returns memory-mapped."""

    def __init__(self, folder: Path | None = None):
        self.folder, self.holes, self.rows, self.tokens = folder, set(), 0, 0
        self.chunks: dict[str, list] = {name: [] for name in {**TOKEN_COLUMNS, **ROW_COLUMNS}}
        self.files = {}
        if folder is not None:
            self.tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.files = {name: open(self.tmp / f"{name}.bin", "wb") for name in self.chunks}

    def add(self, ids, trained, lengths, n_trained, cut, eot, lost, holes=()) -> None:
        values = dict(ids=ids, trained=trained, lengths=lengths, n_trained=n_trained, cut=cut, eot=eot, lost=lost)
        for name, dtype in {**TOKEN_COLUMNS, **ROW_COLUMNS}.items():
            array = np.ascontiguousarray(values[name], dtype=dtype)
            if self.files:
                self.files[name].write(array.tobytes())
            else:
                self.chunks[name].append(array)
        self.rows += len(cut)
        self.tokens += len(ids)
        self.holes |= set(holes)

    def finish(self) -> Rows:
        if not self.files:
            c = {name: (np.concatenate(parts) if parts else np.zeros(0, dtype))
                 for (name, parts), dtype in zip(self.chunks.items(), {**TOKEN_COLUMNS, **ROW_COLUMNS}.values())}
            return Rows(c["ids"], c["trained"], c["lengths"], c["n_trained"], c["cut"], c["eot"], c["lost"],
                        self.holes)
        for f in self.files.values():
            f.close()
        meta = {"rows": self.rows, "tokens": self.tokens, "holes": sorted(self.holes)}
        (self.tmp / META).write_text(json.dumps(meta) + "\n", encoding="utf-8")
        from ftkit.folders import replace_dir

        replace_dir(self.tmp, self.folder)
        return Rows.load(self.folder)

    def abandon(self) -> None:
        """Drop what was written (the data had a problem)."""
        import shutil

        for f in self.files.values():
            f.close()
        if self.files:
            shutil.rmtree(self.tmp, ignore_errors=True)

