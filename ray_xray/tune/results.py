"""After a sweep: one table of every trial (Parquet + CSV), the top-k on test, a ranked printout.

Checkpoints come from what kept them: Tune for an inline trial (`tune_kept`), the trial's Ray
Train run for a torchtrainer trial (`kept_checkpoint`: its checkpoint manager's snapshot), never
from the last path Tune saw: Tune can stop a trial (ASHA) while its Train run reports one more
epoch, and `CheckpointConfig(num_to_keep=1)` then deletes the folder Tune last heard of.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs

from ..checkpoint import MODEL_FILE, STATE_FILE, atomic_save, data_key, load_state
from ..data import load_for_config
from ..io import atomic_path, write_atomic
from ..metrics import metric_mode
from ..sweep_folder import read_sweep_json
from ..train.run import evaluate_record
from .console import error_reason

TRAIN_RUN = "train"  # trial_fn's Ray Train run name: its folder is <exp_dir>/<trial_id>/train
# What reading a saved checkpoint raises when it is gone, truncated or not ours.
UNREADABLE = (ValueError, OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError)


class ResultsError(RuntimeError):
    """The trials ran but the results step failed: not bad input (exit 1, with a traceback)."""


@dataclass
class Kept:
    """What one trial's Ray Train run kept: `path` of its newest checkpoint (None if none),
    `metrics` reported with each kept checkpoint (dicts, oldest first), `why` there is none."""

    path: str | None
    metrics: list[dict] = field(default_factory=list)
    why: str = ""


@contextlib.contextmanager
def _quiet(name: str):
    """Ray's checkpoint manager logs a paragraph at INFO for every snapshot it reads."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def kept_checkpoint(run_dir: str) -> Kept:
    """The newest checkpoint a Ray Train run kept, read through Ray's own `Result.from_path`
    (the run's checkpoint manager snapshot). When the snapshot is missing or names a folder
    that is gone, the newest `checkpoint_*` folder on local disk that holds our state file.
    `run_dir`: local path or URI of the run (`<exp_dir>/<trial_id>/train`). Never raises for
    a missing or damaged run: `Kept.why` says what was found instead."""
    from ray.train.v2.api.result import Result as TrainResult

    local = "://" not in run_dir
    try:
        with _quiet("ray.train"):
            run = TrainResult.from_path(run_dir)
        path = run.checkpoint.path if run.checkpoint is not None else None
        if path is None:
            why = "its Ray Train run reported no checkpoint"
        elif local and not (Path(path) / STATE_FILE).is_file():
            path, why = None, f"{path}/{STATE_FILE} is missing"
        else:
            return Kept(path, [m for _, m in run.best_checkpoints or []])
    except Exception as exc:  # no run folder or snapshot, or one that names a deleted folder
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
    newest = _newest_on_disk(run_dir) if local else None
    return Kept(newest, [], "" if newest else f"no checkpoint kept: {why}")


def tune_kept(result) -> Kept | None:
    """The checkpoint Tune kept for an inline trial (`result`: one of the ResultGrid's), None
    for a torchtrainer trial (its Ray Train run keeps them: `kept_checkpoint`). Tune registers a
    checkpoint with the report it came with and its trial reports nothing after a stop, so the
    latest is never one Tune has deleted; a local folder without our state file is refused."""
    ckpt = getattr(result, "checkpoint", None)
    if ckpt is None:
        return None
    path = ckpt.path
    local = isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem)
    if local and not (Path(path) / STATE_FILE).is_file():
        return Kept(None, [], f"no checkpoint kept: {path}/{STATE_FILE} is missing")
    return Kept(path)  # the storage filesystem's own path, as `kept_checkpoint`'s


def unregistered_checkpoint(trial_dir: str) -> Kept:
    """An inline trial Tune registered no checkpoint for (`tune_kept` None): the newest
    checkpoint folder it wrote to `trial_dir` anyway, with our state file, and the epochs its
    state records. The trial persists a checkpoint before its report reaches Tune, so a sweep
    stopped while that report was in flight (--budget-minutes, --cv's stopper) leaves a whole
    checkpoint Tune never heard of (a new user's budget-stopped trial read "the trial reported
    none" beside its checkpoint_000000). None (with why) when there is none, or it is
    unreadable, or the storage is not local."""
    newest = _newest_on_disk(trial_dir) if "://" not in trial_dir else None
    if newest is None:
        return Kept(None, [], "no checkpoint kept: the trial reported none")
    try:
        history = list(load_state(newest).get("history") or [])
    except UNREADABLE as exc:
        return Kept(None, [], f"no checkpoint kept: {newest} is unreadable ({exc})")
    return Kept(newest, history)


