"""Error types.  User errors (bad spec, bad arguments) are SsmcError subclasses: the CLI turns
them into a one-line message and exit code 2; anything else is an internal error (exit 1)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


class SsmcError(Exception):
    """An error caused by the user's input, reported without a traceback."""


@dataclass(frozen=True)
class Loc:
    """A position in a spec file (1-based line and column)."""

    file: str = "<spec>"
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(SsmcError):
    """A bad spec: names file:line:col, the field, what was expected and, for a misspelling,
    the closest valid name."""

    def __init__(self, loc: Loc | None, field: str, message: str, suggestion: str | None = None):
        self.loc = loc or Loc()
        self.field = field
        self.message = message
        self.suggestion = suggestion
        text = f"{self.loc}: {field}: {message}"
        if suggestion:
            text += f" (did you mean '{suggestion}'?)"
        super().__init__(_one_line(text))


def _one_line(text: str) -> str:
    """Keys and values quoted from a spec may hold newlines or control characters; escape them
    so that an error stays one line on the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def did_you_mean(word: str, choices) -> str | None:
    """The closest valid name to a misspelled one, or None."""
    hits = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return hits[0] if hits else None
