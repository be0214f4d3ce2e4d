"""Data: read files, recognise record shapes, convert to messages, tokenize with labels.

The canonical form of one example is a list of messages
``[{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]``; an
assistant message may also carry `reasoning_content` and `tool_calls`
(OpenAI's shape), and a conversation whose record defines tools is a
`Conversation`, the list with its `tools`. Every record shape in `FORMATS`
converts to it; `ftkit convert` writes it back out in the seed tutorial's
``{"conversation": [...]}`` shape. A file whose records cannot all be read is
refused with the file, record index and reason.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ftkit.errors import DataError, Tokenized
from ftkit.rows import CUT_ANSWER, CUT_TURNS, DROPPED, IGNORE, KEPT, Rows, RowsWriter, Stats  # noqa: F401
from ftkit.templates import single_token_ids, split_reasoning

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool"}  # LLaMA-Factory's tool-calling turns
EXTRA_KEYS = ("reasoning_content", "tool_calls", "tool_call_id", "name", "loss_weight")  # kept from OpenAI-style
# messages (loss_weight: LLaMA-Factory v1's per-message weight; 0 leaves an answer untrained)


class Conversation(list):
    """A conversation (its messages) and the tools its record defines, for templates that render them."""

    def __init__(self, messages=(), tools: list | None = None):
        super().__init__(messages)
        self.tools = tools


def _tools(rec: dict, msgs: list[dict]) -> list[dict]:
    """The record's `tools` (a list, or a JSON string of one as LLaMA-Factory stores it) in OpenAI's shape."""
    tools = rec.get("tools")
    if tools in (None, "", []):
        return msgs
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise ValueError(f"tools: not valid JSON ({e.msg})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("tools must be a list of function descriptions")
    return Conversation(msgs, [t if "function" in t else {"type": "function", "function": t} for t in tools])


def _tool_call(value) -> list[dict]:
    """LLaMA-Factory's function_call turn ({"name", "arguments"}, or a list of them, as JSON) as OpenAI tool_calls."""
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as e:
        raise ValueError(f"function_call: not valid JSON ({e.msg})") from None
    calls = calls if isinstance(calls, list) else [calls]
    if not all(isinstance(c, dict) and "name" in c for c in calls):
        raise ValueError('function_call must hold {"name": ..., "arguments": {...}}')
    return [{"type": "function", "function": {"name": c["name"], "arguments": _arguments(c.get("arguments", {}))}}
            for c in calls]


def _arguments(arguments):
    """Arguments as a mapping, as chat templates render them (OpenAI data stores them as a JSON string)."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments
MAX_LISTED = 10  # problems listed in one error; the rest are counted


# ---- record shapes -----------------------------------------------------------

def _role_content(items, where: str) -> list[dict]:
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list of messages")
    out = []
    for j, m in enumerate(items):
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not m.get("tool_calls")):
            raise ValueError(f"{where}[{j}] needs 'role' and 'content'")
        msg = {"role": m["role"], "content": _text_of(m.get("content"), f"{where}[{j}]")} | \
            {k: m[k] for k in EXTRA_KEYS if m.get(k) is not None and (k == "loss_weight" or m.get(k))}
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_openai_call(c, f"{where}[{j}]") for c in msg["tool_calls"]]
        out.append(msg)
    return out


def _text_of(content, where: str):
    """A message's text: a string, or a list of parts ({type: text, text | value}, as OpenAI's and LLaMA-Factory
    v1's data write it), joined."""
    if not isinstance(content, list):
        return content or ""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = kind or type(part).__name__
            raise ValueError(f"{where}: {'an' if what[0] in 'aeiou' else 'a'} {what} part; only text parts train "
                             "(vision and audio fine-tuning is not supported yet)")
        texts.append(part.get("text", part.get("value", "")))
    return "".join(texts)


def _openai_call(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or "name" not in function:
        raise ValueError(f'{where}: each tool call needs {{"function": {{"name": ..., "arguments": ...}}}}')
    return {**call, "type": call.get("type", "function"),
            "function": {**function, "arguments": _arguments(function.get("arguments", {}))}}


def _from_value(items, where: str, roles: dict) -> list[dict]:
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list of turns")
    out = []
    for j, m in enumerate(items):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise ValueError(f"{where}[{j}] needs 'from' and 'value'")
        role = roles.get(m["from"])
        if role is None:
            raise ValueError(f"{where}[{j}]: unknown speaker {m['from']!r}; expected one of {', '.join(roles)}")
        if m["from"] == "function_call":
            out.append({"role": "assistant", "content": "", "tool_calls": _tool_call(m["value"])})
        else:
            out.append({"role": role, "content": m["value"]})
    return out


def _with_system(rec: dict, msgs: list[dict]) -> list[dict]:
    system = rec.get("system")
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *msgs]
    return msgs


def from_conversation(rec: dict) -> list[dict]:
    return _tools(rec, _with_system(rec, _role_content(rec["conversation"], "conversation")))


def from_openai(rec: dict) -> list[dict]:
    return _tools(rec, _role_content(rec["messages"], "messages"))


def from_sharegpt(rec: dict) -> list[dict]:
    return _tools(rec, _with_system(rec, _from_value(rec["conversations"], "conversations", SHAREGPT_ROLES)))


def from_qwen(rec: dict) -> list[dict]:
    roles = {"user": "user", "assistant": "assistant", "system": "system"}
    return _with_system(rec, _from_value(rec["conversations"], "conversations", roles))


def from_chatglm3(rec: dict) -> list[dict]:
    msgs = _role_content(rec["conversations"], "conversations")
    for j, m in enumerate(msgs):
        if m["role"] in ("observation", "tool"):
            raise ValueError(f"conversations[{j}]: tool calls (role {m['role']!r}) are not supported for training")
    return msgs


def from_alpaca(rec: dict) -> list[dict]:
    msgs = []
    for j, pair in enumerate(rec.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError(f"history[{j}] must be a [question, answer] pair")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = rec["instruction"]
    if rec.get("input"):
        prompt = f"{prompt}\n{rec['input']}" if prompt else rec["input"]
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec.get("output")}]
    return _with_system(rec, msgs)


_MOSS_MARK = re.compile(r"^\s*<\|(?:Human|MOSS)\|>:\s?|<e[a-z]{2}>\s*$")


