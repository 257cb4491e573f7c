"""The checkpoint format, owned here: every ``.pt`` file ray_xray writes or reads goes through
this module (no other module calls ``torch.save``/``torch.load``).

Three files, three kinds of content:

- ``MODEL_FILE`` (best_model.pt, of a run or a sweep): one *model record*, ``model_record``'s
  dict: format, model, model_kwargs, config (a ``TrainConfig`` dict, holding img_size and
  in_chans), classes, stats (the training data's mean/std), metrics, epoch, state_dict.
- ``STATE_FILE`` (checkpoint.pt, in each Ray Train checkpoint folder): the *training state*
  a worker resumes from (``training_state``): the trainer's model/optimiser/scaler state, the
  epoch counters, the history, and the best model record so far under ``"best"``.
- ``ENSEMBLE_FILE`` (ensemble.pt): an *ensemble*: model records each with a temperature, the
  weights, the method and the classes (``ensemble_record``).

Records written before ``CHECKPOINT_FORMAT`` ``ray_xray/2`` (``ray_xray/1``) stored img_size
twice (config and a ``preprocess`` dict); they still load, and ``preprocess(record)`` is the
one reader of img_size, in_chans, mean and std for both. Every load is
``torch.load(weights_only=True)``: a pickle that would run code is refused in one line.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

STATE_FILE = "checkpoint.pt"
MODEL_FILE = "best_model.pt"
ENSEMBLE_FILE = "ensemble.pt"
CHECKPOINT_FORMAT = "ray_xray/2"  # /2: img_size/in_chans only in "config", mean/std in "stats"
READABLE_FORMATS = ("ray_xray/1", CHECKPOINT_FORMAT)
ENSEMBLE_FORMAT = "ray_xray/ensemble/1"


# ---------------------------------------------------------------- files


def atomic_save(obj: dict, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file and a rename: a reader sees the old
    file or the new one, never half of one (an exception while saving leaves the old file).
    Returns the path. Raises OSError (ENOSPC, naming `path`) when the disk fills up: torch's
    zip writer reports that as a RuntimeError ("unexpected pos ...") that names nothing."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            free = shutil.disk_usage(tmp.parent).free  # measured while the partial file exists
            if "unexpected pos" not in str(exc) or free >= _FULL_BELOW:
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
    return Path(path)


_FULL_BELOW = 1 << 20  # bytes free under which a failed torch.save is a full disk


def safe_load(path: str | Path, what: str = "checkpoint") -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors, containers and
    plain values only. Raises ValueError in one line (naming the path and `what`) for a
    missing file, a truncated or foreign file, or a pickle that would run code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals come in several exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable ray_xray {what} ({first[:160]})") from None


def resolve(path: str | Path) -> Path:
    """The file a path names: a file itself, or a folder's MODEL_FILE (a run or sweep folder),
    ENSEMBLE_FILE (an ensemble folder) or STATE_FILE (a trial checkpoint), in that order.
    Raises ValueError for a folder holding none of them; a missing file is returned as is
    (the load that follows names it)."""
    p = Path(path)
    if p.is_dir():
        for name in (MODEL_FILE, ENSEMBLE_FILE, STATE_FILE):
            if (p / name).is_file():
                return p / name
        raise ValueError(
            f"{path}: no {MODEL_FILE} or {ENSEMBLE_FILE} in this folder (give a run or sweep "
            "folder, an ensemble folder, a trial checkpoint, or the .pt file itself)"
        )
    return p


# ---------------------------------------------------------------- model records


def is_model_record(obj) -> bool:
    """True for a model record of any readable format (``READABLE_FORMATS``)."""
    return isinstance(obj, dict) and obj.get("format") in READABLE_FORMATS


def model_record(
    model: torch.nn.Module, cfg, classes: list[str], mean: float, std: float, metrics: dict
) -> dict:
    """Everything `predict` needs to use a model without the run that made it.

    `cfg`: the run's ``TrainConfig`` (stored as ``cfg.to_dict()``: the one copy of img_size
    and in_chans); `mean`/`std`: the training data's pixel statistics (floats on 0..1);
    `metrics`: numbers kept as floats, anything else dropped. The state_dict is a detached
    CPU copy. Returns a dict of tensors and plain values (``weights_only`` loadable)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "model": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "config": cfg.to_dict(),
        "classes": list(classes),
        "stats": {"mean": float(mean), "std": float(std)},
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        "state_dict": state,
    }


