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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from ..config import TrainConfig
from ..data import absolute_spec, load_for_config
from ..data.cache import cache_location
from ..device import announce
from ..io import write_atomic
from ..metrics import metric_mode  # noqa: I001
from ..ray_env import cloud_keys_kept_out_of_ray_logs
from ..spaces import SearchSpace, load_space
from ..sweep_folder import RESULTS_FILE, SWEEP_FILE, read_sweep_json
from ..train.run import init_ray
from . import external, folds, refit, results
from .checks import (
    check_budgets,
    check_settings_build,
    check_sweep_name,
    check_trial_disk_errors,
    disk_full_in_sweep,
)
from .console import ConsoleReporter, ray_console_quiet
from .interrupt import SignalGuard
from .lock import sweep_lock
from .options import SweepOptions
from .searcher import RungScheduler, SweepSearch
from .sizes import shared_datasets
from .storage import STUDY_FILE, StudyUpload, SweepFiles, tool_commands
from .study import close_running, study_url
from .trial import TOKEN_CPU, plan_runner, trial_fn

log = logging.getLogger("ray_xray.tune")
DONE_FILE = RESULTS_FILE


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
        return check_sweep_name(opts.name)  # one folder inside --storage, never outside it
    if opts.data.startswith("synthetic"):
        data = opts.data.replace(":", "-")
    else:
        p = Path(opts.data)
        digest = hashlib.sha1(opts.data.encode("utf-8", "surrogateescape")).hexdigest()[:6]
        data = f"{p.stem if p.suffix.lower() == '.csv' else p.name}-{digest}"
    return f"{space.name}-{data}{'-smoke' if opts.smoke_test else ''}"


def resolve_paths(opts: SweepOptions) -> SweepOptions:
    """A copy of `opts` with `~` expanded and --data, --storage and --cache (or
    $RAY_XRAY_CACHE) absolute, made once, in the driver: trial workers run in another
    directory and would read a relative path against it (a relative --cache made each worker
    decode everything again there). URIs and synthetic specs are kept as they are."""
    return replace(
        opts,
        data=absolute_spec(opts.data),
        storage=storage_uri(opts.storage),
        cache=cache_location(opts.cache),
    )


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
    "refit_seeds",  # the refits' grid and the search's budget plan depend on it
)


BEFORE_RENAMES = "space_sha1_before_renames"


def sweep_identity(opts: SweepOptions, space: SearchSpace, classes: list[str] | None) -> dict:
    """The part of sweep.json that says which sweep this is: options, space, classes."""
    ident = {
        "options": {k: getattr(opts, k) for k in SAME_SWEEP_OPTIONS},
        "space_name": space.name,
        "space_sha1": hashlib.sha1(space.to_yaml().encode()).hexdigest(),
    }
    # A sweep started before config.RENAMED_SETTINGS recorded its space under the old names:
    # the same space, so it may resume (read by sweep_differences; sweep.json leaves it out).
    before = hashlib.sha1(space.to_yaml(before_renames=True).encode()).hexdigest()
    if before != ident["space_sha1"]:
        ident[BEFORE_RENAMES] = before
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
    renamed_only = stored.get("space_sha1") == new.get(BEFORE_RENAMES)
    for key, label in (("space_name", "space"), ("space_sha1", "space"), ("classes", "classes")):
        if key == "space_sha1" and renamed_only:
            continue
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
    """--storage as Tune and the sweep's files take it: a URI as given, a local path with `~`
    expanded and made absolute."""
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


def trial_resources(resources: dict) -> dict:
    """What the Tune trial function's process holds: all of the trial's CPUs and GPU when it
    trains itself (inline), a token CPU when a TorchTrainer's workers hold them."""
    if resources["runner"] != "inline":
        return {"cpu": TOKEN_CPU}
    gpus = resources["gpus_per_worker"]
    return {"cpu": resources["cpus_per_trial"], **({"gpu": gpus} if gpus else {})}


