"""`tune --cv K --refit-seeds S`: the chosen configuration retrained on all of train+val.

A fold model trains on (K-1)/K of the pool; a refit trains on all of it, as nnU-Net's and
most papers' final models do, for the configuration's planned epochs, keeping the last
weights (no images are left to pick an epoch with; `cv_fold` -1, data/folds.py). S seeds
(the sweep's seed, +1, ...) make S models; they, not the fold models, are the ensemble
(ensemble/folds.py, with the fold models' temperatures: a refit has no held-out images of
its own). The refits are Tune trials of a third experiment, EXP/refit/, resumed with the
sweep; with --budget-minutes the search leaves them time (`folds.fold_stage_s`).
"""

from __future__ import annotations

from .folds import relabel, stage_tuner
from .trial import trial_fn

REFIT_DIR = "refit"  # the refits' Tune experiment, inside the sweep's folder


def refit_seeds(seed: int, n: int) -> list[int]:
    """The seeds of `n` refits of a sweep whose seed is `seed`: seed, seed+1, ..."""
    return [seed + i for i in range(n)]


def refit_config(chosen: dict, seed: int) -> dict:
    """The training configuration of the refit of `chosen` (a candidate's configuration) with
    `seed`: every fold trains (`cv_fold` -1), nothing validates."""
    return {**chosen, "cv_fold": -1, "seed": int(seed)}


def refit_trial_fn(config: dict, chosen: dict, overrides: dict, runtime: dict) -> None:
    """A refit trial: `chosen` trained on all of train+val with seed `config["refit_seed"]`."""
    trial_fn(refit_config(chosen, config["refit_seed"]), overrides, runtime)


def refit_tuner(
    opts,
    exp_dir: str,
    chosen: dict,
    overrides: dict,
    runtime: dict,
    res: dict,
    max_concurrent: int,
    callbacks: list | None = None,
):
    """The refits' Tuner: `chosen` (the configuration --cv chose) x `refit_seeds`, in
    EXP/refit/ (restored from there on resume). `overrides`: the sweep's (its fold and seed
    are the refit's own); `res`, `callbacks`: as `folds.fold_tuner`'s."""
    ovr = {k: v for k, v in overrides.items() if k not in ("cv_fold", "seed")}
    grid = {"refit_seed": refit_seeds(opts.seed, opts.refit_seeds)}
    params = {"chosen": chosen, "overrides": ovr, "runtime": runtime}
    return stage_tuner(
        opts, exp_dir, REFIT_DIR, refit_trial_fn, params, grid, res, max_concurrent, callbacks
    )


def label_refits(rows: list[dict], chosen: dict) -> list[dict]:
    """The refit trials' results `rows` with their full configuration (`cv_stage` "refit",
    `cv_fold` -1, their seed), as results.parquet holds them; `chosen`: the selection
    record's chosen candidate (`folds.choose`)."""
    import json

    out = []
    for r in rows:
        seed = json.loads(r["config"])["refit_seed"]
        out.append(relabel(r, refit_config(chosen["config"], seed), "refit", chosen["candidate"]))
    return sorted(out, key=lambda r: json.loads(r["config"])["seed"])
