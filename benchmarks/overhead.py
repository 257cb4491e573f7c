"""1. Trial overhead: where one Tune trial's wall time goes, phase by phase, beside a bare loop.

(a) the bare loop: the training function's own `Trainer.build` + `train_epochs`, no Ray, same
    threads.
(b) a sweep through `python -m ray_xray.tune`'s service with its default trial runner (inline:
    the training function in the Tune trial's process), `trials` trials, `concurrent` at a
    time, FIFO, every tuned value pinned.
(b') the same sweep with `--trial-runner torchtrainer` (Ray Tune -> TorchTrainer -> worker).
(c) (full mode) sweep (b) with `long_epochs` epochs: the share of trial time spent training.

Phase boundaries come from `ray_xray.trace` marks (the trial function and the worker append
time stamps when $RAY_XRAY_TRACE is set) and from Ray's state API (when Ray launched each
process). The goals are issue #16's: median `wall_s - compute_s` per trial at most 8 s for (b),
and at least 90 % of a 10-epoch trial's wall time in train/val compute for (c).
"""

from __future__ import annotations

import shutil
import statistics
import time

import torch

from ray_xray import trace
from ray_xray.data import absolute_spec, load_for_config
from ray_xray.data.cache import default_cache_root
from ray_xray.spaces import load_space
from ray_xray.train import engine
from ray_xray.train.loop import Hooks, Progress, Trainer, train_epochs
from ray_xray.tune.service import SweepOptions, run_sweep
from ray_xray.tune.trial import plan_runner

from . import common

NAME = "overhead"
DEFAULTS = {
    "full": {
        "space": "resnet18",
        "img_size": 64,
        "epochs": 3,
        "batch_size": 32,
        "limit_per_split": 0,
        "trials": 4,
        "concurrent": 2,
        "long_epochs": 10,
    },
    "quick": {
        "space": "resnet18",
        "img_size": 64,
        "epochs": 2,
        "batch_size": 32,
        "limit_per_split": 256,
        "trials": 2,
        "concurrent": 2,
        "long_epochs": 0,
    },
}
GOAL_OVERHEAD_S = 8.0  # median wall_s - compute_s per trial (issue #16)
GOAL_COMPUTE_SHARE = 0.90  # of a 10-epoch trial's wall time (issue #16)

# (phase, what it covers); computed by `trial_phases` from the trace and Ray's launch times.
PHASES = [
    ("tune actor start", "Ray launches the trial's Tune function process until it runs"),
    (
        "controller + worker group",
        "torchtrainer: trial function builds the TorchTrainer; Ray Train starts its "
        "controller, placement group and helper actors; until the "
        "worker process is launched (inline: none)",
    ),
    (
        "worker process start",
        "torchtrainer: worker process launch until the training function runs (imports, torch "
        "process group); inline: importing the training code in the trial's process",
    ),
    ("data load", "prepared data: Ray's object store (sweep) or the Parquet cache"),
    ("model build", "model, optimiser, loaders (Trainer.build) and checkpoint restore"),
    ("compute (train + val)", "sum of the epochs' epoch_s"),
    ("report + checkpoint", "after each epoch's metrics until the report to Ray returns"),
    ("other in the loop", "rest of each epoch's iteration (metrics bookkeeping)"),
    ("teardown", "last report until the trial function returns"),
]


def workload(s: dict, data: str) -> tuple[dict, object]:
    """Sweep-wide settings pinning every tuned value, and the TrainConfig every trial runs."""
    space = load_space(s["space"])
    model = space.models[0]
    pinned = {k: v for k, v in space.default_config(model).items() if k in space.params_for(model)}
    settings = {
        **pinned,
        "batch_size": s["batch_size"],
        "epochs": s["epochs"],
        "img_size": s["img_size"],
        "limit_per_split": s["limit_per_split"],
    }
    overrides = {**settings, "data": absolute_spec(data), "seed": 0, "num_workers": 1}
    return settings, space.resolve(space.default_config(model), overrides)


class _Stamps(Hooks):
    """Wall time of every epoch, from its start to the end of its validation."""

    def __init__(self) -> None:
        self.t0, self.walls = 0.0, []

    def before_epoch(self, epoch: int) -> None:
        self.t0 = time.perf_counter()

    def on_epoch(self, metrics: dict, improved: bool, progress: Progress) -> None:
        self.walls.append(time.perf_counter() - self.t0)