TUNE_CHECKPOINT = re.compile(r"checkpoint_\d{6}")  # Tune's names for an inline trial's checkpoints


def relink_deleted_checkpoints(exp_dir: str | Path) -> int:
    """Before `Tuner.restore` of an inline sweep on local storage: give each trial's deleted
    checkpoint names back, as hard links to its newest checkpoint's files.

    Tune deletes a trial's previous checkpoint when it registers the next (num_to_keep=1) and
    snapshots the experiment after that; a driver killed in between leaves a snapshot naming a
    deleted folder, and Tune's restore then fails the trial ("does not exist on storage
    anymore": tests/test_tune.py's killed sweep). The newest folder holds the newest training
    state, which includes everything the snapshot's one had: the trial resumes from it and
    redoes no epoch. Hard links take no space; `prune_unkept` removes them when the sweep is
    done. Returns how many folders were made."""
    made = 0
    for trial in (p for p in Path(exp_dir).iterdir() if p.is_dir()):
        found = _newest_on_disk(str(trial))  # Tune's checkpoint_NNNNNN: name order is time order
        if found is None or not TUNE_CHECKPOINT.fullmatch(Path(found).name):
            continue
        newest = Path(found)
        for i in range(int(newest.name.split("_")[1])):
            missing = trial / f"checkpoint_{i:06d}"
            if missing.exists():
                continue
            missing.mkdir()
            for f in newest.iterdir():
                if f.is_file():
                    os.link(f, missing / f.name)
            made += 1
    return made


def prune_unkept(rows: list[dict]) -> None:
    """Remove the checkpoint folders of inline trials on local storage that Tune no longer
    keeps (left by `relink_deleted_checkpoints`); the row's `checkpoint_path` stays."""
    for row in rows:
        kept = row.get("checkpoint_path")
        if not kept or "://" in kept or not TUNE_CHECKPOINT.fullmatch(Path(kept).name):
            continue
        for d in Path(kept).parent.iterdir():
            if d.name != Path(kept).name and TUNE_CHECKPOINT.fullmatch(d.name) and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def _newest_on_disk(run_dir: str) -> str | None:
    # Ray Train names checkpoint folders checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>, Tune
    # checkpoint_<NNNNNN>: in both, name order is time order.
    found = sorted(Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}"))
    return str(found[-1].parent) if found else None


def _error_reason(result) -> str:
    """The one line that says why a trial failed (see `console.error_reason`)."""
    if result.error is None:
        return ""
    return error_reason(str(result.error)) or type(result.error).__name__


def merge_history(seen: list[dict], kept: list[dict]) -> tuple[list[dict], list[dict]]:
    """One report per epoch, in epoch order: what Tune saw (`seen`, its last report of an epoch
    wins: a restored trial re-reports its final epoch), plus the kept checkpoints' reports of
    epochs after Tune's last (the run went on after Tune stopped listening). Returns
    (history, the epochs Tune never saw)."""
    by_epoch: dict = {}
    for i, h in enumerate(seen):
        e = h.get("epoch")
        by_epoch[int(e) if _finite(e) else ("row", i)] = h
    last = max((k for k in by_epoch if isinstance(k, int)), default=0)
    unseen = sorted(
        (m for m in kept if _finite(m.get("epoch")) and int(m["epoch"]) > last),
        key=lambda m: m["epoch"],
    )
    for m in unseen:
        by_epoch[int(m["epoch"])] = m
    ints = sorted(k for k in by_epoch if isinstance(k, int))
    rest = [k for k in by_epoch if not isinstance(k, int)]
    return [by_epoch[k] for k in [*rest, *ints]], unseen


