"""Cross-validated selection (`tune --cv K --cv-top N`): rank on one fold, confirm on all K.

Stage 1 is the ordinary search (TPE + ASHA), every trial trained on fold 0 of K (train+val
pooled, split by patient: data/folds.py), so ASHA stays as cheap as a single-split sweep.
Stage 2 re-runs the best N configurations of stage 1 on all K folds, as Tune trials of a second
experiment (`EXP/folds/`, resumed with the sweep); the configuration with the best mean fold
metric is chosen, and its K fold models become the ensemble (ensemble/folds.py).

Why not folds inside every trial: that multiplies every trial, the ones ASHA cuts after a
third of their epochs included, by K, and a trial that trains K models in turn can only be
cut after its first fold. The two-stage plan spends K-fold compute only on the N
configurations worth confirming (nnU-Net confirms its few configurations with 5 folds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from ray import tune

from ..io import write_atomic
from .trial import trial_fn

FOLDS_DIR = "folds"  # stage 2's Tune experiment, inside the sweep's folder
CANDIDATES_FILE = "cv_candidates.json"  # stage 1's top N, fixed before stage 2 starts
SELECTION_FILE = "cv.json"  # the fold metrics, means, spreads and the chosen configuration
# --budget-minutes with --cv: the search stage stops at this share of it; the fold stage's
# N x K runs then run to their end (a fold cut short could not be compared), so the sweep's
# wall time is about the budget when they take the rest (the value benchmark reports both).
SEARCH_SHARE = 0.5


def check_cv(cv: int, cv_top: int, storage: str) -> None:
    """Refuse (ValueError, one line) --cv 1, a negative --cv-top, or --cv on a URI storage."""
    if cv == 1 or cv < 0:
        raise ValueError(f"--cv takes K >= 2 folds (0 = off), got {cv}")
    if cv and cv_top < 1:
        raise ValueError(f"--cv-top must be >= 1, got {cv_top}")
    if cv and "://" in storage:
        raise ValueError("--cv needs a local --storage for now (its fold stage is local-only)")


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def top_configs(rows: list[dict], key: str, mode: str, n: int) -> list[dict]:
    """The sampled configurations (dicts) of the best `n` distinct stage-1 trials by `key`
    (a validation metric column of `rows`, results' trial rows), best first; trials that
    failed or have no finite value are left out. Never reads a test column."""
    ok = [r for r in rows if r.get("status") != "ERROR" and _finite(r.get(key))]
    ok.sort(key=lambda r: r[key], reverse=mode == "max")
    out: list[dict] = []
    for r in ok:
        cfg = json.loads(r["config"])
        if cfg not in out:
            out.append(cfg)
        if len(out) == n:
            break
    return out


def candidates(exp_dir: str, rows: list[dict], key: str, mode: str, n: int) -> list[dict]:
    """Stage 1's top `n` configurations, written to CANDIDATES_FILE the first time and read
    back from it on resume (a resumed stage 1 may add trials; stage 2's grid must not move)."""
    path = Path(exp_dir) / CANDIDATES_FILE
    if path.is_file():
        return json.loads(path.read_text())["configs"]
    configs = top_configs(rows, key, mode, n)
    write_atomic(path, json.dumps({"ranked_by": key, "configs": configs}, indent=2, default=str))
    return configs


def fold_trial_fn(config: dict, configs: list[dict], overrides: dict, runtime: dict) -> None:
    """A stage-2 trial: candidate `config["cv_config"]` trained on fold `config["cv_fold"]`."""
    base = configs[int(config["cv_config"])]
    trial_fn({**base, "cv_fold": int(config["cv_fold"])}, overrides, runtime)


def fold_tuner(
    opts,
    exp_dir: str,
    configs: list[dict],
    overrides: dict,
    runtime: dict,
    res: dict,
    max_concurrent: int,
    callbacks: list | None = None,
):
    """The stage-2 Tuner: every candidate x every fold, FIFO (each must finish to be compared),
    restored from `EXP/folds/` when that exists. `res`: the trial's resources (service's
    `trial_resources`); `callbacks`: Tune callbacks (the console lines)."""
    folds_dir = f"{exp_dir}/{FOLDS_DIR}"
    ovr = {k: v for k, v in overrides.items() if k != "cv_fold"}
    trainable = tune.with_resources(
        tune.with_parameters(
            fold_trial_fn,
            configs=configs,
            overrides=ovr,
            runtime={**runtime, "exp_dir": folds_dir},
        ),
        res,
    )
    if tune.Tuner.can_restore(folds_dir):
        return tune.Tuner.restore(
            folds_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    inline = runtime.get("runner") == "inline"
    return tune.Tuner(
        trainable,
        param_space={
            "cv_config": tune.grid_search(list(range(len(configs)))),
            "cv_fold": tune.grid_search(list(range(opts.cv))),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=lambda t: t.trial_id,
            trial_name_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=FOLDS_DIR,
            storage_path=exp_dir,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures if inline else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def label_rows(search_rows: list[dict], fold_rows: list[dict], configs: list[dict]) -> list[dict]:
    """results.parquet's rows of a --cv sweep: stage 1's (cv_stage "search", fold 0) then stage
    2's with their full configuration (`cv_stage` "folds", `cv_candidate`, `cv_fold`)."""
    for r in search_rows:
        r.update(cv_stage="search", cv_candidate=None, cv_fold=0)
    out = []
    for r in fold_rows:
        grid = json.loads(r["config"])
        i, fold = int(grid["cv_config"]), int(grid["cv_fold"])
        cfg = {**configs[i], "cv_fold": fold}
        for k in [k for k in r if k.startswith("config/")]:
            del r[k]
        r.update(
            model=cfg.get("model"),
            config=json.dumps(cfg, sort_keys=True, default=str),
            cv_stage="folds",
            cv_candidate=i,
            cv_fold=fold,
            **{
                f"config/{k}": (json.dumps(v) if isinstance(v, list | dict) else v)
                for k, v in cfg.items()
            },
        )
        out.append(r)
    return [*search_rows, *out]


def choose(rows: list[dict], key: str, mode: str, k: int) -> dict:
    """The candidate with the best mean of `key` (a validation metric) over its K fold runs;
    a candidate missing a fold, or with a non-finite one, is not eligible. Returns the
    selection record (cv.json): per candidate its fold values, mean, standard deviation and
    whether every fold has a checkpoint; "chosen" (candidate index) and its fold rows' trial
    ids. Raises ValueError when no candidate has all K folds. Reads only validation columns."""
    by: dict[int, dict[int, dict]] = {}
    for r in rows:
        if r.get("cv_stage") == "folds" and r.get("status") != "ERROR":
            by.setdefault(int(r["cv_candidate"]), {})[int(r["cv_fold"])] = r
    table = []
    for i in sorted(by):
        folds = by[i]
        values = [folds[f].get(key) if f in folds else None for f in range(k)]
        complete = all(_finite(v) for v in values) and all(
            folds[f].get("checkpoint_path") for f in range(k)
        )
        table.append(
            {
                "candidate": i,
                "fold_values": values,
                "mean": float(np.mean(values)) if complete else None,
                "std": float(np.std(values, ddof=1)) if complete else None,
                "complete": complete,
                "trial_ids": [folds[f]["trial_id"] if f in folds else None for f in range(k)],
                "config": json.loads(folds[min(folds)]["config"]) if folds else None,
            }
        )
    ok = [c for c in table if c["complete"]]
    if not ok:
        raise ValueError(f"--cv {k}: no candidate finished all {k} folds with a checkpoint")
    best = (max if mode == "max" else min)(ok, key=lambda c: c["mean"])
    return {"metric": key, "mode": mode, "folds": k, "candidates": table, "chosen": best}


def ranked_candidates(selection: dict) -> list[dict]:
    """The candidates of a selection record (cv.json) that finished every fold: the chosen one
    first, then the others, best mean fold metric first. The console's runner-up is the second;
    the fold ensemble tries them in this order."""
    chosen = selection["chosen"]["candidate"]
    rest = [c for c in selection["candidates"] if c["complete"] and c["candidate"] != chosen]
    rest.sort(key=lambda c: c["mean"], reverse=selection["mode"] == "max")
    return [next(c for c in selection["candidates"] if c["candidate"] == chosen), *rest]


def write_selection(exp_dir: str, selection: dict, fold_sizes: list[int] | None = None) -> Path:
    """cv.json in the sweep's folder: how the configuration was chosen."""
    rec = {**selection, "fold_val_sizes": fold_sizes}
    return write_atomic(Path(exp_dir) / SELECTION_FILE, json.dumps(rec, indent=2, default=str))


def selection_line(selection: dict) -> str:
    """One console line: the chosen candidate's mean +- sd over K folds, and the runner-up's."""
    c, *rest = ranked_candidates(selection)
    line = (
        f"cv: chose candidate {c['candidate']} ({c['config'].get('model')}): {selection['metric']} "
        f"{c['mean']:.4f} +- {c['std']:.4f} (mean +- sd over {selection['folds']} folds)"
    )
    if rest:
        line += f"; runner-up {rest[0]['mean']:.4f} +- {rest[0]['std']:.4f}"
    return line


class FoldStage:
    """A finished stage 2: `label` is `results.finish`'s rows hook (adds the fold runs to the
    rows, chooses the configuration from their validation metrics and writes cv.json, before
    any test image is read); `checkpoints` then names the chosen folds' models, which the
    post-sweep steps ensemble (ray_xray/pipeline.py, ensemble/folds.py).

    `opts`: the sweep's SweepOptions; `configs`: stage 1's candidates; `grid`: stage 2's
    ResultGrid; `held`: {"cpus", "gpus"} each trial held."""

    def __init__(self, opts, exp_dir: str, configs: list[dict], grid, held: dict) -> None:
        self.opts, self.exp_dir, self.configs = opts, exp_dir, configs
        self.grid, self.held = grid, held
        self.selection: dict | None = None

    def label(self, rows: list[dict]) -> list[dict]:
        """Stage 1's `rows` followed by the fold runs' (`label_rows`); chooses the
        configuration by its mean fold metric (`choose`: ValueError when none finished all K
        folds), writes cv.json and prints the choice. Reads only validation columns."""
        from ..metrics import metric_mode
        from .results import trial_rows

        objective = self.opts.objective[0]
        mode = metric_mode(objective)
        folds_dir = f"{self.exp_dir}/{FOLDS_DIR}"
        runner = self.opts.trial_runner
        fold_rows = trial_rows(self.grid, objective, mode, folds_dir, self.held, runner)
        rows = label_rows(rows, fold_rows, self.configs)
        self.selection = choose(rows, f"best_{objective}", mode, self.opts.cv)
        self.selection["search_trials"] = sum(r.get("cv_stage") == "search" for r in rows)
        write_selection(self.exp_dir, self.selection)
        print(selection_line(self.selection), flush=True)
        return rows

    def groups(self, rows: list[dict]) -> dict[int, list[str]]:
        """Candidate index -> its K fold checkpoints, in fold order, for every candidate with
        all K folds, in `ranked_candidates` order (the order in which the fold ensemble may
        add them). After `label`; `rows`: the labelled rows, whose "checkpoint_path" they are."""
        by_id = {r["trial_id"]: r["checkpoint_path"] for r in rows}
        return {
            c["candidate"]: [by_id[t] for t in c["trial_ids"]]
            for c in ranked_candidates(self.selection)
        }
