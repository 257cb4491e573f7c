"""`python -m benchmarks [--smoke-test] [--only NAME[,NAME]] [--data DIR] [--set NAME.KEY=VALUE]`."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray_xray.cli import HelpFormatter  # noqa: E402

from . import common  # noqa: E402


class _Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The benchmark list keeps its lines; every option shows its default."""


ABOUT = {
    "overhead": "where a Tune trial's wall time goes, phase by phase, beside a bare torch loop",
    "precision": "images/s of every model, fp32 vs bf16 autocast (and channels_last for conv)",
    "roofline": "resnet18 training-step FLOP/s as a fraction of measured fp32/bf16 matmul peaks",
    "datapath": "images/s from the prepared cache (with/without augmentation) vs decoding PNGs",
    "search": "ASHA+TPE vs TPE vs random search on chest3 at an equal trial-epoch budget",
    "scaling": "trials/hour with 1, 2, 4 trials in parallel, and a g5 (A10G) extrapolation",
    "feed": "pure training step vs a real epoch through the real loader, per augmentation side",
    "value": "hand-set run vs sweep vs cross-validated sweep: test ACC/F1/AUC on pneumonia2, brain4",
}
# Minutes (full, --smoke-test) on a quiet 2-core CPU (full: measured 2026-11-22, RESULTS.md), see "Benchmarks" in README.md.
ROUGH_MINUTES = {
    "overhead": (8, 1.5),
    "precision": (7.5, 4),
    "roofline": (1.5, 0.5),
    "datapath": (1, 0.5),
    "search": (33, 4),
    "scaling": (14, 4.5),
    "feed": (12, 1),
    "value": (60, 8),  # sized by estimate, not yet measured on a quiet machine
}


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(
        f"  {n:<10} {ABOUT[n]} (~{ROUGH_MINUTES[n][0]} min, --smoke-test ~{ROUGH_MINUTES[n][1]} min)"
        for n in common.ORDER
    )
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        formatter_class=_Formatter,
        description="Run the benchmarks; each writes benchmarks/results/<name>.json and "
        "benchmarks/RESULTS.md is rebuilt from every JSON there.\n\nbenchmarks:\n" + lines,
        epilog="Speed claims are ratios measured side by side in one run. Run on a quiet machine: "
        "anything else using the CPU moves the numbers.",
    )
    p.add_argument(
        "--smoke-test", dest="quick", action="store_true", help="tiny settings: a fast look"
    )
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument(
        "--only",
        default="",
        metavar="NAME[,NAME]",
        help=f"run only these ({', '.join(common.ORDER)})",
    )
    p.add_argument(
        "--data",
        default=None,
        help="chest3 folder (default $RAY_XRAY_SHARED_DATA/chest3, else ../shared/data/chest3)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="override one benchmark setting, e.g. --set precision.models=resnet18,cnn "
        "(--list-settings shows them)",
    )
    p.add_argument(
        "--out",
        default=str(common.BENCH_DIR),
        help="where results/ and RESULTS.md go (default: the benchmarks folder)",
    )
    p.add_argument("--list-settings", action="store_true", help="print every setting and exit")
    p.add_argument(
        "--keep-runs", action="store_true", help="keep the Ray run folders under runs/bench/"
    )
    return p


def parse_sets(items: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        bench, dot, setting = key.partition(".")
        if not sep or not dot or not setting:
            raise ValueError(f"--set {item}: expected NAME.KEY=VALUE")
        if bench not in common.ORDER:
            raise ValueError(
                f"--set {item}: unknown benchmark {bench!r} ({', '.join(common.ORDER)})"
            )
        if bench not in names:
            raise ValueError(f"--set {item}: benchmark {bench!r} is not selected by --only")
        out.setdefault(bench, {})[setting.strip()] = value.strip()
    return out


def workers_path(pythonpath: str) -> str:
    """PYTHONPATH for Ray's worker processes: this checkout first, then `pythonpath`'s other
    entries. The trials must run this checkout's ray_xray, as this driver does; with an
    editable install of another checkout (a clean clone sharing a venv) they would import
    that one. They inherit the driver's environment, which `main` sets (not an import: a test
    that imports this module must not change the PYTHONPATH of what it starts)."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join([root, *[p for p in pythonpath.split(os.pathsep) if p and p != root]])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["PYTHONPATH"] = workers_path(os.environ.get("PYTHONPATH", ""))
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(common.ORDER)
    unknown = [n for n in names if n not in common.ORDER]
    if unknown:
        raise ValueError(
            f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(common.ORDER)}"
        )
    modules = {n: importlib.import_module(f"benchmarks.{n}") for n in names}
    if args.list_settings:
        for n, mod in modules.items():
            print(f"{n}:")
            for k, v in mod.DEFAULTS["full"].items():
                print(
                    f"  {n}.{k} = {common._setting(v)}   (quick: {common._setting(mod.DEFAULTS['quick'][k])})"
                )
        return 0
    sets = parse_sets(args.set, names)
    settings = {
        n: common.resolve_settings(modules[n].DEFAULTS, args.quick, sets.get(n, {})) for n in names
    }
    data = common.default_data(args.data)
    out = Path(args.out).resolve()
    common.OUT_DIR = out
    command = "python -m benchmarks" + (" " + shlex.join(argv) if argv else "")
    total = sum(ROUGH_MINUTES[n][1 if args.quick else 0] for n in names)
    common.say(
        "all",
        f"{', '.join(names)}{' (quick)' if args.quick else ''}: roughly {total:g} min on a "
        f"quiet 2-core machine; data {data}",
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * common.threads():
        common.say(
            "all",
            f"warning: the machine is busy (1-min load {load:.1f} on {common.threads()} CPUs); "
            "the numbers will be noisy, run on a quiet machine for results",
        )
    failed = []
    for n in names:
        common.say(n, f"start: {ABOUT[n]}")
        load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        try:
            res = modules[n].run(args.quick, data, settings[n], keep=args.keep_runs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one benchmark failing must not lose the others' results
            import traceback

            traceback.print_exc()
            common.say(n, f"FAILED: {type(exc).__name__}: {exc}")
            failed.append(n)
            continue
        res.update(
            command=command,
            quick=args.quick,
            machine=common.machine(),
            load_before=load_before,
            duration_s=round(time.perf_counter() - t0, 1),
        )
        path = common.save(res, out)
        common.say(n, f"done in {res['duration_s'] / 60:.1f} min -> {path}")
        for h in res.get("headline", []):
            common.say(n, f"headline: {h}")
    md = common.write_markdown(out)
    print(f"results: {md}")
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ray_xray.cli import run

    run(main)
