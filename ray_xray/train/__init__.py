"""Training: one AMP loop (`train_loop_per_worker`) for every model, run by Ray Train."""

from .engine import FocalLoss, load_checkpoint, model_from_record
from .run import fit, init_ray, make_trainer
from .worker import train_loop_per_worker

__all__ = [
    "FocalLoss",
    "fit",
    "init_ray",
    "load_checkpoint",
    "make_trainer",
    "model_from_record",
    "train_loop_per_worker",
]
