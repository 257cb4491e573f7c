"""Every confidence interval the project reports, defined once: the sweep's report
(`scores.report`), `evaluate` and a sweep's external scoring all call this module.

- Proportions (sensitivity, specificity, precision, NPV, accuracy as k/n): the Wilson score
  interval (equal to scipy's `binomtest(...).proportion_ci(method="wilson")`). Unlike the normal
  ("Wald") interval it stays inside [0, 1] and is not zero-width at 0/n or n/n: 99/99 gives
  about [0.963, 1.0].
- Accuracy, macro-F1 and ROC-AUC (macro and per class): the stratified percentile bootstrap.
  Each resample draws, within every true class, as many cases as that class has (so every
  resample keeps the set's class mix). Resamples are multinomial count weights (B, N) and
  every statistic is a weighted one (matrix products, cumulative sums), so 1,000 resamples of a
  few thousand cases take well under a second with no Python loop over resamples. The point
  value is the same function with every weight 1, so a value and its interval can never be
  computed two ways; tests check both against sklearn.
- One z: `Z95 = scipy.stats.norm.ppf(0.975)`; one level, 95 %.

The rule for absent classes (a set with no image of some class, e.g. an external set):
a class's recall and one-vs-rest AUC are undefined (NaN); macro-F1 and macro-AUC average over
the classes present in the labels (narrowed further by `only`, e.g. to compare two sets on
the same classes). Macro-AUC needs at least two present classes, else NaN. Averaging in a
class with no cases would add an F1 of 0 by convention and drag the mean down for a class the
set cannot test. On a set holding every class (a sweep's test split) this is sklearn's
macro average.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

LEVEL = 0.95
Z95 = float(norm.ppf(0.5 + LEVEL / 2))  # 1.959963984540054, the standard normal's 97.5 %
N_BOOT = 1000
SEED = 0
HEADLINE = ("accuracy", "macro_f1", "auc")
_CHUNK = 250  # resamples per block: memory stays about _CHUNK x N x K floats


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for k successes out of n trials, both in [0, 1].

    Closed form (Wilson 1927; Newcombe 1998): (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) /
    (1 + z^2/n), p = k/n. The tests check it against scipy's
    `binomtest(k, n).proportion_ci(method="wilson")`; written out here because scipy's
    arithmetic differs in the last bit, and stored reports should not change with that.
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


def specificity_holds(observed: float, target: float, n_neg: int, z: float = Z95) -> bool | None:
    """Whether a specificity measured on `n_neg` negatives is consistent with `target`: not
    below it by more than z binomial standard errors (normal approximation). None: no negatives
    or `observed` is NaN."""
    if not n_neg or not math.isfinite(observed):
        return None
    return bool(observed >= target - z * math.sqrt(target * (1 - target) / n_neg))


def present(y: np.ndarray, k: int) -> np.ndarray:
    """Bool (k,): which of the model's k classes have at least one case in `y` (int (N,))."""
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=k)[:k] > 0


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
    ordinary AUC, ties counted 1/2: sklearn's `roc_auc_score`, which the tests compare it to;
    calling sklearn per resample would cost B x K calls). Returns (B,) float64, NaN where a row
    has no positive or no negative weight. Mann-Whitney form: sum over positive i of w_i times
    the negative weight strictly below score_i plus half the negative weight tied with it,
    over W_pos * W_neg.
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
    """(B, K, K) float64 confusion matrices (true row, predicted column) under each row of
    weights `w` (B, N); y, pred: (N,) int in [0, k)."""
    cell = np.asarray(y) * k + np.asarray(pred)
    onehot = np.zeros((len(cell), k * k))
    onehot[np.arange(len(cell)), cell] = 1.0
    return (np.asarray(w) @ onehot).reshape(-1, k, k)


