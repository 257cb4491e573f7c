"""Headline metrics with stratified bootstrap intervals, and intervals of a drop between sets.

Everything is vectorised over bootstrap resamples (counts for accuracy/recall/F1, ranks for
AUC), so 1,000 resamples of a few thousand images take well under a second per metric. The
point values equal `metrics.full_report`'s (sklearn) on a set holding every class; on a set that
lacks some of the model's classes, macro-F1 and AUC average over the classes present (a missing
class has no recall, and its F1 would be 0 by convention and drag the mean down).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

LEVEL = 0.95
HEADLINE = ("accuracy", "macro_f1", "auc")


def present(y: np.ndarray, k: int) -> np.ndarray:
    """Bool (k,): which of the model's k classes have at least one image in `y`."""
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=k)[:k] > 0


def _stratified_index(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(idx (B, N) int64, y_sorted (N,)): each row resamples every class with replacement to its
    own count (class-stratified bootstrap), so every resample keeps the set's class mix."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        blocks.append(members[rng.integers(0, len(members), (n_boot, len(members)))])
        labels.append(np.full(len(members), c))
    return np.concatenate(blocks, 1), np.concatenate(labels)


def _metrics(
    y: np.ndarray, pred: np.ndarray, prob: np.ndarray, classes: list[str], only=None
) -> dict:
    """Metrics of R sets at once: y (N,) labels (the same in every set: stratified), pred (R, N),
    prob (R, N, K). Returns name -> (R,) float64; NaN where undefined. `only` (bool (K,)):
    average macro-F1 and AUC over these classes only (a partial set's classes)."""
    k = len(classes)
    have = present(y, k) if only is None else present(y, k) & np.asarray(only, dtype=bool)
    correct = pred == y[None]
    out = {"accuracy": correct.mean(1)}
    f1s, aucs = [], []
    for c, name in enumerate(classes):
        pos = y == c
        n_pos = int(pos.sum())
        n_pred = (pred == c).sum(1)
        tp = (correct & pos[None]).sum(1)
        recall = tp / n_pos if n_pos else np.full(len(pred), np.nan)
        out[f"recall_{name}"] = recall
        if not have[c]:
            continue
        f1s.append(2 * tp / (n_pred + n_pos))  # = 2PR/(P+R); denominator >= n_pos > 0
        if n_pos < len(y):
            ranks = rankdata(prob[:, :, c], axis=1)  # ties get the average rank, as sklearn
            u = ranks[:, pos].sum(1) - n_pos * (n_pos + 1) / 2
            aucs.append(u / (n_pos * (len(y) - n_pos)))
    out["macro_f1"] = np.mean(f1s, 0) if f1s else np.full(len(pred), np.nan)
    # One-vs-rest AUC per present class, averaged (sklearn's macro OvR; binary: the one AUC).
    out["auc"] = np.mean(aucs, 0) if aucs and have.sum() >= 2 else np.full(len(pred), np.nan)
    return out


def point(y: np.ndarray, prob: np.ndarray, classes: list[str], only=None) -> dict[str, float]:
    """accuracy, macro_f1, auc and recall_<class> of one set: y int (N,), prob float (N, K).

    macro_f1/auc average over the classes present in `y`; recall of an absent class is NaN.
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    m = _metrics(y, prob.argmax(1)[None], prob[None], classes, only)
    return {name: float(v[0]) for name, v in m.items()}


def bootstrap(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    only=None,
) -> dict[str, np.ndarray]:
    """Class-stratified bootstrap samples of `point`'s metrics: name -> (n_boot,) float64.

    Resampled in chunks (memory stays ~N x 250 x K floats whatever n_boot is).
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    if n_boot < 1 or len(y) == 0:
        return {}
    idx, y_sorted = _stratified_index(y, n_boot, seed)
    pred = prob.argmax(1)
    parts: dict[str, list] = {}
    for start in range(0, n_boot, 250):
        rows = idx[start : start + 250]
        for name, v in _metrics(y_sorted, pred[rows], prob[rows], classes, only).items():
            parts.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in parts.items()}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples; (nan, nan) when none is finite."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return float(lo), float(hi)


def with_intervals(
    y, prob, classes: list[str], n_boot: int = 1000, seed: int = 0, level: float = LEVEL, only=None
) -> tuple[dict, dict]:
    """({metric: {"value", "low", "high"}}, the bootstrap samples) for `point`'s metrics."""
    values = point(y, prob, classes, only)
    samples = bootstrap(y, prob, classes, n_boot, seed, only)
    out = {}
    for name, v in values.items():
        lo, hi = interval(samples[name], level) if name in samples else (math.nan, math.nan)
        out[name] = {"value": v, "low": lo, "high": hi}
    return out, samples


def drops(ref: dict, ref_samples: dict, new: dict, new_samples: dict, level: float = LEVEL) -> dict:
    """Per metric: reference value, new value, drop = ref - new, and the drop's interval from
    independent bootstraps of the two sets; `significant` = the whole interval is above 0 (the
    new set is worse beyond what resampling explains). Metrics undefined on either set: skipped."""
    out = {}
    for name, r in ref.items():
        n = new.get(name)
        if n is None or not (math.isfinite(r["value"]) and math.isfinite(n["value"])):
            continue
        lo = hi = math.nan
        if name in ref_samples and name in new_samples:
            lo, hi = interval(ref_samples[name] - new_samples[name], level)
        out[name] = {
            "reference": r["value"],
            "new": n["value"],
            "drop": r["value"] - n["value"],
            "low": lo,
            "high": hi,
            "significant": bool(math.isfinite(lo) and lo > 0),
        }
    return out


def specificity_holds(observed: float, target: float, n_neg: int, z: float = 1.96) -> bool | None:
    """Whether a specificity measured on `n_neg` negatives is consistent with `target`: not
    below it by more than z binomial standard errors (normal approximation). None: no negatives."""
    if not n_neg or not math.isfinite(observed):
        return None
    return bool(observed >= target - z * math.sqrt(target * (1 - target) / n_neg))