def make_callbacks(
    opts: SweepOptions,
    name: str,
    wandb_dir: str | Path | None = None,
    epochs: int = 8,
    slots: int = 1,
) -> list:
    """Tune callbacks: the console lines, and W&B logging unless ``opts.wandb == "off"``.

    `wandb_dir`: the folder whose ``wandb/`` subfolder gets the W&B run files (``dir`` of
    ``wandb.init``; WANDB_DIR, when set, wins; None: W&B's default, the logger's working
    directory). Online without a key or a reachable server falls back to offline, saying so.
    """
    # `epochs` per trial and `slots` at once: the status line's time left (console.EtaEstimate).
    # With --cv the budget is the whole sweep's; folds.FoldBudgetStopper ends the search early.
    budget_s = opts.budget_minutes * 60
    callbacks = [ConsoleReporter(opts.objective[0], opts.trials, budget_s, epochs, slots)]
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


# Called by run_sweep once the search's results are written, inside the sweep's lock and signal
# guard: (plan, summary, fold stage or None) -> keys added to the summary. The post-sweep steps
# (ensemble, --external scoring) live above the service: ray_xray/pipeline.py passes them.
PostSteps = Callable[["SweepPlan", dict, "folds.FoldStage | None"], dict]


@dataclass(frozen=True)
class SweepPlan:
    """A sweep planned once, before anything runs (`plan_sweep`); every later step reads it.

    `opts`: the options with --data, --storage and --cache absolute and the --external sets
    checked (their absolute specs); after `_check_restore`, also the trial runner chosen.
    `space`: the search space with --set pinned. `name`: the experiment's name; `exp_dir`:
    ``STORAGE/NAME`` (an absolute local path or a URI); `files`: its files on that storage.
    """

    opts: SweepOptions
    space: SearchSpace
    name: str
    exp_dir: str
    files: SweepFiles

    @property
    def resume_hint(self) -> str:
        """The end of an interrupt's line: how to resume this sweep."""
        if not self.opts.argv:
            return "resume with the same arguments (or resume=True)"
        return f"resume with the same command: python -m ray_xray.tune {shlex.join(self.opts.argv)}"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares, decided once the sweep folder is this process's (`_prepare`).

    `restoring`: an interrupted sweep is resumed. `overrides`: the settings every trial takes
    from the sweep's own options (data, seed, workers, ...). `probe_cfg`: the TrainConfig of
    the space's defaults (what the data is loaded and the precision chosen for). `data`: the
    loaded splits (`data.load_for_config`). `identity`: sweep.json's identity part
    (`sweep_identity`). `precision`: `device.announce`'s choice.
    """

    restoring: bool
    overrides: dict
    probe_cfg: TrainConfig
    data: Any
    identity: dict
    precision: Any


def run_sweep(opts: SweepOptions, post_steps: PostSteps | None = None) -> dict:
    """Plan, then run (or resume) a sweep into ``STORAGE/NAME``: `plan_sweep`, then `run_plan`.
    Starts a local Ray unless RAY_ADDRESS is set.

    This is the search: trials, results.parquet, best_trials.json (the top ``top_k`` evaluated
    on test), best_model.pt. The post-sweep steps (ensemble, --external scoring) are
    `post_steps`, which `ray_xray.pipeline.run_full_sweep` (what ``python -m ray_xray.tune``
    and ``ray_xray.sweep`` run) passes; None: none run, whatever ``opts.ensemble`` says.
    Returns ``{"rows", "top", "exp_dir", "wall_s", "time_use", "commands"}`` plus what
    `post_steps` returned: one dict per trial, the best ``top_k`` with test metrics, the
    experiment folder, seconds, the closing lines. Raises ValueError on a bad space, data,
    objective, storage or resource request, `results.ResultsError` when the trials ran but
    a results step failed, `interrupt.Interrupted` on SIGINT/SIGTERM.
    """
    return run_plan(plan_sweep(opts), post_steps)


def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """The checks and derived values that need neither the sweep folder nor Ray, in the order
    their errors are reported: budgets, the space (with --set), absolute paths, --cv, the
    --external sets, the experiment's name and a writable storage. Raises ValueError (or
    `cli.UserError`), one line, before anything is written."""
    check_budgets(opts.budget_minutes, opts.budget_epochs, opts.trials)
    # --set values are pinned in the space, as smoke: values are: a tuned key leaves the
    # study's parameters, so Optuna never records a value that no trial trained with.
    space = load_space(opts.space, smoke=opts.smoke_test).with_settings(opts.settings)
    opts = resolve_paths(opts)
    folds.check_cv(opts.cv, opts.cv_top, opts.storage, opts.refit_seeds, opts.ensemble)
    # A missing --external folder fails before any data is read.
    opts = replace(opts, external=external.check_specs(opts))
    name = experiment_name(opts, space)
    check_storage(opts.storage)
    exp_dir = f"{opts.storage}/{name}"
    # The sweep's own files, on any storage (tune/storage.py).
    return SweepPlan(opts, space, name, exp_dir, SweepFiles(exp_dir))


def run_plan(plan: SweepPlan, post_steps: PostSteps | None = None) -> dict:
    """Run the planned sweep (`run_sweep` says what it returns and raises) as the one owner of
    its folder (tune/lock.py; a URI's: its local copy's folder), SIGINT/SIGTERM leaving it
    resumable (tune/interrupt.py). A new sweep that stops before its trials start leaves no
    folder behind; a full disk once they ran is said in one line (`disk_full_in_sweep`)."""
    files = plan.files
    fresh = not files.stage.exists()
    with (
        SignalGuard(plan.resume_hint) as guard,
        sweep_lock(files.stage.parent if files.remote else files.stage),
    ):
        try:
            return _run_locked(plan, guard, post_steps)
        except BaseException as exc:
            if fresh and not guard.fit_started:
                _remove_unstarted(files.stage)
            full = disk_full_in_sweep(exc, plan.exp_dir, guard.hint) if guard.fit_started else None
            if full is not None:
                raise full from exc
            raise


def _remove_unstarted(folder: Path) -> None:
    """Remove a new sweep's folder when it stopped before any trial (bad input, a full disk,
    an interrupt): it holds only what the start wrote (sweep.json, space.yaml, optuna.db)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _run_locked(plan: SweepPlan, guard: SignalGuard, post_steps: PostSteps | None) -> dict:
    """run_plan's work once the sweep folder is this process's: prepare the trials, start Ray,
    record the sweep, fit, then write the results and run `post_steps`."""
    plan, setup = _prepare(plan)
    resources, runtime = _start_ray(plan, setup)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, overrides=setup.overrides, runtime=runtime),
        trial_resources(resources),
    )
    _write_sweep_record(plan, setup, resources)
    t0 = time.perf_counter()
    tuner = _make_tuner(plan, setup.restoring, trainable, resources)
    grid, cv = _fit(plan, tuner, guard, setup.overrides, runtime, resources)
    wall = time.perf_counter() - t0
    return _finish(plan, grid, cv, wall, resources, guard, post_steps)