def macro_f1_from_confusion(cm: np.ndarray, classes=None) -> np.ndarray:
    """Macro-F1 of (B, K, K) confusion matrices: (B,) float64. F1 = 2TP / (2TP + FP + FN) per
    class, averaged over `classes` (bool (K,); None: all K, a class with no true and no
    predicted case scoring 0, sklearn's zero_division=0)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    den = cm.sum(2) + cm.sum(1)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return f1.mean(1) if classes is None else f1[:, np.asarray(classes, dtype=bool)].mean(1)


def weighted_metrics(
    y: np.ndarray, prob: np.ndarray, classes: list[str], w: np.ndarray, only=None
) -> dict[str, np.ndarray]:
    """accuracy, macro_f1, auc (macro one-vs-rest), auc_<class> and recall_<class> under each
    row of case weights: name -> (B,) float64.

    y: (N,) int labels; prob: (N, K) probabilities (argmax = the decision); w: (B, N) weights;
    `only`: bool (K,) or None, narrows the classes macro-F1 and macro-AUC average over. Absent
    classes follow the module's rule (NaN recall and AUC, left out of the macro averages).
    """
    k = len(classes)
    have = present(y, k) if only is None else present(y, k) & np.asarray(only, dtype=bool)
    cm = weighted_confusion(y, prob.argmax(1), w, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diagonal(cm, axis1=1, axis2=2) / cm.sum(2)  # NaN for an absent class
    aucs = np.stack([weighted_auc(y == c, prob[:, c], w) for c in range(k)], 1)
    nan = np.full(len(w), math.nan)
    out = {
        "accuracy": np.trace(cm, axis1=1, axis2=2) / w.sum(1),
        "macro_f1": macro_f1_from_confusion(cm, have) if have.any() else nan,
        "auc": aucs[:, have].mean(1) if have.sum() >= 2 else nan,
    }
    for c, name in enumerate(classes):
        out[f"recall_{name}"] = recall[:, c]
        out[f"auc_{name}"] = aucs[:, c]
    return out


def point(y: np.ndarray, prob: np.ndarray, classes: list[str], only=None) -> dict[str, float]:
    """accuracy, macro_f1, auc and recall_<class> of one set: y int (N,), prob float (N, K).

    `weighted_metrics` with every weight 1 (absent classes: the module's rule).
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    m = weighted_metrics(y, prob, classes, np.ones((1, len(y))), only)
    return {name: float(v[0]) for name, v in m.items() if not name.startswith("auc_")}


def bootstrap_samples(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    only=None,
) -> dict[str, np.ndarray]:
    """Stratified bootstrap samples of `weighted_metrics`: name -> (n_boot,) float64.

    {} when n_boot < 1 or the set is empty. Resampled `_CHUNK` at a time to bound memory.
    """
    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    if n_boot < 1 or len(y) == 0:
        return {}
    w_all = resample_weights(y, n_boot, seed)
    parts: dict[str, list] = {}
    for start in range(0, n_boot, _CHUNK):
        w = w_all[start : start + _CHUNK]
        for name, v in weighted_metrics(y, prob, classes, w, only).items():
            parts.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in parts.items()}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval (lo, hi) of bootstrap samples (NaNs ignored); (nan, nan) when none
    is finite."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(s, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict:
    """Stratified percentile-bootstrap intervals on one labelled set, as the sweep's report
    stores them.

    y: (N,) int labels; prob: (N, K) probabilities. Returns ``{"n_boot", "seed", "level",
    "macro_f1": [lo, hi], "accuracy": [lo, hi], "auc": [lo, hi], "auc_per_class": {class:
    [lo, hi]}}``; [nan, nan] where the statistic is undefined (see the absent-class rule).
    """
    s = bootstrap_samples(y, prob, classes, n_boot, seed)
    nan = np.array([math.nan])
    return {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        **{m: list(interval(s.get(m, nan), level)) for m in ("macro_f1", "accuracy", "auc")},
        "auc_per_class": {c: list(interval(s.get(f"auc_{c}", nan), level)) for c in classes},
    }


def with_intervals(
    y, prob, classes: list[str], n_boot: int = N_BOOT, seed: int = SEED, level=LEVEL, only=None
) -> tuple[dict, dict]:
    """({metric: {"value", "low", "high"}} for `point`'s metrics, the bootstrap samples
    (`bootstrap_samples`)), as `evaluate` and external scoring report them."""
    values = point(y, prob, classes, only)
    samples = bootstrap_samples(y, prob, classes, n_boot, seed, only)
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
