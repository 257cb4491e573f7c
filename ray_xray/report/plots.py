"""Matplotlib (Agg) figures for both reports; every function writes one small PNG to `path`
(atomically) and returns it."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from ..io import atomic_path  # noqa: E402

DPI = 100
GOOD, BAD = "#1a7f37", "#cf222e"


def _save(fig, path: Path) -> Path:
    """Write `fig` to `path` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def learning_curves(curves: list[dict], metric: str, path: Path) -> Path:
    """Every trial's per-epoch train loss, val loss and val `metric`, one panel each.

    curves: {"label", "highlight" (bool: drawn in colour and named in the legend; the others
    thin grey), "epoch": [...], "train_loss": [...], "val_loss": [...], metric: [...]}.
    Train below val loss while val rises = over-fitting; a short line = stopped early (ASHA).
    """
    keys = ("train_loss", "val_loss", metric)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    grey_done = False
    for c in sorted(curves, key=lambda c: c["highlight"]):  # highlighted ones drawn on top
        for ax, key in zip(axes, keys, strict=True):
            if not c.get(key) or not np.isfinite(np.asarray(c[key], float)).any():
                continue
            if c["highlight"]:
                ax.plot(c["epoch"], c[key], marker="o", ms=3, lw=1.6, label=c["label"])
            else:
                label = None if grey_done or ax is not axes[0] else "other trials"
                ax.plot(c["epoch"], c[key], c="#8c959f", lw=0.8, alpha=0.6, label=label)
        grey_done = grey_done or not c["highlight"]
    for ax, title in zip(
        axes, ("training loss", "validation loss", f"validation {metric[4:]}"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            fontsize=7,
            loc="upper center",
            ncol=min(len(labels), 6),
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
        )
    fig.tight_layout()
    return _save(fig, path)


def best_so_far(trials: list[tuple[str, float, float]], mode: str, metric: str, path: Path) -> Path:
    """The sweep's best value so far against wall-clock minutes since it started.

    trials: (trial id, minutes when the trial reported its best, that best value).
    """
    trials = sorted(trials, key=lambda t: t[1])
    xs = np.array([t[1] for t in trials], float)
    ys = np.array([t[2] for t in trials], float)
    best = np.maximum.accumulate(ys) if mode == "max" else np.minimum.accumulate(ys)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.scatter(xs, ys, s=18, c="#4c72b0", label="a trial's best epoch")
    ax.step(xs, best, where="post", c=BAD, lw=1.5, label="best so far")
    ax.set_xlabel("minutes since the sweep's first trial started")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if mode == "max" else "upper right")
    return _save(fig, path)


def optuna_figure(plot_fn, study, path: Path, **kw) -> Path:
    """One of optuna.visualization.matplotlib's plots (history, parallel coordinates, slice)
    saved as a PNG; `kw` goes to the plot function (params=, target_name=)."""
    import warnings

    # rc_context: Optuna switches matplotlib to its ggplot style globally, which would grey
    # every later figure of the report; the context restores the settings on exit.
    # matplotlib logs "Using categorical units ..." at INFO, through the root handler, for every
    # categorical parameter whose choices look like numbers (batch_size 16/32/64).
    category_log = logging.getLogger("matplotlib.category")
    level = category_log.level
    category_log.setLevel(logging.WARNING)
    try:
        with plt.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            ax = plot_fn(study, **kw)
            if isinstance(ax, np.ndarray) and ax.size > 1:
                fig = _panels_in_rows(list(ax.flat))
            else:
                fig = ax.figure
                _spread_axes(fig)
            return _save(fig, path)
    finally:
        category_log.setLevel(level)


# The report shows figures at most 1100 px wide (report/html.py): at DPI 100 a wider figure is
# scaled down, and its text with it. Optuna lays every parameter side by side (one row of slice
# panels, one parallel-coordinates axis each), so ten parameters overlapped their labels.
REPORT_WIDTH_IN = 11.0
PANELS_PER_ROW = 4


