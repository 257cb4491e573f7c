"""Acquisition-shift stress test: the same metrics under label-preserving image changes.

What a new site, scanner or export pipeline changes without changing the diagnosis: grey-level
response (gamma), contrast, sharpness (blur), noise, resolution (down- then up-scaling), lossy
re-compression (JPEG), positioning (small rotation + border crop) and polarity (inverted grey,
as some DICOM exports show MONOCHROME1). Each at three severities (inversion has one), applied
to the evaluation images at each member's input size, with a fixed seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from .. import stats
from .infer import probabilities
from .sources import EvalSet, Subject

# name -> [(severity label, parameter)], mildest first.
PERTURBATIONS: dict[str, list[tuple[str, float]]] = {
    "gamma": [("gamma 1.3", 1.3), ("gamma 1.7", 1.7), ("gamma 2.2", 2.2)],
    "contrast": [("x0.8", 0.8), ("x0.6", 0.6), ("x0.4", 0.4)],
    "blur": [("sigma 0.6% of side", 0.006), ("1.2%", 0.012), ("2.4%", 0.024)],
    "noise": [("sigma 5 grey levels", 5.0), ("10", 10.0), ("20", 20.0)],
    "downscale": [("1/1.5 then back", 1.5), ("1/2", 2.0), ("1/3", 3.0)],
    "jpeg": [("quality 50", 50), ("quality 25", 25), ("quality 10", 10)],
    "rotate_crop": [("3 deg + 3% crop", 3.0), ("6 deg + 6%", 6.0), ("10 deg + 10%", 10.0)],
    "invert": [("255 - x", 1.0)],
}


def _pil_each(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(im)), dtype=np.uint8) for im in images])


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def _rotate_crop(img: Image.Image, deg: float) -> Image.Image:
    side = img.size[0]
    rot = img.rotate(deg, resample=Image.Resampling.BILINEAR, fillcolor=0)
    m = max(1, round(side * deg / 100))  # the crop (in %) matches the angle (in degrees)
    return rot.crop((m, m, side - m, side - m)).resize((side, side), Image.Resampling.BILINEAR)


def perturb(name: str, param: float, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """`images` uint8 (N, S, S) changed by perturbation `name` at `param` -> uint8 (N, S, S).
    Raises KeyError for an unknown name."""
    x = images.astype(np.float32)
    side = images.shape[-1]
    if name == "gamma":
        out = 255.0 * (x / 255.0) ** param
    elif name == "contrast":
        mean = x.mean(axis=(1, 2), keepdims=True)
        out = (x - mean) * param + mean
    elif name == "noise":
        out = x + np.random.default_rng(seed).normal(0.0, param, x.shape)
    elif name == "invert":
        out = 255.0 - x
    elif name == "blur":
        radius = max(0.1, param * side)
        return _pil_each(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))
    elif name == "downscale":
        small = max(4, round(side / param))
        bil = Image.Resampling.BILINEAR
        return _pil_each(
            images, lambda im: im.resize((small, small), bil).resize((side, side), bil)
        )
    elif name == "jpeg":
        return _pil_each(images, lambda im: _jpeg(im, param))
    elif name == "rotate_crop":
        return _pil_each(images, lambda im: _rotate_crop(im, param))
    else:
        raise KeyError(name)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stratified_subset(y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `limit` rows (all rows when `limit` <= 0 or >= len(y)) keeping each
    class's share: its quota rounded down, the rows left over going to the largest remainders
    (Hamilton's method), and every class at least one row (so more than `limit` only when
    there are more classes than `limit`)."""
    if limit <= 0 or len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = limit * counts / len(y)
    n = np.maximum(1, np.floor(quota).astype(int))
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if n.sum() >= limit:
            break
        n[i] += n[i] < counts[i]
    keep = [
        rng.choice(np.flatnonzero(y == c), k, replace=False)
        for c, k in zip(classes, n, strict=True)
    ]
    return np.sort(np.concatenate(keep))


def run_stress(
    subject: Subject, data: EvalSet, device, limit: int = 400, seed: int = 0, log=None
) -> dict:
    """Metrics (`stats.point`) on clean and perturbed copies of `data` (a stratified subset of
    at most `limit` images). Returns {"n", "rows": [{perturbation, severity, level, metrics,
    d_macro_f1}], "perturbations": {name: [labels]}}; severity 0 = clean."""
    idx = stratified_subset(data.labels, limit, seed)
    sub = data.subset(idx)
    y, classes = sub.labels, subject.classes
    clean = stats.point(y, probabilities(subject, sub, device)[0], classes)
    rows = [{"perturbation": "none", "severity": 0, "level": "clean", **clean, "d_macro_f1": 0.0}]
    for name, levels in PERTURBATIONS.items():
        for sev, (label, param) in enumerate(levels, start=1):
            views = {s: perturb(name, param, v, seed) for s, v in sub.views.items()}
            m = stats.point(y, probabilities(subject, sub, device, views)[0], classes)
            rows.append(
                {
                    "perturbation": name,
                    "severity": sev,
                    "level": label,
                    **m,
                    "d_macro_f1": m["macro_f1"] - clean["macro_f1"],
                }
            )
        if log:
            log(
                f"stress {name}: macro-F1 "
                + ", ".join(f"{r['macro_f1']:.3f}" for r in rows if r["perturbation"] == name)
            )
    return {
        "n": int(len(idx)),
        "seed": seed,
        "rows": rows,
        "perturbations": {k: [lab for lab, _ in v] for k, v in PERTURBATIONS.items()},
    }
