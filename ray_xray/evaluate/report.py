"""report.html of one evaluation, rendered from an `EvalResult` with the sweep report's parts
(`report.html` for tables and the page, `report.plots` for figures, `ray_xray.gradcam`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..checkpoint import preprocess
from ..inference import record_feed
from ..io import write_atomic
from ..report import html as H
from ..report import plots as P
from ..report.build import Figures, _pick_cases, _title, class_html
from .result import EvalResult, metric_name
from .sources import Subject


def _ci(d: dict) -> str:
    if d["low"] is None or not math.isfinite(d["low"] if d["low"] is not None else math.nan):
        return "–"
    return f"{d['low']:.3f} – {d['high']:.3f}"


def summary_section(r: EvalResult) -> str:
    h = r.headline
    what = (
        "the model's own data"
        if r.is_own_data
        else f"other data than it was trained on ({H.esc(r.own_data or 'unknown')})"
    )
    text = (
        f"<b>{H.esc(r.model)}</b> on <code>{H.esc(r.data)}</code>, split <b>{H.esc(r.split)}</b> "
        f"({r.n} images; {what}): accuracy <b>{h['accuracy']['value']:.3f}</b> "
        f"({_ci(h['accuracy'])}), macro-F1 <b>{h['macro_f1']['value']:.3f}</b> "
        f"({_ci(h['macro_f1'])}), ROC-AUC <b>{H.num(h['auc']['value'])}</b> ({_ci(h['auc'])}); "
        "recall "
        + ", ".join(f"{class_html(c)} {H.num(h[f'recall_{c}']['value'])}" for c in r.classes)
        + f". ECE {r.metrics['ece']:.3f}. Brackets: 95% stratified bootstrap intervals "
        f"({r.bootstrap['resamples']} resamples)."
    )
    parts = [H.raw_para(text, "summary")]
    for w in r.warnings:
        parts.append(H.raw_para(f"<b>warning:</b> {H.esc(w)}", "note"))
    for n in r.notes:
        parts.append(H.para(f"note: {n}", "meta"))
    return "".join(parts)


def metrics_section(r: EvalResult) -> str:
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
    return H.section(
        "Metrics",
        H.para(cap),
        H.table(["metric", "value", "95% low", "95% high"], rows),
        H.table(["class", "support", "precision", "recall", "F1", "ROC-AUC", "PR-AP"], per_class),
        anchor="metrics",
    )


def curve_sections(r: EvalResult, figs: Figures) -> str:
    from ..calibration import reliability_bins

    out = [
        H.section(
            "Confusion matrix",
            figs.make(
                "confusion",
                "Counts and row percentages (recall on the diagonal).",
                P.confusion_matrices,
                [(r.model[:60], r.metrics["confusion"])],
                r.classes,
            ),
            anchor="confusion",
        )
    ]
    if len(set(r.y.tolist())) >= 2:
        out.append(
            H.section(
                "ROC and precision-recall curves",
                figs.make(
                    "roc_pr",
                    "One-vs-rest ROC (left) and precision-recall (right) per class; dashed: "
                    "chance.",
                    P.roc_pr,
                    r.y,
                    r.prob,
                    r.classes,
                    title=r.split,
                ),
                anchor="roc",
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
    out.append(
        H.section(
            "Calibration",
            figs.make(
                "reliability",
                "Reliability diagrams (15 confidence bins): bars are the accuracy in "
                "each bin, red the gap to its mean confidence; a calibrated model follows the diagonal.",
                P.reliability,
                panels,
            ),
            anchor="calibration",
        )
    )
    return "".join(out)


def operating_section(r: EvalResult) -> str:
    if not r.operating_points:
        return H.section(
            "Operating points",
            H.para(
                "No operating points: the model's own validation split is not readable here.",
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
    cap = (
        "For each class, the lowest threshold on its probability that reaches 90% (95%) "
        "specificity on the model's own validation split, and what it gives here. 'holds': "
        "the specificity here is not below the target by more than 1.96 binomial standard "
        "errors; 'no' means the threshold needs re-setting for this data."
    )
    return H.section(
        "Operating points", H.para(cap), H.table(headers, rows), anchor="operating-points"
    )


def shift_section(r: EvalResult) -> str:
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
    return H.section(
        "Shift check",
        H.para(cap),
        H.table(
            ["metric", f"own {ref_split}", "this set", "drop", "95% low", "95% high", ""], rows, cls
        ),
        anchor="shift",
    )


def stress_section(r: EvalResult, figs: Figures) -> str:
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
    return H.section(
        "Stress test",
        H.para(cap),
        figs.make(
            "stress",
            "Macro-F1 against severity per perturbation (severity 0: unchanged images).",
            P.stress_curves,
            s["rows"],
            "macro_f1",
            title=r.model[:60],
        ),
        H.table(headers, rows),
        anchor="stress",
    )


def samples_section(r: EvalResult, figs: Figures) -> str:
    pred, conf = r.prob.argmax(1), r.prob.max(1)
    imgs = r.images[max(r.images)]
    cases = []
    for k in range(len(r.classes)):
        right, wrong = _pick_cases(r.y, pred, conf, k, 4, 4)
        idx = (wrong[:2] + right + wrong[2:])[:4]
        cases += [
            {
                "image": imgs[i],
                "correct": pred[i] == r.y[i],
                "title": _title(r.classes, r.y[i], pred[i], conf[i]),
            }
            for i in idx
        ]
        cases += [None] * (4 - len(idx))
    return H.section(
        "Sample predictions",
        figs.make(
            "samples",
            "One row per true class: up to 2 mistakes (red), then confident correct cases "
            "(green). Title: true class, predicted class and its probability.",
            P.sample_grid,
            cases,
            4,
        ),
        anchor="samples",
    )


def _explainer(subject: Subject):
    """(member index, model, cam resolution) of the highest-weight convolutional member whose
    Grad-CAM layer is at least 2x2 (else any convolutional one); None without one."""
    from ..gradcam import cam_resolution, supports_gradcam
    from ..inference import model_from_record

    order = sorted(range(len(subject.members)), key=lambda i: -subject.weights[i])
    fallback = None
    for i in order:
        rec = subject.members[i]
        model = model_from_record(rec)
        if not supports_gradcam(model):
            continue
        pre = preprocess(rec)
        res = cam_resolution(model, pre["img_size"], pre["in_chans"])
        if res and min(res) >= 2:
            return i, model, res
        fallback = fallback or (i, model, res)
    return fallback


def gradcam_section(r: EvalResult, subject: Subject, figs: Figures) -> str:
    from ..gradcam import cam_target, grad_cam

    found = _explainer(subject)
    if found is None:
        return H.section(
            "Grad-CAM",
            H.para("No convolutional model with a Grad-CAM layer here (lstm/vit).", "note"),
        )
    i, model, res = found
    rec = subject.members[i]
    pre = preprocess(rec)
    imgs = r.images[pre["img_size"]]
    feed = record_feed(rec, torch.device("cpu"))
    prob = r.member_prob[i]
    pred, conf = prob.argmax(1), prob.max(1)
    rows, labels = [], []
    for k, c in enumerate(r.classes):
        right, wrong = _pick_cases(r.y, pred, conf, k, 2, 2)
        for kind, group in (("right", right), ("wrong", wrong)):
            cells: list = [None, None]
            if group:
                maps = grad_cam(
                    model, feed(torch.from_numpy(imgs[group])), torch.as_tensor(pred[group])
                )
                for j, n in enumerate(group):
                    cells[j] = {
                        "image": imgs[n],
                        "map": maps[j],
                        "correct": kind == "right",
                        "title": _title(r.classes, r.y[n], pred[n], conf[n]),
                    }
            rows.append(cells)
            labels.append(f"{c}: {kind}")
    where = f"{res[0]}x{res[1]}" if res else "?"
    chosen = cam_target(model, pre["img_size"], pre["in_chans"])
    layer = chosen.name if chosen else "?"
    cap = (
        f"Grad-CAM of {rec['model']} (member {i + 1} of {len(subject.members)}; its "
        f"layer {layer}, a {where} feature map at {pre['img_size']} "
        "px): per true class two correctly (green) and two wrongly (red) predicted images, "
        "each as original, heat map (red = most evidence for the predicted class) and "
        "overlay. Evidence on borders, labels or outside the anatomy suggests a shortcut."
    )
    if res and min(res) < 2:
        cap += " At this input size the layer is 1x1: the maps carry no spatial information."
    return H.section(
        "Grad-CAM", figs.make("gradcam", cap, P.cam_triplets, rows, labels), anchor="gradcam"
    )


def run_history(subject: Subject) -> list[dict]:
    """Per-epoch metrics of the `train` run a single model comes from: the `history` in
    metrics.json beside its best_model.pt ([] for an ensemble or a checkpoint without one)."""
    import json

    if subject.kind != "model":
        return []
    run = subject.path if subject.path.is_dir() else subject.path.parent
    try:
        history = json.loads((run / "metrics.json").read_text()).get("history")
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []


def history_section(subject: Subject, figs: Figures) -> str:
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
    fig = figs.make(
        "training_curves",
        cap,
        P.learning_curves,
        [{"label": subject.name, "highlight": True, **curve}],
        "val_macro_f1",
    )
    return H.section("Training curves", fig)


def method_section(r: EvalResult) -> str:
    b = r.bootstrap
    text = (
        f"Probabilities: each member sees the images at its own input size, normalised with its "
        "own training statistics; an ensemble averages its members' temperature-scaled softmax "
        f"with its weights (as predict does). Intervals: {b['resamples']} class-stratified "
        f"bootstrap resamples (seed {b['seed']}), percentile {b['level']:.0%} intervals. "
        "Operating points come from the model's own validation split, never from this set. "
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()) + "."
    )
    return H.section("Method", H.para(text), anchor="method")


def write_report(
    r: EvalResult, subject: Subject, out: Path, images: bool = True, log=print
) -> Path:
    """report.html (+ figures/) in `out`; a failing section becomes a note, not a crash.
    `images=False` leaves out the figures that show images (samples, Grad-CAM)."""
    figs = Figures({"out": out, "log": log})
    title = f"Evaluation: {r.model} on {r.data} ({r.split})"
    header = (
        f'<h1>{H.esc(title)}</h1><p class="meta">classes '
        f"{', '.join(class_html(c) for c in r.classes)} · {r.n} images · generated "
        f"{H.esc(r.created)} · checkpoint <code>{H.esc(r.checkpoint)}</code></p>"
    )
    steps = [
        ("summary", lambda: summary_section(r)),
        ("history", lambda: history_section(subject, figs)),
        ("metrics", lambda: metrics_section(r)),
        ("shift", lambda: shift_section(r)),
        ("curves", lambda: curve_sections(r, figs)),
        ("operating points", lambda: operating_section(r)),
        ("stress", lambda: stress_section(r, figs)),
    ]
    if images:
        steps += [
            ("samples", lambda: samples_section(r, figs)),
            ("gradcam", lambda: gradcam_section(r, subject, figs)),
        ]
    steps.append(("method", lambda: method_section(r)))
    body = [header]
    for name, fn in steps:
        try:
            body.append(fn())
        except Exception as exc:  # a report with one section missing beats no report
            msg = f"section '{name}' failed: {type(exc).__name__}: {exc}"
            log(msg)
            body.append(H.para(msg[:400], "note"))
    body.append(H.para("Files beside this page: metrics.json, figures/*.png.", "meta"))
    return write_atomic(Path(out) / "report.html", H.page(title, "".join(body)))
