"""`metrics.full_report` plus what the ensemble report needs: per-class ROC-AUC, PR-AP,
ECE, and clinical operating points (thresholds fixed on validation, measured on test)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from . import stats
from .calibration import ece
from .metrics import full_report

SPECIFICITIES = (0.90, 0.95)
SENSITIVITIES = (0.90, 0.95)
TARGET_KINDS = {"spec": "specificity", "sens": "sensitivity"}


def per_class_auc(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    """One-vs-rest ROC-AUC per class (sklearn's roc_auc_score) from int (N,) labels and (N, K)
    probabilities; NaN for a class with no positive or no negative image."""
    out = {}
    for k, c in enumerate(classes):
        pos = y == k
        out[c] = float(roc_auc_score(pos, prob[:, k])) if 0 < pos.sum() < len(y) else math.nan
    return out


def per_class_ap(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    """One-vs-rest average precision per class (sklearn's average_precision_score); NaN for a
    class with no positive image."""
    out = {}
    for k, c in enumerate(classes):
        pos = y == k
        out[c] = float(average_precision_score(pos, prob[:, k])) if pos.any() else math.nan
    return out


def _nanmean(values) -> float:
    v = [x for x in values if isinstance(x, float) and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def report(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    intervals: bool = False,
    n_boot: int = stats.N_BOOT,
    seed: int = stats.SEED,
) -> dict:
    """full_report + auc_per_class, pr_ap (per class), pr_ap_macro, ece (15 bins, top label).

    With `intervals`, also "intervals": {"accuracy": Wilson proportion, "per_class": {class:
    sensitivity/specificity/precision/npv, each {"value", "k", "n", "ci"}}, "bootstrap":
    stratified percentile intervals for macro-F1, accuracy, macro AUC and AUC per class
    (`n_boot` resamples, `seed`)} (see ray_xray.stats).
    """
    y = np.asarray(y)
    out = full_report(y, prob, classes)
    out["auc_per_class"] = per_class_auc(y, prob, classes)
    out["pr_ap"] = per_class_ap(y, prob, classes)
    out["pr_ap_macro"] = _nanmean(out["pr_ap"].values())
    out["ece"] = ece(y, prob)
    if intervals:
        pred = np.asarray(prob).argmax(1)
        out["intervals"] = {
            "method": "Wilson score 95 % for proportions; stratified percentile bootstrap "
            f"({n_boot} resamples, seed {seed}) for AUC, macro-F1 and accuracy",
            "accuracy": stats.proportion(int((pred == y).sum()), len(y)),
            "per_class": stats.class_proportions(y, pred, classes),
            "bootstrap": stats.bootstrap(y, prob, classes, n_boot=n_boot, seed=seed),
        }
    return out


def headline_cis(test: dict) -> dict:
    """The 95 % interval each headline metric of a `report(..., intervals=True)` dict is shown
    with: {"accuracy": Wilson's (a proportion: never zero-width at 0/n or n/n), "macro_f1",
    "auc": the stratified bootstrap's}; None where there is none."""
    iv = test.get("intervals") or {}
    boot = iv.get("bootstrap") or {}
    return {
        "accuracy": (iv.get("accuracy") or {}).get("ci"),
        "macro_f1": boot.get("macro_f1"),
        "auc": boot.get("auc"),
    }


def threshold_for_specificity(neg_scores: np.ndarray, all_scores: np.ndarray, target: float):
    """Lowest threshold t (predict positive when score >= t) whose specificity on these
    negatives is >= target; placed half-way to the next higher observed score. None if no
    negatives."""
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    if len(neg) == 0:
        return None
    m = int(math.ceil(target * len(neg) - 1e-9))  # negatives that must score below t
    if m <= 0:
        return float(neg[0])  # any t <= the lowest negative already meets the target
    edge = neg[m - 1]
    higher = np.asarray(all_scores, dtype=np.float64)
    higher = higher[higher > edge]
    return float((edge + higher.min()) / 2) if len(higher) else float(np.nextafter(edge, np.inf))


def threshold_for_sensitivity(pos_scores: np.ndarray, all_scores: np.ndarray, target: float):
    """Highest threshold t (predict positive when score >= t) whose sensitivity on these
    positives is >= target (so the most specific one); placed half-way to the next lower
    observed score. None if no positives."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))[::-1]
    if len(pos) == 0:
        return None
    m = max(1, int(math.ceil(target * len(pos) - 1e-9)))  # positives that must score >= t
    edge = pos[m - 1]
    lower = np.asarray(all_scores, dtype=np.float64)
    lower = lower[lower < edge]
    return float((edge + lower.max()) / 2) if len(lower) else float(edge)


def log_odds(p: float | None) -> float | None:
    """log(p / (1 - p)): thresholds near 0 or 1 stay distinguishable (0.99990 vs 0.99999)."""
    if p is None or not math.isfinite(p):
        return None
    p = min(max(p, 1e-300), 1 - 1e-16)
    return float(math.log(p) - math.log1p(-p))


def sens_spec(pos: np.ndarray, score: np.ndarray, t: float) -> tuple[float, float]:
    """(sensitivity, specificity) of calling positive when `score >= t`, for the bool (N,)
    truths `pos`; NaN where there is no positive (sensitivity) or no negative (specificity)."""
    pred = score >= t
    sens = float(pred[pos].mean()) if pos.any() else math.nan
    spec = float((~pred[~pos]).mean()) if (~pos).any() else math.nan
    return sens, spec


def point_name(kind: str, target: float) -> str:
    """'spec0.90' / 'sens0.95': the name predict's --operating-point CLASS@NAME takes."""
    return f"{kind}{target:.2f}"


def _counts(pos: np.ndarray, score: np.ndarray, t: float) -> dict:
    """Sensitivity and specificity of `score >= t` with their Wilson intervals."""
    pred = score >= t
    return {
        "sensitivity": stats.proportion(int((pred & pos).sum()), int(pos.sum())),
        "specificity": stats.proportion(int((~pred & ~pos).sum()), int((~pos).sum())),
    }


def operating_points(
    y_val, p_val, y_test, p_test, classes, specificities=SPECIFICITIES, sensitivities=SENSITIVITIES
) -> dict:
    """Per class, thresholds fixed on validation for each target specificity (the most
    sensitive threshold reaching it) and each target sensitivity (the most specific one), and
    what they give on test.

    Returns {class: {"spec0.90": row, ..., "sens0.95": row}}; row = {"kind": "specificity" |
    "sensitivity", "target", "threshold" (probability, None when validation lacks the cases),
    "threshold_logit", "val_sensitivity", "val_specificity", "test_sensitivity",
    "test_specificity" (floats, NaN when undefined), "test": {"sensitivity", "specificity"}
    as stats.proportion (counts + Wilson 95 % interval)}.
    """
    y_val, y_test = np.asarray(y_val), np.asarray(y_test)
    out: dict[str, dict] = {}
    for k, c in enumerate(classes):
        out[c] = {}
        pos_v, pos_t = y_val == k, y_test == k
        wanted = [("spec", t) for t in specificities] + [("sens", t) for t in sensitivities]
        for kind, target in wanted:
            if kind == "spec":
                t = threshold_for_specificity(p_val[~pos_v, k], p_val[:, k], target)
            else:
                t = threshold_for_sensitivity(p_val[pos_v, k], p_val[:, k], target)
            row = {
                "kind": TARGET_KINDS[kind],
                "target": float(target),
                "threshold": t,
                "threshold_logit": log_odds(t),
            }
            if t is None:
                row.update(
                    val_sensitivity=math.nan,
                    val_specificity=math.nan,
                    test_sensitivity=math.nan,
                    test_specificity=math.nan,
                )
            else:
                row["val_sensitivity"], row["val_specificity"] = sens_spec(pos_v, p_val[:, k], t)
                row["test_sensitivity"], row["test_specificity"] = sens_spec(pos_t, p_test[:, k], t)
                row["test"] = _counts(pos_t, p_test[:, k], t)
            out[c][point_name(kind, target)] = row
    return out


def stored_points(points: dict) -> dict:
    """{class: {name: threshold}} of operating_points' output, for ensemble.pt (thresholds on
    the ensemble's probability of that class; None ones left out)."""
    return {
        c: {n: float(r["threshold"]) for n, r in rows.items() if r["threshold"] is not None}
        for c, rows in points.items()
    }
