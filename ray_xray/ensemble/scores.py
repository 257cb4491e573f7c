"""`metrics.full_report` plus what the ensemble report needs: per-class ROC-AUC, PR-AP,
ECE, and clinical operating points (thresholds fixed on validation, measured on test)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .. import metrics as M
from .calibration import ece

SPECIFICITIES = (0.90, 0.95)


def per_class_auc(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    out = {}
    for k, c in enumerate(classes):
        pos = y == k
        out[c] = float(roc_auc_score(pos, prob[:, k])) if 0 < pos.sum() < len(y) else math.nan
    return out


def per_class_ap(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    out = {}
    for k, c in enumerate(classes):
        pos = y == k
        out[c] = float(average_precision_score(pos, prob[:, k])) if pos.any() else math.nan
    return out


def _nanmean(values) -> float:
    v = [x for x in values if isinstance(x, float) and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def report(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict:
    """full_report + auc_per_class, pr_ap (per class), pr_ap_macro, ece (15 bins, top label)."""
    y = np.asarray(y)
    out = M.full_report(y, prob, classes)
    out["auc_per_class"] = per_class_auc(y, prob, classes)
    out["pr_ap"] = per_class_ap(y, prob, classes)
    out["pr_ap_macro"] = _nanmean(out["pr_ap"].values())
    out["ece"] = ece(y, prob)
    return out


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


def sens_spec(pos: np.ndarray, score: np.ndarray, t: float) -> tuple[float, float]:
    pred = score >= t
    sens = float(pred[pos].mean()) if pos.any() else math.nan
    spec = float((~pred[~pos]).mean()) if (~pos).any() else math.nan
    return sens, spec


def operating_points(y_val, p_val, y_test, p_test, classes, targets=SPECIFICITIES) -> dict:
    """Per class and target specificity: the validation threshold and what it gives on test."""
    y_val, y_test = np.asarray(y_val), np.asarray(y_test)
    out: dict[str, dict] = {}
    for k, c in enumerate(classes):
        out[c] = {}
        pos_v, pos_t = y_val == k, y_test == k
        for target in targets:
            t = threshold_for_specificity(p_val[~pos_v, k], p_val[:, k], target)
            row = {"threshold": t}
            if t is None:
                row.update(val_sensitivity=math.nan, val_specificity=math.nan,
                           test_sensitivity=math.nan, test_specificity=math.nan)  # fmt: skip
            else:
                row["val_sensitivity"], row["val_specificity"] = sens_spec(pos_v, p_val[:, k], t)
                row["test_sensitivity"], row["test_specificity"] = sens_spec(pos_t, p_test[:, k], t)
            out[c][f"{target:.2f}"] = row
    return out