def _check_restore(plan: SweepPlan) -> tuple[SweepPlan, bool]:
    """A new sweep, or the interrupted one in the folder resumed (True), first with what needs
    no data: another dataset fails before it is read. The trial runner: a resumed sweep keeps
    its own (`resumed_runner`), `auto` becomes one (`trial.plan_runner`). Raises ValueError
    for a finished sweep without --resume, --resume with nothing to resume, and an
    interrupted sweep of other options. Returns the plan with the runner chosen."""
    opts, files, exp_dir = plan.opts, plan.files, plan.exp_dir
    if files.exists(DONE_FILE) and not opts.resume:
        raise ValueError(
            f"{exp_dir} already holds a finished sweep; pick another --name (or --resume to re-read it)"
        )
    restoring = tune.Tuner.can_restore(exp_dir)
    if opts.resume and not restoring:
        raise ValueError(f"--resume: no sweep to resume at {exp_dir}")
    runner = opts.trial_runner
    if restoring:
        files.pull("sweep.json", STUDY_FILE)  # a URI's files, to their local copy
        runner = resumed_runner(runner, files.stage)
        identity = sweep_identity(replace(opts, trial_runner=runner), plan.space, None)
        check_resumable(exp_dir, identity, files.stage)
    else:
        files.reset()  # no study or results of an earlier run with this URI
    runner = plan_runner(runner, opts.workers_per_trial, opts.gpus_per_trial)
    return replace(plan, opts=replace(opts, trial_runner=runner)), restoring


