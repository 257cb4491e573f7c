"""`python -m ray_xray.predict CHECKPOINT IMAGE...`: class probabilities per image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from .cli import run
from .data.cache import decode
from .data.transforms import to_tensor
from .train.engine import autocast, load_checkpoint, model_from_record, pick_device, pick_precision


def resolve_checkpoint(path: str) -> Path:
    p = Path(path)
    return p / "best_model.pt" if p.is_dir() and (p / "best_model.pt").is_file() else p


def predict(record: dict, paths: list[str], device: str = "auto") -> list[dict]:
    pre = record["preprocess"]
    dev = pick_device(device)
    model = model_from_record(record).to(dev)
    xs = []
    for path in paths:
        try:
            pixels, _, _ = decode(Path(path).read_bytes(), pre["img_size"])
        except FileNotFoundError:
            raise ValueError(f"{path}: no such image") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"{path}: not a readable image ({type(exc).__name__})") from None
        xs.append(to_tensor(pixels, pre["mean"], pre["std"], pre["in_chans"]))
    probs = []
    with torch.no_grad():
        for start in range(0, len(xs), 64):
            batch = torch.stack(xs[start : start + 64]).to(dev)
            with autocast(dev, pick_precision(record["config"].get("precision", "auto"), dev)):
                logits = model(batch)
            probs.append(torch.softmax(logits.float(), 1).cpu())
    prob = torch.cat(probs).numpy()
    classes = record["classes"]
    return [
        {
            "image": path,
            "prediction": classes[int(p.argmax())],
            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        }
        for path, p in zip(paths, prob, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ray_xray.predict", description="Class probabilities for image files."
    )
    ap.add_argument("checkpoint", help="best_model.pt, a run directory, or a trial checkpoint")
    ap.add_argument("images", nargs="+", help="PNG/JPEG files")
    ap.add_argument("--json", action="store_true", help="print a JSON list")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args(argv)
    record = load_checkpoint(resolve_checkpoint(args.checkpoint))
    rows = predict(record, args.images, args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    classes = record["classes"]
    width = max(len(r["image"]) for r in rows)
    print(f"{'image':<{width}}  {'prediction':<12} " + " ".join(f"{c[:12]:>12}" for c in classes))
    for r in rows:
        probs = " ".join(f"{r['probabilities'][c]:>12.4f}" for c in classes)
        print(f"{r['image']:<{width}}  {r['prediction']:<12} {probs}")
    return 0


if __name__ == "__main__":
    run(main)
