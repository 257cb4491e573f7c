"""One Tune trial = one Ray Train run (TorchTrainer) of the shared training function.

Train V2 refuses `Tuner(TorchTrainer)`; a Tune function that builds and fits a TorchTrainer is
the supported shape. The function itself holds a token CPU; the trainer's workers hold the rest.
"""

from __future__ import annotations

import time

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
    wait_for_tune_to_read_reports()
    trace.mark("trial_end", trial=ctx.get_trial_id())
    if result.error:
        raise result.error


def wait_for_tune_to_read_reports(limit_s: float = 30.0) -> None:
    """Return only once Tune has taken the run's last report from the callback's queue.

    Ray 2.60's function session deadlocks when the trial function ends while a report that
    `TuneReportCallback` queued is still unread: its main thread then forwards that report into
    a result queue nobody empties (seen here twice in CI, in a sweep whose trials end a fraction
    of a second after their last report). Polls the session's private `_inter_actor_queue`;
    when Ray renames it, this returns at once, as before.
    """
    from ray.train._internal.session import get_session

    queue = getattr(get_session(), "_inter_actor_queue", None)
    deadline = time.monotonic() + limit_s
    while queue is not None and time.monotonic() < deadline:
        try:
            if queue.empty():
                return
        except Exception:  # noqa: BLE001 - a queue actor that is gone has nothing left to read
            return
        time.sleep(0.05)