def trial_overrides(opts: SweepOptions) -> dict:
    """The settings no space sets, which every trial of the sweep shares: data, seed, DDP
    workers, cuda when trials hold a GPU, and fold 0 of K for a --cv sweep's search stage."""
    overrides = {"data": opts.data, "seed": opts.seed, "num_workers": opts.workers_per_trial}
    if opts.gpus_per_trial:
        overrides["device"] = "cuda"
    if opts.cv:  # the search stage trains and ranks on fold 0 (tune/folds.py)
        overrides.update(cv_folds=opts.cv, cv_fold=0)
    return overrides


def _prepare(plan: SweepPlan) -> tuple[SweepPlan, TrialSetup]:
    """Everything checked and loaded before Ray starts: new or resumed (`_check_restore`), the
    objective, the --set values built as train builds them, the data validated and the
    prepared cache filled once, the precision, the --external sets' classes. Raises
    ValueError (or `cli.UserError`), one line."""
    plan, restoring = _check_restore(plan)
    opts, space = plan.opts, plan.space
    overrides = trial_overrides(opts)
    check_objective(opts.objective, None)  # names first: no data needed to refuse a typo
    # Pooled (no fold): trials take their fold of the shared arrays (data/folds.for_config).
    probe_cfg = space.resolve(space.default_config(), {**overrides, "cv_folds": 0, "cv_fold": 0})
    check_settings_build(space, opts.settings, overrides)  # as train does, before any trial
    if opts.trial_runner == "inline" and not opts.gpus_per_trial and probe_cfg.device == "cuda":
        raise ValueError("device=cuda but the trials hold no GPU: pass --gpus-per-trial")
    data = load_for_config(probe_cfg, opts.cache)
    check_objective(opts.objective, data.classes)
    # The trials' device: a GPU only when they hold one (tune/trial.py runs the rest on cpu).
    choice = announce(probe_cfg.precision, "cuda" if opts.gpus_per_trial else "cpu")
    external.check_classes(opts.external, data.classes)
    identity = sweep_identity(opts, space, data.classes)
    if restoring:
        check_resumable(plan.exp_dir, identity, plan.files.stage)
        if not opts.resume:
            print(f"found an interrupted sweep at {plan.exp_dir}: resuming it", file=sys.stderr)
        elif plan.files.exists(DONE_FILE):  # what --resume of a finished sweep does
            print(
                f"{plan.exp_dir} holds a finished sweep: no trial left to run; re-reading its "
                "results and rebuilding what follows them (the ensemble and report)",
                file=sys.stderr,
            )
    return plan, TrialSetup(restoring, overrides, probe_cfg, data, identity, choice)


