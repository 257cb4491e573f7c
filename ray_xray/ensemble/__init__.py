"""Ensembles of a sweep's best trials: temperature-calibrated members, combined on validation.

`python -m ray_xray.ensemble EXPERIMENT_DIR` or `run_ensemble(exp_dir)` (see core.py).
Names are imported on first use (scipy/sklearn/pandas are slow to import). Calibration,
scores and Grad-CAM live in neutral modules (`ray_xray.calibration`, `.scores`, `.gradcam`)
and the ensemble file in `ray_xray.checkpoint`, so the report and `evaluate` never import
this package; the names are kept here for callers of the ensemble's API.
"""

from __future__ import annotations

import importlib

_C, _S, _G, _K = (
    "ray_xray.calibration",
    "ray_xray.scores",
    "ray_xray.gradcam",
    "ray_xray.checkpoint",
)
_EXPORTS = {
    "apply_temperature": _C,
    "ece": _C,
    "fit_temperature": _C,
    "nll": _C,
    "reliability_bins": _C,
    "run_ensemble": ".core",
    "attention_maps": _G,
    "cam_target": _G,
    "grad_cam": _G,
    "operating_points": _S,
    "report": _S,
    "threshold_for_specificity": _S,
    "ensemble_proba": "ray_xray.inference",
    "greedy_select": ".select",
    "ENSEMBLE_FORMAT": _K,
    "is_ensemble": _K,
    "load_ensemble": _K,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