def from_moss(rec: dict) -> list[dict]:
    chat = rec["chat"]
    if not isinstance(chat, dict):
        raise ValueError("chat must map turn_1, turn_2, ... to turns")
    msgs = []
    if rec.get("meta_instruction"):
        msgs.append({"role": "system", "content": rec["meta_instruction"].strip()})
    for name in sorted(chat, key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        turn = chat[name]
        if not isinstance(turn, dict) or "Human" not in turn or "MOSS" not in turn:
            raise ValueError(f"chat.{name} needs 'Human' and 'MOSS'")
        for key, role in (("Human", "user"), ("MOSS", "assistant")):
            text = turn[key]
            msgs.append({"role": role, "content": _MOSS_MARK.sub("", text) if isinstance(text, str) else text})
    return msgs


def _is_from_value(rec, roles) -> bool:
    conv = rec.get("conversations")
    return isinstance(conv, list) and bool(conv) and all(isinstance(m, dict) and "from" in m for m in conv) \
        and all(m["from"] in roles for m in conv)


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict], list[dict]]
    example: str


# Detection order matters: the first match names the file's format.
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("conversation", lambda r: "conversation" in r, from_conversation,
           '{"conversation": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'),
    Format("openai", lambda r: "messages" in r, from_openai,
           '{"messages": [{"role": "system|user|assistant", "content": ...}]}'),
    Format("qwen", lambda r: "id" in r and _is_from_value(r, ("user", "assistant", "system")), from_qwen,
           '{"id": ..., "conversations": [{"from": "user", "value": ...}, {"from": "assistant", "value": ...}]}'),
    Format("sharegpt", lambda r: isinstance(r.get("conversations"), list) and any(
        isinstance(m, dict) and "from" in m for m in r["conversations"]), from_sharegpt,
           '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}'),
    Format("chatglm3", lambda r: isinstance(r.get("conversations"), list) and any(
        isinstance(m, dict) and "role" in m for m in r["conversations"]), from_chatglm3,
           '{"conversations": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'),
    Format("alpaca", lambda r: "instruction" in r and "output" in r, from_alpaca,
           '{"instruction": ..., "input": ..., "output": ..., "system"?: ..., "history"?: [[q, a], ...]}'),
    Format("moss", lambda r: "chat" in r, from_moss,
           '{"meta_instruction": ..., "chat": {"turn_1": {"Human": "<|Human|>: ...<eoh>", "MOSS": "<|MOSS|>: ...<eom>"}}}'),
]}


def detect_format(rec) -> str | None:
    if not isinstance(rec, dict):
        return None
    return next((f.name for f in FORMATS.values() if f.detect(rec)), None)


def check_messages(msgs: list[dict]) -> str | None:
    """None if the conversation can be trained on, else the reason. After an optional system message, turns go
    user, assistant, user, ...; an assistant turn that calls tools is followed by their results (role tool) and
    then the assistant again (results may also follow an answer that wrote its call as text, as LLaMA-Factory
    allows)."""
    if not msgs:
        return "no messages"
    for j, m in enumerate(msgs):
        if m["role"] not in ROLES:
            return f"message {j}: unknown role {m['role']!r}; expected system, user, assistant or tool"
        if not isinstance(m["content"], str):
            return f"message {j} ({m['role']}): content must be text, got {type(m['content']).__name__}"
        if not isinstance(m.get("reasoning_content", ""), str):
            return f"message {j}: reasoning_content must be text"
        weight = m.get("loss_weight", 1.0 if m["role"] == "assistant" else 0.0)
        if not isinstance(weight, (int, float)) or weight not in (0, 1):
            return f"message {j}: loss_weight must be 0 or 1, got {weight!r}"
        if weight and m["role"] != "assistant":
            return (f"message {j} ({m['role']}): loss_weight 1 trains a {m['role']} turn; only answers train "
                    "(train_on_prompt: true trains everything)")
        if m["role"] == "system" and j:
            return f"message {j}: a system message may only come first"
    start = 1 if msgs[0]["role"] == "system" else 0
    expected = ("user",)
    for j, m in enumerate(msgs[start:], start):
        if m["role"] not in expected:
            article = "an" if expected[0] == "assistant" else "a"
            return (f"message {j}: expected {article} {' or '.join(expected)} turn, got {m['role']} (turns must "
                    "alternate user, assistant; tool results follow the assistant turn that calls the tools)")
        calls = m["role"] == "assistant" and m.get("tool_calls")
        if not m["content"].strip() and not calls:
            return f"message {j} ({m['role']}): empty content"
        expected = {"user": ("assistant",), "tool": ("tool", "assistant")}.get(m["role"]) or \
            (("tool",) if calls else ("user", "tool"))  # a result may follow a call written as text (LLaMA-Factory)
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn: nothing to learn from"
    last = msgs[-1]
    if last["role"] != "assistant" or last.get("tool_calls"):
        what = "a tool call" if last["role"] == "assistant" else f"a {last['role']} turn"
        return f"ends with {what}; the last message must be the assistant's answer"
    return None


# ---- files -------------------------------------------------------------------

def data_files(path: Path) -> list[Path]:
    """A dataset's files: the file itself, or every data file of a folder (LLaMA-Factory's file_name may name a
    folder), in name order."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: a folder with no data files ({', '.join(DATA_SUFFIXES)})")
        return files
    return [path]


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


def iter_records(path: Path):
    """Raw records one by one: a .jsonl file line by line (a file larger than memory is fine), the other kinds
    read whole; a folder's files in turn."""
    if path.is_dir():
        for f in data_files(path):
            yield from iter_records(f)
        return
    if path.suffix.lower() not in (".jsonl", ".txt") or not path.is_file():
        yield from read_records(path)
        return
    empty, text = True, path.suffix.lower() == ".txt"
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                empty = False
                if text:  # a .txt file: a document per line (raw text for stage pt), as `datasets` reads it
                    yield {"text": line.rstrip("\r\n")}
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
    if empty:
        raise DataError(f"{path}: the file is empty")


