"""One Tune trial = one run of the shared training function, by one of two runners.

- `torchtrainer`: the trial function builds and fits a TorchTrainer (Train V2 refuses
  `Tuner(TorchTrainer)`; a Tune function that fits one is the supported shape). The function
  holds a token CPU; the trainer's workers hold the rest. Needed for several workers (DDP).
- `inline`: a single-worker trial runs the training function in the Tune function's own process
  (`worker.train_in_tune_trial`), holding the trial's CPUs and GPU itself. It skips Ray Train's
  controller, worker group and worker process: measured on 2 cores (benchmarks/RESULTS.md,
  section 1), they took 12.8 s of a 3-epoch torchtrainer trial's 16.5 s of overhead (inline:
  4.1 s). One worker has no gradients to all-reduce, and Tune restores a failed trial from its
  last checkpoint as Ray Train did.

`plan_runner` picks one for a sweep (`--trial-runner`, default `auto`).
"""

from __future__ import annotations

import dataclasses
import time

from ray import tune

from .. import trace
from ..config import TrainConfig
from .options import RUNNERS

TOKEN_CPU = 0.01  # a torchtrainer trial's function only waits on its trainer


def plan_runner(runner: str, workers_per_trial: int, gpus_per_trial: float) -> str:
    """The runner a sweep's trials use: `inline` or `torchtrainer`.

    `auto`: inline for single-worker CPU trials; torchtrainer for several workers per trial
    (DDP needs Ray Train's worker group) and, until the inline runner has been checked on a GPU
    node (`make gpu-check`), for GPU trials. Raises ValueError for an unknown runner, or inline
    with several workers."""
    if runner not in RUNNERS:
        raise ValueError(f"--trial-runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if runner == "inline" and workers_per_trial > 1:
        raise ValueError(
            f"--trial-runner inline runs one worker per trial, got --num-workers "
            f"{workers_per_trial} (use torchtrainer, or auto)"
        )
    if runner != "auto":
        return runner
    return "inline" if workers_per_trial == 1 and not gpus_per_trial else "torchtrainer"


def trial_fn(config: dict, overrides: dict, runtime: dict) -> None:
    """`config`: what Optuna sampled plus the space's constants; `overrides`: sweep-wide
    TrainConfig settings (data, seed ...); `runtime`: the runner, resources, cache location and
    the sweep's prepared data (`data`: (key, ObjectRef), see `worker.shared_data`)."""
    trial = tune.get_context().get_trial_id()
    trace.mark("trial_start", trial=trial)
    cfg = TrainConfig.from_dict({**config, **overrides}).with_model_size()
    if runtime.get("runner") == "inline":
        run_inline(cfg, runtime, trial)
    else:
        run_torchtrainer(cfg, runtime, trial)
    trace.mark("trial_end", trial=trial)


def run_inline(cfg: TrainConfig, runtime: dict, trial: str) -> None:
    """The training function in this process; reports and checkpoints go to Tune."""
    from ..device import threads_for
    from ..train.worker import train_in_tune_trial  # the training code, only where it runs

    if not runtime["gpus_per_worker"] and cfg.device != "cpu":
        # A trial that holds no GPU sees every GPU of its node (Ray sets CUDA_VISIBLE_DEVICES
        # only for the GPUs it assigns): it would take one that another trial holds.
        if cfg.device == "cuda":
            raise ValueError("device=cuda but the trial holds no GPU: pass --gpus-per-trial")
        cfg = dataclasses.replace(cfg, device="cpu")
    exp_dir = runtime.get("exp_dir", "")
    train_in_tune_trial(
        cfg,
        {
            "_threads": threads_for(runtime["cpus_per_worker"]),
            "_cache": runtime.get("cache"),
            "_data": runtime.get("data"),
            "_trial": trial,
            # Save on the storage's disk (Tune copies the state from there), not in /tmp.
            "_scratch": f"{exp_dir}/{trial}" if exp_dir and "://" not in exp_dir else None,
        },
    )


def run_torchtrainer(cfg: TrainConfig, runtime: dict, trial: str) -> None:
    """A TorchTrainer run of the training function; its reports reach Tune through a callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.launch import make_trainer

    trainer = make_trainer(
        cfg,
        # Deterministic name + storage: a restored trial finds its run and resumes from its
        # last checkpoint instead of starting over.
        name="train",
        # Inside the trial's folder of the experiment (get_trial_dir() is a local staging dir).
        storage=f"{runtime['exp_dir']}/{trial}",
        cpus_per_worker=runtime["cpus_per_worker"],
        gpus_per_worker=runtime["gpus_per_worker"],
        max_failures=runtime["max_failures"],
        cache=runtime.get("cache"),
        callbacks=[TuneReportCallback()],
        runtime={"_data": runtime.get("data"), "_trial": trial},
    )
    result = trainer.fit()
    wait_for_tune_to_read_reports()
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
