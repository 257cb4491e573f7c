"""Cross-validated selection (tune --cv): folds by patient, selection on validation only, the
fold ensemble fixed before any test image is read, and a killed fold run that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ray_xray import calibration
from ray_xray.config import TrainConfig
from ray_xray.data import PreparedData
from ray_xray.data.folds import fold_groups, fold_of, fold_view, for_config
from ray_xray.ensemble import folds as ensemble_folds
from ray_xray.tune import folds as tune_folds

REPO = Path(__file__).resolve().parent.parent


def prepared(n_patients: int = 40, seed: int = 0, size: int = 8) -> PreparedData:
    """Kermany-style names: 1-4 images per patient, two classes, test patients apart."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for p in range(n_patients):
        label = int(p % 3 == 0)
        for j in range(int(rng.integers(1, 5))):
            kind = "bacteria" if label else "normal"
            paths.append(f"/d/train/{kind}/person{p}_{kind}_{j}.jpeg")
            labels.append(label)
    labels = np.array(labels, dtype=np.int64)
    images = rng.integers(0, 255, (len(labels), size, size), dtype=np.uint8)
    n_val = len(labels) // 8
    test_paths = [f"/d/test/x/person{1000 + i}_virus_0.jpeg" for i in range(10)]
    return PreparedData(
        classes=["normal", "pneumonia"],
        images={
            "train": images[n_val:],
            "val": images[:n_val],
            "test": rng.integers(0, 255, (10, size, size), dtype=np.uint8),
        },
        labels={"train": labels[n_val:], "val": labels[:n_val], "test": np.arange(10) % 2},
        paths={"train": paths[n_val:], "val": paths[:n_val], "test": test_paths},
        mean=0.5,
        std=0.25,
        source="test",
        img_size=size,
    )


def test_folds_never_share_a_patient_and_cover_train_plus_val_once():
    data = prepared()
    k = 4
    pooled = data.paths["train"] + data.paths["val"]
    seen_val: list[str] = []
    for fold in range(k):
        view = fold_view(data, k, fold)
        train_p = {g for g in fold_groups(view.paths["train"])}
        val_p = {g for g in fold_groups(view.paths["val"])}
        assert train_p and val_p and not train_p & val_p  # no patient on both sides
        assert sorted(view.paths["train"] + view.paths["val"]) == sorted(pooled)
        assert view.paths["test"] == data.paths["test"]  # test untouched, never in a fold
        assert np.array_equal(view.images["test"], data.images["test"])
        assert not set(data.paths["test"]) & set(view.paths["train"] + view.paths["val"])
        # normalisation statistics are the fold's own training images'
        assert view.mean == pytest.approx(view.images["train"].mean() / 255.0, rel=1e-5)
        seen_val += view.paths["val"]
    assert sorted(seen_val) == sorted(pooled)  # each image validates exactly once


def test_folds_are_stratified_and_deterministic():
    data = prepared(n_patients=60)
    labels = np.concatenate([data.labels["train"], data.labels["val"]])
    groups = fold_groups(data.paths["train"] + data.paths["val"])
    a, b = fold_of(labels, groups, 3, seed=1), fold_of(labels, groups, 3, seed=1)
    assert np.array_equal(a, b)
    overall = labels.mean()
    for f in range(3):
        assert abs(labels[a == f].mean() - overall) < 0.15


def test_for_config_applies_the_configs_fold_only_when_cv_is_on():
    data = prepared()
    assert for_config(data, TrainConfig()) is data
    view = for_config(data, TrainConfig(cv_folds=3, cv_fold=2))
    assert view.paths["val"] == fold_view(data, 3, 2).paths["val"]
    with pytest.raises(ValueError, match="cv_folds"):
        TrainConfig(cv_folds=3, cv_fold=3)
    with pytest.raises(ValueError, match="cv_folds"):
        TrainConfig(cv_folds=1)


def test_check_cv_refuses_bad_values():
    tune_folds.check_cv(0, 3, "s3://b/p")  # off: anything goes
    for args, msg in (
        ((1, 3, "/x"), "K >= 2"),
        ((5, 0, "/x"), "cv-top"),
        ((5, 3, "s3://b"), "local"),
    ):
        with pytest.raises(ValueError, match=msg):
            tune_folds.check_cv(*args)


