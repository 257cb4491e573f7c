"""report.html of one evaluation, rendered from an `EvalResult` (and the `Subject` it
evaluated). The evaluation-only sections (summary, metrics, shift check, operating points, stress
test, method) are here; the page, the figures and the sections the sweep report shows too
(confusion, ROC/PR, calibration, training curves, samples, Grad-CAM) come from
`ray_xray.report.sections`. The renderer stays beside its input: `EvalResult` and `Subject` are
this package's, and `ray_xray.report` never imports `evaluate` (evaluate calls it)."""

from __future__ import annotations

import math
from pathlib import Path

from ..report import html, plots, sections
from .result import POINTS_FIXED, EvalResult, metric_name
from .sources import Subject, run_history


def _ci(d: dict) -> str:
    """A headline entry {"value", "low", "high"} as its interval '0.871 – 0.950' ('–' without)."""
    if d["low"] is None or not math.isfinite(d["low"] if d["low"] is not None else math.nan):
        return "–"
    return f"{d['low']:.3f} – {d['high']:.3f}"


def eval_summary_section(r: EvalResult) -> str:
    """The opening paragraph: accuracy, macro-F1, AUC with intervals, recalls, ECE; then the
    result's warnings and notes."""
    h = r.headline
    what = (
        "the model's own data"
        if r.is_own_data
        else f"other data than it was trained on ({html.esc(r.own_data or 'unknown')})"
    )
    text = (
        f"<b>{html.esc(r.model)}</b> on <code>{html.esc(r.data)}</code>, split <b>{html.esc(r.split)}</b> "
        f"({r.n} images; {what}): accuracy <b>{h['accuracy']['value']:.3f}</b> "
        f"({_ci(h['accuracy'])}), macro-F1 <b>{h['macro_f1']['value']:.3f}</b> "
        f"({_ci(h['macro_f1'])}), ROC-AUC <b>{html.num(h['auc']['value'])}</b> ({_ci(h['auc'])}); "
        "recall "
        + ", ".join(
            f"{sections.class_html(c)} {html.num(h[f'recall_{c}']['value'])}" for c in r.classes
        )
        + f". ECE {r.metrics['ece']:.3f}. Brackets: 95% stratified bootstrap intervals "
        f"({r.bootstrap['resamples']} resamples)."
    )
    parts = [html.raw_para(text, "summary")]
    for w in r.warnings:
        parts.append(html.raw_para(f"<b>warning:</b> {html.esc(w)}", "note"))
    for n in r.notes:
        parts.append(html.para(f"note: {n}", "meta"))
    return "".join(parts)


def metrics_section(r: EvalResult) -> str:
    """The headline figures with their intervals, then the per-class table."""
    m, h = r.metrics, r.headline
    rows = [
        ["accuracy", h["accuracy"]["value"], h["accuracy"]["low"], h["accuracy"]["high"]],
        ["macro-F1", h["macro_f1"]["value"], h["macro_f1"]["low"], h["macro_f1"]["high"]],
        ["ROC-AUC (macro, one-vs-rest)", h["auc"]["value"], h["auc"]["low"], h["auc"]["high"]],
    ]
    rows += [
        [
            f"recall {c}",
            h[f"recall_{c}"]["value"],
            h[f"recall_{c}"]["low"],
            h[f"recall_{c}"]["high"],
        ]
        for c in r.classes
    ]
    rows += [
        ["weighted-F1", m["weighted_f1"], None, None],
        ["PR-AP (macro)", m["pr_ap_macro"], None, None],
        ["NLL", m["nll"], None, None],
        ["ECE (15 bins)", m["ece"], None, None],
    ]
    per_class = [
        [
            c,
            m["support"][c],
            m["precision"][c],
            m["recall"][c],
            m["f1"][c],
            m["auc_per_class"][c],
            m["pr_ap"][c],
        ]
        for c in r.classes
    ]
    cap = (
        "Intervals: 2.5th and 97.5th percentiles over bootstrap resamples drawn within each "
        "class (the set's class mix is kept). Per-class AUC and PR-AP are one-vs-rest."
    )
    if r.partial:
        cap += (
            f" Partial evaluation: {', '.join(r.missing_classes)} absent, so macro-F1 and "
            "AUC above average over the classes present; in the per-class table an absent "
            "class has F1 0 and no recall (that table's macro figures are sklearn's)."
        )
    return html.section(
        "Metrics",
        html.para(cap),
        html.table(["metric", "value", "95% low", "95% high"], rows),
        html.table(
            ["class", "support", "precision", "recall", "F1", "ROC-AUC", "PR-AP"], per_class
        ),
        anchor="metrics",
    )


