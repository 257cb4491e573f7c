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


class ConsoleReporter(tune.Callback):
    """Prints trial events and the sweep's status line on stderr.

    Args:
        metric: the objective shown ("val_macro_f1"); higher or lower is better by its name.
        total: trials the sweep will run (0: unknown).
        budget_s: the sweep's wall-clock budget in seconds (0: none); the time left is shown.
    """

    def __init__(self, metric: str, total: int = 0, budget_s: float = 0.0):
        self.metric, self.total, self.budget_s = metric, int(total), float(budget_s or 0)
        self.t0 = time.time()
        self.sign = 1.0 if metric_mode(metric) == "max" else -1.0
        self.started: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> "done" | "error"
        self.best: tuple[float, str] | None = None  # (value, trial id)
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
        if self.budget_s:
            times += f", {_dur(max(0.0, self.budget_s - elapsed))} left of the budget"
        elif self.total and n_end and n_end < self.total:
            times += f", ~{_dur(elapsed / n_end * (self.total - n_end))} left at this pace"
        parts.append(times)
        return " | ".join(parts)

    # ------------------------------------------------------------------ Tune's hooks
    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        if self.tty and now - self._last_status >= REDRAW_EVERY_S:
            self._draw()
        elif not self.tty and self.started and now - self._last_status >= STATUS_EVERY_S:
            self._status_line()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        cfg = trial.config
        shown = {
            k: v
            for k, v in cfg.items()
            if k in ("model", "lr", "batch_size", "focal_gamma") or k.startswith("model.")
        }
        pretty = " ".join(f"{k.removeprefix('model.')}={_fmt(v)}" for k, v in shown.items())
        self._say(f"{trial.trial_id} start  {pretty}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, int | float) and value == value:  # not NaN
            if self.best is None or self.sign * value > self.sign * self.best[0]:
                self.best = (float(value), trial.trial_id)
        self._say(
            f"{trial.trial_id} epoch {result.get('epoch', '?'):>2}  {self.metric} {_fmt(value)}  "
            f"val_loss {_fmt(result.get('val_loss'))}  {_fmt(result.get('epoch_s'))}s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "done"
        last = trial.last_result or {}
        best = _fmt(last.get("best_" + self.metric))
        self._say(
            f"{trial.trial_id} done   epochs {last.get('epoch', 0)}  best {self.metric} {best}"
        )
        self._status_line()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "error"
        path = str(trial.error_file or "")
        try:
            reason = error_reason(Path(path).read_text(errors="replace")) if path else ""
        except OSError:
            reason = ""
        self._say(f"{trial.trial_id} ERROR  {reason or 'failed'}  (traceback: {path})")
        self._status_line()

    def on_experiment_end(self, trials, **info):
        if self._drawn:  # leave the last status on screen, then a clean line
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


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
