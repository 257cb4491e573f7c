"""The sweep's own story in the report: what was run and what ended it, every trial's learning
curves, the optimisation history (Optuna's matplotlib views plus best-so-far against time) and
hyperparameter importance, all on the value the sweep ranks by (each trial's best epoch, as in
results.parquet), not on Optuna's record of a trial's last reported value: an ASHA-stopped
trial's last epoch is its 3rd, a finished one's its 10th, and those are not comparable.

Also every trial ranked (with the hyperparameters that varied) and, for a multi-objective sweep,
the Pareto front. Each section reads a `SweepReport` and the trials' per-epoch logs
(`sweep_folder.read_trial_histories`), which `sweep_steps` reads once."""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from ..sweep_folder import read_trial_histories, study_url
from . import html, plots
from .inputs import SweepReport
from .sections import Figures, training_curves_section

# "workers": the old name of num_workers, still in the results of sweeps run before the rename
HIDDEN_CONFIG = {"model", "data", "seed", "num_workers", "workers", "device", "precision"}
HIDDEN_CONFIG |= {"_threads", "_cache"}

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


def _split_counts_text(counts: dict) -> str:
    """'train: normal 30, ... · val: ... · test: ...' from `PreparedData.counts()`."""
    return " · ".join(
        f"{split}: " + ", ".join(f"{c} {n}" for c, n in counts[split].items())
        for split in ("train", "val", "test")
        if split in counts
    )


def context_section(rep: SweepReport, histories: dict[str, list[dict]]) -> str:
    """Command, budget, what ended the sweep, trial counts, class counts per split, versions."""
    exp, m = rep.experiment, rep.metrics
    opts, sweep = exp["options"], exp.get("sweep") or {}
    counts = trial_counts(exp)
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
    data = rep.datas[rep.members[0].data_key]
    objective = ", ".join(exp["objective"]) + f" (ranked by {exp['key']}, each trial's best epoch)"
    pairs = [
        (
            "command",
            f"<code>{html.esc(sweep.get('command') or '(not recorded: no sweep.json)')}</code>",
        ),
        ("budget", html.esc(budget)),
        ("what ended it", html.esc(what_ended(opts, counts, minutes))),
        ("trials", html.esc(trials)),
        ("sweep wall time", html.esc(wall_time_text(sweep, minutes))),
        ("objective", html.esc(objective)),
        ("data", f"<code>{html.esc(m['data'])}</code>"),
        ("images per class and split", html.esc(_split_counts_text(data.counts()))),
        (
            "validation split",
            html.esc(
                "as the data gives it; a source whose val split holds fewer than 5% of train's "
                "images gets one carved from train (stratified, grouped by patient id when file "
                "names carry one)"
            ),
        ),
        (
            "software (at report time)",
            html.esc(", ".join(f"{k} {v}" for k, v in versions().items())),
        ),
    ]
    return html.section("Sweep context", html.definitions(pairs), anchor="context")


# ---------------------------------------------------------------- every trial


def _key_params(table, limit: int = 8) -> list[str]:
    """The config/ columns whose value varied between trials (most often set first)."""
    cols = []
    for c in table.columns:
        if not c.startswith("config/") or c[len("config/") :] in HIDDEN_CONFIG:
            continue
        vals = table[c].dropna().astype(str)
        if vals.nunique() > 1:
            cols.append((-len(vals), c))
    return [c for _, c in sorted(cols)[:limit]]