def read_records(path: Path) -> list:
    """Raw records of a .json, .jsonl, .csv or .parquet file, or of every such file in a folder."""
    if path.is_dir():
        return [rec for f in data_files(path) for rec in read_records(f)]
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return list(iter_records(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        for row in rows:  # columns holding JSON lists (messages, conversation, history) are parsed
            for k, v in row.items():
                if isinstance(v, str) and v.lstrip().startswith(("[", "{")):
                    try:
                        row[k] = json.loads(v)
                    except json.JSONDecodeError:
                        pass
        return rows
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
        return records
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            hint = "; one object per line? name the file .jsonl" if e.msg == "Extra data" else ""
            raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg} at column {e.colno}){hint}") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use .json, .jsonl, .csv, .parquet or .txt")


def load_conversations(path: Path, formatting: str = "auto", columns: dict | None = None, tags: dict | None = None,
                       records: list | None = None) -> list[list[dict]]:
    """Every record of a file (or the `records` given, read from `path`) as messages; refuses the file if any
    record is bad. `columns` and `tags` are a dataset_info.json entry's."""
    return list(iter_conversations(path, formatting, columns, tags, records))


def iter_conversations(path: Path, formatting: str = "auto", columns: dict | None = None, tags: dict | None = None,
                       records=None):
    """`load_conversations` one conversation at a time (a .jsonl file is read as it goes): the bad records are
    collected on the way and refused together, once the file is read."""
    records = iter(iter_records(path) if records is None else records)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: no records")

    def prepared(rec):
        if columns:
            rec = _rename_columns(rec, columns)
        return _apply_tags(rec, tags) if tags else rec

    first = prepared(first)
    kind = unsupported_kind(first)
    if kind:
        raise DataError(f"{path}: {kind}")
    if formatting == "auto":
        formatting = detect_format(first)
        if formatting is None:
            raise DataError(f"{path}: record 0: unrecognised shape (keys: {_keys(first)}); "
                            "expected one of:\n" + "\n".join(f"    {f.name}: {f.example}" for f in FORMATS.values()))
    elif formatting not in FORMATS:
        raise DataError(f"formatting: unknown format {formatting!r}; choose auto or {', '.join(FORMATS)}")
    fmt, problems, count = FORMATS[formatting], [], 0
    for i, rec in enumerate(itertools.chain([first], map(prepared, records))):
        count += 1
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"expected an object, got {type(rec).__name__}")
            kind = unsupported_kind(rec)
            if kind:
                raise ValueError(kind)
            if not fmt.detect(rec):
                other = detect_format(rec)
                raise ValueError(f"looks like {other} but this file is {formatting} (mixed formats in one file)"
                                 if other else f"not a {formatting} record (keys: {_keys(rec)})")
            msgs = fmt.convert(rec)
            reason = check_messages(msgs)
            if reason:
                raise ValueError(reason)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"record {i}: {e if not isinstance(e, KeyError) else f'missing key {e}'}")
            continue
        if not problems:  # once a record is bad the file is refused: the rest are only checked
            yield msgs
    if problems:
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        raise DataError(problems[:MAX_LISTED] + more,
                        title=f"{path}: {len(problems)} of {count} records cannot be used")


# dataset_info.json "columns" use LLaMA-Factory's names: {"prompt": "question", "response": "answer", ...}
_COLUMN_NAMES = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}


def _rename_columns(rec, columns: dict):
    if not isinstance(rec, dict):
        return rec
    renamed = {_COLUMN_NAMES.get(ours, ours): rec.get(theirs) for ours, theirs in columns.items()}
    return renamed | {k: v for k, v in rec.items() if k not in columns.values()}


# LLaMA-Factory's sharegpt tags: which keys of a message hold its role and content, and what each role is called
_TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
_TAG_ROLES = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
              "function_tag": "function_call", "system_tag": "system"}


def _apply_tags(rec, tags: dict):
    """A record whose messages use a dataset_info.json entry's tags, as sharegpt from/value turns."""
    conv = rec.get("conversations") if isinstance(rec, dict) else None
    if not isinstance(conv, list):
        return rec
    t = {**_TAG_DEFAULTS, **tags}
    roles = {t[k]: ours for k, ours in _TAG_ROLES.items()}
    turns = [{"from": roles.get(m.get(t["role_tag"]), m.get(t["role_tag"])), "value": m.get(t["content_tag"])}
             if isinstance(m, dict) else m for m in conv]
    return {**rec, "conversations": turns}


def unsupported_kind(rec) -> str | None:
    """What a record is, when it is not a conversation to train on: media, preference pairs, KTO examples.
    Recognised, so they are refused by name instead of misread."""
    if not isinstance(rec, dict):
        return None
    if set(rec) == {"text"}:
        return ("raw text (a text column, or a .txt file's lines) is for continued pre-training: set stage: pt; "
                "stage sft trains on conversations")
    media = [k for k in ("images", "videos", "audios") if rec.get(k)]
    if media:
        return (f"the records hold {' and '.join(media)}: vision and audio fine-tuning is not supported yet; "
                "use text-only data")
    if "chosen" in rec and "rejected" in rec:
        return ("preference pairs (chosen / rejected) are for preference training: set stage: dpo (or rm for a "
                "reward model); stage sft trains on conversations")
    if isinstance(rec.get("kto_tag", rec.get("label")), bool) and ("messages" in rec or "conversations" in rec):
        return ("answers labelled good or bad (kto_tag) are for KTO: set stage: kto; stage sft trains on "
                "conversations")
    return None


def _keys(rec) -> str:
    return ", ".join(sorted(rec)) if isinstance(rec, dict) else type(rec).__name__


def bundled_data_dir() -> Path:
    """The data/ folder shipped with ftkit (in the wheel, or the repository for editable installs)."""
    here = Path(__file__).resolve().parent
    for d in (here / "_data", here.parent / "data"):
        if (d / "dataset_info.json").exists():
            return d
    return here.parent / "data"


@dataclass
class Source:
    name: str
    path: Path
    formatting: str = "auto"
    columns: dict | None = None
    tags: dict | None = None
    num_samples: int | None = None  # draw this many examples (with repeats when more than the file has)
    hub: dict | None = None         # {url, subset, split, folder}: a dataset on the Hugging Face Hub
    placeholders: list = field(default_factory=list)  # {{names}} left unfilled in its texts, once tokenized
    kind: str | None = None  # a dataset_info.json entry's: conversations, pairs (ranking) or labelled (kto_tag)


