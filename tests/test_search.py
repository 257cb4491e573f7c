"""What the searcher sees: `--set` pins (never sampled), the objective Optuna records, pruning."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import optuna
import pytest

from ray_xray.spaces import SpaceError, load_space
from ray_xray.tune import service
from ray_xray.tune import trial as tune_trial


class _Stop(Exception):
    """Raised by the fake Tuner: the sweep is built, nothing runs."""


def _built_sweep(monkeypatch, tmp_path, **opts) -> tuple[object, dict]:
    """run_sweep up to `Tuner(...)`, Ray replaced by stand-ins: (search algorithm, trial_fn's
    keyword arguments)."""
    got: dict = {}
    monkeypatch.setattr(service, "init_ray", lambda **kw: None)
    monkeypatch.setattr(
        service,
        "plan_resources",
        lambda o: {
            "runner": o.trial_runner,
            "cpus_per_trial": 1.0,
            "cpus_per_worker": 1.0,
            "gpus_per_worker": 0.0,
            "max_concurrent": 1,
            "cluster_cpus": 1.0,
            "cluster_gpus": 0.0,
        },
    )

    def with_parameters(fn, **kwargs):
        got["kwargs"] = kwargs
        return fn

    class Tuner:
        can_restore = staticmethod(lambda path: False)

        def __init__(self, trainable, tune_config, run_config):
            got["search"] = tune_config.search_alg

        def fit(self):
            raise _Stop

    monkeypatch.setattr(service.tune, "with_parameters", with_parameters)
    monkeypatch.setattr(service.tune, "with_resources", lambda fn, res: fn)
    monkeypatch.setattr(service.tune, "Tuner", Tuner)
    with pytest.raises(_Stop):
        service.run_sweep(
            service.SweepOptions(storage=str(tmp_path), data="synthetic:chest3:8", **opts)
        )
    search = got["search"]
    return getattr(search, "searcher", search), got["kwargs"]


def _trained_config(monkeypatch, config: dict, kwargs: dict):
    """The TrainConfig trial_fn trains with for a sampled `config`, by the sweep's runner
    (inline by default on CPU: `worker.train_in_tune_trial`; else a TorchTrainer)."""
    from ray.tune.integration import ray_train

    from ray_xray.train import launch, worker

    seen = {}

    def make_trainer(cfg, **kw):
        seen["cfg"] = cfg
        return types.SimpleNamespace(fit=lambda: types.SimpleNamespace(error=None))

    monkeypatch.setattr(launch, "make_trainer", make_trainer)
    monkeypatch.setattr(worker, "train_in_tune_trial", lambda cfg, rt: seen.update(cfg=cfg))
    monkeypatch.setattr(tune_trial, "wait_for_tune_to_read_reports", lambda: None)
    monkeypatch.setattr(ray_train, "TuneReportCallback", lambda: None)
    monkeypatch.setattr(
        tune_trial.tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t")
    )
    tune_trial.trial_fn(config, **kwargs)
    return seen["cfg"]


def test_set_on_a_tuned_key_pins_it_so_the_study_never_samples_it(monkeypatch, tmp_path):
    """--set lr=... on a space that tunes lr: every trial trains with that lr and the study has
    no lr parameter (it used to sample one, record it, and train with --set's value instead)."""
    search, kwargs = _built_sweep(
        monkeypatch,
        tmp_path,
        space="resnet18",
        smoke_test=True,
        name="pin",
        settings={"lr": 1.0e-3, "model.dropout": 0.25},
    )
    assert kwargs["runtime"]["runner"] == "inline"  # auto, for a one-worker CPU sweep
    for trial_id in ("a", "b"):
        config = search.suggest(trial_id)
        cfg = _trained_config(monkeypatch, config, kwargs)
        tt = {**kwargs, "runtime": {**kwargs["runtime"], "runner": "torchtrainer"}}
        # The same for either runner, but that an inline trial holding no GPU trains on the CPU.
        assert cfg.device == "cpu"
        assert dataclasses.replace(_trained_config(monkeypatch, config, tt), device="cpu") == cfg
        assert cfg.lr == 1.0e-3 and cfg.model_kwargs["dropout"] == 0.25
        sampled = search._ot_trials[trial_id].params
        assert "lr" not in sampled and "model.dropout" not in sampled
        assert "weight_decay" in sampled  # what --set leaves alone is still tuned
        assert cfg.weight_decay == sampled["weight_decay"]
    study = optuna.load_study(study_name="pin", storage=f"sqlite:///{tmp_path}/pin/optuna.db")
    assert all("lr" not in t.params for t in study.trials) and len(study.trials) == 2
    assert "--set lr=0.001" in (tmp_path / "pin" / "space.yaml").read_text().splitlines()[0]


def test_set_pins_like_smoke_and_refuses_bad_values():
    space = load_space("all")
    vit_only = space.with_settings({"model": "vit", "model.dim": 512})
    assert vit_only.models == ["vit"] and list(vit_only.conditional) == ["vit"]
    assert vit_only.conditional["vit"].fixed["model.dim"] == 512
    assert "model.dim" not in vit_only.conditional["vit"].params
    # A model setting that only some models take is pinned for those models only.
    dim = space.with_settings({"model.dim": 512})
    assert dim.models == space.models and "model.dim" not in dim.fixed
    assert dim.resolve(dim.default_config("vit")).model_kwargs["dim"] == 512
    assert "dim" not in dim.resolve(dim.default_config("resnet18")).model_kwargs
    # The start point (a resnet18 recipe) loses a pinned key; a start of another model goes.
    assert "lr" not in space.with_settings({"lr": 0.01}).start[0]
    assert space.with_settings({"model": "vit"}).start == []
    for bad, message in [
        ({"lrr": 0.1}, "did you mean 'lr'"),
        ({"lr": "fast"}, "--set lr: must be a number"),
        ({"model": "vitt"}, "did you mean 'vit'"),
        ({"model.nope": 1}, "not a hyperparameter of any model"),
    ]:
        with pytest.raises(SpaceError, match=message):
            space.with_settings(bad)


def test_study_records_the_best_epoch_pruned_cuts_and_ray_ids():
    """No Ray: Tune's calls as it makes them. A trial that ran to its end is COMPLETE with its
    best epoch's value; one the scheduler cut at a rung is PRUNED with every epoch reported as
    an intermediate value (Tune never passes the stopping result to on_trial_result)."""
    from ray.tune.schedulers import TrialScheduler

    from ray_xray.tune.searcher import RAY_TRIAL_ID, RungScheduler, SweepSearch

    space = load_space("resnet18", smoke=True)
    search = SweepSearch(space=space.define_by_run, metric="val_macro_f1", mode="max", key="k1")
    asha = RungScheduler(
        key="k1",
        time_attr="epoch",
        metric="val_macro_f1",
        mode="max",
        max_t=3,
        grace_period=1,
        reduction_factor=3,
    )
    trials = {t: types.SimpleNamespace(trial_id=t) for t in ("full", "cut", "bad")}
    for t, trial in trials.items():
        assert isinstance(search.suggest(t), dict)
        asha.on_trial_add(None, trial)

    def epoch(t, e, value):
        result = {"epoch": e, "training_iteration": e, "val_macro_f1": value}
        decision = asha.on_trial_result(None, trials[t], result)
        if decision != TrialScheduler.STOP:
            search.on_trial_result(t, result)
        return decision, result

    for e, value in ((1, 0.5), (2, 0.8), (3, 0.6)):  # best at epoch 2, not the last
        decision, last = epoch("full", e, value)
    assert decision == TrialScheduler.STOP  # ASHA stops every trial at max_t: not a cut
    search.on_trial_complete("full", last)
    decision, last = epoch("cut", 1, 0.2)  # below the rung's cutoff (0.5)
    assert decision == TrialScheduler.STOP
    search.on_trial_complete("cut", last)
    search.on_trial_complete("bad", error=True)

    study = search._ot_study
    by_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in study.trials}
    assert set(by_id) == {"full", "cut", "bad"}
    full, cut, bad = by_id["full"], by_id["cut"], by_id["bad"]
    assert full.state.name == "COMPLETE" and full.value == 0.8
    assert full.intermediate_values == {1: 0.5, 2: 0.8, 3: 0.6}
    assert cut.state.name == "PRUNED" and cut.intermediate_values == {1: 0.2}
    assert bad.state.name == "FAIL"
    assert study.best_trial.user_attrs[RAY_TRIAL_ID] == "full"


