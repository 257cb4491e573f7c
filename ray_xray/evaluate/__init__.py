"""Evaluate any model or ensemble on any labelled set: `python -m ray_xray.evaluate`.

`evaluate(checkpoint, data, split)` (core.py) writes metrics.json (the sweep report's metrics
with stratified bootstrap intervals, operating points, a shift check against the model's own
test split, an optional stress test) and report.html. Names are imported on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate": "core",
    "EvalResult": "result",
    "run_stress": "stress",
    "perturb": "stress",
    "PERTURBATIONS": "stress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