def preprocess(record: dict) -> dict:
    """``{"img_size": int, "in_chans": int, "mean": float, "std": float}`` of a model record:
    the one reader of these. img_size/in_chans come from the config (what the model was built
    with), falling back to an old record's ``preprocess`` copy; mean/std from ``stats`` (new)
    or ``preprocess`` (``ray_xray/1``). Raises ValueError when the record holds no size."""
    cfg = record.get("config") or {}
    old = record.get("preprocess") or {}
    stats = record.get("stats") or old
    size = cfg.get("img_size", old.get("img_size"))
    if size is None:
        raise ValueError("a model record without img_size (neither config nor preprocess)")
    return {
        "img_size": int(size),
        "in_chans": int(cfg.get("in_chans", old.get("in_chans", 1))),
        "mean": float(stats.get("mean", 0.0)),
        "std": float(stats.get("std", 1.0)),
    }


def as_model_record(obj, path: str | Path) -> dict:
    """`obj` as a model record: itself, or a training state's best model. Raises ValueError
    (one line, naming `path`) for anything else."""
    if isinstance(obj, dict) and isinstance(obj.get("best"), dict):
        obj = obj["best"]  # a training-state checkpoint: use its best model
    if not is_model_record(obj):
        raise ValueError(f"{path}: not a ray_xray checkpoint (no '{CHECKPOINT_FORMAT}' record)")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """The model record at `path` (a file, or a folder as ``resolve`` takes; a trial
    checkpoint gives its best model). Raises ValueError (one line) for a missing file, a
    pickle that would run code, a foreign file, or an ensemble."""
    p = resolve(path)
    return as_model_record(safe_load(p, "checkpoint"), p)


def load_model_or_ensemble(path: str | Path) -> dict:
    """A model record (as ``load_checkpoint``) or a checked ensemble dict (ENSEMBLE_FORMAT),
    whichever `path` (see ``resolve``) holds, read once. Raises ValueError (one line)."""
    p = resolve(path)
    obj = safe_load(p, "checkpoint")
    if is_ensemble(obj):
        return check_ensemble(obj, str(p))
    return as_model_record(obj, p)


# ---------------------------------------------------------------- training state


def training_state(trainer_state: dict, progress, best: dict | None, improved: bool) -> dict:
    """The per-epoch state a Ray worker saves: `trainer_state` (``Trainer.state_dict()``:
    "model", optimiser, scaler...), `progress`'s counters (epoch, best_value, since_best,
    history: a ``train.loop.Progress``) and the best model record under "best". When
    `improved`, the best record shares the trainer's model tensors, so the file holds one copy.
    """
    state = {
        **trainer_state,
        "epoch": progress.epoch,
        "best_value": progress.best_value,
        "since_best": progress.since_best,
        "best": best,
        "history": progress.history,
    }
    if improved and best is not None:
        state["best"] = {**best, "state_dict": trainer_state["model"]}
    return state


def save_state(state: dict, folder: str | Path) -> Path:
    """Write `state` (``training_state``'s dict) as `folder`/STATE_FILE, atomically."""
    return atomic_save(state, Path(folder) / STATE_FILE)


def load_state(folder: str | Path) -> dict:
    """The training state in a checkpoint folder (`folder`/STATE_FILE). Raises ValueError (one
    line) when the file is missing, truncated, refused, or not a training state."""
    path = Path(folder) / STATE_FILE
    state = safe_load(path, "training state")
    if not isinstance(state, dict) or "epoch" not in state or "best" not in state:
        raise ValueError(f"{path}: not a ray_xray training state (no epoch/best)")
    return state


# ---------------------------------------------------------------- ensembles