def test_multi_objective_records_the_epoch_where_the_first_objective_was_best():
    from ray_xray.tune.searcher import SweepSearch

    space = load_space("resnet18", smoke=True)
    search = SweepSearch(
        space=space.define_by_run, metric=["val_macro_f1", "val_loss"], mode=["max", "min"]
    )
    search.suggest("a")
    rows = [(1, 0.4, 0.9), (2, 0.7, 0.8), (3, 0.6, 0.5)]
    for e, f1, loss in rows:
        search.on_trial_result("a", {"training_iteration": e, "val_macro_f1": f1, "val_loss": loss})
    search.on_trial_complete("a", {"training_iteration": 3, "val_macro_f1": 0.6, "val_loss": 0.5})
    (trial,) = search._ot_study.trials
    assert trial.state.name == "COMPLETE" and trial.values == [0.7, 0.8]


CUT_SPACE = """\
description: two fixed resnet18 trials; ASHA cuts the second at its first rung
fixed: {model: resnet18, epochs: 3, img_size: 32, limit_per_split: 48, batch_size: 16,
        optimizer: adam, lr_scheduler: none, precision: fp32}
params:
  lr: {type: float, low: 1.0e-7, high: 1.0e-1, log: true}
start:
  - {lr: 1.0e-7}   # barely moves: validation loss stays near ln(3) every epoch
  - {lr: 3.0e-2}   # wrecks the batch-norm statistics: epoch 1's validation loss is far higher
"""


