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
    preprocess,
    save_ensemble,
)
from ..data import ImageDataset, load_data
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
        img_size, limit, seed, dedupe, skip_bad, allow_leakage = m.data_key
        log(f"loading {spec} at {img_size}px (limit {limit or 'none'}, seed {seed})")
        datas[m.data_key] = load_data(
            spec,
            img_size,
            classes=list(m.record["classes"]),
            skip_bad=skip_bad,
            dedupe=dedupe,
            allow_leakage=allow_leakage,
            limit_per_split=limit,
            seed=seed,
            cache_root=cache,
        )
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

    `external`: None, or a callable given the saved ensemble.pt path once the members, their
    temperatures and the ensemble are fixed on validation; the dict it returns is stored as
    metrics.json's "external" and drawn as the report's 'External sets' section (a sweep's
    --external: ray_xray/tune/external.py). It cannot change what was chosen.

    `specificities` / `sensitivities`: the operating-point targets in (0, 1) (thresholds fixed
    on validation; the chosen ensemble's are stored in ensemble.pt for predict's
    --operating-point). Returns {"out", "ensemble", "report", "metrics", "comparison", "chosen",
    "summary", "timings", "external" (what `external` returned, else None)}. Raises
    ValueError on bad input (not a sweep, no usable trial, misaligned data, a target outside
    (0, 1)).
    """
    for target in (*specificities, *sensitivities):
        if not 0 < float(target) < 1:
            raise ValueError(f"operating-point targets must be in (0, 1), got {target}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    top_k = check_top_k(top_k)
    exp = read_experiment(exp_dir)
    exp_path: Path = exp["exp_dir"]
    dev = pick_device(device)
    ranked = rank_trials(exp)
    if ranked.empty:
        raise ValueError(f"{exp_path}: no finished trial with a checkpoint to ensemble")
    log(
        f"{len(ranked)} usable trial(s) of {len(exp['table'])}; taking the top "
        f"{min(top_k, len(ranked))} by {exp['key']} ({exp['mode']})"
    )

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
    spec = data or exp["options"].get("data") or members[0].config.get("data")
    if not spec:
        raise ValueError("no data: the sweep has no sweep.json; pass --data")
    cache = exp["options"].get("cache") or None
    t0 = time.perf_counter()
    datas = load_member_data(members, spec, cache)
    timings["data_s"] = time.perf_counter() - t0
    ref = next(iter(datas.values()))
    classes = ref.classes
    y_val, y_test = ref.labels["val"], ref.labels["test"]

    t0 = time.perf_counter()
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
    timings["predict_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ensembles = build_ensembles(members, y_val, classes)
    chosen = choose(ensembles)
    best = ensembles[chosen]
    log(
        "ensembles (val NLL): "
        + ", ".join(f"{k} {e['val_nll']:.4f}" for k, e in ensembles.items())
        + f"; chosen: {chosen}"
    )

    # ---- metrics
    def full(yv, pv, yt, pt):
        # Intervals on test only: that is where the reported figures come from.
        return {
            "val": report(yv, pv, classes),
            "test": report(yt, pt, classes, intervals=True),
            "operating_points": operating_points(
                yv, pv, yt, pt, classes, specificities, sensitivities
            ),
        }

    member_metrics = []
    for i, m in enumerate(members):
        entry = {
            "name": m.name,
            "trial_id": m.trial_id,
            "model": m.model_name,
            "rank": m.rank,
            f"sweep_{exp['key']}": m.sweep_metric,
            "temperature": m.temperature,
            **{k: preprocess(m.record)[k] for k in ("img_size", "in_chans")},
            "chosen_weight": best["weights"][i],
            "uncalibrated": {
                "val_nll": nll(y_val, m.val_raw),
                "val_ece": ece(y_val, m.val_raw),
                "test_nll": nll(y_test, m.test_raw),
                "test_ece": ece(y_test, m.test_raw),
            },
            **full(y_val, m.val_prob, y_test, m.test_prob),
        }
        member_metrics.append(entry)
    ens_metrics = []
    for name, e in ensembles.items():
        entry = {
            "name": f"ensemble_{name}",
            "method": name,
            "description": e["description"],
            "chosen": name == chosen,
            "weights": {m.name: w for m, w in zip(members, e["weights"], strict=True)},
            **full(y_val, e["val_prob"], y_test, e["test_prob"]),
        }
        if "history" in e:
            entry["greedy_history"] = [
                {**h, "added": members[h["added"]].name} for h in e["history"]
            ]
        ens_metrics.append(entry)
    timings["ensemble_s"] = time.perf_counter() - t0

    out_dir = Path(out).expanduser() if out else exp_path / "ensemble"
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    metrics = {
        "experiment": exp_path.name,
        "experiment_dir": str(exp_path),
        "data": spec,
        "created": created,
        "classes": classes,
        "objective": exp["objective"],
        "ranking_metric": exp["key"],
        "top_k": int(top_k),
        "n_members": len(members),
        "n_val": int(len(y_val)),
        "n_test": int(len(y_test)),
        "calibration": "temperature scaling per member: T minimising validation NLL "
        "(bounded Brent search on 1/T in [0.02, 50]; NLL is convex in 1/T)",
        "ece_bins": 15,
        "chosen": f"ensemble_{chosen}",
        "members": member_metrics,
        "ensembles": ens_metrics,
    }
    agreement_and_origin(metrics, spec)

    # ---- ensemble.pt: only members the chosen method gives weight
    keep = [(m, w) for m, w in zip(members, best["weights"], strict=True) if w > 0]
    records = [{**m.record, "temperature": float(m.temperature)} for m, _ in keep]
    total = sum(w for _, w in keep)
    obj = ensemble_record(
        records,
        [w / total for _, w in keep],
        chosen,
        classes,
        extra={
            "member_names": [m.name for m, _ in keep],
            "experiment": exp_path.name,
            "data": spec,
            "description": ENSEMBLE_METHODS[chosen],
            "operating_points": stored_points(
                ens_metrics[list(ensembles).index(chosen)]["operating_points"]
            ),
        },
    )
    ens_path = save_ensemble(obj, out_dir / ENSEMBLE_FILE)
    log(f"saved {ens_path} ({len(keep)} member(s), method {chosen})")
    if external is not None:  # after everything was chosen and saved: reported, never used
        metrics["external"] = external(ens_path)

    comp = pd.DataFrame(comparison_rows(metrics, classes))
    write_atomic(out_dir / "comparison.csv", comp.to_csv(index=False, float_format="%.6g"))

    write_atomic(out_dir / "metrics.json", json.dumps(clean(metrics), indent=2))
    report_path = None
    if report_html:
        from ..report import SweepReport, write_report

        t0 = time.perf_counter()
        report_path = write_report(
            SweepReport(
                experiment=exp,
                members=members,
                ensembles=ensembles,
                chosen=chosen,
                metrics=metrics,
                datas=datas,
                y_test=y_test,
                classes=classes,
                out=out_dir,
                log=log,
            )
        )
        timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    write_atomic(out_dir / "metrics.json", json.dumps(clean(metrics), indent=2))
    log(f"done in {timings['total_s']:.1f}s -> {out_dir}")

    chosen_test = ens_metrics[list(ensembles).index(chosen)]["test"]
    return {
        "out": str(out_dir),
        "ensemble": str(ens_path),
        "metrics": str(out_dir / "metrics.json"),
        "comparison": str(out_dir / "comparison.csv"),
        "report": str(report_path) if report_path else None,
        "chosen": f"ensemble_{chosen}",
        "summary": {
            "best_member": {
                "name": members[0].name,
                "test_macro_f1": member_metrics[0]["test"]["macro_f1"],
                "test_ece_uncalibrated": member_metrics[0]["uncalibrated"]["test_ece"],
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
