"""The sweep report: HTML helpers, figures, Pareto front, and the page made from a smoke sweep."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from ray_xray import checkpoint
from ray_xray.calibration import reliability_bins
from ray_xray.report import html, plots
from ray_xray.report.sweep import pareto_mask
from ray_xray.sweep_folder import read_history


def test_html_helpers_escape_and_round():
    t = html.table(["name", "value"], [["<b>x</b> & y", 0.123456], ["n", 3], ["nan", float("nan")]])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in t and "<b>x</b>" not in t
    assert (
        "0.123" in t
        and "0.1235" not in t
        and html.num(0.0012345) == "0.001"
        and "<td>3</td>" in t
        and "–" in t
    )
    assert html.num(0.0012345, small_sig=True) == "0.00123"  # hyperparameters such as lr
    fig = html.figure('figures/a".png', "caption <script>")
    assert 'src="figures/a&quot;.png"' in fig and "<script>" not in fig
    page = html.page("t <1>", "")
    assert "t &lt;1&gt;" in page and "http" not in page


def test_pareto_mask_keeps_only_undominated_points():
    pts = np.array([[0.9, 0.5], [0.8, 0.3], [0.7, 0.6], [0.95, 0.9]])
    # maximise the first, minimise the second
    assert pareto_mask(pts, ["max", "min"]) == [True, True, False, True]


def test_read_history_takes_the_last_report_of_each_epoch(tmp_path):
    lines = [
        {"epoch": 1, "val_macro_f1": 0.4, "val_loss": 1.0},
        {"epoch": 2, "val_macro_f1": 0.5, "val_loss": 0.9},
        {"epoch": 2, "val_macro_f1": 0.6, "val_loss": 0.8},  # repeated after a restart
    ]
    (tmp_path / "result.json").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
    h = read_history(tmp_path)
    assert h["epoch"] == [1, 2] and h["val_macro_f1"] == [0.4, 0.6]
    assert read_history(tmp_path / "missing")["epoch"] == []


def test_figures_render_to_small_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    prob = rng.dirichlet(np.ones(3), 90)
    classes = ["normal", "pneumonia", "tuberculosis"]
    paths = [
        plots.reliability([("a", reliability_bins(y, prob), 0.1)], path=tmp_path / "r.png"),
        plots.roc_pr(y, prob, classes, path=tmp_path / "roc.png", title="t"),
        plots.confusion_matrices(
            [("m", [[3, 1, 0], [0, 2, 1], [1, 0, 4]])], classes, path=tmp_path / "cm.png"
        ),
        plots.sample_grid(
            [
                {"image": np.zeros((16, 16), np.uint8), "title": "t", "correct": i % 2 == 0}
                for i in range(5)
            ]
            + [None],
            3,
            path=tmp_path / "s.png",
        ),
        plots.row_attention_grid(
            [
                {
                    "image": np.zeros((16, 16), np.uint8),
                    "rows": np.linspace(0, 1, 16),
                    "title": "t",
                    "correct": True,
                }
            ]
            * 2,
            2,
            path=tmp_path / "a.png",
        ),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 400_000


@pytest.fixture
def sweep(smoke_sweep):
    return smoke_sweep  # tests/conftest.py: one smoke sweep per session


@pytest.mark.slow_ray
def test_report_references_every_figure_and_every_figure_exists(sweep):
    out = sweep["out"]
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs, "the report shows no figure"
    for src in srcs:
        assert not src.startswith(("http:", "https:", "//", "/")), src  # relative, no CDN
        assert (out / src).is_file(), src
    on_disk = {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    assert on_disk == set(srcs)  # nothing drawn that the page does not show
    for name in ("training_curves", "confusion", "roc_pr", "reliability", "samples", "gradcam"):
        assert f"figures/{name}.png" in srcs, name
    assert "could not be drawn" not in page and "failed:" not in page
    assert "<script" not in page and "https://" not in page
    exp_name = sweep["exp"].name
    assert f"<title>Sweep report: {exp_name}</title>" in page
    for heading in (
        "Trials",
        "Training curves",
        "Hyperparameter importance",
        "Calibration",
        "Grad-CAM",
        "Operating points",
    ):
        assert f"<h2>{heading}</h2>" in page
    # The real smoke sweep's report has the views issue #21 asked for, not only the fake one's.
    sec = _sections(page)
    for anchor in ("context", "intervals", "agreement", "operating-points", "history"):
        assert anchor in sec, anchor
    assert "python -m ray_xray.tune" in sec["context"] and "asked 4" in sec["context"]
    for point in ("spec0.90", "spec0.95", "sens0.90", "sens0.95"):
        assert point in sec["operating-points"], point


@pytest.mark.slow_ray
def test_comparison_csv_has_one_row_per_member_and_ensemble(sweep):
    out = sweep["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == metrics["n_members"] + 3
    assert set(table["kind"]) == {"member", "ensemble"}
    cols = {
        "name",
        "kind",
        "val_macro_f1",
        "test_accuracy",
        "test_macro_f1",
        "test_weighted_f1",
        "test_auc",
        "test_pr_ap",
        "test_ece",
        "test_nll",
    }
    assert cols <= set(table.columns)
    assert {f"test_recall_{c}" for c in metrics["classes"]} <= set(table.columns)
    assert metrics["timings"]["total_s"] < 120


def fake_sweep(root, specs, objective=("val_macro_f1", "val_loss")):
    """A sweep folder as ray_xray.tune leaves it, with random-init models and no Ray."""
    import torch

    from ray_xray.config import TrainConfig
    from ray_xray.data import load_data
    from ray_xray.inference import build_model

    rows = []
    for i, (name, size, hp) in enumerate(specs):
        torch.manual_seed(i)
        cfg = TrainConfig(model=name, img_size=size, model_kwargs=hp, limit_per_split=48, epochs=2)
        data = load_data(cfg.data, size, limit_per_split=48)
        rec = checkpoint.model_record(
            build_model(cfg, 3), cfg, data.classes, data.mean, data.std, {}
        )
        tid = f"trial{i:03d}"
        ckpt = root / tid / "train" / "checkpoint_000001"
        ckpt.mkdir(parents=True)
        torch.save({"best": rec}, ckpt / "checkpoint.pt")
        log = [
            {
                "epoch": e,
                "val_macro_f1": 0.3 + 0.05 * e - 0.01 * i,
                "val_loss": 1.1 - 0.1 * e + 0.02 * i,
                "train_loss": 1.0 - 0.2 * e,
                "timestamp": 1.7e9 + 60 * i + 20 * e,
                "time_total_s": 20.0 * e,
            }
            for e in (1, 2)
        ]
        (root / tid / "result.json").write_text("\n".join(map(json.dumps, log)) + "\n")
        rows.append(
            {
                "trial_id": tid,
                "status": "TERMINATED",
                "error": "",
                "model": name,
                "epochs": 2,
                "best_val_macro_f1": 0.4 - 0.01 * i,
                "checkpoint_path": str(ckpt),
                "trial_dir": str(root / tid),
                "config/model": name,
                "config/lr": 1e-3 / (i + 1),
                "config/img_size": size,
            }
        )
    rows.append(
        {
            "trial_id": "broken",
            "status": "ERROR",
            "error": "RuntimeError: <boom> & co",
            "model": "vit",
            "epochs": 0,
            "best_val_macro_f1": None,
            "checkpoint_path": None,
            "trial_dir": str(root / "broken"),
            "config/model": "vit",
            "config/lr": 0.1,
            "config/img_size": 32,
        }
    )
    pd.DataFrame(rows).to_parquet(root / "results.parquet")
    options = {
        "data": "synthetic:chest3",
        "objective": list(objective),
        "trials": 8,
        "budget_minutes": 3.0,
    }
    command = "python -m ray_xray.tune --trials 8 --budget-minutes 3"
    (root / "sweep.json").write_text(json.dumps({"command": command, "options": options}))
    return root


def add_optuna_db(root, rows):
    """optuna.db as OptunaSearch leaves it: one trial per (lr, img_size), valued by `last`
    (Optuna's record of the last report), which the report must NOT rank by."""
    import optuna

    dist = {
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
        "img_size": optuna.distributions.CategoricalDistribution([24, 32]),
    }
    study = optuna.create_study(
        study_name=root.name, storage=f"sqlite:///{root}/optuna.db", direction="maximize"
    )
    for lr, size, last in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "img_size": size}, distributions=dist, value=last
            )
        )
    return study