def resolve_datasets(names: list[str], dataset_dir: str | Path = "data") -> list[Source]:
    """Each name's Source; a `.yaml` file of datasets (LLaMA-Factory v1's train_dataset) stands for its entries."""
    sources = []
    for name in names:
        spec = Path(name)
        if spec.suffix in (".yaml", ".yml") and spec.is_file():
            sources += _v1_dataset_file(spec)
        else:
            sources.append(resolve_dataset(name, dataset_dir))
    return sources


_V1_CONVERTERS = {None: "auto", "alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "openai"}


def _v1_dataset_file(spec: Path) -> list[Source]:
    """LLaMA-Factory v1's dataset file: {name: {path, source: local, converter, size}}; paths from the working
    folder, as it reads them."""
    import yaml

    entries = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    if not isinstance(entries, dict):
        raise DataError(f"{spec}: expected a mapping of dataset names to {{path, source, converter, size}}")
    sources = []
    for name, e in entries.items():
        if not isinstance(e, dict) or "path" not in e:
            raise DataError(f"{spec}: {name}: needs a path")
        if e.get("source", "local") != "local":
            raise DataError(f"{spec}: {name}: source {e['source']!r} is not supported; download it and use source: "
                            "local")
        if e.get("converter") not in _V1_CONVERTERS:
            raise DataError(f"{spec}: {name}: converter {e['converter']!r} is not one of "
                            f"{', '.join(str(c) for c in _V1_CONVERTERS if c)}")
        sources.append(Source(name, Path(e["path"]), _V1_CONVERTERS[e.get("converter")], num_samples=e.get("size")))
    return sources


def resolve_dataset(name: str, dataset_dir: str | Path = "data") -> Source:
    """A dataset name -> its file: a path, a file in dataset_dir, or a dataset_info.json entry."""
    candidates = [Path(name), Path(dataset_dir) / name]
    for p in candidates:
        if p.is_file() or (p.is_dir() and "/" in name):  # a folder of data files, named as a path
            return Source(name, p)
    known = {}
    for d in dict.fromkeys([Path(dataset_dir), bundled_data_dir()]):
        info_path = d / "dataset_info.json"
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{info_path}: line {e.lineno}: invalid JSON ({e.msg})") from None
            for key, entry in info.items():
                known.setdefault(key, (d, entry))
    if name in known:
        d, entry = known[name]
        return _entry_source(name, d, entry)
    listed = ", ".join(sorted(known)) or "(no dataset_info.json found)"
    raise DataError(f"dataset: {name!r} is neither a file nor a name in dataset_info.json "
                    f"(looked in {dataset_dir}/ and the bundled data); known names: {listed}")


def _entry_source(name: str, folder: Path, entry: dict) -> Source:
    """A dataset_info.json entry as a Source, with LLaMA-Factory's semantics; data ftkit cannot train on yet is
    refused by name here, before anything loads."""
    where = f"{folder / 'dataset_info.json'}: {name}"
    columns = entry.get("columns") or {}
    media = [k for k in ("images", "videos", "audios") if k in columns]
    if media:
        raise DataError(f"{where}: this dataset has {' and '.join(media)}; vision and audio fine-tuning is not "
                        "supported yet")
    kind = "pairs" if entry.get("ranking") or {"chosen", "rejected"} & set(columns) else \
        "labelled" if "kto_tag" in columns else "conversations"
    fields = dict(formatting=entry.get("formatting", "auto"), columns=columns or None, tags=entry.get("tags"),
                  num_samples=entry.get("num_samples"), kind=kind)
    url = entry.get("hf_hub_url") or entry.get("ms_hub_url")
    if "file_name" in entry:
        return Source(name, folder / entry["file_name"], **fields)
    if url and entry.get("load_from", "hf_hub") in ("hf_hub", "ms_hub"):
        hub = {"url": url, "subset": entry.get("subset"), "split": entry.get("split", "train"),
               "folder": entry.get("folder")}
        return Source(name, Path(url), **fields, hub=hub)
    raise DataError(f"{folder / 'dataset_info.json'}: entry {name!r} has no file_name (nor hf_hub_url)")


def source_conversations(src: Source, cfg=None, fmt: str | None = None, replace: dict | None = None,
                         stream: bool = False):
    """A dataset's conversations, as training and predict runs read them: its file (or Hub records), in the run's
    `formatting` unless auto (else the dataset's), placeholders filled from the run's `replace`. A list, or with
    `stream` an iterator that reads the file as it goes."""
    if cfg is not None:
        fmt, replace = run_format(cfg, src), cfg.replace
    records = hub_records(src) if src.hub else None
    if fmt == TEXT:
        texts = iter_texts(src, records)
        return texts if stream else list(texts)
    conversations = iter_conversations(src.path, fmt or src.formatting, src.columns, src.tags, records)
    filled = (fill_placeholders([c], replace)[0] for c in conversations) if replace else conversations
    return filled if stream else list(filled)


TEXT = "text"  # stage pt's documents: raw text, every token trained


def run_format(cfg, src: Source) -> str:
    """How a run reads a dataset: raw text for pre-training, else the run's formatting, else the dataset's."""
    if cfg.stage == "pt":
        return TEXT
    return cfg.formatting if cfg.formatting != "auto" else src.formatting


def iter_texts(src: Source, records=None):
    """Stage pt: each record's text (the `text` column, or the one a dataset_info.json entry names as its prompt,
    as LLaMA-Factory's c4_demo and wiki_demo do; a .txt file's lines) as a one-message "conversation" that the
    text template renders as the text and end-of-sequence. Bad records are refused together, like conversations."""
    column = (src.columns or {}).get("prompt", "text")
    problems, count = [], 0
    for i, rec in enumerate(iter_records(src.path) if records is None else records):
        count += 1
        text = rec.get(column) if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f"record {i}: " + (f"no text in column {column!r} (keys: {_keys(rec)})"
                                               if isinstance(rec, dict) else f"expected an object, got "
                                               f"{type(rec).__name__}"))
        elif not problems:
            yield [{"role": "assistant", "content": text}]
    if problems:
        more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        raise DataError(problems[:MAX_LISTED] + more, title=f"{src.path}: {len(problems)} of {count} records "
                        "have no text for pre-training (stage pt)")


