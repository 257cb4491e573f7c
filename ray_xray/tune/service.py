"""The search service: Ray Tune + OptunaSearch (TPE, SQLite study) + ASHA over a YAML space."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from ..data import absolute_spec, load_for_config
from ..data.cache import cache_location
from ..io import write_atomic
from ..metrics import metric_mode  # noqa: I001
from ..ray_env import cloud_keys_kept_out_of_ray_logs
from ..spaces import SearchSpace, load_space
from ..sweep_folder import RESULTS_FILE, SWEEP_FILE, read_sweep_json
from ..train.run import init_ray
from . import external as X
from . import folds as F
from . import results as R
from .console import ConsoleReporter, ray_console_quiet
from .searcher import RungScheduler, SweepSearch
from .sizes import shared_datasets
from .storage import STUDY_FILE, StudyUpload, SweepFiles, tool_commands
from .trial import TOKEN_CPU, plan_runner, trial_fn

log = logging.getLogger("ray_xray.tune")
DONE_FILE = RESULTS_FILE


@dataclass
class SweepOptions:
    """Everything one sweep needs; the ``python -m ray_xray.tune`` flags map onto these fields.

    ``ray_xray.sweep(...)`` builds one from keyword arguments. Units: ``budget_minutes`` in
    minutes of wall clock (0 = none), ``*_per_trial`` in CPUs/GPUs (fractions share), epochs
    counted per trial (``grace_epochs``) or summed over trials (``budget_epochs``, 0 = none).
    """

    space: str = "resnet18"
    data: str = "synthetic:chest3"
    trials: int = 20
    budget_minutes: float = 0.0  # 0 = no time limit
    storage: str = "runs/tune"
    name: str | None = None
    resume: bool = False
    objective: list[str] = field(default_factory=lambda: ["val_macro_f1"])
    gpus_per_trial: float = 0.0
    cpus_per_trial: float | None = None
    workers_per_trial: int = 1
    # "inline": a trial runs the training function in its own process (one worker);
    # "torchtrainer": through a TorchTrainer; "auto": inline for one-worker CPU trials.
    trial_runner: str = "auto"
    wandb: str = "off"
    wandb_project: str = "ray_xray"
    smoke_test: bool = False
    seed: int = 0
    top_k: int = 5  # evaluated on test, and the ensemble's candidate members
    ensemble: bool = True
    max_failures: int = 1  # restarts of a failed trial's training (from its last checkpoint)
    cache: str | None = None
    # ASHA's first rung. 0 = a third of the epochs: with one-cycle warm-up, epoch-1 validation
    # says little (a resnet18 that ends best was cut at epoch 1 behind a faster starter).
    grace_epochs: int = 0
    scheduler: str = "asha"  # "fifo": every trial runs all its epochs
    searcher: str = "tpe"  # "random": Optuna's RandomSampler (random search)
    tpe_startup: int = 10  # TPE's random trials before it models the space (Optuna's default)
    budget_epochs: int = 0  # >0: start no new trial once trials have reported this many epochs
    settings: dict = field(default_factory=dict)  # --set KEY=VALUE overrides for every trial
    # --external: labelled sets scored at the end (top-k + ensemble), never used to choose
    external: list[str] = field(default_factory=list)
    # --cv K: rank on fold 0 of K, then re-run the best cv_top configurations on all K folds;
    # their fold models are the ensemble (tune/folds.py). 0 = the data's own val split.
    cv: int = 0
    cv_top: int = 3
    argv: list[str] = field(default_factory=list)


REPORTED = (
    "train_loss",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "val_auc",
    "epoch_s",
    "images_per_s",
)


def check_objective(metrics: list[str], classes: list[str] | None) -> None:
    """Every objective must be a metric the training loop reports (val_recall_<class> too)."""
    known = set(REPORTED)
    if classes is not None:
        known |= {f"val_recall_{c}" for c in classes}
    unknown = [
        m
        for m in metrics
        if m not in known and (classes is not None or not m.startswith("val_recall_"))
    ]
    if unknown:
        choices = ", ".join(sorted(known)) + ("" if classes else ", val_recall_<class>")
        raise ValueError(
            f"--objective {','.join(unknown)}: not a reported metric; choose from {choices}"
        )


def experiment_name(opts: SweepOptions, space: SearchSpace) -> str:
    """--name, else SPACE-DATA[-smoke]; DATA is the folder's (or CSV's) name and a hash of its
    absolute path, so a/chest_xray and b/chest_xray never share a sweep. Call after
    resolve_paths (the hash is of the absolute path)."""
    if opts.name:
        return opts.name
    if opts.data.startswith("synthetic"):
        data = opts.data.replace(":", "-")
    else:
        p = Path(opts.data)
        digest = hashlib.sha1(opts.data.encode("utf-8", "surrogateescape")).hexdigest()[:6]
        data = f"{p.stem if p.suffix.lower() == '.csv' else p.name}-{digest}"
    return f"{space.name}-{data}{'-smoke' if opts.smoke_test else ''}"


def resolve_paths(opts: SweepOptions) -> None:
    """Expand `~` and make --data, --storage and --cache (or $RAY_XRAY_CACHE) absolute, once,
    in the driver: trial workers run in another directory and would read a relative path
    against it (a relative --cache made each worker decode everything again there)."""
    opts.data = absolute_spec(opts.data)
    opts.storage = storage_uri(opts.storage)
    opts.cache = cache_location(opts.cache)


# What must match for a sweep to resume another: a sweep of other data or settings would
# re-run the stored trials on the new data and mix both in optuna.db.
# The runner too: each keeps its checkpoints in its own place (Tune's or the Ray Train run's).
SAME_SWEEP_OPTIONS = (
    "data",
    "settings",
    "objective",
    "seed",
    "smoke_test",
    "workers_per_trial",
    "trial_runner",
    "cv",
)


def sweep_identity(opts: SweepOptions, space: SearchSpace, classes: list[str] | None) -> dict:
    """The part of sweep.json that says which sweep this is: options, space, classes."""
    ident = {
        "options": {k: getattr(opts, k) for k in SAME_SWEEP_OPTIONS},
        "space_name": space.name,
        "space_sha1": hashlib.sha1(space.to_yaml().encode()).hexdigest(),
    }
    if classes is not None:
        ident["classes"] = list(classes)
    return ident


def sweep_differences(stored: dict, new: dict) -> list[str]:
    """Names of what differs between a stored sweep.json and `new` (sweep_identity's form);
    only what both record is compared (older sweep.json files lack classes and the space)."""
    old_opts, new_opts = stored.get("options") or {}, new.get("options") or {}
    diffs = [
        k
        for k in SAME_SWEEP_OPTIONS
        if k in old_opts and k in new_opts and old_opts[k] != new_opts[k]
    ]
    for key, label in (("space_name", "space"), ("space_sha1", "space"), ("classes", "classes")):
        if key in stored and key in new and stored[key] != new[key] and label not in diffs:
            diffs.append(label)
    return diffs


def resumed_runner(runner: str, folder: str | Path) -> str:
    """`--trial-runner` for a resumed sweep: the runner it started with (`torchtrainer` for a
    sweep.json from before the option), so restored trials find their checkpoints (Tune's for
    inline trials, the Ray Train run's for torchtrainer ones). `auto` takes it; another named
    runner is refused (ValueError, one line); without a sweep.json, `runner` as given."""
    try:
        stored = read_sweep_json(Path(folder)).get("options") or {}
    except ValueError:
        return runner  # check_resumable says what is wrong with the file
    started = stored.get("trial_runner", "torchtrainer") if stored else None
    if started is None or runner in ("auto", started):
        return started or runner
    raise ValueError(
        f"--trial-runner {runner}: the sweep in {folder} started with {started} trials, whose "
        f"checkpoints only that runner finds; resume it with --trial-runner {started} (or auto)"
    )


def check_resumable(exp_dir: str, new: dict, folder: str | Path | None = None) -> None:
    """Refuse (ValueError, one line, no file touched) to resume the interrupted sweep in
    `exp_dir` when its sweep.json differs from this command's identity `new`. `folder`: the
    local folder holding that sweep.json (default `exp_dir`; for a URI, its local copy)."""
    if folder is None and "://" in exp_dir:
        return
    where = Path(folder if folder is not None else exp_dir)
    try:
        stored = read_sweep_json(where)
    except ValueError:
        raise ValueError(
            f"{where / SWEEP_FILE}: unreadable; pass --name to start a separate sweep"
        ) from None
    if not stored:
        return
    diffs = sweep_differences(stored, new)
    if not diffs:
        return

    def describe(rec: dict) -> str:
        classes = rec.get("classes")
        return f"{rec.get('options', {}).get('data', '?')}" + (
            f" ({len(classes)} classes: {', '.join(classes)})" if classes else ""
        )

    raise ValueError(
        f"{exp_dir} holds an interrupted sweep of {describe(stored)}; this command is for "
        f"{describe(new)} and differs in {', '.join(diffs)}: pass --name NAME to start a "
        "separate sweep (the first command, rerun as it was, resumes that one)"
    )


def storage_uri(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def check_storage(path: str) -> None:
    """Fail before any work when the results cannot be written."""
    if "://" in path:
        return
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".ray_xray_write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{path}: storage is not writable ({exc.strerror})") from None


def plan_resources(opts: SweepOptions) -> dict:
    """Trial size and how many trials fit at once on this cluster."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 1.0), res.get("GPU", 0.0)
    if opts.gpus_per_trial > gpus:
        raise ValueError(
            f"--gpus-per-trial {opts.gpus_per_trial} but the cluster has {gpus:g} GPU(s)"
        )
    if opts.cpus_per_trial:
        per_trial = float(opts.cpus_per_trial)
    elif opts.gpus_per_trial:
        per_trial = max(1.0, math.floor(cpus * opts.gpus_per_trial / gpus))
    else:
        per_trial = max(1.0, float(cpus // 2))  # two trials at a time hide each other's start-up
    if per_trial > cpus:
        raise ValueError(f"--cpus-per-trial {per_trial:g} but the cluster has {cpus:g} CPU(s)")
    fits = int((cpus + 1e-6) // per_trial)
    if opts.gpus_per_trial:
        fits = min(fits, int((gpus + 1e-6) // opts.gpus_per_trial))
    w = opts.workers_per_trial
    inline = opts.trial_runner == "inline"  # the trial's process trains: it holds every CPU
    return {
        "runner": opts.trial_runner,
        "cpus_per_trial": per_trial,
        "cpus_per_worker": per_trial if inline else max(0.01, (per_trial - TOKEN_CPU) / w),
        "gpus_per_worker": opts.gpus_per_trial / w,
        "max_concurrent": max(1, fits),
        "cluster_cpus": cpus,
        "cluster_gpus": gpus,
    }


def trial_resources(plan: dict) -> dict:
    """What the Tune trial function's process holds: all of the trial's CPUs and GPU when it
    trains itself (inline), a token CPU when a TorchTrainer's workers hold them."""
    if plan["runner"] != "inline":
        return {"cpu": TOKEN_CPU}
    gpus = plan["gpus_per_worker"]
    return {"cpu": plan["cpus_per_trial"], **({"gpu": gpus} if gpus else {})}


def make_callbacks(opts: SweepOptions, name: str, wandb_dir: str | Path | None = None) -> list:
    """Tune callbacks: the console lines, and W&B logging unless ``opts.wandb == "off"``.

    `wandb_dir`: the folder whose ``wandb/`` subfolder gets the W&B run files (``dir`` of
    ``wandb.init``; WANDB_DIR, when set, wins; None: W&B's default, the logger's working
    directory). Online without a key or a reachable server falls back to offline, saying so.
    """
    budget_s = opts.budget_minutes * 60 * (F.SEARCH_SHARE if opts.cv else 1)  # --cv: the search's
    callbacks = [ConsoleReporter(opts.objective[0], opts.trials, budget_s)]
    if opts.wandb == "off":
        return callbacks
    from .wandb_log import KeySafeWandbCallback

    mode = opts.wandb
    if mode == "online":
        problem = _wandb_online_problem()
        if problem:
            print(
                f"W&B: {problem}; logging offline instead (`wandb sync` uploads later)",
                file=sys.stderr,
            )
            mode = "offline"
    if mode == "offline":
        # Offline needs no key: drop it. WANDB_MODE=offline is what tells Ray's W&B callback
        # not to demand one.
        os.environ.pop("WANDB_API_KEY", None)
        os.environ["WANDB_MODE"] = "offline"
    extra = {"dir": str(wandb_dir)} if wandb_dir and not os.environ.get("WANDB_DIR") else {}
    # Online, the logger actors get the key as an argument: Ray's own callback put it in their
    # runtime_env, which Ray writes verbatim to its session logs (runtime_env_agent.log).
    callbacks.append(
        KeySafeWandbCallback(
            project=opts.wandb_project,
            group=name,
            mode=mode,
            excludes=["checkpoint_path"],
            **extra,
        )
    )
    return callbacks


def _wandb_online_problem() -> str | None:
    """Why online W&B would fail, checked before the sweep so a missing key or an unreachable
    server costs nothing: W&B's own init retries for minutes inside each trial's logger."""
    import netrc
    import os
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            pass
    if not has_key:
        return "no API key found (WANDB_API_KEY or `wandb login`)"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc.strerror or exc})"
    return None


def run_sweep(opts: SweepOptions) -> dict:
    """Run (or resume) a sweep into ``STORAGE/NAME``; starts a local Ray unless RAY_ADDRESS is set.

    Returns ``{"rows", "top", "exp_dir", "wall_s"}`` (plus ``"ensemble"`` when one was built):
    one dict per trial, the best ``top_k`` with test metrics, the experiment folder, seconds.
    Raises ValueError on a bad space, data, objective, storage or resource request.
    """
    # --set values are pinned in the space, as smoke: values are: a tuned key leaves the
    # study's parameters, so Optuna never records a value that no trial trained with.
    space = load_space(opts.space, smoke=opts.smoke_test).with_settings(opts.settings)
    resolve_paths(opts)
    F.check_cv(opts.cv, opts.cv_top, opts.storage)
    X.check_specs(opts)  # a missing --external folder fails before any data is read
    name = experiment_name(opts, space)
    storage = opts.storage
    check_storage(storage)
    exp_dir = f"{storage}/{name}"
    files = SweepFiles(exp_dir)  # the sweep's own files, on any storage (tune/storage.py)
    if files.exists(DONE_FILE) and not opts.resume:
        raise ValueError(
            f"{exp_dir} already holds a finished sweep; pick another --name (or --resume to re-read it)"
        )
    restoring = tune.Tuner.can_restore(exp_dir)
    if opts.resume and not restoring:
        raise ValueError(f"--resume: no sweep to resume at {exp_dir}")
    if restoring:  # first what needs no data: another dataset fails before it is read
        files.pull("sweep.json", STUDY_FILE)  # a URI's files, to their local copy
        opts.trial_runner = resumed_runner(opts.trial_runner, files.stage)
        check_resumable(exp_dir, sweep_identity(opts, space, None), files.stage)
    else:
        files.reset()  # no study or results of an earlier run with this URI
    opts.trial_runner = plan_runner(opts.trial_runner, opts.workers_per_trial, opts.gpus_per_trial)

    overrides = {  # what no space sets: every trial of the sweep shares them
        "data": opts.data,
        "seed": opts.seed,
        "workers": opts.workers_per_trial,
    }
    if opts.gpus_per_trial:
        overrides["device"] = "cuda"
    if opts.cv:  # the search stage trains and ranks on fold 0 (tune/folds.py)
        overrides.update(cv_folds=opts.cv, cv_fold=0)
    check_objective(opts.objective, None)  # names first: no data needed to refuse a typo
    # Validate data and fill the prepared cache once, before any trial starts.
    # Pooled (no fold): trials take their fold of the shared arrays (data/folds.for_config).
    probe_cfg = space.resolve(space.default_config(), {**overrides, "cv_folds": 0, "cv_fold": 0})
    if opts.trial_runner == "inline" and not opts.gpus_per_trial and probe_cfg.device == "cuda":
        raise ValueError("device=cuda but the trials hold no GPU: pass --gpus-per-trial")
    data = load_for_config(probe_cfg, opts.cache)
    check_objective(opts.objective, data.classes)
    X.check_classes(opts.external, data.classes)
    identity = sweep_identity(opts, space, data.classes)
    if restoring:
        check_resumable(exp_dir, identity, files.stage)
        if not opts.resume:
            print(f"found an interrupted sweep at {exp_dir}: resuming it", file=sys.stderr)

    # Worker output stays in Ray's logs: the console gets one line per trial event instead.
    hide_key = contextlib.nullcontext()
    if opts.wandb != "off":  # Ray's processes do not inherit the key: it stays in this one
        from .wandb_log import key_hidden

        hide_key = key_hidden()
    with hide_key:
        init_ray(log_to_driver=False)
    plan = plan_resources(opts)
    runtime = {
        "runner": plan["runner"],
        "cpus_per_worker": plan["cpus_per_worker"],
        "gpus_per_worker": plan["gpus_per_worker"],
        "max_failures": opts.max_failures,
        "cache": opts.cache,
        "exp_dir": exp_dir,
        # Prepared once here (once per searched img_size), read by every trial from Ray's
        # object store (worker.shared_data).
        "data": shared_datasets(space, probe_cfg, data, opts.cache),
    }
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, overrides=overrides, runtime=runtime), trial_resources(plan)
    )
    write_atomic(files.local_path("space.yaml"), space.to_yaml())
    write_atomic(
        files.local_path("sweep.json"),
        json.dumps(
            {
                "command": "python -m ray_xray.tune " + shlex.join(opts.argv),
                **identity,
                "options": asdict(opts),
                "plan": plan,
                "overrides": overrides,
            },
            indent=2,
            default=str,
        ),
    )
    files.push("space.yaml", "sweep.json")

    t0 = time.perf_counter()
    if restoring:
        if opts.trial_runner == "inline" and not files.remote:
            R.relink_deleted_checkpoints(exp_dir)
        tuner = tune.Tuner.restore(
            exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(opts, space, exp_dir, plan, files),
            run_config=_run_config(opts, name, storage, files),
        )
    print(
        f"sweep {name}: space {space.name}, up to {opts.trials} trials, {plan['max_concurrent']} at a time "
        f"({plan['cpus_per_trial']:g} CPU{f', {opts.gpus_per_trial:g} GPU' if opts.gpus_per_trial else ''} each), "
        f"objective {','.join(opts.objective)} -> {exp_dir}",
        file=sys.stderr,
    )
    with ray_console_quiet(), cloud_keys_kept_out_of_ray_logs():
        grid = tuner.fit()
        cv = _cv_stage(opts, exp_dir, grid, overrides, runtime, plan, name) if opts.cv else None
    wall = time.perf_counter() - t0
    wandb_dir = os.environ.get("WANDB_DIR") or files.stage
    if opts.wandb != "off" and not os.environ.get("WANDB_DIR"):
        files.push("wandb")  # the W&B runs (all finished once fit returns)
    summary = finish_sweep(
        grid, exp_dir, space, opts, wall, not files.remote, plan, files, cv and cv.label
    )
    external = X.ExternalStep(opts, summary["top"]) if opts.external and summary["top"] else None
    if cv and opts.ensemble:  # the deliverable of a --cv sweep: the chosen fold models
        summary["ensemble"] = cv.ensemble(summary["rows"], external)
    elif opts.ensemble and summary["top"]:
        print("\nensemble of the best trials (--no-ensemble to skip):", file=sys.stderr)
        summary["ensemble"] = _ensemble(exp_dir, opts, files, summary["rows"], external)
    if external:  # written in the local stage, then to the storage (a no-op when local)
        summary["external"] = external.finish(str(files.stage))
        files.push("best_trials.json", "ensemble")
    commands = tool_commands(files, wandb_dir if opts.wandb != "off" else None)
    print("\nopen the results with:\n" + "\n".join(f"  {c}" for c in commands))
    summary["commands"] = commands
    files.cleanup()  # a URI's local copy: everything is on the storage now
    return summary


def finish_sweep(
    grid,
    exp_dir: str,
    space,
    opts: SweepOptions,
    wall: float,
    local: bool,
    plan: dict,
    files: SweepFiles | None = None,
    rows_hook=None,
) -> dict:
    """R.finish, where any failure is ours, not the user's: the trials ran and are safe on
    storage, so it must not read as bad input (exit 2). Raises R.ResultsError (exit 1).
    `rows_hook`: R.finish's (a --cv sweep adds its fold runs)."""
    try:
        return R.finish(grid, exp_dir, space, opts, wall, local, plan, files, rows_hook)
    except Exception as exc:
        raise R.ResultsError(
            f"the sweep's trials ran and are kept in {exp_dir}, but writing its results failed "
            f"({type(exc).__name__}: {exc}); the same command with --resume retries this step"
        ) from exc


def _cv_stage(opts, exp_dir, grid, overrides, runtime, plan, name) -> F.FoldStage:
    """Stage 2 of a --cv sweep (tune/folds.py): the top --cv-top configurations of the search
    on all K folds, as Tune trials of EXP/folds/ (resumed with the sweep)."""
    objective = opts.objective[0]
    mode = metric_mode(objective)
    held = {"cpus": plan["cpus_per_trial"], "gpus": opts.gpus_per_trial}
    search = R.trial_rows(grid, objective, mode, exp_dir, held, opts.trial_runner)
    configs = F.candidates(exp_dir, search, f"best_{objective}", mode, opts.cv_top)
    if not configs:
        raise R.ResultsError(
            "--cv: no search trial finished an epoch (with --budget-minutes the search stage "
            "gets half of it: raise the budget); the same command with --resume continues"
        )
    print(
        f"\ncv: the best {len(configs)} configuration(s) on all {opts.cv} folds "
        f"({len(configs) * opts.cv} runs) -> {exp_dir}/{F.FOLDS_DIR}",
        file=sys.stderr,
    )
    tuner = F.fold_tuner(
        opts,
        exp_dir,
        configs,
        overrides,
        runtime,
        trial_resources(plan),
        plan["max_concurrent"],
        # the console counts the fold runs, with no clock: they run to their end
        make_callbacks(replace(opts, trials=len(configs) * opts.cv, budget_minutes=0), name),
    )
    return F.FoldStage(opts, exp_dir, configs, tuner.fit(), held)


def _ensemble(
    exp_dir: str, opts: SweepOptions, files: SweepFiles, rows: list[dict], external=None
) -> dict:
    """The ensemble + report after the results are written; its failure is not bad input.
    It runs on the sweep's local files (`files.stage`: for a URI, a copy holding the results,
    the top trials' checkpoints and every trial's result.json), then goes to the storage.
    `external`: run_ensemble's hook (X.ExternalStep), called once the ensemble is saved."""
    from ..ensemble import run_ensemble

    device = "cuda" if opts.gpus_per_trial else "auto"
    try:
        files.pull(*(f"{r['trial_id']}/{f}" for r in rows for f in ("result.json", "progress.csv")))
        out = run_ensemble(
            files.stage, top_k=opts.top_k, data=opts.data, device=device, external=external
        )
        files.push("ensemble")
        if files.remote:  # name the storage's files, not the local copy (removed at the end)
            stage = f"{files.stage}/"
            out = {
                k: files.where(v[len(stage) :]) if isinstance(v, str) and v.startswith(stage) else v
                for k, v in out.items()
            }
        return out
    except Exception as exc:
        where = exp_dir if not files.remote else f"a local copy of {exp_dir}"
        raise R.ResultsError(
            f"the sweep's results are written in {exp_dir}, but its ensemble step failed "
            f"({type(exc).__name__}: {exc}); `python -m ray_xray.ensemble` on {where} retries it"
        ) from exc


def _tune_config(
    opts: SweepOptions,
    space: SearchSpace,
    exp_dir: str,
    plan: dict,
    files: SweepFiles | None = None,
) -> tune.TuneConfig:
    metrics = opts.objective
    modes = [metric_mode(m) for m in metrics]
    multi = len(metrics) > 1
    study_storage = None
    if files is not None or "://" not in exp_dir:
        # The study is optuna.db in the experiment folder, so optuna-dashboard can open it (for
        # a URI: in its local copy, pushed to the storage after every trial and at the end).
        db = (files.local_path(STUDY_FILE) if files else Path(exp_dir) / STUDY_FILE).as_posix()
        study_storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    search = SweepSearch(
        budget_epochs=opts.budget_epochs,
        key=exp_dir,  # shared with the scheduler: which trials it cut (PRUNED in the study)
        space=space.define_by_run,
        points_to_evaluate=[dict(p) for p in space.start] or None,
        metric=metrics if multi else metrics[0],
        mode=modes if multi else modes[0],
        sampler=_sampler(opts),
        study_name=Path(exp_dir).name,
        storage=study_storage,
    )
    epochs = space.resolve(space.default_config()).epochs
    if multi and opts.scheduler == "asha":
        print(
            "multi-objective: ASHA needs one metric, so trials run to the end (FIFO)",
            file=sys.stderr,
        )
    if multi or opts.scheduler == "fifo":
        scheduler = FIFOScheduler()
    else:
        scheduler = RungScheduler(
            key=exp_dir,
            time_attr="epoch",
            metric=metrics[0],
            mode=modes[0],
            max_t=epochs,
            grace_period=min(opts.grace_epochs or max(1, epochs // 3), epochs),
            reduction_factor=3,
        )
    return tune.TuneConfig(
        search_alg=search,
        scheduler=scheduler,
        num_samples=opts.trials,
        max_concurrent_trials=plan["max_concurrent"],
        # --cv: the search stage gets a share of the budget; the fold stage runs to its end
        time_budget_s=opts.budget_minutes * 60 * (F.SEARCH_SHARE if opts.cv else 1)
        if opts.budget_minutes
        else None,
        trial_dirname_creator=lambda t: t.trial_id,  # short, deterministic
        trial_name_creator=lambda t: t.trial_id,
    )


SCHEDULERS, SEARCHERS = ("asha", "fifo"), ("tpe", "random")
BudgetedOptunaSearch = SweepSearch  # its former name


def _sampler(opts: SweepOptions) -> optuna.samplers.BaseSampler:
    if opts.searcher not in SEARCHERS:
        raise ValueError(f"--searcher must be one of {', '.join(SEARCHERS)}, got {opts.searcher!r}")
    if opts.scheduler not in SCHEDULERS:
        raise ValueError(
            f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {opts.scheduler!r}"
        )
    if opts.searcher == "random":
        return optuna.samplers.RandomSampler(seed=opts.seed)
    if opts.tpe_startup < 1:
        raise ValueError(f"--tpe-startup must be >= 1, got {opts.tpe_startup}")
    return optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=opts.tpe_startup)


def _run_config(
    opts: SweepOptions, name: str, storage: str, files: SweepFiles | None = None
) -> tune.RunConfig:
    callbacks = make_callbacks(opts, name, files.stage if files else None)
    if files is not None and files.remote:
        callbacks.append(StudyUpload(files))
    inline = opts.trial_runner == "inline"
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=callbacks,
        verbose=0,  # our ConsoleReporter prints one line per result instead
        # Inline trials: Tune restarts a failed trial from its last checkpoint, as Ray Train's
        # FailureConfig does for torchtrainer trials (whose Tune function itself never fails
        # but for a config that fails every restart: a finding, not retried again).
        failure_config=tune.FailureConfig(max_failures=opts.max_failures if inline else 0),
        # The latest checkpoint holds the best model so far (training_state), so one is enough;
        # torchtrainer trials report none to Tune (their Ray Train run keeps its own).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
