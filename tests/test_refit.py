"""tune --cv K --refit-seeds S: the chosen configuration retrained on all of train+val (no
validation, last epoch), its refits the ensemble with the fold models' temperatures, the fold
ensemble kept beside it, the budget planning for the refits. The end-to-end run (a killed refit
that resumes) is in test_cv.py's serial --cv test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cv import _Clock, prepared

from ray_xray.checkpoint import load_ensemble, model_record, save_state, training_state
from ray_xray.config import TrainConfig
from ray_xray.data import PreparedData
from ray_xray.data.folds import fold_view, for_config
from ray_xray.ensemble import folds as ensemble_folds
from ray_xray.inference import build_model
from ray_xray.train.loop import Hooks, Progress, Trainer, train_epochs
from ray_xray.tune import folds as tune_folds
from ray_xray.tune import refit

CNN = {"width": 4, "head_dims": [8], "pool_size": 1}


def test_a_refit_view_trains_on_every_pooled_image_and_validates_on_none():
    data = prepared()
    pooled = len(data.labels["train"]) + len(data.labels["val"])
    view = for_config(data, TrainConfig(cv_folds=3, cv_fold=-1))
    assert len(view.labels["train"]) == pooled and len(view.labels["val"]) == 0
    assert sorted(view.paths["train"]) == sorted(data.paths["train"] + data.paths["val"])
    assert view.images["val"].shape == (0, 8, 8) and view.paths["test"] == data.paths["test"]
    # every fold's train+val is that same pool
    fold = fold_view(data, 3, 1)
    assert sorted(fold.paths["train"] + fold.paths["val"]) == sorted(view.paths["train"])
    with pytest.raises(ValueError, match="cv_fold in -1"):
        TrainConfig(cv_folds=0, cv_fold=-1)  # no folds: nothing to refit on
    with pytest.raises(ValueError, match="-1..2"):
        fold_view(data, 3, -2)


class _Seen(Hooks):
    def __init__(self) -> None:
        self.improved: list[bool] = []

    def on_epoch(self, metrics: dict, improved: bool, progress: Progress) -> None:
        self.improved.append(improved)


def test_a_refit_trains_every_epoch_with_no_validation_and_keeps_the_last():
    """No validation images: no val metric is reported or made up, every epoch is the
    one kept (the best-model record follows it), patience never stops it, and a plateau
    schedule is never stepped (its monitored value is not there)."""
    cfg = TrainConfig(
        model="cnn",
        img_size=32,
        epochs=3,
        batch_size=16,
        cv_folds=2,
        cv_fold=-1,
        patience=1,
        lr_scheduler="plateau",
        precision="fp32",
        model_kwargs=CNN,
    )
    data = for_config(prepared(size=32), cfg)
    tr = Trainer.build(cfg, data, torch.device("cpu"))
    assert tr.val_loader is None
    hooks = _Seen()
    progress = train_epochs(tr, hooks=hooks)
    assert hooks.improved == [True, True, True] and progress.best_epoch == 3
    assert progress.best_value is None and progress.epoch == 3
    last = progress.history[-1]
    assert not [k for k in last if "val" in k], last
    assert last["train_images"] == len(data.labels["train"])
    assert tr.sched.plateau is not None and tr.sched.plateau.last_epoch == 0


def test_refit_seeds_need_cv():
    tune_folds.check_cv(3, 2, "/x", refit_seeds=2)
    for args, msg in (((0, 3, "/x", 2), "needs --cv"), ((3, 2, "/x", -1), "S >= 0")):
        with pytest.raises(ValueError, match=msg):
            tune_folds.check_cv(*args)
    assert refit.refit_seeds(7, 3) == [7, 8, 9]
    cfg = refit.refit_config({"model": "cnn", "lr": 0.01}, 8)
    assert cfg == {"model": "cnn", "lr": 0.01, "cv_fold": -1, "seed": 8}


def test_the_budget_leaves_the_refits_their_time(monkeypatch, capsys):
    """The fold stage's estimate adds the refits: S runs of the costliest candidate, each
    K/(K-1) of a fold run (they train on every fold), on the free slots; so the search ends
    that much sooner, and the stop line says so."""
    costs, reused = [100.0, 60.0], {0: "search"}
    folds_s = tune_folds.fold_stage_s(costs, 3, reused, 2)
    assert folds_s == pytest.approx(tune_folds.makespan([100, 100, 60, 60, 60], 2))
    with_refits = tune_folds.fold_stage_s(costs, 3, reused, 2, refits=3)
    assert with_refits == pytest.approx(folds_s + 2 * 150)  # 3 refits of 150 s on 2 slots
    # the candidates kept: without refits both fit in 300 s; with 3 refits only one does
    assert tune_folds.fit_to_budget(costs, reused, 3, 2, 300) == 2
    assert tune_folds.fit_to_budget(costs, reused, 3, 2, 300, refits=3) == 1

    clock = _Clock()
    monkeypatch.setattr(tune_folds.time, "monotonic", clock)
    ends = {}
    for refits in (0, 2):
        clock.now = 1000.0
        stop = tune_folds.FoldBudgetStopper(1200, 3, 1, 1, "val_f1", "max", 6, refits=refits)
        stop("a", {"val_f1": 0.7, "epoch": 1, "time_total_s": 20.0})  # 125 s a fold run
        stop.stop_all()
        while not stop.stop_all():
            clock.now += 5
        ends[refits] = stop.stopped_at
    # without refits: 3 fold runs (375 s); with 2: + 2 x 187.5 s, on one slot
    assert ends[0] == pytest.approx(1200 - 375, abs=5)
    assert ends[2] == pytest.approx(1200 - 750, abs=5)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the fold stage's 3 runs and 2 refit(s) need about 12.5 min more" in line


def _checkpoint(tmp_path: Path, name: str, cfg: TrainConfig, torch_seed: int) -> str:
    torch.manual_seed(torch_seed)
    model = build_model(cfg, 2)
    rec = model_record(model, cfg, ["normal", "pneumonia"], 0.5, 0.25, {"val_macro_f1": 0.5})
    d = tmp_path / name
    d.mkdir()
    save_state(training_state({"model": model.state_dict()}, Progress(), rec, False), d)
    return str(d)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(model="cnn", img_size=32, precision="fp32", model_kwargs=CNN, **kw)


def test_refits_are_the_ensemble_at_the_fold_models_temperature(tmp_path, monkeypatch):
    """--refit-seeds: ensemble.pt holds the refits (method cv_refit), each at the mean of the
    chosen configuration's fold temperatures, with the fold models' out-of-fold operating
    points; fold_ensemble.pt holds the fold models as before; metrics.json scores both on
    test. Nothing fixed before test changes when the test split does."""
    data = prepared(size=32)
    folds = [_checkpoint(tmp_path, f"f{f}", _cfg(cv_folds=2, cv_fold=f), f) for f in range(2)]
    refits = [
        _checkpoint(tmp_path, f"r{s}", _cfg(cv_folds=2, cv_fold=-1, seed=s), 10 + s)
        for s in range(2)
    ]

    def run(test_images, out):
        poisoned = PreparedData(**{**data.__dict__})
        poisoned.images = {**data.images, "test": test_images}
        monkeypatch.setattr(ensemble_folds, "load_for_config", lambda cfg, cache=None: poisoned)
        res = ensemble_folds.run_fold_ensemble(
            out, {0: folds}, {"chosen": None}, None, "cpu", refits=refits
        )
        ens = load_ensemble(res["ensemble"])
        folded = load_ensemble(Path(res["out"]) / ensemble_folds.FOLD_ENSEMBLE_FILE)
        return ens, folded, json.loads(Path(res["metrics"]).read_text())

    ens, folded, metrics = run(data.images["test"], tmp_path / "a")
    assert ens["method"] == "cv_refit" and folded["method"] == "cv_folds"
    assert [m["config"]["cv_fold"] for m in ens["members"]] == [-1, -1]
    assert [m["config"]["seed"] for m in ens["members"]] == [0, 1]
    fold_t = [m["temperature"] for m in folded["members"]]
    assert [m["temperature"] for m in ens["members"]] == [pytest.approx(np.mean(fold_t))] * 2
    assert ens["operating_points"] == folded["operating_points"]
    assert metrics["method"] == "cv_refit" and metrics["test"] != metrics["fold_ensemble_test"]
    noise = np.random.default_rng(3).integers(0, 255, data.images["test"].shape, dtype=np.uint8)
    ens_b, _, metrics_b = run(noise, tmp_path / "b")
    assert ens_b["operating_points"] == ens["operating_points"]
    assert [m["temperature"] for m in ens_b["members"]] == [
        m["temperature"] for m in ens["members"]
    ]
    assert metrics_b["oof"] == metrics["oof"] and metrics_b["test"] != metrics["test"]


def test_a_refit_ensemble_refuses_models_that_are_not_refits_of_the_choice(tmp_path, monkeypatch):
    data = prepared(size=32)
    monkeypatch.setattr(ensemble_folds, "load_for_config", lambda cfg, cache=None: data)
    folds = [_checkpoint(tmp_path, f"f{f}", _cfg(cv_folds=2, cv_fold=f), f) for f in range(2)]
    chosen = ensemble_folds.fit_fold_ensemble(folds, None, torch.device("cpu"))
    for name, cfg in (
        ("fold", _cfg(cv_folds=2, cv_fold=1)),  # a fold model, not a refit
        ("other", _cfg(cv_folds=2, cv_fold=-1, lr=0.5)),  # another configuration
    ):
        with pytest.raises(ValueError, match="refits"):
            ensemble_folds.refit_ensemble(chosen, [_checkpoint(tmp_path, name, cfg, 0)])


def test_refit_rows_carry_their_configuration_and_failed_refits_are_left_out():
    chosen = {"candidate": 1, "config": {"model": "cnn", "lr": 0.01}}
    rows = [
        {"trial_id": t, "config": json.dumps({"refit_seed": s}), "config/refit_seed": s}
        | {"status": st, "checkpoint_path": ck}
        for t, s, st, ck in (("r1", 1, "ERROR", "/c1"), ("r0", 0, "TERMINATED", "/c0"))
    ]
    out = refit.label_refits(rows, chosen)
    assert [r["trial_id"] for r in out] == ["r0", "r1"]  # seed order
    r0 = out[0]
    assert r0["cv_stage"] == "refit" and r0["cv_candidate"] == 1 and r0["cv_fold"] == -1
    assert json.loads(r0["config"]) == {"model": "cnn", "lr": 0.01, "cv_fold": -1, "seed": 0}
    assert r0["config/seed"] == 0 and "config/refit_seed" not in r0
    stage = tune_folds.FoldStage(None, "/e", [], None, {})
    stage.selection = {"refit_trial_ids": ["r0", "r1"]}
    assert stage.refits(out) == ["/c0"]