def curve_sections(r: EvalResult, figs: sections.Figures) -> str:
    """Confusion matrix, ROC/PR curves (when the set has 2 classes or more) and reliability
    diagrams (this set, and the model's own reference split beside it when shifted)."""
    from ..calibration import reliability_bins

    out = [
        sections.confusion_section(
            figs,
            "Confusion matrix",
            "Counts and row percentages (recall on the diagonal).",
            [(r.model[:60], r.metrics["confusion"])],
            r.classes,
        )
    ]
    if len(set(r.y.tolist())) >= 2:
        out.append(
            sections.roc_section(
                figs,
                "One-vs-rest ROC (left) and precision-recall (right) per class; dashed: chance.",
                r.y,
                r.prob,
                r.classes,
                title=r.split,
            )
        )
    panels = [(f"{r.split} of this set", reliability_bins(r.y, r.prob), r.metrics["ece"])]
    if r.reference is not None and r.shift:
        panels.append(
            (
                f"model's own {r.reference['split']} split",
                reliability_bins(r.reference["y"], r.reference["prob"]),
                r.shift["ece"]["reference"],
            )
        )
    cap = (
        "Reliability diagrams (15 confidence bins): bars are the accuracy in "
        "each bin, red the gap to its mean confidence; a calibrated model follows the diagonal."
    )
    out.append(sections.calibration_section(figs, cap, panels))
    return "".join(out)


def eval_operating_section(r: EvalResult) -> str:
    """Thresholds fixed on the model's own validation split (or stored in the ensemble:
    `EvalResult.points_fixed_on`) and what they give here."""
    if not r.operating_points:
        return html.section(
            "Operating points",
            html.para(
                "No operating points: the model's own validation split is not readable here "
                "(or its members trained on it), and it stores no thresholds.",
                "note",
            ),
        )
    ref = r.reference is not None and r.reference["split"] == "test"
    headers = [
        "class",
        "target specificity",
        "threshold",
        "val sensitivity",
        "val specificity",
        "sensitivity here",
        "specificity here",
        "holds",
    ]
    if ref:
        headers += ["own test sensitivity", "own test specificity"]
    rows = []
    for c, targets in r.operating_points.items():
        for t, p in targets.items():
            row = [
                c,
                float(t),
                p["threshold"],
                p.get("val_sensitivity"),
                p.get("val_specificity"),
                p["eval_sensitivity"],
                p["eval_specificity"],
                {True: "yes", False: "NO"}.get(p["eval_holds"], "–"),
            ]
            if ref:
                row += [p["reference_test_sensitivity"], p["reference_test_specificity"]]
            rows.append(row)
    oof = " (their out-of-fold figures: the sweep's report)" if r.points_fixed_on == "oof" else ""
    cap = (
        "For each class, the lowest threshold on its probability that reaches 90% (95%) "
        f"specificity {POINTS_FIXED[r.points_fixed_on or 'val']}, and what it gives "
        f"here{oof}. 'holds': the specificity here is not below the target by more than 1.96 "
        "binomial standard errors; 'no' means the threshold needs re-setting for this data."
    )
    return html.section(
        "Operating points", html.para(cap), html.table(headers, rows), anchor="operating-points"
    )


