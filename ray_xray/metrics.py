"""Classification metrics shared by training, tuning, the ensemble and the report."""

from __future__ import annotations

import numpy as np

# sklearn.metrics is imported inside the functions: it costs ~0.8 s, and Ray starts several
# processes per trial (Tune function, Train controller) that import this module but never call it.


def metric_mode(metric: str) -> str:
    """Whether a reported metric is better low ("min": losses, seconds, ECE, NLL) or high."""
    return "min" if metric.endswith(("loss", "_s", "ece", "nll")) else "max"


def auc_ovr(y: np.ndarray, prob: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC; NaN when a class is missing from `y` (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    k = prob.shape[1]
    if len(np.unique(y)) < k:
        return float("nan")
    if k == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    return float(roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(k))))


def summary(y: np.ndarray, prob: np.ndarray, classes: list[str], prefix: str = "val_") -> dict:
    """The flat per-epoch metrics Ray reports: acc, macro-F1, AUC, recall per class."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    pred = prob.argmax(1)
    labels = list(range(len(classes)))
    _, recall, _, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {
        f"{prefix}acc": float(accuracy_score(y, pred)),
        f"{prefix}macro_f1": float(
            f1_score(y, pred, average="macro", labels=labels, zero_division=0)
        ),
        f"{prefix}auc": auc_ovr(y, prob),
    }
    out.update({f"{prefix}recall_{c}": float(r) for c, r in zip(classes, recall, strict=True)})
    return out


def full_report(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict:
    """Nested test report: accuracy, per-class P/R/F1, macro and weighted, AUC, confusion."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    pred = prob.argmax(1)
    labels = list(range(len(classes)))
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    nll = float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, 1)).mean())
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "auc": auc_ovr(y, prob),
        "nll": nll,
        "precision": {c: float(v) for c, v in zip(classes, p, strict=True)},
        "recall": {c: float(v) for c, v in zip(classes, r, strict=True)},
        "f1": {c: float(v) for c, v in zip(classes, f, strict=True)},
        "support": {c: int(v) for c, v in zip(classes, n, strict=True)},
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
        "classes": list(classes),
    }
