"""K-fold cross-validation over train+val: which images train and which validate fold k.

The folds are made once per (data, K, seed) from the prepared arrays, so every trial and the
ensemble that later reads a fold model's own validation images agree on them without a file.
Test images are never part of a fold: they stay in the `test` split, untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .sources import patient_id


def fold_groups(paths: list[str], patients: list[str] | None = None) -> list[str]:
    """One group per patient where ids exist (the data's patient column: a manifest's
    `source_path`, Kermany's `person12_...` names), else one group per file: the rule
    `sources.carve_val` uses."""
    patients = patients or [""] * len(paths)
    return [
        pid or patient_id(p) or p or f"#{i}"
        for i, (p, pid) in enumerate(zip(paths, patients, strict=True))
    ]


def fold_of(labels: np.ndarray, groups: list[str], k: int, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1, int64 array of shape (N,)) of each of N images: stratified by label,
    grouped by patient (sklearn's `StratifiedGroupKFold`, shuffled with `seed`), so a patient's
    images all sit in one fold. Raises ValueError when K < 2 or the data has fewer groups than K.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"--cv must be >= 2 folds, got {k}")
    if len(set(groups)) < k:
        raise ValueError(f"--cv {k}: train+val hold only {len(set(groups))} patients/images")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val_idx] = f
    return folds


def fold_view(data, k: int, fold: int, seed: int = 0):
    """`PreparedData` whose train/val are fold `fold` of K over the pooled train+val images
    (val = that fold, train = the other K-1); test as it was. Fold -1 is a refit's view: every
    pooled image trains and val is empty (0 images). The training statistics (mean, std) are
    the new train split's. Raises ValueError for a fold outside -1..K-1."""
    if not -1 <= fold < k:
        raise ValueError(f"cv_fold must be in -1..{k - 1}, got {fold}")
    images = np.concatenate([data.images["train"], data.images["val"]])
    labels = np.concatenate([data.labels["train"], data.labels["val"]])
    paths = list(data.paths["train"]) + list(data.paths["val"])
    pats = data.patients or {}
    patients = list(pats.get("train") or [""] * len(data.paths["train"]))
    patients += list(pats.get("val") or [""] * len(data.paths["val"]))
    folds = fold_of(labels, fold_groups(paths, patients), k, seed)
    is_val = folds == fold  # fold -1: none
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    train = images[train_idx].astype(np.float32) / 255.0
    return dataclasses.replace(
        data,
        images={**data.images, "train": images[train_idx], "val": images[val_idx]},
        labels={**data.labels, "train": labels[train_idx], "val": labels[val_idx]},
        paths={
            **data.paths,
            "train": [paths[i] for i in train_idx],
            "val": [paths[i] for i in val_idx],
        },
        patients={
            **pats,
            "train": [patients[i] for i in train_idx],
            "val": [patients[i] for i in val_idx],
        },
        mean=float(train.mean()),
        std=float(train.std()) or 1.0,
    )


def for_config(data, cfg) -> object:
    """`data` as a run with TrainConfig (or its dict) `cfg` sees it: its cv fold when
    `cv_folds` > 0, else unchanged."""
    c = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    k = int(c.get("cv_folds") or 0)
    if not k:
        return data
    return fold_view(data, k, int(c.get("cv_fold") or 0), int(c.get("seed") or 0))
