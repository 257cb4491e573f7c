"""`python -m ray_xray.tune --space vit [--smoke-test]`: a hyperparameter sweep on Ray Tune."""

from __future__ import annotations

import argparse
import os
import sys

from ..cli import Parser, UserError, note_renamed, run
from ..config import parse_settings
from .checks import check_budgets
from .options import RUNNERS, SweepOptions

# Ray, Optuna and torch load only once the arguments parse (in `main`): --help and a typo
# answer in about a second instead of after the imports.

# Old option spellings, still taken for one release (hidden from --help).
RENAMED = {"--scheduler": "--trial-scheduler", "--workers-per-trial": "--num-workers"}
# Settings every trial gets from tune's own options, not from --set.
OWN_OPTIONS = {"data": "--data", "seed": "--seed", "num_workers": "--num-workers"}


def build_parser() -> argparse.ArgumentParser:
    """The `tune` command's parser; its defaults are SweepOptions' (flags map onto fields).
    Options are added in the order --help lists them, one group of one idea at a time."""
    d = SweepOptions()
    p = Parser(
        data_boundary=True,
        prog="python -m ray_xray.tune",
        description="Search hyperparameters with Ray Tune + Optuna (TPE) + ASHA. A one-worker CPU "
        "trial trains inside its own Tune trial process (--trial-runner inline, the default for "
        "it); DDP and GPU trials train through Ray Train's TorchTrainer. Results land in "
        "STORAGE/NAME (results.parquet, best_trials.json, "
        "best_model.pt, optuna.db, TensorBoard logs).",
    )
    _add_sweep_options(p, d)
    _add_resource_options(p, d)
    _add_output_options(p, d)
    _add_cv_options(p, d)
    _add_search_options(p, d)
    _add_data_options(p)
    return p


def _add_sweep_options(p: argparse.ArgumentParser, d: SweepOptions) -> None:
    """What is searched, on which data, how long, and where the sweep's folder goes."""
    p.add_argument(
        "--space",
        default=d.space,
        help="search space: a built-in name (python -m ray_xray.spaces lists them), one in a "
        "$RAY_XRAY_SPACES folder, or a YAML path",
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="folder, manifest.csv or synthetic:chest3|binary[:N]",
    )
    p.add_argument(
        "--trials", type=int, default=d.trials, help="number of trials (--smoke-test: 4)"
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=d.budget_minutes,
        help="wall-clock limit from Tune's start: at M minutes running trials stop at their "
        "last finished epoch; trials without one end INCOMPLETE (0 = none)",
    )
    p.add_argument(
        "--storage",
        default=os.environ.get("RAY_XRAY_STORAGE", d.storage),
        help="local folder or a URI pyarrow opens (s3://bucket/prefix, gs://..., file:///path): "
        "every result file goes to STORAGE/NAME (default $RAY_XRAY_STORAGE or %(default)s)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="experiment name (default: SPACE-DATA-HASH, HASH of the data's absolute path); the "
        "same name resumes, for the same data and settings only",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep of this name"
    )
    p.add_argument(
        "--objective", default="val_macro_f1", help="metric, or metric,metric for multi-objective"
    )


def _add_resource_options(p: argparse.ArgumentParser, d: SweepOptions) -> None:
    """What each trial holds (GPUs, CPUs, DDP workers) and how it runs (the trial runner)."""
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (fractions share a GPU)"
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="CPUs per trial (default: half the cluster's)",
    )
    for flag, help_ in (
        ("--num-workers", "Ray Train DDP workers per trial (Ray's num_workers)"),
        ("--workers-per-trial", argparse.SUPPRESS),
    ):  # old name
        p.add_argument(flag, dest="workers_per_trial", type=int, default=1, metavar="N", help=help_)
    p.add_argument(
        "--trial-runner",
        choices=RUNNERS,
        default=d.trial_runner,
        help="how a trial runs the training function: inline (in the trial's own process, one "
        "worker: no Ray Train controller or worker process to start, ~12 s less per trial on 2 "
        "cores), torchtrainer (Ray Train's TorchTrainer: DDP over --num-workers), auto (inline "
        "for one-worker CPU trials, else torchtrainer) (default: %(default)s)",
    )


def _add_output_options(p: argparse.ArgumentParser, d: SweepOptions) -> None:
    """Logging, what every trial is set to, and the post-sweep steps (top-k, ensemble,
    external sets)."""
    p.add_argument(
        "--wandb",
        choices=("off", "offline", "online"),
        default="off",
        help="Weights & Biases logging: one run per trial in STORAGE/NAME/wandb/",
    )
    p.add_argument("--wandb-project", default=d.wandb_project, help="W&B project name")
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="best trials evaluated on test and kept"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting for every trial (overrides the space), e.g. --set epochs=4 "
        "--set model.dropout=0.3; python -m ray_xray.train --help lists them (repeatable)",
    )
    p.add_argument(
        "--no-ensemble", action="store_true", help="skip the ensemble + report at the end"
    )
    p.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="DATA[,DATA]",
        help="labelled sets from elsewhere (anything --data takes, or a folder of class "
        "folders), checked before the sweep: at the end the top-k members and the ensemble are "
        "scored on all their images, with intervals and the drop from their own test split "
        "(reported only, never used to choose; repeatable)",
    )


