"""ray_xray: distributed hyperparameter search on Ray for medical-image classifiers.

Python API (see README, "Python API"; each name is imported on first use, so ``import ray_xray``
loads neither torch nor Ray):

- ``ray_xray.sweep(space, data, trials=..., ...)``: a hyperparameter sweep -> summary dict
- ``ray_xray.fit(model, data, out, epochs=..., ...)``: train one model -> report dict
- ``ray_xray.load(path)``: a model or ensemble -> ``Predictor`` with ``.predict(images)``
  returning (N, K) probabilities and ``.classes``
- ``ray_xray.list_spaces()``: the search space names; ``SweepOptions``, ``TrainConfig``

Command line: ``ray-xray --help`` (or ``python -m ray_xray --help``).
"""

import importlib
import os

# Quiet third-party chatter before anything imports them (set, not forced: users may override).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"

# public name -> module that defines it (imported by __getattr__ on first access)
_LAZY = {
    "sweep": "ray_xray.api",
    "fit": "ray_xray.api",
    "load": "ray_xray.api",
    "Predictor": "ray_xray.api",
    "list_spaces": "ray_xray.spaces",
    "SweepOptions": "ray_xray.tune.service",
    "TrainConfig": "ray_xray.config",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