def bare_loop(cfg, cache: str, threads: int) -> dict:
    """(a): the worker's `Trainer.build` and `train_epochs` without Ray: no reports, no
    checkpoints."""
    torch.set_num_threads(threads)
    engine.seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data = load_for_config(cfg, cache)
    t1 = time.perf_counter()
    tr = Trainer.build(cfg, data, torch.device("cpu"))
    t2 = time.perf_counter()
    stamps = _Stamps()
    progress = train_epochs(tr, hooks=stamps)
    compute = sum(h["epoch_s"] for h in progress.history)
    return {
        "data_load_s": t1 - t0,
        "model_build_s": t2 - t1,
        "compute_s": compute,
        "loop_s": sum(stamps.walls),
        "wall_s": time.perf_counter() - t0,
    }


def launch_times() -> dict[int, float]:
    """pid -> when Ray launched that worker process (s since the epoch), from Ray's state API."""
    from ray.util.state import list_workers

    return {
        w.pid: w.worker_launch_time_ms / 1e3
        for w in list_workers(detail=True, limit=10_000, raise_on_missing_output=False)
        if w.pid
        and w.worker_launch_time_ms
        and w.worker_launch_time_ms < 1e14  # the driver: 2^64-1
    }


def trial_phases(records: list[dict], launched: dict[int, float]) -> dict[str, dict]:
    """Per trial id: seconds in each of PHASES, from trace records and process launch times.

    Raises RuntimeError when a trial's trace is incomplete (it failed, or tracing was off)."""
    by_trial: dict[str, dict] = {}
    worker_pid: dict[int, str] = {}
    for r in records:
        if r.get("trial"):
            by_trial.setdefault(r["trial"], {})[r["event"]] = r
            if r["event"] == "worker_start":
                worker_pid[r["pid"]] = r["trial"]
    epochs: dict[str, list[dict]] = {t: [] for t in by_trial}
    for r in records:  # epoch marks carry the worker's pid, not the trial
        if r["event"] in ("epoch_start", "epoch_end", "reported") and r["pid"] in worker_pid:
            epochs[worker_pid[r["pid"]]].append(r)
    return {t: _phases(ev, epochs[t], launched, t) for t, ev in by_trial.items()}


def _phases(ev: dict, marks: list[dict], launched: dict[int, float], trial: str) -> dict:
    need = ("trial_start", "worker_start", "data_loaded", "model_built", "trial_end")
    missing = [k for k in need if k not in ev]
    if (
        missing
        or ev["trial_start"]["pid"] not in launched
        or ev["worker_start"]["pid"] not in launched
    ):
        raise RuntimeError(f"trial {trial}: incomplete trace (missing {missing or 'launch times'})")
    t = {k: ev[k]["t"] for k in need}
    inline = ev["worker_start"]["pid"] == ev["trial_start"]["pid"]  # trained in its own process
    worker_launch = t["trial_start"] if inline else launched[ev["worker_start"]["pid"]]
    starts = {m["epoch"]: m["t"] for m in marks if m["event"] == "epoch_start"}
    ends = {m["epoch"]: m for m in marks if m["event"] == "epoch_end"}
    reps = {m["epoch"]: m["t"] for m in marks if m["event"] == "reported"}
    compute = sum(m["epoch_s"] for m in ends.values())
    in_loop = sum(ends[e]["t"] - starts[e] for e in ends if e in starts)
    report = sum(reps[e] - ends[e]["t"] for e in reps if e in ends)
    # Between one report's return and the next epoch's start: the loop's own bookkeeping.
    gaps = sum(starts[e + 1] - reps[e] for e in reps if e + 1 in starts)
    last = max(reps.values()) if reps else t["model_built"]
    first = min(starts.values()) if starts else t["model_built"]
    out = {
        "tune actor start": t["trial_start"] - launched[ev["trial_start"]["pid"]],
        "controller + worker group": worker_launch - t["trial_start"],
        "worker process start": t["worker_start"] - worker_launch,
        "data load": t["data_loaded"] - t["worker_start"],
        "model build": first - t["data_loaded"],
        "compute (train + val)": compute,
        "report + checkpoint": report,
        "other in the loop": in_loop - compute + gaps,
        "teardown": t["trial_end"] - last,
    }
    out["total"] = t["trial_end"] - launched[ev["trial_start"]["pid"]]
    out["epochs"] = len(ends)
    return out


