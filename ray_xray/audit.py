"""`python -m ray_xray.audit DATA`: look at a dataset before trusting a number trained on it."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from .cli import HelpFormatter, add_data_boundary, run
from .data.audit import NEAR_THRESHOLD, audit, format_report
from .data.dataset import DEDUPE, apply_dedupe, load_table


def main(argv: list[str] | None = None) -> int:
    """The `audit` command: prepare the data (unreadable files are findings here, not failures),
    apply --dedupe, and print the audit as a table or one JSON object. Returns 0; a missing
    folder or manifest raises DataError (one `error:` line, exit 2 through `cli.run`); a bad
    option exits 2 through argparse."""
    p = argparse.ArgumentParser(
        prog="python -m ray_xray.audit",
        formatter_class=HelpFormatter,
        description="Counts, duplicates (exact and near, within and across splits), label "
        "conflicts, patient overlap, unreadable files, and every file not used with the reason.",
    )
    p.add_argument(
        "data", help="folder ROOT/{train,val,test}/<label>/, manifest.csv, or synthetic:chest3"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--dedupe", choices=DEDUPE, default="off", help="apply a policy and audit what remains"
    )
    p.add_argument("--img-size", type=int, default=128, help="size images are prepared at")
    p.add_argument(
        "--near-threshold",
        type=float,
        default=NEAR_THRESHOLD,
        help="thumbnail cosine for near-duplicates",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="prepared-data cache (default $RAY_XRAY_CACHE or ~/.cache/ray_xray)",
    )
    add_data_boundary(p)
    args = p.parse_args(argv)
    log = functools.partial(print, file=sys.stderr)
    # Unreadable files are findings here, not failures.
    skipped = []  # every file not used, with the reason: listed, never silent
    table, bad, _ = load_table(
        args.data,
        args.img_size,
        skip_bad=True,
        cache_root=args.cache,
        log_fn=log,
        skipped=skipped,
    )
    table, dropped = apply_dedupe(table, args.dedupe)
    report = audit(table, bad, args.near_threshold, skipped)
    report["dedupe"] = {"policy": args.dedupe, "dropped": dropped}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, args.data))
        if args.dedupe != "off":
            print(f"  dedupe {args.dedupe}: dropped {dropped} images")
    return 0


if __name__ == "__main__":
    run(main)