class _Clock:
    """time.monotonic for FoldBudgetStopper, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fold_budget_stopper_leaves_the_fold_stage_its_time(monkeypatch, capsys):
    """--cv with --budget-minutes: the search stops once its time plus the fold stage's
    estimate (the best cv_top trials' cost per run, in rounds of `slots`) reaches the budget."""
    clock = _Clock()
    monkeypatch.setattr(tune_folds.time, "monotonic", clock)
    stop = tune_folds.FoldBudgetStopper(
        600, cv=3, cv_top=2, slots=2, metric="val_f1", mode="max", epochs=6
    )
    assert stop.fold_stage() is None and not stop.stop_all()  # nothing known: search on
    # trial a: 20 s per epoch, 6 planned -> 125 s a run; b: 10 s per epoch, 4 planned -> 45 s
    assert not stop("a", {"val_f1": 0.7, "epoch": 1, "time_total_s": 20.0})
    assert stop.fold_stage() == (6, pytest.approx(3 * 125))  # 2 x 3 runs, 2 at a time: 3 rounds
    stop("b", {"val_f1": 0.9, "epoch": 2, "time_total_s": 20.0, "config": {"epochs": 4}})
    stop("c", {"val_f1": 0.1, "epoch": 1, "time_total_s": 500.0})  # worst: not a candidate
    # in rank order, each to the slot that frees first: b, b, b (45 s) then a, a, a (125 s)
    assert stop.fold_stage() == (6, pytest.approx(295))
    stop("b", {"val_f1": 0.5, "epoch": 4, "time_total_s": 40.0, "config": {"epochs": 4}})
    assert stop.trials["b"]["best"] == 0.9
    # b ran all 4 epochs: its search run is its fold 0, so 5 runs (3 rounds) remain
    assert stop.fold_stage() == (5, pytest.approx(295))
    clock.now += 300  # 300 + 295 < 600: the search goes on
    assert not stop.stop_all() and stop.stop_all() is False
    clock.now += 10  # 310 + 295 >= 600: it ends, saying so once
    assert stop.stop_all() and stop.stop_all()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "5.2 min of the 10-min budget" in lines[0], lines
    assert "5 runs" in lines[0] and stop.stopped_at == pytest.approx(310)


def test_a_slow_trial_entering_the_top_n_late_does_not_end_the_search_early(monkeypatch, capsys):
    """brain4's (c) at 36a47a1 and 2634493: a slow vit entered the top 2 at 2.4 min, the two
    candidates' runs no longer fitted in the time left, the search ended, and the fold stage
    then dropped the vit anyway: the sweep used 4.6 of its 10 min. The stopper now plans as
    the fold stage keeps (the longest rank prefix that fits), so the search goes on until that
    prefix's runs fill the time left, and its line says which candidates it planned for."""
    clock = _Clock()
    monkeypatch.setattr(tune_folds.time, "monotonic", clock)
    stop = tune_folds.FoldBudgetStopper(
        600, cv=3, cv_top=2, slots=2, metric="val_f1", mode="max", epochs=6
    )
    stop("fast", {"val_f1": 0.8, "epoch": 6, "time_total_s": 60.0})  # all 6: 65 s a run
    assert not stop.stop_all()  # the clock starts
    clock.now += 150
    stop("slow", {"val_f1": 0.7, "epoch": 1, "time_total_s": 100.0})  # 605 s a run, second
    # both: fast's folds 1, 2, then slow's 3 runs of 605 s on 2 slots end at 1275 s, past
    # the 450 s left (+ 30 s slack): the plan is fast's two runs alone, 65 s
    assert stop.fold_stage() == (5, pytest.approx(1275))
    assert stop.fold_stage(450.0) == (2, pytest.approx(65)) and stop.kept == 1
    assert not stop.stop_all()  # before this change: 150 + 1275 >= 600, ended here
    clock.now += 370
    assert not stop.stop_all()  # 520 + 65 < 600
    clock.now += 20
    assert stop.stop_all() and stop.stopped_at == pytest.approx(540)
    line = capsys.readouterr().err.strip()
    assert "ended after 9.0 min" in line and "2 runs" in line, line
    assert "for the best 1 of 2 candidates" in line and "raise --budget-minutes" not in line
    # the fold stage's own rule, from the results, drops the slow one too
    assert tune_folds.fit_to_budget([65.0, 605.0], {0: "fast"}, 3, 2, 60.0, 30.0) == 1


def test_the_fold_stage_keeps_the_plan_the_stopper_ended_the_search_for(capsys):
    """brain4 at 9f1ea83: the stopper ended the search for 2 candidates needing 4.7 min with
    4.3 min left (inside its 30 s slack); the search's wind-down left 4.1 min, and the fold
    stage, with the same 30 s, dropped the second (4.7 > 4.6) and ended 2.2 min early. Its
    fit allows twice the slack: the stopper's, and the wind-down's."""
    rows = [
        {
            "trial_id": t,
            "status": "TERMINATED",
            "wall_s": w,
            "epochs": 6,
            "checkpoint_path": f"/ck/{t}",
            "best_val_macro_f1": v,
            "config": json.dumps({"lr": v, "epochs": 6}),
        }
        for t, v, w in (("a", 0.9, 85.0), ("b", 0.7, 136.0))
    ]
    # a and b ran all 6 epochs: folds 1, 2 of each, 90 s and 141 s a run, on 2 slots: 231 s
    configs, reused = [json.loads(r["config"]) for r in rows], {0: "a", 1: "b"}
    costs = tune_folds.run_costs(rows, configs, 6)
    assert tune_folds.fold_stage_s(costs, 3, reused, 2) == pytest.approx(231)

    def kept(left_s: float) -> int:  # a 10-min budget: 2 x 30 s of slack
        return tune_folds.budget_fit(rows, 6, 3, 2, left_s, 600.0)(configs, reused)

    assert kept(231.0 - 55.0) == 2  # one slack (30 s) would have dropped b
    assert kept(231.0 - 65.0) == 1 and "takes the best 1 of 2" in capsys.readouterr().err


def test_the_fold_stage_keeps_the_candidates_that_fit_in_what_the_search_left(tmp_path, capsys):
    """A slow trial that reports late can leave less budget than the stopper planned for: the
    fold stage then keeps the longest rank prefix of candidates whose runs end in time (never
    fewer than one), says so, and cv_candidates.json holds that plan for a resume."""

    def row(tid, lr, wall, epochs):
        cfg = json.dumps({"lr": lr, "epochs": 6})
        return {
            "trial_id": tid,
            "status": "TERMINATED",
            "wall_s": wall,
            "epochs": epochs,
            "checkpoint_path": f"/ck/{tid}",
            "best_val_macro_f1": 1 - lr,
            "config": cfg,
        }

    rows = [row("fast", 0.1, 60.0, 6), row("slow", 0.2, 100.0, 1), row("mid", 0.3, 350.0, 3)]
    configs = [json.loads(r["config"]) for r in rows]
    assert tune_folds.run_costs(rows, configs + [{"lr": 9}], 6) == [65.0, 605.0, 705.0, None]
    costs = [65.0, 605.0, 705.0]
    # fast: folds 1, 2 (its search run is fold 0); slow: 3 folds of 605 s; 2 slots
    # 2 slots: fast's 65, 65 -> slow's 605 x 3 end at 670, 1275 -> mid's 705 x 3 at 2080:
    # with 1300 s left the best two fit, not three
    assert tune_folds.fit_to_budget(costs, {0: "fast"}, 3, 2, 1300.0) == 2
    assert tune_folds.fit_to_budget(costs, {0: "fast"}, 3, 2, 2080.0) == 3
    assert tune_folds.fit_to_budget(costs, {0: "fast"}, 3, 2, 1000.0) == 1
    assert tune_folds.fit_to_budget(costs, {0: "fast"}, 3, 2, 10.0) == 1  # never none
    assert tune_folds.fit_to_budget([65.0, None, 1.0], {}, 3, 2, 1e9) == 1  # unknown: stop
    # the slack, max(30 s, 5 % of the budget), keeps a plan that overruns only a little
    assert tune_folds.fit_to_budget(costs, {0: "fast"}, 3, 2, 1250.0, slack_s=30.0) == 2
    assert (
        tune_folds.candidates(
            str(tmp_path / "a"),
            rows,
            "best_val_macro_f1",
            "max",
            3,
            6,
            tune_folds.budget_fit(rows, 6, 3, 2, 1250.0, 600.0),
        )[0]
        == configs[:2]
    )
    fit = tune_folds.budget_fit(rows, 6, 3, 2, 1000.0, 1200.0)
    got = tune_folds.candidates(str(tmp_path), rows, "best_val_macro_f1", "max", 3, 6, fit)
    assert got == (configs[:1], {0: "fast"})
    err = capsys.readouterr().err
    assert "takes the best 1 of 3 candidates" in err and "16.7 min of the budget" in err, err
    saved = json.loads((tmp_path / tune_folds.CANDIDATES_FILE).read_text())
    assert saved["configs"] == configs[:1] and saved["reused"] == {"0": "fast"}


def test_makespan_is_when_the_last_run_ends_on_the_first_free_slot():
    assert tune_folds.makespan([10.0, 100.0], 2) == 100.0  # a mean would say 55
    assert tune_folds.makespan([10.0, 10.0, 100.0], 2) == 110.0
    assert tune_folds.makespan([30.0] * 5, 2) == 90.0
    assert tune_folds.makespan([30.0, 30.0], 1) == 60.0


def test_fold_budget_stopper_min_mode_and_a_short_budget(monkeypatch, capsys):
    """A loss objective ranks the lowest first; a budget the fold stage alone fills ends the
    search at its first report, with a hint to raise the budget."""
    clock = _Clock()
    monkeypatch.setattr(tune_folds.time, "monotonic", clock)
    stop = tune_folds.FoldBudgetStopper(
        60, cv=2, cv_top=1, slots=1, metric="val_loss", mode="min", epochs=4
    )
    stop("a", {"val_loss": 0.2, "epoch": 1, "time_total_s": 10.0})  # 45 s a run
    stop("b", {"val_loss": 0.9, "epoch": 1, "time_total_s": 100.0})  # worse: not counted
    assert stop.fold_stage() == (2, pytest.approx(2 * 45))
    assert stop.stop_all()
    assert "raise --budget-minutes" in capsys.readouterr().err
    # with each epoch's compute (epoch_s) the set-up counts once: 10 s - 2 s, + 2 s x 4, + 5
    stop("c", {"val_loss": 0.1, "epoch": 1, "time_total_s": 10.0, "epoch_s": 2.0})
    assert stop.fold_stage() == (2, pytest.approx(2 * 21))
    stop("c", {"val_loss": 0.1, "epoch": 2, "time_total_s": 12.0, "epoch_s": 2.0})
    stop("c", {"val_loss": 0.1, "epoch": 2, "time_total_s": 12.0, "epoch_s": 2.0})  # again
    assert stop.trials["c"]["compute_s"] == 4.0 and stop.fold_stage()[1] == pytest.approx(42)


def _rows(k: int = 3) -> list[dict]:
    search = [
        {
            "trial_id": f"s{i}",
            "status": "TERMINATED",
            "best_val_macro_f1": v,
            "config": json.dumps({"lr": lr}),
        }
        for i, (v, lr) in enumerate([(0.9, 0.1), (0.8, 0.2), (0.7, 0.3), (float("nan"), 0.4)])
    ]
    fold_vals = {0: [0.9, 0.5, 0.5], 1: [0.75, 0.8, 0.8], 2: [0.99, 0.99, None]}
    folds = []
    for c, vals in fold_vals.items():
        for f, v in enumerate(vals[:k]):
            folds.append(
                {
                    "trial_id": f"c{c}f{f}",
                    "status": "TERMINATED",
                    "best_val_macro_f1": v,
                    "checkpoint_path": f"/ck/{c}/{f}",
                    "config": json.dumps({"cv_config": c, "cv_fold": f}),
                    "config/cv_config": c,
                }
            )
    return search, folds


def test_a_full_search_run_is_its_candidates_fold_0():
    """A search run that ran all its planned epochs is its configuration's fold 0 (same fold,
    settings and seed): stage 2 skips that run, and selection and the ensemble's groups use the
    search run's value and checkpoint. Runs cut short, failed or without a checkpoint are not
    reused."""
    search = [
        {
            "trial_id": "cut",
            "status": "TERMINATED",
            "epochs": 2,
            "checkpoint_path": "/ck/cut",
            "config": json.dumps({"lr": 0.1}),
        },
        {
            "trial_id": "full",
            "status": "TERMINATED",
            "epochs": 6,
            "checkpoint_path": "/ck/full",
            "config": json.dumps({"lr": 0.1}),
        },
        {
            "trial_id": "nock",
            "status": "TERMINATED",
            "epochs": 3,
            "checkpoint_path": None,
            "config": json.dumps({"lr": 0.2, "epochs": 3}),
        },
        {
            "trial_id": "short",
            "status": "TERMINATED",
            "epochs": 3,
            "checkpoint_path": "/ck/s",
            "config": json.dumps({"lr": 0.3, "epochs": 3}),
        },
    ]
    configs = [{"lr": 0.1}, {"lr": 0.2, "epochs": 3}, {"lr": 0.3, "epochs": 3}, {"lr": 0.4}]
    reused = tune_folds.reusable(search, configs, epochs=6)
    assert reused == {0: "full", 2: "short"}
    assert tune_folds.fold_runs(4, 2, reused) == [[0, 1], [1, 0], [1, 1], [2, 1], [3, 0], [3, 1]]
    for r, v in zip(search, (0.5, 0.8, 0.9, 0.6), strict=True):
        r["best_val_macro_f1"] = v
    fold_rows = [
        {
            "trial_id": f"r{i}{f}",
            "status": "TERMINATED",
            "best_val_macro_f1": 0.7,
            "checkpoint_path": f"/ck/{i}/{f}",
            "config": json.dumps({"cv_run": [i, f]}),
        }
        for i, f in tune_folds.fold_runs(3, 2, reused)
    ]
    rows = tune_folds.label_rows(search, fold_rows, configs[:3], reused)
    assert [r["cv_candidate"] for r in rows[:4]] == [None, 0, None, 2]
    sel = tune_folds.choose(rows, "best_val_macro_f1", "max", 2)
    by = {c["candidate"]: c for c in sel["candidates"]}
    assert by[0]["trial_ids"] == ["full", "r01"] and by[0]["fold_values"] == [0.8, 0.7]
    assert by[2]["trial_ids"] == ["short", "r21"] and by[2]["mean"] == pytest.approx(0.65)
    assert by[1]["trial_ids"] == ["r10", "r11"]  # its search run had no checkpoint
    assert sel["chosen"]["candidate"] == 0


def test_selection_is_by_mean_fold_metric_and_needs_every_fold():
    search, folds = _rows()
    configs = tune_folds.top_configs(search, "best_val_macro_f1", "max", 3)
    assert configs == [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]
    rows = tune_folds.label_rows(search, folds, configs)
    assert {r["cv_stage"] for r in rows} == {"search", "folds"}
    assert all("config/cv_config" not in r for r in rows)
    sel = tune_folds.choose(rows, "best_val_macro_f1", "max", 3)
    # candidate 0 won the search (0.9 on fold 0) but candidate 1 has the better mean; candidate
    # 2 misses a fold and cannot be chosen, however good its two folds
    assert sel["chosen"]["candidate"] == 1
    assert sel["chosen"]["mean"] == pytest.approx(np.mean([0.75, 0.8, 0.8]))
    assert sel["chosen"]["trial_ids"] == ["c1f0", "c1f1", "c1f2"]
    assert not [c for c in sel["candidates"] if c["candidate"] == 2][0]["complete"]
    line = tune_folds.selection_line(sel)
    assert line.startswith("cv: chose candidate 1 (None; trials c1f0, c1f1, c1f2): "), line
    assert "sd over 3 folds" in line and "runner-up candidate 0 " in line
    assert line.endswith("; left out, a fold failed or kept no checkpoint: candidate 2"), line


def test_selection_never_reads_test_figures():
    """Test columns that rank the candidates the other way round change nothing."""
    search, folds = _rows()
    configs = tune_folds.top_configs(search, "best_val_macro_f1", "max", 3)
    plain = tune_folds.choose(
        tune_folds.label_rows(search, folds, configs), "best_val_macro_f1", "max", 3
    )
    search, folds = _rows()
    for r in search + folds:
        r["test_macro_f1"] = 1.0 - (r["best_val_macro_f1"] or 0.0)
        r["test_accuracy"] = r["test_macro_f1"]
    assert tune_folds.top_configs(search, "best_val_macro_f1", "max", 3) == configs
    poisoned = tune_folds.choose(
        tune_folds.label_rows(search, folds, configs), "best_val_macro_f1", "max", 3
    )
    assert poisoned == plain


def test_fold_ensemble_is_fixed_without_test_images(tmp_path, monkeypatch):
    """Temperatures, out-of-fold predictions and ensemble.pt come out the same whatever the
    test split holds (noise, shuffled labels): the test images never reach them."""
    from ray_xray.checkpoint import load_ensemble, model_record, save_state, training_state
    from ray_xray.inference import build_model
    from ray_xray.train.loop import Progress

    data = prepared(size=32)
    k = 3
    ckpts = []
    for f in range(k):
        cfg = TrainConfig(
            model="cnn",
            img_size=32,
            cv_folds=k,
            cv_fold=f,
            precision="fp32",
            model_kwargs={"width": 4, "head_dims": [8], "pool_size": 1},
        )
        torch.manual_seed(f)
        model = build_model(cfg, 2)
        rec = model_record(model, cfg, data.classes, 0.5, 0.25, {"val_macro_f1": 0.5})
        d = tmp_path / f"fold{f}"
        d.mkdir()
        state = training_state({"model": model.state_dict()}, Progress(), rec, False)
        save_state(state, d)
        ckpts.append(str(d))

    def run(test_images, test_labels, out):
        poisoned = PreparedData(**{**data.__dict__})
        poisoned.images = {**data.images, "test": test_images}
        poisoned.labels = {**data.labels, "test": test_labels}
        monkeypatch.setattr(ensemble_folds, "load_for_config", lambda cfg, cache=None: poisoned)
        fitted = ensemble_folds.fit_fold_ensemble(ckpts, None, torch.device("cpu"))
        seen = []  # --external's hook: called once, with ensemble.pt already saved
        hook = lambda p: seen.append(Path(p).is_file()) or {"site_b": "scored"}  # noqa: E731
        res = ensemble_folds.run_fold_ensemble(
            out, {0: ckpts}, {"chosen": None}, None, "cpu", external=hook
        )
        assert seen == [True] and res["external"] == {"site_b": "scored"}
        return fitted, load_ensemble(res["ensemble"]), json.loads(Path(res["metrics"]).read_text())

    rng = np.random.default_rng(5)
    a, ens_a, m_a = run(data.images["test"], data.labels["test"], tmp_path / "a")
    noise = rng.integers(0, 255, data.images["test"].shape, dtype=np.uint8)
    b, ens_b, m_b = run(noise, data.labels["test"][::-1].copy(), tmp_path / "b")
    assert a["temperatures"] == b["temperatures"]
    assert np.array_equal(a["oof_prob"], b["oof_prob"])
    assert ens_a["weights"] == ens_b["weights"] == [1 / k] * k
    assert ens_a["operating_points"] == ens_b["operating_points"]
    assert [m["temperature"] for m in ens_a["members"]] == a["temperatures"]
    assert ens_a["method"] == "cv_folds" and m_a["oof"] == m_b["oof"]
    assert m_a["test"] != m_b["test"]  # the test figures did see the test split


def _oof(prob, paths, name: str) -> dict:
    prob = np.asarray(prob, dtype=np.float64)
    return {
        "records": [{"model": name, "config": {"cv_fold": f}} for f in range(2)],
        "temperatures": [1.0, 1.0],
        "oof_y": np.array([0, 1, 0, 1]),
        "oof_prob": prob,
        "oof_paths": paths,
        "fold_sizes": [2, 2],
    }


def test_a_next_configuration_joins_the_fold_ensemble_only_where_it_lowers_oof_nll():
    """Greedy over whole configurations on out-of-fold NLL: a configuration that is right
    where the chosen one is unsure joins, one that is confidently wrong is left out, one whose
    folds hold other images cannot be averaged; the images' order is matched by path."""
    paths = ["a", "b", "c", "d"]
    chosen = _oof([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.4, 0.6]], paths, "cnn")
    helps = _oof([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]], ["d", "c", "a", "b"], "vit")
    hurts = _oof([[0.01, 0.99]] * 4, paths, "alexnet")
    other_folds = _oof([[0.9, 0.1]] * 4, ["a", "b", "c", "e"], "vgg16")
    out = ensemble_folds.add_configurations([chosen, hurts, helps, other_folds], [3, 1, 0, 2])
    assert [(r["candidate"], r["kept"]) for r in out["configurations"]] == [
        (3, True),
        (1, False),
        (0, True),
        (2, False),
    ]
    assert out["configurations"][3]["oof_nll"] is None
    # helps, reordered to a, b, c, d: [.9,.1], [.1,.9], [.9,.1], [.1,.9]
    assert out["oof_prob"] == pytest.approx(
        np.array([[0.75, 0.25], [0.25, 0.75], [0.65, 0.35], [0.25, 0.75]])
    )
    assert out["configurations"][2]["oof_nll"] == pytest.approx(
        calibration.nll(out["oof_y"], out["oof_prob"])
    )
    assert out["member_names"] == ["cnn:c3:fold0", "cnn:c3:fold1", "vit:c0:fold0", "vit:c0:fold1"]
    assert len(out["records"]) == len(out["temperatures"]) == 4


