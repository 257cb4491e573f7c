"""Confidence intervals for the figures a decision rests on.

- ``wilson``: the Wilson score interval for a proportion k/n (sensitivity, specificity,
  precision, accuracy). Unlike the normal ("Wald") interval it stays inside [0, 1] and is not
  zero-width at 0/n or n/n: 99/99 gives about [0.963, 1.0].
- ``bootstrap``: stratified percentile-bootstrap intervals for ROC-AUC (macro and per class),
  macro-F1 and accuracy. Each resample draws, within every true class, as many cases as that
  class has (so every resample holds every class and AUC stays defined). The resamples are
  multinomial count weights (B, N), and every statistic is computed from them with matrix
  products and cumulative sums, so 2,000 resamples of a few thousand cases take well under a
  second and need no Python loop over resamples.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
N_BOOT = 1000
SEED = 0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for k successes out of n trials, both in [0, 1].

    Closed form: (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = k/n.
    Returns (nan, nan) when n == 0. Raises ValueError when k < 0 or k > n.
    """
    k, n = int(k), int(n)
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    den = 1 + z2 / n
    # At k = 0 or k = n the exact bound is 0 or 1; rounding can leave 1e-17 outside.
    lo = 0.0 if k == 0 else max(0.0, (centre - half) / den)
    hi = 1.0 if k == n else min(1.0, (centre + half) / den)
    return lo, hi


def proportion(k: int, n: int) -> dict:
    """``{"value": k/n, "k", "n", "ci": [lo, hi]}`` (Wilson 95 %); value NaN when n == 0."""
    lo, hi = wilson(k, n)
    return {"value": k / n if n else math.nan, "k": int(k), "n": int(n), "ci": [lo, hi]}


def class_proportions(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Per class, one-vs-rest at the argmax decision: sensitivity (= recall), specificity,
    precision (= PPV) and NPV, each with its counts and Wilson interval.

    y, pred: (N,) int class indices. Returns {class: {"sensitivity": proportion(...), ...}}.
    """
    y, pred = np.asarray(y), np.asarray(pred)
    out = {}
    for k, c in enumerate(classes):
        pos, called = y == k, pred == k
        tp, fn = int((pos & called).sum()), int((pos & ~called).sum())
        fp, tn = int((~pos & called).sum()), int((~pos & ~called).sum())
        out[c] = {
            "sensitivity": proportion(tp, tp + fn),
            "specificity": proportion(tn, tn + fp),
            "precision": proportion(tp, tp + fp),
            "npv": proportion(tn, tn + fn),
        }
    return out


def resample_weights(y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n_boot, N) float64 counts: how often each case is drawn in each stratified resample.

    Within class k (n_k cases) each resample draws n_k cases with replacement, so every row
    sums to N and every class keeps its size. Deterministic for a given seed.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, len(y)), dtype=np.float64)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return w


def weighted_auc(pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of `score` for the binary labels `pos` under each row of case weights `w`.

    pos: (N,) bool; score: (N,) float; w: (B, N) non-negative weights (a row of ones is the
    ordinary AUC, ties counted 1/2). Returns (B,) float64, NaN where a row has no positive or
    no negative weight. Mann-Whitney form: sum over positive i of w_i times the negative weight
    strictly below score_i plus half the negative weight tied with it, over W_pos * W_neg.
    """
    order = np.argsort(score, kind="stable")
    s, p = np.asarray(score)[order], np.asarray(pos, bool)[order]
    w = np.asarray(w, dtype=np.float64)[:, order]
    # Group equal scores: `start` is each group's first position in sorted order.
    _, start, group = np.unique(s, return_index=True, return_inverse=True)
    wneg = np.where(p, 0.0, w)
    wpos = w - wneg
    neg_in_group = np.add.reduceat(wneg, start, axis=1)  # (B, G)
    neg_below = np.cumsum(neg_in_group, axis=1) - neg_in_group  # strictly lower groups
    credit = neg_below[:, group] + 0.5 * neg_in_group[:, group]  # (B, N)
    tot_pos, tot_neg = wpos.sum(1), wneg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wpos * credit).sum(1) / (tot_pos * tot_neg)


def weighted_confusion(y: np.ndarray, pred: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """(B, K, K) confusion matrices (true row, predicted column) under each row of weights."""
    cell = np.asarray(y) * k + np.asarray(pred)
    onehot = np.zeros((len(cell), k * k))
    onehot[np.arange(len(cell)), cell] = 1.0
    return (np.asarray(w) @ onehot).reshape(-1, k, k)


def macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 over all K classes of (B, K, K) confusion matrices; a class with no true and
    no predicted case scores 0 (sklearn's zero_division=0). Returns (B,)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    den = cm.sum(2) + cm.sum(1)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return f1.mean(1)


def _interval(values: np.ndarray, level: float) -> list[float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return [math.nan, math.nan]
    a = (1 - level) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]


def bootstrap(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = 0.95,
    chunk: int = 250,
) -> dict:
    """Stratified percentile-bootstrap intervals on one labelled set.

    y: (N,) int labels; prob: (N, K) probabilities (argmax = the decision). Returns
    ``{"n_boot", "seed", "level", "macro_f1": [lo, hi], "accuracy": [lo, hi], "auc": [lo, hi],
    "auc_per_class": {class: [lo, hi]}}``. AUC is the macro one-vs-rest AUC (the mean of the
    per-class AUCs, as sklearn's ``multi_class="ovr", average="macro"``); an interval is
    [nan, nan] where the statistic is undefined (a class absent from y). Resamples are made
    `chunk` at a time to bound memory at about chunk x N x K floats.
    """
    y, prob = np.asarray(y), np.asarray(prob, dtype=np.float64)
    k = prob.shape[1]
    pred = prob.argmax(1)
    w_all = resample_weights(y, n_boot, seed)
    f1, acc, aucs = [], [], []
    for start in range(0, n_boot, chunk):
        w = w_all[start : start + chunk]
        cm = weighted_confusion(y, pred, w, k)
        f1.append(macro_f1_from_confusion(cm))
        acc.append(np.trace(cm, axis1=1, axis2=2) / w.sum(1))
        aucs.append(np.stack([weighted_auc(y == c, prob[:, c], w) for c in range(k)], 1))
    f1, acc, aucs = np.concatenate(f1), np.concatenate(acc), np.concatenate(aucs)
    present = np.isin(np.arange(k), y)
    macro_auc = aucs.mean(1) if present.all() else np.full(n_boot, math.nan)
    return {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        "macro_f1": _interval(f1, level),
        "accuracy": _interval(acc, level),
        "auc": _interval(macro_auc, level),
        "auc_per_class": {c: _interval(aucs[:, i], level) for i, c in enumerate(classes)},
    }
