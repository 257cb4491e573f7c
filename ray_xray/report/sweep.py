"""The sweep's own story in the report: what was run and what ended it, every trial's learning
curves, the optimisation history (Optuna's matplotlib views plus best-so-far against time) and
hyperparameter importance, all on the value the sweep ranks by (each trial's best epoch, as in
results.parquet), not on Optuna's record of a trial's last reported value: an ASHA-stopped
trial's last epoch is its 3rd, a finished one's its 10th, and those are not comparable."""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

from ..sweep_folder import study_url
from . import html as H
from . import plots as P

SOFTWARE = ("ray_xray", "torch", "torchvision", "ray", "optuna", "scikit-learn", "numpy")


def wall_time_text(sweep: dict, minutes: float | None) -> str:
    """The report's "sweep wall time": Tune's own (Tuner.fit, recorded in sweep.json's
    time_use.tune_wall_s) first, then the trials' span (first start to last report, from
    result.json), which alone read 10.9 min for a sweep that ran 18 (issue 33)."""
    tune_s = (sweep.get("time_use") or {}).get("tune_wall_s")
    span = (
        f"first trial start to last report {minutes:.1f} min (result.json)"
        if minutes is not None
        else ""
    )
    if tune_s is None:
        return span or "not logged"
    return (
        f"{tune_s / 60:.1f} min in Tune (Tuner.fit, start to end; the data preparation before "
        f"and the ensemble after not counted)" + (f"; {span}" if span else "")
    )


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def versions() -> dict[str, str]:
    """Installed versions of the packages the report's numbers depend on (and Python)."""
    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def trial_counts(exp: dict) -> dict:
    """How many trials were asked for, started, ran every epoch, were stopped early (ASHA),
    failed, or never reported an epoch; from sweep.json's options and results.parquet."""
    t = exp["table"]
    epochs = t["epochs"].fillna(0).astype(int) if "epochs" in t else None
    if "config/epochs" in t:
        planned = t["config/epochs"].fillna(0).astype(int)
    else:
        planned = None if epochs is None else epochs.max()
    ok = t["status"] == "TERMINATED"
    full = ok & (epochs >= planned) if epochs is not None else ok
    return {
        "asked": exp["options"].get("trials"),
        "started": int(len(t)),
        "finished": int(full.sum()),
        "stopped_early": int((ok & ~full).sum()),
        "failed": int((t["status"] == "ERROR").sum()),
        "no_epoch": int((t["status"] == "INCOMPLETE").sum()),
        "epochs_total": int(epochs.sum()) if epochs is not None else None,
    }


def sweep_minutes(histories: dict[str, list[dict]]) -> float | None:
    """Wall minutes from the first trial's start to the last report, from Tune's result.json
    timestamps (unix seconds) and time_total_s; None when the logs carry no timestamps."""
    starts, ends = [], []
    for rows in histories.values():
        for r in rows:
            if _finite(r.get("timestamp")):
                ends.append(r["timestamp"])
                if _finite(r.get("time_total_s")):
                    starts.append(r["timestamp"] - r["time_total_s"])
    if not ends:
        return None
    return (max(ends) - min(starts or ends)) / 60


def what_ended(options: dict, counts: dict, minutes: float | None) -> str:
    """One sentence on why the sweep stopped where it did."""
    asked, started = counts["asked"], counts["started"]
    budget_min, budget_ep = options.get("budget_minutes") or 0, options.get("budget_epochs") or 0
    if isinstance(asked, int) and started >= asked:
        return f"all {asked} trials asked for were started"
    reasons = []
    if budget_ep and (counts["epochs_total"] or 0) >= budget_ep:
        reasons.append(
            f"the epoch budget (--budget-epochs {budget_ep}: trials had reported "
            f"{counts['epochs_total']} epochs, so no new trial started)"
        )
    if budget_min:
        span = f"; the trials' logs span {minutes:.1f} min" if minutes is not None else ""
        reasons.append(f"the time budget (--budget-minutes {budget_min:g}{span})")
    if not reasons:
        return (
            f"{started} of {asked} trials started; the logs do not say why the sweep ended "
            "(interrupted?)"
        )
    return f"{started} of {asked} trials started: ended by " + " and ".join(reasons)