def trial_rows(
    grid,
    objective: str,
    mode: str,
    exp_dir: str,
    resources: dict | None = None,
    runner: str = "torchtrainer",
) -> list[dict]:
    """One row per trial of a Tune ResultGrid. `resources`: what each trial held,
    {"cpus": float, "gpus": float}; `runner`: the sweep's trial runner. Checkpoints: see
    `tune_kept` (inline) and `kept_checkpoint` (torchtrainer)."""
    resources = resources or {}
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        df = result.metrics_dataframe
        seen = df.to_dict("records") if df is not None and len(df) else []
        kept = tune_kept(result) or (
            unregistered_checkpoint(f"{exp_dir}/{trial_id}")
            if runner == "inline"
            else kept_checkpoint(f"{exp_dir}/{trial_id}/{TRAIN_RUN}")
        )
        history, unseen = merge_history(seen, kept.metrics)
        last = history[-1] if history else {}
        values = [h.get(objective) for h in history if _finite(h.get(objective))]
        best = (max(values) if mode == "max" else min(values)) if values else None
        wall = seen[-1].get("time_total_s") if seen else None
        if _finite(wall):  # a lower bound when epochs ran after Tune's last report
            wall += sum(m.get("epoch_s") or 0.0 for m in unseen)
        config = dict(result.config or {})
        rows.append(
            {
                "trial_id": trial_id,
                # INCOMPLETE: no error, but not one epoch reported (sweep stopped or budget ran out).
                "status": "ERROR" if result.error else ("TERMINATED" if history else "INCOMPLETE"),
                # Why it failed; or, for a trial that trained, why it has no checkpoint to use.
                "error": _error_reason(result) or (kept.why if history else ""),
                "model": config.get("model"),
                "epochs": int(last.get("epoch") or 0),
                f"best_{objective}": best,
                "best_epoch": last.get("best_epoch"),
                "last_val_loss": last.get("val_loss"),
                "last_val_acc": last.get("val_acc"),
                "wall_s": wall,
                # Train+validate time; wall_s - compute_s is what Ray/Tune start-up cost this trial.
                "compute_s": sum(h.get("epoch_s") or 0.0 for h in history),
                "epochs_after_tune_stopped": len(unseen),
                "cpus": resources.get("cpus"),
                "gpus": resources.get("gpus"),
                "checkpoint_path": kept.path,
                "trial_dir": result.path,
                "config": json.dumps(config, sort_keys=True, default=str),
                **{
                    f"config/{k}": (json.dumps(v) if isinstance(v, list | dict) else v)
                    for k, v in config.items()
                },
            }
        )
    return rows


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def load_record(checkpoint_path: str) -> dict:
    """The best-model record inside a trial checkpoint (folder holding STATE_FILE).
    Raises one of UNREADABLE when the file is gone, truncated or not a ray_xray state."""
    best = load_state(checkpoint_path)["best"]
    if not isinstance(best, dict):
        raise ValueError(f"{checkpoint_path}: a training state without a best model")
    return best


