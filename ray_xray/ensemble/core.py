"""`run_ensemble(exp_dir)`: the K best trials of a finished sweep -> calibrated members ->
ensembles chosen on validation -> ensemble.pt, metrics.json, comparison.csv, report.html."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..calibration import apply_temperature, ece, fit_temperature, nll
from ..checkpoint import (
    ENSEMBLE_FILE,
    data_key,
    ensemble_record,
    load_checkpoint,
    load_keyed_data,
    preprocess,
    save_ensemble,
)
from ..data import ImageDataset
from ..data.dataset import loader as make_loader
from ..device import pick_device
from ..inference import ensemble_proba, inference_setup, predict_proba
from ..io import json_safe, write_atomic
from ..scores import SENSITIVITIES, SPECIFICITIES, operating_points, report, stored_points
from ..sweep_folder import read_experiment, relocate
from .checks import check_top_k
from .select import greedy_select, mean_weights, score_weights

ENSEMBLE_METHODS = {
    "greedy": "greedy forward selection with replacement (Caruana et al., 2004) on validation NLL",
    "mean": "equal-weight mean of calibrated member probabilities",
    "weighted": "mean weighted by each member's validation macro-F1",
}


def log(msg: str) -> None:
    """One `ensemble: ...` progress line on stderr."""
    print(f"ensemble: {msg}", file=sys.stderr, flush=True)


@dataclass
class Member:
    """One of the sweep's top-k trials as an ensemble member: its model record, where it
    ranked, and its validation/test probabilities, float64 (N, K): raw, then calibrated at
    `temperature`."""

    name: str
    trial_id: str
    model_name: str
    rank: int
    sweep_metric: float
    record: dict
    data_key: tuple
    trial_dir: Path | None
    val_raw: np.ndarray = field(repr=False, default=None)
    test_raw: np.ndarray = field(repr=False, default=None)
    temperature: float = 1.0
    val_prob: np.ndarray = field(repr=False, default=None)
    test_prob: np.ndarray = field(repr=False, default=None)

    @property
    def config(self) -> dict:
        """The member's TrainConfig as a dict (its record's "config")."""
        return self.record["config"]


# ---------------------------------------------------------------- reading the sweep


def rank_trials(exp: dict) -> pd.DataFrame:
    """Usable trials (not ERROR, a finite objective, a checkpoint on disk), best first."""
    t = exp["table"].copy()
    t["_metric"] = pd.to_numeric(t[exp["key"]], errors="coerce")
    t["_ckpt"] = [
        relocate(c, exp["exp_dir"], str(tid))
        for c, tid in zip(t["checkpoint_path"], t["trial_id"], strict=True)
    ]
    ok = (t["status"] != "ERROR") & t["_metric"].notna() & t["_ckpt"].notna()
    ok &= np.isfinite(t["_metric"].fillna(np.nan).astype(float))
    ranked = t[ok].sort_values("_metric", ascending=exp["mode"] == "min", kind="stable")
    return ranked.reset_index(drop=True)


def load_member_data(members: list[Member], spec: str, cache: str | None) -> dict:
    """One load_data per distinct (img_size, limit, seed, ...); val/test must line up."""
    datas = {}
    for m in members:
        if m.data_key in datas:
            continue
        img_size, limit, seed = m.data_key[:3]
        log(f"loading {spec} at {img_size}px (limit {limit or 'none'}, seed {seed})")
        datas[m.data_key] = load_keyed_data(spec, m.data_key, m.record["classes"], cache)
    ref = next(iter(datas.values()))
    for key, d in datas.items():
        if d.classes != ref.classes:
            raise ValueError(f"members disagree on classes: {d.classes} vs {ref.classes}")
        for split in ("val", "test"):
            same = np.array_equal(d.labels[split], ref.labels[split])
            if same and any(ref.paths[split]) and d.paths[split] != ref.paths[split]:
                same = False
            if not same:
                raise ValueError(
                    f"the {split} split differs between members (img_size {key[0]} vs "
                    f"{ref.img_size}): they were trained with different limit_per_split/seed"
                )
    for m in members:
        if list(m.record["classes"]) != ref.classes:
            raise ValueError(f"trial {m.trial_id}: classes {m.record['classes']} != {ref.classes}")
    return datas


def member_probabilities(record: dict, data, device: torch.device, batch_size: int = 256):
    """{"val"|"test": (labels (N,), float64 probabilities (N, K))} of one member, with the
    member's own training-split normalisation (what predict uses), even on --data."""
    model, feed, precision, channels_last = inference_setup(record, device)
    out = {}
    for split in ("val", "test"):
        loader = make_loader(
            ImageDataset(data.images[split], data.labels[split]), batch_size, device=device
        )
        y, prob, _ = predict_proba(model, loader, device, precision, channels_last, feed=feed)
        out[split] = (y, prob.astype(np.float64))
    return out


