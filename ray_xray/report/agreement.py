"""Does validation rank models as test does? A rank correlation over the evaluated trials.

On pneumonia2 (docs/results/sweep-pneumonia2) the two best trials by validation were the two
worst of five on test: a sweep that picks by validation then picks wrongly, and nothing said so.
Every sweep report now says how well the two orders agree, and warns when they do not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Below this Spearman correlation the orders are called in disagreement. With 5 trials a
# correlation of 0.5 is already weak (one swap of neighbours gives 0.9).
MIN_RHO = 0.5


def val_test_agreement(
    names: list[str], val: list[float], test: list[float], metric: str = "macro_f1"
) -> dict:
    """Spearman rank correlation between validation and test `metric` (higher = better) over
    trials with both. Returns {"n", "metric", "spearman" (None below 3 trials), "p_value",
    "best_by_val": {"name", "val", "test", "test_rank"}, "warning" (a sentence or None)}."""
    from scipy.stats import spearmanr

    rows = [
        (n, float(v), float(t))
        for n, v, t in zip(names, val, test, strict=True)
        if v is not None and t is not None and math.isfinite(v) and math.isfinite(t)
    ]
    out: dict = {
        "n": len(rows),
        "metric": metric,
        "spearman": None,
        "p_value": None,
        "best_by_val": None,
        "warning": None,
    }
    if not rows:
        return out
    vals, tests = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    best = int(np.argmax(vals))
    test_rank = 1 + int((tests > tests[best]).sum())
    out["best_by_val"] = {
        "name": rows[best][0],
        "val": rows[best][1],
        "test": rows[best][2],
        "test_rank": test_rank,
    }
    if len(rows) < 3 or np.ptp(vals) == 0 or np.ptp(tests) == 0:
        return out
    rho, p = spearmanr(vals, tests)
    out["spearman"], out["p_value"] = float(rho), float(p)
    if rho < MIN_RHO or test_rank > (len(rows) + 1) // 2:
        out["warning"] = (
            f"validation and test disagree on the order of the {len(rows)} evaluated trials "
            f"(Spearman {rho:+.2f} on {metric.replace('_', '-')}): the best by validation, "
            f"{rows[best][0]} (val {rows[best][1]:.3f}), is #{test_rank} of {len(rows)} on test "
            f"({rows[best][2]:.3f}). The validation split may not resemble test: picking by "
            "validation can pick the wrong model here"
        )
    return out


def val_origin(spec: str | None) -> str:
    """How the validation split of `spec` was made: given by the data, or carved from train
    by patient (`data.sources.carve_val`'s rule: fewer val than 5% of train)."""
    if not spec:
        return "unknown (no data spec)"
    if spec.startswith("synthetic"):
        return "generated with the synthetic set"
    try:
        from ..data.sources import read_manifest, scan

        path = Path(spec).expanduser()
        manifest = path / "manifest.csv" if path.is_dir() else path
        items = read_manifest(manifest) if manifest.is_file() else scan(path)[0]
    except (OSError, ValueError) as exc:
        return f"unknown ({str(exc)[:120]})"
    n_train = sum(i.split == "train" for i in items)
    n_val = sum(i.split == "val" for i in items)
    if n_train and n_val < 0.05 * n_train:
        by = "patient" if any(i.patient for i in items if i.split == "train") else "image"
        return (
            f"carved from train by {by} (about 10%, stratified by class): the data gives "
            f"{n_val} val image(s) for {n_train} train"
        )
    return f"given by the data ({n_val} val images, {n_train} train)"