def _start_ray(plan: SweepPlan, setup: TrialSetup) -> tuple[dict, dict]:
    """Start (or join) Ray, size the trials, say the expected length, and share the prepared
    data through Ray's object store. Returns (`plan_resources`' dict, the `runtime` dict every
    trial function gets besides its config)."""
    opts = plan.opts
    # Worker output stays in Ray's logs: the console gets one line per trial event instead.
    hide_key = contextlib.nullcontext()
    if opts.wandb != "off":  # Ray's processes do not inherit the key: it stays in this one
        from .wandb_log import key_hidden

        hide_key = key_hidden()
    with hide_key:
        init_ray(log_to_driver=False)
    resources = plan_resources(opts)
    say_expected_length(opts, plan.space, setup.probe_cfg, setup.data, resources)
    runtime = {
        "runner": resources["runner"],
        "cpus_per_worker": resources["cpus_per_worker"],
        "gpus_per_worker": resources["gpus_per_worker"],
        "max_failures": opts.max_failures,
        "cache": opts.cache,
        "exp_dir": plan.exp_dir,
        # Prepared once here (once per searched img_size), read by every trial from Ray's
        # object store (worker.shared_data).
        "data": shared_datasets(plan.space, setup.probe_cfg, setup.data, opts.cache),
    }
    return resources, runtime


def _write_sweep_record(plan: SweepPlan, setup: TrialSetup, resources: dict) -> None:
    """space.yaml and sweep.json (the command, identity, options, resources, overrides and
    precision), written atomically in the local folder, then pushed to the storage."""
    opts, files = plan.opts, plan.files
    write_atomic(files.local_path("space.yaml"), plan.space.to_yaml())
    write_atomic(
        files.local_path("sweep.json"),
        json.dumps(
            {
                "command": "python -m ray_xray.tune " + shlex.join(opts.argv),
                **{k: v for k, v in setup.identity.items() if k != BEFORE_RENAMES},
                "options": asdict(opts),
                "plan": resources,
                "overrides": setup.overrides,
                "precision_choice": setup.precision.to_dict(),
            },
            indent=2,
            default=str,
        ),
    )
    files.push("space.yaml", "sweep.json")