def hub_records(src: Source) -> list[dict]:
    """A Hub dataset's records, loaded by the `datasets` library (it caches them; offline it needs that cache)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"dataset {src.name}: it is on the Hugging Face Hub ({src.hub['url']}); loading it needs the "
                        "datasets package: pip install datasets") from None
    try:
        data = datasets.load_dataset(src.hub["url"], name=src.hub["subset"], data_dir=src.hub["folder"],
                                     split=src.hub["split"])
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad split: one line says which
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"dataset {src.name}: cannot load {src.hub['url']} from the Hub ({first}); download it "
                        "where there is a network and name the file in dataset_info.json (file_name)") from None
    return data.to_list()


def convert(input: str | Path, output: str | Path, source_format: str = "auto") -> int:
    """Write any supported shape as the seed's conversation format; returns the record count."""
    convs = load_conversations(Path(input), source_format)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [{"conversation": c} | ({"tools": c.tools} if getattr(c, "tools", None) else {}) for c in convs]
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return len(records)


# ---- tokenization --------------------------------------------------------------

CHUNK = 4096  # conversations rendered and tokenized at a time


def encode(conversations, tokenizer, template, cutoff_len: int, train_on_prompt: bool = False) -> tuple[Rows, Stats]:
    """Tokenize whole rendered texts (batched) and label the tokens of trained spans: the kept examples (a Rows
    view: each item {"input_ids", "labels"}) and their statistics."""
    return collect(encode_rows(conversations, tokenizer, template, cutoff_len, train_on_prompt))


def encode_rows(conversations, tokenizer, template, cutoff_len: int, train_on_prompt: bool = False,
                writer: RowsWriter | None = None, workers: int = 1) -> Rows:
    """One row per conversation (any iterable of them, taken CHUNK at a time: a stream is never whole in memory),
    into `writer` (a folder, for the cache) or memory. Each text is tokenized whole by the tokenizer's Rust backend,
    batched on every core, and a token is trained when its characters overlap a trained span, found from the
    spans' ends (`char_to_token`) instead of every token's offsets. With `workers` > 1, chunks are rendered and
    tokenized in that many forked processes while this one reads. `reference_rows` is the per-example path it
    must equal; a tokenizer without a Rust backend takes that path."""
    writer = writer if writer is not None else RowsWriter()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    eot_ids = np.array(sorted(single_token_ids(tokenizer, template.stop)), dtype=np.int32)
    if backend is None:
        def job(chunk):
            return _columns_of(reference_rows(chunk, tokenizer, template, cutoff_len, train_on_prompt))
    else:
        def job(chunk):
            return _encode_chunk(chunk, tokenizer, template, cutoff_len, train_on_prompt, eot_ids)
    try:
        for columns in _in_processes(chunks(conversations, CHUNK), job, workers):
            writer.add(*columns)
    except BaseException:
        writer.abandon()
        raise
    return writer.finish()


_JOB = None  # what a forked tokenizing process runs on each chunk (inherited, never pickled)


def _run_job(chunk):
    return _JOB(chunk)


def _one_thread():
    os.environ["RAYON_NUM_THREADS"] = "1"  # each process tokenizes on one thread (ftkit.fastbpe.threads)


def _in_processes(parts, job, workers: int):
    """job(part) for each part, in order: here, or in `workers` forked processes when there are two parts or more
    (and fork exists). At most two parts per process are in flight, so a stream is never read far ahead."""
    import collections
    import multiprocessing

    global _JOB
    parts = iter(parts)
    ahead = list(itertools.islice(parts, 2))
    if workers < 2 or len(ahead) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(job, itertools.chain(ahead, parts))
        return
    _JOB = job
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
            pending = collections.deque()
            for part in itertools.chain(ahead, parts):
                pending.append(pool.apply_async(_run_job, (part,)))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        _JOB = None


def preprocessing_workers(setting: int | None) -> int:
    """Processes that tokenize: the setting (LLaMA-Factory's preprocessing_num_workers), at most one per CPU this
    process may use; unset, one per CPU up to 8."""
    from ftkit.fastbpe import threads

    return max(1, min(setting, threads())) if setting else min(8, threads())


def chunks(items, size: int):
    """Lists of `size` items (the last one shorter) from any iterable."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_THREADS_PID = None  # the process whose tokenizer threads were started


@contextmanager
def tokenizer_threads():
    """The tokenizers library's Rust threads on for a batch (ftkit.model.quiet turns them off, so that processes
    forked later, such as data loader workers, do not inherit a thread pool), and off again after. A process forked
    after they ran (a data loader worker) has no such threads and must not ask for them: it tokenizes on one."""
    global _THREADS_PID
    if _THREADS_PID not in (None, os.getpid()):
        yield
        return
    _THREADS_PID = os.getpid()
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = before if before is not None else "false"


def _tokenized(tokenizer, rendered) -> list[tuple]:
    """(token ids, the token range of each trained span) per rendered text: through tiktoken where it reproduces
    the tokenizer (ftkit.fastbpe), else the tokenizers library's Rust backend on every core."""
    from ftkit import fastbpe

    texts = [r.text for r in rendered]
    fast = fastbpe.for_tokenizer(tokenizer)
    ids = fast.encode(texts) if fast else None
    if ids is not None:
        return [(i, fast.span_tokens(r.text, i, r.spans)) for i, r in zip(ids, rendered)]
    with tokenizer_threads():
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [(np.array(e.ids, dtype=np.int32), [_span_tokens(e, a, b) for a, b in r.spans])
            for e, r in zip(encodings, rendered)]


