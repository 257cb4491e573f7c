"""`python -m ray_xray.active --model cnn --data DATA --strategy mc_dropout --repeats 3`.

Runs the chosen strategies *and random sampling* from the same initial pools with the same
training seeds, several seeds each, and writes the side-by-side comparison to --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import Parser, run
from ..config import CHOICES, HELP, TrainConfig, parse_settings
from ..device import announce, pick_device
from ..io import write_atomic
from . import loop, report

# The seed's cnn head (4096-2048 on a 7x7 pool) has 111M parameters, nearly all in the first
# Linear: far too slow to retrain every round on a CPU. Use the head search_spaces/cnn.yaml
# fixes (512-256 on a 4x4 pool) and width 32 (3.2M params; at 64 px bf16 one CPU core trains
# ~200 img/s, 2.6x the rate of width 64). `--set model.width=64` etc. override these.
CNN_DEFAULTS = {"width": 32, "head_dims": [512, 256], "pool_size": 4}
SMOKE_MODEL = {"cnn": {"width": 8, "head_dims": [64], "pool_size": 2}}


def build_parser() -> argparse.ArgumentParser:
    """The `active` command's options: model and data, the experiment (pool sizes, rounds,
    strategies, seeds), how each round trains, and where the runs go."""
    d = TrainConfig()
    p = Parser(
        data_boundary=True,
        prog="python -m ray_xray.active",
        description="Pool-based active learning with a fair baseline: every strategy runs next "
        "to random sampling from the same initial pool and seeds. Each round trains a fresh "
        "model on the labelled set, tests it, and moves the top --query fraction of the "
        "unlabelled pool (by the strategy's uncertainty score) to the labelled set.",
    )
    p.add_argument("--model", default="cnn", help=HELP["model"])
    p.add_argument("--data", default=d.data, help=HELP["data"])
    _add_experiment_options(p)
    _add_round_training_options(p, d)
    _add_run_options(p)
    return p


def _add_experiment_options(p: argparse.ArgumentParser) -> None:
    """The experiment: pool sizes, rounds, strategies, seeds, the class to watch."""
    p.add_argument(
        "--initial",
        type=float,
        default=0.3,
        help="stratified fraction of train labelled at the start (default %(default)s)",
    )
    p.add_argument(
        "--query",
        type=float,
        default=0.1,
        help="fraction of the original train size labelled per round (default %(default)s)",
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="query rounds after round 0 (default %(default)s)"
    )
    p.add_argument(
        "--strategy",
        default="entropy",
        help=f"one or a comma list of {', '.join(loop.STRATEGIES)}; random always runs "
        "too (default %(default)s)",
    )
    p.add_argument("--mc-passes", type=int, default=10, help="MC-dropout stochastic passes (T)")
    p.add_argument(
        "--mc-score",
        default="entropy",
        choices=loop.MC_SCORES,
        help="mc_dropout: entropy of the mean prediction, or BALD (mutual information)",
    )
    p.add_argument("--repeats", type=int, default=3, help="seeds per strategy (mean and sd)")
    p.add_argument("--seed", type=int, default=0, help="first seed; repeats use seed, seed+1, ...")
    p.add_argument(
        "--focus-class",
        default=None,
        help="class whose F1 is highlighted (default tuberculosis if present, "
        "else the rarest training class)",
    )


def _add_round_training_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """How every round trains its fresh model (`d`: TrainConfig's defaults)."""
    p.add_argument("--epochs", type=int, default=5, help="per round (default %(default)s)")
    p.add_argument("--img-size", type=int, default=64, help="default %(default)s: CPU-friendly")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=HELP["batch_size"])
    p.add_argument("--lr", type=float, default=d.lr, help=HELP["lr"])
    p.add_argument("--loss", choices=CHOICES["loss"], default=d.loss, help=HELP["loss"])
    p.add_argument("--focal-gamma", type=float, default=2.0, help="used when --loss focal")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting, e.g. --set aug_strength=0.5 --set model.width=64 (repeatable)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Where the results go and where the runs run (this process or Ray tasks)."""
    p.add_argument("--out", default=None, help="output folder (default runs/active-<time>)")
    p.add_argument(
        "--cache",
        default=None,
        help="prepared-data cache (local path or s3://; default $RAY_XRAY_CACHE or "
        "~/.cache/ray_xray)",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="run everything in this process, one run after another (no Ray)",
    )
    p.add_argument(
        "--cpus-per-job",
        type=int,
        default=0,
        help="CPUs (and torch threads) per (strategy, seed) Ray task; default: the "
        "cluster's CPUs shared out, at least 1",
    )
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="GPUs per Ray task")
    p.add_argument("--limit-per-split", type=int, default=0, help=HELP["limit_per_split"])
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny: 32 px, 96 images per split, 2 rounds of 1 epoch, 2 seeds",
    )


def strategies_from(text: str) -> list[str]:
    """`--strategy`'s comma list -> the strategies to run, each once, with "random" (the baseline
    every figure compares to) always last. Raises ValueError naming an unknown strategy."""
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in names if s not in loop.STRATEGIES]
    if bad or not names:
        raise ValueError(
            f"unknown strategy {', '.join(map(repr, bad)) or repr(text)}; "
            f"choose from {', '.join(loop.STRATEGIES)}"
        )
    # Random is the baseline every figure compares to: always run it, always last.
    return [s for s in names if s != "random"] + ["random"]


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any data is read, fractions outside (0, 1), counts below 1, and an
    --initial + rounds x --query that would use more than the whole training set (ValueError)."""
    for name in ("initial", "query"):
        v = getattr(args, name)
        if not 0 < v < 1:
            raise ValueError(f"--{name} must be a fraction in (0, 1), got {v}")
    for name, low in (("rounds", 1), ("repeats", 1), ("epochs", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low}")
    used = args.initial + args.rounds * args.query
    if used > 1 + 1e-9:  # refuse before loading any data; the exact count is checked after
        raise ValueError(
            f"--initial {args.initial} + {args.rounds} rounds x --query {args.query} = "
            f"{used:g} of the training set: the pool runs out; use fewer --rounds or a smaller "
            "--query"
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig every round trains with: the command's own training flags, the cnn's
    CPU-sized defaults (CNN_DEFAULTS; SMOKE_MODEL's with --smoke-test), then `--set` (which
    wins). Raises ValueError for an unknown setting or a bad value."""
    base = {
        "model": args.model,
        "data": args.data,
        "img_size": args.img_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "loss": args.loss,
        "focal_gamma": args.focal_gamma,
        "seed": args.seed,
        "limit_per_split": args.limit_per_split,
    }
    kwargs = dict(CNN_DEFAULTS) if args.model == "cnn" else {}
    if args.smoke_test:
        kwargs.update(SMOKE_MODEL.get(args.model, {}))
    settings = parse_settings(args.set)
    return TrainConfig.from_dict({**base, "model_kwargs": kwargs, **settings})


def pick_focus(classes: list[str], counts: np.ndarray, asked: str | None) -> str:
    """The class whose F1 the table highlights: `asked` (ValueError when it is not a class), else
    tuberculosis when present, else the class with the fewest training images (`counts`)."""
    if asked is not None:
        if asked not in classes:
            raise ValueError(f"--focus-class {asked!r} is not a class ({', '.join(classes)})")
        return asked
    return "tuberculosis" if "tuberculosis" in classes else classes[int(np.argmin(counts))]


def run_jobs(data, cfg, jobs, opts: dict, local: bool, cpus_per_job: int, gpus: float):
    """Yield each (strategy, seed) run's rows as it finishes: in this process, or as Ray tasks
    (one per run, so strategies and seeds spread over every CPU of the cluster)."""
    if local or len(jobs) == 1:
        for strategy, seed in jobs:
            yield loop.run_sequence(data, cfg, strategy, seed, **opts)
        return
    import os

    import ray

    from ..train.run import init_ray

    # Every task prints near-identical round lines; Ray's log de-duplication would hide most.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init_ray()
    total = ray.cluster_resources().get("CPU", 1)
    cpus = cpus_per_job or max(1, int(total // len(jobs)))
    if cpus > total:  # such a task would wait forever for resources
        raise ValueError(f"--cpus-per-job {cpus} but the cluster has {total:g} CPU(s)")
    print(
        f"ray: {len(jobs)} runs as tasks of {cpus} CPU(s), {int(total // cpus)} at a time",
        flush=True,
    )
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(loop.run_sequence)
    data_ref = ray.put(data)  # shipped once, shared by every task on a node
    pending = [
        task.remote(data_ref, cfg, strategy, seed, threads=cpus, **opts) for strategy, seed in jobs
    ]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
    time.sleep(1.0)  # let Ray's log monitor print the tasks' last lines before our table


def round0_mismatch(rows: list[dict]) -> list[int]:
    """Seeds whose round-0 test metrics differ between strategies (they train the same model)."""
    bad = []
    for seed in sorted({r["seed"] for r in rows}):
        got = {
            (r["test_accuracy"], r["test_macro_f1"])
            for r in rows
            if r["seed"] == seed and r["round"] == 0
        }
        if len(got) > 1:
            bad.append(seed)
    return bad


def main(argv: list[str] | None = None) -> int:
    """The `active` command: check the arguments, load the data, run every (strategy, seed)
    and write config.json, rounds.csv, summary.csv, results.json and learning_curve.png to
    --out. Returns 0; raises ValueError (one `error:` line, exit 2 through `cli.run`) on a bad
    argument, a model without dropout for mc_dropout, or a pool too small for the rounds."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.smoke_test:
        smoke_sized(args)
    check_args(args)
    strategies = strategies_from(args.strategy)
    if "mc_dropout" in strategies and args.mc_passes < 2:
        raise ValueError("--mc-passes must be >= 2 (one pass has no spread to measure)")
    cfg = config_from_args(args)
    n_params = checked_model_size(cfg, strategies)

    from ..data import absolute_spec, load_for_config
    from ..data.cache import cache_location

    cfg.data = absolute_spec(cfg.data)
    args.cache = cache_location(args.cache)  # expanded and absolute, as for --data
    data = load_for_config(cfg, args.cache)
    n0, k = labels_per_round(args, data.labels["train"])
    focus = pick_focus(data.classes, data.class_counts(), args.focus_class)
    seeds = [args.seed + i for i in range(args.repeats)]
    # Longest runs first (scoring strategies), so the last task to finish is a short one.
    jobs = [(s, seed) for s in strategies for seed in seeds]

    out = Path(args.out or f"runs/active-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    choice = announce(cfg.precision, pick_device(cfg.device))
    plan = {"strategies": strategies, "seeds": seeds, "focus_class": focus}
    meta = run_meta(argv, args, cfg, data, plan, (n0, k), n_params, choice.to_dict())
    write_atomic(out / "config.json", json.dumps(meta, indent=2))
    print(
        f"active learning: {', '.join(strategies)} x seeds {seeds} | train {meta['n_train']}, "
        f"labels {n0} + {args.rounds} x {k} -> {n0 + args.rounds * k} | val "
        f"{meta['n_val']}, test {meta['n_test']} | {cfg.model} ({n_params / 1e6:.2f}M params) "
        f"{cfg.img_size}px {cfg.epochs} epochs, loss {cfg.loss} | focus {focus} -> {out}",
        flush=True,
    )
    run_and_report(args, cfg, data, jobs, focus, meta, out)
    return 0


def smoke_sized(args: argparse.Namespace) -> None:
    """--smoke-test: shrink `args` in place to a seconds-long run (32 px, 1 epoch, at most 2
    rounds and 2 seeds, 3 MC passes, 96 images per split unless set, batches of at most 16)."""
    args.img_size, args.epochs, args.rounds = 32, 1, min(args.rounds, 2)
    args.repeats, args.mc_passes = min(args.repeats, 2), min(args.mc_passes, 3)
    args.limit_per_split = args.limit_per_split or 96
    args.batch_size = min(args.batch_size, 16)


def checked_model_size(cfg: TrainConfig, strategies: list[str]) -> int:
    """The model's parameter count, built once here so an unknown model or hyperparameter, or
    mc_dropout on a model without dropout, fails before any data is read (ValueError)."""
    from ..inference import build_model

    model = build_model(cfg, 3)
    if "mc_dropout" in strategies and not loop.dropout_modules(model):
        raise ValueError(f"--strategy mc_dropout needs dropout layers; {cfg.model} has none")
    return sum(p.numel() for p in model.parameters())


def labels_per_round(args: argparse.Namespace, y_train: np.ndarray) -> tuple[int, int]:
    """(initial labelled count, labels bought per round) for `y_train` (int class indices);
    ValueError when the rounds would need more labels than train has."""
    n_train = len(y_train)
    n0 = len(loop.initial_pool(y_train, args.initial, 0))
    k = loop.query_size(n_train, args.query)
    if n0 + args.rounds * k > n_train:
        most = (n_train - n0) // k
        raise ValueError(
            f"--initial {args.initial} + {args.rounds} rounds x --query {args.query} needs "
            f"{n0 + args.rounds * k} labels but train has {n_train}; use --rounds <= {most} "
            "or a smaller --query"
        )
    return n0, k


def run_meta(
    argv: list[str],
    args: argparse.Namespace,
    cfg: TrainConfig,
    data,
    plan: dict,
    sizes: tuple[int, int],
    n_params: int,
    precision_choice: dict,
) -> dict:
    """config.json of an active-learning run: the command, the plan (`plan`: strategies,
    seeds, focus_class), the pool sizes (`sizes`: initial count, labels per round), the data's
    split sizes, the model's parameter count and the training config."""
    n0, k = sizes
    return {
        "command": "python -m ray_xray.active " + shlex.join(argv),
        "argv": argv,
        "strategies": plan["strategies"],
        "seeds": plan["seeds"],
        "initial": args.initial,
        "query": args.query,
        "rounds": args.rounds,
        "mc_passes": args.mc_passes,
        "mc_score": args.mc_score,
        "focus_class": plan["focus_class"],
        "classes": data.classes,
        "n_train": len(data.labels["train"]),
        "n_val": len(data.labels["val"]),
        "n_test": len(data.labels["test"]),
        "n_initial": n0,
        "query_size": k,
        "final_labelled": n0 + args.rounds * k,
        "train_counts": data.counts()["train"],
        "model_params": n_params,
        "train_config": cfg.to_dict(),
        "precision_choice": precision_choice,
    }


def run_and_report(args, cfg: TrainConfig, data, jobs: list, focus: str, meta: dict, out: Path):
    """Run every (strategy, seed) job, rewriting the outputs in `out` after each one (an
    interrupted experiment keeps what it finished), then print the summary table."""
    t0 = time.perf_counter()
    opts = {
        "initial": args.initial,
        "query": args.query,
        "rounds": args.rounds,
        "mc_passes": args.mc_passes,
        "mc_score": args.mc_score,
        "focus": focus,
    }
    rows: list[dict] = []
    for got in run_jobs(data, cfg, jobs, opts, args.local, args.cpus_per_job, args.gpus_per_job):
        rows += got
        report.write_outputs(out, rows, report.summarise(rows, focus), meta, plot=False)
    summary = report.summarise(rows, focus)
    report.write_outputs(out, rows, summary, meta)

    print("\n" + report.table(summary, focus))
    bad = round0_mismatch(rows)
    if bad:  # CPU runs are deterministic; GPU kernels may not be
        print(
            f"warning: round 0 differs between strategies for seed(s) {bad} "
            "(non-deterministic kernels?)",
            flush=True,
        )
    print(
        f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f}s -> {out}/"
        "{rounds.csv, summary.csv, results.json, learning_curve.png}"
    )


if __name__ == "__main__":
    run(main)
