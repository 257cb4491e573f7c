"""`python -m ray_xray.evaluate CHECKPOINT DATA [--split test|val|train|all] [--out DIR]
[--stress]`: metrics with intervals, shift check and report.html for any model on any set."""

from __future__ import annotations

import argparse
import math

from ..cli import HelpFormatter, add_data_boundary, run
from ..links import report_line

SPLITS = ("test", "val", "train", "all")


def build_parser() -> argparse.ArgumentParser:
    """The `evaluate` command's options, in four groups: what to evaluate, what to compute, how
    the images are read, prior adaptation."""
    p = argparse.ArgumentParser(
        prog="python -m ray_xray.evaluate",
        formatter_class=HelpFormatter,
        description="Evaluate a model or ensemble on a labelled set: metrics.json (accuracy "
        "and recall per class with 95% Wilson score intervals, macro-F1 and AUC with 95% "
        "stratified bootstrap intervals, ECE, operating points) and report.html (confusion, "
        "ROC/PR, reliability, samples, Grad-CAM). On other "
        "data than the model's own, a shift check compares with the model's own test split; "
        "--stress adds metrics under acquisition changes (gamma, blur, noise, JPEG ...).",
    )
    _add_what_to_evaluate(p)
    _add_analysis_options(p)
    _add_reading_options(p)
    _add_prior_options(p)
    return p


def _add_what_to_evaluate(p: argparse.ArgumentParser) -> None:
    """The model, the data, which split (or a subset of it), and where the results go."""
    p.add_argument(
        "checkpoint",
        help="best_model.pt, a run directory, a trial checkpoint, an "
        "ensemble.pt (or its folder), or a sweep folder (its ensemble)",
    )
    p.add_argument(
        "data",
        help="labelled images: a folder ({train,val,test}/<class>/ or just "
        "<class>/), a manifest CSV, or synthetic:chest3[:N]",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which split to evaluate (default %(default)s)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/evaluate/<model>_on_<data>_<split>)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="score a class-stratified, seeded subset of N images (default 0: every image of "
        "the split; a training run's limit_per_split is never carried over)",
    )


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    """What is computed besides the metrics: stress test, intervals, shift check, images."""
    p.add_argument(
        "--stress", action="store_true", help="also run the acquisition-shift stress test"
    )
    p.add_argument(
        "--stress-limit",
        type=int,
        default=400,
        metavar="N",
        help="images used by --stress: a class-stratified subset (default %(default)s; 0 = all)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the intervals (default %(default)s; 0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap, subset and noise")
    p.add_argument(
        "--no-shift", action="store_true", help="skip the comparison with the model's own data"
    )
    p.add_argument(
        "--no-images",
        action="store_true",
        help="leave sample and Grad-CAM figures (which show the images) out of report.html",
    )


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    """How the images are read and where the model runs."""
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (auto: GPU when available)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="prepared-data cache folder (default $RAY_XRAY_CACHE or ~/.cache/ray_xray)",
    )
    add_data_boundary(p)


def _add_prior_options(p: argparse.ArgumentParser) -> None:
    """Prior adaptation: the figures again, re-weighted to the set's class mix."""
    p.add_argument(
        "--adapt-prior",
        choices=("em",),
        default=None,
        help="also report the figures after prior adaptation: the set's class mix estimated "
        "from its images by EM (Saerens et al. 2002), with a bootstrap interval; the "
        "unadapted figures stay",
    )
    p.add_argument(
        "--prevalence",
        default=None,
        metavar="CLASS=P[,...]",
        help="like --adapt-prior, with a known class mix (e.g. pneumonia=0.625, or one "
        "number per class)",
    )


def _fmt(d: dict) -> str:
    """``0.000 [0.000, 0.048] (0/76)``: value, interval, and the counts of a proportion."""
    v, lo, hi = d["value"], d["low"], d["high"]
    if v is None or not math.isfinite(v):
        return "-"
    counts = f" ({d['k']}/{d['n']})" if "k" in d else ""
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and math.isfinite(lo) else ""
    return f"{v:.3f}{interval}{counts}"


def main(argv: list[str] | None = None) -> int:
    """The `evaluate` command: `core.evaluate` with the parsed options, then its headline
    figures, notes and warnings on stdout. Returns 0; raises ValueError (one `error:` line,
    exit 2 through `cli.run`) for a missing checkpoint or a negative --limit/--stress-limit."""
    args = build_parser().parse_args(argv)
    _check_args(args)  # before the heavy imports
    from .core import evaluate

    r = evaluate(
        args.checkpoint,
        args.data,
        args.split,
        out=args.out,
        stress=args.stress,
        n_boot=args.bootstrap,
        seed=args.seed,
        device=args.device,
        images=not args.no_images,
        shift=not args.no_shift,
        skip_bad=args.skip_bad,
        cache=args.cache,
        stress_limit=args.stress_limit,
        limit=args.limit,
        adapt_prior=args.adapt_prior,
        prevalence=args.prevalence,
    )
    _print_result(r, args.limit)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse a missing checkpoint and negative limits in one line (ValueError)."""
    from pathlib import Path

    if not Path(args.checkpoint).expanduser().exists():
        raise ValueError(f"{args.checkpoint}: no such checkpoint, run, ensemble or sweep folder")
    if args.stress_limit < 0:
        raise ValueError(f"--stress-limit must be >= 0, got {args.stress_limit}")
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")


def _print_result(r, limit: int) -> None:
    """What was scored, the headline figures with intervals (and prior-adapted ones), ECE
    beside the reference split's, the own-split notes and every warning, the output paths."""
    from pathlib import Path

    h = r.headline
    scored = (
        f"{r.n} of {r.n_available} images: --limit {limit}"
        if r.n < r.n_available
        else (f"all {r.n} images")
    )
    print(
        f"{r.model} on {r.data} ({r.split}, {scored})"
        + (" [partial: no " + ", ".join(r.missing_classes) + "]" if r.partial else "")
    )
    print(f"  accuracy {_fmt(h['accuracy'])}  macro-F1 {_fmt(h['macro_f1'])}  AUC {_fmt(h['auc'])}")
    print("  recall " + "  ".join(f"{c} {_fmt(h[f'recall_{c}'])}" for c in r.classes))
    if r.prior_adaptation:
        from ..prior import summary_line

        a = r.prior_adaptation
        h2 = a["headline"]
        print("  " + summary_line(a, r.classes))
        print(
            f"  prior-adapted: accuracy {_fmt(h2['accuracy'])}  macro-F1 {_fmt(h2['macro_f1'])}"
            f"  AUC {_fmt(h2['auc'])}"
        )
    if r.shift and "reference" in r.shift.get("ece", {}):
        e = r.shift["ece"]
        ref = r.shift.get("reference_split", "test")
        print(f"  ECE {e['new']:.3f} here, {e['reference']:.3f} on the model's own {ref} split")
    for note in r.notes:
        if note.startswith("own data, not a site shift"):
            print(f"note: {note}")
    for w in r.warnings:
        print(f"warning: {w}")
    print(f"wrote {r.out}/metrics.json")
    print(report_line(Path(r.out) / "report.html"))


if __name__ == "__main__":
    run(main)