# ---------------------------------------------------------------- ensembles


def build_ensembles(members: list[Member], y_val: np.ndarray, classes: list[str]) -> dict:
    """{"greedy" | "mean" | "weighted": {"method", "description", "weights", "val_prob",
    "test_prob" (float64 (N, K), `inference.ensemble_proba`), "val_nll", ...}}: the three
    ways to weight the calibrated members, each chosen on validation only (y_val (N,) int)."""
    val = [m.val_prob for m in members]
    f1 = [report(y_val, m.val_prob, classes)["macro_f1"] for m in members]
    greedy = greedy_select(y_val, val)
    ens = {
        "greedy": {
            "weights": greedy["weights"],
            "counts": greedy["counts"],
            "history": greedy["history"],
        },
        "mean": {"weights": mean_weights(len(members))},
        "weighted": {"weights": score_weights(f1)},
    }
    for name, e in ens.items():
        e["method"] = name
        e["description"] = ENSEMBLE_METHODS[name]
        e["val_prob"] = ensemble_proba(val, e["weights"])
        e["test_prob"] = ensemble_proba([m.test_prob for m in members], e["weights"])
        e["val_nll"] = nll(y_val, e["val_prob"])
    return ens


def choose(ensembles: dict) -> str:
    """The ensemble with the lowest validation NLL (ties: the first, i.e. greedy)."""
    best = None
    for name, e in ensembles.items():
        if best is None or e["val_nll"] < ensembles[best]["val_nll"] - 1e-12:
            best = name
    return best


# ---------------------------------------------------------------- outputs


clean = json_safe  # one JSON-safe converter: ray_xray/io.py


def comparison_rows(metrics: dict, classes: list[str]) -> list[dict]:
    """One flat row per member and per ensemble of `metrics` (metrics.json's dict): name,
    kind, model, temperature, weight, validation macro-F1/NLL and the test figures (accuracy,
    F1, AUC, PR-AP, ECE, NLL, ...) the comparison table and CSV show."""
    rows = []
    entries = [("member", m) for m in metrics["members"]]
    entries += [("ensemble", e) for e in metrics["ensembles"]]
    for kind, e in entries:
        test = e["test"]
        row = {
            "name": e["name"],
            "kind": kind,
            "model": e.get("model", ""),
            "trial_id": e.get("trial_id", ""),
            "temperature": e.get("temperature"),
            "chosen_weight": e.get("chosen_weight"),
            "val_macro_f1": e["val"]["macro_f1"],
            "val_nll": e["val"]["nll"],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "test_weighted_f1": test["weighted_f1"],
            "test_auc": test["auc"],
            "test_pr_ap": test["pr_ap_macro"],
            "test_ece": test["ece"],
            "test_nll": test["nll"],
            "test_ece_uncalibrated": e.get("uncalibrated", {}).get("test_ece"),
            "test_nll_uncalibrated": e.get("uncalibrated", {}).get("test_nll"),
        }
        for c in classes:
            row[f"test_recall_{c}"] = test["recall"][c]
        rows.append(row)
    return rows