def finish(
    grid,
    exp_dir: str,
    space,
    opts,
    wall_s: float,
    local: bool = True,
    plan: dict | None = None,
    files=None,
    rows_hook=None,
) -> dict:
    """Write the sweep's results (results.csv, best_trials.json, best_model.pt, the time use in
    sweep.json, optuna.db, results.parquet last as the finished mark) and print the ranking.
    `plan`: the sweep's resource plan (cpus_per_trial). A trial whose checkpoint is gone or
    unreadable gets its reason in the `error` column and the next-best trial takes its place
    in the top-k. `files`: the sweep's `storage.SweepFiles` (default: made from `exp_dir`, a
    local path or a URI; `local` is not consulted, the storage kind comes from `exp_dir`): for
    a URI, the files are written to its local copy and then copied to the storage, and
    checkpoint and trial paths in the results are URIs. Raises OSError when the storage
    refuses a write. `rows_hook(rows) -> rows`: changes the trial rows before anything is
    written (a --cv sweep adds its fold runs and chooses: tune/folds.py)."""
    from .storage import STUDY_FILE, SweepFiles

    files = files if files is not None else SweepFiles(exp_dir)
    objective = opts.objective[0]
    mode = metric_mode(objective)
    resources = {"cpus": (plan or {}).get("cpus_per_trial"), "gpus": opts.gpus_per_trial}
    rows = trial_rows(grid, objective, mode, exp_dir, resources, opts.trial_runner)
    if rows_hook is not None:
        rows = rows_hook(rows)
    prune_unkept(rows)  # local paths, before they become URIs
    for row in rows:  # where the storage has them (URIs for a URI storage)
        row["checkpoint_path"] = files.to_uri(row["checkpoint_path"])
        row["trial_dir"] = files.to_uri(row["trial_dir"])
    key = f"best_{objective}"
    top = evaluate_top(rows, key, mode, opts, files.stage, fetch=files.fetch)
    # Tuner.fit's own wall time: the report's "sweep wall time" (its first-trial-to-last-report
    # span leaves out Tune's start, trial start-ups and the time after the last report).
    use = {**time_use(rows), "tune_wall_s": round(float(wall_s), 1)}
    table = pd.DataFrame(rows)
    out = files.stage
    write_atomic(files.local_path("results.csv"), table.to_csv(index=False))
    write_best_trials(out, top)
    _record_time_use(out / "sweep.json", use)
    with atomic_path(out / "results.parquet") as tmp:  # last: it marks the sweep finished
        table.to_parquet(tmp, index=False)
    files.push(
        "results.csv",
        "best_trials.json",
        "best_model.pt",
        "sweep.json",
        STUDY_FILE,
        "results.parquet",
    )
    # Name only what was written: a sweep whose trials kept no checkpoint has no best_model.pt.
    written = [n for n in OUTPUTS if (out / n).is_file()]
    print_ranked(rows, key, mode, files.where(), wall_s, use, written, bool(top))
    return {"rows": rows, "top": top, "exp_dir": exp_dir, "wall_s": wall_s, "time_use": use}


def write_best_trials(exp_dir: str | Path, top: list[dict]) -> Path:
    """best_trials.json (the one place it is written): `top`, evaluate_top's list, best first,
    each entry possibly with "external" (ray_xray/tune/external.py). `exp_dir`: a local folder
    (a URI storage's stage, pushed by the caller). Returns the path."""
    return write_atomic(Path(exp_dir) / "best_trials.json", json.dumps(top, indent=2, default=str))


def evaluate_top(
    rows: list[dict], key: str, mode: str, opts, exp_dir: str | Path, fetch=None
) -> list[dict]:
    """The best `opts.top_k` trials with a readable checkpoint, evaluated on test (rows get
    test_* columns); rank 1's model is saved as `exp_dir`/best_model.pt (a local folder).
    `fetch(checkpoint_path, STATE_FILE)`: the local folder holding that checkpoint's state file
    (`storage.SweepFiles.fetch`; default: the path itself). Returns best_trials.json's list."""
    ranked = sorted(
        (r for r in rows if _finite(r[key]) and r["checkpoint_path"]),
        key=lambda r: r[key],
        reverse=mode == "max",
    )
    top: list[dict] = []
    datasets: dict[str, object] = {}  # one load per distinct data setting of the top-k
    for row in ranked:
        if len(top) >= opts.top_k:
            break
        try:
            where = row["checkpoint_path"]
            record = load_record(fetch(where, STATE_FILE) if fetch else where)
        except UNREADABLE as exc:
            row["error"] = f"checkpoint unreadable: {type(exc).__name__}: {exc}"[:300]
            row["checkpoint_path"] = None  # not a candidate for the ensemble either
            continue
        cfg = record["config"]
        key_ = (cfg["data"], data_key(record))  # every setting load_for_config reads
        if key_ not in datasets:
            datasets[key_] = load_for_config(cfg, opts.cache)
        test, _, _ = evaluate_record(record, datasets[key_], "test")
        row["test_macro_f1"], row["test_accuracy"], row["test_auc"] = (
            test["macro_f1"],
            test["accuracy"],
            test["auc"],
        )
        for c, v in test["recall"].items():
            row[f"test_recall_{c}"] = v
        rank = len(top) + 1
        top.append(
            {
                "rank": rank,
                "trial_id": row["trial_id"],
                "model": row["model"],
                key: row[key],
                "best_epoch": record.get("epoch"),
                "checkpoint": row["checkpoint_path"],
                "config": record["config"],
                "test": test,
            }
        )
        if rank == 1:
            atomic_save(record, Path(exp_dir) / MODEL_FILE)
    return top


