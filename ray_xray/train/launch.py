"""The TorchTrainer for one run, built without importing the training code.

A Tune trial's function process only builds and fits a TorchTrainer; importing the training
modules there (engine, data pipeline, albumentations, metrics) cost each trial about 0.7 s of
CPU before its first epoch on a 2-core machine (measured with `python -X importtime`). This module
imports only Ray Train, torch (TorchTrainer needs it), the config and `device` (torch only for
its threads rule); `train_fn` imports the
training loop when a Ray Train worker runs it.
"""

from __future__ import annotations

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2.api.config import LoggingConfig

from ..config import TrainConfig
from ..device import threads_for


class TorchTrainerWithoutRayData(TorchTrainer):
    """TorchTrainer without Ray Data's per-run machinery when no Ray Dataset is passed.

    Ray Train 2.60 adds its `DatasetsCallback` to every run: it starts a `DatasetManager` actor
    (one more process per trial) and sends Ray Data's context to every worker (which imports
    Ray Data there), though our workers read their data from the prepared cache or the object
    store. With `datasets` given, nothing is removed. Relies on `_create_default_callbacks`, a
    private method: tests/test_overhead.py checks it still exists and what it returns.
    """

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [cb for cb in callbacks if type(cb).__name__ != "DatasetsCallback"]


def train_fn(config: dict) -> None:
    """Ray Train's training function: `worker.train_loop_per_worker`, imported in the worker."""
    from .worker import train_loop_per_worker

    train_loop_per_worker(config)


def worker_resources(cfg: TrainConfig, cpus_total: float | None = None) -> tuple[dict, int]:
    """CPUs per DDP worker (and torch threads): share what the cluster has."""
    cpus_total = cpus_total or ray.cluster_resources().get("CPU", 1)
    per = max(1.0, float(int(cpus_total // cfg.num_workers)))
    return {"CPU": per}, threads_for(per)


def wants_gpu(cfg: TrainConfig, gpus_per_worker: float) -> bool:
    """Whether the run's workers need a GPU: GPUs were requested, `device` is cuda, or `device`
    is auto and this process sees one (a plain `train` run on a GPU machine)."""
    if gpus_per_worker > 0 or cfg.device == "cuda":
        return True
    if cfg.device != "auto":
        return False
    import torch  # already imported by ray.train.torch

    return torch.cuda.is_available()


def make_trainer(
    cfg: TrainConfig,
    name: str,
    storage: str,
    *,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float = 0.0,
    max_failures: int = 2,
    cache: str | None = None,
    callbacks: list | None = None,
    runtime: dict | None = None,
) -> TorchTrainerWithoutRayData:
    """A TorchTrainer running `train_fn` on `cfg.num_workers` workers, checkpoints in
    `storage/name`. `runtime`: extra `_`-prefixed options for the workers (see
    `worker.split_config`), e.g. `_data` (the sweep's prepared data in Ray's object store)."""
    if cpus_per_worker is None:
        resources, threads = worker_resources(cfg)
    else:
        resources, threads = {"CPU": cpus_per_worker}, threads_for(cpus_per_worker)
    use_gpu = wants_gpu(cfg, gpus_per_worker)
    if use_gpu and gpus_per_worker:
        resources["GPU"] = gpus_per_worker  # fractional GPUs share one card between trials
    loop_config = {**cfg.to_dict(), "_threads": threads, "_cache": cache, **(runtime or {})}
    mode = "min" if cfg.monitor == "val_loss" else "max"
    return TorchTrainerWithoutRayData(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            # Keep the best checkpoint; Ray also always keeps the latest (for restarts).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                # a refit (cv_fold -1) reports no validation metric: keep its latest
                checkpoint_score_attribute=None if cfg.cv_fold == -1 else cfg.monitor,
                checkpoint_score_order=mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our own epoch line is enough
            callbacks=callbacks or [],
        ),
    )
