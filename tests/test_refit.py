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
from test_gpu_path import _Count

from ray_xray.checkpoint import load_ensemble, model_record, save_state, training_state
from ray_xray.config import TrainConfig
from ray_xray.data import PreparedData
from ray_xray.data.folds import fold_view, for_config
from ray_xray.ensemble import folds as ensemble_folds
from ray_xray.inference import build_model
from ray_xray.train.loop import Progress, Trainer, train_epochs
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
    hooks = _Count()  # records each epoch's `improved`
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
    cfg = refit.refit_config({"model": "cnn", "lr": 0.01}, 2)
    assert cfg == {"model": "cnn", "lr": 0.01, "cv_fold": -1, "refit_seed": 2}


def test_refits_differ_in_their_training_randomness_not_in_their_images():
    """A refit's weights, shuffles and augmentation use seed + refit_seed; which images it
    trains on (a limit_per_split subset, the folds) and how evaluate reloads a member's own
    data use the sweep's seed alone, so every refit trains on the same pool."""
    from ray_xray.checkpoint import data_key

    a, b = (TrainConfig(seed=3, cv_folds=2, cv_fold=-1, refit_seed=r) for r in (0, 2))
    assert (a.train_seed, b.train_seed) == (3, 5) and TrainConfig(seed=4).train_seed == 4
    assert data_key({"config": a.to_dict()}) == data_key({"config": b.to_dict()})
    data = prepared()
    assert for_config(data, a).paths == for_config(data, b).paths


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
    points; fold_ensemble.pt holds the fold models as before; metrics.json and report.html
    score both on test. Nothing fixed before test changes when the test split does."""
    data = prepared(size=32)
    folds = [_checkpoint(tmp_path, f"f{f}", _cfg(cv_folds=2, cv_fold=f), f) for f in range(2)]
    refits = [
        _checkpoint(tmp_path, f"r{s}", _cfg(cv_folds=2, cv_fold=-1, refit_seed=s), 10 + s)
        for s in range(2)
    ]

    def run(test_images, out):
        poisoned = PreparedData(**{**data.__dict__})
        poisoned.images = {**data.images, "test": test_images}
        monkeypatch.setattr(ensemble_folds, "load_for_config", lambda cfg, cache=None: poisoned)
        res = ensemble_folds.run_fold_ensemble(
            out, {0: folds}, _selection(folds), None, "cpu", refits=refits, refits_asked=2
        )
        assert res["report"] and "refit ensemble, test" in Path(res["report"]).read_text()
        ens = load_ensemble(res["ensemble"])
        folded = load_ensemble(Path(res["out"]) / ensemble_folds.FOLD_ENSEMBLE_FILE)
        return ens, folded, json.loads(Path(res["metrics"]).read_text())

    ens, folded, metrics = run(data.images["test"], tmp_path / "a")
    assert ens["method"] == "cv_refit" and folded["method"] == "cv_folds"
    assert [m["config"]["cv_fold"] for m in ens["members"]] == [-1, -1]
    assert [m["config"]["refit_seed"] for m in ens["members"]] == [0, 1]
    assert ens["member_names"] == ["cnn:refit0", "cnn:refit1"]
    fold_t = [m["temperature"] for m in folded["members"]]
    assert [m["temperature"] for m in ens["members"]] == [pytest.approx(np.mean(fold_t))] * 2
    assert ens["operating_points"] == folded["operating_points"]
    assert metrics["method"] == "cv_refit" and metrics["test"] != metrics["fold_ensemble_test"]
    assert metrics["refits"] == {"asked": 2, "used": 2}
    assert metrics["fold_ensemble_oof"]["macro_f1"] == pytest.approx(metrics["oof"]["macro_f1"])
    noise = np.random.default_rng(3).integers(0, 255, data.images["test"].shape, dtype=np.uint8)
    ens_b, _, metrics_b = run(noise, tmp_path / "b")
    assert ens_b["operating_points"] == ens["operating_points"]
    assert [m["temperature"] for m in ens_b["members"]] == [
        m["temperature"] for m in ens["members"]
    ]
    assert metrics_b["oof"] == metrics["oof"] and metrics_b["test"] != metrics["test"]


def _selection(folds: list[str]) -> dict:
    rows = [
        {"cv_candidate": 0, "cv_fold": f, "status": "TERMINATED", "trial_id": f"t{f}"}
        | {"best_val_macro_f1": 0.5 + f / 10, "checkpoint_path": c}
        | {"config": json.dumps({"model": "cnn", "cv_fold": f})}
        for f, c in enumerate(folds)
    ]
    return {**tune_folds.choose(rows, "best_val_macro_f1", "max", len(folds)), "search_trials": 1}


def test_refits_that_failed_are_said_and_with_none_the_fold_ensemble_stands(tmp_path, monkeypatch):
    data = prepared(size=32)
    monkeypatch.setattr(ensemble_folds, "load_for_config", lambda cfg, cache=None: data)
    folds = [_checkpoint(tmp_path, f"f{f}", _cfg(cv_folds=2, cv_fold=f), f) for f in range(2)]
    one = [_checkpoint(tmp_path, "r0", _cfg(cv_folds=2, cv_fold=-1), 10)]
    for refits, method, warning in (
        (one, "cv_refit", "1 of 2 refits finished with a checkpoint"),
        ([], "cv_folds", "0 of 2 refits finished with a checkpoint: the ensemble is the fold"),
    ):
        out = tmp_path / method
        res = ensemble_folds.run_fold_ensemble(
            out, {0: folds}, _selection(folds), None, "cpu", refits=refits, refits_asked=2
        )
        metrics = json.loads(Path(res["metrics"]).read_text())
        assert load_ensemble(res["ensemble"])["method"] == method
        assert any(w.startswith(warning) for w in metrics["warnings"]), metrics["warnings"]
        assert (out / "ensemble" / ensemble_folds.FOLD_ENSEMBLE_FILE).exists() == bool(refits)


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
    assert json.loads(r0["config"]) == {"model": "cnn", "lr": 0.01, "cv_fold": -1, "refit_seed": 0}
    assert r0["config/refit_seed"] == 0 and r0["config/cv_fold"] == -1
    stage = tune_folds.FoldStage(None, "/e", [], None, {})
    stage.selection = {"refit_trial_ids": ["r0", "r1"]}
    assert stage.refits(out) == ["/c0"]


def test_a_sweep_resumes_only_with_the_refit_seeds_it_started_with():
    """--refit-seeds is part of a sweep's identity (the refits' grid and the search's budget
    plan depend on it): a resume that changes it is refused; a sweep.json from before the
    option, which does not record it, still resumes."""
    from ray_xray.spaces import load_space
    from ray_xray.tune.options import SweepOptions
    from ray_xray.tune.service import sweep_differences, sweep_identity

    space = load_space("cnn")
    stored = sweep_identity(SweepOptions(cv=3, refit_seeds=2), space, None)
    assert (
        sweep_differences(stored, sweep_identity(SweepOptions(cv=3, refit_seeds=2), space, None))
        == []
    )
    new = sweep_identity(SweepOptions(cv=3), space, None)
    assert sweep_differences(stored, new) == ["refit_seeds"]
    del stored["options"]["refit_seeds"]  # recorded before the option existed
    assert sweep_differences(stored, new) == []


def test_no_refit_runs_when_no_candidate_finished_every_fold(monkeypatch):
    """A fold stage with no complete candidate: the refit stage starts nothing and leaves the
    error to the results step (`FoldStage.label`, exit 1 with the trials kept), not a bad-input
    ValueError before the results are written."""
    from ray_xray.tune import service

    class NoChoice:
        def choice(self):
            raise ValueError("--cv 2: no candidate finished all 2 folds with a checkpoint")

    monkeypatch.setattr(refit, "refit_tuner", lambda *a, **k: pytest.fail("refits started"))
    assert service._refit_stage(None, NoChoice(), {}, {}, {}) is None


def test_refit_settings_are_checked_up_front():
    with pytest.raises(ValueError, match="--no-ensemble"):
        tune_folds.check_cv(3, 2, "/x", refit_seeds=2, ensemble=False)
    with pytest.raises(ValueError, match="refit_seed"):
        TrainConfig(cv_folds=3, cv_fold=1, refit_seed=1)  # a fold run is no refit
    with pytest.raises(ValueError, match="refit_seed"):
        TrainConfig(cv_folds=3, cv_fold=-1, refit_seed=-1)
    assert refit.unlike_folds({"model": "cnn"}) == ""
    note = refit.unlike_folds({"model": "cnn", "patience": 3, "lr_scheduler": "plateau"})
    assert "patience 3 and a plateau lr_scheduler need validation" in note


def test_refits_shuffle_differently_and_the_same_refit_alike():
    """refit_seed reaches the training randomness: the shuffle order of the first epoch
    differs between two refits and repeats for one."""
    from ray_xray.train.loop import _train_loader

    data = for_config(prepared(size=32), TrainConfig(cv_folds=2, cv_fold=-1))

    def first_batch(refit_seed: int) -> list[int]:
        cfg = TrainConfig(
            model="cnn", img_size=32, batch_size=64, cv_folds=2, cv_fold=-1, refit_seed=refit_seed
        )
        loader, _ = _train_loader(cfg, data, torch.device("cpu"), "loader")
        images = next(iter(loader))[0]
        return images.flatten(1)[:, :4].tolist()

    assert first_batch(0) == first_batch(0) and first_batch(0) != first_batch(1)


def test_the_budget_line_counts_search_trials_only():
    from ray_xray.tune.options import SweepOptions
    from ray_xray.tune.service import budget_line

    opts = SweepOptions(trials=5, budget_minutes=1, cv=2, refit_seeds=2)
    rows = [{"cv_stage": "search", "status": "TERMINATED"}] * 2
    rows += [
        {"cv_stage": "folds", "status": "TERMINATED"},
        {"cv_stage": "refit", "status": "RUNNING"},
    ]
    assert budget_line(opts, rows, 61) == (
        "the --budget-minutes 1 limit ended the sweep: 0 trial(s) stopped unfinished, 3 of 5 "
        "never started"
    )


def test_beside_refits_the_disagreement_warning_compares_the_fold_ensemble_with_itself():
    """The refits have no out-of-fold figures of their own ("oof" is their fold models'):
    whether validation foretold test is asked of the fold ensemble, whose both figures are."""
    from ray_xray.scores import report

    data = prepared()
    y_oof = np.array([0, 1] * 10)
    wrong = np.eye(2)[1 - y_oof] * 0.9 + 0.05  # out of fold: every image wrong
    y_test = data.labels["test"]
    right = np.eye(2)[y_test] * 0.9 + 0.05
    fitted = {"data": data, "oof_y": y_oof, "oof_prob": wrong, "records": [{}] * 2}
    fitted |= {"temperatures": [1.0, 1.0], "fold_sizes": [10, 10]}
    pair = (report(y_oof, wrong, data.classes), report(y_test, right, data.classes, intervals=True))
    alone = ensemble_folds.fold_metrics(fitted, right, {}, "x")
    beside = ensemble_folds.fold_metrics(fitted, right, {}, "x", pair)
    assert any(w.startswith("test accuracy 1.000") for w in alone["warnings"])
    assert any(w.startswith("the fold ensemble's test accuracy 1.000") for w in beside["warnings"])
    assert beside["fold_ensemble_test"] == pair[1]
    same = ensemble_folds.fold_metrics(fitted, right, {}, "x", (pair[1], pair[1]))
    assert not [w for w in same["warnings"] if "out of fold" in w]  # agreeing pair: no warning


def test_evaluate_takes_no_thresholds_from_a_val_split_the_members_trained_on(tmp_path):
    """A --cv ensemble's members trained on the data's val split (train and val are pooled
    into the folds; a refit trains on all of it): evaluate fixes no operating points there and
    says why. It uses the thresholds the ensemble stores (fixed out of fold) instead, and
    scores them here; a lone refit stores none, and a model that only validated on the val
    split still gets thresholds fixed on it."""
    from ray_xray.checkpoint import atomic_save, ensemble_record, save_ensemble
    from ray_xray.data import load_data
    from ray_xray.evaluate.core import evaluate
    from ray_xray.evaluate.report import eval_operating_section

    spec = "synthetic:chest3:12"
    data = load_data(spec, 32)
    recs = {
        name: model_record(build_model(cfg, 3), cfg, data.classes, data.mean, data.std, {})
        for name, cfg in (
            ("refit", _cfg(data=spec, cv_folds=2, cv_fold=-1)),
            ("plain", _cfg(data=spec)),
        )
    }
    for name, rec in recs.items():
        atomic_save(rec, tmp_path / f"{name}.pt")
    stored = {c: {"spec0.90": 0.2 + k / 10, "spec0.95": 0.9} for k, c in enumerate(data.classes)}
    save_ensemble(
        ensemble_record(
            [{**recs["refit"], "temperature": 1.0}],
            [1.0],
            "cv_refit",
            data.classes,
            {"operating_points": stored},
        ),
        tmp_path / "ens.pt",
    )
    got = {}
    for name in ("refit", "plain", "ens"):
        r = evaluate(str(tmp_path / f"{name}.pt"), spec, "test", out=tmp_path / name, n_boot=20)
        said = any("trained on its own data's val split" in n for n in r.notes)
        assert said == (name != "plain"), r.notes
        got[name] = r
    assert got["refit"].operating_points is None and got["refit"].points_fixed_on is None
    assert "stores no thresholds" in eval_operating_section(got["refit"])
    assert got["plain"].points_fixed_on == "val"
    assert got["plain"].operating_points["normal"]["0.90"]["val_specificity"] >= 0.9
    ens = got["ens"]
    assert ens.points_fixed_on == "oof" and "out-of-fold" in eval_operating_section(ens)
    for k, c in enumerate(data.classes):
        row = ens.operating_points[c]["0.90"]
        assert row["threshold"] == stored[c]["spec0.90"] and "val_sensitivity" not in row
        neg = np.asarray(ens.y) != k
        spec = float((ens.prob[neg, k] < row["threshold"]).mean())
        assert row["eval_specificity"] == pytest.approx(spec)
