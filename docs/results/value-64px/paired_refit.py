"""Refits against the fold ensemble of the same --refit-seeds sweep, image by image.

`python docs/results/value-64px/paired_refit.py RUNS` where RUNS is a `value` benchmark's
`--keep-runs` folder (runs/bench/value-...): for every (d) sweep in it (`*-d-s*`), its
ensemble.pt (the refits) and ensemble/fold_ensemble.pt scored on the test split, and the
difference of their test macro-F1 (refits minus folds) with a paired bootstrap 95 % interval
(1,000 resamples of the test images, both ensembles on the same resample).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from ray_xray.calibration import apply_temperature
from ray_xray.checkpoint import load_ensemble
from ray_xray.data import load_for_config
from ray_xray.ensemble.folds import split_proba


def test_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of the ensemble at `path` on its data's test split."""
    ens = load_ensemble(path)
    cfg = ens["members"][0]["config"]
    data = load_for_config({**cfg, "cv_folds": 0, "cv_fold": 0, "refit_seed": 0}, None)
    x, y = data.images["test"], data.labels["test"]
    dev = torch.device("cpu")
    probs = [apply_temperature(split_proba(m, x, y, dev), m["temperature"]) for m in ens["members"]]
    return y, np.mean(probs, axis=0).argmax(1)


def paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 1000) -> tuple:
    """macro-F1 of a, of b, a - b, and the paired bootstrap 2.5/97.5 percentiles of a - b."""
    rng = np.random.default_rng(0)

    def f1(pred, idx):
        return f1_score(y[idx], pred[idx], average="macro")

    every = np.arange(len(y))
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(f1(a, idx) - f1(b, idx))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return f1(a, every), f1(b, every), f1(a, every) - f1(b, every), lo, hi


if __name__ == "__main__":
    torch.set_num_threads(2)
    for exp in sorted(Path(sys.argv[1]).glob("*-d-s*")):
        y, refits = test_predictions(exp / "ensemble" / "ensemble.pt")
        _, folds = test_predictions(exp / "ensemble" / "fold_ensemble.pt")
        r, f, d, lo, hi = paired(y, refits, folds)
        print(
            f"{exp.name}: refits {r:.4f}, folds {f:.4f}, difference {d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        )
