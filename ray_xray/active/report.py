"""What an active-learning run leaves behind: rounds.csv, results.json, summary.csv, the
learning curve, and the side-by-side table on the console."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..io import write_atomic

# The index lists live in results.json only: they would make the CSV unreadable.
LIST_KEYS = ("initial_idx", "queried_idx")


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = [k for k in rows[0] if k not in LIST_KEYS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    # Sample std (ddof=1): the spread over seeds, 0 when there is only one seed.
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(rows: list[dict], focus: str, baseline: str = "random") -> list[dict]:
    """Mean and std over seeds per (strategy, round), and the paired difference to random.

    Paired: the difference is taken seed by seed (same initial pool, same training seeds), which
    removes the seed-to-seed noise that both strategies share.
    """
    metrics = {
        "accuracy": "test_accuracy",
        "macro_f1": "test_macro_f1",
        "focus_f1": f"test_f1_{focus}",
    }
    by = {(r["strategy"], r["seed"], r["round"]): r for r in rows}
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for rnd in sorted({r["round"] for r in rows if r["strategy"] == strategy}):
            group = [r for r in rows if r["strategy"] == strategy and r["round"] == rnd]
            s = {
                "strategy": strategy,
                "round": rnd,
                "n_labelled": group[0]["n_labelled"],
                "n_seeds": len(group),
            }
            for name, key in metrics.items():
                s[f"{name}_mean"], s[f"{name}_std"] = _mean_std([g[key] for g in group])
            if strategy != baseline:
                pairs = [(g, by.get((baseline, g["seed"], rnd))) for g in group]
                pairs = [(g, b) for g, b in pairs if b is not None]
                for name, key in metrics.items():
                    if pairs:
                        d = [g[key] - b[key] for g, b in pairs]
                        s[f"d_{name}_mean"], s[f"d_{name}_std"] = _mean_std(d)
                    else:
                        s[f"d_{name}_mean"] = s[f"d_{name}_std"] = float("nan")
            out.append(s)
    return out


def learning_curve(summary: list[dict], focus: str, path: Path) -> None:
    """Macro-F1 and focus-class F1 vs labelled count, one line per strategy (mean +- std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    for ax, (name, title) in zip(
        axes, (("macro_f1", "test macro-F1"), ("focus_f1", f"test F1: {focus}")), strict=True
    ):
        for strategy in strategies:
            pts = sorted(
                (s for s in summary if s["strategy"] == strategy), key=lambda s: s["n_labelled"]
            )
            x = np.array([p["n_labelled"] for p in pts])
            m = np.array([p[f"{name}_mean"] for p in pts])
            sd = np.array([p[f"{name}_std"] for p in pts])
            style = {"color": "0.45", "linestyle": "--"} if strategy == "random" else {}
            n = pts[0]["n_seeds"]
            (line,) = ax.plot(x, m, marker="o", ms=3.5, label=f"{strategy} (n={n})", **style)
            if n > 1:
                lo, hi = np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1)  # F1 lives in [0, 1]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel("labelled training images")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Active learning vs random at the same label budget (mean +- 1 sd over seeds)", fontsize=10
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_outputs(
    out: Path, rows: list[dict], summary: list[dict], meta: dict, plot: bool = True
) -> None:
    """All result files; called after every finished run, so a crash keeps what was done."""
    out = Path(out)
    order = sorted(
        rows, key=lambda r: (r["strategy"] == "random", r["strategy"], r["seed"], r["round"])
    )
    write_atomic(out / "rounds.csv", _csv(order))
    write_atomic(out / "summary.csv", _csv(summary))
    doc = {**meta, "summary": summary, "rows": order}
    write_atomic(out / "results.json", json.dumps(doc, indent=1, default=float))
    if plot and summary:
        learning_curve(summary, meta["focus_class"], out / "learning_curve.png")


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f}±{std:.3f}" if n > 1 else f"{mean:.3f}"


def table(summary: list[dict], focus: str) -> str:
    """One line per round, strategies side by side: macro-F1 and focus F1 (and the paired
    difference to random)."""
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    by = {(s["strategy"], s["round"]): s for s in summary}
    short = focus[:4]
    head = f"{'round':>5} {'labels':>6}"
    for st in strategies:
        head += f" | {st + ' F1':>12} {short + '-F1':>12}"
        if st != "random":
            head += f" {'dF1':>7} {'d' + short:>7}"
    lines = [head, "-" * len(head)]
    for rnd in sorted({s["round"] for s in summary}):
        first = by.get((strategies[0], rnd))
        line = f"{rnd:>5} {first['n_labelled'] if first else '':>6}"
        for st in strategies:
            s = by.get((st, rnd))
            if s is None:
                continue
            n = s["n_seeds"]
            line += f" | {_pm(s['macro_f1_mean'], s['macro_f1_std'], n):>12}"
            line += f" {_pm(s['focus_f1_mean'], s['focus_f1_std'], n):>12}"
            if st != "random":
                line += f" {s['d_macro_f1_mean']:>+7.3f} {s['d_focus_f1_mean']:>+7.3f}"
        lines.append(line)
    lines.append(
        f"(mean±sd over seeds; d = paired difference to random at the same seed and label count;"
        f" {short} = {focus})"
    )
    return "\n".join(lines)
