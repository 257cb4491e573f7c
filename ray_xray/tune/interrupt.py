"""Interrupts are interrupts: SIGINT or SIGTERM stop a sweep, which stays resumable.

Ray Tune catches SIGINT itself (``ray/tune/tune.py``, ``_setup_signal_catching``): it saves the
experiment and returns from ``Tuner.fit`` as if the sweep had ended, so the caller went on to
write results, build an ensemble of the trials done so far and exit 0 ("4 trials (0 failed)"
after 2 of 4), and the same command was then refused as a finished sweep. SIGTERM (what
``kill``, schedulers and containers send) is not caught at all: the driver died mid-write.

`SignalGuard` owns both signals for the whole sweep. Inside ``fitting()`` a signal is handed
to Tune's own stop (its SIGUSR1 handler, which Tune installs for this and which saves the
experiment state once more), with ``TUNE_DISABLE_SIGINT_HANDLER`` set so Tune leaves our
SIGINT handler in place; ``check()`` after ``fit`` then raises `Interrupted`. Outside
``fit`` (loading data, writing results) `Interrupted` is raised at once. A second signal
always raises at once. ``ray_xray.cli.run`` prints the exception's one line and exits
128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's convention.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class Interrupted(KeyboardInterrupt):
    """A sweep stopped by a signal; ``str()`` is the line to print, ``exit_code`` 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class SignalGuard:
    """Catches SIGINT and SIGTERM for a sweep (a context manager; main thread only).

    `hint`: the end of the interrupt's line, how to resume (changeable while it runs: once the
    results are written, what is left is the ensemble step, retried another way).
    """

    def __init__(self, hint: str):
        self.hint = hint
        self.signum: int | None = None
        self._fitting = False
        self.fit_started = False  # set by the sweep when Tune.fit is about to run
        self._saved: dict = {}

    def message(self, signum: int) -> str:
        """The interrupt's one line for signal number `signum`, ending with `hint`."""
        name = signal.Signals(signum).name
        return f"interrupted ({name}): nothing was marked finished; {self.hint}"

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self._fitting and callable(tune_stop):
            # Tune's own lines here name its Python API (Tuner.restore) and trials that never
            # reported; our one line after fit says how to resume this command.
            for name in TUNE_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            tune_stop(signum, frame)  # Tune saves its state and returns from fit
            return
        raise Interrupted(self.signum, self.message(self.signum))

    def __enter__(self) -> SignalGuard:
        # Handlers can only be set in the main thread: a sweep run from another thread (the
        # Python API in a worker thread) keeps the process's handlers, and Tune's.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """The block that runs ``Tuner.fit``: signals go to Tune's stop, not an exception."""
        if not self._saved:  # not the main thread: Tune's own handling, as before
            yield
            return
        # ray.init installs Ray's C++ failure handler for SIGTERM in this process (it aborts
        # the driver, core dump and all, exit 134): take the signals back.
        for s in SIGNALS:
            signal.signal(s, self._handle)
        old = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # keep our handler, not Tune's
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            if old is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old

    def check(self) -> None:
        """Raise Interrupted when a signal arrived (call after ``fit`` returns)."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.message(self.signum))