def ensemble_record(
    members: list[dict],
    weights: list[float],
    method: str,
    classes: list[str],
    extra: dict | None = None,
) -> dict:
    """The ENSEMBLE_FILE dict. `members`: model records each carrying a float "temperature";
    `weights`: one float per member; `extra`: more keys (e.g. operating_points). Raises
    ValueError for no members, a weight count mismatch, a member that is not a model record
    with a temperature, or member classes that differ from `classes`."""
    if len(members) != len(weights) or not members:
        raise ValueError("an ensemble needs one weight per member and at least one member")
    for m in members:
        if not is_model_record(m) or "temperature" not in m:
            raise ValueError("ensemble members must be ray_xray model records with a temperature")
        if list(m["classes"]) != list(classes):
            raise ValueError(f"member classes {m['classes']} differ from {classes}")
    obj = {
        "format": ENSEMBLE_FORMAT,
        "members": [{**m, "temperature": float(m["temperature"])} for m in members],
        "weights": [float(w) for w in weights],
        "method": str(method),
        "classes": list(classes),
    }
    if extra:
        obj.update(extra)
    return obj


def is_ensemble(obj) -> bool:
    """True for an ensemble dict (format ENSEMBLE_FORMAT), checked or not."""
    return isinstance(obj, dict) and obj.get("format") == ENSEMBLE_FORMAT


def check_ensemble(obj: dict, where: str = "ensemble") -> dict:
    """`obj` itself once it has members (model records), one weight each, summing to 1.
    Raises ValueError (one line, starting with `where`) otherwise."""
    members, weights = obj.get("members"), obj.get("weights")
    if not isinstance(members, list) or not isinstance(weights, list) or not members:
        raise ValueError(f"{where}: ensemble file without members/weights")
    if len(members) != len(weights):
        raise ValueError(f"{where}: {len(members)} members but {len(weights)} weights")
    for m in members:
        if not is_model_record(m):
            raise ValueError(f"{where}: a member is not a '{CHECKPOINT_FORMAT}' record")
    if not np.isclose(sum(float(w) for w in weights), 1.0, atol=1e-4):
        raise ValueError(f"{where}: weights do not sum to 1")
    return obj


def save_ensemble(obj: dict, path: str | Path) -> Path:
    """Write an ``ensemble_record`` dict to `path` atomically; returns the path."""
    return atomic_save(obj, path)


def load_ensemble(path: str | Path) -> dict:
    """The checked ensemble at `path` (ENSEMBLE_FILE, or the folder holding it). Raises
    ValueError (one line) for a missing or foreign file or a malformed ensemble."""
    path = Path(path)
    if path.is_dir():
        path = path / ENSEMBLE_FILE
    obj = safe_load(path, "ensemble")
    if not is_ensemble(obj):
        raise ValueError(f"{path}: not a ray_xray ensemble (no '{ENSEMBLE_FORMAT}' format)")
    return check_ensemble(obj, str(path))


def data_key(record: dict) -> tuple:
    """How a member's own data was loaded: (img_size, limit, seed, dedupe, skip_bad, leakage)."""
    cfg = record["config"]
    return (
        preprocess(record)["img_size"],
        int(cfg.get("limit_per_split", 0)),
        int(cfg.get("seed", 0)),
        cfg.get("dedupe", "off"),
        bool(cfg.get("skip_bad", False)),
        bool(cfg.get("allow_leakage", False)),
    )


def load_keyed_data(spec: str, key: tuple, classes: list[str], cache_root=None):
    """The images a member was trained and validated on: `data.load_data` of `spec` with the
    loading settings of `key` (`data_key`'s tuple) and the member's `classes` order; `cache_root`
    is the prepared-array cache. Returns a `PreparedData`; raises what load_data raises."""
    from .data import load_data  # same floor; imported here so data never needs this module

    img_size, limit_per_split, seed, dedupe, skip_bad, allow_leakage = key
    return load_data(
        spec,
        img_size,
        classes=list(classes),
        skip_bad=skip_bad,
        dedupe=dedupe,
        allow_leakage=allow_leakage,
        limit_per_split=limit_per_split,
        seed=seed,
        cache_root=cache_root,
    )
