"""`python -m ray_xray.train --model resnet18 --data synthetic:chest3 --epochs 5`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..cli import run
from ..config import CHOICES, TrainConfig
from ..data import DEDUPE


def parse_kv(items: list[str]) -> dict:
    """`KEY=VALUE` pairs (`--hp dropout=0.3`, `--set epochs=4`), values parsed as JSON."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m ray_xray.train",
        description="Train one model through Ray Train (TorchTrainer); the best checkpoint is "
        "evaluated on test and saved with config.json and metrics.json in --out.",
    )
    p.add_argument(
        "--model",
        default=d.model,
        help=f"architecture (default {d.model}); see python -m ray_xray.models",
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="folder, manifest.csv or synthetic:chest3|binary[:N] (default %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--in-chans", type=int, default=d.in_chans, choices=(1, 3))
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=CHOICES["optimizer"], default=d.optimizer)
    p.add_argument("--loss", choices=CHOICES["loss"], default=d.loss)
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    p.add_argument("--scheduler", choices=CHOICES["scheduler"], default=d.scheduler)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument(
        "--plateau-factor", type=float, default=d.plateau_factor,
        help="--scheduler plateau: lr multiplier when the monitored metric stalls",
    )  # fmt: skip
    p.add_argument(
        "--plateau-patience", type=int, default=d.plateau_patience,
        help="--scheduler plateau: epochs without improvement before the lr drops",
    )  # fmt: skip
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="--scheduler plateau: lr floor")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm, 0 = off")
    p.add_argument(
        "--patience", type=int, default=d.patience, help="early stopping patience, 0 = off"
    )
    p.add_argument("--monitor", choices=CHOICES["monitor"], default=d.monitor)
    p.add_argument("--precision", choices=CHOICES["precision"], default=d.precision)
    p.add_argument("--device", choices=CHOICES["device"], default=d.device)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--aug-strength", type=float, default=d.aug_strength, help="0 = no augmentation")
    p.add_argument(
        "--augment", choices=CHOICES["augment"], default=d.augment,
        help="seeds: flip+rotate+shift+contrast+crop; flip: horizontal flip only",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="Ray Train DDP workers")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameter (repeatable)",
    )
    p.add_argument(
        "--dedupe", choices=DEDUPE, default="off", help="drop duplicates before training"
    )
    p.add_argument(
        "--allow-leakage", action="store_true", help="train even if test shares images with train"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out instead of failing"
    )
    p.add_argument("--limit-per-split", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<time>)")
    p.add_argument("--cache", default=None, help="prepared-data cache (local path or s3://)")
    p.add_argument(
        "--max-failures", type=int, default=2, help="worker restarts from the last checkpoint"
    )
    p.add_argument("--smoke-test", action="store_true", help="2 epochs, 32 px, 64 images per split")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(
        model=args.model, data=args.data, img_size=args.img_size, in_chans=args.in_chans,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, loss=args.loss, focal_gamma=args.focal_gamma,
        label_smoothing=args.label_smoothing, class_weights=args.class_weights,
        scheduler=args.scheduler, warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip,
        plateau_factor=args.plateau_factor, plateau_patience=args.plateau_patience, min_lr=args.min_lr,
        patience=args.patience, monitor=args.monitor, precision=args.precision, device=args.device,
        channels_last=not args.no_channels_last, aug_strength=args.aug_strength, augment=args.augment, seed=args.seed,
        workers=args.workers, dedupe=args.dedupe, allow_leakage=args.allow_leakage, skip_bad=args.skip_bad,
        limit_per_split=args.limit_per_split, model_kwargs=parse_kv(args.hp),
    )  # fmt: skip
    if args.smoke_test:
        cfg.epochs, cfg.img_size, cfg.limit_per_split = min(cfg.epochs, 2), 32, 64
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from ..models import create_model

    create_model(
        cfg.model, 3, cfg.in_chans, cfg.img_size, **cfg.model_kwargs
    )  # fail fast on bad hp
    out = args.out or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    from .run import fit

    report = fit(cfg, out, max_failures=args.max_failures, cache=args.cache)
    t = report["test"]
    recalls = ", ".join(f"{c} {v:.3f}" for c, v in t["recall"].items())
    print(
        f"\ntest: acc {t['accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}  AUC {t['auc']:.4f}  "
        f"recall: {recalls}\nbest epoch {report['best_epoch']}, wall {report['wall_s']:.0f}s -> {out}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    run(main)