def shift_section(r: EvalResult) -> str:
    """The drop of each headline figure from the model's own split, with its interval ("" when
    there is no shift block)."""
    s = r.shift
    if not s:
        return ""
    rows, cls = [], []
    for name, d in s["drops"].items():
        rows.append(
            [
                metric_name(name),
                d["reference"],
                d["new"],
                d["drop"],
                d["low"],
                d["high"],
                "DROP" if d["significant"] else "",
            ]
        )
        cls.append("chosen" if d["significant"] else "")
    e = s["ece"]
    ref_split = s.get("reference_split", "test")
    why = (
        "This is the model's own test split, compared with its validation split: a drop "
        "means validation flatters the model (it does not resemble test)."
        if r.is_own_data
        else "This set is not the model's own data."
    )
    cap = (
        f"{why} Reference: {s['reference']}. Drop = "
        "reference - this set; its interval comes from independent stratified bootstraps of "
        "the two sets. Highlighted rows: the whole interval is above 0, a loss beyond "
        f"resampling noise. ECE here {e['new']:.3f}"
        + (
            f", on the model's own {ref_split} split {e['reference']:.3f}."
            if "reference" in e
            else "."
        )
    )
    return html.section(
        "Shift check",
        html.para(cap),
        html.table(
            ["metric", f"own {ref_split}", "this set", "drop", "95% low", "95% high", ""], rows, cls
        ),
        anchor="shift",
    )


def stress_section(r: EvalResult, figs: sections.Figures) -> str:
    """The stress test's table and macro-F1 curves ("" when it was not run)."""
    s = r.stress
    if not s:
        return ""
    headers = [
        "perturbation",
        "severity",
        "level",
        "accuracy",
        "macro-F1",
        "AUC",
        "change in macro-F1",
    ] + [f"recall {c}" for c in r.classes]
    rows = [
        [
            x["perturbation"],
            x["severity"],
            x["level"],
            x["accuracy"],
            x["macro_f1"],
            x["auc"],
            x["d_macro_f1"],
        ]
        + [x[f"recall_{c}"] for c in r.classes]
        for x in s["rows"]
    ]
    ci = r.headline["macro_f1"]
    cap = (
        f"The same {s['n']} images (a class-stratified subset of this set when larger), "
        "changed in ways a new site or scanner brings without changing the diagnosis; each "
        "member sees the change at its own input size. For scale, the clean macro-F1's 95% "
        f"interval on the full set is {_ci(ci)}."
    )
    return html.section(
        "Stress test",
        html.para(cap),
        figs.make(
            "stress",
            "Macro-F1 against severity per perturbation (severity 0: unchanged images).",
            plots.stress_curves,
            s["rows"],
            "macro_f1",
            title=r.model[:60],
        ),
        html.table(headers, rows),
        anchor="stress",
    )


def eval_samples_section(r: EvalResult, figs: sections.Figures) -> str:
    """Sample predictions (`sections.samples_section`) at the largest input size scored."""
    cap = (
        "One row per true class: up to 2 mistakes (red), then confident correct cases "
        "(green). Title: true class, predicted class and its probability."
    )
    images = r.images[max(r.images)]
    return sections.samples_section(figs, "Sample predictions", cap, r.classes, r.y, r.prob, images)


def eval_gradcam_section(r: EvalResult, subject: Subject, figs: sections.Figures) -> str:
    """Grad-CAM of the highest-weight convolutional member whose Grad-CAM layer is at least 2x2
    (`sections.gradcam_model`): per true class two right and two wrong cases, as triplets."""
    order = sorted(range(len(subject.members)), key=lambda i: -subject.weights[i])
    found = sections.gradcam_model([subject.members[i] for i in order])
    if found is None:
        return html.section(
            "Grad-CAM",
            html.para("No convolutional model with a Grad-CAM layer here (lstm/vit).", "note"),
        )
    j, model, res = found
    i = order[j]
    rec = subject.members[i]
    imgs = r.images[sections.input_size(rec)[0]]
    prob = r.member_prob[i]
    pred, conf = prob.argmax(1), prob.max(1)
    rows, labels = [], []
    for k, c in enumerate(r.classes):
        right, wrong = sections.pick_cases(r.y, pred, conf, k, 2, 2)
        for kind, group in (("right", right), ("wrong", wrong)):
            cells = (
                sections.cam_cases(model, rec, imgs, group, r.y, pred, conf, r.classes)
                if group
                else []
            )
            rows.append(cells + [None] * (2 - len(cells)))
            labels.append(f"{c}: {kind}")
    cap = _gradcam_caption(rec, model, res, i, len(subject.members))
    return html.section(
        "Grad-CAM", figs.make("gradcam", cap, plots.cam_triplets, rows, labels), anchor="gradcam"
    )


