"""The sweep report: HTML helpers, figures, Pareto front, and the page made from a smoke sweep."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from ray_xray.ensemble.calibration import reliability_bins
from ray_xray.report import html as H
from ray_xray.report import plots as P
from ray_xray.report.build import pareto_mask, read_history


def test_html_helpers_escape_and_round():
    t = H.table(["name", "value"], [["<b>x</b> & y", 0.123456], ["n", 3], ["nan", float("nan")]])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in t and "<b>x</b>" not in t
    assert (
        "0.123" in t
        and "0.1235" not in t
        and H.num(0.0012345) == "0.001"
        and "<td>3</td>" in t
        and "–" in t
    )
    assert H.num(0.0012345, small_sig=True) == "0.00123"  # hyperparameters such as lr
    fig = H.figure('figures/a".png', "caption <script>")
    assert 'src="figures/a&quot;.png"' in fig and "<script>" not in fig
    page = H.page("t <1>", "")
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
        P.reliability([("a", reliability_bins(y, prob), 0.1)], path=tmp_path / "r.png"),
        P.roc_pr(y, prob, classes, path=tmp_path / "roc.png", title="t"),
        P.confusion_matrices(
            [("m", [[3, 1, 0], [0, 2, 1], [1, 0, 4]])], classes, path=tmp_path / "cm.png"
        ),  # fmt: skip
        P.sample_grid(
            [
                {"image": np.zeros((16, 16), np.uint8), "title": "t", "correct": i % 2 == 0}
                for i in range(5)
            ]
            + [None],
            3,
            path=tmp_path / "s.png",
        ),  # fmt: skip
        P.row_attention_grid(
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
        ),  # fmt: skip
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
    for heading in ("Trials", "Training curves", "Hyperparameter importance", "Calibration",
                    "Grad-CAM", "Operating points"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in page


@pytest.mark.slow_ray
def test_comparison_csv_has_one_row_per_member_and_ensemble(sweep):
    out = sweep["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == metrics["n_members"] + 3
    assert set(table["kind"]) == {"member", "ensemble"}
    cols = {"name", "kind", "val_macro_f1", "test_accuracy", "test_macro_f1", "test_weighted_f1",
            "test_auc", "test_pr_ap", "test_ece", "test_nll"}  # fmt: skip
    assert cols <= set(table.columns)
    assert {f"test_recall_{c}" for c in metrics["classes"]} <= set(table.columns)
    assert metrics["timings"]["total_s"] < 120


def fake_sweep(root, specs, objective=("val_macro_f1", "val_loss")):
    """A sweep folder as ray_xray.tune leaves it, with random-init models and no Ray."""
    import torch

    from ray_xray.config import TrainConfig
    from ray_xray.data import load_data
    from ray_xray.train import engine as E

    rows = []
    for i, (name, size, hp) in enumerate(specs):
        torch.manual_seed(i)
        cfg = TrainConfig(model=name, img_size=size, model_kwargs=hp, limit_per_split=48, epochs=2)
        data = load_data(cfg.data, size, limit_per_split=48)
        rec = E.model_record(E.build_model(cfg, 3), cfg, data.classes, data.mean, data.std, {})
        tid = f"trial{i:03d}"
        ckpt = root / tid / "train" / "checkpoint_000001"
        ckpt.mkdir(parents=True)
        torch.save({"best": rec}, ckpt / "checkpoint.pt")
        log = [{"epoch": e, "val_macro_f1": 0.3 + 0.05 * e - 0.01 * i, "val_loss": 1.1 - 0.1 * e + 0.02 * i}
               for e in (1, 2)]  # fmt: skip
        (root / tid / "result.json").write_text("\n".join(map(json.dumps, log)) + "\n")
        rows.append({"trial_id": tid, "status": "TERMINATED", "error": "", "model": name, "epochs": 2,
                     "best_val_macro_f1": 0.4 - 0.01 * i, "checkpoint_path": str(ckpt),
                     "trial_dir": str(root / tid), "config/model": name, "config/lr": 1e-3 / (i + 1),
                     "config/img_size": size})  # fmt: skip
    rows.append({"trial_id": "broken", "status": "ERROR", "error": "RuntimeError: <boom> & co",
                 "model": "vit", "epochs": 0, "best_val_macro_f1": None, "checkpoint_path": None,
                 "trial_dir": str(root / "broken"), "config/model": "vit", "config/lr": 0.1,
                 "config/img_size": 32})  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "results.parquet")
    options = {"data": "synthetic:chest3", "objective": list(objective)}
    (root / "sweep.json").write_text(json.dumps({"options": options}))
    return root


def test_report_of_a_mixed_sweep_without_ray(tmp_path):
    """Members of different img_size (24 and 32 px), lstm + vit attention, a Pareto front,
    an ERROR trial, no optuna.db: every figure and the HTML, in-process and quick."""
    import torch

    from ray_xray import predict
    from ray_xray.ensemble import run_ensemble

    exp = fake_sweep(tmp_path / "exp", [
        ("cnn", 32, {"width": 8, "head_dims": [16], "pool_size": 2}),
        ("lstm", 24, {"proj_dim": 16, "hidden_size": 16, "num_layers": 1}),
        ("vit", 32, {"dim": 32, "depth": 1, "heads": 2, "patch_size": 8}),
    ])  # fmt: skip
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
