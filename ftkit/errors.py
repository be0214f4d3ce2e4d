"""Errors meant for people: short, naming the culprit and what to do.

The CLI prints them without a traceback (``--debug`` shows it); the notebook
layer turns them into a ``UsageError``.
"""
from __future__ import annotations


class FtkitError(Exception):
    """Base class; ``problems`` lists every issue found, one line each."""

    def __init__(self, problems: str | list[str], title: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.title = title
        super().__init__(self._text())

    def _text(self) -> str:
        if self.title is None and len(self.problems) == 1:
            return self.problems[0]
        head = self.title or f"{len(self.problems)} problems"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


class ConfigError(FtkitError):
    """A run config key, value or combination is wrong."""


class DataError(FtkitError):
    """A data file or record cannot be used."""


class ModelError(FtkitError):
    """A model, tokenizer or adapter cannot be loaded or used as asked."""


class Tokenized(FtkitError):
    """Not a failure: a run with a new `tokenized_path` saved its tokenized data there and stopped, as
    LLaMA-Factory's preprocessing runs do; the next run with that path trains from it."""


class RunError(FtkitError):
    """A training process ended without finishing (crash, out of memory, killed)."""
