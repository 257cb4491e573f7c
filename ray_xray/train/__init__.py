"""Training: one AMP loop (`train_loop_per_worker`) for every model, run by Ray Train.

Names are imported on first use: Ray imports this package in every trial process (the Tune
function and each Ray Train worker), and only the worker needs the training code.
"""

import importlib

_LAZY = {
    "FocalLoss": "ray_xray.train.engine",
    "load_checkpoint": "ray_xray.train.engine",
    "model_from_record": "ray_xray.train.engine",
    "train_and_test": "ray_xray.train.run",
    "init_ray": "ray_xray.train.run",
    "make_trainer": "ray_xray.train.launch",
    "train_loop_per_worker": "ray_xray.train.worker",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ray_xray.train' has no attribute {name!r}")
