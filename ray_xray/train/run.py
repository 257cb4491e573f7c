"""Driver side of one training run: build the TorchTrainer, train, evaluate the best on test."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import ray
import ray.train

from ..checkpoint import MODEL_FILE, atomic_save, load_state
from ..config import TrainConfig
from ..data import absolute_spec, load_for_config
from ..data.cache import cache_location
from ..data.dataset import loader as make_loader
from ..device import announce, pick_device
from ..inference import inference_setup, model_from_record, predict_proba
from ..io import json_safe, write_atomic
from ..metrics import full_report
from ..ray_env import plain_worker_prefixes, runtime_env
from .launch import make_trainer

log = logging.getLogger("ray_xray.train")


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = True,
    log_to_driver: bool = True,
) -> None:
    """Join RAY_ADDRESS/`address` if given, else start a local Ray quietly.

    The dashboard matters for Tune: without it trials stopped early keep their resources.
    """
    if ray.is_initialized():
        return
    plain_worker_prefixes()  # no colour codes in a log written to a file
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker prints go straight to the console (Ray Train's print patch would log them twice).
    # A cluster we start gets every worker pinned to it; one we join has its own address.
    kwargs = dict(
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        runtime_env=runtime_env(hook=None, local=False) if address else runtime_env(),
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Bind to loopback only: never expose Ray's ports from a laptop or CI box.
        # address="local": a new cluster even when `ray start` left one on this machine (plain
        # ray.init() would join it, and refuse num_cpus).
        with token_auth_said():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                **kwargs,
            )


class _AuthDefaultNote(logging.Filter):
    """Drops Ray's warning that it turned token authentication on by default (Ray 2.60): a new
    user reads a warning as a problem, and it names an opt-out that would weaken the cluster.
    Any other message of that logger (e.g. auth turned off) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


@contextlib.contextmanager
def token_auth_said():
    """Starts a local Ray with Ray's own authentication default, without its console warning
    about that default (`_AuthDefaultNote`)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    note = _AuthDefaultNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def read_state(checkpoint: ray.train.Checkpoint) -> dict:
    """The worker's training state: best model record, per-epoch history, optimiser state."""
    with checkpoint.as_directory() as d:
        return load_state(d)


def evaluate_record(
    record: dict, data, split: str = "test", device: str = "auto"
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Full metrics of a saved model on one split (+ labels and probabilities)."""
    dev = pick_device(device)
    model, feed, precision, channels_last = inference_setup(record, dev)
    loader = make_loader(data.dataset(split), 128, device=dev)
    y, prob, _ = predict_proba(model, loader, dev, precision, channels_last, feed=feed)
    return full_report(y, prob, record["classes"]), y, prob


def train_and_test(
    cfg: TrainConfig, out: str | Path, *, max_failures: int = 2, cache: str | None = None
) -> dict:
    """One run through TorchTrainer; writes config.json (the resolved config, plus
    `precision_choice`: what `auto` chose here and why), best_model.pt, metrics.json in `out`.
    Prints the precision line (`device.announce`)."""
    out = Path(out).resolve()
    cfg.data = absolute_spec(cfg.data)
    cache = cache_location(cache)  # absolute before the workers (another directory) get it
    t0 = time.perf_counter()
    # Load (and cache) the data here first: bad data fails in one line before Ray starts,
    # and the workers then find a ready cache instead of all decoding at once.
    data = load_for_config(cfg, cache)
    out.mkdir(parents=True, exist_ok=True)
    # The workers choose the same on this machine (the probe's verdict is cached per machine);
    # cfg.precision stays as given, so a saved `auto` model runs fast on whatever CPU loads it.
    choice = announce(cfg.precision, pick_device(cfg.device))
    config = {**cfg.to_dict(), "precision_choice": choice.to_dict()}
    write_atomic(out / "config.json", json.dumps(config, indent=2, sort_keys=True))
    init_ray()
    trainer = make_trainer(
        cfg, name="ray", storage=str(out), max_failures=max_failures, cache=cache
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    # The latest checkpoint carries the best model so far and the whole history.
    state = read_state(result.checkpoint)
    record = state["best"]
    atomic_save(record, out / MODEL_FILE)
    train_s = time.perf_counter() - t0
    test, _, _ = evaluate_record(record, data, "test", cfg.device)
    report = {
        "model": cfg.model,
        "data": cfg.data,
        "classes": data.classes,
        "best_epoch": record.get("epoch"),
        "val": record["metrics"],
        "test": test,
        "wall_s": time.perf_counter() - t0,
        "train_wall_s": train_s,
        "params": int(sum(p.numel() for p in model_from_record(record).parameters())),
        "history": state["history"],
    }
    write_atomic(out / "metrics.json", json.dumps(json_safe(absent_as_null(report)), indent=2))
    return report


def absent_as_null(report: dict) -> dict:
    """A copy of train_and_test's report for metrics.json, where a class with no test image has
    recall None (undefined, as `evaluate` writes it), not sklearn's zero_division 0.0. NaN (an AUC
    with a class absent) becomes null through json_safe: JSON has no NaN."""
    test = dict(report["test"])
    support = test.get("support") or {}
    test["recall"] = {
        c: (None if support.get(c, 1) == 0 else v) for c, v in test.get("recall", {}).items()
    }
    return {**report, "test": test}