def _param_cell(v):
    """A hyperparameter as the trials table shows it."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return int(v)  # an int column that pandas widened to float for its gaps
    return v


def trial_section(rep: SweepReport) -> str:
    """Every trial ranked by the sweep's metric (failed ones last), its varied
    hyperparameters, whether it is in the ensemble pool, and its error."""
    exp = rep.experiment
    table, key, mode = exp["table"], exp["key"], exp["mode"]
    t = table.copy()
    t["_m"] = t[key].astype(float)
    t["_bad"] = t["_m"].isna() | (t["status"] == "ERROR")
    t = t.sort_values(["_bad", "_m"], ascending=[True, mode == "min"], kind="stable")
    params = _key_params(table)
    member_ids = {mm.trial_id for mm in rep.members}
    headers = ["rank", "trial", "model", "status", "epochs", key.replace("best_", "best ")]
    headers += [p[len("config/") :] for p in params] + ["in ensemble pool", "error"]
    rows = []
    for rank, r in enumerate(t.to_dict("records"), start=1):
        row = [rank, str(r["trial_id"]), r.get("model"), r["status"], r.get("epochs"), r["_m"]]
        row += [_param_cell(r.get(p)) for p in params]
        err = r.get("error")
        row += [
            "yes" if str(r["trial_id"]) in member_ids else "",
            err[:120] if isinstance(err, str) else "",
        ]
        rows.append([v.item() if hasattr(v, "item") else v for v in row])
    cap = html.para(
        f"Every trial of the sweep, ranked by {key[5:]} on validation "
        f"({'higher' if mode == 'max' else 'lower'} is better; failed trials last). Trials stopped "
        "early by ASHA have fewer epochs. Columns after the metric are the hyperparameters that "
        "varied between trials; '–' means the parameter does not apply to that architecture. "
        f"The top {len(member_ids)} usable trials form the ensemble pool."
    )
    return html.section("Trials", cap, html.table(headers, rows, small_sig=True), anchor="trials")


def curves_section(rep: SweepReport, histories: dict[str, list[dict]], figs: Figures) -> str:
    """Every trial's training curves (train loss, val loss, the first objective per epoch),
    the ensemble pool in colour."""
    metric = rep.experiment["objective"][0]
    members = {mm.trial_id: f"#{mm.rank} {mm.name}" for mm in rep.members}
    curves = []
    for tid, rows in histories.items():
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
        return html.section("Training curves", html.para("No per-epoch logs (result.json) found."))
    cap = (
        f"Every trial with a log ({len(curves)}): training loss, validation loss and validation "
        f"{metric[4:]} per epoch. The ensemble pool is in colour (named below), the rest grey. A "
        "line that ends early is a trial ASHA stopped; training loss falling while validation "
        "loss rises is over-fitting."
    )
    return training_curves_section(figs, cap, curves, metric, anchor="curves")


# ---------------------------------------------------------------- Pareto front


def pareto_mask(points: np.ndarray, modes: list[str]) -> list[bool]:
    """True for points no other point dominates (>= on every objective, > on one).

    points: float (N, M), one row per trial; modes: "max"/"min" per objective (M)."""
    signed = points * np.array([1.0 if m == "max" else -1.0 for m in modes])
    mask = []
    for i in range(len(signed)):
        dominated = np.any(np.all(signed >= signed[i], axis=1) & np.any(signed > signed[i], axis=1))
        mask.append(not dominated)
    return mask


def _best_pairs(objective: list[str], histories: dict[str, list[dict]]):
    """(trial ids, [best of objective[0], best of objective[1]]) of the trials that logged both."""
    from ..metrics import metric_mode

    names, values = [], []
    for tid, rows in histories.items():
        best = []
        for metric in objective[:2]:
            vals = [
                float(x[metric])
                for x in rows
                if isinstance(x.get(metric), int | float) and math.isfinite(x[metric])
            ]
            best.append((max if metric_mode(metric) == "max" else min)(vals) if vals else None)
        if None not in best:
            names.append(tid)
            values.append(best)
    return names, values


def pareto_section(rep: SweepReport, histories: dict[str, list[dict]], figs: Figures) -> str:
    """A multi-objective sweep's trials on its first two objectives (each trial's best epoch
    from result.json), the Pareto front in red; "" for a single objective."""
    from ..metrics import metric_mode

    objective = rep.experiment["objective"]
    if len(objective) < 2:
        return ""
    names, values = _best_pairs(objective, histories)
    if len(values) < 2:
        return html.section(
            "Pareto front",
            html.para(
                f"Multi-objective sweep ({', '.join(objective)}) but fewer than 2 trials have both "
                "metrics logged: no front to draw.",
                "note",
            ),
        )
    modes = [metric_mode(x) for x in objective[:2]]
    mask = pareto_mask(np.array(values, dtype=float), modes)
    cap = (
        f"Each trial's best validation {objective[0]} ({modes[0]}imise) against its best "
        f"{objective[1]} ({modes[1]}imise), from result.json; red points are not beaten on "
        "both at once by any other trial (the Pareto front)."
    )
    rows = [
        [n, v[0], v[1], "yes" if f else ""] for n, v, f in zip(names, values, mask, strict=True)
    ]
    points = [(n, v[0], v[1]) for n, v in zip(names, values, strict=True)]
    return html.section(
        "Pareto front",
        figs.make("pareto", cap, plots.pareto, points, mask, (objective[0], objective[1])),
        html.table(["trial", objective[0], objective[1], "on front"], rows),
        anchor="pareto",
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


def best_epochs_in_time(histories: dict[str, list[dict]], metric: str, mode: str) -> list:
    """[(trial id, minutes since the first trial started, its best `metric`)] from result.json
    rows (timestamps in unix seconds, time_total_s in seconds); [] without timestamps."""
    start = None
    for rows in histories.values():
        for r in rows:
            if _finite(r.get("timestamp")) and _finite(r.get("time_total_s")):
                t0 = r["timestamp"] - r["time_total_s"]
                start = t0 if start is None else min(start, t0)
    best = []
    for tid, rows in histories.items():
        vals = [r for r in rows if _finite(r.get(metric)) and _finite(r.get("timestamp"))]
        if vals and start is not None:
            pick = (max if mode == "max" else min)(vals, key=lambda r: r[metric])
            best.append((tid, (pick["timestamp"] - start) / 60, float(pick[metric])))
    return best


def optuna_views(study, metric: str, figs: Figures) -> list[str]:
    """Optuna's own matplotlib views of `study` (valued by `metric`): the optimisation history,
    then parallel coordinates and slices over the parameters every trial has."""
    from optuna.visualization import matplotlib as optuna_plots

    target = f"best {metric}"
    parts = [
        figs.make(
            "optuna_history",
            "Optuna: each trial's value and the best so far, by trial number.",
            plots.optuna_figure,
            optuna_plots.plot_optimization_history,
            study,
            target_name=target,
        )
    ]
    params = _common_params(study)
    if len(params) >= 2:
        parts.append(
            figs.make(
                "optuna_parallel",
                "Optuna: parallel coordinates of the hyperparameters present in "
                "every trial, each line one trial, coloured by its value.",
                plots.optuna_figure,
                optuna_plots.plot_parallel_coordinate,
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
                plots.optuna_figure,
                optuna_plots.plot_slice,
                study,
                params=params[:8],
                target_name=target,
            )
        )
    return parts


def history_section(
    rep: SweepReport, histories: dict[str, list[dict]], figs: Figures, study, msg: str
) -> str:
    """Best value so far against wall-clock time, then Optuna's views of `study` (None: `msg`
    says why there are none)."""
    exp = rep.experiment
    metric = exp["key"][5:]
    parts = []
    best = best_epochs_in_time(histories, metric, exp["mode"])
    if best:
        parts.append(
            figs.make(
                "best_so_far",
                f"Best validation {metric[4:]} so far against wall-clock time (red), "
                "and each trial's best epoch at the time it was reported (blue).",
                plots.best_so_far,
                best,
                exp["mode"],
                metric,
            )
        )
    if study is None:
        parts.append(html.para(msg, "note"))
    else:
        parts += [html.para(msg), *optuna_views(study, metric, figs)]
    return html.section("Optimisation history", *parts, anchor="history")


def importance_section(rep: SweepReport, figs: Figures, study, msg: str) -> str:
    """fANOVA hyperparameter importance (Optuna's evaluator, seeded) for the ranked value."""
    key = rep.experiment["key"]
    if study is None:
        return html.section(
            "Hyperparameter importance", html.para(msg, "note"), anchor="importance"
        )
    import optuna

    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except Exception as exc:  # fANOVA on a degenerate sweep (one value per parameter...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return html.section(
            "Hyperparameter importance",
            html.para(f"Hyperparameter importance could not be computed: {first[:240]}", "note"),
            anchor="importance",
        )
    if not imp:
        return html.section(
            "Hyperparameter importance",
            html.para("No hyperparameter was sampled in every trial.", "note"),
            anchor="importance",
        )
    n = len(study.trials)
    text = (
        f"fANOVA importance of each hyperparameter for {key} (each trial's best "
        f"epoch, the value the sweep ranks by) over {n} trials; only parameters present in "
        "every trial (per-architecture ones drop out when the architecture varied)."
    )
    if n < 10:
        text += f" With {n} trials these numbers are very rough."
    return html.section(
        "Hyperparameter importance",
        html.para(text),
        figs.make(
            "param_importance",
            "Hyperparameter importance (fANOVA, sums to 1).",
            plots.importance_bars,
            dict(imp),
            title=f"importance for {key}",
        ),
        html.table(["parameter", "importance"], [[k, float(v)] for k, v in imp.items()]),
        anchor="importance",
    )


