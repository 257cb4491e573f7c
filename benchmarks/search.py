"""5. Search efficiency on chest3 at an equal budget of trial-epochs: ASHA+TPE vs TPE alone vs
random search (FIFO), over several seeds, through the sweep service (`ray_xray.tune`).

Budget accounting: every epoch a trial reports costs one trial-epoch (ASHA's early stops are
the point: they leave budget for more trials). Reports are ordered by wall clock across
trials; after k trial-epochs the curve holds the best validation macro-F1 reported so far.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from ray_xray.io import atomic_path
from ray_xray.spaces import load_space
from ray_xray.tune.service import SweepOptions, run_sweep

from . import common

NAME = "search"
DEFAULTS = {
    "full": {
        "space": "cnn_lstm",
        "img_size": 64,
        "epochs": 3,
        "budget": 18,
        "seeds": [0, 1, 2],
        "tpe_startup": 3,
        "cpus_per_trial": 1.0,
        "limit_per_split": 0,
    },
    "quick": {
        "space": "cnn_lstm",
        "img_size": 32,
        "epochs": 2,
        "budget": 6,
        "seeds": [0],
        "tpe_startup": 2,
        "cpus_per_trial": 1.0,
        "limit_per_split": 300,
    },
}
# label -> (scheduler, searcher)
METHODS = {"ASHA+TPE": ("asha", "tpe"), "TPE": ("fifo", "tpe"), "random": ("fifo", "random")}
REFERENCE = "random"
METRIC = "val_macro_f1"


# ------------------------------------------------------------------ accounting (pure)


def spend_curve(events: list[dict], budget: int) -> list[float]:
    """Best metric after each trial-epoch, in the order reports happened, cut at `budget`.

    `events`: one per reported epoch, {"t": wall clock, "trial": id, "epoch": n, "value": x}.
    A (trial, epoch) reported twice (a restored trial re-reports its last epoch) counts once.
    Non-finite values spend budget but never become the best.
    """
    seen, curve, best = set(), [], -math.inf
    for ev in sorted(events, key=lambda e: (e["t"], str(e["trial"]), e["epoch"])):
        key = (ev["trial"], ev["epoch"])
        if key in seen:
            continue
        seen.add(key)
        v = ev.get("value")
        if isinstance(v, int | float) and math.isfinite(v):
            best = max(best, float(v))
        curve.append(best if best > -math.inf else float("nan"))
        if len(curve) >= budget:
            break
    return curve


def epochs_to_reach(curve: list[float], target: float, tol: float = 1e-9) -> int | None:
    """Trial-epochs spent when the curve first reaches `target` (None: not within the curve)."""
    for k, v in enumerate(curve, start=1):
        if v == v and v >= target - tol:
            return k
    return None


def value_at(curve: list[float], k: int) -> float | None:
    """Best after k trial-epochs (a search that stopped early keeps its last best)."""
    if not curve or k < 1:
        return None
    v = curve[min(k, len(curve)) - 1]
    return v if v == v else None


def trial_events(trial_dir: str | Path) -> list[dict]:
    """One event per epoch a trial reported, from Tune's result.json in its folder."""
    path = Path(trial_dir) / "result.json"
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if "epoch" not in r:
            continue
        out.append(
            {
                "t": r.get("bench_t") or r.get("timestamp") or 0.0,
                "trial": r.get("trial_id") or Path(trial_dir).name,
                "epoch": int(r["epoch"]),
                "value": r.get(METRIC),
            }
        )
    return out