def _add_cv_options(p: argparse.ArgumentParser, d: SweepOptions) -> None:
    """--cv K / --cv-top N: cross-validated selection (tune/folds.py)."""
    p.add_argument(
        "--cv",
        type=int,
        default=d.cv,
        metavar="K",
        help="cross-validated selection: pool train+val into K folds (by patient, stratified), "
        "search on fold 0, re-run the best --cv-top configurations on all K folds, choose by the "
        "mean fold metric; the chosen K fold models are the ensemble (0 = off). With "
        "--budget-minutes the search ends early enough for the fold runs to fit",
    )
    p.add_argument(
        "--cv-top",
        type=int,
        default=d.cv_top,
        metavar="N",
        help="--cv: configurations of the search re-run on all K folds (fewer when the "
        "budget left cannot hold them; a search run that ran all its epochs is its fold 0) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--refit-seeds",
        type=int,
        default=d.refit_seeds,
        metavar="S",
        help="--cv: after the choice, train the chosen configuration on all of train+val (no "
        "validation, its planned epochs, the last weights) with S seeds; those S models, "
        "calibrated with the fold models' temperatures, are the ensemble instead of the fold "
        "models, which are kept beside it as fold_ensemble.pt (default %(default)s = off)",
    )


def _add_search_options(p: argparse.ArgumentParser, d: SweepOptions) -> None:
    """The searcher (TPE or random), the trial scheduler (ASHA or FIFO) and the budgets."""
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the searcher and every trial")
    p.add_argument(
        "--grace-epochs",
        type=int,
        default=d.grace_epochs,
        metavar="N",
        help="ASHA: epochs every trial gets before it can be stopped (default: a third)",
    )
    for flag, help_ in (
        (
            "--trial-scheduler",
            "asha: stop poor trials early; fifo: every trial runs all its epochs",
        ),
        ("--scheduler", argparse.SUPPRESS),  # old name
    ):
        p.add_argument(
            flag, dest="scheduler", choices=("asha", "fifo"), default=d.scheduler, help=help_
        )
    p.add_argument(
        "--searcher",
        choices=("tpe", "random"),
        default=d.searcher,
        help="tpe: Optuna TPE; random: random search",
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        default=d.tpe_startup,
        metavar="N",
        help="random trials before TPE models the space (default %(default)s, as Optuna's)",
    )
    p.add_argument(
        "--budget-epochs",
        type=int,
        default=d.budget_epochs,
        metavar="N",
        help="start no new trial once the trials have run N epochs in all; running trials "
        "finish (0 = no limit)",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The prepared-data cache, and --smoke-test."""
    p.add_argument(
        "--cache",
        default=None,
        help="prepared-data cache (local path or s3://; default $RAY_XRAY_CACHE or "
        "~/.cache/ray_xray)",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="4 tiny trials of 2 epochs (about 2 minutes on a CPU); the space's smoke: block",
    )


def settings_from(items: list[str]) -> dict:
    """``--set`` items checked against TrainConfig; settings tune's own options give refused."""
    settings = parse_settings(items)
    for key, flag in OWN_OPTIONS.items():
        if key in settings:
            raise UserError(f"--set {key}=...: tune sets {key} for every trial; use {flag}")
    return settings


def main(argv: list[str] | None = None) -> int:
    """`python -m ray_xray.tune ARGS`: check the arguments (ValueError/UserError, one line,
    before Ray or torch loads), then run the sweep and its post-sweep steps
    (`ray_xray.pipeline.run_full_sweep`). Returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    note_renamed(argv, RENAMED)
    settings = settings_from(args.set)
    check_budgets(args.budget_minutes, args.budget_epochs, args.trials)
    if args.grace_epochs < 0:
        raise ValueError("--grace-epochs must be >= 0 (0 = a third of the epochs)")
    if args.tpe_startup < 1 or args.budget_epochs < 0:
        raise ValueError("--tpe-startup must be >= 1 and --budget-epochs >= 0")
    objective = [m.strip() for m in args.objective.split(",") if m.strip()]
    if not objective or len(objective) > 3:
        raise ValueError("--objective takes one to three comma-separated metrics")
    from ..pipeline import run_full_sweep
    from .external import parse_specs

    opts = SweepOptions(
        space=args.space,
        data=args.data,
        # --smoke-test: 4 trials unless --trials says otherwise
        trials=4 if args.smoke_test and args.trials == SweepOptions.trials else args.trials,
        budget_minutes=args.budget_minutes,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        objective=objective,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        trial_runner=args.trial_runner,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        smoke_test=args.smoke_test,
        seed=args.seed,
        grace_epochs=args.grace_epochs,
        scheduler=args.scheduler,
        searcher=args.searcher,
        tpe_startup=args.tpe_startup,
        budget_epochs=args.budget_epochs,
        top_k=args.top_k,
        ensemble=not args.no_ensemble,
        cache=args.cache,
        settings=settings,
        external=parse_specs(args.external),
        cv=args.cv,
        cv_top=args.cv_top,
        refit_seeds=args.refit_seeds,
        argv=argv,
    )
    run_full_sweep(opts)
    return 0


if __name__ == "__main__":
    run(main)
