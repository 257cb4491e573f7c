"""The search service: `python -m ray_xray.tune --space vit`.

`SweepOptions` and `run_sweep` are imported on first use: every trial's Tune function process
imports this package (for `trial.trial_fn`) and must not pay for Optuna and the service.
`run_sweep` is the search (trials, results, best_trials.json); the command also runs the
post-sweep steps (ensemble, --external scoring): `ray_xray.pipeline.run_full_sweep`.
"""

import importlib

__all__ = ["SweepOptions", "run_sweep"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("ray_xray.tune.service"), name)
    raise AttributeError(f"module 'ray_xray.tune' has no attribute {name!r}")
