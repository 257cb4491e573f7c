"""`python -m ray_xray.evaluate`: intervals, shift check, stress test, bad input, the report.

One tiny model is trained in-process (no Ray) on synthetic:chest3 at 32 px for the session;
other sets are synthetic folders written to tmp_path, and shared/data when present.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree

from ray_xray import checkpoint, stats
from ray_xray.evaluate.stress import PERTURBATIONS, perturb, stratified_subset

CLASSES = ["normal", "pneumonia", "tuberculosis"]
SPEC = "synthetic:chest3:30"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `train`-style run folder (best_model.pt) of a small CNN: 2 epochs, 32 px, CPU."""
    import torch

    from ray_xray.config import TrainConfig
    from ray_xray.data import load_for_config
    from ray_xray.train.loop import Trainer, train_epochs

    torch.manual_seed(0)
    cfg = TrainConfig(
        model="cnn",
        data=SPEC,
        img_size=32,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        model_kwargs={"width": 8, "head_dims": [16], "pool_size": 2},
        device="cpu",
        precision="fp32",
        aug_strength=0.0,
    )
    data = load_for_config(cfg)
    tr = Trainer.build(cfg, data, torch.device("cpu"))
    progress = train_epochs(tr)
    out = tmp_path_factory.mktemp("run")
    rec = checkpoint.model_record(
        tr.bare, cfg, data.classes, data.mean, data.std, progress.history[-1]
    )
    checkpoint.atomic_save(rec, out / "best_model.pt")
    return out


