"""Ensembles of a sweep's best trials: temperature-calibrated members, combined on validation.

`python -m ray_xray.ensemble EXPERIMENT_DIR` or `run_ensemble(exp_dir)` (see core.py).
Names are imported on first use, so `ray_xray.predict` (which reads ensemble files through
`ray_xray.ensemble.store`) does not pay for scipy/sklearn/pandas.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "apply_temperature": "calibration", "ece": "calibration", "fit_temperature": "calibration",
    "nll": "calibration", "reliability_bins": "calibration",
    "run_ensemble": "core",
    "attention_maps": "gradcam", "cam_target": "gradcam", "grad_cam": "gradcam",
    "operating_points": "scores", "report": "scores", "threshold_for_specificity": "scores",
    "combine": "select", "greedy_select": "select",
    "ENSEMBLE_FORMAT": "store", "is_ensemble": "store", "load_ensemble": "store",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
