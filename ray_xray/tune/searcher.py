"""What Optuna learns from a sweep: the objective the sweep ranks by, and which trials ASHA cut.

Ray's `OptunaSearch` tells the study each trial's *last* reported value and marks every trial
that reported one COMPLETE. The sweep ranks trials by their *best* epoch (results.parquet's
`best_<objective>`, the epoch whose checkpoint is kept), and a trial ASHA stopped at a rung is
no finished trial: TPE should treat it as pruned, by its intermediate values. `SweepSearch`
tells the study the best epoch's value, PRUNED for trials `RungScheduler` stopped before their
last epoch (their per-epoch values are reported as intermediate values, as Ray does), and sets
each Optuna trial's `ray_trial_id` user attribute so optuna.db joins results.parquet.
"""

from __future__ import annotations

import logging
import math

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger("ray_xray.tune")

RAY_TRIAL_ID = "ray_trial_id"  # the Optuna user attribute holding Tune's trial id
# Trials a scheduler stopped before their last epoch, per sweep (its experiment folder). Both the
# scheduler and the searcher live in the Tune driver; they share this by the sweep's key, not by
# a reference, because Tune pickles each on its own (a restored sweep gets two separate copies).
_CUT: dict[str, set[str]] = {}


def cut_trials(key: str) -> set[str]:
    """Trial ids a `RungScheduler` of sweep `key` stopped early (this process's record)."""
    return _CUT.setdefault(key, set())


class RungScheduler(ASHAScheduler):
    """ASHA that records which trials it stopped at a rung (before `max_t`), for `SweepSearch`.
    `key`: the sweep's identity (its experiment folder), shared with the searcher."""

    def __init__(self, *args, key: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """ASHA's decision (CONTINUE/STOP); a trial stopped before its last epoch is recorded
        as cut for this sweep's `key`, which the searcher then marks PRUNED in the study."""
        decision = super().on_trial_result(tune_controller, trial, result)
        at = result.get(self._time_attr)
        if decision == TrialScheduler.STOP and at is not None and at < self._max_t:
            cut_trials(self.key).add(trial.trial_id)
        return decision


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class SweepSearch(OptunaSearch):
    """OptunaSearch telling the study what the sweep ranks by (see the module docstring), and
    starting no new trial once the trials have reported `budget_epochs` epochs in all (0: no
    limit): an equal budget for schedulers that stop trials early and those that do not.
    Running trials finish (ASHA may still stop them): stopping the whole experiment instead
    killed trials in mid start-up, whose Ray Train workers' resources then stayed reserved and
    hung the next sweep in the same Ray session.

    `key`: the sweep's identity shared with its `RungScheduler` (None: no trial is pruned).
    Multi-objective: Optuna takes no intermediate values there; the study gets the values of
    the epoch where the first objective was best (the epoch the sweep ranks the trial by)."""

    def __init__(self, *args, budget_epochs: int = 0, key: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget_epochs = int(budget_epochs)
        self.key = key
        self.epochs_seen: set = set()  # (trial, iteration): Tune repeats a trial's last result
        self.best: dict[str, dict] = {}  # trial id -> the result of its best epoch so far
        self.reported: dict[str, set] = {}  # trial id -> steps told to Optuna as intermediate

    def spent_epochs(self) -> int:
        """Epochs the trials have reported so far, each (trial, iteration) counted once."""
        return len(self.epochs_seen)

    def _metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def _track(self, trial_id: str, result: dict | None) -> None:
        if not result:
            return
        if result.get("training_iteration") is not None:
            self.epochs_seen.add((trial_id, result["training_iteration"]))
        first = self._metrics()[0]
        value = result.get(first)
        if not _finite(value):
            return
        best = self.best.get(trial_id)
        mode = self.mode[0] if isinstance(self.mode, list) else self.mode
        if best is None or (value > best[first] if mode == "max" else value < best[first]):
            self.best[trial_id] = {m: result.get(m) for m in self._metrics()}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Track the epoch and the trial's best result, then OptunaSearch's intermediate
        value; a trial optuna.db already holds as finished (a resume) is skipped, not failed."""
        self._track(trial_id, result)
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            step = result.get("training_iteration")
            self.reported.setdefault(trial_id, set()).add(step)
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            # A resumed sweep restores this searcher from before the kill, while optuna.db
            # already holds the trial as finished (a trial restored after its last epoch
            # re-reports it): nothing is left to tell Optuna, and the trial must not fail.
            self._completed_trials.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell the study how the trial ended: PRUNED when ASHA cut it, FAIL without a finite
        objective, else COMPLETE with the values of its best epoch (not its last)."""
        self._track(trial_id, result)
        if error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        multi = isinstance(self.metric, list)
        step, last = result.get("training_iteration"), None if multi else result.get(self.metric)
        if not multi and _finite(last) and step not in self.reported.get(trial_id, set()):
            # Tune does not pass the result it stops a trial on to on_trial_result.
            try:
                ot_trial.report(last, step)
            except UpdateFinishedTrialError:  # finished in optuna.db before a resume
                self._completed_trials.add(trial_id)
                return None
        best = self.best.get(trial_id)
        if self.key is not None and trial_id in cut_trials(self.key):
            state, values = TrialState.PRUNED, None  # Optuna keeps its last intermediate value
        elif best is None or not all(_finite(best.get(m)) for m in self._metrics()):
            state, values = TrialState.FAIL, None  # no finite objective: nothing to learn from
        else:
            state = TrialState.COMPLETE
            values = [best[m] for m in self._metrics()] if multi else best[self.metric]
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # as Ray does: a study that refuses one value keeps going
            log.warning("optuna: could not record trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def suggest(self, trial_id: str):
        """OptunaSearch's next configuration (a dict), tagged with the Ray trial id in the
        study; ``Searcher.FINISHED`` once `budget_epochs` epochs are spent."""
        if self.budget_epochs and self.spent_epochs() >= self.budget_epochs:
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and config is not None:
            ot_trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return config
