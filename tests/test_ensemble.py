"""Ensemble: calibration, selection, ECE, operating points, Grad-CAM, the ensemble file, the CLI.

Unit tests use synthetic probabilities or random-init models; the `slow_ray` ones share one smoke
sweep (made once per test session by `smoke_ensemble`, also used by test_report.py).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_xray import checkpoint
from ray_xray.calibration import softmax
from ray_xray.checkpoint import ENSEMBLE_FORMAT, load_ensemble, save_ensemble
from ray_xray.checkpoint import ensemble_record as ensemble_object
from ray_xray.config import TrainConfig
from ray_xray.ensemble import (
    apply_temperature,
    attention_maps,
    ece,
    fit_temperature,
    grad_cam,
    greedy_select,
    nll,
    operating_points,
    threshold_for_specificity,
)
from ray_xray.gradcam import cam_resolution, cam_target, min_cam_side
from ray_xray.inference import build_model
from ray_xray.models import create_model

REPO = Path(__file__).resolve().parent.parent


def _calibrated(n=4000, k=3, scale=1.5, seed=0):
    """Labels drawn from the very probabilities we report: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, size=(n, k))
    prob = softmax(logits)
    y = (rng.random((n, 1)) > prob.cumsum(1)).sum(1).clip(max=k - 1)
    return y, logits, prob


# ---------------------------------------------------------------- calibration


def test_temperature_scaling_lowers_nll_of_an_overconfident_member():
    y, logits, _ = _calibrated()
    over = softmax(logits * 3.0)  # three times too sharp
    t = fit_temperature(y, over)
    assert 2.4 < t < 3.6  # recovers roughly the factor that made it over-confident
    assert nll(y, apply_temperature(over, t)) < nll(y, over) - 0.05
    # never worse than leaving it alone, even on an already calibrated model
    _, _, prob = _calibrated(seed=1)
    y1 = _calibrated(seed=1)[0]
    assert nll(y1, apply_temperature(prob, fit_temperature(y1, prob))) <= nll(y1, prob) + 1e-9