def time_use(rows: list[dict]) -> dict:
    """Where the trials' reserved resources went. Per resource (CPU, GPU): resource-seconds
    held = sum over timed trials of wall_s x units held; training = sum of compute_s (train +
    validation) x units. `training_share` = training / held for the scarce resource (GPU when
    trials held GPUs, else CPU), in [0, 1]; None when no trial was timed. Trials without a
    wall time (none reported) are left out; a trial's compute_s counts at most its wall_s."""
    timed = [r for r in rows if _finite(r.get("wall_s")) and r["wall_s"] > 0]
    out: dict = {"trials_timed": len(timed)}
    over = [r["wall_s"] - r["compute_s"] for r in timed]
    out["median_overhead_s"] = statistics.median(over) if over else None
    for res in ("cpus", "gpus"):
        units = [
            r.get(res) if _finite(r.get(res)) else (1.0 if res == "cpus" else 0.0) for r in timed
        ]
        held = sum(r["wall_s"] * u for r, u in zip(timed, units, strict=True))
        training = sum(
            min(r["compute_s"], r["wall_s"]) * u for r, u in zip(timed, units, strict=True)
        )
        name = res[:-1]
        out[f"{name}_s_held"], out[f"{name}_s_training"] = held, training
    scarce = "gpu" if out["gpu_s_held"] > 0 else "cpu"
    out["resource"] = scarce.upper()
    held = out[f"{scarce}_s_held"]
    out["training_share"] = out[f"{scarce}_s_training"] / held if held > 0 else None
    return out


def _record_time_use(sweep_json: Path, use: dict) -> None:
    """Add the time use to sweep.json (written at the start with the command and the plan)."""
    try:
        data = read_sweep_json(sweep_json.parent)
    except ValueError:
        data = {}
    data["time_use"] = use
    write_atomic(sweep_json, json.dumps(data, indent=2, default=str))


def time_line(use: dict) -> str | None:
    """The summary's sentence on where trial time went (None when no trial was timed)."""
    share = use.get("training_share")
    if share is None:
        return None
    pct = f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"  # 0.5%, not "0%"
    res = use["resource"]
    text = (
        f"{pct} of trial {res}-seconds went to training+validation "
        f"({use[f'{res.lower()}_s_training']:.0f} of {use[f'{res.lower()}_s_held']:.0f}); "
        f"per-trial overhead (wall - train/val compute) median {use['median_overhead_s']:.1f}s"
    )
    if share < 0.5:
        text += (
            ": start-up dominates; more epochs per trial or fewer trials at a time use it better"
        )
    return text


OUTPUTS = ("results.parquet", "best_trials.json", "best_model.pt")  # what the summary names


def print_ranked(
    rows: list[dict],
    key: str,
    mode: str,
    exp_dir: str,
    wall_s: float,
    use: dict | None = None,
    written: list[str] | None = None,
    has_best: bool = True,
) -> None:
    """The ranking table and the summary lines. `written`: which of OUTPUTS exist (default:
    all); `has_best`: False when no trial kept a usable checkpoint, which the summary says."""
    written = list(OUTPUTS) if written is None else written
    order = sorted(
        rows,
        key=lambda r: (not _finite(r[key]), -(r[key] or 0) if mode == "max" else (r[key] or 0)),
    )
    print(
        f"\n{'rank':>4}  {'trial':<12} {'model':<14} {'status':<10} {'epochs':>6} {key:>18} {'test_macro_f1':>14}"
    )
    for i, r in enumerate(order, start=1):
        val = f"{r[key]:.4f}" if _finite(r[key]) else "-"
        test = f"{r['test_macro_f1']:.4f}" if _finite(r.get("test_macro_f1")) else ""
        print(
            f"{i:>4}  {r['trial_id']:<12} {str(r['model']):<14} {r['status']:<10} {r['epochs']:>6} {val:>18} {test:>14}"
        )
        if r["error"]:
            print(f"      reason: {r['error']}")
    n_err = sum(r["status"] == "ERROR" for r in rows)
    line = time_line(use or time_use(rows))
    if line:
        print(f"\n{line}")
    print(
        f"\n{len(rows)} trials ({n_err} failed) in {wall_s:.0f}s. Results: {exp_dir}/"
        + ", ".join(written)
        + ("" if has_best else " (no trial kept a checkpoint: no best model, no ensemble)"),
        file=sys.stdout,
    )