def agreement_and_origin(metrics: dict, spec: str) -> None:
    """Add how validation and test rank the members, and how the val split was made."""
    from ..report.agreement import val_origin, val_test_agreement

    members = metrics["members"]
    agreement = val_test_agreement(
        [e["name"] for e in members],
        [e["val"]["macro_f1"] for e in members],
        [e["test"]["macro_f1"] for e in members],
    )
    metrics["val_test_agreement"], metrics["val_origin"] = agreement, val_origin(spec)
    if agreement["warning"]:
        log(f"warning: {agreement['warning']}")


def check_targets(specificities: tuple[float, ...], sensitivities: tuple[float, ...]) -> None:
    """Refuse (ValueError) an operating-point target outside (0, 1)."""
    for target in (*specificities, *sensitivities):
        if not 0 < float(target) < 1:
            raise ValueError(f"operating-point targets must be in (0, 1), got {target}")


def load_members(ranked: pd.DataFrame, top_k: int, exp_path: Path) -> list[Member]:
    """The first `top_k` trials of `ranked` (`rank_trials`) whose checkpoint loads, ranked 1..;
    a damaged checkpoint costs one member (said on stderr), not the run. Raises ValueError
    when none loads."""
    members: list[Member] = []
    for row in ranked.to_dict("records"):
        if len(members) == top_k:
            break
        tid = str(row["trial_id"])
        try:
            record = load_checkpoint(row["_ckpt"])
        except ValueError as exc:  # a damaged checkpoint costs one member, not the run
            log(f"skipping trial {tid}: {exc}")
            continue
        rank = len(members) + 1
        members.append(
            Member(
                name=f"{record['model']}:{tid}",
                trial_id=tid,
                model_name=record["model"],
                rank=rank,
                sweep_metric=float(row["_metric"]),
                record=record,
                data_key=data_key(record),
                trial_dir=relocate(row.get("trial_dir"), exp_path, tid)
                or (exp_path / tid if (exp_path / tid).is_dir() else None),
            )
        )
    if not members:
        raise ValueError(f"{exp_path}: no trial checkpoint could be loaded")
    return members


def calibrate_members(
    members: list[Member], datas: dict, dev: torch.device, y_val: np.ndarray, y_test: np.ndarray
) -> None:
    """Each member's raw val/test probabilities (float64 (N, K)), its temperature fitted on
    validation NLL (`calibration.fit_temperature`) and its calibrated probabilities, set on
    the member; one progress line each. `datas`: `load_member_data`'s; `y_val`/`y_test`
    (N,) int labels every member's predictions must line up with."""
    for m in members:
        t1 = time.perf_counter()
        probs = member_probabilities(m.record, datas[m.data_key], dev)
        assert np.array_equal(probs["val"][0], y_val) and np.array_equal(probs["test"][0], y_test)
        m.val_raw, m.test_raw = probs["val"][1], probs["test"][1]
        m.temperature = fit_temperature(y_val, m.val_raw)
        m.val_prob = apply_temperature(m.val_raw, m.temperature)
        m.test_prob = apply_temperature(m.test_raw, m.temperature)
        log(
            f"#{m.rank} {m.name}: val NLL {nll(y_val, m.val_raw):.4f} -> "
            f"{nll(y_val, m.val_prob):.4f} at T={m.temperature:.3f} "
            f"({time.perf_counter() - t1:.1f}s)"
        )


