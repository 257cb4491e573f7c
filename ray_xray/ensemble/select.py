"""Ways to weight members, all chosen on validation data only (the weighted mean itself is
`ray_xray.inference.ensemble_proba`, the one every caller uses).

- `mean`: equal weights.
- `weighted`: weights proportional to each member's validation macro-F1.
- `greedy`: forward selection with replacement (Caruana et al., 2004) minimising validation NLL.
"""

from __future__ import annotations

import numpy as np

from ..calibration import nll

GREEDY_ROUNDS = 25
MIN_GAIN = 1e-6


def mean_weights(n: int) -> list[float]:
    """Equal weights 1/n for n members."""
    return [1.0 / n] * n


def score_weights(scores) -> list[float]:
    """Weights proportional to a non-negative score (val macro-F1); equal when all are zero."""
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0, None)
    if s.sum() <= 0:
        return mean_weights(len(s))
    return (s / s.sum()).tolist()


def greedy_select(
    y: np.ndarray, probs: list[np.ndarray], rounds: int = GREEDY_ROUNDS, min_gain: float = MIN_GAIN
) -> dict:
    """Caruana forward selection with replacement on validation NLL.

    Starts from the member with the lowest NLL; each round adds (again, if it helps) the member
    whose inclusion lowers the NLL of the bag's mean the most; stops after `rounds` additions
    or when no addition lowers it by more than `min_gain`. Weights are the selection counts.
    """
    n = len(probs)
    single = [nll(y, p) for p in probs]
    first = int(np.argmin(single))
    counts = np.zeros(n, dtype=int)
    counts[first] = 1
    total = probs[first].astype(np.float64).copy()
    current = single[first]
    history = [{"round": 0, "added": first, "val_nll": current}]
    for r in range(1, rounds + 1):
        size = counts.sum() + 1
        trial = [nll(y, (total + p) / size) for p in probs]
        best = int(np.argmin(trial))
        if current - trial[best] <= min_gain:
            break
        counts[best] += 1
        total += probs[best]
        current = trial[best]
        history.append({"round": r, "added": best, "val_nll": current})
    return {
        "weights": (counts / counts.sum()).tolist(),
        "counts": counts.tolist(),
        "val_nll": current,
        "history": history,
        "start": first,
    }
