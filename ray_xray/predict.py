"""`python -m ray_xray.predict CHECKPOINT IMAGE...`: class probabilities per image.

CHECKPOINT is one model (best_model.pt, a run directory, a trial checkpoint) or an ensemble
(`ensemble.pt` from `python -m ray_xray.ensemble`, or the folder holding it): the ensemble's
answer is the weighted mean of its temperature-calibrated members' probabilities.

`--operating-point CLASS@POINT` (repeatable) adds a yes/no decision per image: positive for
CLASS when its probability is >= the threshold. POINT is a name the ensemble stored (e.g.
`sens0.90`, `spec0.95`: thresholds fixed on validation by `python -m ray_xray.ensemble`) or a
probability threshold written as a number (`tuberculosis@0.37`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import is_ensemble, load_model_or_ensemble, preprocess
from .cli import HelpFormatter, run
from .data.cache import decode
from .data.images import UnreadableImage
from .data.sources import path_text
from .device import pick_device, pick_precision
from .inference import autocast, ensemble_proba, member_proba, model_from_record, record_feed
from .sweep_folder import model_path


def _read_images(paths: list[str]) -> list[bytes]:
    blobs = []
    for path in paths:
        try:
            blobs.append(Path(path).read_bytes())
        except FileNotFoundError:
            raise ValueError(f"{path_text(path)}: no such image") from None
        except OSError as exc:
            raise ValueError(
                f"{path_text(path)}: not a readable image ({type(exc).__name__})"
            ) from None
    return blobs


def _decode(blob: bytes, path: str, img_size: int):
    """Decoded as training decoded it (DICOM, 16-bit, EXIF orientation); one-line errors."""
    try:
        pixels, _, _ = decode(blob, img_size, path)
    except UnreadableImage as exc:
        raise ValueError(f"{path_text(path)}: {exc}") from None
    return pixels


def _logits(record: dict, blobs: list[bytes], paths: list[str], dev, decoded: dict) -> torch.Tensor:
    """fp32 logits (N, K) of one model; `decoded` caches pixels per img_size across members."""
    model = model_from_record(record).to(dev)
    size = preprocess(record)["img_size"]
    if size not in decoded:
        decoded[size] = [_decode(b, p, size) for b, p in zip(blobs, paths, strict=True)]
    feed = record_feed(record, dev)  # the record's own scaling, as training fed it
    out = []
    with torch.no_grad():
        for start in range(0, len(decoded[size]), 64):
            batch = feed(torch.from_numpy(np.stack(decoded[size][start : start + 64])))
            with autocast(dev, pick_precision(record["config"].get("precision", "auto"), dev)):
                logits = model(batch)
            out.append(logits.float().cpu())
    return torch.cat(out)


def _rows(paths: list[str], prob, classes: list[str]) -> list[dict]:
    return [
        {
            "image": path_text(path),
            "prediction": classes[int(p.argmax())],
            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        }
        for path, p in zip(paths, prob, strict=True)
    ]


def resolve_operating_point(record: dict, spec: str) -> dict:
    """'CLASS@NAME' or 'CLASS@THRESHOLD' -> {"class", "point", "threshold"} for this record.

    NAME is one of the record's stored points (``record["operating_points"][CLASS]``, written
    by ``python -m ray_xray.ensemble``); THRESHOLD a probability in [0, 1]. Raises ValueError
    (one line, listing what is available) for an unknown class or point.
    """
    cls, sep, point = spec.rpartition("@")
    classes = list(record["classes"])
    if not sep or not cls or not point:
        raise ValueError(
            f"--operating-point {spec!r}: expected CLASS@POINT, e.g. "
            f"{classes[-1]}@sens0.90 or {classes[-1]}@0.5"
        )
    if cls not in classes:
        raise ValueError(
            f"--operating-point {spec!r}: no class {cls!r} (classes: {', '.join(classes)})"
        )
    stored = (record.get("operating_points") or {}).get(cls) or {}
    named = re.fullmatch(r"(sens|spec)(0?\.\d+|1(?:\.0*)?)", point)
    if named:  # sens0.9 is sens0.90, the name the ensemble stored
        point = f"{named[1]}{float(named[2]):.2f}"
    if point in stored:
        return {"class": cls, "point": point, "threshold": float(stored[point])}
    try:
        t = float(point)
    except ValueError:
        have = ", ".join(sorted(stored)) or "none (only an ensemble.pt stores them)"
        raise ValueError(
            f"--operating-point {spec!r}: no stored point {point!r} for {cls} "
            f"(stored: {have}; or give a probability threshold)"
        ) from None
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"--operating-point {spec!r}: a threshold must be in [0, 1]")
    return {"class": cls, "point": point, "threshold": t}


def apply_operating_points(rows: list[dict], points: list[dict]) -> list[dict]:
    """Adds "decisions": [{"class", "point", "threshold", "probability", "positive"}] to each
    row (positive when the class probability >= threshold). Returns the same rows."""
    for r in rows:
        r["decisions"] = [
            {
                **p,
                "probability": r["probabilities"][p["class"]],
                "positive": bool(r["probabilities"][p["class"]] >= p["threshold"]),
            }
            for p in points
        ]
    return rows


def predict(record: dict, paths: list[str], device: str = "auto") -> list[dict]:
    """Rows ``{"image", "prediction", "probabilities": {class: p}}``, one per image file.

    ``record``: from ``load_model_or_ensemble`` (an ensemble: the weighted mean of its members'
    temperature-scaled softmax, `probabilities`). For arrays or tensors use ``ray_xray.load``.
    Raises ValueError naming a missing or unreadable file.
    """
    prob = probabilities(record, _read_images(paths), paths, device)
    return _rows(paths, prob, record["classes"])


def probabilities(
    record: dict, blobs: list[bytes], names: list[str], device: str = "auto"
) -> np.ndarray:
    """Class probabilities of encoded images (PNG/JPEG/... bytes) under a model or an ensemble.

    ``record``: a model record or an ensemble dict (``load_model_or_ensemble``); ``names``
    label each blob in error messages. Each image is decoded, resized and normalised exactly
    as ``predict`` does for files. Returns a float64 (N, K) array, K = ``len(record["classes"])``,
    rows summing to 1 (an ensemble: the weighted mean of its members' temperature-scaled
    softmax). Raises ValueError naming the image when one cannot be decoded.
    """
    ensemble = is_ensemble(record)
    if not blobs:
        return np.zeros((0, len(record["classes"])), dtype=np.float64)
    members = record["members"] if ensemble else [record]
    weights = record["weights"] if ensemble else [1.0]
    dev, decoded = pick_device(device), {}
    probs = [
        member_proba(
            _logits(member, blobs, names, dev, decoded),
            float(member.get("temperature", 1.0)) if ensemble else 1.0,
        )
        for member in members
    ]
    return ensemble_proba(probs, weights)


def build_parser() -> argparse.ArgumentParser:
    """The `predict` command's options: the model, the images, output form, operating points
    and prior adaptation."""
    ap = argparse.ArgumentParser(
        prog="python -m ray_xray.predict",
        description="Class probabilities for image files.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument(
        "checkpoint",
        help="best_model.pt, a run directory, a trial checkpoint, an ensemble.pt (or its folder), "
        "or a sweep folder (its ensemble; its best trial when it has none)",
    )
    ap.add_argument(
        "images", nargs="+", help="image files: PNG, JPEG, BMP, TIFF, WebP or DICOM (.dcm)"
    )
    ap.add_argument("--json", action="store_true", help="print a JSON list")
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (auto: GPU when available)",
    )
    ap.add_argument(
        "--operating-point",
        action="append",
        default=[],
        metavar="CLASS@POINT",
        help="add a positive/negative call for CLASS: POINT is a stored point of the ensemble "
        "(sens0.90, spec0.95, ...) or a probability threshold (0.37); repeatable",
    )
    ap.add_argument(
        "--adapt-prior",
        choices=("em",),
        default=None,
        help="estimate the class mix of the images given (EM, Saerens et al. 2002; give many "
        "images of one site) and add each image's probabilities re-weighted to it",
    )
    ap.add_argument(
        "--prevalence",
        default=None,
        metavar="CLASS=P[,...]",
        help="like --adapt-prior, with a known class mix (pneumonia=0.625, or one number per class)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """The `predict` command: a table (or `--json`) of probabilities per image; returns 0.
    Bad input raises ValueError, which `cli.run` prints as one `error:` line (exit 2)."""
    args = build_parser().parse_args(argv)
    path, note = model_path(args.checkpoint)
    if note:  # a sweep folder: which of its models answers (as `evaluate` takes it)
        print(f"predict: {args.checkpoint} is {note} ({path})", file=sys.stderr)
    record = load_model_or_ensemble(path)
    points = [resolve_operating_point(record, s) for s in args.operating_point]
    rows = predict(record, args.images, args.device)
    if points:  # no "decisions" key unless asked: --json output stays as it was
        apply_operating_points(rows, points)
    adapted = None
    if args.adapt_prior or args.prevalence:
        adapted = adapt_rows(record, rows, args.adapt_prior, args.prevalence)
    if args.json:
        out = rows if adapted is None else {"prior_adaptation": adapted, "predictions": rows}
        print(json.dumps(out, indent=2))
    else:
        print_table(rows, points, record["classes"], adapted)
    return 0


def print_table(rows: list[dict], points: list[dict], classes: list[str], adapted) -> None:
    """`predict`'s table: per image its prediction, each class's probability and each
    operating point's positive/negative call; then each point's rule, and with prior
    adaptation (`adapted`, adapt_rows' block) its summary and each image's adapted row."""
    width = max(len(r["image"]) for r in rows)
    names = [f"{p['class']}@{p['point']}" for p in points]
    cols = [max(len(n), 8) for n in names]
    print(
        f"{'image':<{width}}  {'prediction':<12} "
        + " ".join(f"{c[:12]:>12}" for c in classes)
        + "".join(f"  {n:>{w}}" for n, w in zip(names, cols, strict=True))
    )
    for r in rows:
        probs = " ".join(f"{r['probabilities'][c]:>12.4f}" for c in classes)
        calls = "".join(
            f"  {'positive' if d['positive'] else 'negative':>{w}}"
            for d, w in zip(r.get("decisions", []), cols, strict=True)
        )
        print(f"{r['image']:<{width}}  {r['prediction']:<12} {probs}{calls}")
    for p in points:
        print(f"{p['class']}@{p['point']}: positive when P({p['class']}) >= {p['threshold']:.6g}")
    if adapted is not None:
        from .prior import summary_line

        print(summary_line(adapted, classes))
        for r in rows:
            probs = " ".join(f"{r['adapted']['probabilities'][c]:>12.4f}" for c in classes)
            print(f"{r['image']:<{width}}  {r['adapted']['prediction']:<12} {probs}  (adapted)")


def adapt_rows(record: dict, rows: list[dict], method: str | None, prevalence: str | None) -> dict:
    """Prior adaptation over the images of `rows` (predict's rows, changed in place: each gets
    "adapted": {"prediction", "probabilities"}); returns the prior block (prior.adapt's, less
    the arrays). The unadapted probabilities stay as they were. Raises ValueError (one line)."""
    from .prior import adapt, parse_prevalence, train_prior_of

    classes = record["classes"]
    prob = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    target = parse_prevalence(prevalence, classes) if prevalence else None
    block = adapt(prob, train_prior_of(record), "known" if prevalence else method, target)
    for r, p in zip(rows, block.pop("prob"), strict=True):
        r["adapted"] = {
            "prediction": classes[int(p.argmax())],
            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        }
    return block


if __name__ == "__main__":
    run(main)