@dataclass(frozen=True)
class Targets:
    """What every model's metrics are computed on: the labels (N,) int of val and test, the
    class names, and the operating-point targets in (0, 1)."""

    y_val: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    specificities: tuple[float, ...]
    sensitivities: tuple[float, ...]

    def metrics(self, val_prob: np.ndarray, test_prob: np.ndarray) -> dict:
        """{"val", "test", "operating_points"} of one model's (N, K) probabilities; intervals
        on test only: that is where the reported figures come from."""
        yv, yt = self.y_val, self.y_test
        return {
            "val": report(yv, val_prob, self.classes),
            "test": report(yt, test_prob, self.classes, intervals=True),
            "operating_points": operating_points(
                yv, val_prob, yt, test_prob, self.classes, self.specificities, self.sensitivities
            ),
        }


def member_entries(members: list[Member], weights: list[float], key: str, on: Targets) -> list:
    """metrics.json's "members": each member's rank, sweep metric (`key`), temperature, input
    size, weight in the chosen ensemble (`weights`), uncalibrated NLL/ECE and its metrics."""
    out = []
    for m, weight in zip(members, weights, strict=True):
        out.append(
            {
                "name": m.name,
                "trial_id": m.trial_id,
                "model": m.model_name,
                "rank": m.rank,
                f"sweep_{key}": m.sweep_metric,
                "temperature": m.temperature,
                **{k: preprocess(m.record)[k] for k in ("img_size", "in_chans")},
                "chosen_weight": weight,
                "uncalibrated": {
                    "val_nll": nll(on.y_val, m.val_raw),
                    "val_ece": ece(on.y_val, m.val_raw),
                    "test_nll": nll(on.y_test, m.test_raw),
                    "test_ece": ece(on.y_test, m.test_raw),
                },
                **on.metrics(m.val_prob, m.test_prob),
            }
        )
    return out


def ensemble_entries(members: list[Member], ensembles: dict, chosen: str, on: Targets) -> list:
    """metrics.json's "ensembles": each method's description, whether chosen, its weights by
    member name, greedy's selection history, and its metrics."""
    out = []
    for name, e in ensembles.items():
        entry = {
            "name": f"ensemble_{name}",
            "method": name,
            "description": e["description"],
            "chosen": name == chosen,
            "weights": {m.name: w for m, w in zip(members, e["weights"], strict=True)},
            **on.metrics(e["val_prob"], e["test_prob"]),
        }
        if "history" in e:
            entry["greedy_history"] = [
                {**h, "added": members[h["added"]].name} for h in e["history"]
            ]
        out.append(entry)
    return out


def save_chosen(
    members: list[Member], chosen: str, weights: list[float], metrics: dict, path: Path
) -> Path:
    """ensemble.pt of the `chosen` method: only the members it gives weight (`weights`, one per
    member), each with its temperature, weights renormalised to sum 1, and the chosen
    ensemble's operating points from `metrics` (metrics.json's record: also the experiment,
    data and classes) for predict's --operating-point. Returns the path written (atomically)."""
    keep = [(m, w) for m, w in zip(members, weights, strict=True) if w > 0]
    records = [{**m.record, "temperature": float(m.temperature)} for m, _ in keep]
    total = sum(w for _, w in keep)
    points = next(e for e in metrics["ensembles"] if e["chosen"])["operating_points"]
    obj = ensemble_record(
        records,
        [w / total for _, w in keep],
        chosen,
        metrics["classes"],
        extra={
            "member_names": [m.name for m, _ in keep],
            "experiment": metrics["experiment"],
            "data": metrics["data"],
            "description": ENSEMBLE_METHODS[chosen],
            "operating_points": stored_points(points),
        },
    )
    ens_path = save_ensemble(obj, path)
    log(f"saved {ens_path} ({len(keep)} member(s), method {chosen})")
    return ens_path