def _gradcam_caption(rec: dict, model, res, i: int, n: int) -> str:
    """The evaluation Grad-CAM figure's caption: member i of n, its layer and map size."""
    from ..gradcam import cam_target

    size, chans = sections.input_size(rec)
    where = f"{res[0]}x{res[1]}" if res else "?"
    chosen = cam_target(model, size, chans)
    layer = chosen.name if chosen else "?"
    cap = (
        f"Grad-CAM of {rec['model']} (member {i + 1} of {n}; its "
        f"layer {layer}, a {where} feature map at {size} "
        "px): per true class two correctly (green) and two wrongly (red) predicted images, "
        "each as original, heat map (red = most evidence for the predicted class) and "
        "overlay. Evidence on borders, labels or outside the anatomy suggests a shortcut."
    )
    return cap + sections.gradcam_caption_tail(res)


def run_curves_section(subject: Subject, figs: sections.Figures) -> str:
    """Training curves (train loss, val loss, val macro-F1 per epoch) of a `train` run; "" when
    the checkpoint carries no history."""
    history = run_history(subject)
    if not history:
        return ""
    keys = ("epoch", "train_loss", "val_loss", "val_macro_f1")
    curve = {k: [h.get(k) for h in history] for k in keys}
    best = max(history, key=lambda h: h.get("val_macro_f1") or -1.0)
    cap = (
        f"{len(history)} epochs; best validation macro-F1 {best.get('val_macro_f1', float('nan')):.3f} "
        f"at epoch {best.get('epoch')} (the checkpoint evaluated here). Training loss below a "
        "rising validation loss means over-fitting."
    )
    if not any("val_macro_f1" in h for h in history):  # a refit (tune --refit-seeds)
        cap = (
            f"{len(history)} epochs of a refit on all of train+val: no validation; its last "
            "epoch is the checkpoint evaluated here."
        )
    curves = [{"label": subject.name, "highlight": True, **curve}]
    return sections.training_curves_section(figs, cap, curves, "val_macro_f1", anchor=None)


def eval_method_section(r: EvalResult) -> str:
    """How the probabilities, intervals and operating points were made; the timings."""
    b = r.bootstrap
    text = (
        f"Probabilities: each member sees the images at its own input size, normalised with its "
        "own training statistics; an ensemble averages its members' temperature-scaled softmax "
        f"with its weights (as predict does). Intervals: {b['resamples']} class-stratified "
        f"bootstrap resamples (seed {b['seed']}), percentile {b['level']:.0%} intervals. "
        "Operating points come from the model's own validation split, never from this set. "
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()) + "."
    )
    return html.section("Method", html.para(text), anchor="method")


def write_eval_report(
    r: EvalResult, subject: Subject, out: Path, images: bool = True, log=print
) -> Path:
    """report.html (+ figures/) in `out`; a failing section becomes a note, not a crash.
    `images=False` leaves out the figures that show images (samples, Grad-CAM)."""
    figs = sections.Figures(out, log)
    title = f"Evaluation: {r.model} on {r.data} ({r.split})"
    header = (
        f'<h1>{html.esc(title)}</h1><p class="meta">classes '
        f"{', '.join(sections.class_html(c) for c in r.classes)} · {r.n} images · generated "
        f"{html.esc(r.created)} · checkpoint <code>{html.esc(r.checkpoint)}</code></p>"
    )
    steps = [
        ("summary", lambda: eval_summary_section(r)),
        ("history", lambda: run_curves_section(subject, figs)),
        ("metrics", lambda: metrics_section(r)),
        ("shift", lambda: shift_section(r)),
        ("curves", lambda: curve_sections(r, figs)),
        ("operating points", lambda: eval_operating_section(r)),
        ("stress", lambda: stress_section(r, figs)),
    ]
    if images:
        steps += [
            ("samples", lambda: eval_samples_section(r, figs)),
            ("gradcam", lambda: eval_gradcam_section(r, subject, figs)),
        ]
    steps.append(("method", lambda: eval_method_section(r)))
    body = [header, *sections.render_sections(steps, log)]
    return sections.write_page(out, title, body, "metrics.json, figures/*.png")