def test_the_fold_ensemble_tries_the_other_complete_candidates_best_mean_first():
    sel = {
        "mode": "max",
        "chosen": {"candidate": 2},
        "candidates": [
            {"candidate": 0, "mean": 0.8, "complete": True},
            {"candidate": 1, "mean": 0.95, "complete": False},
            {"candidate": 2, "mean": 0.9, "complete": True},
            {"candidate": 3, "mean": 0.85, "complete": True},
        ],
    }

    def order(selection):
        return [c["candidate"] for c in tune_folds.ranked_candidates(selection)]

    assert order(sel) == [2, 3, 0]
    assert order({**sel, "mode": "min"}) == [2, 0, 3]


@pytest.mark.slow
@pytest.mark.slow_ray
def test_cv_sweep_fold_runs_killed_mid_epoch_resume_and_form_the_ensemble(tmp_path):
    """--cv 2 --cv-top 1 --refit-seeds 1: one search run, which ran all its epochs and so is
    fold 0, one fold run (fold 1) and one refit on all of train+val, each SIGKILLed halfway
    through epoch 2 and restarted from epoch 1's checkpoint (the inline trial runner's kill
    test, for each of the three stages); results.parquet lists all three
    with their fold (-1: the refit), cv.json says how the choice was made, ensemble.pt holds
    the refit and fold_ensemble.pt the two fold models."""
    space = tmp_path / "one.yaml"
    space.write_text(
        "fixed: {model: cnn, epochs: 2, img_size: 32, limit_per_split: 48, batch_size: 16,\n"
        "        precision: fp32, checkpoint_every: 1, model.width: 8, model.head_dims: [16],\n"
        "        model.pool_size: 2}\n"
        "params:\n  lr: {type: categorical, choices: [0.001]}\n"
    )
    cmd = [sys.executable, "-m", "ray_xray.tune", "--space", str(space), "--trials", "1"]
    cmd += ["--storage", str(tmp_path), "--name", "cv", "--trial-scheduler", "fifo"]
    cmd += ["--cv", "2", "--cv-top", "1", "--refit-seeds", "1", "--data", "synthetic:chest3:20"]
    env = {**os.environ, "RAY_XRAY_FAULT": "kill:2", "RAY_XRAY_FAULT_LOG": str(tmp_path / "kills")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    kills = (tmp_path / "kills").read_text().splitlines()
    assert len(kills) == 3 and all(k.endswith("in epoch 2") for k in kills), kills
    exp = tmp_path / "cv"
    table = pd.read_parquet(exp / "results.parquet")
    assert list(table["status"]) == ["TERMINATED"] * 3 and list(table["epochs"]) == [2] * 3
    assert list(table["cv_stage"]) == ["search", "folds", "refit"]
    assert list(table["cv_fold"]) == [0, 1, -1] and list(table["cv_candidate"]) == [0] * 3
    # Every trial is an inline one (test_faults.py kills a torchtrainer trial): what Tune
    # received, in order, is epoch 1 once before the kill, then 2 after the restart, and the
    # training history of its last checkpoint lists each epoch once (none lost or run twice).
    assert json.loads((tmp_path / "cv" / "sweep.json").read_text())["plan"]["runner"] == "inline"
    for _, row in table.iterrows():
        reported = [
            json.loads(ln)["epoch"]
            for ln in Path(row["trial_dir"], "result.json").read_text().splitlines()
        ]
        assert reported == [1, 2], reported
        state = torch.load(Path(row["checkpoint_path"], "checkpoint.pt"), weights_only=True)
        assert [h["epoch"] for h in state["history"]] == [1, 2]
        if row["cv_stage"] != "search":
            assert json.loads(row["config"])["cv_fold"] == row["cv_fold"]
    sel = json.loads((exp / "cv.json").read_text())
    assert sel["folds"] == 2 and sel["search_trials"] == 1
    assert sel["chosen"]["trial_ids"] == list(table["trial_id"][:2])  # fold 0: the search run
    assert sel["refit_trial_ids"] == [table["trial_id"][2]]
    assert sel["reused_search_runs"] == {"0": table["trial_id"][0]}
    page = (exp / "ensemble" / "report.html").read_text()  # the report says how it chose
    assert "How the configuration was selected" in page and "(1 trials)" in page
    assert f"Fold 0 of candidate 0 (trial {table['trial_id'][0]}) is its search run" in page
    assert f"file://{exp}/ensemble/report.html" in r.stdout
    from ray_xray.checkpoint import load_ensemble

    ens = load_ensemble(exp / "ensemble" / "ensemble.pt")
    assert ens["method"] == "cv_refit" and [m["config"]["cv_fold"] for m in ens["members"]] == [-1]
    folded = load_ensemble(exp / "ensemble" / "fold_ensemble.pt")
    assert folded["method"] == "cv_folds"
    assert sorted(m["config"]["cv_fold"] for m in folded["members"]) == [0, 1]
    metrics = json.loads((exp / "ensemble" / "metrics.json").read_text())
    assert "ci" in json.dumps(metrics["test"]["intervals"]) and metrics["oof"]["macro_f1"] >= 0
    assert "ci" in json.dumps(metrics["fold_ensemble_test"]["intervals"])
    assert "refit ensemble, test" in page and "(a refit: no validation)" in r.stdout + r.stderr
    # `python -m ray_xray.ensemble EXP` rebuilds the same refit ensemble (not a top-k of folds)
    r = subprocess.run(
        [sys.executable, "-m", "ray_xray.ensemble", str(exp), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    again = load_ensemble(exp / "ensemble" / "ensemble.pt")
    assert again["method"] == "cv_refit"
    assert [m["temperature"] for m in again["members"]] == [
        m["temperature"] for m in ens["members"]
    ]


def test_folds_group_by_the_patient_column_when_file_names_are_hashes():
    """pneumonia2's files are named by hash; the patient comes from the manifest's
    source_path (the data's patient column)."""
    import dataclasses

    data = prepared()
    hashed = {s: [f"/d/{s}/{i:016x}.png" for i in range(len(p))] for s, p in data.paths.items()}
    pids = {s: [Path(p).name.split("_")[0] for p in data.paths[s]] for s in data.paths}
    data = dataclasses.replace(data, paths=hashed, patients=pids)
    for fold in range(3):
        view = fold_view(data, 3, fold)
        assert not set(view.patients["train"]) & set(view.patients["val"])
        assert len(view.patients["val"]) == len(view.paths["val"])


def test_a_test_set_unlike_the_folds_is_warned_about():
    from ray_xray.ensemble.folds import oof_test_warnings

    test = {"macro_f1": 0.66, "accuracy": 0.75, "auc": 0.93}
    test["intervals"] = {
        "accuracy": {"ci": [0.70, 0.79]},  # Wilson's, the one the report shows
        "bootstrap": {"macro_f1": [0.62, 0.70], "accuracy": [0.74, 0.755]},
    }
    warned = oof_test_warnings({"macro_f1": 0.968, "accuracy": 0.76, "auc": 0.99}, test)
    assert len(warned) == 1 and warned[0].startswith("test macro-F1 0.660 [0.620, 0.700] vs 0.968")


def test_a_one_class_fold_ensemble_is_said_to_be_one_not_a_shift():
    """A new user's `--smoke-test --cv 2 --set img_size=8`: the ensemble called every test
    image one class, and the log said 'test accuracy 0.328 [0.328, 0.328] vs 0.281 out of fold:
    validation and test disagree', from the bootstrap's zero-width intervals. Accuracy is
    compared with its Wilson interval, a zero-width interval with nothing, and the one class
    is what the warning says."""
    from ray_xray.ensemble.folds import one_class_warning, oof_test_warnings
    from ray_xray.scores import report

    y = np.repeat([0, 1, 2], [20, 21, 20])
    prob = np.tile([0.2, 0.5, 0.3], (61, 1))
    test = report(y, prob, ["a", "b", "c"], intervals=True, n_boot=200)
    assert (
        test["intervals"]["bootstrap"]["accuracy"][0]
        == test["intervals"]["bootstrap"]["accuracy"][1]
    )
    assert oof_test_warnings({"macro_f1": 0.2, "accuracy": 0.281, "auc": 0.5}, test) == []
    warned = one_class_warning(prob, ["a", "b", "c"])
    assert len(warned) == 1 and warned[0].startswith("the ensemble predicts 'b' for all 61")
    assert one_class_warning(np.eye(3)[[0, 1, 2, 1]], ["a", "b", "c"]) == []


def test_fold_report_says_how_the_configuration_was_selected(tmp_path):
    """The --cv sweep's report.html names the folds and their sizes, every candidate's fold
    values with mean and sd (the chosen one marked), and out-of-fold beside test with the
    disagreement warnings; figures are drawn from the ensemble's test probabilities."""
    from ray_xray.report.folds import write_fold_report
    from ray_xray.scores import operating_points, report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(np.eye(2)[y] * 0.6 + rng.random((60, 2)) * 0.4, 1e-3, None)
    p /= p.sum(1, keepdims=True)
    cands = [
        {"candidate": 0, "fold_values": [0.91, 0.93, 0.92], "mean": 0.92, "std": 0.01},
        {"candidate": 1, "fold_values": [0.95, 0.94, 0.96], "mean": 0.95, "std": 0.01},
        {"candidate": 2, "fold_values": [0.97, None, 0.96], "mean": None, "std": None},
    ]
    for c, model in zip(cands, ["cnn", "resnet18", "vit"], strict=True):
        c.update(complete=c["mean"] is not None, config={"model": model})
    selection = {"metric": "best_val_macro_f1", "mode": "max", "folds": 3}
    selection |= {"candidates": cands, "chosen": cands[1]}
    metrics = {
        "experiment": "exp",
        "classes": ["normal", "pneumonia"],
        "n_members": 3,
        "configurations": [
            {"candidate": 1, "oof_nll": 0.2, "kept": True},
            {"candidate": 0, "oof_nll": 0.25, "kept": False},
        ],
        "n_test": 60,
        "fold_val_sizes": [163, 162, 165],
        "selection": selection,
        "oof": {"accuracy": 0.97, "macro_f1": 0.96, "auc": 0.99},
        "test": report(y, p, ["normal", "pneumonia"], intervals=True, n_boot=50),
        "warnings": ["test accuracy 0.80 [0.70, 0.88] vs 0.970 out of fold: they disagree"],
    }
    # fixed on out-of-fold predictions (here the test's own, for the shape of the table)
    metrics["operating_points"] = operating_points(y, p, y, p, metrics["classes"])
    page = write_fold_report(tmp_path, metrics, y, p, search_trials=14, log=lambda m: None)
    text = page.read_text()
    assert "How the configuration was selected" in text
    assert "held-out fold sizes: 163, 162, 165" in text and "(14 trials)" in text
    assert '<tr class="chosen"><td class="text">candidate 1 (resnet18)' in text
    assert "0.9700, -, 0.9600" in text and "no (a fold missing)" in text
    assert "candidate 1 (chosen; out-of-fold NLL 0.2000)" in text
    assert "candidate 0 (left out: out-of-fold NLL with it 0.2500)" in text
    assert "warning: test accuracy 0.80" in text and "could not be drawn" not in text
    assert (tmp_path / "figures" / "confusion.png").is_file()
    assert (tmp_path / "figures" / "roc_pr.png").is_file()
    # what the sweep's own report has besides: operating points (those ensemble.pt stores),
    # per-class intervals with k/n, and the ensemble's reliability on test
    assert 'id="operating-points"' in text and 'pneumonia</td><td class="text">sens0.90' in text
    pc = metrics["test"]["intervals"]["per_class"]["pneumonia"]["sensitivity"]
    assert 'id="intervals"' in text and f"{pc['k']}/{pc['n']}" in text
    assert 'id="calibration"' in text and (tmp_path / "figures" / "reliability.png").is_file()


def test_a_resumed_search_leaves_the_fold_stage_only_what_is_left_of_the_budget(monkeypatch):
    """At 8770c51 the fold stage measured the search's time from this process's Tuner.fit
    alone: a sweep interrupted 400 s into its 600-s budget, then resumed, planned its fold
    stage as if the whole budget were left. It now reads the stopper Tune restored (with the
    400 s it had spent) and its clock in this process, the wind-down after its last call
    included; with no budget (no stopper) this process's time stands."""
    import pickle

    from ray.tune.stopper import CombinedStopper, TimeoutStopper

    from ray_xray.tune import service

    clock = _Clock()
    monkeypatch.setattr(tune_folds.time, "monotonic", clock)
    opts = service.SweepOptions(cv=3, cv_top=2, budget_minutes=10)
    first = service._run_config(opts, "resumed", "/tmp", epochs=6).stop
    first("a", {"val_macro_f1": 0.9, "epoch": 6, "time_total_s": 60.0})
    assert not first.stop_all()
    clock.now += 400  # interrupted here: Tune saves its state, the stopper with it
    assert not first.stop_all() and first.elapsed_s() == pytest.approx(400)
    saved = pickle.dumps(CombinedStopper(first, TimeoutStopper(600)))
    del tune_folds._RUNNING["resumed"]  # the process ends
    clock.now += 5000  # the pause before the resume does not count
    restored = pickle.loads(saved)._stoppers[0]  # what Tune resumes the search with
    assert not restored.stop_all()
    clock.now += 20  # the resumed search's wind-down after its last call

    seen = {}

    def fold_stage(plan, grid, overrides, runtime, resources, search_s):
        seen["search_s"] = search_s

    class Tuner:
        def fit(self):
            clock.now += 0.5  # this process's whole Tuner.fit: the old measure
            return type("Grid", (), {"errors": []})()

    monkeypatch.setattr(service, "_cv_stage", fold_stage)
    space = type("Space", (), {"name": "one"})()
    plan = service.SweepPlan(opts, space, "resumed", "/tmp/resumed", None)
    resources = {"max_concurrent": 2, "cpus_per_trial": 1}
    service._fit(plan, Tuner(), service.SignalGuard("hint"), {}, {}, resources)
    assert seen["search_s"] == pytest.approx(420.5)  # 400 before, 20 + 0.5 in this process
    # no stopper registered (no --budget-minutes): this process's time
    service._fit(plan, Tuner(), service.SignalGuard("hint"), {}, {}, resources)
    assert seen["search_s"] == pytest.approx(0.5)


def test_a_fold_run_or_refit_that_failed_on_a_full_disk_ends_the_sweep_in_one_error(monkeypatch):
    """The search's trials were checked for a full disk before; a fold run's or a refit's
    failure was not, so a --cv sweep whose fold stage could not write its checkpoints went on
    to write results that mark it finished. Now every stage's errors are checked."""
    import errno

    from ray_xray.tune import service

    full = OSError(errno.ENOSPC, "No space left on device")
    grids = {
        name: type("Grid", (), {"errors": errs})()
        for name, errs in (("search", []), ("folds", [full]), ("refit", [full, RuntimeError()]))
    }

    class Stage:
        grid, refit_grid = grids["folds"], None

    monkeypatch.setattr(service, "_cv_stage", lambda *a: Stage())
    monkeypatch.setattr(service, "_refit_stage", lambda *a: grids["refit"])
    space = type("Space", (), {"name": "one"})()
    resources = {"max_concurrent": 2, "cpus_per_trial": 1}
    tuner = type("Tuner", (), {"fit": lambda self: grids["search"]})()
    for refit_seeds, failed in ((0, 1), (2, 2)):
        opts = service.SweepOptions(cv=3, cv_top=2, refit_seeds=refit_seeds)
        plan = service.SweepPlan(opts, space, "full", "/tmp/full", None)
        with pytest.raises(OSError, match=f"{failed} trial\\(s\\) could not save") as err:
            service._fit(plan, tuner, service.SignalGuard("hint"), {}, {}, resources)
        assert err.value.errno == errno.ENOSPC and err.value.filename == "/tmp/full"