def sweep(
    s: dict,
    spec: str,
    sweep_settings: dict,
    epochs: int,
    trials: int,
    work,
    tag: str,
    threads: int,
    runner: str = "auto",
) -> dict:
    """One sweep with tracing on (`runner`: its --trial-runner); its rows (wall_s, compute_s)
    and per-trial phases."""
    path = work / f"trace-{tag}.jsonl"
    with common.ray_session(env={trace.TRACE_ENV: str(path)}):
        opts = SweepOptions(
            space=s["space"],
            data=spec,
            trials=trials,
            storage=str(work),
            name=tag,
            settings={**sweep_settings, "epochs": epochs},
            ensemble=False,
            top_k=1,
            cpus_per_trial=float(threads) / s["concurrent"],
            scheduler="fifo",
            seed=0,
            trial_runner=runner,
        )
        t0 = time.time()
        summary = run_sweep(opts)
        wall = time.time() - t0
        launched = launch_times()
    rows = summary["rows"]
    bad = [r["trial_id"] for r in rows if r["status"] != "TERMINATED"]
    if bad:
        raise RuntimeError(f"trials {bad} did not finish: {rows}")
    phases = trial_phases(trace.read(path), launched)
    return {
        "rows": [{k: r[k] for k in ("trial_id", "wall_s", "compute_s")} for r in rows],
        "phases": phases,
        "sweep_wall_s": wall,
        # the runner the sweep chose (`auto` resolved as the service resolves it)
        "runner": plan_runner(opts.trial_runner, opts.workers_per_trial, opts.gpus_per_trial),
    }


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    spec = common.require_data(data)
    threads = common.threads()
    sweep_settings, cfg = workload(s, spec)
    cache = default_cache_root()
    common.say(
        NAME,
        f"{cfg.model} at {cfg.img_size} px, {cfg.epochs} epochs, batch {cfg.batch_size}; "
        f"{s['trials']} trials, {s['concurrent']} at a time on {threads} CPUs",
    )
    load_for_config(cfg, cache)  # fill the prepared cache before anything is timed
    work = common.runs_dir(NAME)
    try:
        common.say(NAME, "(b) sweep, default trial runner")
        b = sweep(s, spec, sweep_settings, cfg.epochs, s["trials"], work, "short", threads)
        common.say(NAME, "(b') sweep, --trial-runner torchtrainer")
        t = sweep(
            s,
            spec,
            sweep_settings,
            cfg.epochs,
            s["trials"],
            work,
            "short-tt",
            threads,
            runner="torchtrainer",
        )
        common.say(NAME, "(a) bare loop, one trial's threads")
        a = bare_loop(cfg, cache, max(1, threads // s["concurrent"]))
        c = None
        if s["long_epochs"]:
            common.say(NAME, f"(c) sweep of {s['concurrent']} trials x {s['long_epochs']} epochs")
            c = sweep(
                s, spec, sweep_settings, s["long_epochs"], s["concurrent"], work, "long", threads
            )
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarise(s, cfg, threads, a, b, c, t)


def _median(values) -> float:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else float("nan")


def _phase_rows(runs: list[dict], bare: dict) -> list[list]:
    """PHASES x (median per run, its share of that run's total, bare loop, what it covers)."""
    meds = []
    for run in runs:
        trials = list(run["phases"].values())
        total = _median(p["total"] for p in trials)
        meds.append(({ph: _median(p[ph] for p in trials) for ph, _ in PHASES}, total))
    rows = []
    for phase, what in PHASES:
        cells = [x for m, total in meds for x in (m[phase], m[phase] / total)]
        rows.append([phase, *cells, bare.get(phase), what])
    totals = [x for _, total in meds for x in (total, 1.0)]
    return [*rows, ["total (launch to return)", *totals, bare["total"], "median over trials"]]


def _overhead(run: dict) -> float:
    return _median(r["wall_s"] - r["compute_s"] for r in run["rows"])


def summarise(
    s: dict, cfg, threads: int, a: dict, b: dict, c: dict | None, t: dict | None = None
) -> dict:
    """The benchmark's record: (b) the default runner's sweep, (b') `t` the torchtrainer one,
    (a) the bare loop, (c) the long sweep."""
    bare = {
        "data load": a["data_load_s"],
        "model build": a["model_build_s"],
        "compute (train + val)": a["compute_s"],
        "other in the loop": a["loop_s"] - a["compute_s"],
        "total": a["wall_s"],
    }
    runs = [b, *([t] if t else [])]
    columns = ["phase"]
    for run, tag in zip(runs, ("(b)", "(b')"), strict=False):
        columns += [f"{run.get('runner', 'torchtrainer')} {tag}", "share"]
    overhead = _overhead(b)
    what = (
        f"{cfg.model} {cfg.img_size} px x {cfg.epochs} epochs, {s['concurrent']} trials at a time"
    )
    headline = [
        f"median per-trial overhead (wall_s - compute_s) {overhead:.1f} s with the "
        f"{b.get('runner', 'torchtrainer')} trial runner for {what} "
        f"(goal <= {GOAL_OVERHEAD_S:g} s: {'met' if overhead <= GOAL_OVERHEAD_S else 'NOT met'})"
        + (f"; torchtrainer runner {_overhead(t):.1f} s" if t else "")
    ]
    tables = [
        common.table(
            f"(b) phases of one trial, median of {len(b['phases'])} (s)",
            [*columns, "bare loop (a)", "covers"],
            _phase_rows(runs, bare),
        )
    ]
    if c:
        share = _median(min(r["compute_s"], r["wall_s"]) / r["wall_s"] for r in c["rows"])
        headline.append(
            f"{s['long_epochs']}-epoch trials spend {share:.1%} of their wall time in train/val "
            f"compute (median of {len(c['rows'])}; goal >= {GOAL_COMPUTE_SHARE:.0%}: "
            f"{'met' if share >= GOAL_COMPUTE_SHARE else 'NOT met'}); overhead {_overhead(c):.1f} s"
        )
    trial_rows = [
        [
            run.get("runner", "torchtrainer"),
            r["trial_id"],
            r["wall_s"],
            r["compute_s"],
            r["wall_s"] - r["compute_s"],
        ]
        for run in [*runs, *([c] if c else [])]
        for r in run["rows"]
    ]
    tables.append(
        common.table(
            "every trial: Tune's wall_s, compute_s and overhead (s)",
            ["runner", "trial", "wall_s", "compute_s", "overhead"],
            trial_rows,
        )
    )
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"`{cfg.model}` on chest3 at {cfg.img_size} px, batch {cfg.batch_size}, precision "
            f"{cfg.precision}, augmentation {cfg.augment} x{cfg.aug_strength:g} (the {s['space']} "
            f"space's fixed settings, tuned values pinned to their defaults). (b): "
            f"`run_sweep` (what `python -m ray_xray.tune` runs), {s['trials']} trials x "
            f"{cfg.epochs} epochs, {s['concurrent']} at a time, {threads / s['concurrent']:g} "
            "CPU each, FIFO, default trial runner; (b'): the same with `--trial-runner "
            "torchtrainer`, run right after (b); phases from `ray_xray.trace` marks and Ray's "
            "process launch times. (a): the same build and loop without Ray, with one trial's "
            "threads, run between (b') and (c) (sweep (b) with more epochs). overhead = Tune's "
            "`wall_s` (time_total_s: from the trial function's start to its last report) minus "
            "`compute_s` (sum of epoch_s)."
        ),
        tables=tables,
        headline=headline,
        data={"a": a, "b": b, "b_torchtrainer": t, "c": c, "config": cfg.to_dict()},
        notes=[
            "'tune actor start' and 'teardown' fall outside Tune's wall_s; the phase table's "
            "total runs from Ray's launch of the trial's first process to its function's return.",
            "Trials that start together compete for the same cores during start-up, so phases "
            "of concurrent trials take longer than one trial alone would.",
        ],
    )