def _make_tuner(plan: SweepPlan, restoring: bool, trainable, resources: dict) -> tune.Tuner:
    """A new Tuner over the plan, or the interrupted one restored from `plan.exp_dir`
    (unfinished trials resumed, errored ones not retried)."""
    opts, files, exp_dir = plan.opts, plan.files, plan.exp_dir
    if restoring:
        if opts.trial_runner == "inline" and not files.remote:
            results.relink_deleted_checkpoints(exp_dir)
        return tune.Tuner.restore(
            exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    return tune.Tuner(
        trainable,
        tune_config=_tune_config(opts, plan.space, exp_dir, resources, files),
        run_config=_run_config(
            opts, plan.name, opts.storage, files, plan_epochs(plan.space), resources
        ),
    )


def _fit(
    plan: SweepPlan, tuner, guard: SignalGuard, overrides: dict, runtime: dict, resources: dict
):
    """Tuner.fit, then a --cv sweep's fold stage; returns (the result grid, the fold stage or
    None). Raises `interrupt.Interrupted` after a signal (Tune saved the sweep: nothing after
    may claim it finished) and a one-line error when trials of any stage failed on a full disk."""
    opts = plan.opts
    gpu = f", {opts.gpus_per_trial:g} GPU" if opts.gpus_per_trial else ""
    print(
        f"sweep {plan.name}: space {plan.space.name}, up to {opts.trials} trials, "
        f"{resources['max_concurrent']} at a time ({resources['cpus_per_trial']:g} CPU{gpu} "
        f"each), objective {','.join(opts.objective)} -> {plan.exp_dir}",
        file=sys.stderr,
    )
    guard.fit_started = True
    with ray_console_quiet(), cloud_keys_kept_out_of_ray_logs(), guard.fitting():
        t0 = time.monotonic()
        grid = tuner.fit()
        # --cv's second stage (the top configurations on every fold), unless a signal
        # already stopped the search: then the sweep resumes from the search.
        cv = None
        if opts.cv and guard.signum is None:
            search_s = folds.search_spent_s(plan.name, time.monotonic() - t0)
            cv = _cv_stage(plan, grid, overrides, runtime, resources, search_s)
            if opts.refit_seeds and guard.signum is None:  # a signal: resume from the folds
                cv.refit_grid = _refit_stage(plan, cv, overrides, runtime, resources)
    guard.check()  # an interrupt: Tune saved the sweep; nothing below may claim it finished
    # a full disk in any stage (search, fold runs, refits): not finished
    stages = [grid] + ([cv.grid, cv.refit_grid] if cv else [])
    errors = [e for g in stages if g is not None for e in g.errors]
    check_trial_disk_errors(errors, plan.exp_dir, guard.hint)
    return grid, cv


def _finish(
    plan: SweepPlan,
    grid,
    cv: folds.FoldStage | None,
    wall: float,
    resources: dict,
    guard: SignalGuard,
    post_steps: PostSteps | None,
) -> dict:
    """After fit: the study closed, the results written (`finish_sweep`), the budget line,
    `post_steps`, then the closing lines (dashboards) and a URI's local copy removed."""
    opts, files = plan.opts, plan.files
    # Tune stops trials at the time budget without telling the searcher: close them in the
    # study, so optuna.db holds no trial RUNNING once the sweep has ended.
    ended_by = "budget" if opts.budget_minutes or opts.budget_epochs else "sweep_end"
    close_running(files.local_path(STUDY_FILE), plan.name, ended_by)
    wandb_dir = os.environ.get("WANDB_DIR") or files.stage
    if opts.wandb != "off" and not os.environ.get("WANDB_DIR"):
        files.push("wandb")  # the W&B runs (all finished once fit returns)
    summary = finish_sweep(
        grid,
        plan.exp_dir,
        plan.space,
        opts,
        wall,
        not files.remote,
        resources,
        files,
        cv and cv.label,
    )
    ended = budget_line(opts, summary["rows"], wall)
    if ended:
        print(ended)
    guard.hint = (
        f"the results are written; `python -m ray_xray.ensemble {plan.exp_dir}` builds the ensemble"
    )
    if post_steps is not None:
        summary.update(post_steps(plan, summary, cv))
    commands = tool_commands(files, wandb_dir if opts.wandb != "off" else None)
    print("\nopen the results with:\n" + "\n".join(f"  {c}" for c in commands))
    summary["commands"] = commands
    files.cleanup()  # a URI's local copy: everything is on the storage now
    return summary


def budget_line(opts: SweepOptions, rows: list[dict], wall_s: float) -> str | None:
    """The summary's line when --budget-minutes ended the sweep before all its trials ran to
    the end (None otherwise): how many trials were stopped unfinished, how many never started."""
    if not opts.budget_minutes or wall_s < opts.budget_minutes * 60:
        return None
    rows = [r for r in rows if r.get("cv_stage") in (None, "search")]  # --cv: the search's
    cut = sum(r["status"] not in ("TERMINATED", "ERROR") for r in rows)
    unstarted = max(0, opts.trials - len(rows))
    if not cut and not unstarted:
        return None
    return (
        f"the --budget-minutes {opts.budget_minutes:g} limit ended the sweep: {cut} trial(s) "
        f"stopped unfinished, {unstarted} of {opts.trials} never started"
    )


def finish_sweep(
    grid,
    exp_dir: str,
    space,
    opts: SweepOptions,
    wall: float,
    local: bool,
    resources: dict,
    files: SweepFiles | None = None,
    rows_hook=None,
) -> dict:
    """`results.finish`, where any failure is ours, not the user's: the trials ran and are
    safe on storage, so it must not read as bad input (exit 2). Raises
    `results.ResultsError` (exit 1). `rows_hook`: results.finish's (a --cv sweep adds its
    fold runs)."""
    try:
        return results.finish(grid, exp_dir, space, opts, wall, local, resources, files, rows_hook)
    except Exception as exc:
        raise results.ResultsError(
            f"the sweep's trials ran and are kept in {exp_dir}, but writing its results failed "
            f"({type(exc).__name__}: {exc}); the same command with --resume retries this step"
        ) from exc


def _cv_stage(
    plan: SweepPlan, grid, overrides: dict, runtime: dict, resources: dict, search_s: float
) -> folds.FoldStage:
    """Stage 2 of a --cv sweep (tune/folds.py): the top --cv-top configurations of the search
    on all K folds (with --budget-minutes, as many as fit in what the search's `search_s`
    seconds, across resumes, left of it), as Tune trials of EXP/folds/ (resumed with the
    sweep). Raises
    `results.ResultsError` when no search trial finished an epoch."""
    opts, exp_dir = plan.opts, plan.exp_dir
    objective = opts.objective[0]
    mode = metric_mode(objective)
    held = {"cpus": resources["cpus_per_trial"], "gpus": opts.gpus_per_trial}
    search = results.trial_rows(grid, objective, mode, exp_dir, held, opts.trial_runner)
    epochs, slots = plan_epochs(plan.space), resources["max_concurrent"]
    budget_s = opts.budget_minutes * 60
    left_s = budget_s - search_s
    fit = None
    if budget_s:
        fit = folds.budget_fit(search, epochs, opts.cv, slots, left_s, budget_s, opts.refit_seeds)
    configs, reused = folds.candidates(
        exp_dir, search, f"best_{objective}", mode, opts.cv_top, epochs, fit
    )
    if not configs:
        raise results.ResultsError(
            "--cv: no search trial finished an epoch (with --budget-minutes the search stage "
            "gets what the fold stage leaves: raise the budget); the same command with --resume "
            "continues"
        )
    runs = folds.fold_runs(len(configs), opts.cv, reused)
    print(
        f"\ncv: the best {len(configs)} configuration(s) on all {opts.cv} folds ({len(runs)} runs"
        + (f"; {len(reused)} fold-0 run(s) reused from the search" if reused else "")
        + f") -> {exp_dir}/{folds.FOLDS_DIR}",
        file=sys.stderr,
    )
    tuner = folds.fold_tuner(
        opts,
        exp_dir,
        configs,
        overrides,
        runtime,
        trial_resources(resources),
        resources["max_concurrent"],
        # the console counts the fold runs, with no clock: they run to their end. A fold run's
        # config holds only its cv_run: the time left takes the candidates' mean epochs
        make_callbacks(
            replace(opts, trials=len(runs), budget_minutes=0),
            plan.name,
            plan.files.stage,
            round(sum(c.get("epochs", epochs) for c in configs) / len(configs)),
            slots,
        ),
        runs,
    )
    return folds.FoldStage(opts, exp_dir, configs, tuner.fit(), held, reused, search)


def _refit_stage(
    plan: SweepPlan, cv: folds.FoldStage, overrides: dict, runtime: dict, resources: dict
):
    """--refit-seeds S (tune/refit.py): the configuration --cv chose (`cv.choice`, from the
    fold runs' validation metrics alone) trained on all of train+val with S seeds, as Tune
    trials of EXP/refit/; returns their ResultGrid, or None when no candidate finished every
    fold (then `cv.label` says so, after the results are written)."""
    try:
        chosen = cv.choice()["chosen"]
    except ValueError:
        return None
    opts = plan.opts
    epochs = chosen["config"].get("epochs", plan_epochs(plan.space))
    print(
        f"\ncv: refitting candidate {chosen['candidate']} ({chosen['config'].get('model')}) on "
        f"all of train+val with {opts.refit_seeds} seed(s), {epochs} epochs each, keeping the "
        f"last{refit.unlike_folds(chosen['config'])} -> {plan.exp_dir}/{refit.REFIT_DIR}",
        file=sys.stderr,
    )
    callbacks = make_callbacks(
        replace(opts, trials=opts.refit_seeds, budget_minutes=0),
        plan.name,
        plan.files.stage,
        epochs,
        resources["max_concurrent"],
    )
    tuner = refit.refit_tuner(
        opts,
        plan.exp_dir,
        chosen["config"],
        overrides,
        runtime,
        trial_resources(resources),
        resources["max_concurrent"],
        callbacks,
    )
    return tuner.fit()


def _tune_config(
    opts: SweepOptions,
    space: SearchSpace,
    exp_dir: str,
    resources: dict,
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
        study_storage = optuna.storages.RDBStorage(study_url(db))
    # Optuna's INFO lines ("A new study created in RDB ...") would break into the console's
    # own; its warnings still show.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
        max_concurrent_trials=resources["max_concurrent"],
        # --cv: FoldBudgetStopper (_run_config) ends the search sooner, leaving the fold stage
        # its share; this stays the limit it can never pass
        time_budget_s=opts.budget_minutes * 60 if opts.budget_minutes else None,
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


def say_expected_length(opts: SweepOptions, space, cfg, data, resources: dict) -> None:
    """Print the sweep's expected length before it starts (`estimate.expected_length`: the
    plan times an epoch of the first trial's model timed here). CPU trials only: a CPU's epoch
    says nothing about a GPU's."""
    if opts.gpus_per_trial:
        return
    from .estimate import expected_length

    try:
        total, line = expected_length(
            cfg.with_model_size(),
            len(data.labels["train"]),
            len(data.labels["val"]),
            opts.trials,
            plan_epochs(space),
            resources["max_concurrent"],
            max(1, int(resources["cpus_per_trial"])),
            resources["runner"],
        )
    except (RuntimeError, ValueError) as exc:  # an estimate must never stop a sweep
        print(f"expected length: not estimated ({exc})", file=sys.stderr)
        return
    if opts.budget_minutes and opts.budget_minutes * 60 < total:
        line += f"; --budget-minutes {opts.budget_minutes:g} stops it sooner"
    print(line, file=sys.stderr)


def plan_epochs(space) -> int:
    """Epochs each trial of `space` runs at most: its fixed ``epochs`` (``--set`` included),
    the top of a tuned range, else TrainConfig's default."""
    if "epochs" in space.fixed:
        return int(space.fixed["epochs"])
    spec = getattr(space, "params", {}).get("epochs")
    high = getattr(spec, "high", None)
    return int(high) if isinstance(high, int | float) else TrainConfig.epochs


def _run_config(
    opts: SweepOptions,
    name: str,
    storage: str,
    files: SweepFiles | None = None,
    epochs: int = 8,
    resources: dict | None = None,
) -> tune.RunConfig:
    slots = (resources or {}).get("max_concurrent", 1)
    callbacks = make_callbacks(opts, name, files.stage if files else None, epochs, slots)
    if files is not None and files.remote:
        callbacks.append(StudyUpload(files))
    inline = opts.trial_runner == "inline"
    stop = None
    if opts.cv and opts.budget_minutes:
        objective = opts.objective[0]
        stop = folds.FoldBudgetStopper(
            opts.budget_minutes * 60,
            opts.cv,
            opts.cv_top,
            slots,
            objective,
            metric_mode(objective),
            epochs,
            sweep=name,
            refits=opts.refit_seeds,
        )
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=callbacks,
        stop=stop,
        verbose=0,  # our ConsoleReporter prints one line per result instead
        # Inline trials: Tune restarts a failed trial from its last checkpoint, as Ray Train's
        # FailureConfig does for torchtrainer trials (whose Tune function itself never fails
        # but for a config that fails every restart: a finding, not retried again).
        failure_config=tune.FailureConfig(max_failures=opts.max_failures if inline else 0),
        # The latest checkpoint holds the best model so far (training_state), so one is enough;
        # torchtrainer trials report none to Tune (their Ray Train run keeps its own).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