def _encode_chunk(chunk, tokenizer, template, cutoff_len: int, train_on_prompt: bool, eot_ids):
    rendered = [weighted(c, template.render(c, tools=getattr(c, "tools", None))) for c in chunk]
    split = getattr(template, "split_long", False)  # raw text (stage pt): a long document is cut into pieces
    cut, lost, text_eot, ids_parts, trained_parts, holes = [], [], [], [], [], set()
    for c, r, (ids, ranges) in zip(chunk, rendered, _tokenized(tokenizer, rendered), strict=True):
        trained = np.ones(len(ids), np.uint8) if train_on_prompt else np.zeros(len(ids), np.uint8)
        if not train_on_prompt:
            for first, end in ranges:
                trained[first:end] = 1
        how = KEPT
        if len(ids) > cutoff_len and split:
            pieces = range(0, len(ids), cutoff_len)
            ids_parts += [ids[a:a + cutoff_len] for a in pieces]
            trained_parts += [trained[a:a + cutoff_len] for a in pieces]
            cut += [KEPT] * len(pieces)
            lost += [False] * len(pieces)
            text_eot += [False] * (len(pieces) - 1) + [True]
            continue
        if len(ids) > cutoff_len:
            head = trained[:cutoff_len + 1]
            ends = np.flatnonzero((head[:-1] == 1) & (head[1:] == 0)) + 1  # answers that end within the cutoff
            end, how = (int(ends[-1]), CUT_TURNS) if len(ends) and not train_on_prompt else (cutoff_len, CUT_ANSWER)
            ids, trained = ids[:end], trained[:end]
        if not trained.any():
            ids, trained, how = ids[:0], trained[:0], DROPPED
        cut.append(how)
        # end-of-turn is not one token: look at the trained text
        text_eot.append(not len(eot_ids) and any(stop in r.text[a:b] for stop in template.stop for a, b in r.spans))
        lost.append(reasoning_lost(c, r.text))
        holes.update(PLACEHOLDER.findall(r.text))
        ids_parts.append(ids)
        trained_parts.append(trained)
    n = len(ids_parts)
    lengths = np.array([len(t) for t in ids_parts], dtype=np.int32)
    ids, trained = np.concatenate(ids_parts), np.concatenate(trained_parts)
    row = np.repeat(np.arange(n), lengths)
    n_trained = np.bincount(row, weights=trained, minlength=n).astype(np.int32)
    eot = (np.bincount(row[(trained == 1) & np.isin(ids, eot_ids)], minlength=n) > 0) if len(eot_ids) else \
        np.array(text_eot, dtype=np.bool_)
    return (ids, trained, lengths, n_trained, np.array(cut, np.int8), eot, np.array(lost, np.bool_), holes)


def _span_tokens(encoding, a: int, b: int) -> tuple[int, int]:
    """The tokens [first, end) whose characters overlap the character span [a, b) (none: (0, 0))."""
    for pos in range(a, b):
        first = encoding.char_to_token(pos)
        if first is not None:
            break
    else:
        return 0, 0
    for pos in range(b - 1, a - 1, -1):
        last = encoding.char_to_token(pos)
        if last is not None:
            return first, last + 1
    return 0, 0


def reference_rows(conversations, tokenizer, template, cutoff_len: int, train_on_prompt: bool = False) -> list[dict]:
    """The per-example path (every token's offsets, Python lists): what `encode_rows` must equal, row for row.
    One dict per conversation: input_ids, labels, what the cutoff did (`cut`), whether end-of-turn is trained."""
    if not conversations:
        return []
    rendered = [weighted(c, template.render(c, tools=getattr(c, "tools", None))) for c in conversations]
    enc = tokenizer([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
    eot_ids = set(single_token_ids(tokenizer, template.stop))
    rows = []
    split = getattr(template, "split_long", False)
    for c, r, ids, offsets in zip(conversations, rendered, enc["input_ids"], enc["offset_mapping"], strict=True):
        if split and len(ids) > cutoff_len:  # raw text: a long document in pieces, every token trained
            rows += [{"input_ids": ids[a:a + cutoff_len], "labels": ids[a:a + cutoff_len], "cut": KEPT,
                      "eot": a + cutoff_len >= len(ids), "lost": False, "holes": ""}
                     for a in range(0, len(ids), cutoff_len)]
            continue
        ids, trained, cut = truncate(ids, trained_tokens(r.spans, offsets, train_on_prompt), cutoff_len,
                                     train_on_prompt)
        labels = [t if keep else IGNORE for t, keep in zip(ids, trained, strict=True)]
        if eot_ids:
            eot = any(label in eot_ids for label in labels)
        else:  # end-of-turn is not one token: look at the trained text
            eot = any(stop in r.text[a:b] for stop in template.stop for a, b in r.spans)
        if not any(trained):
            ids, labels, cut = [], [], DROPPED
        rows.append({"input_ids": ids, "labels": labels, "cut": cut, "eot": eot, "lost": reasoning_lost(c, r.text),
                     "holes": ",".join(sorted(set(PLACEHOLDER.findall(r.text))))})
    return rows


def _columns_of(rows: list[dict]) -> tuple:
    """Reference rows as the columns a RowsWriter takes."""
    flat = lambda key: [x for row in rows for x in row[key]]  # noqa: E731
    labels = np.array(flat("labels"), dtype=np.int64)
    return (np.array(flat("input_ids"), dtype=np.int32), (labels != IGNORE).astype(np.uint8),
            np.array([len(row["input_ids"]) for row in rows], dtype=np.int32),
            np.array([sum(x != IGNORE for x in row["labels"]) for row in rows], dtype=np.int32),
            np.array([row["cut"] for row in rows], dtype=np.int8), np.array([row["eot"] for row in rows], dtype=bool),
            np.array([row["lost"] for row in rows], dtype=bool),
            {h for row in rows if row["holes"] for h in row["holes"].split(",")})


def weighted(messages: list[dict], rendered):
    """The render with the spans of answers weighted 0 (`loss_weight`) dropped: one span per answer, in order,
    then a closing suffix if the template has one."""
    weights = [m.get("loss_weight", 1) for m in messages if m["role"] == "assistant"]
    if 0 not in weights:
        return rendered
    return type(rendered)(rendered.text, [s for s, w in zip(rendered.spans, weights) if w]
                          + rendered.spans[len(weights):])


PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")  # {{name}}: LLaMA-Factory's identity.json leaves these to fill


def fill_placeholders(conversations: list[list[dict]], values: dict | None) -> list[list[dict]]:
    """`{{key}}` in message texts replaced by values[key] (the run's `replace`); other text unchanged."""
    if not values:
        return conversations
    def fill(text):
        return PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text) if isinstance(text, str) \
            else text
    out = []
    for c in conversations:
        filled = [{**m, "content": fill(m["content"])} for m in c]
        out.append(Conversation(filled, c.tools) if isinstance(c, Conversation) else filled)
    return out


def reasoning_lost(messages: list[dict], text: str) -> bool:
    """Whether an answer after the last user turn carries reasoning the rendered text does not hold (the template
    drops it, so it is not trained). Earlier answers losing theirs is how reasoning models' templates show history."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return any((r := split_reasoning(m)[0]) and r not in text
               for m in messages[last_user + 1:] if m["role"] == "assistant")


@dataclass
class Example:
    """One conversation as the model sees it: the text, its tokens, and the labels (-100 where not trained)."""

    text: str
    input_ids: list[int]
    labels: list[int]
    template: str
    spans: list = field(default_factory=list, repr=False)  # trained character ranges of `text`

    @property
    def trained_text(self) -> str:
        """The trained tokens' text, in order (the answers and their end-of-turn markers)."""
        return "".join(self.text[a:b] for a, b in self.spans)


def render(messages: list[dict], template: str = "auto", model: str = "tiny", add_generation_prompt: bool = False,
           tools: list | None = None, train_on_prompt: bool = False, enable_thinking: bool | None = None) -> Example:
    """What a model sees for `messages`: the template's text, its input_ids and the labels training uses, through
    the same code as training and the preview. `model` may be a folder holding only a tokenizer (and config.json).
    `tools` go to the tokenizer's own template (`auto`); with `add_generation_prompt` nothing is trained."""
    from ftkit import model as M
    from ftkit.templates import get_template

    path = M.resolve(model)
    tokenizer = M.load_tokenizer(path)
    tmpl = get_template(template, tokenizer, M.model_type(path), enable_thinking)
    tools = tools if tools is not None else getattr(messages, "tools", None)
    messages = [dict(m) for m in messages]
    problem = None if add_generation_prompt else check_messages(messages)
    if problem:
        raise DataError(f"messages: {problem}")
    r = weighted(messages, tmpl.render(messages, add_generation_prompt, tools=tools))
    enc = tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True)
    trained = trained_tokens(r.spans, enc["offset_mapping"], train_on_prompt)
    labels = [t if keep else IGNORE for t, keep in zip(enc["input_ids"], trained)]
    return Example(r.text, enc["input_ids"], labels, tmpl.name, list(r.spans))


