"""Built-in synthetic chest radiographs: the default data, so nothing needs a download.

Each image is drawn from its own seed (dataset seed + index), so any subset at any size is
reproducible. Lung fields, ribs, heart shadow and mediastinum make the normal anatomy;
pneumonia adds diffuse or lobar opacity in the lower/mid zones, tuberculosis adds upper-zone
nodules and cavities. Lesion contrast varies from obvious to nearly invisible and the anatomy
itself jitters, so a small CNN learns it well above chance but not perfectly.
"""

from __future__ import annotations

import numpy as np

VERSION = 2  # bump when the renderer changes: it keys the cache
TASKS = {
    "chest3": ("normal", "pneumonia", "tuberculosis"),
    "binary": ("normal", "pneumonia"),
}
# Per-class images in each split; the default is big enough to learn, small enough to be quick.
DEFAULT_SIZES = {"train": 300, "val": 60, "test": 60}
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _blob(x, y, cx, cy, r):
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))


def render(label: str, seed: int, size: int = 128) -> np.ndarray:
    """One uint8 (size, size) radiograph-like image of class `label`."""
    rng = np.random.default_rng(seed)
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = np.meshgrid(lin, lin)
    # Patient pose and habitus jitter.
    x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.06, 0.06)
    y = y * rng.uniform(0.9, 1.1) + rng.uniform(-0.06, 0.06)

    img = 0.15 + 0.1 * (1 - y) / 2  # soft-tissue background
    img += 0.35 * (_ellipse(x, y, 0, 0.05, 0.95, 1.05) < 1)  # thorax
    lungs = np.zeros_like(x, dtype=bool)
    for side in (-1, 1):
        lung = _ellipse(x, y, side * 0.42, -0.05, 0.3 * rng.uniform(0.9, 1.1), 0.62) < 1
        lungs |= lung
    img -= 0.3 * lungs  # air is dark on a radiograph
    # Ribs: bright arcs across the lungs, with a random phase.
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(11, 14)
    ribs = np.clip(np.sin(freq * (y + 0.15 * x**2) + phase), 0, 1) ** 3
    img += 0.12 * ribs * lungs
    # Mediastinum and heart shadow.
    img += 0.25 * (np.abs(x) < 0.12 + 0.05 * y)
    img += 0.3 * (_ellipse(x, y, 0.12, 0.35, 0.3 * rng.uniform(0.8, 1.2), 0.25) < 1)

    strength = rng.uniform(0.5, 1.0)  # some cases are subtle
    side = rng.choice((-1, 1))
    if label == "pneumonia":
        if rng.random() < 0.5:  # lobar consolidation: one lower zone fills in
            cy = rng.uniform(0.1, 0.4)
            patch = _blob(x, y, side * 0.42, cy, rng.uniform(0.15, 0.25))
            img += 0.35 * strength * patch * lungs
        else:  # diffuse, patchy, both lungs
            for _ in range(rng.integers(4, 9)):
                cx, cy = rng.choice((-1, 1)) * rng.uniform(0.25, 0.6), rng.uniform(-0.2, 0.45)
                img += 0.2 * strength * _blob(x, y, cx, cy, rng.uniform(0.07, 0.14)) * lungs
    elif label == "tuberculosis":
        for _ in range(rng.integers(2, 6)):  # upper-zone nodules
            cx, cy = side * rng.uniform(0.25, 0.55), rng.uniform(-0.6, -0.3)
            img += 0.35 * strength * _blob(x, y, cx, cy, rng.uniform(0.035, 0.07))
        if rng.random() < 0.5:  # a cavity: bright wall, dark centre
            cx, cy, r = (
                side * rng.uniform(0.3, 0.5),
                rng.uniform(-0.55, -0.3),
                rng.uniform(0.06, 0.1),
            )
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            img += 0.25 * strength * np.exp(-(((d - r) / (0.3 * r)) ** 2))
            img -= 0.1 * strength * (d < 0.7 * r)
    elif label != "normal":
        raise ValueError(f"synthetic: unknown label {label!r}")

    # Exposure, contrast and quantum noise differ between machines.
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
    img += rng.normal(0, rng.uniform(0.03, 0.07), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def parse(spec: str) -> tuple[str, dict[str, int]]:
    """`synthetic:chest3` or `synthetic:chest3:N` (N training images per class)."""
    parts = spec.split(":")
    name = parts[1] if len(parts) > 1 and parts[1] else "chest3"
    if name not in TASKS:
        raise ValueError(f"{spec}: unknown synthetic task; choose from {', '.join(TASKS)}")
    sizes = dict(DEFAULT_SIZES)
    if len(parts) > 2:
        try:
            n = int(parts[2])
        except ValueError:
            raise ValueError(f"{spec}: per-class count must be an integer") from None
        if n < 5:
            raise ValueError(f"{spec}: per-class count must be >= 5")
        sizes = {"train": n, "val": max(2, n // 5), "test": max(2, n // 5)}
    return name, sizes


def generate(spec: str, size: int = 128, seed: int = 0):
    """Yield (index_key, label, split, image) for every image of the synthetic set."""
    name, sizes = parse(spec)
    for split, per_class in sizes.items():
        for ci, label in enumerate(TASKS[name]):
            for k in range(per_class):
                s = seed * 10_000_000 + _SPLIT_OFFSET[split] + ci * 100_000 + k
                yield f"synthetic:{name}/{split}/{label}/{k}", label, split, render(label, s, size)