@pytest.mark.slow_ray
def test_study_agrees_with_the_sweep_and_cut_trials_are_pruned(tmp_path):
    """A real sweep (ASHA, first rung after epoch 1): the study's best trial is results.parquet's
    best with the same value, the trial ASHA cut is PRUNED with its epochs as intermediate
    values, and every Optuna trial names its Ray trial."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from ray_xray.tune.searcher import RAY_TRIAL_ID

    (tmp_path / "cut.yaml").write_text(CUT_SPACE)
    # One trial at a time, so the trials reach the rung in start-point order.
    cpus = str(os.cpu_count() or 1)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_xray.tune",
            "--space",
            str(tmp_path / "cut.yaml"),
            "--trials",
            "2",
            "--cpus-per-trial",
            cpus,
            "--grace-epochs",
            "1",
            "--objective",
            "val_loss",
            "--no-ensemble",
            "--top-k",
            "1",
            "--storage",
            str(tmp_path),
            "--name",
            "cut",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    table = pd.read_parquet(tmp_path / "cut" / "results.parquet").set_index("trial_id")
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{tmp_path}/cut/optuna.db")
    by_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in study.trials}
    assert set(by_id) == set(table.index)
    for trial_id, row in table.iterrows():
        trial = by_id[trial_id]
        if row["epochs"] < 3:  # stopped by ASHA at its first rung
            assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
        else:
            assert trial.state.name == "COMPLETE"
            assert trial.value == pytest.approx(row["best_val_loss"])
            assert list(trial.intermediate_values) == [1, 2, 3]
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "PRUNED"]
    assert study.best_trial.user_attrs[RAY_TRIAL_ID] == table["best_val_loss"].idxmin()