def trained_tokens(spans: list[tuple[int, int]], offsets, train_on_prompt: bool = False) -> list[bool]:
    """Per token (its character offsets): whether it overlaps a trained span."""
    return [train_on_prompt or any(s < e_ and b < e for b, e_ in spans) for s, e in offsets]


def truncate(ids: list[int], trained: list[bool], cutoff_len: int, train_on_prompt: bool = False):
    """(ids, trained, what the cut did) within cutoff_len: at the end of the last whole answer that fits, else
    mid-answer."""
    if len(ids) <= cutoff_len:
        return ids, trained, KEPT
    ends = [i + 1 for i in range(cutoff_len) if trained[i] and (i + 1 == len(ids) or not trained[i + 1])]
    if ends and not train_on_prompt:
        end, cut = ends[-1], CUT_TURNS  # keep whole answers
    else:
        end, cut = cutoff_len, CUT_ANSWER
    return ids[:end], trained[:end], cut


def token_pieces(tokenizer, ids: list[int]) -> list[tuple[str, int, int]]:
    """The text of `ids` in pieces (text, first, end): one token each where a token decodes to whole characters,
    several where byte-level BPE splits a character (a Chinese character or an emoji over 2-4 tokens, each of
    which alone decodes to U+FFFD). Each piece is decoded after the piece before it, so SentencePiece's leading
    spaces come out as in the whole text (the incremental detokenizing that streaming generation does)."""
    pieces, first, context = [], 0, 0
    for i in range(len(ids)):
        before = tokenizer.decode(ids[context:first], skip_special_tokens=False)
        text = tokenizer.decode(ids[context:i + 1], skip_special_tokens=False)
        if text.endswith("\ufffd") and i + 1 < len(ids) and i + 1 - first < 4:
            continue  # an incomplete character: wait for the tokens that finish it (at most 4 UTF-8 bytes)
        pieces.append((text[len(before):], first, i + 1))
        context, first = first, i + 1
    return pieces


def collect(rows: Rows) -> tuple[Rows, Stats]:
    """Training examples (a view of the rows with a trained token left) and their statistics."""
    return rows.kept(), rows.stats()


# ---- the tokenization cache ----------------------------------------------------
# A dataset file tokenized for one tokenizer, template and cutoff is kept, keyed by a hash of all of them (the
# file's bytes included), so the next run on the same data memory-maps the rows instead of parsing and tokenizing
# again. A changed file, tokenizer, template or setting gives another key. Entries are folders of raw columns (no
# pickle), written chunk by chunk and renamed into place when complete.

def cache_dir() -> Path | None:
    """$FTKIT_CACHE_DIR (`off` disables the cache), else ~/.cache/ftkit/tokenized."""
    where = os.environ.get("FTKIT_CACHE_DIR")
    if where == "off":
        return None
    return Path(where) if where else Path.home() / ".cache" / "ftkit" / "tokenized"


def _fingerprint(path: Path, tokenizer, template, cutoff_len: int, train_on_prompt: bool, fmt: str, columns) -> str | None:
    import hashlib

    import ftkit

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer has no serialisable state to hash: no cache
        return None
    h = hashlib.sha256()
    code = b"".join((Path(__file__).parent / f).read_bytes() for f in ("data.py", "rows.py", "templates.py"))
    for part in (ftkit.__version__, code, backend.to_str(), template.jinja(), repr(template.stop),
                 repr(getattr(template, "kwargs", None)), repr((cutoff_len, train_on_prompt, fmt, columns))):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    for f in data_files(path):  # the data, read in blocks: a file of gigabytes is never whole in memory
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as data:
            while block := data.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:32]


def encoded_source(src: Source, fmt: str, tokenizer, template, cutoff_len: int, train_on_prompt: bool,
                   replace: dict | None = None, workers: int = 1) -> Rows:
    """The rows of one dataset, memory-mapped from the cache when this exact tokenization was done before; else
    tokenized chunk by chunk into the cache (or memory, with the cache off)."""
    root = cache_dir()
    key = root and not src.hub and _fingerprint(src.path, tokenizer, template, cutoff_len, train_on_prompt, fmt,
                                                 (src.columns, src.tags, sorted((replace or {}).items())))
    if key and (root / key / "rows.json").exists():
        try:
            return Rows.load(root / key)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is only a miss
            pass
    writer = RowsWriter(root / key) if key else None
    try:
        return encode_rows(source_conversations(src, fmt=fmt, replace=replace, stream=True), tokenizer, template,
                           cutoff_len, train_on_prompt, writer, workers)
    except OSError:  # a read-only home or a full disk costs the cache, not the run
        if not key:
            raise
    return encode_rows(source_conversations(src, fmt=fmt, replace=replace, stream=True), tokenizer, template,
                       cutoff_len, train_on_prompt, workers=workers)


