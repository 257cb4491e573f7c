"""What every local Ray this project starts gets: worker env vars and the address pin.

Kept apart from `train.run` on purpose: Ray imports the setup hook's module in *every* worker
process (idle ones, Tune's and Train's actors), so it must import nothing heavier than ray.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import ray

# Ray Train gives a worker group 60 s to get its resources, then tears it down and retries.
# When one trial's resources free only as the previous trial ends (every sweep on a small
# machine), that churn was seen to leak placement groups and hang the sweep; waiting is right.
RAY_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800"}

# Only for a Ray this project starts on one machine (a cluster we join keeps Ray's defaults).
# Every trial's Ray Train run starts a preemption-watcher actor (one more process, ~0.4 s of
# CPU) that polls for node drains, which a single-machine Ray never has. Ray Train's controller
# polls its workers every 2 s by default, and a trial's start and end each wait for a poll:
# 0.5 s took 1.4 s off the median trial overhead (benchmarks/RESULTS.md section 1, 13.0 s vs
# 14.4 s). A trial that ends that fast must wait for Tune to read its last report
# (tune/trial.py: wait_for_tune_to_read_reports), else Ray 2.60's function session deadlocks.
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def plain_worker_prefixes(streams=None) -> bool:
    """Ray's ``(RayTrainWorker pid=...)`` prefixes without colour codes when the console is
    not a terminal: Ray wraps them in ANSI escapes (``\x1b[36m``) unless ``RAY_COLOR_PREFIX``
    is ``0``, read each time it prints a worker line (``ray/_private/worker.py``,
    ``print_worker_logs``), so a log redirected to a file got the escapes. A value the user set
    is kept. `streams`: the driver's (default stdout and stderr). Returns whether it set it."""
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    on_terminal = all(getattr(s, "isatty", lambda: False)() for s in streams)
    if on_terminal or "RAY_COLOR_PREFIX" in os.environ:
        return False
    os.environ["RAY_COLOR_PREFIX"] = "0"
    return True


def pin_ray_address() -> None:
    """Worker setup hook: point Ray's state API in this worker at its own cluster.

    With a second local Ray on the machine (a colleague's sweep, a benchmark), the state API
    cannot tell which instance to ask ("Found multiple active Ray instances"), and Ray Train's
    placement-group cleaner then never frees the CPUs of a trial Tune stopped: the next trial
    waits forever (seen here). An explicit RAY_ADDRESS removes the guess.
    """
    if not os.environ.get("RAY_ADDRESS"):
        try:
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - never break a worker over this
            pass


def runtime_env(
    extra_env: dict | None = None, hook: Callable | None = pin_ray_address, local: bool = True
) -> dict:
    """A fresh runtime_env for ray.init, with `hook` as every worker's setup hook (None: none);
    `local`: a Ray started here (adds LOCAL_ENV), not a cluster joined by address.

    Fresh matters: Ray writes the setup hook's key into the env_vars dict it is given, and a
    shared dict would carry it into the next ray.init."""
    env: dict = {"env_vars": {**RAY_ENV, **(LOCAL_ENV if local else {}), **(extra_env or {})}}
    if hook is not None:
        env["worker_process_setup_hook"] = hook
    return env


# What Ray Tune copies from the driver's environment into every trial actor's runtime_env
# (ray.tune.execution.class_cache, Ray 2.60), which Ray's runtime_env agent writes in clear to
# its session log (logs/runtime_env_agent.log): found by the secret grep of test_storage.
CLOUD_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
)


@contextlib.contextmanager
def cloud_keys_kept_out_of_ray_logs() -> Iterator[None]:
    """Ray Tune does not put AWS keys into the trial actors' runtime_env during the block (a
    sweep's `Tuner.fit`); they stay in the processes' inherited environment only.

    Nothing needs them there: a local Ray's workers inherit the driver's environment (the
    driver started Ray), and the nodes of `cluster/g5.yaml` reach S3 through their IAM
    instance profiles. Ray's list is put back afterwards.
    """
    from ray.tune.execution import class_cache

    kept = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = set(kept) - set(CLOUD_KEYS)
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = kept
