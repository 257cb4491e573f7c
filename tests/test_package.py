"""The wheel: built from the checkout, installed into a fresh venv, run from outside the checkout.

Offline and quick: the wheel is built without build isolation (setuptools from the running
environment), and the new venv sees the running environment's packages (torch, ray, ...)
through a .pth line, which Python reads as a plain path: that environment's own .pth files
(such as an editable install of this checkout) are not processed, so the copy of ray_xray that
runs is the installed wheel, never the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"python", "script", "site", "cwd", "env"} of a venv holding only the built wheel."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "ray_xray", src / "ray_xray", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist"]
    subprocess.run([*build, str(src)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("ray_xray-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
        check=True, capture_output=True,
    )  # fmt: skip
    cwd = root / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        "python": str(python), "script": str(venv / "bin" / "ray-xray"), "site": site,
        "cwd": cwd, "env": env, "wheel": wheel,
    }  # fmt: skip


def _run(inst: dict, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(cmd), cwd=inst["cwd"], env=inst["env"], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_wheel_carries_the_search_spaces_and_the_console_script(installed):
    import zipfile

    wheel = zipfile.ZipFile(installed["wheel"])
    names = wheel.namelist()
    shipped = sorted(Path(n).stem for n in names if n.startswith("ray_xray/search_spaces/"))
    expected = sorted(p.stem for p in (REPO / "ray_xray" / "search_spaces").iterdir())
    assert shipped == expected and "resnet18" in shipped and "README" in shipped
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ray-xray = ray_xray.__main__:console" in wheel.read(entry).decode()


def test_installed_copy_runs_outside_the_checkout(installed):
    py = installed["python"]
    out = _run(installed, py, "-c", "import ray_xray; print(ray_xray.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == installed["site"] / "ray_xray"

    out = _run(installed, py, "-m", "ray_xray.spaces")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines()]
    assert listed == sorted(p.stem for p in (REPO / "ray_xray/search_spaces").glob("*.yaml"))

    out = _run(installed, installed["script"], "spaces", "resnet18", "--smoke")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# search space 'resnet18' with smoke overrides applied, from ")
    assert str(installed["site"] / "ray_xray" / "search_spaces" / "resnet18.yaml") in out.stdout

    out = _run(installed, installed["script"], "--help")
    assert out.returncode == 0 and "  tune " in out.stdout and "  predict " in out.stdout
    out = _run(installed, py, "-m", "ray_xray", "--version")
    assert out.stdout.strip() == "ray_xray 0.1.0"


@pytest.mark.slow_ray
def test_smoke_sweep_and_predict_from_the_wheel(installed, tmp_path):
    """A named-space smoke sweep from the installed wheel, with the relative paths a user types
    (`--data d --storage runs --cache relcache`, run in the data's folder): the prepared-data
    cache is written once, where asked, and the trial workers (other processes, other working
    directories) read it instead of decoding the images again into a cache of their own."""
    from conftest import write_tree

    cwd = tmp_path / "project"
    write_tree(cwd / "d", per_class=4, size=40)
    ray_tmp = tempfile.mkdtemp(prefix="rx", dir="/tmp")  # short: Ray's socket paths
    try:
        out = _run(
            {**installed, "cwd": cwd, "env": {**installed["env"], "RAY_TMPDIR": ray_tmp}},
            installed["python"], "-m", "ray_xray.tune", "--space", "resnet18", "--smoke-test",
            "--trials", "1", "--wandb", "off", "--no-ensemble", "--data", "d", "--storage",
            "runs", "--cache", "relcache", "--name", "wheel", timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        assert list(Path(ray_tmp).rglob("*.parquet")) == []  # no cache under Ray's session
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    exp = cwd / "runs" / "wheel"
    assert (exp / "results.parquet").is_file() and (exp / "best_model.pt").is_file()
    assert (exp / "space.yaml").read_text().startswith("# search space 'resnet18' with smoke")
    assert list((cwd / "relcache").glob("*.parquet"))
    elsewhere = [p for p in cwd.rglob("*.parquet") if "relcache" not in p.parts]
    assert [p for p in elsewhere if p.name != "results.parquet"] == []

    from PIL import Image

    from ray_xray.data.synthetic import render

    img = tmp_path / "x.png"
    Image.fromarray(render("pneumonia", 7, 64)).save(img)
    out = _run(installed, installed["script"], "predict", str(exp), str(img), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads(out.stdout)
    assert set(row["probabilities"]) == {"normal", "pneumonia", "tuberculosis"}
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow_ray
def test_api_example_runs_from_the_wheel(installed, tmp_path):
    out = _run(
        installed, installed["python"], str(REPO / "docs" / "api_example.py"),
        "--out", str(tmp_path / "ex"), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Predictor(model, classes=['normal', 'pneumonia', 'tuberculosis']" in out.stdout
    assert (tmp_path / "ex" / "cnn" / "best_model.pt").is_file()
    assert out.stdout.rstrip().endswith(f"done: {tmp_path / 'ex'}")
