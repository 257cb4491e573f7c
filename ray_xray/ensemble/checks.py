"""Cheap input checks (no torch/pandas import), so bad input fails in a fraction of a second."""

from __future__ import annotations


def check_top_k(top_k) -> int:
    """`top_k` as an int; ValueError (one line) when it is below 1."""
    if int(top_k) < 1:
        raise ValueError("--top-k must be >= 1")
    return int(top_k)