def test_report_of_a_mixed_sweep_without_ray(tmp_path):
    """Members of different img_size (24 and 32 px), lstm + vit attention, a Pareto front,
    an ERROR trial, no optuna.db: every figure and the HTML, in-process and quick."""
    import torch

    from ray_xray import predict
    from ray_xray.ensemble import run_ensemble

    exp = fake_sweep(
        tmp_path / "exp",
        [
            ("cnn", 32, {"width": 8, "head_dims": [16], "pool_size": 2}),
            ("lstm", 24, {"proj_dim": 16, "hidden_size": 16, "num_layers": 1}),
            ("vit", 32, {"dim": 32, "depth": 1, "heads": 2, "patch_size": 8}),
        ],
    )
    result = run_ensemble(exp, top_k=5, device="cpu")
    out = exp / "ensemble"
    assert result["out"] == str(out)
    page = (out / "report.html").read_text()
    srcs = set(re.findall(r'src="([^"]+)"', page))
    assert {f"figures/{p.name}" for p in (out / "figures").glob("*.png")} == srcs
    for name in ("pareto", "attention_lstm", "attention_vit", "gradcam", "samples"):
        assert f"figures/{name}.png" in srcs, name
    assert "&lt;boom&gt; &amp; co" in page and "<boom>" not in page  # escaped error text
    assert "No optuna.db" in page and "failed:" not in page
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_members"] == 3 and {m["img_size"] for m in metrics["members"]} == {24, 32}
    obj = torch.load(out / "ensemble.pt", weights_only=True)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(png)
    rows = predict.predict(obj, [str(png)], "cpu")
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def _sections(page: str) -> dict[str, str]:
    """{section id: its HTML} of a report page."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


def test_report_sections_intervals_and_operating_points_end_to_end(tmp_path, capsys):
    """A synthetic sweep with an optuna.db: the report has the context block, intervals,
    both kinds of operating points, every trial's curves and the Optuna views on the ranked
    value; metrics.json holds the intervals; predict applies a stored operating point."""
    import torch
    from PIL import Image

    from ray_xray import predict, stats
    from ray_xray.ensemble import run_ensemble
    from ray_xray.report.sweep import ranked_study

    exp = fake_sweep(
        tmp_path / "exp",
        [
            ("cnn", 32, {"width": 8, "head_dims": [16], "pool_size": 2}),
            ("cnn", 32, {"width": 4, "head_dims": [8], "pool_size": 2}),
            ("cnn", 32, {"width": 6, "head_dims": [8], "pool_size": 2}),
        ],
        objective=("val_macro_f1",),
    )
    # Optuna's "last" values rank trial 2 first; results.parquet's best ranks trial 0 first.
    add_optuna_db(exp, [(1e-3, 32, 0.1), (5e-4, 32, 0.2), (1e-3 / 3, 32, 0.9)])
    run_ensemble(exp, top_k=3, device="cpu", sensitivities=(0.9, 0.97))
    out = exp / "ensemble"
    page = (out / "report.html").read_text()
    assert "failed:" not in page and "could not be drawn" not in page
    sec = _sections(page)
    for anchor in (
        "context",
        "comparison",
        "intervals",
        "operating-points",
        "curves",
        "history",
        "importance",
        "calibration",
        "roc",
    ):
        assert anchor in sec, anchor
    ctx = sec["context"]
    assert "python -m ray_xray.tune --trials 8 --budget-minutes 3" in ctx
    assert "asked 8 · started 4" in ctx and "failed 1" in ctx
    assert (
        "3 of 8 trials started" not in ctx
        and "4 of 8 trials started: ended by the time budget (--budget-minutes 3" in ctx
    )
    assert "train: normal" in ctx and "test: normal" in ctx and "torch " in ctx
    for name in ("optuna_history", "optuna_slice", "best_so_far", "training_curves"):
        assert f"figures/{name}.png" in sec.get("history", "") + sec["curves"], name
    assert '<div class="scroll"><table>' in sec["comparison"]  # wide tables scroll in their box

    metrics = json.loads((out / "metrics.json").read_text())
    chosen = next(e for e in metrics["ensembles"] if e["chosen"])
    iv = chosen["test"]["intervals"]
    for c in metrics["classes"]:
        sens = iv["per_class"][c]["sensitivity"]
        assert sens["n"] == chosen["test"]["support"][c]
        assert sens["ci"] == pytest.approx(list(stats.wilson(sens["k"], sens["n"])))
        lo, hi = iv["bootstrap"]["auc_per_class"][c]
        assert lo <= chosen["test"]["auc_per_class"][c] <= hi
        # the interval is printed in the per-class table, as the report rounds it
        assert f"{sens['value']:.3f} [{sens['ci'][0]:.3f}, {sens['ci'][1]:.3f}]" in sec["intervals"]
    assert iv["bootstrap"]["n_boot"] >= 1000
    points = chosen["operating_points"]["tuberculosis"]
    assert set(points) == {"spec0.90", "spec0.95", "sens0.90", "sens0.97"}
    assert points["sens0.97"]["val_sensitivity"] >= 0.97
    assert "sensitivity &gt;= 0.97" in sec["operating-points"]

    # importance and the Optuna views use results.parquet's best value, not Optuna's last
    from ray_xray.ensemble.core import read_experiment

    study, _ = ranked_study(read_experiment(exp))
    by_id = {t.user_attrs["trial_id"]: t.value for t in study.trials}
    assert by_id == pytest.approx({"trial000": 0.4, "trial001": 0.39, "trial002": 0.38})

    obj = torch.load(out / "ensemble.pt", weights_only=True)
    t_sens = obj["operating_points"]["tuberculosis"]["sens0.90"]
    assert t_sens == pytest.approx(points["sens0.90"]["threshold"])
    png = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(png)
    capsys.readouterr()
    assert (
        predict.main(
            [
                str(out),
                str(png),
                "--device",
                "cpu",
                "--json",
                "--operating-point",
                "tuberculosis@sens0.90",
                "--operating-point",
                "normal@0.5",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    d_tb, d_n = rows[0]["decisions"]
    assert d_tb["threshold"] == pytest.approx(t_sens) and d_tb["point"] == "sens0.90"
    assert d_tb["positive"] == (rows[0]["probabilities"]["tuberculosis"] >= t_sens)
    assert d_n["positive"] == (rows[0]["probabilities"]["normal"] >= 0.5)
    assert (
        predict.main(
            [
                str(out / "ensemble.pt"),
                str(png),
                "--device",
                "cpu",
                "--operating-point",
                "tuberculosis@sens0.90",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    call = "positive" if d_tb["positive"] else "negative"
    assert "tuberculosis@sens0.90" in text and call in text.splitlines()[1]
    assert f"P(tuberculosis) >= {t_sens:.6g}" in text
    with pytest.raises(ValueError, match="no stored point 'sens0.80'.*sens0.90"):
        predict.resolve_operating_point(obj, "tuberculosis@sens0.80")
    with pytest.raises(ValueError, match="no class 'tb'"):
        predict.resolve_operating_point(obj, "tb@sens0.90")


def test_an_operating_point_name_is_read_as_the_number_it_says():
    """`tuberculosis@sens0.9` was refused (only `sens0.90`, the stored spelling, worked)."""
    from ray_xray import predict

    record = {"classes": ["normal", "tb"], "operating_points": {"tb": {"sens0.90": 0.3}}}
    for spec in ("tb@sens0.9", "tb@sens0.90", "tb@sens.9", "tb@sens0.900"):
        got = predict.resolve_operating_point(record, spec)
        assert (got["point"], got["threshold"]) == ("sens0.90", 0.3), spec
    with pytest.raises(ValueError, match="no stored point 'spec0.90'.*stored: sens0.90"):
        predict.resolve_operating_point(record, "tb@spec0.9")
    assert predict.resolve_operating_point(record, "tb@0.9")["threshold"] == 0.9


def test_optuna_figures_of_number_like_choices_log_nothing(tmp_path, caplog):
    """batch_size 16/32/64 is categorical: matplotlib used to log "Using categorical units ..."
    at INFO for it, twice per report, in the middle of the sweep's console output."""
    import logging

    import optuna

    from ray_xray.report.plots import optuna_figure

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for bs, lr in ((16, 1e-3), (32, 3e-4), (64, 1e-4), (32, 1e-3)):
        study.enqueue_trial({"batch_size": bs, "lr": lr})
    study.optimize(
        lambda t: (
            t.suggest_categorical("batch_size", [16, 32, 64]) / 64
            + t.suggest_float("lr", 1e-5, 1e-2, log=True)
        ),
        n_trials=4,
    )
    caplog.set_level(logging.INFO)
    out = optuna_figure(optuna.visualization.matplotlib.plot_slice, study, tmp_path / "s.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert not [r for r in caplog.records if r.name == "matplotlib.category"]
    assert logging.getLogger("matplotlib.category").level == logging.NOTSET  # put back


def test_sweep_wall_time_is_tunes_own_not_the_trials_span():
    """A sweep whose trials spanned 10.9 min but whose Tuner.fit ran 18 says 18 first."""
    from ray_xray.report.sweep import wall_time_text

    text = wall_time_text({"time_use": {"tune_wall_s": 1080.0}}, 10.9)
    assert text.startswith("18.0 min in Tune (Tuner.fit, start to end;")
    assert text.endswith("; first trial start to last report 10.9 min (result.json)")
    assert wall_time_text({}, 10.9) == "first trial start to last report 10.9 min (result.json)"
    assert wall_time_text({}, None) == "not logged"


def test_optuna_slice_and_parallel_figures_fit_the_reports_width(tmp_path):
    """Nine parameters: the slice panels wrap four to a row and both figures stay within the
    report's 1100 px (a wider PNG is scaled down, its labels with it)."""
    import optuna
    from optuna.visualization import matplotlib as ovm
    from PIL import Image

    from ray_xray.report.plots import optuna_figure

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: sum(t.suggest_float(f"p{i}", 0, 1) for i in range(9)), n_trials=8)
    for fn, name in ((ovm.plot_slice, "slice"), (ovm.plot_parallel_coordinate, "parallel")):
        w, h = Image.open(optuna_figure(fn, study, tmp_path / f"{name}.png")).size
        assert 600 < w <= 1150, (name, w)
        if name == "slice":
            assert h > 600  # three rows of panels, not one strip