def test_ece_is_near_zero_when_calibrated_and_larger_when_overconfident():
    y, logits, prob = _calibrated(n=20000)
    calibrated = ece(y, prob)
    assert calibrated < 0.02
    assert ece(y, softmax(logits * 4.0)) > calibrated + 0.1
    assert ece(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


# ---------------------------------------------------------------- selection


def test_greedy_selection_is_never_worse_than_the_best_member_on_validation():
    rng = np.random.default_rng(0)
    n, k = 600, 3
    y = rng.integers(0, k, n)
    truth = np.eye(k)[y] * 2.0
    members = [softmax(truth + rng.normal(0, s, (n, k))) for s in (1.0, 1.3, 1.6)]
    members.append(members[0])  # a duplicate must not confuse it
    result = greedy_select(y, members)
    bag = sum(w * p for w, p in zip(result["weights"], members, strict=True))
    assert result["val_nll"] <= min(nll(y, p) for p in members) + 1e-12
    assert abs(nll(y, bag) - result["val_nll"]) < 1e-9
    assert np.isclose(sum(result["weights"]), 1.0) and result["counts"][result["start"]] >= 1
    # independent errors: averaging helps, so more than one member is chosen
    assert sum(c > 0 for c in result["counts"]) >= 2
    assert result["val_nll"] < min(nll(y, p) for p in members)


# ---------------------------------------------------------------- operating points


@pytest.mark.parametrize("target", [0.90, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_point_reaches_the_target_specificity_on_validation(target, seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 2, n)
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(2)  # rounding makes ties
    prob = np.stack([1 - score, score], 1)
    ops = operating_points(
        y, prob, y, prob, ["neg", "pos"], specificities=(target,), sensitivities=()
    )
    assert list(ops["pos"]) == [f"spec{target:.2f}"]
    row = ops["pos"][f"spec{target:.2f}"]
    assert row["val_specificity"] >= target
    assert row["test_specificity"] == row["val_specificity"]  # same data: same numbers
    # the most sensitive such threshold: any lower observed score breaks the target
    lower = score[score < row["threshold"]]
    if len(lower):
        spec = (score[y == 0] < lower.max()).mean()
        assert spec < target
    assert threshold_for_specificity(np.array([]), score, target) is None


# ---------------------------------------------------------------- saliency


@pytest.mark.parametrize(
    "name, size, hp", [("resnet18", 64, {}), ("cnn_lstm", 32, {"channels": [8, 16]})]
)
def test_gradcam_maps_have_the_image_shape_and_are_not_constant(name, size, hp):
    torch.manual_seed(0)
    model = create_model(name, 3, in_chans=1, img_size=size, **hp).eval()
    assert min(cam_resolution(model, size)) >= 2
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    blob = torch.exp(-((yy - size / 3) ** 2 + (xx - size / 2) ** 2) / (size * 1.5))
    x = torch.stack([blob, blob.flip(0)])[:, None] + 0.05 * torch.randn(2, 1, size, size)
    maps = grad_cam(model, x)
    assert maps.shape == (2, size, size)
    assert maps.min() >= 0 and maps.max() <= 1
    for m in maps:
        assert m.std() > 1e-3  # not a constant map
    for stage in model.cam_stages:
        assert stage._forward_hooks == {}  # hooks removed
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


@pytest.mark.parametrize(
    "size, name, side",
    [(128, "layer3", 8), (224, "layer3", 14), (256, "layer3", 16), (32, "layer1", 8)],
)
def test_cam_target_is_the_deepest_stage_with_enough_resolution(size, name, side):
    # resnet18's stages are 1/4, 1/8, 1/16, 1/32 of the side: layer4 is 4x4 at 128 px.
    model = create_model("resnet18", 3, img_size=size)
    chosen = cam_target(model, size)
    assert chosen.name == name and chosen.layer is model.get_submodule(name)
    assert chosen.size == (side, side) and cam_resolution(model, size) == (side, side)
    assert min(chosen.size) >= min_cam_side(size) == max(8, -(-size // 16))


def test_cam_target_of_the_cnn_and_of_models_without_stages():
    cnn = create_model("cnn", 3, img_size=64, width=4, head_dims=[8], pool_size=2)
    # Five blocks; block k's ReLU sees 64 / 2**k: 64, 32, 16, 8, 4 -> the fourth (8x8).
    assert cam_target(cnn, 64)[::2] == ("features.3.act", (8, 8))
    vit = create_model("vit", 3, img_size=32, patch_size=8, dim=32, depth=1, heads=2)
    assert cam_target(vit, 32) is None and cam_resolution(vit, 32) is None


def _direct_grad_cam(model, layer, x, target):
    """Grad-CAM by hand (paper formula), to check the library computes what the paper says."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.update(a=out))
    try:
        logits = model(x)
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True))

    def scale(m):
        lo, hi = m.amin((1, 2, 3), keepdim=True), m.amax((1, 2, 3), keepdim=True)
        return (m - lo) / (hi - lo + 1e-7)

    up = torch.nn.functional.interpolate(scale(cam), x.shape[-2:], mode="bilinear")
    return scale(up)[:, 0].detach().numpy()


def test_grad_cam_is_the_librarys_gradcam_on_the_picked_layer():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("resnet18", 3, img_size=64).eval()
    x, target = torch.randn(3, 1, 64, 64), torch.tensor([0, 2, 1])
    maps = grad_cam(model, x, target)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.max((1, 2)) > 0.99).all()
    layer = model.layer2  # 8x8 at 64 px: the picked one
    assert cam_target(model, 64).layer is layer
    with GradCAM(model=model, target_layers=[layer]) as cam:
        direct = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    np.testing.assert_allclose(maps, direct, atol=1e-5)
    # ... and that is the paper's formula (bilinear resizes by cv2 vs torch: same up to rounding).
    np.testing.assert_allclose(maps, _direct_grad_cam(model, layer, x, target), atol=1e-4)
    # No target: the predicted class.
    pred = model(x).argmax(1)
    np.testing.assert_allclose(grad_cam(model, x), grad_cam(model, x, pred), atol=1e-6)


class _Quadrants(torch.nn.Module):
    """Class 0's logit is the mean of a feature seen only in the top-right quadrant, class 1's
    of one seen only in the bottom-left: a planted answer for where Grad-CAM must look."""

    is_conv = True

    def __init__(self, side):
        super().__init__()
        from ray_xray.models.registry import set_cam_layer

        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.act = torch.nn.ReLU()
        mask = torch.zeros(1, 2, side, side)
        h = side // 2
        mask[0, 0, :h, h:] = 1  # channel 0: top-right
        mask[0, 1, h:, :h] = 1  # channel 1: bottom-left
        self.register_buffer("mask", mask)
        self.gate = torch.nn.Identity()  # the hook point: masked features
        set_cam_layer(self, self.gate, [self.gate])

    def forward(self, x):
        f = self.gate(self.act(self.conv(x)) * self.mask)
        return f.mean((2, 3)) * 10


def test_grad_cam_puts_its_mass_where_the_planted_score_looks():
    torch.manual_seed(0)
    side, h = 32, 16
    model = _Quadrants(side)
    with torch.no_grad():  # positive features everywhere: only the score tells the quadrants
        model.conv.weight.fill_(0.1)
        model.conv.bias.fill_(0.1)
    x = torch.rand(2, 1, side, side)
    for cls, (rows, cols) in (
        (0, (slice(0, h), slice(h, None))),
        (1, (slice(h, None), slice(0, h))),
    ):
        maps = grad_cam(model, x, torch.tensor([cls, cls]))
        inside = maps[:, rows, cols].sum((1, 2)) / maps.sum((1, 2))
        # Bilinear upsampling blurs nothing here (the layer is at full resolution), but the
        # borders of a 3x3 conv still count: at least 95% of the mass in the quadrant.
        assert (inside > 0.95).all(), (cls, inside)


def test_attention_maps_of_vit_and_lstm():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    vit = create_model("vit", 3, img_size=32, patch_size=8, dim=32, depth=1, heads=2)
    kind, maps = attention_maps(vit, x)
    assert kind == "image" and maps.shape == (3, 32, 32)
    lstm = create_model("lstm", 3, img_size=32, proj_dim=16, hidden_size=16, num_layers=1)
    kind, rows = attention_maps(lstm, x)
    assert kind == "rows" and rows.shape == (3, 32) and rows.max() == pytest.approx(1.0)
    assert attention_maps(create_model("cnn", 3, img_size=32, width=8), x) is None


# ---------------------------------------------------------------- the ensemble file


def _record(model_name, img_size, seed, **hp):
    torch.manual_seed(seed)
    cfg = TrainConfig(model=model_name, img_size=img_size, model_kwargs=hp)
    model = build_model(cfg, 3)
    return checkpoint.model_record(
        model, cfg, ["normal", "pneumonia", "tuberculosis"], 0.4, 0.2, {}
    )


def test_ensemble_file_loads_with_weights_only_and_predicts(tmp_path, capsys):
    from PIL import Image

    from ray_xray import predict

    members = [
        {**_record("resnet18", 32, 0), "temperature": 1.7},
        {**_record("cnn", 48, 1, width=8, head_dims=[16], pool_size=2), "temperature": 0.8},
    ]
    obj = ensemble_object(members, [0.25, 0.75], "greedy", members[0]["classes"])
    path = save_ensemble(obj, tmp_path / "ens" / "ensemble.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ENSEMBLE_FORMAT and raw["weights"] == [0.25, 0.75]
    assert load_ensemble(tmp_path / "ens")["members"][1]["temperature"] == 0.8
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((60, 80)) * 255).astype(np.uint8)).save(img)

    rows = predict.predict(raw, [str(img), str(img)], "cpu")
    p = np.array(list(rows[0]["probabilities"].values()))
    assert p.sum() == pytest.approx(1.0, abs=1e-6) and rows[0] == rows[1]
    # by hand: weighted mean of tempered member softmaxes
    expect = 0
    for m, w in zip(members, [0.25, 0.75], strict=True):
        single = predict.predict(m, [str(img)], "cpu")[0]["probabilities"]
        logp = np.log(np.array(list(single.values())))
        expect = expect + w * softmax(logp[None] / m["temperature"])[0]
    assert np.allclose(p, expect, atol=2e-3)  # bf16 autocast rounding of the logits

    # the CLI with a folder or the file, --json shape unchanged
    predict.main([str(tmp_path / "ens"), str(img), "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert set(out[0]) == {"image", "prediction", "probabilities"}
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    # and a plain model record still works as before
    checkpoint.atomic_save(members[0], tmp_path / "best_model.pt")
    predict.main([str(tmp_path / "best_model.pt"), str(img), "--json", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out)[0]["prediction"] in members[0]["classes"]


def test_predict_and_load_take_a_sweep_folder_as_evaluate_does(tmp_path, capsys):
    """A new user's `predict SWEEP img.png` used the sweep's uncalibrated best_model.pt while
    `evaluate SWEEP` used its ensemble. Both, and `api.load`, now take a sweep folder's
    ensemble (its best trial when it has none), and predict says which on stderr."""
    import pandas as pd
    from PIL import Image

    from ray_xray import api, predict

    best = _record("cnn", 48, 1, width=8, head_dims=[16], pool_size=2)
    members = [{**_record("resnet18", 32, 0), "temperature": 1.7}]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame({"trial_id": ["a"]}).to_parquet(sweep / "results.parquet")
    checkpoint.atomic_save(best, sweep / "best_model.pt")
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((60, 80)) * 255).astype(np.uint8)).save(img)

    def cli() -> tuple[dict, str]:
        predict.main([str(sweep), str(img), "--json", "--device", "cpu"])
        got = capsys.readouterr()
        return json.loads(got.out)[0]["probabilities"], got.err

    alone = predict.predict(best, [str(img)], "cpu")[0]["probabilities"]
    probs, err = cli()
    assert probs == alone and "its best trial by validation" in err
    assert api.load(sweep, device="cpu").path == sweep / "best_model.pt"

    obj = ensemble_object(members, [1.0], "greedy", members[0]["classes"])
    save_ensemble(obj, sweep / "ensemble" / "ensemble.pt")
    probs, err = cli()
    assert probs == predict.predict(obj, [str(img)], "cpu")[0]["probabilities"] != alone
    assert f"is a sweep folder: its ensemble ({sweep / 'ensemble' / 'ensemble.pt'})" in err
    assert api.load(sweep, device="cpu").path == sweep / "ensemble" / "ensemble.pt"


def test_ensemble_object_refuses_inconsistent_members():
    rec = _record("resnet18", 32, 0)
    with pytest.raises(ValueError, match="temperature"):
        ensemble_object([rec], [1.0], "mean", rec["classes"])
    with pytest.raises(ValueError, match="one weight per member"):
        ensemble_object([{**rec, "temperature": 1.0}], [0.5, 0.5], "mean", rec["classes"])


# ---------------------------------------------------------------- CLI


def test_ensemble_help_and_bad_input_is_one_line(tmp_path, capsys):
    from ray_xray.cli import run
    from ray_xray.ensemble.__main__ import main

    def err_of(*args):  # in-process: the console script's own path, no interpreter start-up
        with pytest.raises(SystemExit) as exc:
            run(main, list(map(str, args)))
        assert exc.value.code == 2
        return capsys.readouterr().err.strip().splitlines()

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--top-k" in out and "ensemble.pt" in out
    (tmp_path / "notes.txt").write_text("hello")
    for target, message in [
        (tmp_path, "not a finished ray_xray sweep"),
        (tmp_path / "missing", "no such experiment directory"),
        (tmp_path / "notes.txt", "not a directory"),
    ]:
        lines = err_of(target)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "--top-k must be >= 1" in err_of(tmp_path, "--top-k", "0")[0]


# ---------------------------------------------------------------- on a real smoke sweep


@pytest.fixture
def sweep(smoke_sweep):
    return smoke_sweep  # tests/conftest.py: one smoke sweep per session


@pytest.mark.slow_ray
def test_ensemble_on_a_sweep_writes_its_files(sweep):
    out = sweep["out"]
    for name in ("report.html", "metrics.json", "comparison.csv", "ensemble.pt"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp"))
    obj = torch.load(out / "ensemble.pt", weights_only=True)
    assert obj["format"] == ENSEMBLE_FORMAT and obj["members"]
    assert sum(obj["weights"]) == pytest.approx(1.0)
    assert all(m["temperature"] > 0 for m in obj["members"])
    assert "ensemble: " in sweep["output"]  # the sweep's ensemble step shows its progress


@pytest.mark.slow_ray
def test_ensemble_command_on_a_sweep(sweep):
    out = sweep["cli_out"]
    assert (out / "ensemble.pt").is_file() and (out / "metrics.json").is_file()
    assert not (out / "report.html").exists()  # --no-report
    assert "ensemble: " in sweep["stderr"]  # progress on stderr
    s = sweep["summary"]["summary"]
    assert 0 <= s["ensemble"]["test_macro_f1"] <= 1 and s["best_member"]["name"]


@pytest.mark.slow_ray
def test_greedy_ensemble_beats_or_ties_the_best_member_on_validation(sweep):
    m = json.loads((sweep["out"] / "metrics.json").read_text())
    assert 1 <= m["n_members"] <= 4
    best_member = min(e["val"]["nll"] for e in m["members"])
    greedy = next(e for e in m["ensembles"] if e["method"] == "greedy")
    assert greedy["val"]["nll"] <= best_member + 1e-9
    chosen = next(e for e in m["ensembles"] if e["chosen"])
    assert chosen["val"]["nll"] <= greedy["val"]["nll"] + 1e-9
    for e in m["members"]:  # temperature never made validation NLL worse
        assert e["val"]["nll"] <= e["uncalibrated"]["val_nll"] + 1e-9
    for entry in m["members"] + m["ensembles"]:
        t = entry["test"]
        assert {
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "auc",
            "pr_ap_macro",
            "ece",
            "nll",
            "confusion",
            "precision",
            "recall",
            "f1",
        } <= set(t)
        for c in m["classes"]:
            for target in ("0.90", "0.95"):
                op = entry["operating_points"][c][f"spec{target}"]
                assert op["val_specificity"] >= float(target)
                op = entry["operating_points"][c][f"sens{target}"]
                assert op["val_sensitivity"] >= float(target)


@pytest.mark.slow_ray
def test_predict_accepts_the_ensemble_file(sweep, tmp_path, capsys):
    from PIL import Image

    from ray_xray.predict import main

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(1).random((40, 40)) * 255).astype(np.uint8)).save(img)
    assert main([str(sweep["out"] / "ensemble.pt"), str(img), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