def context_section(ctx: dict) -> str:
    """Command, budget, what ended the sweep, trial counts, class counts per split, versions."""
    exp, m = ctx["exp"], ctx["metrics"]
    opts, sweep = exp["options"], exp.get("sweep") or {}
    counts = trial_counts(exp)
    histories = ctx.get("histories") or {}
    minutes = sweep_minutes(histories)
    budget = ", ".join(
        [f"{opts.get('trials', '?')} trials"]
        + ([f"{opts['budget_minutes']:g} min"] if opts.get("budget_minutes") else [])
        + ([f"{opts['budget_epochs']} epochs in all"] if opts.get("budget_epochs") else [])
        + [f"scheduler {opts.get('scheduler', 'asha')}, searcher {opts.get('searcher', 'tpe')}"]
    )
    trials = (
        f"asked {counts['asked'] if counts['asked'] is not None else '?'} · started "
        f"{counts['started']} · ran every epoch {counts['finished']} · stopped early (ASHA) "
        f"{counts['stopped_early']} · failed {counts['failed']} · no epoch reported "
        f"{counts['no_epoch']}"
    )
    data = ctx["datas"][ctx["members"][0].data_key]
    split_counts = data.counts()
    pairs = [
        (
            "command",
            f"<code>{H.esc(sweep.get('command') or '(not recorded: no sweep.json)')}</code>",
        ),
        ("budget", H.esc(budget)),
        ("what ended it", H.esc(what_ended(opts, counts, minutes))),
        ("trials", H.esc(trials)),
        ("sweep wall time", H.esc(wall_time_text(sweep, minutes))),
        (
            "objective",
            H.esc(
                ", ".join(exp["objective"]) + f" (ranked by {exp['key']}, each trial's best epoch)"
            ),
        ),
        ("data", f"<code>{H.esc(m['data'])}</code>"),
        (
            "images per class and split",
            H.esc(
                " · ".join(
                    f"{split}: " + ", ".join(f"{c} {n}" for c, n in split_counts[split].items())
                    for split in ("train", "val", "test")
                    if split in split_counts
                )
            ),
        ),
        (
            "validation split",
            H.esc(
                "as the data gives it; a source whose val split holds fewer than 5% of train's "
                "images gets one carved from train (stratified, grouped by patient id when file "
                "names carry one)"
            ),
        ),
        ("software (at report time)", H.esc(", ".join(f"{k} {v}" for k, v in versions().items()))),
    ]
    return H.section("Sweep context", H.definitions(pairs), anchor="context")


# ---------------------------------------------------------------- per-trial logs


def trial_histories(exp: dict) -> dict[str, list[dict]]:
    """{trial_id: result.json rows, one per epoch (the last report of each)}."""
    from ..sweep_folder import relocate  # noqa: PLC0415 (the report imports the ensemble lazily)
    from .build import read_history

    out = {}
    for r in exp["table"].to_dict("records"):
        tid = str(r["trial_id"])
        where = relocate(r.get("trial_dir"), exp["exp_dir"], tid) or exp["exp_dir"] / tid
        out[tid] = read_history(where).get("rows", [])
    return out


def curves_section(ctx: dict, figs) -> str:
    exp = ctx["exp"]
    metric = exp["objective"][0]
    members = {mm.trial_id: f"#{mm.rank} {mm.name}" for mm in ctx["members"]}
    curves = []
    for tid, rows in (ctx.get("histories") or {}).items():
        if not rows:
            continue
        curve = {
            "label": members.get(tid, tid),
            "highlight": tid in members,
            "epoch": [int(r["epoch"]) for r in rows],
        }
        for key in ("train_loss", "val_loss", metric):
            curve[key] = [float(r[key]) if _finite(r.get(key)) else math.nan for r in rows]
        curves.append(curve)
    if not curves:
        return H.section("Training curves", H.para("No per-epoch logs (result.json) found."))
    cap = (
        f"Every trial with a log ({len(curves)}): training loss, validation loss and validation "
        f"{metric[4:]} per epoch. The ensemble pool is in colour (named below), the rest grey. A "
        "line that ends early is a trial ASHA stopped; training loss falling while validation "
        "loss rises is over-fitting."
    )
    return H.section(
        "Training curves",
        figs.make("training_curves", cap, P.learning_curves, curves, metric),
        anchor="curves",
    )


# ---------------------------------------------------------------- Optuna views


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
        except (TypeError, ValueError):
            return False
    if a == b:
        return True
    return isinstance(b, str) and json.dumps(a) == b  # lists stored as JSON text in parquet


def ranked_study(exp: dict):
    """(study, message): an in-memory Optuna study whose trials are the sweep's Optuna trials
    (their parameters and distributions) valued by results.parquet's ranking column (each
    trial's best epoch), matched on parameter values. study is None with the reason when
    there is no optuna.db or fewer than 2 trials could be matched."""
    db = Path(exp["exp_dir"]) / "optuna.db"
    if not db.is_file():
        return None, "No optuna.db in the experiment folder, so no Optuna views or importance."
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_url(db)  # escaped: a folder named with % or ? opens as itself
    names = optuna.get_all_study_names(storage)
    if not names:
        return None, "optuna.db holds no study."
    name = exp["exp_dir"].name if exp["exp_dir"].name in names else names[0]
    stored = optuna.load_study(study_name=name, storage=storage)
    rows = [r for r in exp["table"].to_dict("records") if _finite(r.get(exp["key"]))]
    study = optuna.create_study(direction="maximize" if exp["mode"] == "max" else "minimize")
    for t in stored.trials:
        if not t.params:
            continue
        hit = next(
            (r for r in rows if all(_same(v, r.get(f"config/{k}")) for k, v in t.params.items())),
            None,
        )
        if hit is None:
            continue
        rows.remove(hit)  # a duplicate configuration matches the next row, not this one again
        study.add_trial(
            optuna.trial.create_trial(
                params=t.params,
                distributions=t.distributions,
                value=float(hit[exp["key"]]),
                user_attrs={"trial_id": str(hit["trial_id"])},
            )
        )
    n = len(study.trials)
    if n < 2:
        return None, (
            f"Only {n} Optuna trial(s) with a finite {exp['key']}: too few for the "
            "Optuna views and importance (needs at least 2, many more to mean much)."
        )
    return study, (
        f"{n} of {len(stored.trials)} Optuna trials, each valued by its best-epoch "
        f"{exp['key'][5:]} from results.parquet (the value the sweep ranks by)."
    )


