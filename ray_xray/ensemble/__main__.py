"""`python -m ray_xray.ensemble EXPERIMENT_DIR`: ensemble a sweep's best trials and report."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from ..cli import HelpFormatter, add_data_boundary, run
from ..links import report_line
from ..sweep_folder import check_sweep_folder
from .checks import check_top_k


def targets(text: str) -> tuple[float, ...]:
    """'0.9,0.95' -> (0.9, 0.95); each strictly between 0 and 1 (argparse reports the error)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"targets must be in (0, 1), got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The `ensemble` command's parser (no torch import: --help answers at once)."""
    p = argparse.ArgumentParser(
        prog="python -m ray_xray.ensemble",
        formatter_class=HelpFormatter,
        description="Take the K best trials of a finished sweep (by its validation objective, "
        "across architectures), calibrate each by temperature scaling on validation, combine them "
        "(equal mean, macro-F1-weighted mean, greedy Caruana selection on validation NLL) and keep "
        "the ensemble with the lowest validation NLL. Test data is only used to report. Writes "
        "ensemble.pt (usable by python -m ray_xray.predict), metrics.json, comparison.csv and "
        "report.html with figures/.",
    )
    p.add_argument("experiment", help="a sweep's folder STORAGE/NAME (holds results.parquet)")
    p.add_argument("--top-k", type=int, default=5, help="trials to consider (default %(default)s)")
    p.add_argument(
        "--data",
        default=None,
        help="data to evaluate on (default: the sweep's own, from sweep.json)",
    )
    p.add_argument("--out", default=None, help="output folder (default EXPERIMENT/ensemble)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the members (default %(default)s: GPU when available)",
    )
    p.add_argument(
        "--specificity",
        type=targets,
        default=(0.90, 0.95),
        metavar="T[,T...]",
        help="operating points by target specificity (default 0.90,0.95)",
    )
    p.add_argument(
        "--sensitivity",
        type=targets,
        default=(0.90, 0.95),
        metavar="T[,T...]",
        help="operating points by target sensitivity (default 0.90,0.95)",
    )
    p.add_argument(
        "--external",
        action="append",
        default=None,
        metavar="DATA[,DATA]",
        help="labelled sets from elsewhere (folder, manifest or synthetic:), scored "
        "once the ensemble is chosen and saved, never used to choose: each of the "
        "top K of best_trials.json and the ensemble, with intervals and the drop from "
        "its own test split; as the sweep's --external (default: none)",
    )
    p.add_argument("--no-report", action="store_true", help="skip report.html and its figures")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    add_data_boundary(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m ray_xray.ensemble EXP [options]`: the top-k ensemble and its report (a --cv
    sweep: its fold ensemble, rebuilt), then the --external sets scored. Bad input raises
    ValueError/UserError (one line, exit 2) before any model is loaded. Returns 0."""
    args = build_parser().parse_args(argv)
    check_top_k(args.top_k)  # before the heavy imports: bad input answers at once
    check_sweep_folder(args.experiment)
    external = None
    if args.external:  # checked before any model is loaded
        from ..tune.external import for_finished_sweep

        external = for_finished_sweep(args.experiment, args.external, args.top_k, args.device)
    from .folds import cv_selection, rebuild_fold_ensemble

    if cv_selection(args.experiment) is not None:  # a --cv sweep: its fold ensemble, rebuilt
        result = rebuild_fold_ensemble(args.experiment, args.device, external)
        if external is not None:
            with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
                result["external"] = external.finish(str(args.experiment))
        print(
            json.dumps(result, indent=2, default=str)
            if args.json
            else f"wrote {result['ensemble']}, {result['metrics']}"
        )
        if result.get("report") and not args.json:
            print(report_line(result["report"]))
        return 0
    from .core import run_ensemble

    result = run_ensemble(
        args.experiment,
        top_k=args.top_k,
        data=args.data,
        out=args.out,
        device=args.device,
        report_html=not args.no_report,
        specificities=args.specificity,
        sensitivities=args.sensitivity,
        external=external,
    )
    if external is not None:  # each member's figures into best_trials.json; the table
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            result["external"] = external.finish(str(args.experiment))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    s = result["summary"]
    b, e = s["best_member"], s["ensemble"]
    print(f"best single trial {b['name']}: test macro-F1 {b['test_macro_f1']:.3f}")
    print(f"{e['name']}: test macro-F1 {e['test_macro_f1']:.3f}, ECE {e['test_ece']:.3f}")
    print(f"wrote {result['ensemble']}, {result['metrics']}, {result['comparison']}")
    if result["report"]:
        print(report_line(result["report"]))  # last, and clickable: the main result
    return 0


if __name__ == "__main__":
    run(main)
