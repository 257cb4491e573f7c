import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Tests never touch the user's ~/.cache: every session gets its own prepared-data cache.
    os.environ["RAY_XRAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip, saying why, where no GPU is visible (CI, a laptop)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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
