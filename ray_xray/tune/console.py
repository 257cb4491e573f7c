"""One compact console line per trial event instead of Tune's periodic tables, and one status
line: trials finished/running/total, the best so far with its trial, elapsed and time left."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ray import tune

from ..metrics import metric_mode

# Off a terminal (CI logs, a file) the status is a plain line after every trial that ends and
# at most this often otherwise; on a terminal it is redrawn in place at the bottom.
STATUS_EVERY_S = 60.0
REDRAW_EVERY_S = 1.0


class EtaEstimate:
    """The time a sweep has left, counting the trials not yet started.

    Cost of one trial-epoch = the trials' busy time (each from its start to its last finished
    epoch: an epoch under way is not counted, as its time is not yet paid for by an epoch)
    / the epochs they have finished; time left = that cost x the epochs still to run
    (the running trials' remaining epochs plus `epochs` for each trial not yet started),
    spread over the concurrent `slots` (no more slots than trials left). An upper bound under
    ASHA, which stops some trials early. All times are seconds on one clock (``time.time()``).

    Args:
        total: trials the sweep will run.  epochs: epochs per trial (a trial's own ``epochs``
            setting wins).  slots: trials that run at once (the resource plan's).
    """

    def __init__(self, total: int, epochs: int, slots: int = 1):
        self.total, self.epochs, self.slots = int(total), max(1, int(epochs)), max(1, int(slots))
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.done: dict[str, int] = {}  # trial -> epochs finished
        self.last: dict[str, float] = {}  # trial -> when its last epoch finished
        self.planned: dict[str, int] = {}  # trial -> epochs it will run

    def started(self, trial: str, t: float, epochs: int | None = None) -> None:
        """`trial` started at time `t` (seconds), to run `epochs` (None: the sweep's)."""
        self.start.setdefault(trial, t)
        self.planned[trial] = max(1, int(epochs or self.epochs))

    def epoch(self, trial: str, epoch: int, t: float) -> None:
        """`trial` finished its epoch number `epoch` (1-based) at time `t` (seconds)."""
        self.start.setdefault(trial, t)
        self.done[trial] = max(self.done.get(trial, 0), int(epoch))
        self.last[trial] = t

    def ended(self, trial: str, t: float) -> None:
        """`trial` ended (finished, stopped or failed) at time `t` (seconds)."""
        self.end.setdefault(trial, t)

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the last trial ends at this pace; None before any epoch finished."""
        finished = sum(self.done.values())
        if not finished:
            return None
        busy = sum(self.last[k] - self.start[k] for k in self.done)
        running = [k for k in self.start if k not in self.end]
        waiting = max(0, self.total - len(self.start))
        left = sum(max(0, self.planned.get(k, self.epochs) - self.done.get(k, 0)) for k in running)
        left += waiting * self.epochs
        slots = max(1, min(self.slots, len(running) + waiting))
        return busy / finished * left / slots


class ConsoleReporter(tune.Callback):
    """Prints trial events and the sweep's status line on stderr.

    Args:
        metric: the objective shown ("val_macro_f1"); higher or lower is better by its name.
        total: trials the sweep will run (0: unknown).
        budget_s: the sweep's wall-clock budget in seconds (0: none); the time left is shown.
        epochs: epochs per trial, for the time left (`EtaEstimate`; a trial's config wins).
        slots: trials that run at once.
    """

    def __init__(
        self,
        metric: str,
        total: int = 0,
        budget_s: float = 0.0,
        epochs: int = 8,
        slots: int = 1,
    ):
        self.metric, self.total, self.budget_s = metric, int(total), float(budget_s or 0)
        self.eta = EtaEstimate(total, epochs, slots)
        self.t0 = time.time()
        self.sign = 1.0 if metric_mode(metric) == "max" else -1.0
        self.started: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> "done" | "error"
        self.best: tuple[float, str] | None = None  # (value, trial id)
        # trial id -> its best objective seen here: a trial reports its best of `cfg.monitor`
        # (best_val_macro_f1), which is not this objective when --objective names another
        self.trial_best: dict[str, float] = {}
        self.tty = sys.stderr.isatty()
        self._drawn = False  # a status line is on screen (terminal only)
        self._last_status = 0.0

    # ------------------------------------------------------------------ output
    def _say(self, text: str) -> None:
        self._clear()
        print(f"[{time.time() - self.t0:6.0f}s] {text}", file=sys.stderr, flush=True)
        if self.tty:
            self._draw()

    def _clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\033[K")
            self._drawn = False

    def _draw(self) -> None:
        sys.stderr.write("\r\033[K" + self.status())
        sys.stderr.flush()
        self._drawn, self._last_status = True, time.time()

    def _status_line(self) -> None:
        """After a trial ends (and now and then): the status, as a line or redrawn."""
        if self.tty:
            self._draw()
        else:
            print(f"[{time.time() - self.t0:6.0f}s] {self.status()}", file=sys.stderr, flush=True)
            self._last_status = time.time()

    def status(self) -> str:
        """``status: 2/8 trials finished (1 failed), 2 running | best val_macro_f1 0.812
        (trial a_00001) | 3m10s elapsed, 6m50s left of the budget``."""
        elapsed = time.time() - self.t0
        n_end = len(self.ended)
        failed = sum(v == "error" for v in self.ended.values())
        running = len(self.started) - sum(t in self.started for t in self.ended)
        total = f"/{self.total}" if self.total else ""
        parts = [
            f"status: {n_end}{total} trials finished"
            + (f" ({failed} failed)" if failed else "")
            + f", {running} running"
        ]
        if self.best is not None:
            parts.append(f"best {self.metric} {_fmt(self.best[0])} (trial {self.best[1]})")
        times = f"{_dur(elapsed)} elapsed"
        left = self.eta.seconds_left(time.time()) if self.total and n_end < self.total else None
        if self.budget_s:
            budget_left = max(0.0, self.budget_s - elapsed)
            times += f", {_dur(budget_left)} left of the budget"
            if left is not None and left < budget_left:
                times += f" (~{_dur(left)} at this pace)"
        elif left is not None:
            times += f", ~{_dur(left)} left at this pace"
        parts.append(times)
        return " | ".join(parts)

    # ------------------------------------------------------------------ Tune's hooks
    def on_step_end(self, iteration, trials, **info):
        """Tune's loop step: redraw the status (a terminal) or print it every STATUS_EVERY_S."""
        now = time.time()
        if self.tty and now - self._last_status >= REDRAW_EVERY_S:
            self._draw()
        elif not self.tty and self.started and now - self._last_status >= STATUS_EVERY_S:
            self._status_line()

    def on_trial_start(self, iteration, trials, trial, **info):
        """One 'start' line with the trial's main sampled settings ('restart' when Tune starts
        it again after a failure); the ETA learns its epochs."""
        cfg = trial.config
        epochs = cfg.get("epochs") if isinstance(cfg.get("epochs"), int | float) else None
        self.eta.started(trial.trial_id, time.time(), epochs)
        shown = {
            k: v
            for k, v in cfg.items()
            if k in ("model", "lr", "batch_size", "focal_gamma") or k.startswith("model.")
        }
        if isinstance(cfg.get("cv_run"), list | tuple):  # a --cv fold run: [candidate, fold]
            shown = {"candidate": cfg["cv_run"][0], "fold": cfg["cv_run"][1]}
        if "refit_seed" in cfg:  # --refit-seeds: the chosen configuration on all of train+val
            shown = {"refit seed": cfg["refit_seed"]}
        pretty = " ".join(f"{k.removeprefix('model.')}={_fmt(v)}" for k, v in shown.items())
        again = trial.trial_id in self.started  # Tune restarts it after a failure
        self.started.add(trial.trial_id)
        self._say(f"{trial.trial_id} {'restart' if again else 'start'}  {pretty}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """One line per reported epoch: the objective, val_loss and the epoch's seconds."""
        value = result.get(self.metric)
        if isinstance(result.get("epoch"), int | float):
            self.eta.epoch(trial.trial_id, result["epoch"], time.time())
        if isinstance(value, int | float) and value == value:  # not NaN
            if self.best is None or self.sign * value > self.sign * self.best[0]:
                self.best = (float(value), trial.trial_id)
            mine = self.trial_best.get(trial.trial_id)
            if mine is None or self.sign * value > self.sign * mine:
                self.trial_best[trial.trial_id] = float(value)
        shown = [f"{self.metric} {_fmt(value)}"]
        if self.metric != "val_loss":
            shown.append(f"val_loss {_fmt(result.get('val_loss'))}")
        if "val_loss" not in result and "train_loss" in result:  # a refit: no validation
            shown = [f"train_loss {_fmt(result['train_loss'])} (a refit: no validation)"]
        if result.get("epoch_s") is not None:
            shown.append(f"{_fmt(result['epoch_s'])}s")
        self._say(f"{trial.trial_id} epoch {result.get('epoch', '?'):>2}  " + "  ".join(shown))

    def on_trial_complete(self, iteration, trials, trial, **info):
        """One 'done' line (epochs run, best objective), then the status line."""
        self.ended[trial.trial_id] = "done"
        self.eta.ended(trial.trial_id, time.time())
        last = trial.last_result or {}
        best = _fmt(last.get("best_" + self.metric, self.trial_best.get(trial.trial_id)))
        ran, planned = last.get("epoch", 0), (trial.config or {}).get("epochs")
        if isinstance(planned, int) and isinstance(ran, int | float) and ran < planned:
            ran = f"{ran} of {planned} (stopped early: by ASHA, its patience or the budget)"
        if "refit_seed" in (trial.config or {}):
            best = "- (a refit keeps its last epoch)"
        self._say(f"{trial.trial_id} done   epochs {ran}  best {self.metric} {best}")
        self._status_line()

    def on_trial_error(self, iteration, trials, trial, **info):
        """One 'ERROR' line with the error's reason and the traceback file, then the status."""
        self.ended[trial.trial_id] = "error"
        self.eta.ended(trial.trial_id, time.time())
        reason, path = _trial_error(trial)
        self._say(f"{trial.trial_id} ERROR  {reason or 'failed'}  (traceback: {path})")
        self._status_line()

    def on_trial_recover(self, iteration, trials, trial, **info):
        """One line when a trial failed and Tune restarts it from its last checkpoint (an
        inline trial's --max-failures): without it the trial just started again, unexplained."""
        reason, path = _trial_error(trial)
        self._say(
            f"{trial.trial_id} failed, restarting from its last checkpoint: "
            f"{reason or 'failed'}  (traceback: {path})"
        )

    def on_experiment_end(self, trials, **info):
        """End the redrawn status line so later output starts on a clean line."""
        if self._drawn:  # leave the last status on screen, then a clean line
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


def _trial_error(trial) -> tuple[str, str]:
    """(the one-line reason, the traceback file) of a trial's last error; "" where unknown."""
    path = str(getattr(trial, "error_file", None) or "")
    try:
        return (error_reason(Path(path).read_text(errors="replace")) if path else ""), path
    except OSError:
        return "", path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _dur(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


TUNE_CONTROLLER_LOG = "ray.tune.execution.tune_controller"


def error_reason(text: str) -> str:
    """The one line that says why a trial failed, from its error text (Ray's chained
    traceback): the last line naming an error, at most 300 characters ("" for no text)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(tag in ln for tag in ("Error", "Diverged", "Exception", "loss became")):
            return ln[:300]
    return lines[-1][:300] if lines else ""


class _NoTrialTraceback(logging.Filter):
    """Drops Tune's console traceback of a failed trial (about 60 lines each, through Ray's
    worker internals): `ConsoleReporter` prints one line with the reason and the error file,
    which keeps the whole traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed for trial")


SNAPSHOT_WARNING = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


@contextlib.contextmanager
def ray_console_quiet() -> Iterator[None]:
    """Ray Tune's own console output off for the block (the sweep's `Tuner.fit`).

    With verbose=0, Tune 2.60's default ("new") output still prints a start banner: a table
    and a `tensorboard --logdir` naming Ray's temporary staging folder in its session
    directory (the event files are copied to STORAGE/NAME, which the sweep's last lines name).
    Its legacy output (``RAY_AIR_NEW_OUTPUT=0``, read when `fit` starts) prints nothing at
    verbose=0; `ConsoleReporter` prints every trial event. A callback that swallowed the
    banner instead left Ray's own reporter without a start time: it crashed the sweep on the
    first trial error. Tune's traceback of each failed trial is left out too
    (`_NoTrialTraceback`). So is the warning that experiment snapshots came less than 5 s
    apart: Tune forces one whenever a trial has checkpointed `num_to_keep` (1) times, which an
    inline trial does every epoch it saves (by design: the snapshot then names the checkpoint
    Tune kept). All are put back afterwards.
    """
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    quiet_sync = SNAPSHOT_WARNING not in os.environ
    if quiet_sync:
        os.environ[SNAPSHOT_WARNING] = "0"
    controller_log, no_traceback = logging.getLogger(TUNE_CONTROLLER_LOG), _NoTrialTraceback()
    controller_log.addFilter(no_traceback)
    try:
        yield
    finally:
        controller_log.removeFilter(no_traceback)
        if quiet_sync:
            os.environ.pop(SNAPSHOT_WARNING, None)
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old
