"""One compact console line per trial event instead of Tune's periodic tables."""

from __future__ import annotations

import sys
import time

from ray import tune


class ConsoleReporter(tune.Callback):
    def __init__(self, metric: str):
        self.metric, self.t0 = metric, time.time()

    def _say(self, text: str) -> None:
        print(f"[{time.time() - self.t0:6.0f}s] {text}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
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
        self._say(
            f"{trial.trial_id} epoch {result.get('epoch', '?'):>2}  {self.metric} {_fmt(value)}  "
            f"val_loss {_fmt(result.get('val_loss'))}  {_fmt(result.get('epoch_s'))}s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self._say(
            f"{trial.trial_id} done   epochs {last.get('epoch', 0)}  best {self.metric} {_fmt(last.get('best_' + self.metric))}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = str(trial.error_file or "")
        self._say(f"{trial.trial_id} ERROR  (see {reason})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
