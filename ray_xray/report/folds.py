"""The report of a `--cv` sweep's fold ensemble (`EXP/ensemble/report.html`): how the
configuration was selected (folds, their sizes, every candidate's fold values, mean and spread),
then the fold ensemble's out-of-fold and test figures side by side, with the warnings where they
disagree, and the shared confusion and ROC/PR figures.

Input is what `ray_xray.ensemble.folds` already computed (its metrics.json dict and the test
probabilities): this module renders, it never trains, loads a model or reads an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration import reliability_bins
from ..scores import headline_cis
from . import html
from .inputs import log_to_stderr
from .sections import (
    INTERVAL_HEADERS,
    OPERATING_HEADERS,
    Figures,
    calibration_section,
    confusion_section,
    interval_rows,
    operating_rows,
    render_sections,
    roc_section,
    write_page,
)


def _fmt_values(values: list) -> str:
    return ", ".join("-" if v is None else f"{v:.4f}" for v in values)


def selection_section(
    selection: dict, fold_sizes: list[int] | None, search_trials: int | None
) -> str:
    """How the configuration was chosen: K folds over train+val (sizes of each held-out fold),
    the search stage ranked on fold 0, then every candidate on all K folds, chosen by the best
    mean of the validation metric; one row per candidate with its fold values, mean and sd."""
    k, metric = selection["folds"], selection["metric"]
    chosen = selection["chosen"]["candidate"]
    sizes = ", ".join(str(s) for s in fold_sizes) if fold_sizes else "not recorded"
    how = (
        f"{k}-fold cross-validation over train+val (stratified by class, grouped by patient "
        f"where ids exist; held-out fold sizes: {sizes}). The search stage"
        + (f" ({search_trials} trials)" if search_trials is not None else "")
        + f" ranked every trial on fold 0; its best {len(selection['candidates'])} "
        f"configuration(s) then ran on all {k} folds, and the best mean {metric} "
        f"({selection['mode']}) over the folds was chosen. No test image was read."
    )
    reused = selection.get("reused_search_runs") or {}
    if reused:
        which = ", ".join(
            f"candidate {i} (trial {t})" for i, t in sorted(reused.items(), key=lambda x: int(x[0]))
        )
        how += (
            f" Fold 0 of {which} is its search run, which had run all its epochs on that same "
            "fold with the same settings and seed, so it was not trained again."
        )
    rows, classes = [], []
    for c in selection["candidates"]:
        cfg = c.get("config") or {}
        rows.append(
            [
                f"candidate {c['candidate']} ({cfg.get('model', '?')})",
                _fmt_values(c["fold_values"]),
                c["mean"],
                c["std"],
                "yes" if c["complete"] else "no (a fold missing)",
            ]
        )
        classes.append("chosen" if c["candidate"] == chosen else "")
    headers = ["configuration", f"{metric} per fold", "mean", "sd", "every fold"]
    return html.section(
        "How the configuration was selected",
        html.para(how),
        html.table(headers, rows, row_classes=classes, digits=4),
        anchor="selection",
    )


def members_text(metrics: dict) -> str:
    """Which configurations' fold models the ensemble holds: the chosen one, and each next one
    with the out-of-fold NLL of the mean with it and whether it joined (it joins only when
    that NLL is lower)."""
    rows = metrics.get("configurations") or []
    if len(rows) < 2:
        return "the chosen configuration's"  # K fold models
    parts = [f"candidate {rows[0]['candidate']} (chosen; out-of-fold NLL {rows[0]['oof_nll']:.4f})"]
    for r in rows[1:]:
        nll = "-" if r["oof_nll"] is None else f"{r['oof_nll']:.4f}"
        verdict = "joined" if r["kept"] else "left out"
        parts.append(f"candidate {r['candidate']} ({verdict}: out-of-fold NLL with it {nll})")
    return "; ".join(parts)


def kind(metrics: dict) -> str:
    """ "refit ensemble" (tune --refit-seeds) or "fold ensemble": what the report is of."""
    return "refit ensemble" if "fold_ensemble_test" in metrics else "fold ensemble"


def figures_section(metrics: dict) -> str:
    """Out-of-fold (validation) against test: accuracy, macro-F1, AUC (test with their 95 %
    intervals, `scores.headline_cis`), and every warning where the two disagree; beside a
    refit ensemble, the fold ensemble's test figures too."""
    oof, test = metrics["oof"], metrics["test"]
    folds = metrics.get("fold_ensemble_test")
    keys = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("AUC", "auc"))
    rows = [
        [name, oof.get(key), html.ci(test.get(key), headline_cis(test).get(key))]
        for name, key in keys
    ]
    headers = ["metric", "out of fold (validation)", "test [95 % interval]"]
    text = (
        f"The ensemble is the equal-weight mean of {metrics['n_members']} fold models, each "
        f"temperature-scaled on its own held-out fold; they are {members_text(metrics)}."
    )
    if folds:
        for row, (_, key) in zip(rows, keys, strict=True):
            row.append(html.ci(folds.get(key), headline_cis(folds).get(key)))
        headers = [*headers[:2], "refit ensemble, test", "fold ensemble, test (fold_ensemble.pt)"]
        text = (
            f"The ensemble is the equal-weight mean of {metrics['n_members']} refits of the chosen "
            "configuration on all of train+val (one per seed, each at the mean temperature of its "
            "fold models: a refit has no held-out images). The out-of-fold column is the chosen "
            "configuration's fold models'; the fold ensemble is kept beside it and scored too."
        )
    parts = [
        html.para(f"{text} It was saved before the {metrics['n_test']} test images were scored."),
        html.table(headers, rows),
    ]
    parts += [html.para(f"warning: {w}", "warn") for w in metrics.get("warnings", [])]
    title = f"{kind(metrics).capitalize()}: out of fold and test"
    return html.section(title, *parts, anchor="figures")