def run_ensemble(
    exp_dir: str | Path,
    top_k: int = 5,
    data: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    report_html: bool = True,
    specificities: tuple[float, ...] = SPECIFICITIES,
    sensitivities: tuple[float, ...] = SENSITIVITIES,
    external=None,
) -> dict:
    """Ensemble the top_k trials of a finished sweep; write ensemble.pt + report to `out`.

    `exp_dir`: the sweep's folder; `data`: its data spec (default: sweep.json's); `out`: the
    output folder (default EXP/ensemble); `device`: "auto", "cpu" or "cuda"; `report_html`:
    False skips report.html. `external`: None, or a callable given the saved ensemble.pt path
    once the members, their temperatures and the ensemble are fixed on validation; the dict it
    returns is stored as metrics.json's "external" and drawn as the report's 'External sets'
    section (a sweep's --external: ray_xray/tune/external.py). It cannot change what was
    chosen.

    `specificities` / `sensitivities`: the operating-point targets in (0, 1) (thresholds fixed
    on validation; the chosen ensemble's are stored in ensemble.pt for predict's
    --operating-point). Returns {"out", "ensemble", "report", "metrics", "comparison", "chosen",
    "summary", "timings" (seconds), "external" (what `external` returned, else None)}. Raises
    ValueError on bad input (not a sweep, no usable trial, misaligned data, a target outside
    (0, 1)).
    """
    check_targets(specificities, sensitivities)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    top_k = check_top_k(top_k)
    exp = read_experiment(exp_dir)
    dev = pick_device(device)
    ranked, members, spec, datas = _members_and_data(exp, top_k, data, timings)
    ref = next(iter(datas.values()))
    on = Targets(ref.labels["val"], ref.labels["test"], ref.classes, specificities, sensitivities)
    t0 = time.perf_counter()
    calibrate_members(members, datas, dev, on.y_val, on.y_test)
    timings["predict_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ensembles, chosen, metrics = _ensembles_and_metrics(exp, members, on, spec, top_k)
    timings["ensemble_s"] = time.perf_counter() - t0
    out_dir = Path(out).expanduser() if out else exp["exp_dir"] / "ensemble"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = ensembles[chosen]["weights"]
    ens_path = save_chosen(members, chosen, weights, metrics, out_dir / ENSEMBLE_FILE)
    if external is not None:  # after everything was chosen and saved: reported, never used
        metrics["external"] = external(ens_path)
    write_tables(metrics, on.classes, out_dir)
    metrics["timings"] = timings  # the report adds report_s; total_s comes last
    report_path = None
    if report_html:
        report_path = _write_html_report(
            exp, members, ensembles, chosen, metrics, datas, on, out_dir
        )
    timings["total_s"] = time.perf_counter() - t_start
    write_atomic(out_dir / "metrics.json", json.dumps(clean(metrics), indent=2))
    log(f"done in {timings['total_s']:.1f}s -> {out_dir}")
    return _result(out_dir, ens_path, report_path, chosen, metrics, timings)


def _members_and_data(
    exp: dict, top_k: int, data: str | None, timings: dict
) -> tuple[pd.DataFrame, list[Member], str, dict]:
    """The sweep's usable trials ranked, the top `top_k` loaded as members, the data spec
    (`data`, else sweep.json's, else the first member's) and the members' data loaded
    (`timings["data_s"]`, seconds). Raises ValueError: no usable trial, no data."""
    exp_path: Path = exp["exp_dir"]
    ranked = rank_trials(exp)
    if ranked.empty:
        raise ValueError(f"{exp_path}: no finished trial with a checkpoint to ensemble")
    log(
        f"{len(ranked)} usable trial(s) of {len(exp['table'])}; taking the top "
        f"{min(top_k, len(ranked))} by {exp['key']} ({exp['mode']})"
    )
    members = load_members(ranked, top_k, exp_path)
    spec = data or exp["options"].get("data") or members[0].config.get("data")
    if not spec:
        raise ValueError("no data: the sweep has no sweep.json; pass --data")
    t0 = time.perf_counter()
    datas = load_member_data(members, spec, exp["options"].get("cache") or None)
    timings["data_s"] = time.perf_counter() - t0
    return ranked, members, spec, datas


def _ensembles_and_metrics(
    exp: dict, members: list[Member], on: Targets, spec: str, top_k: int
) -> tuple[dict, str, dict]:
    """The three ensembles (`build_ensembles`), the one chosen on validation NLL (`choose`),
    and metrics.json's record of members and ensembles (no timings, no external yet)."""
    ensembles = build_ensembles(members, on.y_val, on.classes)
    chosen = choose(ensembles)
    log(
        "ensembles (val NLL): "
        + ", ".join(f"{k} {e['val_nll']:.4f}" for k, e in ensembles.items())
        + f"; chosen: {chosen}"
    )
    exp_path: Path = exp["exp_dir"]
    metrics = {
        "experiment": exp_path.name,
        "experiment_dir": str(exp_path),
        "data": spec,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "classes": on.classes,
        "objective": exp["objective"],
        "ranking_metric": exp["key"],
        "top_k": int(top_k),
        "n_members": len(members),
        "n_val": int(len(on.y_val)),
        "n_test": int(len(on.y_test)),
        "calibration": "temperature scaling per member: T minimising validation NLL "
        "(bounded Brent search on 1/T in [0.02, 50]; NLL is convex in 1/T)",
        "ece_bins": 15,
        "chosen": f"ensemble_{chosen}",
        "members": member_entries(members, ensembles[chosen]["weights"], exp["key"], on),
        "ensembles": ensemble_entries(members, ensembles, chosen, on),
    }
    agreement_and_origin(metrics, spec)
    return ensembles, chosen, metrics


def write_tables(metrics: dict, classes: list[str], out_dir: Path) -> pd.DataFrame:
    """comparison.csv (`comparison_rows`, returned as a DataFrame) and metrics.json (`metrics`
    made JSON-safe) in `out_dir`, each written atomically."""
    comp = pd.DataFrame(comparison_rows(metrics, classes))
    write_atomic(out_dir / "comparison.csv", comp.to_csv(index=False, float_format="%.6g"))
    write_atomic(out_dir / "metrics.json", json.dumps(clean(metrics), indent=2))
    return comp


def _write_html_report(exp, members, ensembles, chosen, metrics, datas, on, out_dir) -> Path:
    """report.html in `out_dir` (ray_xray/report), from what run_ensemble computed; its seconds
    go to metrics["timings"]["report_s"]."""
    from ..report import SweepReport, write_report

    t0 = time.perf_counter()
    report = SweepReport(
        experiment=exp,
        members=members,
        ensembles=ensembles,
        chosen=chosen,
        metrics=metrics,
        datas=datas,
        y_test=on.y_test,
        classes=on.classes,
        out=out_dir,
        log=log,
    )
    path = write_report(report)
    metrics.setdefault("timings", {})["report_s"] = time.perf_counter() - t0
    return path


def _result(
    out_dir: Path, ens_path: Path, report_path, chosen: str, metrics: dict, timings: dict
) -> dict:
    """run_ensemble's return value: the files written and a short summary of the best member
    and the chosen ensemble."""
    best = metrics["members"][0]
    chosen_test = next(e["test"] for e in metrics["ensembles"] if e["chosen"])
    return {
        "out": str(out_dir),
        "ensemble": str(ens_path),
        "metrics": str(out_dir / "metrics.json"),
        "comparison": str(out_dir / "comparison.csv"),
        "report": str(report_path) if report_path else None,
        "chosen": f"ensemble_{chosen}",
        "summary": {
            "best_member": {
                "name": best["name"],
                "test_macro_f1": best["test"]["macro_f1"],
                "test_ece_uncalibrated": best["uncalibrated"]["test_ece"],
            },
            "ensemble": {
                "name": f"ensemble_{chosen}",
                "test_macro_f1": chosen_test["macro_f1"],
                "test_ece": chosen_test["ece"],
            },
        },
        "timings": timings,
        "external": metrics.get("external"),
    }
