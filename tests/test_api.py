"""The Python API (ray_xray.sweep / fit / load -> Predictor) and the `ray-xray` dispatcher."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ray_xray
from ray_xray import checkpoint, predict
from ray_xray.api import _cli_argv
from ray_xray.checkpoint import ensemble_record as ensemble_object
from ray_xray.checkpoint import save_ensemble
from ray_xray.config import TrainConfig
from ray_xray.inference import build_model

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["normal", "pneumonia", "tuberculosis"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _record(model_name: str, img_size: int, seed: int, **hp) -> dict:
    torch.manual_seed(seed)
    # fp32: the file and array paths must agree to float rounding, not bf16's
    cfg = TrainConfig(model=model_name, img_size=img_size, precision="fp32", model_kwargs=hp)
    return checkpoint.model_record(build_model(cfg, 3), cfg, CLASSES, 0.4, 0.2, {})


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "best_model.pt"
    checkpoint.atomic_save(_record("cnn", 32, 0, width=8, head_dims=[16], pool_size=2), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[np.ndarray, list[str]]:
    """Three grey uint8 images (3, 60, 80) and the same pixels as PNG files."""
    folder = tmp_path_factory.mktemp("img")
    arr = (np.random.default_rng(0).random((3, 60, 80)) * 255).astype(np.uint8)
    paths = []
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return arr, paths


# ---------------------------------------------------------------- import and dispatch


def test_import_loads_neither_torch_nor_ray():
    code = (
        "import sys, ray_xray; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'optuna'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names():
    assert {"sweep", "fit", "load", "Predictor", "list_spaces"} <= set(dir(ray_xray))
    assert ray_xray.load is ray_xray.api.load and ray_xray.Predictor is ray_xray.api.Predictor
    assert "resnet18" in ray_xray.list_spaces()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ray_xray.nope  # noqa: B018


def _ray_xray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_xray", *args], env=_env(), capture_output=True, text=True
    )


def test_python_m_ray_xray_help_lists_every_command():
    from ray_xray.__main__ import COMMANDS

    out = _ray_xray("--help")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    for module, _ in COMMANDS.values():  # every command names a runnable module
        spec = importlib.util.find_spec(module)
        assert spec is not None, module


def test_subcommands_dispatch_to_the_module_mains():
    out = _ray_xray("spaces", "resnet18")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# search space 'resnet18'") and "fixed:" in out.stdout
    out = _ray_xray("train", "--help")
    assert out.returncode == 0 and "usage: python -m ray_xray.train" in out.stdout
    out = _ray_xray("spaces", "no_such_space")  # the module's own error line and exit code
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown search space 'no_such_space'")


def test_unknown_command_is_one_error_line():
    out = _ray_xray("tuen")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: unknown command 'tuen' (did you mean 'tune'?); choose from "
        "tune, train, predict, evaluate, ensemble, spaces, models, audit, active, cluster"
    ]
    assert _ray_xray().returncode == 2  # nothing given: usage on stderr


# ---------------------------------------------------------------- load / predict


def test_predict_takes_paths_arrays_and_tensors_alike(model_file, images):
    arr, paths = images
    clf = ray_xray.load(model_file.parent, device="cpu")  # the folder finds best_model.pt
    assert clf.kind == "model" and clf.classes == CLASSES and clf.img_sizes == [32]
    rows = predict.predict(clf.record, paths, "cpu")  # what the CLI prints
    expect = np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])

    prob = clf.predict(paths)
    assert prob.shape == (3, 3) and prob.dtype == np.float64
    assert np.allclose(prob.sum(1), 1.0, atol=1e-12)
    assert np.allclose(prob, expect, atol=1e-6)
    for same in (
        arr,  # (N, H, W) uint8
        arr / 255.0,  # floats in [0, 1]
        torch.from_numpy(arr),  # a tensor
        torch.from_numpy(arr[:, None]).float() / 255,  # (N, 1, H, W) float tensor
        [paths[0], arr[1], arr[2] / 255.0],  # a mixed list
    ):
        assert np.allclose(clf.predict(same), expect, atol=1e-6)
    assert np.allclose(clf.predict(arr[1]), expect[1:2], atol=1e-6)  # one (H, W) image
    assert np.allclose(clf.predict(Path(paths[2])), expect[2:], atol=1e-6)
    assert clf.predict([]).shape == (0, 3)


def test_predict_ensemble_matches_the_cli(tmp_path, images):
    arr, paths = images
    members = [
        {**_record("cnn", 32, 1, width=8, head_dims=[16], pool_size=2), "temperature": 1.7},
        {**_record("cnn", 48, 2, width=8, head_dims=[16], pool_size=2), "temperature": 0.8},
    ]
    obj = ensemble_object(members, [0.25, 0.75], "greedy", CLASSES)
    path = save_ensemble(obj, tmp_path / "ensemble.pt")
    clf = ray_xray.load(path, device="cpu")
    assert clf.kind == "ensemble" and clf.img_sizes == [32, 48]
    rows = predict.predict(clf.record, paths, "cpu")
    expect = np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])
    assert np.allclose(clf.predict(arr), expect, atol=1e-9)
    assert "ensemble" in repr(clf)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((40, 40, 3), np.uint8), ValueError, r"looks like a colour image \(H, W, C\)"),
        (np.full((2, 8, 8), 2.0), ValueError, r"images\[0\]: float images must lie in \[0, 1\]"),
        (np.zeros((8, 8), np.int16), ValueError, "dtype int16 not supported"),
        (np.full((8, 8), np.nan), ValueError, "NaN or infinity"),
        (np.zeros((2, 3, 8, 8), np.uint8), ValueError, r"expected shape \(H, W\), \(N, H, W\)"),
        (np.zeros((0, 8), np.uint8), ValueError, "empty image"),
        ([np.zeros((2, 8, 8), np.uint8)], ValueError, r"images\[0\]: list items must be \(H, W\)"),
        ("/no/such.png", ValueError, r"^/no/such.png: no such image$"),
        (42, TypeError, "expected a path, an array/tensor or a list"),
        ([None], TypeError, r"images\[0\]: expected a path or an array"),
    ],
)
def test_predict_refuses_bad_input_in_one_line(model_file, bad, error, match):
    with pytest.raises(error, match=match):
        ray_xray.load(model_file, device="cpu").predict(bad)


def test_load_refuses_what_it_cannot_use(tmp_path, model_file):
    with pytest.raises(ValueError, match="no such checkpoint"):
        ray_xray.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable ray_xray checkpoint"):
        ray_xray.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        ray_xray.load(model_file, device="gpu")


# ---------------------------------------------------------------- sweep / fit (no Ray started)


def test_sweep_checks_options_before_starting_anything(tmp_path):
    with pytest.raises(TypeError, match=r"unknown option\(s\) trails"):
        ray_xray.sweep("resnet18", trails=3)
    with pytest.raises(ValueError, match="trials must be >= 1"):
        ray_xray.sweep("resnet18", trials=0, storage=tmp_path)
    with pytest.raises(ValueError, match="one to three metrics"):
        ray_xray.sweep("resnet18", objective="", storage=tmp_path)
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        ray_xray.sweep("nope", storage=tmp_path)
    assert not any(tmp_path.iterdir())


def test_sweep_records_the_equivalent_command():
    from ray_xray.tune.__main__ import build_parser
    from ray_xray.tune.service import SweepOptions

    opts = SweepOptions(
        space="cnn",
        trials=3,
        objective=["val_macro_f1", "val_loss"],
        smoke_test=True,
        ensemble=False,
        budget_minutes=2.5,
        settings={"epochs": 4, "model.head_dims": [64]},
    )
    argv = _cli_argv(opts)
    args = build_parser().parse_args(argv)
    assert (args.space, args.trials, args.objective) == ("cnn", 3, "val_macro_f1,val_loss")
    assert args.smoke_test and args.no_ensemble and args.budget_minutes == 2.5
    assert args.set == ["epochs=4", "model.head_dims=[64]"]
    assert _cli_argv(SweepOptions()) == []


def test_fit_refuses_bad_settings_before_ray(tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting 'epocs' \(did you mean 'epochs'\?\)"):
        ray_xray.fit("cnn", out=tmp_path / "r", epocs=1)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) no_such_kw"):
        ray_xray.fit("cnn", out=tmp_path / "r", model_kwargs={"no_such_kw": 1})
    assert not (tmp_path / "r").exists()
