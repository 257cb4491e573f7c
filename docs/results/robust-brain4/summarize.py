"""Tables of the robust-brain4 comparison, from each run's `evaluate` metrics.json.

Usage: python docs/results/robust-brain4/summarize.py runs/robust-brain4
Runs are folders `<variant>-s<seed>/eval/metrics.json`; a variant's row gives each seed's value
and their mean. "stress" = macro-F1 on `evaluate --stress`'s stratified subset, clean and
averaged over its 22 perturbed conditions (8 kinds, 3 severities, inversion 1).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def figures(m: dict) -> dict[str, float]:
    """One run's figures: test macro-F1 / AUC / meningioma recall, stress clean / mean / worst,
    and each perturbation kind's mean macro-F1."""
    h = m["headline"]
    rows = m["stress"]["rows"]
    hit = [r for r in rows if r["perturbation"] != "none"]
    out = {
        "test macro-F1": h["macro_f1"]["value"],
        "test AUC": h["auc"]["value"],
        "meningioma recall": h["recall_meningioma"]["value"],
        "stress clean": next(r["macro_f1"] for r in rows if r["perturbation"] == "none"),
        "stress mean": sum(r["macro_f1"] for r in hit) / len(hit),
        "stress worst": min(r["macro_f1"] for r in hit),
    }
    for kind in dict.fromkeys(r["perturbation"] for r in hit):
        vals = [r["macro_f1"] for r in hit if r["perturbation"] == kind]
        out[kind] = sum(vals) / len(vals)
    return out


def table(runs: dict[str, list[dict]], columns: list[str]) -> list[str]:
    lines = ["| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, per_seed in runs.items():
        cells = []
        for c in columns:
            vals = [f[c] for f in per_seed]
            each = " / ".join(f"{v:.3f}" for v in vals)
            cells.append(f"{sum(vals) / len(vals):.3f} ({each})" if len(vals) > 1 else each)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(root: str) -> None:
    runs: dict[str, list[dict]] = {}
    paths = sorted(Path(root).glob("*-s*/eval/metrics.json"), key=lambda p: p.stat().st_mtime)
    for path in paths:
        variant = re.sub(r"-s\d+$", "", path.parent.parent.name)
        runs.setdefault(variant, []).append(figures(json.loads(path.read_text())))
    if not runs:
        sys.exit(f"error: no <variant>-s<seed>/eval/metrics.json under {root}")
    head = [
        "test macro-F1",
        "test AUC",
        "meningioma recall",
        "stress clean",
        "stress mean",
        "stress worst",
    ]
    print("\n".join(table(runs, head)))
    kinds = [k for k in next(iter(runs.values()))[0] if k not in head]
    print("\n*stress: macro-F1 per kind of change (mean of its severities; mean over seeds)*\n")
    mean_only = {n: [{k: sum(f[k] for f in fs) / len(fs) for k in kinds}] for n, fs in runs.items()}
    print("\n".join(table(mean_only, kinds)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/robust-brain4")
