import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parent.parent
# Seconds any Ray-starting test may run (pytest-timeout), and the shared smoke sweep's own limit
# (below it, so a stalled sweep is interrupted cleanly and reported, not killed mid-write).
RAY_TEST_TIMEOUT_S = 900
SMOKE_SWEEP_LIMIT_S = 600


def pytest_collection_modifyitems(config, items):
    """Every Ray test gets a timeout (pytest-timeout) unless it sets its own; `cuda` tests skip,
    saying why, where no GPU is visible (CI, a laptop)."""
    import torch

    no_gpu = pytest.mark.skip(reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("slow_ray") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(RAY_TEST_TIMEOUT_S))
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Tests never touch the user's ~/.cache: every session gets its own prepared-data cache.
    os.environ["RAY_XRAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("RAY_XRAY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    root = shared_data_dir()
    if not (root / "chest3" / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {root} (set RAY_XRAY_SHARED_DATA)")
    return root


def write_tree(root: Path, per_class: int = 6, size: int = 48, seed: int = 0) -> Path:
    """A small folder dataset of synthetic PNGs: ROOT/{train,val,test}/<label>/*.png."""
    from ray_xray.data.synthetic import render

    k = seed * 1000
    for split in ("train", "val", "test"):
        for label in ("normal", "pneumonia", "tuberculosis"):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                k += 1
                Image.fromarray(render(label, k, size)).save(d / f"{label}_{i}.png")
    return root


@pytest.fixture
def tiny_tree(tmp_path):
    return write_tree(tmp_path / "data")


def grey_png(path: Path, value: int = 128, size: int = 32) -> Path:
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


SYNTHETIC_CLASSES = ("normal", "pneumonia", "tuberculosis")


def write_external(root: Path, per_class: int = 8, size: int = 40, classes=SYNTHETIC_CLASSES,
                   seed: int = 7) -> Path:  # fmt: skip
    """ROOT/<CLASS>/*.png (upper-case folder names, as many public sets have), no split
    folders; rendered from seeds no synthetic:chest3 split uses."""
    from ray_xray.data.synthetic import render

    for ci, label in enumerate(classes):
        d = root / label.upper()
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            s = seed * 10_000_000 + 5_000_000 + ci * 1000 + k
            img = render(label if label in SYNTHETIC_CLASSES else "normal", s, size)
            Image.fromarray(img).save(d / f"{label}_{k}.png")
    return root


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The one smoke sweep of a test session, shared by every check that reads one
    (test_tune, test_ensemble, test_report, test_storage): `ray_xray.tune --space all
    --smoke-test --trials 4 --top-k 4 --wandb offline --external SITE_B` in a subprocess (its
    ensemble + report included; W&B's own caches in the storage folder; SITE_B holds 18
    synthetic images from other seeds), then `ray_xray.ensemble` on it in this process
    (`--no-report`, output in `cli_out`).

    A sweep with no result after SMOKE_SWEEP_LIMIT_S is interrupted (SIGINT: Tune saves and Ray
    shuts down) and every test that reads it fails with its last output.
    Returns {"exp", "out" (the sweep's own ensemble folder), "output" (the sweep's console),
    "cli_out", "summary" (the ensemble command's --json), "stderr" (its progress lines),
    "external" (SITE_B's path)}.
    """
    storage = tmp_path_factory.mktemp("smoke_sweep")
    external = str(write_external(storage / "site_b", 6))  # 18 images, for test_external
    p = subprocess.Popen(
        [sys.executable, "-m", "ray_xray.tune", "--space", "all", "--smoke-test", "--trials",
         "4", "--top-k", "4", "--storage", str(storage), "--name", "t", "--wandb", "offline",
         "--external", external],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "WANDB_CACHE_DIR": str(storage / "wandb-cache"),
             "WANDB_CONFIG_DIR": str(storage / "wandb-config")}, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = p.communicate(timeout=SMOKE_SWEEP_LIMIT_S)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        pytest.fail(
            f"the smoke sweep stalled: no result after {SMOKE_SWEEP_LIMIT_S} s, interrupted; "
            f"its last output:\n{out[-4000:]}"
        )
    if p.returncode != 0:
        pytest.fail(f"the smoke sweep failed (exit {p.returncode}):\n{out[-4000:]}")
    exp = storage / "t"
    from ray_xray.ensemble.__main__ import main as ensemble_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = ensemble_main([str(exp), "--top-k", "4", "--out", str(storage / "ens"),
                              "--device", "cpu", "--json", "--no-report"])  # fmt: skip
    assert code == 0, stderr.getvalue()[-3000:]
    return {"exp": exp, "out": exp / "ensemble", "output": out, "cli_out": storage / "ens",
            "external": external,
            "summary": json.loads(stdout.getvalue()), "stderr": stderr.getvalue()}  # fmt: skip