@dataclass
class Prepared:
    train: Rows
    eval: Rows
    stats: Stats
    sources: list[Source]


def dataset_rows(cfg, tokenizer, template, cutoff_len: int, names: list[str] | None = None
                 ) -> tuple[Rows, list[Source]]:
    """Every dataset of a run config (or those `names`) tokenized (one row per conversation, in file order,
    max_samples a file), tokenized once per file and cached."""
    sources = resolve_datasets(cfg.datasets if names is None else names, cfg.dataset_dir)
    parts = []
    for src in sources:
        fmt = run_format(cfg, src)
        part = encoded_source(src, fmt, tokenizer, template, cutoff_len, cfg.train_on_prompt, cfg.replace,
                              preprocessing_workers(cfg.preprocessing_num_workers))
        if part.holes:
            src.placeholders = list(part.holes)
        index = list(range(len(part)))
        if src.num_samples:  # dataset_info.json's num_samples: a seeded draw, repeating when more than there are
            pick = random.Random(cfg.seed)
            n = src.num_samples
            index = pick.sample(index, n) if n <= len(index) else \
                index * (n // len(index)) + pick.sample(index, n % len(index))
        parts.append(part.select(index[: cfg.max_samples] if cfg.max_samples else index))
    if names is None and cfg.mix_strategy != "concat" and len(parts) > 1:
        whole = Rows.concat(parts)
        starts = np.cumsum([0] + [len(part) for part in parts])
        picks = interleave([list(range(a, a + len(part))) for a, part in zip(starts, parts)], cfg.mix_probs,
                           cfg.mix_strategy == "interleave_over", cfg.seed)
        return whole.select(picks), sources
    return Rows.concat(parts), sources


def interleave(parts: list[list], probs: list[float] | None, until_all: bool, seed: int) -> list:
    """Datasets drawn from in turn, as Hugging Face's interleave_datasets does (LLaMA-Factory's mix_strategy):
    whole rounds until the smallest is used up (interleave_under), or until the largest is, starting the smaller
    ones again (interleave_over). With `probs`, each draw picks a dataset at random (seeded): until one runs out,
    or until each has run out once."""
    if not probs:
        rounds = max(map(len, parts)) if until_all else min(map(len, parts))
        return [part[r % len(part)] for r in range(rounds) for part in parts]
    pick = random.Random(seed)
    cursors, done, out = [0] * len(parts), [False] * len(parts), []
    while True:
        k = pick.choices(range(len(parts)), weights=probs)[0]
        if cursors[k] == len(parts[k]):
            if not until_all:
                return out
            cursors[k] = 0
        out.append(parts[k][cursors[k]])
        cursors[k] += 1
        done[k] = done[k] or cursors[k] == len(parts[k])
        if until_all and all(done):
            return out


TOKENIZED = "ftkit_tokenized.json"  # in a tokenized_path folder: what the rows were made with


def _tokenized_key(cfg, tokenizer, template) -> dict:
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = lambda s: hashlib.sha256(s.encode()).hexdigest()[:16]  # noqa: E731
    return {"tokenizer": digest(vocab), "template": digest(template.jinja() + repr(template.stop)),
            "cutoff_len": cfg.cutoff_len, "train_on_prompt": cfg.train_on_prompt}


def tokenized(cfg, tokenizer, template) -> Prepared:
    """A tokenized_path folder's rows, checked against this run's tokenizer, template and cutoff; or, when the
    folder holds none yet, the run's data tokenized and saved there, then `Tokenized` raised (the run stops)."""
    folder = Path(cfg.tokenized_path)
    key = _tokenized_key(cfg, tokenizer, template)
    if (folder / TOKENIZED).exists():
        saved = json.loads((folder / TOKENIZED).read_text(encoding="utf-8"))
        if saved != key:
            changed = ", ".join(k for k in key if saved.get(k) != key[k])
            raise DataError(f"tokenized_path: {folder} was tokenized with another {changed}; use a new "
                            "tokenized_path (or empty this one) to tokenize again")
        train, stats = collect(Rows.load(folder / "train"))
        evals = Rows.load(folder / "eval").kept() if (folder / "eval").exists() else RowsWriter().finish()
        return Prepared(train, evals, stats, [])
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"tokenized_path: {folder} holds other files; name a new or empty folder")
    prepared = prepare(cfg, tokenizer, template, use_tokenized=False)
    from ftkit.folders import partial_dir, replace_dir

    tmp = partial_dir(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    prepared.train.save(tmp / "train")
    if len(prepared.eval):
        prepared.eval.save(tmp / "eval")
    (tmp / TOKENIZED).write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")
    replace_dir(tmp, folder)
    raise Tokenized(f"tokenized {prepared.stats.examples:,} examples ({len(prepared.eval):,} held out) into "
                    f"{folder}; start the run again with tokenized_path: {folder} to train from them")


def prepare(cfg, tokenizer, template, use_tokenized: bool = True) -> Prepared:
    """Load every dataset of a run config, split, tokenize; refuses unusable data. With a tokenized_path, the
    rows saved there (see `tokenized`)."""
    if cfg.tokenized_path and use_tokenized:
        return tokenized(cfg, tokenizer, template)
    rows, sources = dataset_rows(cfg, tokenizer, template, cfg.cutoff_len)
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = int(cfg.val_size) if cfg.val_size >= 1 else round(len(rows) * cfg.val_size)
    if n_eval >= len(rows):
        raise DataError(f"val_size: {cfg.val_size} leaves no training examples out of {len(rows)}")
    train, stats = collect(rows.select(order[n_eval:]))
    evals, _ = collect(rows.select(order[:n_eval]))
    if cfg.eval_dataset:  # a separate evaluation set (LLaMA-Factory's eval_dataset)
        eval_rows, eval_sources = dataset_rows(cfg, tokenizer, template, cfg.cutoff_len, cfg.eval_datasets)
        evals, _ = collect(eval_rows)
        sources = sources + eval_sources
    if not len(train):
        raise DataError(f"cutoff_len: {cfg.cutoff_len} tokens leaves no trained token in any of "
                        f"{len(rows) - n_eval} examples (every prompt is longer); raise cutoff_len")
    return Prepared(train, evals, stats, sources)
