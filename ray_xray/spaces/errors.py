"""The one error a search space raises, and the helpers that word its one-line messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpaceError(ValueError):
    """An invalid search space file; the message is one line naming the file and the key."""


def join(items: Iterable[object]) -> str:
    """``a, b, c``: how messages list names."""
    return ", ".join(str(i) for i in items)


def did_you_mean(word: object, options: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(text: object) -> str:
    """Whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())
