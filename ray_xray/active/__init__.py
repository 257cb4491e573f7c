"""Active learning with a fair baseline: `python -m ray_xray.active` (see loop.py)."""

from .loop import STRATEGIES, initial_pool, query_size, run_sequence, score, select

__all__ = ["STRATEGIES", "initial_pool", "query_size", "run_sequence", "score", "select"]
