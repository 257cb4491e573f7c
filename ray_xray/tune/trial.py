"""One Tune trial = one Ray Train run (TorchTrainer) of the shared training function.

Train V2 refuses `Tuner(TorchTrainer)`; a Tune function that builds and fits a TorchTrainer is
the supported shape. The function itself holds a token CPU; the trainer's workers hold the rest.
"""

from __future__ import annotations

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from .. import trace
from ..config import TrainConfig
from ..train.launch import make_trainer

TOKEN_CPU = 0.01  # the Tune function only waits on its trainer


def trial_fn(config: dict, overrides: dict, runtime: dict) -> None:
    """`config`: what Optuna sampled plus the space's constants; `overrides`: sweep-wide
    TrainConfig settings (data, seed ...); `runtime`: resources, cache location and the
    sweep's prepared data (`data`: (key, ObjectRef), see `worker.shared_data`)."""
    ctx = tune.get_context()
    trace.mark("trial_start", trial=ctx.get_trial_id())
    cfg = TrainConfig.from_dict({**config, **overrides})
    trainer = make_trainer(
        cfg,
        # Deterministic name + storage: a restored trial finds its run and resumes from its
        # last checkpoint instead of starting over.
        name="train",
        # Inside the trial's folder of the experiment (get_trial_dir() is a local staging dir).
        storage=f"{runtime['exp_dir']}/{ctx.get_trial_id()}",
        cpus_per_worker=runtime["cpus_per_worker"],
        gpus_per_worker=runtime["gpus_per_worker"],
        max_failures=runtime["max_failures"],
        cache=runtime.get("cache"),
        callbacks=[TuneReportCallback()],
        runtime={"_data": runtime.get("data"), "_trial": ctx.get_trial_id()},
    )
    result = trainer.fit()
    trace.mark("trial_end", trial=ctx.get_trial_id())
    if result.error:
        raise result.error
