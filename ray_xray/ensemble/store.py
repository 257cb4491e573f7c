"""The ensemble file: calibrated member records + weights, loadable with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..train.engine import CHECKPOINT_FORMAT, atomic_save, safe_load

ENSEMBLE_FORMAT = "ray_xray/ensemble/1"


def ensemble_object(members: list[dict], weights: list[float], method: str,
                    classes: list[str], extra: dict | None = None) -> dict:  # fmt: skip
    """members: model records (engine.model_record) each carrying a float "temperature"."""
    if len(members) != len(weights) or not members:
        raise ValueError("an ensemble needs one weight per member and at least one member")
    for m in members:
        if m.get("format") != CHECKPOINT_FORMAT or "temperature" not in m:
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


def save_ensemble(obj: dict, path: str | Path) -> Path:
    atomic_save(obj, path)
    return Path(path)


def is_ensemble(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == ENSEMBLE_FORMAT


def check_ensemble(obj: dict, where: str = "ensemble") -> dict:
    members, weights = obj.get("members"), obj.get("weights")
    if not isinstance(members, list) or not isinstance(weights, list) or not members:
        raise ValueError(f"{where}: ensemble file without members/weights")
    if len(members) != len(weights):
        raise ValueError(f"{where}: {len(members)} members but {len(weights)} weights")
    for m in members:
        if not isinstance(m, dict) or m.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{where}: a member is not a '{CHECKPOINT_FORMAT}' record")
    if not np.isclose(sum(float(w) for w in weights), 1.0, atol=1e-4):
        raise ValueError(f"{where}: weights do not sum to 1")
    return obj


def load_ensemble(path: str | Path) -> dict:
    path, obj = safe_load(path, "ensemble.pt", "ensemble")
    if not is_ensemble(obj):
        raise ValueError(f"{path}: not a ray_xray ensemble (no '{ENSEMBLE_FORMAT}' format)")
    return check_ensemble(obj, str(path))
