"""Byte-level BPE through tiktoken, for the tokenizers it reproduces token for token (GPT-2's family: Llama 3,
Qwen2/2.5/3, DeepSeek, the embedded tiny): about 3.5x faster than the tokenizers library on one core.

A tokenizer qualifies by its tokenizer.json: a BPE model without dropout, byte fallback or word affixes, the
byte-level pre-tokenizer (its regex, or GPT-2's), no normalizer but NFC, added tokens that strip nothing. Its
vocabulary becomes tiktoken's ranks (token ids are merge order in these vocabularies) and its added tokens
tiktoken's special tokens. Whether it really reproduces them is checked, not assumed: `Checked.encode` compares
a few texts of every batch with the tokenizers library, and on the first difference gives the batch, and every
later one, to the library instead. Texts that NFC would change go to the library too.

Token boundaries come from each token's length in bytes, so the tokens overlapping a character span are found
without the per-token offsets the library computes.
"""
from __future__ import annotations

import json
import unicodedata
import weakref

import numpy as np


def _byte_chars() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (the alphabet byte-level vocabularies are written in) -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def threads() -> int:
    """Threads to tokenize on: the CPUs this process may use, at most RAYON_NUM_THREADS (the setting the
    tokenizers library's threads follow) when that is set."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = os.environ.get("RAYON_NUM_THREADS", "")
    return max(1, min(cpus, int(limit))) if limit.isdigit() and int(limit) > 0 else cpus


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _pattern(pre: dict | None) -> str | None:
    """The splitting regex of a byte-level pre-tokenizer, or None when it is not one tiktoken can do."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, level = pre["pretokenizers"]
    if (split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert")
            or "Regex" not in split.get("pattern", {}) or level.get("type") != "ByteLevel"
            or level.get("use_regex", True) or level.get("add_prefix_space")):
        return None
    return split["pattern"]["Regex"]


class Checked:
    """tiktoken for one tokenizer, checked against the tokenizers library batch by batch."""

    SPOT = 4  # texts of each batch compared with the library (of the first batch, 64)

    def __init__(self, tokenizer, encoding, nbytes: np.ndarray, nfc: bool):
        self.backend, self.encoding, self.nbytes, self.nfc = tokenizer.backend_tokenizer, encoding, nbytes, nfc
        self.trusted = True
        self.batches = 0

    def encode(self, texts: list[str]) -> list[np.ndarray] | None:
        """Each text's token ids, or None when tiktoken does not reproduce the library on this batch (or did not
        on an earlier one): then the caller tokenizes with the library."""
        if not self.trusted:
            return None
        if self.nfc and not all(unicodedata.is_normalized("NFC", text) for text in texts):
            return None
        workers = threads()
        if workers > 1 and len(texts) > 64:  # tiktoken lets go of the GIL while it encodes
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(self._encode, [texts[k::workers] for k in range(workers)]))
            out = [None] * len(texts)
            for k, part in enumerate(parts):
                out[k::workers] = part
        else:
            out = self._encode(texts)
        step = max(1, len(texts) // self.SPOT)
        checked = range(min(len(texts), 64)) if self.batches == 0 else range(0, len(texts), step)[: self.SPOT]
        references = self.backend.encode_batch([texts[i] for i in checked], add_special_tokens=False)
        if any(reference.ids != out[i].tolist() for i, reference in zip(checked, references)):
            self.trusted = False
            return None
        self.batches += 1
        return out

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array(self.encoding.encode(text, allowed_special="all"), dtype=np.int32) for text in texts]

    def span_tokens(self, text: str, ids: np.ndarray, spans) -> list[tuple[int, int]]:
        """For each character span [a, b) of `text`, the tokens [first, end) whose bytes overlap it."""
        ends = np.cumsum(self.nbytes[ids])
        starts = ends - self.nbytes[ids]
        out = []
        for a, b in spans:
            byte_a, byte_b = len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))
            first, end = int(np.searchsorted(ends, byte_a, side="right")), int(np.searchsorted(starts, byte_b))
            out.append((first, end) if first < end else (0, 0))
        return out


_MADE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> its Checked, or None


def for_tokenizer(tokenizer) -> Checked | None:
    """The tiktoken path for this tokenizer (made once per tokenizer), or None when it does not qualify or tiktoken
    is not installed."""
    try:
        return _MADE[tokenizer]
    except KeyError:
        _MADE[tokenizer] = made = _build(tokenizer)
        return made
    except TypeError:  # an object that cannot be weakly referenced: made each time
        return _build(tokenizer)


def _build(tokenizer) -> Checked | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        import tiktoken
    except ImportError:
        return None
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model, normalizer = spec.get("model") or {}, spec.get("normalizer")
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
            or (normalizer is not None and normalizer.get("type") != "NFC")):
        return None
    pattern = _pattern(spec.get("pre_tokenizer"))
    added = spec.get("added_tokens") or []
    if pattern is None or any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    chars = _byte_chars()
    specials = {t["content"]: t["id"] for t in added}  # matched whole, before any splitting, as the library does
    try:
        ranks = {bytes(chars[c] for c in piece): i for piece, i in model["vocab"].items() if piece not in specials}
    except KeyError:  # a piece outside the byte alphabet: not a byte-level vocabulary
        return None
    try:
        encoding = tiktoken.Encoding("ftkit", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    except Exception:  # noqa: BLE001 - a regex tiktoken's engine does not take, duplicate ranks: not this path
        return None
    size = max([*ranks.values(), *specials.values()]) + 1
    nbytes = np.zeros(size, dtype=np.int64)
    for piece, i in ranks.items():
        nbytes[i] = len(piece)
    for content, i in specials.items():
        nbytes[i] = len(content.encode("utf-8"))
    return Checked(tokenizer, encoding, nbytes, nfc=normalizer is not None)
