"""`tune --cv K --refit-seeds S`: the chosen configuration retrained on all of train+val.

A fold model trains on (K-1)/K of the pool; a refit trains on all of it, as nnU-Net's and
most papers' final models do, for the configuration's planned epochs, keeping the last
weights (no images are left to pick an epoch with; `cv_fold` -1, data/folds.py). S refits
(`refit_seed` 0..S-1: their training randomness is the sweep's seed + it, while the images,
drawn by the sweep's seed, are the same for all) make S models; they, not the fold models,
are the ensemble (ensemble/folds.py, with the fold models' temperatures: a refit has no
held-out images of its own). The refits are Tune trials of a third experiment, EXP/refit/,
resumed with the sweep; with --budget-minutes the search leaves them time
(`folds.fold_stage_s`).
"""

from __future__ import annotations

from ..config import TrainConfig
from .folds import relabel, stage_tuner
from .trial import trial_fn

REFIT_DIR = "refit"  # the refits' Tune experiment, inside the sweep's folder


def refit_config(chosen: dict, refit_seed: int) -> dict:
    """The training configuration of refit `refit_seed` (0, 1, ...) of `chosen` (a
    candidate's configuration): every fold trains (`cv_fold` -1), nothing validates, and its
    training randomness is the sweep's seed + `refit_seed` (TrainConfig.train_seed)."""
    return {**chosen, "cv_fold": -1, "refit_seed": int(refit_seed)}


def unlike_folds(chosen: dict) -> str:
    """ " (...)": how a refit of `chosen` trains unlike its fold runs when it has patience or a
    plateau schedule (both need validation, which a refit has not), else ""."""
    cfg = TrainConfig.from_dict(chosen)
    unlike = [f"patience {cfg.patience}"] if cfg.patience else []
    unlike += ["a plateau lr_scheduler"] if cfg.lr_scheduler == "plateau" else []
    if not unlike:
        return ""
    return f" (its {' and '.join(unlike)} need validation: a refit runs every epoch at its lr)"


def refit_trial_fn(config: dict, chosen: dict, overrides: dict, runtime: dict) -> None:
    """A refit trial: refit `config["refit_seed"]` of `chosen`, on all of train+val."""
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
    """The refits' Tuner: `chosen` (the configuration --cv chose) x refit_seed 0..S-1
    (--refit-seeds S), in EXP/refit/ (restored from there on resume). `overrides`: the
    sweep's (its fold is the refit's own); `res`, `callbacks`: as `folds.fold_tuner`'s."""
    ovr = {k: v for k, v in overrides.items() if k != "cv_fold"}
    grid = {"refit_seed": list(range(opts.refit_seeds))}
    params = {"chosen": chosen, "overrides": ovr, "runtime": runtime}
    return stage_tuner(
        opts, exp_dir, REFIT_DIR, refit_trial_fn, params, grid, res, max_concurrent, callbacks
    )


def label_refits(rows: list[dict], chosen: dict) -> list[dict]:
    """The refit trials' results `rows` with their full configuration (`cv_stage` "refit",
    `cv_fold` -1, their refit_seed), as results.parquet holds them; `chosen`: the selection
    record's chosen candidate (`folds.choose`)."""
    import json

    out = []
    for r in rows:
        seed = json.loads(r["config"])["refit_seed"]
        out.append(relabel(r, refit_config(chosen["config"], seed), "refit", chosen["candidate"]))
    return sorted(out, key=lambda r: json.loads(r["config"])["refit_seed"])
