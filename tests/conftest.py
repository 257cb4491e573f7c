import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
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
    """Every Ray test gets a timeout (pytest-timeout) unless it sets its own; Ray tests and the
    tests that use the session's wheel are `serial` (`make test` runs them in its second, serial
    pass: Ray start-ups competing for 2 cores run slower in parallel, and the wheel is built
    once per process); `cuda` tests skip, saying why, where no GPU is visible (CI, a laptop)."""
    import torch

    no_gpu = pytest.mark.skip(reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("slow_ray") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(RAY_TEST_TIMEOUT_S))
        if item.get_closest_marker("slow_ray") or "wheel_venv" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)
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


def write_external(
    root: Path, per_class: int = 8, size: int = 40, classes=SYNTHETIC_CLASSES, seed: int = 7
) -> Path:
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


def built_once(tmp_path_factory, name: str, build) -> dict:
    """`build()`'s dict (JSON-able), built once per test run. Under pytest-xdist the first
    worker that asks builds it under a file lock and leaves it as NAME.json in the run's
    shared temporary folder; the other workers wait for the lock and read that (make test's
    serial pass runs two workers: the smoke sweep built on both cost ~90 s of each core).
    Without xdist: `build()`. A build that fails leaves no file, so the next asker retries."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build()
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            return json.loads(shared.read_text())
        value = build()
        tmp = shared.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(shared)
        return value


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> dict:
    """{"python", "script", "site", "cwd", "env", "wheel"} of a fresh venv holding only the
    wheel built from this checkout (tests/test_package.py says how: offline, no build
    isolation, the running environment's packages seen through a .pth line), built once per
    run (`built_once`); "env" is this process's environment less PYTHONPATH and VIRTUAL_ENV."""
    built = built_once(tmp_path_factory, "wheel_venv", lambda: _build_wheel_venv(tmp_path_factory))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **built,
        **{k: Path(built[k]) for k in ("site", "cwd", "wheel")},
        "env": env,
    }


def _build_wheel_venv(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("ray_xray", "search_spaces"):  # setup.py maps search_spaces/ into the wheel
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
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
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    cwd = root / "elsewhere"
    cwd.mkdir()
    return {
        "python": str(python),
        "script": str(venv / "bin" / "ray-xray"),
        "site": str(site),
        "cwd": str(cwd),
        "wheel": str(wheel),
    }


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, wheel_venv):
    """The one smoke sweep of a test session, shared by every check that reads one
    (test_tune, test_ensemble, test_report, test_storage, test_external, test_package):
    `ray_xray.tune --space all --smoke-test --trials 4 --top-k 4 --storage runs --cache
    relcache --wandb offline --external SITE_B`, run as a user runs it: from the installed
    wheel (`wheel_venv`), in a folder of its own (ROOT), with relative paths. Its ensemble and
    report are included; W&B's own caches are kept in ROOT; SITE_B holds 18 synthetic images
    from other seeds; Ray's session folder is a temporary RAY_TMPDIR. Then `ray_xray.ensemble`
    on it in this process (`--no-report`, output in `cli_out`).

    A sweep with no result after SMOKE_SWEEP_LIMIT_S is interrupted (SIGINT: Tune saves and Ray
    shuts down) and every test that reads it fails with its last output.
    Returns {"exp", "out" (the sweep's own ensemble folder), "output" (the sweep's console),
    "cli_out", "summary" (the ensemble command's --json), "stderr" (its progress lines),
    "external" (SITE_B's path), "root" (ROOT), "ray_parquet" (Parquet files found in Ray's
    session folder before it was removed), "trace" (the trials' RAY_XRAY_TRACE file)}; built
    once per run (`built_once`).
    """
    built = built_once(
        tmp_path_factory, "smoke_sweep", lambda: _run_smoke_sweep(tmp_path_factory, wheel_venv)
    )
    paths = {k: Path(built[k]) for k in ("exp", "out", "cli_out", "root", "trace")}
    return {**built, **paths, "ray_parquet": [Path(p) for p in built["ray_parquet"]]}


def _run_smoke_sweep(tmp_path_factory, wheel_venv) -> dict:
    root = tmp_path_factory.mktemp("smoke_sweep")
    storage = root / "runs"
    external = str(write_external(root / "site_b", 6))  # 18 images, for test_external
    ray_tmp = tempfile.mkdtemp(prefix="rx", dir="/tmp")  # short: Ray's socket paths
    p = subprocess.Popen(
        [
            wheel_venv["python"],
            "-m",
            "ray_xray.tune",
            "--space",
            "all",
            "--smoke-test",
            "--trials",
            "4",
            "--top-k",
            "4",
            "--storage",
            "runs",
            "--cache",
            "relcache",
            "--name",
            "t",
            "--wandb",
            "offline",
            "--external",
            external,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=root,
        env={
            **wheel_venv["env"],
            "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(root / "wandb-config"),
            "RAY_TMPDIR": ray_tmp,
            "RAY_XRAY_TRACE": str(root / "trace.jsonl"),  # what each trial got (test_tune)
        },
        start_new_session=True,
    )
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
    finally:
        ray_parquet = list(Path(ray_tmp).rglob("*.parquet"))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if p.returncode != 0:
        pytest.fail(f"the smoke sweep failed (exit {p.returncode}):\n{out[-4000:]}")
    exp = storage / "t"
    from ray_xray.ensemble.__main__ import main as ensemble_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = ensemble_main(
            [
                str(exp),
                "--top-k",
                "4",
                "--out",
                str(storage / "ens"),
                "--device",
                "cpu",
                "--json",
                "--no-report",
            ]
        )
    assert code == 0, stderr.getvalue()[-3000:]
    return {
        "exp": str(exp),
        "out": str(exp / "ensemble"),
        "output": out,
        "cli_out": str(storage / "ens"),
        "external": external,
        "root": str(root),
        "ray_parquet": [str(p) for p in ray_parquet],
        "trace": str(root / "trace.jsonl"),
        "summary": json.loads(stdout.getvalue()),
        "stderr": stderr.getvalue(),
    }
