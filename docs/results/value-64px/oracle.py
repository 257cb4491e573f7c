"""The best test figures any model of a value run reached: an oracle bound, NOT a result.

`python docs/results/value-64px/oracle.py RUNS [DATASET]` where RUNS is a `value` benchmark's
`--keep-runs` folder (runs/bench/value-...) and DATASET a name in it (default pneumonia2). Every
trial with a checkpoint in the dataset's sweeps (RUNS/DATASET-{a,b,c,d}-s*: search trials, and
the fold runs and refits of `--cv`) is scored on the test split: accuracy, AUC of the last class
(pneumonia2: pneumonia), and the specificity and sensitivity of argmax for that class. Printed
best test accuracy first.

Choosing a model by its test figures is what no sweep may do; this asks a different question:
could any selection rule, fed these sweeps' models, have met a test target? If the best of
them all misses it, better selection cannot reach it; the models themselves must change.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ray_xray.checkpoint import load_checkpoint
from ray_xray.data import load_for_config
from ray_xray.ensemble.folds import split_proba


def test_scores(record: dict, cache: dict) -> dict:
    """Accuracy, AUC, sensitivity and specificity (last class positive) of one model record on
    its data's test split (decoded once per image size, `cache`)."""
    cfg = record["config"]
    key = (cfg["data"], cfg["img_size"])
    if key not in cache:
        data = load_for_config({**cfg, "cv_folds": 0, "cv_fold": 0, "refit_seed": 0}, None)
        cache[key] = (data.images["test"], data.labels["test"])
    x, y = cache[key]
    prob = split_proba(record, x, y, torch.device("cpu"))
    pred, pos = prob.argmax(1), len(record["classes"]) - 1
    return {
        "accuracy": float((pred == y).mean()),
        "auc": float(roc_auc_score(y == pos, prob[:, pos])),
        "sensitivity": float((pred[y == pos] == pos).mean()),
        "specificity": float((pred[y != pos] != pos).mean()),
    }


def rows(runs: Path, dataset: str) -> list[dict]:
    """One row per trial checkpoint of the dataset's sweeps, with its test scores."""
    out, cache = [], {}
    for exp in sorted(runs.glob(f"{dataset}-*-s*")):
        table = pd.read_parquet(exp / "results.parquet")
        for _, r in table.iterrows():
            ckpt = r.get("checkpoint_path")
            if not isinstance(ckpt, str) or not Path(ckpt).exists():
                continue
            record = load_checkpoint(ckpt)
            stage = r.get("cv_stage") if isinstance(r.get("cv_stage"), str) else "search"
            out.append(
                {
                    "sweep": exp.name,
                    "trial": r["trial_id"],
                    "stage": stage,
                    "model": record["model"],
                    "val": float(r.get("best_val_macro_f1", np.nan)),
                    **test_scores(record, cache),
                }
            )
    return sorted(out, key=lambda row: -row["accuracy"])


if __name__ == "__main__":
    torch.set_num_threads(2)
    name = sys.argv[2] if len(sys.argv) > 2 else "pneumonia2"
    found = rows(Path(sys.argv[1]), name)
    print(f"{len(found)} models of {name}'s sweeps, best test accuracy first (an oracle bound)")
    print(
        "sweep            trial           stage   model          val F1  ACC    AUC    sens   spec"
    )
    for r in found:
        print(
            f"{r['sweep']:16s} {r['trial']:15s} {r['stage']:7s} {r['model']:14s} "
            f"{r['val']:.3f}  {r['accuracy']:.3f}  {r['auc']:.3f}  {r['sensitivity']:.3f}  "
            f"{r['specificity']:.3f}"
        )
