"""The wheel: built from the checkout, installed into a fresh venv, run from outside the checkout
(the `wheel_venv` fixture in tests/conftest.py; the session's smoke sweep runs from it).

Offline and quick: the wheel is built without build isolation (setuptools from the running
environment), and the new venv sees the running environment's packages (torch, ray, ...)
through a .pth line, which Python reads as a plain path: that environment's own .pth files
(such as an editable install of this checkout) are not processed, so the copy of ray_xray that
runs is the installed wheel, never the checkout.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def installed(wheel_venv) -> dict:
    return wheel_venv  # tests/conftest.py: built once per session (the smoke sweep runs from it)


def _run(inst: dict, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(cmd),
        cwd=inst["cwd"],
        env=inst["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_carries_the_search_spaces_and_the_console_script(installed):
    import zipfile

    wheel = zipfile.ZipFile(installed["wheel"])
    names = wheel.namelist()
    shipped = sorted(Path(n).stem for n in names if n.startswith("ray_xray/search_spaces/"))
    expected = sorted(p.stem for p in (REPO / "search_spaces").iterdir())
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
    assert listed == sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))

    out = _run(installed, installed["script"], "spaces", "resnet18", "--smoke")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# search space 'resnet18' with smoke overrides applied, from ")
    assert str(installed["site"] / "ray_xray" / "search_spaces" / "resnet18.yaml") in out.stdout

    out = _run(installed, installed["script"], "--help")
    assert out.returncode == 0 and "  tune " in out.stdout and "  predict " in out.stdout
    out = _run(installed, py, "-m", "ray_xray", "--version")
    assert out.stdout.strip() == "ray_xray 0.1.0"


@pytest.mark.slow_ray
def test_smoke_sweep_and_predict_from_the_wheel(installed, smoke_sweep, tmp_path):
    """The session's smoke sweep ran from the installed wheel, with the relative paths a user
    types (`--storage runs --cache relcache`, tests/conftest.py): a named space, the
    prepared-data cache written once where asked, and the trial workers (other processes,
    other working directories) reading it instead of decoding the images into a cache of
    their own, or into Ray's session folder."""
    root, exp = smoke_sweep["root"], smoke_sweep["exp"]
    assert exp == root / "runs" / "t"
    assert (exp / "results.parquet").is_file() and (exp / "best_model.pt").is_file()
    header = (exp / "space.yaml").read_text().splitlines()[0]
    assert header.startswith("# search space 'all' with smoke")
    assert str(installed["site"] / "ray_xray" / "search_spaces" / "all.yaml") in header  # wheel's
    assert list((root / "relcache").glob("*.parquet"))
    elsewhere = [p for p in root.rglob("*.parquet") if "relcache" not in p.parts]
    assert [p for p in elsewhere if p.name != "results.parquet"] == []
    assert smoke_sweep["ray_parquet"] == []

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
        installed,
        installed["python"],
        str(REPO / "docs" / "api_example.py"),
        "--out",
        str(tmp_path / "ex"),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Predictor(model, classes=['normal', 'pneumonia', 'tuberculosis']" in out.stdout
    assert (tmp_path / "ex" / "cnn" / "best_model.pt").is_file()
    assert out.stdout.rstrip().endswith(f"done: {tmp_path / 'ex'}")
