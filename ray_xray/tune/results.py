"""After a sweep: one table of every trial (Parquet + CSV), the top-k on test, a ranked printout."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from ..data import load_for_config
from ..io import atomic_path, write_atomic
from ..metrics import metric_mode
from ..train.engine import atomic_save
from ..train.run import evaluate_record
from ..train.worker import STATE_FILE


def _error_reason(result) -> str:
    """The one line that says why a trial failed (last line of the chained exception)."""
    if result.error is None:
        return ""
    text = str(result.error).strip().splitlines()
    lines = [ln.strip() for ln in text if ln.strip()]
    for ln in reversed(lines):
        if any(tag in ln for tag in ("Error", "Diverged", "Exception", "loss became")):
            return ln[:300]
    return (lines[-1] if lines else type(result.error).__name__)[:300]


def trial_rows(grid, objective: str, mode: str) -> list[dict]:
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        history = df.to_dict("records") if df is not None and len(df) else []
        last = history[-1] if history else {}
        values = [h.get(objective) for h in history if _finite(h.get(objective))]
        best = (max(values) if mode == "max" else min(values)) if values else None
        ckpts = [
            h.get("checkpoint_path") for h in history if isinstance(h.get("checkpoint_path"), str)
        ]
        config = dict(result.config or {})
        rows.append({
            "trial_id": Path(result.path).name,
            # INCOMPLETE: no error, but not one epoch reported (sweep stopped or budget ran out).
            "status": "ERROR" if result.error else ("TERMINATED" if history else "INCOMPLETE"),
            "error": _error_reason(result),
            "model": config.get("model"),
            "epochs": int(last.get("epoch") or 0),
            f"best_{objective}": best,
            "best_epoch": last.get("best_epoch"),
            "last_val_loss": last.get("val_loss"),
            "last_val_acc": last.get("val_acc"),
            "wall_s": last.get("time_total_s"),
            # Train+validate time; wall_s - compute_s is what Ray/Tune start-up cost this trial.
            "compute_s": sum(h.get("epoch_s") or 0.0 for h in history),
            "checkpoint_path": ckpts[-1] if ckpts else None,
            "trial_dir": result.path,
            "config": json.dumps(config, sort_keys=True, default=str),
            **{f"config/{k}": (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in config.items()},
        })  # fmt: skip
    return rows


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def load_record(checkpoint_path: str) -> dict:
    import torch

    state = torch.load(Path(checkpoint_path) / STATE_FILE, map_location="cpu", weights_only=True)
    return state["best"]


def finish(grid, exp_dir: str, space, opts, wall_s: float, local: bool) -> dict:
    objective = opts.objective[0]
    mode = metric_mode(objective)
    rows = trial_rows(grid, objective, mode)
    key = f"best_{objective}"
    ranked = sorted(
        (r for r in rows if _finite(r[key]) and r["checkpoint_path"]),
        key=lambda r: r[key], reverse=mode == "max",
    )  # fmt: skip
    top = []
    if ranked and local:
        datasets: dict[str, object] = {}  # one load per distinct data setting of the top-k
        for rank, row in enumerate(ranked[: opts.top_k], start=1):
            record = load_record(row["checkpoint_path"])
            cfg = record["config"]
            key_ = json.dumps(
                [cfg[k] for k in ("data", "img_size", "limit_per_split", "seed", "dedupe")]
            )
            if key_ not in datasets:
                datasets[key_] = load_for_config(cfg, opts.cache)
            data = datasets[key_]
            test, _, _ = evaluate_record(record, data, "test")
            row["test_macro_f1"], row["test_accuracy"], row["test_auc"] = (
                test["macro_f1"],
                test["accuracy"],
                test["auc"],
            )
            for c, v in test["recall"].items():
                row[f"test_recall_{c}"] = v
            top.append({"rank": rank, "trial_id": row["trial_id"], "model": row["model"], key: row[key],
                        "best_epoch": record.get("epoch"), "checkpoint": row["checkpoint_path"],
                        "config": record["config"], "test": test})  # fmt: skip
            if rank == 1:
                atomic_save(record, Path(exp_dir) / "best_model.pt")
    table = pd.DataFrame(rows)
    if local:
        out = Path(exp_dir)
        write_atomic(out / "results.csv", table.to_csv(index=False))
        write_atomic(out / "best_trials.json", json.dumps(top, indent=2, default=str))
        with atomic_path(out / "results.parquet") as tmp:  # last: it marks the sweep finished
            table.to_parquet(tmp, index=False)
    print_ranked(rows, key, mode, exp_dir, wall_s)
    return {"rows": rows, "top": top, "exp_dir": exp_dir, "wall_s": wall_s}


def print_ranked(rows: list[dict], key: str, mode: str, exp_dir: str, wall_s: float) -> None:
    order = sorted(
        rows,
        key=lambda r: (not _finite(r[key]), -(r[key] or 0) if mode == "max" else (r[key] or 0)),
    )
    print(
        f"\n{'rank':>4}  {'trial':<12} {'model':<14} {'status':<10} {'epochs':>6} {key:>18} {'test_macro_f1':>14}"
    )
    for i, r in enumerate(order, start=1):
        val = f"{r[key]:.4f}" if _finite(r[key]) else "-"
        test = f"{r['test_macro_f1']:.4f}" if _finite(r.get("test_macro_f1")) else ""
        print(
            f"{i:>4}  {r['trial_id']:<12} {str(r['model']):<14} {r['status']:<10} {r['epochs']:>6} {val:>18} {test:>14}"
        )
        if r["error"]:
            print(f"      reason: {r['error']}")
    n_err = sum(r["status"] == "ERROR" for r in rows)
    over = [r["wall_s"] - r["compute_s"] for r in rows if _finite(r["wall_s"])]
    if over:
        print(
            f"\nper-trial overhead (wall - train/val compute): median {sorted(over)[len(over) // 2]:.1f}s"
        )
    print(f"\n{len(rows)} trials ({n_err} failed) in {wall_s:.0f}s. Results: {exp_dir}/results.parquet, "
          f"best_trials.json, best_model.pt", file=sys.stdout)  # fmt: skip