def _panels_in_rows(axes: list) -> plt.Figure:
    """Optuna's one row of per-parameter panels (slice plot) rearranged PANELS_PER_ROW to a row,
    at the report's width; its colour bar keeps the right edge. Returns the figure."""
    fig = axes[0].figure
    cols = min(PANELS_PER_ROW, len(axes))
    rows = -(-len(axes) // cols)
    grid = fig.add_gridspec(rows, cols, left=0.07, right=0.9, hspace=0.55, wspace=0.12)
    for i, ax in enumerate(axes):
        ax.set_subplotspec(grid[i // cols, i % cols])
        ax.tick_params(labelsize=8)
        if ax.get_xscale() == "log":  # 3x10^-4, 4x10^-4 ... overlapped in a narrow panel
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_ylabel(ax.get_ylabel() if i % cols == 0 else "")
    for other in fig.axes:
        if other not in axes:  # the colour bar
            other.set_position([0.92, 0.15, 0.015, 0.7])
    fig.set_size_inches(REPORT_WIDTH_IN, 2.6 * rows + 0.6)
    return fig


def _spread_axes(fig) -> None:
    """A one-axes Optuna figure (history, parallel coordinates) at the report's width; the
    parallel-coordinates plot's one twin axis per parameter gets about an inch each."""
    n_axes = len(fig.axes)
    width = min(REPORT_WIDTH_IN, max(7.0, 1.1 * n_axes))
    fig.set_size_inches(width, 4.2 if n_axes > 3 else 3.8)
    for ax in fig.axes:
        ax.tick_params(labelsize=8)


def importance_bars(importances: dict[str, float], path: Path, title: str) -> Path:
    """Horizontal bars of parameter -> importance (fractions summing to 1), largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    ax.set_xlabel("importance (fraction of explained variance)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def pareto(
    points: list[tuple[str, float, float]], front: list[bool], labels: tuple[str, str], path: Path
) -> Path:
    """Trials (name, objective 1, objective 2) as points, those with `front` True in red joined
    by a step line (the Pareto front); `labels` name the two axes."""
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = np.array([p[1] for p in points])
    ys = np.array([p[2] for p in points])
    mask = np.array(front, dtype=bool)
    ax.scatter(xs[~mask], ys[~mask], c="#999999", s=25, label="dominated trial")
    ax.scatter(xs[mask], ys[mask], c=BAD, s=40, label="Pareto front")
    order = np.argsort(xs[mask])
    ax.plot(xs[mask][order], ys[mask][order], c=BAD, lw=1, drawstyle="steps-post")
    for name, x, y in points:
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def confusion_matrices(
    panels: list[tuple[str, list[list[int]]]], classes: list[str], path: Path
) -> Path:
    """Confusion matrices side by side: panels are (title, int (K, K) counts, rows = true
    class); each cell shows its count and row percentage, shaded by the percentage."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (title, cm) in zip(axes, panels, strict=True):
        cm = np.asarray(cm)
        rows = cm.sum(1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{frac[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(classes)), [c[:12] for c in classes], rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), [c[:12] for c in classes], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _inset(ax, lines: list[tuple], xlim: tuple, ylim: tuple, where: list[float]) -> None:
    """A zoomed copy of `lines` ((x, y, colour)) so curves that hug a corner stay apart."""
    ins = ax.inset_axes(where)
    for x, y, colour in lines:
        ins.plot(x, y, c=colour, lw=1.2)
    ins.set_xlim(*xlim)
    ins.set_ylim(*ylim)
    ins.tick_params(labelsize=6)
    ins.grid(alpha=0.3)
    ax.indicate_inset_zoom(ins, edgecolor="#57606a")


def roc_pr(
    y: np.ndarray,
    prob: np.ndarray,
    classes: list[str],
    path: Path,
    title: str,
    zoom_above: float = 0.97,
) -> Path:
    """One-vs-rest ROC and PR per class. When every class's AUC is >= `zoom_above` the curves
    hug the top-left (ROC) / top-right (PR) corner; each panel then gets a zoomed inset of
    that corner, so the per-class lines can be told apart."""
    from sklearn.metrics import roc_auc_score

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    roc_lines, pr_lines, aucs = [], [], []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, c in enumerate(classes):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        colour = colours[k % len(colours)]
        fpr, tpr, _ = roc_curve(pos, prob[:, k])
        auc = roc_auc_score(pos, prob[:, k])
        aucs.append(auc)
        a1.plot(fpr, tpr, c=colour, label=f"{c} (AUC {auc:.3f})")
        prec, rec, _ = precision_recall_curve(pos, prob[:, k])
        a2.plot(rec, prec, c=colour, label=f"{c} (prevalence {pos.mean():.2f})")
        roc_lines.append((fpr, tpr, colour))
        pr_lines.append((rec, prec, colour))
    a1.plot([0, 1], [0, 1], ls="--", c="#999999", lw=1, label="chance")
    a1.set_xlabel("1 - specificity (false-positive rate)")
    a1.set_ylabel("sensitivity (recall)")
    a1.set_title(f"ROC, one-vs-rest: {title}", fontsize=9)
    a2.set_xlabel("recall")
    a2.set_ylabel("precision")
    a2.set_title(f"precision-recall: {title}", fontsize=9)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left" if ax is a2 else "lower right")
    if aucs and min(aucs) >= zoom_above:
        _inset(a1, roc_lines, (0.0, 0.1), (0.9, 1.002), [0.3, 0.35, 0.4, 0.4])
        _inset(a2, pr_lines, (0.9, 1.002), (0.9, 1.002), [0.12, 0.35, 0.4, 0.4])
    fig.tight_layout()
    return _save(fig, path)


def _reliability_panel(ax, title: str, b: dict, e: float) -> None:
    """One reliability diagram on `ax`: accuracy bars per used bin, the gap to the bin's mean
    confidence hatched, the diagonal, and each bin's count over its bar."""
    edges = b["edges"]
    width = edges[1] - edges[0]
    used = b["count"] > 0
    ax.bar(
        edges[:-1][used],
        b["accuracy"][used],
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy in bin",
    )
    # The gap is an outline, not a tint: where confidence is below accuracy it lies over the
    # blue bar, and a translucent fill would make a third colour the legend does not show.
    ax.bar(
        edges[:-1][used],
        b["confidence"][used] - b["accuracy"][used],
        bottom=b["accuracy"][used],
        width=width,
        align="edge",
        facecolor="none",
        edgecolor=BAD,
        hatch="////",
        lw=0.8,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", c="#333333", lw=1, label="perfect calibration")
    for x, n, top in zip(
        edges[:-1][used],
        b["count"][used],
        np.fmax(b["accuracy"][used], b["confidence"][used]),
        strict=True,
    ):
        ax.text(
            x + width / 2,
            min(top + 0.02, 0.97),
            f"{int(n)}",
            ha="center",
            va="bottom",
            fontsize=5.5,
            color="#333333",
            rotation=90,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_title(f"{title}\nECE {e:.3f}, n = {int(b['count'].sum())}", fontsize=9)


def reliability(panels: list[tuple[str, dict, float]], path: Path) -> Path:
    """panels: (title, calibration.reliability_bins(...), ece). The number over each bar is
    how many cases fell in that bin (a bar of 3 cases says little)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (title, b, e) in zip(axes, panels, strict=True):
        _reliability_panel(ax, title, b, e)
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    # Below the panels: inside one it would cover the bin counts of the top bars.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        fontsize=7,
        loc="upper center",
        ncol=3,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _save(fig, path)


def sample_grid(cases: list[dict], n_cols: int, path: Path) -> Path:
    """cases: {"image": HxW uint8, "title": str, "correct": bool}, row-major."""
    n_rows = max(1, -(-len(cases) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.1 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases, strict=False):
        if case is None:
            continue
        ax.imshow(case["image"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(case["title"], fontsize=7, color=GOOD if case["correct"] else BAD)
    fig.tight_layout()
    return _save(fig, path)


def heatmap_grid(
    rows: list[list[dict | None]],
    row_labels: list[str],
    path: Path,
    col_labels: list[str] | None = None,
) -> Path:
    """rows of cases {"image", "map" (HxW in [0,1]), "title", "correct"}; None = empty cell."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.1 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            case = row[j] if j < len(row) else None
            if case is None:
                ax.text(0.5, 0.5, "no case", ha="center", va="center", fontsize=7, color="#777")
                for s in ax.spines.values():
                    s.set_visible(False)
            else:
                ax.imshow(case["image"], cmap="gray", vmin=0, vmax=255)
                ax.imshow(case["map"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                ax.set_title(case["title"], fontsize=7, color=GOOD if case["correct"] else BAD)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if col_labels and i == 0 and j < len(col_labels) and case is not None:
                ax.set_xlabel(col_labels[j], fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def row_attention_grid(cases: list[dict], n_cols: int, path: Path) -> Path:
    """LSTM row attention: each case {"image", "rows" (H,), "title", "correct"}; a bar per row
    beside the image, the longest bar = the row the model weighted most."""
    n_rows = max(1, -(-len(cases) // n_cols))
    fig = plt.figure(figsize=(2.6 * n_cols, 2.2 * n_rows))
    grid = fig.add_gridspec(n_rows, 2 * n_cols, width_ratios=[3, 1] * n_cols, wspace=0.05)
    for k, case in enumerate(cases):
        r, c = divmod(k, n_cols)
        ax_img = fig.add_subplot(grid[r, 2 * c])
        ax_bar = fig.add_subplot(grid[r, 2 * c + 1], sharey=ax_img)
        h = case["image"].shape[0]
        ax_img.imshow(case["image"], cmap="gray", vmin=0, vmax=255, aspect="auto")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_title(case["title"], fontsize=7, color=GOOD if case["correct"] else BAD)
        ax_bar.barh(np.arange(h), case["rows"], height=1.0, color="#dd8452")
        ax_bar.set_ylim(h - 0.5, -0.5)
        ax_bar.set_xlim(0, 1.05)
        ax_bar.set_xticks([])
        ax_bar.tick_params(labelleft=False, left=False)
    return _save(fig, path)


def cam_triplets(rows: list[list[dict | None]], row_labels: list[str], path: Path) -> Path:
    """Grad-CAM as original / heat map / overlay: rows of cases {"image" HxW uint8, "map" HxW in
    [0, 1], "title", "correct"}, each case three panels wide; None = an empty case."""
    n_rows, per_row = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, 3 * per_row, figsize=(1.5 * 3 * per_row, 1.75 * n_rows), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, row in enumerate(rows):
        axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j in range(per_row):
            case = row[j] if j < len(row) else None
            a0, a1, a2 = axes[i, 3 * j : 3 * j + 3]
            if case is None:
                a1.text(0.5, 0.5, "no case", ha="center", va="center", fontsize=7, color="#777")
                continue
            a0.imshow(case["image"], cmap="gray", vmin=0, vmax=255)
            a1.imshow(case["map"], cmap="jet", vmin=0, vmax=1)
            a2.imshow(case["image"], cmap="gray", vmin=0, vmax=255)
            a2.imshow(case["map"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            a1.set_title(case["title"], fontsize=6, color=GOOD if case["correct"] else BAD)
            if i == 0:
                for ax, name in zip((a0, a2), ("original", "overlay"), strict=True):
                    ax.set_xlabel(name, fontsize=6)
                a1.set_xlabel("heat map", fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def stress_curves(rows: list[dict], metric: str, path: Path, title: str = "") -> Path:
    """One line per perturbation: `metric` against severity (0 = clean, shared by all).
    rows: {"perturbation", "severity", metric: float} (stress.run_stress's rows)."""
    clean = next(r[metric] for r in rows if r["severity"] == 0)
    names = list(dict.fromkeys(r["perturbation"] for r in rows if r["severity"] > 0))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        pts = [(0, clean)] + [(r["severity"], r[metric]) for r in rows if r["perturbation"] == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("severity (0 = unchanged)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, path)