# ------------------------------------------------------------------ the benchmark


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    spec = common.require_data(data)
    if s["budget"] < s["epochs"]:
        raise ValueError("search: budget must be at least one trial's epochs")
    space = load_space(s["space"])
    sweep_settings = {
        "epochs": s["epochs"],
        "img_size": s["img_size"],
        "limit_per_split": s["limit_per_split"],
    }
    fifo_trials = s["budget"] // s["epochs"]
    work = common.runs_dir(NAME)
    runs: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    total = len(s["seeds"]) * len(METHODS)
    i = 0
    try:
        with common.ray_session():
            for seed in s["seeds"]:
                for method, (scheduler, searcher) in METHODS.items():
                    i += 1
                    common.say(
                        NAME,
                        f"[{i}/{total}] {method}, seed {seed}, budget {s['budget']} trial-epochs",
                    )
                    opts = SweepOptions(
                        space=s["space"],
                        data=spec,
                        storage=str(work),
                        name=f"{method.replace('+', '_').lower()}-s{seed}",
                        seed=seed,
                        settings=dict(sweep_settings),
                        cpus_per_trial=s["cpus_per_trial"],
                        ensemble=False,
                        top_k=1,
                        scheduler=scheduler,
                        searcher=searcher,
                        tpe_startup=s["tpe_startup"],
                        # FIFO: exactly budget/epochs trials. ASHA: as many as the budget allows.
                        trials=fifo_trials if scheduler == "fifo" else s["budget"],
                        budget_epochs=s["budget"],
                    )
                    summary = run_sweep(opts)
                    events = [
                        ev for row in summary["rows"] for ev in trial_events(row["trial_dir"])
                    ]
                    runs[method][seed] = {
                        "curve": spend_curve(events, s["budget"]),
                        # Trials that ran at least one epoch (the budget can stop one before).
                        "trials": sum(int(r["epochs"]) > 0 for r in summary["rows"]),
                        "trial_epochs": sorted(int(r["epochs"]) for r in summary["rows"]),
                        "wall_s": summary["wall_s"],
                        "errors": sum(r["status"] == "ERROR" for r in summary["rows"]),
                    }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarise(s, runs, len(space.start))


def summarise(s: dict, runs: dict[str, dict[int, dict]], n_start: int = 0) -> dict:
    budget, seeds = s["budget"], list(s["seeds"])
    reach: dict[str, dict[int, int | None]] = {m: {} for m in runs}
    for seed in seeds:
        target = value_at(runs[REFERENCE][seed]["curve"], budget)
        for m in runs:
            reach[m][seed] = (
                epochs_to_reach(runs[m][seed]["curve"], target) if target is not None else None
            )
    rows, finals = [], {}
    for m in runs:
        f = [value_at(runs[m][sd]["curve"], budget) for sd in seeds]
        f = [v for v in f if v is not None]
        finals[m] = f
        hits = [reach[m][sd] for sd in seeds]
        reached = [h for h in hits if h is not None]
        rows.append(
            [
                m,
                statistics.mean(f) if f else None,
                statistics.stdev(f) if len(f) > 1 else None,
                " / ".join(common.fmt(v) for v in f),
                statistics.mean(runs[m][sd]["trials"] for sd in seeds),
                " / ".join("not reached" if h is None else str(h) for h in hits),
                statistics.median(reached) if len(reached) == len(hits) else None,
                statistics.mean(runs[m][sd]["wall_s"] for sd in seeds) / 60,
            ]
        )
    fractions = (0.25, 0.5, 0.75, 1.0)
    at_rows = []
    for m in runs:
        row = [m]
        for fr in fractions:
            k = max(1, round(fr * budget))
            vals = [value_at(runs[m][sd]["curve"], k) for sd in seeds]
            vals = [v for v in vals if v is not None]
            row.append(statistics.mean(vals) if vals else None)
        at_rows.append(row)
    headline = headline_lines(runs, reach, finals, seeds, budget)
    figure = plot(runs, budget, s)
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"`python -m ray_xray.tune`'s service (`run_sweep`) on chest3, space `{s['space']}` at "
            f"{s['img_size']} px, {s['epochs']} epochs per trial, {s['cpus_per_trial']:g} CPU per "
            f"trial, budget {budget} trial-epochs per search, seeds {', '.join(map(str, seeds))} "
            f"(the seed drives both the sampler and training). ASHA+TPE: `--scheduler asha "
            f"--searcher tpe --budget-epochs {budget}` (first rung after "
            f"{max(1, s['epochs'] // 3)} epoch(s), the service's default; reduction factor 3); TPE: "
            f"`--scheduler fifo --searcher tpe`, {budget // s['epochs']} trials; random: "
            f"`--scheduler fifo --searcher random`, {budget // s['epochs']} trials. TPE starts "
            f"modelling after `--tpe-startup {s['tpe_startup']}` random trials (Optuna's "
            "default of 10 would make TPE identical to random search at this budget). The "
            "curve is the best validation macro-F1 reported after k trial-epochs."
        ),
        tables=[
            common.table(
                f"at {budget} trial-epochs, and trial-epochs needed to reach random search's "
                "final best (same seed)",
                [
                    "search",
                    "best val macro-F1 (mean)",
                    "sd",
                    "per seed",
                    "trials (mean)",
                    "trial-epochs to random's best, per seed",
                    "median",
                    "wall min (mean)",
                ],
                rows,
            ),
            common.table(
                "best validation macro-F1 (mean over seeds) after a fraction of the budget",
                ["search"]
                + [f"{int(fr * 100)}% ({max(1, round(fr * budget))})" for fr in fractions],
                at_rows,
            ),
        ],
        headline=headline,
        figures=[figure] if figure else [],
        data={
            "runs": runs,
            "reach": {m: {str(k): v for k, v in d.items()} for m, d in reach.items()},
        },
        notes=[
            "Same seed = same first random configurations for all three searches (TPE's start-up "
            "trials come from Optuna's RandomSampler with that seed): the curves differ only by "
            "what TPE and ASHA do with them."
            + (
                f" The space's {n_start} `start` point(s) are evaluated first by every search."
                if n_start
                else ""
            ),
            "`--budget-epochs` starts no new trial once the budget is spent but lets running "
            "trials finish, so a search may run a few epochs past it; those are not counted "
            "(the curves stop at the budget).",
            "The plot (results/search.png) is redrawn by each run, beside this file's JSON.",
        ],
    )


