"""Temperature scaling, NLL and expected calibration error on class-probability arrays.

Everything here works on numpy probabilities (N, K) as `inference.predict_proba` returns them;
logits are taken as log-probabilities (softmax is shift-invariant, so that is exact).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-12
ECE_BINS = 15
# 1/T is searched in this range: T from 0.02 (sharpen a lot) to 50 (flatten a lot).
BETA_RANGE = (0.02, 50.0)


def log_probs(prob: np.ndarray) -> np.ndarray:
    """Natural log of probabilities (any shape), clipped to [EPS, 1] first so 0 gives a finite
    log; float64."""
    return np.log(np.clip(np.asarray(prob, dtype=np.float64), EPS, 1.0))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float (N, K) logits (max-subtracted, so large logits do not overflow);
    rows sum to 1."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    y = np.asarray(y)
    return float(-log_probs(prob)[np.arange(len(y)), y].mean())


def _nll_at_beta(beta: float, logits: np.ndarray, y: np.ndarray) -> float:
    z = beta * logits
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float((lse - z[np.arange(len(y)), y]).mean())


def fit_temperature(y: np.ndarray, prob: np.ndarray) -> float:
    """The T > 0 minimising validation NLL of softmax(log(prob) / T).

    NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta minus a linear term),
    so a bounded Brent search over beta finds the global minimum; never worse than T = 1.
    """
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0
    logits = log_probs(prob)
    res = minimize_scalar(
        _nll_at_beta,
        bounds=BETA_RANGE,
        args=(logits, y),
        method="bounded",
        options={"xatol": 1e-5},
    )
    beta = float(res.x)
    if not np.isfinite(beta) or _nll_at_beta(beta, logits, y) > _nll_at_beta(1.0, logits, y):
        return 1.0
    return 1.0 / beta


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (N, K) re-scaled by temperature scaling: softmax(log(prob) / temperature);
    T > 1 flattens, T < 1 sharpens (Guo et al. 2017, "On Calibration of Modern Neural
    Networks")."""
    return softmax(log_probs(prob) / float(temperature))


def reliability_bins(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability: per equal-width confidence bin, count, mean confidence, accuracy."""
    prob = np.asarray(prob, dtype=np.float64)
    conf = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to bin 0.
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, acc_sum / count, np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": mean_conf,
        "accuracy": acc,
    }


def ece(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (top label, equal-width bins): sum_b |B|/N |acc_b - conf_b|."""
    if len(y) == 0:
        return float("nan")
    b = reliability_bins(y, prob, n_bins)
    used = b["count"] > 0
    gap = np.abs(b["accuracy"][used] - b["confidence"][used])
    return float((b["count"][used] * gap).sum() / b["count"].sum())