def _common_params(study) -> list[str]:
    """Parameters present in every trial (per-architecture ones drop out when it varied)."""
    sets = [set(t.params) for t in study.trials]
    return sorted(set.intersection(*sets)) if sets else []


def history_section(ctx: dict, figs, study, msg: str) -> str:
    exp = ctx["exp"]
    metric = exp["key"][5:]
    parts = []
    best = []
    start = None
    for rows in (ctx.get("histories") or {}).values():
        for r in rows:
            if _finite(r.get("timestamp")) and _finite(r.get("time_total_s")):
                t0 = r["timestamp"] - r["time_total_s"]
                start = t0 if start is None else min(start, t0)
    for tid, rows in (ctx.get("histories") or {}).items():
        vals = [r for r in rows if _finite(r.get(metric)) and _finite(r.get("timestamp"))]
        if vals and start is not None:
            pick = (max if exp["mode"] == "max" else min)(vals, key=lambda r: r[metric])
            best.append((tid, (pick["timestamp"] - start) / 60, float(pick[metric])))
    if best:
        parts.append(
            figs.make(
                "best_so_far",
                f"Best validation {metric[4:]} so far against wall-clock time (red), "
                "and each trial's best epoch at the time it was reported (blue).",
                P.best_so_far,
                best,
                exp["mode"],
                metric,
            )
        )
    if study is None:
        parts.append(H.para(msg, "note"))
        return H.section("Optimisation history", *parts, anchor="history")
    from optuna.visualization import matplotlib as OM

    parts.append(H.para(msg))
    target = f"best {metric}"
    parts.append(
        figs.make(
            "optuna_history",
            "Optuna: each trial's value and the best so far, by trial number.",
            P.optuna_figure,
            OM.plot_optimization_history,
            study,
            target_name=target,
        )
    )
    params = _common_params(study)
    if len(params) >= 2:
        parts.append(
            figs.make(
                "optuna_parallel",
                "Optuna: parallel coordinates of the hyperparameters present in "
                "every trial, each line one trial, coloured by its value.",
                P.optuna_figure,
                OM.plot_parallel_coordinate,
                study,
                params=params,
                target_name=target,
            )
        )
    if params:
        parts.append(
            figs.make(
                "optuna_slice",
                "Optuna: the value against each hyperparameter (colour: trial "
                "number, later = darker).",
                P.optuna_figure,
                OM.plot_slice,
                study,
                params=params[:8],
                target_name=target,
            )
        )
    return H.section("Optimisation history", *parts, anchor="history")


def importance_section(ctx: dict, figs, study, msg: str) -> str:
    exp = ctx["exp"]
    if study is None:
        return H.section("Hyperparameter importance", H.para(msg, "note"), anchor="importance")
    import optuna

    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except Exception as exc:  # fANOVA on a degenerate sweep (one value per parameter...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return H.section(
            "Hyperparameter importance",
            H.para(f"Hyperparameter importance could not be computed: {first[:240]}", "note"),
            anchor="importance",
        )
    if not imp:
        return H.section(
            "Hyperparameter importance",
            H.para("No hyperparameter was sampled in every trial.", "note"),
            anchor="importance",
        )
    n = len(study.trials)
    text = (
        f"fANOVA importance of each hyperparameter for {exp['key']} (each trial's best "
        f"epoch, the value the sweep ranks by) over {n} trials; only parameters present in "
        "every trial (per-architecture ones drop out when the architecture varied)."
    )
    if n < 10:
        text += f" With {n} trials these numbers are very rough."
    return H.section(
        "Hyperparameter importance",
        H.para(text),
        figs.make(
            "param_importance",
            "Hyperparameter importance (fANOVA, sums to 1).",
            P.importance_bars,
            dict(imp),
            title=f"importance for {exp['key']}",
        ),
        H.table(["parameter", "importance"], [[k, float(v)] for k, v in imp.items()]),
        anchor="importance",
    )


def sweep_sections(ctx: dict, figs) -> list[tuple[str, object]]:
    """(name, thunk) steps for write_report: context, curves, history, importance."""
    ctx.setdefault("histories", trial_histories(ctx["exp"]))
    cache: dict = {}

    def study():
        if "s" not in cache:
            try:
                cache["s"] = ranked_study(ctx["exp"])
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                cache["s"] = (None, f"The Optuna study could not be read: {first[:240]}")
        return cache["s"]

    return [
        ("context", lambda: context_section(ctx)),
        ("curves", lambda: curves_section(ctx, figs)),
        ("history", lambda: history_section(ctx, figs, *study())),
        ("importance", lambda: importance_section(ctx, figs, *study())),
    ]