def headline_lines(runs, reach, finals, seeds, budget) -> list[str]:
    def med(m):
        hits = [reach[m][sd] for sd in seeds]
        return None if any(h is None for h in hits) else statistics.median(hits)

    def mean(m):
        return statistics.mean(finals[m]) if finals[m] else float("nan")

    lines = [
        f"best val macro-F1 after {budget} trial-epochs (mean of {len(seeds)} seed(s)): "
        + ", ".join(f"{m} {mean(m):.3f}" for m in runs)
    ]
    ref = med(REFERENCE)
    parts = []
    for m in runs:
        if m == REFERENCE:
            continue
        k = med(m)
        if k is None:
            n = sum(reach[m][sd] is not None for sd in seeds)
            parts.append(f"{m} reached it in {n}/{len(seeds)} seed(s)")
        else:
            speed = f", {ref / k:.1f}x fewer" if ref and k else ""
            parts.append(f"{m} after a median {k:g}{speed}")
    lines.append(
        f"trial-epochs to reach random search's final best (random itself: median {ref}): "
        + "; ".join(parts)
    )
    return lines


def plot(runs: dict, budget: int, s: dict) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colours = {"ASHA+TPE": "tab:red", "TPE": "tab:blue", "random": "tab:grey"}
    for m, by_seed in runs.items():
        curves = [c["curve"] for c in by_seed.values()]
        for c in curves:
            ax.step(range(1, len(c) + 1), c, where="post", color=colours.get(m), alpha=0.25, lw=1)
        mean = []
        for k in range(1, budget + 1):
            vals = [value_at(c, k) for c in curves]
            vals = [v for v in vals if v is not None]
            mean.append(statistics.mean(vals) if vals else float("nan"))
        ax.step(range(1, budget + 1), mean, where="post", color=colours.get(m), lw=2, label=m)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation macro-F1 so far")
    ax.set_title(
        f"{s['space']} on chest3 at {s['img_size']} px ({len(s['seeds'])} seed(s); thin: per seed)"
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(Path(common.OUT_DIR) / "results" / "search.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return "results/search.png"