def operating_points_section(metrics: dict) -> str:
    """Each class's thresholds fixed on the out-of-fold predictions (target specificity or
    sensitivity) and what they give on test, with Wilson intervals: the points ensemble.pt
    stores for `predict --operating-point`."""
    return html.section(
        "Operating points",
        html.para(
            "For each class, the threshold on that class's probability fixed on the out-of-fold "
            "predictions (every image scored by the fold models that never trained on it) to "
            "reach a target specificity (the lowest such threshold) or sensitivity (the highest), "
            "and what that threshold gives on test, with Wilson 95% intervals. They are stored "
            "in ensemble.pt: python -m ray_xray.predict ensemble.pt IMAGE --operating-point "
            "CLASS@NAME applies one. The 'val' columns are out of fold."
        ),
        html.table(OPERATING_HEADERS, operating_rows(metrics, metrics["classes"])),
        anchor="operating-points",
    )


def per_class_section(metrics: dict) -> str:
    """Per class on test: sensitivity, specificity, precision (Wilson), ROC-AUC (bootstrap),
    PR-AP."""
    return html.section(
        "Uncertainty per class",
        html.para(
            "Sensitivity, specificity and precision are one-vs-rest at the argmax decision, "
            "with Wilson 95% intervals and their k/n; ROC-AUC per class with a stratified "
            "bootstrap 95% interval; PR-AP is the average precision (prevalence is its chance "
            "level)."
        ),
        html.table(INTERVAL_HEADERS, interval_rows(metrics["test"], metrics["classes"])),
        anchor="intervals",
    )


def write_fold_report(
    out: Path,
    metrics: dict,
    y_test: np.ndarray,
    p_test: np.ndarray,
    search_trials: int | None = None,
    log=log_to_stderr,
) -> Path:
    """EXP/ensemble/report.html of a fold ensemble. metrics: run_fold_ensemble's metrics.json
    dict; y_test int (N,), p_test float (N, K) the ensemble's test probabilities. Returns the
    page's path; a section that fails becomes a note in the page (sections.render_sections)."""
    figs, classes, what = Figures(out, log), metrics["classes"], kind(metrics)
    steps = [
        (
            "selection",
            lambda: selection_section(
                metrics["selection"], metrics.get("fold_val_sizes"), search_trials
            ),
        ),
        ("figures", lambda: figures_section(metrics)),
        (
            "confusion",
            lambda: confusion_section(
                figs,
                "Confusion matrix (test)",
                f"{what.capitalize()} on the test split; rows are the true class.",
                [("test", metrics["test"]["confusion"])],
                classes,
            ),
        ),
        (
            "roc",
            lambda: roc_section(
                figs,
                f"One-vs-rest curves of the {what} on test.",
                y_test,
                p_test,
                classes,
                "test",
            ),
        ),
        ("operating points", lambda: operating_points_section(metrics)),
        ("intervals", lambda: per_class_section(metrics)),
        (
            "calibration",
            lambda: calibration_section(
                figs,
                f"Reliability of the {what} on test (members temperature-scaled as above).",
                [(what, reliability_bins(y_test, p_test), metrics["test"]["ece"])],
            ),
        ),
    ]
    body = [html.para(f"{what.capitalize()} of {metrics['experiment']}", "meta")]
    body += render_sections(steps, log)
    return write_page(
        out,
        f"{metrics['experiment']}: {kind(metrics)}",
        body,
        "ensemble.pt, metrics.json, figures/",
    )