def sweep_steps(rep: SweepReport, figs: Figures) -> dict[str, object]:
    """{name: thunk} of the sweep-only sections: context, trials, curves, history, importance,
    pareto. The trials' logs are read once here; when they cannot be read, the sections drawn
    from them are left out (one `rep.log` line) and the trials table stays. The Optuna study is
    read once, on first use (a study that cannot be read is a note in its sections)."""
    try:
        histories = read_trial_histories(rep.experiment)
    except Exception as exc:  # unreadable trial logs cost these sections, not the report
        rep.log(f"sweep sections failed: {type(exc).__name__}: {exc}")
        return {"trials": lambda: trial_section(rep)}
    cache: dict = {}

    def study():
        """(study, message) of `ranked_study`, read on the first call."""
        if "s" not in cache:
            try:
                cache["s"] = ranked_study(rep.experiment)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                cache["s"] = (None, f"The Optuna study could not be read: {first[:240]}")
        return cache["s"]

    return {
        "context": lambda: context_section(rep, histories),
        "trials": lambda: trial_section(rep),
        "curves": lambda: curves_section(rep, histories, figs),
        "history": lambda: history_section(rep, histories, figs, *study()),
        "importance": lambda: importance_section(rep, figs, *study()),
        "pareto": lambda: pareto_section(rep, histories, figs),
    }