def _cli(argv, capsys):
    """Run the CLI as `python -m` would; returns (exit code, stdout, stderr)."""
    from ray_xray.cli import run
    from ray_xray.evaluate.__main__ import main

    with pytest.raises(SystemExit) as exc:
        run(main, argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


# ---------------------------------------------------------------- statistics


def _noisy(n=400, k=3, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + signal * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_point_metrics_equal_sklearn_and_intervals_bracket_them():
    from ray_xray.metrics import summary

    for k in (2, 3, 4):
        y, p = _noisy(k=k, seed=k)
        names = [f"c{i}" for i in range(k)]
        ref = summary(y, p, names, prefix="")
        ours, samples = stats.with_intervals(y, p, names, n_boot=300, seed=1)
        assert ours["accuracy"]["value"] == pytest.approx(ref["acc"])
        assert ours["macro_f1"]["value"] == pytest.approx(ref["macro_f1"])
        assert ours["auc"]["value"] == pytest.approx(ref["auc"])
        for c in names:
            assert ours[f"recall_{c}"]["value"] == pytest.approx(ref[f"recall_{c}"])
        for d in ours.values():
            assert d["low"] <= d["value"] <= d["high"] and d["high"] - d["low"] > 0
        assert len(samples["accuracy"]) == 300
    # The same seed gives the same interval; the width shrinks as the set grows.
    y, p = _noisy(n=200)
    a = stats.with_intervals(y, p, CLASSES, 200, seed=3)[0]["macro_f1"]
    assert a == stats.with_intervals(y, p, CLASSES, 200, seed=3)[0]["macro_f1"]
    y4, p4 = _noisy(n=3200)
    b = stats.with_intervals(y4, p4, CLASSES, 200, seed=3)[0]["macro_f1"]
    assert b["high"] - b["low"] < (a["high"] - a["low"]) / 2


def test_bootstrap_is_stratified_and_handles_a_missing_class():
    y = np.array([0] * 30 + [2] * 10)
    w = stats.resample_weights(y, 50, seed=0)
    # every resample keeps each class's count
    assert np.array_equal(np.bincount(y, weights=w[7], minlength=3), [30, 0, 10])
    assert np.array_equal(w.sum(1), np.full(50, 40.0))
    prob = np.full((40, 3), 0.1)
    prob[np.arange(40), y] = 0.8
    head, _ = stats.with_intervals(y, prob, CLASSES, 100)
    assert np.isnan(head["recall_pneumonia"]["value"])
    # Macro-F1 over the 2 classes present: both perfect (sklearn over all 3 would say 0.667).
    assert head["macro_f1"]["value"] == pytest.approx(1.0)
    assert head["auc"]["value"] == pytest.approx(1.0)


def test_drops_are_flagged_only_beyond_resampling_noise():
    y, good = _noisy(n=600, signal=2.5, seed=0)
    y2, same = _noisy(n=600, signal=2.5, seed=1)
    y3, worse = _noisy(n=600, signal=0.8, seed=2)
    ref = stats.with_intervals(y, good, CLASSES, 400, seed=0)
    d_same = stats.drops(*ref, *stats.with_intervals(y2, same, CLASSES, 400, seed=1))
    d_worse = stats.drops(*ref, *stats.with_intervals(y3, worse, CLASSES, 400, seed=2))
    assert not d_same["macro_f1"]["significant"]
    assert d_same["macro_f1"]["low"] < 0 < d_same["macro_f1"]["high"]
    assert d_worse["macro_f1"]["significant"] and d_worse["macro_f1"]["low"] > 0
    assert d_worse["macro_f1"]["drop"] == pytest.approx(
        d_worse["macro_f1"]["reference"] - d_worse["macro_f1"]["new"]
    )
    assert stats.specificity_holds(0.88, 0.90, 100) is True  # within 1.96 SE (0.03) of 0.90
    assert stats.specificity_holds(0.80, 0.90, 100) is False
    assert stats.specificity_holds(0.5, 0.90, 0) is None


# ---------------------------------------------------------------- stress perturbations


def test_perturbations_keep_shape_and_grow_with_severity():
    from ray_xray.data.synthetic import render

    imgs = np.stack([render("pneumonia", s, 48) for s in range(4)])
    for name, levels in PERTURBATIONS.items():
        change = []
        for _, param in levels:
            out = perturb(name, param, imgs, seed=0)
            assert out.shape == imgs.shape and out.dtype == np.uint8
            change.append(np.abs(out.astype(float) - imgs).mean())
        assert change[0] > 0, name
        assert change == sorted(change), f"{name}: {change}"
    assert np.array_equal(perturb("invert", 1.0, imgs), 255 - imgs)
    assert np.array_equal(perturb("noise", 10.0, imgs, 3), perturb("noise", 10.0, imgs, 3))
    with pytest.raises(KeyError):
        perturb("sepia", 1.0, imgs)


def test_the_default_output_folder_names_the_sweep_an_ensemble_came_from(tmp_path):
    """Two sweeps' ensembles evaluated on the same data went to one folder
    (ensemble-ensemble_on_...), the second report replacing the first without a word."""
    from types import SimpleNamespace

    from ray_xray.evaluate.core import default_out

    outs = set()
    for sweep in ("vit-smoke", "resnet18-smoke"):
        (tmp_path / sweep / "ensemble").mkdir(parents=True)
        path = tmp_path / sweep / "ensemble" / "ensemble.pt"
        path.write_bytes(b"")
        subject = SimpleNamespace(path=path, kind="ensemble", members=[{"model": "cnn"}])
        outs.add(default_out(subject, "synthetic:chest3", "test"))
    assert outs == {
        Path("runs/evaluate/ensemble-vit-smoke_on_synthetic_chest3_test"),
        Path("runs/evaluate/ensemble-resnet18-smoke_on_synthetic_chest3_test"),
    }
    model = SimpleNamespace(path=tmp_path / "run1", kind="model", members=[{"model": "cnn"}])
    assert default_out(model, "../data/brain4/", "val").name == "cnn-run1_on_brain4_val"


def test_stratified_subset_keeps_every_class():
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = stratified_subset(y, 100, seed=0)
    assert len(idx) <= 100 and set(np.bincount(y[idx])) == {90, 9, 1}
    assert len(stratified_subset(y, 0)) == len(y)
    # --limit N scores N images, not N - 1: the rows the rounding down leaves go to the
    # largest remainders (pneumonia2's test, 231 / 387: quotas 37.4 and 62.6)
    y = np.array([0] * 231 + [1] * 387)
    assert np.bincount(y[stratified_subset(y, 100)]).tolist() == [37, 63]
    y = np.array([0] * 167 + [1] * 167 + [2] * 166)
    assert len(stratified_subset(y, 200)) == 200
    assert len(np.unique(stratified_subset(y, 200))) == 200


def test_every_headline_proportion_gets_a_wilson_interval_with_its_counts():
    """0/76 is not certainty: Wilson gives [0, 0.048] where a bootstrap of zeros gives [0, 0];
    76/76 likewise keeps a lower bound below 1."""
    from ray_xray.evaluate.core import wilson_proportions
    from ray_xray.stats import wilson

    y = np.array([0] * 76 + [1] * 76 + [2] * 10)
    pred = np.array([1] * 76 + [1] * 76 + [2] * 5 + [0] * 5)  # class 0: 0/76, class 1: 76/76
    prob = np.eye(3)[pred] * 0.8 + 0.2 / 3
    headline, _ = stats.with_intervals(y, prob, CLASSES, 200, 0)
    assert headline["recall_normal"]["high"] == 0.0  # the bootstrap's zero-width interval
    wilson_proportions(headline, y, pred, CLASSES)
    zero, full, acc = (headline[k] for k in ("recall_normal", "recall_pneumonia", "accuracy"))
    assert (zero["k"], zero["n"], zero["low"]) == (0, 76, 0.0)
    assert zero["high"] == pytest.approx(0.0481, abs=1e-3)
    assert (full["k"], full["n"], full["high"]) == (76, 76, 1.0) and full["low"] < 0.96
    assert (acc["k"], acc["n"]) == (81, 162)
    assert (acc["low"], acc["high"]) == pytest.approx(wilson(81, 162))
    assert headline["macro_f1"].get("interval") is None  # not a proportion: bootstrap kept


# ---------------------------------------------------------------- evaluate end to end


def test_evaluate_a_train_run_on_its_own_data_matches_the_training_evaluation(run_dir, tmp_path):
    from ray_xray.data import load_data
    from ray_xray.evaluate import evaluate
    from ray_xray.train.run import evaluate_record

    r = evaluate(str(run_dir), SPEC, out=tmp_path / "ev", n_boot=200, device="cpu")
    rec = checkpoint.load_checkpoint(run_dir / "best_model.pt")
    full, y, _ = evaluate_record(rec, load_data(SPEC, 32), "test", "cpu")
    assert r.is_own_data and r.n == len(y) == 18
    # Its own test split is compared with its own validation split.
    assert r.shift["reference_split"] == "val" and r.shift["n_reference"] == 18
    assert r.reference["split"] == "val"
    assert r.metrics["accuracy"] == pytest.approx(full["accuracy"])
    assert r.metrics["macro_f1"] == pytest.approx(full["macro_f1"])
    assert r.headline["macro_f1"]["value"] == pytest.approx(full["macro_f1"])
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["format"] == "ray_xray/evaluation/1" and saved["partial"] is False
    assert set(saved["headline"]) == {"accuracy", "macro_f1", "auc"} | {
        f"recall_{c}" for c in CLASSES
    }
    op = saved["operating_points"]["normal"]["0.90"]
    assert op["val_specificity"] >= 0.9 and 0 <= op["eval_specificity"] <= 1
    html = (tmp_path / "ev" / "report.html").read_text()
    for part in ("Metrics", "Confusion matrix", "Calibration", "Operating points", "Grad-CAM"):
        assert part in html
    assert "failed" not in html
    figs = {p.name for p in (tmp_path / "ev" / "figures").iterdir()}
    assert {"confusion.png", "roc_pr.png", "reliability.png", "samples.png", "gradcam.png"} <= figs


def test_evaluate_scores_the_whole_split_not_the_runs_training_subset(run_dir, tmp_path, capsys):
    """A run trained with limit_per_split is evaluated on every image of the split; --limit N
    subsamples on purpose, and the count is printed."""
    rec = checkpoint.load_checkpoint(run_dir / "best_model.pt")
    rec["config"]["limit_per_split"] = 6
    run = tmp_path / "limited"
    run.mkdir()
    checkpoint.atomic_save(rec, run / "best_model.pt")
    common = [str(run), SPEC, "--bootstrap", "50", "--device", "cpu", "--no-images"]
    code, out, err = _cli([*common, "--out", str(tmp_path / "all")], capsys)
    assert code == 0, err
    assert "(test, all 18 images)" in out
    m = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert m["n"] == m["n_available"] == 18
    assert out.strip().splitlines()[-1] == (
        f"report:           {(tmp_path / 'all' / 'report.html').as_uri()}"
    )
    code, out, err = _cli([*common, "--out", str(tmp_path / "nine"), "--limit", "9"], capsys)
    assert code == 0, err
    assert "(test, 9 of 18 images: --limit 9)" in out
    m = json.loads((tmp_path / "nine" / "metrics.json").read_text())
    assert (m["n"], m["n_available"]) == (9, 18)
    assert sorted(np.bincount(np.array(m["metrics"]["confusion"]).sum(1))) != []  # all classes
    assert all(m["headline"][f"recall_{c}"]["n"] == 3 for c in CLASSES)  # stratified: 3 each
    code, out, err = _cli([*common, "--limit", "-1"], capsys)
    assert code == 2 and err.strip() == "error: --limit must be >= 0, got -1"


def test_shift_warnings_only_for_other_data(run_dir, tmp_path, monkeypatch):
    """With every drop made significant, the model's own test split gets notes that say it is
    its own data, and only data from elsewhere gets `warning:` lines."""
    from ray_xray.evaluate import evaluate

    real = stats.drops

    def all_significant(*args, **kwargs):
        out = real(*args, **kwargs)
        for d in out.values():
            d.update(significant=True, low=max(d["low"], 1e-3))
        return out

    monkeypatch.setattr(stats, "drops", all_significant)
    own = evaluate(str(run_dir), SPEC, out=tmp_path / "own", n_boot=50, device="cpu", images=False)
    assert not [w for w in own.warnings if "fell from" in w]
    notes = [n for n in own.notes if n.startswith("own data, not a site shift: ")]
    assert notes and all("own val split" in n and "beyond resampling noise" in n for n in notes)
    ext = write_tree(tmp_path / "ext", per_class=8, size=48, seed=5)
    other = evaluate(
        str(run_dir), str(ext), out=tmp_path / "x", n_boot=50, device="cpu", images=False
    )
    assert [w for w in other.warnings if "fell from" in w]
    assert not [n for n in other.notes if n.startswith("own data")]


def test_evaluate_on_another_folder_runs_the_shift_check_and_stress(run_dir, tmp_path, capsys):
    ext = write_tree(tmp_path / "ext", per_class=8, size=48, seed=5)
    shutil.rmtree(ext / "train")  # an external set needs no training split
    code, out, err = _cli(
        [
            str(run_dir),
            str(ext),
            "--out",
            str(tmp_path / "ev"),
            "--stress",
            "--bootstrap",
            "200",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    assert "macro-F1" in out and "on the model's own test split" in out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert not m["is_own_data"] and m["n"] == 24
    shift = m["shift"]
    assert shift["n_reference"] == 18 and set(shift["ece"]) == {"reference", "new"}
    d = shift["drops"]["accuracy"]
    assert d["drop"] == pytest.approx(d["reference"] - d["new"])
    assert d["low"] <= d["drop"] <= d["high"]
    assert d["new"] == pytest.approx(m["metrics"]["accuracy"])
    warned = [w for w in m["warnings"] if "beyond resampling noise" in w]
    assert len(warned) == sum(x["significant"] for x in shift["drops"].values())
    assert "reference_test_specificity" in m["operating_points"]["normal"]["0.90"]
    rows = m["stress"]["rows"]
    assert rows[0]["level"] == "clean" and rows[0]["macro_f1"] == pytest.approx(
        m["headline"]["macro_f1"]["value"]
    )
    assert len(rows) == 1 + sum(len(v) for v in PERTURBATIONS.values())
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Shift check" in html and "Stress test" in html and "failed" not in html
    assert (tmp_path / "ev" / "figures" / "stress.png").is_file()


def test_partial_sets_unknown_classes_and_plain_class_folders(run_dir, tmp_path, capsys):
    from ray_xray.evaluate import evaluate

    src = write_tree(tmp_path / "src", per_class=4, size=40, seed=7) / "test"
    flat = tmp_path / "flat"  # class folders, no split folders, no pneumonia
    for c in ("normal", "tuberculosis"):
        shutil.copytree(src / c, flat / c.upper())
    r = evaluate(
        str(run_dir), str(flat), out=tmp_path / "ev", n_boot=50, images=False, device="cpu"
    )
    assert r.partial and r.missing_classes == ["pneumonia"] and r.n == 8
    assert r.warnings[0].startswith("partial evaluation: no pneumonia")
    assert any("no split folders" in n for n in r.notes)
    assert np.isnan(r.headline["recall_pneumonia"]["value"])
    # The shift check compares like with like: the reference averages over the same 2 classes.
    assert r.shift["classes_compared"] == ["normal", "tuberculosis"]
    assert "recall_pneumonia" not in r.shift["drops"]
    assert not (tmp_path / "ev" / "figures" / "samples.png").exists()
    shutil.copytree(src / "normal", flat / "covid")
    code, _, err = _cli([str(run_dir), str(flat)], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: {flat}: class(es) covid unknown to the model (it knows normal, pneumonia, "
        "tuberculosis)"
    )


@pytest.mark.parametrize(
    "case",
    [
        "missing_checkpoint",
        "junk_checkpoint",
        "missing_data",
        "empty_split",
        "bad_split",
        "sweep_without_model",
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(case, run_dir, tmp_path, capsys):
    flat = tmp_path / "flat" / "normal"
    flat.mkdir(parents=True)
    from conftest import grey_png

    grey_png(flat / "a.png")
    ckpt, data, extra = str(run_dir), str(tmp_path / "flat"), []
    if case == "missing_checkpoint":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "junk_checkpoint":
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        ckpt = str(tmp_path / "junk.pt")
    elif case == "missing_data":
        data = str(tmp_path / "nothing")
    elif case == "empty_split":
        extra = ["--split", "val"]
    elif case == "bad_split":
        extra = ["--split", "holdout"]
    else:
        (tmp_path / "exp").mkdir()
        (tmp_path / "exp" / "results.parquet").write_bytes(b"")
        ckpt = str(tmp_path / "exp")
    code, out, err = _cli([ckpt, data, "--out", str(tmp_path / "ev"), *extra], capsys)
    assert code == 2
    # argparse's own refusals read "PROG: error: ..." after a usage line.
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(errors) == 1 and "Traceback" not in err
    assert not (tmp_path / "ev" / "metrics.json").exists()
    if case == "empty_split":
        assert errors[0].endswith(
            "no 'val' images (splits present: test); choose one with --split, or --split all"
        )


def test_a_sweep_folder_is_evaluated_through_its_ensemble(tmp_path):
    from test_report import fake_sweep

    from ray_xray.ensemble import run_ensemble
    from ray_xray.evaluate import evaluate

    specs = [
        ("cnn", 32, {"width": 8, "head_dims": [16], "pool_size": 2}),
        ("cnn", 48, {"width": 8, "head_dims": [16], "pool_size": 2}),
    ]
    exp = fake_sweep(tmp_path / "exp", specs)
    run_ensemble(exp, top_k=2, device="cpu", report_html=False)
    r = evaluate(
        str(exp), "synthetic:chest3", out=tmp_path / "ev", n_boot=50, images=False, device="cpu"
    )
    assert r.kind == "ensemble" and r.checkpoint.endswith("ensemble/ensemble.pt")
    assert "its ensemble" in r.notes[0] and r.is_own_data
    saved = json.loads((exp / "ensemble" / "metrics.json").read_text())
    chosen = next(e for e in saved["ensembles"] if e["chosen"])
    # The whole test split (60 per class): the members' limit_per_split (48, what the sweep
    # and its ensemble figures saw) is not carried over to an evaluation.
    assert r.n == r.n_available == 180 and chosen["test"]["accuracy"] is not None
    r2 = evaluate(
        str(exp / "ensemble" / "ensemble.pt"),
        "synthetic:chest3",
        n_boot=0,
        out=tmp_path / "ev2",
        report_html=False,
        device="cpu",
    )
    assert r2.metrics["accuracy"] == r.metrics["accuracy"]


def test_shared_chest3_test_split_as_external_data(run_dir, tmp_path, shared_data):
    from ray_xray.evaluate import evaluate

    r = evaluate(
        str(run_dir),
        str(shared_data / "chest3"),
        out=tmp_path / "ev",
        n_boot=100,
        images=False,
        device="cpu",
    )
    assert not r.is_own_data and not r.partial and r.n > 100
    assert set(r.shift["drops"]) >= {"accuracy", "macro_f1", "auc"}
    assert Path(r.out, "report.html").is_file()


# ---------------------------------------------------------------- val vs test in sweep reports


def test_val_test_agreement_warns_on_the_pneumonia2_sweep():
    import pandas as pd

    from ray_xray.report.agreement import val_test_agreement

    repo = Path(__file__).resolve().parent.parent
    t = pd.read_csv(repo / "docs/results/sweep-pneumonia2/ensemble_comparison.csv")
    m = t[t["kind"] == "member"]
    a = val_test_agreement(list(m["name"]), list(m["val_macro_f1"]), list(m["test_macro_f1"]))
    # val order 1..5 has test ranks 4, 5, 1, 2, 3: sum d^2 = 30, rho = 1 - 6*30/(5*24) = -0.5
    assert a["n"] == 5 and a["spearman"] == pytest.approx(-0.5)
    assert a["best_by_val"]["name"] == "resnet18:6f3ceba4" and a["best_by_val"]["test_rank"] == 4
    assert a["warning"].startswith("validation and test disagree on the order of the 5")
    same = val_test_agreement(list("abcd"), [0.9, 0.8, 0.7, 0.6], [0.85, 0.8, 0.6, 0.65])
    assert same["spearman"] == pytest.approx(0.8) and same["warning"] is None
    few = val_test_agreement(["a", "b"], [0.9, 0.8], [0.1, 0.2])
    assert few["spearman"] is None and few["warning"] is None and few["n"] == 2


def test_a_train_run_gets_a_report_with_its_training_curves(run_dir, tmp_path, capsys):
    """`python -m ray_xray.train` ends with OUT/report/report.html (training curves from the
    run's metrics.json history, then the evaluation); an unreadable run gives one warning."""
    import shutil

    from ray_xray.config import TrainConfig
    from ray_xray.train.__main__ import write_report

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_macro_f1": 0.3 * e}
        for e in (1, 2)
    ]
    (run / "metrics.json").write_text(json.dumps({"history": history}))
    cfg = TrainConfig(model="cnn", data=SPEC, img_size=32, device="cpu")
    write_report(str(run), cfg, None)
    page = (run / "report" / "report.html").read_text()
    assert "Training curves" in page and "figures/training_curves.png" in page
    assert "2 epochs; best validation macro-F1 0.600 at epoch 2" in page
    assert (run / "report" / "figures" / "training_curves.png").stat().st_size > 1000
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] > 0
    assert (
        f"report:           {(run / 'report' / 'report.html').as_uri()}" in capsys.readouterr().out
    )

    write_report(str(tmp_path / "nothing-here"), cfg, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("warning: no report (") and "python -m ray_xray.evaluate" in err[-1]


def test_an_ensemble_whose_own_data_is_unreadable_scores_its_stored_thresholds():
    """Without its own val split (not readable here), an ordinary sweep's ensemble still gets
    operating points: the thresholds it stores (fixed on that split when it was built), said
    as such; a model that stores none gets none, and the shift check falls back to stored
    figures either way."""
    from ray_xray.evaluate.core import _compare
    from ray_xray.evaluate.result import POINTS_FIXED
    from ray_xray.evaluate.sources import Subject

    y = np.tile([0, 0, 0, 1, 1, 1], 20)  # 60 normals: 2/3 specificity is clearly under 90 %
    prob = np.tile(
        [[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], (20, 1)
    )
    parts = {"y": y, "prob": prob, "headline": {}, "samples": {}}
    member = {"config": {}, "metrics": {}}
    stored = {"pneumonia": {"spec0.90": 0.5, "spec0.95": 0.65}}
    ens = Subject(
        Path("e.pt"),
        "ensemble",
        "e",
        ["normal", "pneumonia"],
        [member],
        [1.0],
        [1.0],
        None,
        stored_points=stored,
    )
    op, fixed_on, shift, _, warnings = _compare(ens, {}, parts, "other", None, "test", 20, 0)
    assert fixed_on == "stored" and "stored in the ensemble" in POINTS_FIXED[fixed_on]
    row = op["pneumonia"]["0.90"]  # threshold 0.5: normals 0.1, 0.3 below, 0.6 above
    assert row["threshold"] == 0.5 and row["eval_specificity"] == pytest.approx(2 / 3)
    assert row["eval_sensitivity"] == pytest.approx(2 / 3) and row["eval_holds"] is False
    assert any("fixed on its sweep's validation split" in w for w in warnings), warnings
    assert op["normal"]["0.90"]["threshold"] is None  # no stored threshold for that class
    assert shift["reference_split"] == "val"  # the stored-figures fallback
    bare = Subject(
        Path("m.pt"), "model", "m", ["normal", "pneumonia"], [member], [1.0], [1.0], None
    )
    assert _compare(bare, {}, parts, "other", None, "test", 20, 0)[:2] == (None, None)
