"""`python -m ray_xray.train --model resnet18 --data synthetic:chest3 --epochs 5`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..cli import Parser, UserError, note_renamed, run
from ..config import CHOICES, HELP, TrainConfig, field_types, parse_settings, parse_value
from ..links import report_line


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


# Each setting's flag is `--field-name`. RENAMED: old spellings, still taken for one release
# (hidden from --help).
RENAMED = {"--scheduler": "--lr-scheduler", "--workers": "--num-workers"}
CONFIG_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_kwargs"]
UNSET = object()  # what a setting's flag holds when it was not given


def _setting_type(name: str):
    """argparse ``type=`` for one setting: TrainConfig's parsing, one-line errors."""

    def convert(text: str):
        try:
            return parse_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in its "invalid value" message
    return convert


def add_config_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field (help and default from config.HELP and the dataclass)."""
    d, types = TrainConfig(), field_types()
    group = p.add_argument_group("training settings (each is also --set KEY=VALUE)")
    for name in CONFIG_FIELDS:
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kw = {"dest": name, "default": getattr(d, name), "help": HELP[name]}
        if types[name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if name in CHOICES:
            metavar = "{" + ",".join(CHOICES[name]) + "}"
        else:
            metavar = {int: "N", float: "X"}.get(types[name], name.upper())
        group.add_argument(flag, type=_setting_type(name), metavar=metavar, **kw)
        for old in (o for o, new in RENAMED.items() if new == flag):
            group.add_argument(old, **{**kw, "help": argparse.SUPPRESS}, type=_setting_type(name))


def build_parser() -> argparse.ArgumentParser:
    """The `train` command's options: --set/--hp, output, cache, restarts, --smoke-test, report,
    and one flag per TrainConfig setting (`add_config_arguments`)."""
    p = Parser(
        data_boundary=True,
        prog="python -m ray_xray.train",
        description="Train one model through Ray Train (TorchTrainer); the best checkpoint is "
        "evaluated on test and saved with config.json and metrics.json in --out.",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting by its name, e.g. --set epochs=4 --set "
        "model.dropout=0.3 (repeatable; as in tune and active)",
    )
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameter (repeatable; same as --set model.KEY=VALUE)",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<time>)")
    p.add_argument(
        "--cache",
        default=None,
        help="prepared-data cache (local path or s3://; default $RAY_XRAY_CACHE or "
        "~/.cache/ray_xray)",
    )
    p.add_argument(
        "--max-failures", type=int, default=2, help="worker restarts from the last checkpoint"
    )
    p.add_argument(
        "--smoke-test", action="store_true", help="at most 2 epochs, 32 px, 64 images per split"
    )
    p.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, evaluate the best model on test into OUT/report/ "
        "(report.html: training curves, metrics with intervals, confusion, ROC/PR, "
        "calibration, operating points, samples, Grad-CAM; as python -m "
        "ray_xray.evaluate OUT DATA)",
    )
    add_config_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; setting flags that were not given hold ``UNSET``."""
    blank = argparse.Namespace(**dict.fromkeys(CONFIG_FIELDS, UNSET))
    return build_parser().parse_args(argv, namespace=blank)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --set < explicit flags; a setting given both ways is refused."""
    settings = parse_settings(args.set)
    for k, v in parse_kv(args.hp).items():
        settings[f"model.{k}"] = v
    flags = {k: getattr(args, k) for k in CONFIG_FIELDS if getattr(args, k) is not UNSET}
    both = sorted(set(settings) & set(flags))
    if both:
        raise UserError(f"{both[0]} is given twice, as a flag and as --set {both[0]}=...")
    cfg = TrainConfig.from_dict({**settings, **flags})
    if args.smoke_test:
        cfg.epochs, cfg.img_size, cfg.limit_per_split = min(cfg.epochs, 2), 32, 64
    return cfg.with_model_size()


def main(argv: list[str] | None = None) -> int:
    """The `train` command: resolve the config (defaults < --set < flags), build the model once to
    fail fast, train through Ray Train and test the best epoch (`run.train_and_test`), print
    the test line, then write the report unless --no-report. Returns 0; bad input raises
    ValueError (one `error:` line, exit 2 through `cli.run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    note_renamed(argv, RENAMED)
    cfg = config_from_args(args)
    from ..models import create_model

    create_model(
        cfg.model, 3, cfg.in_chans, cfg.img_size, **cfg.model_kwargs
    )  # fail fast on bad hp
    out = args.out or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    from .run import absent_as_null, train_and_test

    report = train_and_test(cfg, out, max_failures=args.max_failures, cache=args.cache)
    t = absent_as_null(report)["test"]  # as metrics.json: an absent class has no recall

    def num(v, digits: int = 3) -> str:
        return "n/a" if v is None or v != v else f"{v:.{digits}f}"  # v != v: NaN

    recalls = ", ".join(f"{c} {num(v)}" for c, v in t["recall"].items())
    print(
        f"\ntest: acc {t['accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}  AUC {num(t['auc'], 4)}  "
        f"recall: {recalls}\nbest epoch {report['best_epoch']}, wall {report['wall_s']:.0f}s -> {out}",
        file=sys.stdout,
    )
    if args.report:
        write_report(out, cfg, args.cache)
    else:
        print(
            f"no report (--no-report); make one with: python -m ray_xray.evaluate {out} {cfg.data}"
        )
    return 0


def write_report(out: str, cfg: TrainConfig, cache: str | None) -> None:
    """OUT/report/report.html through `ray_xray.evaluate` (test split, bootstrap intervals).
    The run is complete without it: a failure is one warning line naming the command to retry."""
    from ..evaluate.core import evaluate

    dest = Path(out) / "report"
    try:
        # A run trained on a subset (--smoke-test, limit_per_split) is reported on as many test
        # images, and says so; `python -m ray_xray.evaluate OUT DATA` scores all of them.
        r = evaluate(
            out,
            cfg.data,
            "test",
            out=dest,
            cache=cache,
            device=cfg.device,
            limit=cfg.limit_per_split,
        )
    except Exception as exc:  # noqa: BLE001 - the trained model is safe either way
        print(
            f"warning: no report ({type(exc).__name__}: {exc}); retry with: python -m "
            f"ray_xray.evaluate {out} {cfg.data} --out {dest}",
            file=sys.stderr,
        )
        return
    if r.n < r.n_available:
        print(
            f"report on {r.n} of the {r.n_available} test images (limit_per_split "
            f"{cfg.limit_per_split}); all of them: python -m ray_xray.evaluate {out} {cfg.data}"
        )
    print(report_line(dest / "report.html"), file=sys.stdout)


if __name__ == "__main__":
    run(main)