# ---------------------------------------------------------------- one renderer (issue 31)


def _report_modules():
    """(path, parsed module) of every report renderer: ray_xray/report/*.py and the evaluation
    report, ray_xray/evaluate/report.py."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "ray_xray"
    files = sorted((pkg / "report").glob("*.py")) + [pkg / "evaluate" / "report.py"]
    return [(f.relative_to(pkg.parent), ast.parse(f.read_text(), str(f))) for f in files]


def test_every_report_section_is_defined_in_one_module_only():
    """The sweep and evaluation reports used to define summary_, operating_, samples_,
    gradcam_, method_, history_section and write_report twice each."""
    import ast

    where: dict[str, list[str]] = {}
    for path, tree in _report_modules():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and re.search(
                r"(_sections?|^write_\w*report)$", node.name
            ):
                where.setdefault(node.name, []).append(str(path))
    assert len(where) > 20  # the scan sees the sections (a renamed folder would pass vacuously)
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, twice


def test_no_private_name_crosses_into_or_out_of_the_report():
    """No renderer imports another module's `_helper`, and the report imports nothing from
    `evaluate` (evaluate calls the report: the other way would be a circle)."""
    import ast

    from test_imports import import_graph

    for path, tree in _report_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path} imports {private} from {node.module}"
    assert "evaluate" not in import_graph()["report"]


def test_a_failing_section_or_figure_is_a_note_and_the_page_is_still_written(tmp_path):
    from ray_xray.report.sections import Figures, render_sections, write_page

    logged = []
    figs = Figures(tmp_path, logged.append)

    def broken_plot(path):
        raise ValueError("no data <here>")

    def broken_section():
        raise KeyError("val_loss")

    body = render_sections(
        [
            ("first", lambda: html.section("First", html.para("fine"), anchor="first")),
            ("absent", None),  # a report without this part (e.g. no external set)
            ("figure", lambda: html.section("Figure", figs.make("f", "cap", broken_plot))),
            ("broken", broken_section),
        ],
        logged.append,
    )
    page = write_page(tmp_path, "t", body, "metrics.json").read_text()
    assert len(body) == 3 and '<section id="first"><h2>First</h2>' in page
    assert "figure &#x27;f&#x27; could not be drawn: ValueError: no data &lt;here&gt;" in page
    assert "section &#x27;broken&#x27; failed: KeyError: &#x27;val_loss&#x27;" in page
    assert page.rstrip().endswith("Files beside this page: metrics.json.</p></body></html>")
    assert logged == [
        "figure 'f' could not be drawn: ValueError: no data <here>",
        "section 'broken' failed: KeyError: 'val_loss'",
    ]
    assert not (tmp_path / "figures" / "f.png").exists()


def test_trial_logs_are_read_where_a_moved_sweep_folder_keeps_them(tmp_path):
    """results.parquet stores absolute trial folders; a sweep folder copied elsewhere finds its
    trials' result.json under itself, and a trial without a log has no rows."""
    from ray_xray.sweep_folder import read_trial_histories

    exp = tmp_path / "moved"
    (exp / "t1").mkdir(parents=True)
    lines = [{"epoch": 2, "val_loss": 0.5}, {"epoch": 1, "val_loss": 0.9}]
    (exp / "t1" / "result.json").write_text("\n".join(map(json.dumps, lines)))
    table = pd.DataFrame(
        {"trial_id": ["t1", "t2"], "trial_dir": ["/elsewhere/sweep/t1", "/elsewhere/sweep/t2"]}
    )
    logs = read_trial_histories({"table": table, "exp_dir": exp})
    assert list(logs) == ["t1", "t2"] and logs["t2"] == []
    assert [r["epoch"] for r in logs["t1"]] == [1, 2] and logs["t1"][0]["val_loss"] == 0.9
