"""Cheap input checks (no torch/pandas import), so bad input fails in a fraction of a second."""

from __future__ import annotations

from pathlib import Path


def check_experiment_dir(exp_dir: str | Path) -> Path:
    exp = Path(exp_dir).expanduser()
    if not exp.exists():
        raise ValueError(f"{exp}: no such experiment directory")
    if not exp.is_dir():
        raise ValueError(f"{exp}: not a directory (give a sweep's STORAGE/NAME folder)")
    if not (exp / "results.parquet").is_file():
        raise ValueError(
            f"{exp}: not a finished ray_xray sweep (no results.parquet; run python -m ray_xray.tune)"
        )
    return exp


def check_top_k(top_k) -> int:
    if int(top_k) < 1:
        raise ValueError("--top-k must be >= 1")
    return int(top_k)


def relocate(path, exp_dir: Path, trial_id: str) -> Path | None:
    """A stored path as written, or re-rooted under exp_dir when the sweep folder moved."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    if p.exists():
        return p
    parts = p.parts
    if trial_id in parts:
        q = exp_dir.joinpath(*parts[parts.index(trial_id) :])
        if q.exists():
            return q
    return None
