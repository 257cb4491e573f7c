"""W&B logging for sweeps that never hands the API key to Ray.

Ray's `WandbLoggerCallback` (ray 2.60) starts one logger actor per trial with
``runtime_env={"env_vars": {"WANDB_API_KEY": ...}}``, and Ray writes every runtime_env it sets
up to its session logs (``runtime_env_agent.log``, in clear). `KeySafeWandbCallback` starts
the same actors with no key in their runtime_env; each actor gets the key as a constructor
argument (held by Ray in memory, never logged) and sets it in its own process environment
just before ``wandb.init``. `key_hidden` keeps the key out of the environment that the
processes of a local Ray cluster inherit: the key stays in the sweep's driver process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ray.air.integrations.wandb import (
    WANDB_ENV_VAR,
    WandbLoggerCallback,
    _WandbLoggingActor,
)

OFFLINE_FINISH_TIMEOUT_S = 120
"""How long the sweep waits at its end for offline logger actors to finish: writing a local
run takes seconds; Ray's default (30 min) is sized for uploads."""


@contextlib.contextmanager
def key_hidden() -> Iterator[None]:
    """Run the block (e.g. ``ray.init``, which forks Ray's processes) without WANDB_API_KEY in
    this process's environment; it is put back afterwards, even on error."""
    key = os.environ.pop(WANDB_ENV_VAR, None)
    try:
        yield
    finally:
        if key is not None:
            os.environ[WANDB_ENV_VAR] = key


class _KeyedLoggingActor(_WandbLoggingActor):
    """Ray's per-trial W&B logger, given the key as an argument instead of a runtime_env."""

    def __init__(self, *args, api_key: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._api_key = api_key

    def run(self):
        if self._api_key:  # this actor's own process (actors do not share worker processes)
            os.environ[WANDB_ENV_VAR] = self._api_key
        return super().run()


class KeySafeWandbCallback(WandbLoggerCallback):
    """`WandbLoggerCallback` (same arguments, passed to ``wandb.init``) whose logger actors get
    the API key without a runtime_env. The key is read where Ray reads it (``api_key``,
    ``api_key_file``, WANDB_API_KEY, ``wandb login``) in `setup`, in the driver."""

    _logger_actor_cls = _KeyedLoggingActor

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        # Ray copies WANDB_API_KEY from os.environ into the actors' runtime_env when it builds
        # their class (first trial): hide it for that call and hand it over as an argument.
        with key_hidden():
            return super()._start_logging_actor(
                trial, exclude_results, api_key=getattr(self, "_key", None), **wandb_init_kwargs
            )

    def setup(self, *args, **kwargs):
        """Ray's setup (its API-key lookup), with WANDB_MODE set first when offline (no key
        needed) and the key kept on this callback, not in the environment of Ray's actors."""
        mode = self.kwargs.get("mode")
        if mode in ("offline", "disabled"):
            # What tells Ray's key lookup that no key is needed. The sweep sets it when it
            # builds this callback; a resumed sweep gets this callback back from Tune's pickle.
            os.environ["WANDB_MODE"] = mode
        super().setup(*args, **kwargs)  # Ray's key lookup: sets WANDB_API_KEY when it finds one
        self._key = None if mode in ("offline", "disabled") else os.environ.get(WANDB_ENV_VAR)

    def log_trial_end(self, trial, failed: bool = False):
        """Stop the trial's logger actor when it still runs (Ray's assumes it always does)."""
        # Ray's callback assumes the trial's logger actor is still there. One whose `run` has
        # already ended (W&B refused the key, wandb crashed) was cleaned up at the previous
        # trial's end, and the KeyError here crashed the whole sweep at this trial's end.
        if trial in self._trial_queues:
            self._signal_logging_actor_stop(trial=trial)
        self._cleanup_logging_actors()

    def on_experiment_end(self, trials, **info):
        """Tell every logger actor still running to finish, then Ray's wait for them (at most
        OFFLINE_FINISH_TIMEOUT_S seconds offline)."""
        # Ray's callback waits (up to `upload_timeout`) for every logger actor to finish but
        # never tells them to: an actor whose trial got no `log_trial_end` (a result logged
        # after the trial ended restarts one) waits on its queue for an END item forever.
        # Seen as a hung sweep in CI. Send END to every actor still running, then wait.
        for trial in list(self._trial_logging_actors):
            self._signal_logging_actor_stop(trial=trial)
        if self.kwargs.get("mode") in ("offline", "disabled"):
            self._upload_timeout = min(self._upload_timeout, OFFLINE_FINISH_TIMEOUT_S)
        super().on_experiment_end(trials, **info)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # Tune pickles its callbacks: never with the key
        state.pop("_key", None)
        return state
