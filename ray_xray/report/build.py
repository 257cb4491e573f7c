"""The sweep report: report.html (+ figures/) from a `SweepReport` (`ray_xray.ensemble` builds
it once the members and ensembles are fixed). The sections on the ensemble's results are here;
the sweep's own story (context, trials, curves, Optuna views, Pareto front) is `report.sweep`,
and what every report shares (page, figures, samples, Grad-CAM, ...) is `report.sections`."""

from __future__ import annotations

import math
from pathlib import Path

from . import html, plots
from .inputs import SweepReport
from .sections import (
    INTERVAL_HEADERS,
    OPERATING_HEADERS,
    Figures,
    calibration_section,
    cam_cases,
    class_html,
    confusion_section,
    gradcam_caption_tail,
    gradcam_model,
    image_case,
    input_size,
    interval_rows,
    is_highlight,
    operating_rows,
    pick_cases,
    render_sections,
    roc_section,
    samples_section,
    write_page,
)
from .sweep import sweep_steps


def summary_section(rep: SweepReport) -> str:
    """The page's opening paragraph: the best trial and the chosen ensemble on test (macro-F1,
    recalls, ECE, the ensemble's accuracy and macro-F1 intervals), the highlighted class's
    sensitivity, and the validation-vs-test warning when there is one."""
    m, classes = rep.metrics, rep.classes
    best, chosen = m["members"][0], rep.chosen_entry
    bt, et = best["test"], chosen["test"]

    def recalls(t):
        """Each class's recall in a test entry `t`, the highlighted class marked."""
        return ", ".join(f"{class_html(c)} {t['recall'][c]:.3f}" for c in classes)

    n_members = sum(1 for w in chosen["weights"].values() if w > 0)
    iv = et.get("intervals") or {}
    acc_ci = (iv.get("accuracy") or {}).get("ci") or [math.nan, math.nan]
    f1_ci = (iv.get("bootstrap") or {}).get("macro_f1")
    text = (
        f"Best single trial <b>{html.esc(best['name'])}</b> (rank 1 by the sweep's "
        f"{html.esc(m['ranking_metric'][5:])}): test macro-F1 <b>{bt['macro_f1']:.3f}</b>, "
        f"recall {recalls(bt)}, ECE {best['uncalibrated']['test_ece']:.3f} as trained "
        f"({bt['ece']:.3f} after temperature scaling). "
        f"Chosen ensemble <b>{html.esc(chosen['name'])}</b> ({n_members} distinct member(s); "
        f"{html.esc(chosen['description'])}): test macro-F1 <b>{et['macro_f1']:.3f}</b>, "
        f"recall {recalls(et)}, ECE {et['ece']:.3f}. "
        f"The ensemble method was picked by the lowest validation NLL among the three built; test "
        f"data ({et['n']} images) was used only for these numbers — with that many images, "
        f"the ensemble's accuracy {et['accuracy']:.3f} has a 95% interval of "
        f"{html.num(acc_ci[0])}–{html.num(acc_ci[1])} (Wilson)"
        + (
            f" and its macro-F1 {html.num(f1_ci[0])}–{html.num(f1_ci[1])} (bootstrap)"
            if f1_ci
            else ""
        )
        + "; the section 'Uncertainty per class' gives every class's."
    )
    text += "".join(_highlight_recall(c, bt, et) for c in classes if is_highlight(c))
    agreement = m.get("val_test_agreement") or members_agreement(m)
    if agreement.get("warning"):
        text += f" <b>Warning:</b> {html.esc(agreement['warning'])}."
    return html.raw_para(text, "summary")


def _highlight_recall(c: str, bt: dict, et: dict) -> str:
    """The summary's sentence on class `c`'s recall: best trial (`bt`) vs ensemble (`et`), with
    the ensemble's Wilson interval."""
    d = et["recall"][c] - bt["recall"][c]
    word = "higher" if d > 0 else "lower" if d < 0 else "the same"
    iv = et.get("intervals") or {}
    sens = ((iv.get("per_class") or {}).get(c) or {}).get("sensitivity") or {}
    lo, hi = sens.get("ci") or [math.nan, math.nan]
    return (
        f" <b>{class_html(c)} recall</b> (sensitivity): {bt['recall'][c]:.3f} for the best "
        f"trial, {et['recall'][c]:.3f} for the ensemble ({word}"
        + (f", {d:+.3f}" if d else "")
        + f"; {et['support'][c]} such test images, 95% interval "
        f"{html.num(lo)}–{html.num(hi)})."
    )


def members_agreement(m: dict) -> dict:
    """`agreement.val_test_agreement` over the evaluated members (val and test macro-F1)."""
    from .agreement import val_test_agreement

    members = m["members"]
    return val_test_agreement(
        [e["name"] for e in members],
        [e["val"]["macro_f1"] for e in members],
        [e["test"]["macro_f1"] for e in members],
    )


def agreement_section(rep: SweepReport) -> str:
    """How validation and test rank the members (Spearman), with the table of both."""
    from .agreement import val_origin

    m = rep.metrics
    a = m.get("val_test_agreement") or members_agreement(m)
    rows = sorted(
        ([e["name"], e["val"]["macro_f1"], e["test"]["macro_f1"]] for e in m["members"]),
        key=lambda r: -r[1],
    )
    rho = "–" if a["spearman"] is None else f"{a['spearman']:+.2f}"
    text = (
        f"Spearman rank correlation between validation and test macro-F1 over the {a['n']} "
        f"evaluated trials: {rho}"
        + (
            " (3 or more trials with distinct scores are needed)."
            if a["spearman"] is None
            else f" (p = {a['p_value']:.2f}; 1 = same order, -1 = reversed)."
        )
        + f" Validation split: {m.get('val_origin') or val_origin(m.get('data'))}."
    )
    parts = [html.para(text)]
    if a.get("warning"):
        parts.append(html.raw_para(f"<b>warning:</b> {html.esc(a['warning'])}", "note"))
    parts.append(html.table(["trial (by validation)", "val macro-F1", "test macro-F1"], rows))
    return html.section("Validation vs test", *parts, anchor="agreement")


def comparison_section(rep: SweepReport) -> str:
    """Test metrics of every member and every ensemble, one row each, the chosen highlighted."""
    m, classes = rep.metrics, rep.classes
    headers = [
        "name",
        "kind",
        "T",
        "weight",
        "val macro-F1",
        "val NLL",
        "accuracy [95% CI]",
        "macro-F1 [95% CI]",
        "weighted-F1",
        "ROC-AUC [95% CI]",
        "PR-AP",
        "ECE",
        "NLL",
    ]
    headers += [f"recall {c}" for c in classes]
    rows, cls = [], []
    for kind, entries in (("member", m["members"]), ("ensemble", m["ensembles"])):
        for e in entries:
            t = e["test"]
            iv = t.get("intervals") or {}
            boot = iv.get("bootstrap") or {}
            acc = html.ci(t["accuracy"], (iv.get("accuracy") or {}).get("ci"))
            rows.append(
                [
                    e["name"],
                    kind,
                    e.get("temperature"),
                    e.get("chosen_weight"),
                    e["val"]["macro_f1"],
                    e["val"]["nll"],
                    acc,
                    html.ci(t["macro_f1"], boot.get("macro_f1")),
                    t["weighted_f1"],
                    html.ci(t["auc"], boot.get("auc")),
                    t["pr_ap_macro"],
                    t["ece"],
                    t["nll"],
                ]
                + [t["recall"][c] for c in classes]
            )
            cls.append("chosen" if e.get("chosen") else "")
    cap = html.para(
        "Test metrics of every member (after temperature scaling: T is the fitted temperature; "
        "accuracy, F1 and AUC do not change with T, ECE and NLL do) and every ensemble. "
        "'weight' is the member's weight in the chosen ensemble (highlighted). PR-AP is the "
        "macro average of per-class average precision; ECE uses 15 equal-width bins on the "
        "top-class confidence. Intervals: Wilson 95% for accuracy, stratified bootstrap (seeded) "
        "95% for macro-F1 and ROC-AUC. Full numbers, per-class precision/F1 and validation "
        "metrics are in metrics.json and comparison.csv."
    )
    return html.section(
        "Members and ensembles on test", cap, html.table(headers, rows, cls), anchor="comparison"
    )


def operating_section(rep: SweepReport) -> str:
    """Each class's thresholds fixed on validation (target specificity or sensitivity) and
    what they give on test, for the chosen ensemble and the best member."""
    m, classes = rep.metrics, rep.classes
    chosen = rep.chosen_entry
    parts = [
        html.para(
            "Clinical operating points, both ways: for each class, the threshold on that class's "
            "probability fixed on validation to reach a target specificity (the lowest such "
            "threshold, i.e. the most sensitive one: confirmation) or a target sensitivity (the "
            "highest such threshold, i.e. the most specific one: screening and triage, e.g. "
            "tuberculosis at >= 90% sensitivity), and what that same threshold gives on test, with "
            "Wilson 95% intervals. A case is positive for the class when its probability is >= the "
            "threshold; log-odds = ln(t / (1 - t)) tells thresholds near 0 or 1 apart. The chosen "
            "ensemble's points are stored in ensemble.pt: python -m ray_xray.predict ensemble.pt "
            "IMAGE --operating-point CLASS@NAME applies one (NAME as in the second column)."
        )
    ]
    for entry in (chosen, m["members"][0]):
        parts.append(html.raw_para(f"<b>{html.esc(entry['name'])}</b>"))
        parts.append(html.table(OPERATING_HEADERS, operating_rows(entry, classes)))
    return html.section("Operating points", *parts, anchor="operating-points")


def intervals_section(rep: SweepReport) -> str:
    """Per class: sensitivity, specificity, precision (Wilson), ROC-AUC (bootstrap), PR-AP,
    for the chosen ensemble and the best member."""
    parts = [
        html.para(
            "What each test figure could plausibly be, given how many images it rests on. "
            "Sensitivity (= recall), specificity and precision (= PPV) are one-vs-rest at the "
            "argmax decision, with Wilson 95% score intervals (k/n shown: a 1.000 on 99 images is "
            "compatible with 0.963); ROC-AUC per class and macro-F1 / macro AUC with stratified, "
            "seeded percentile-bootstrap 95% intervals (resampling within each true class); PR-AP "
            "is the average precision per class (prevalence is its chance level)."
        )
    ]
    for entry in (rep.chosen_entry, rep.metrics["members"][0]):
        t = entry["test"]
        iv = t.get("intervals")
        if not iv:
            continue
        boot = iv["bootstrap"]
        parts.append(
            html.raw_para(
                f"<b>{html.esc(entry['name'])}</b>: macro-F1 {html.esc(html.ci(t['macro_f1'], boot['macro_f1']))}"
                f", macro ROC-AUC {html.esc(html.ci(t['auc'], boot['auc']) or '–')}, accuracy "
                f"{html.esc(html.ci(t['accuracy'], iv['accuracy']['ci']))} ({boot['n_boot']} bootstrap "
                f"resamples, seed {boot['seed']})."
            )
        )
        parts.append(html.table(INTERVAL_HEADERS, interval_rows(t, rep.classes)))
    return html.section("Uncertainty per class", *parts, anchor="intervals")


def evaluation_sections(rep: SweepReport, figs: Figures) -> str:
    """Confusion matrices (best trial, chosen ensemble), the ensemble's ROC/PR curves, and
    reliability diagrams (best trial as trained and calibrated, the ensemble), all on test."""
    from ..calibration import reliability_bins

    m, classes, y = rep.metrics, rep.classes, rep.y_test
    best_m, ens_name = rep.members[0], rep.chosen_name
    ens_prob = rep.ensembles[rep.chosen]["test_prob"]
    matrices = [
        (f"best trial {best_m.name}", m["members"][0]["test"]["confusion"]),
        (ens_name, rep.chosen_entry["test"]["confusion"]),
    ]
    panels = [
        (
            f"{best_m.name}\nas trained",
            reliability_bins(y, best_m.test_raw),
            m["members"][0]["uncalibrated"]["test_ece"],
        ),
        (
            f"{best_m.name}\nT = {best_m.temperature:.2f}",
            reliability_bins(y, best_m.test_prob),
            m["members"][0]["test"]["ece"],
        ),
        (ens_name, reliability_bins(y, ens_prob), rep.chosen_entry["test"]["ece"]),
    ]
    return "".join(
        [
            confusion_section(
                figs,
                "Confusion matrices",
                f"Test confusion matrices: counts and row percentages (recall on the "
                f"diagonal). Left: best single trial {best_m.name}; right: {ens_name}.",
                matrices,
                classes,
            ),
            roc_section(
                figs,
                f"One-vs-rest ROC (left) and precision-recall (right) curves per class for "
                f"{ens_name} on test. Dashed line: chance. When every class's AUC is 0.97 or more, "
                "each panel has a zoomed inset of its top corner.",
                y,
                ens_prob,
                classes,
                title=ens_name,
            ),
            calibration_section(
                figs,
                "Reliability diagrams on test (15 confidence bins): blue bars are the "
                "accuracy of the cases in each bin, red hatching the gap to their mean confidence, the "
                "number over each bar how many cases the bin holds; a calibrated "
                "model follows the dashed diagonal. Best trial before and after temperature scaling "
                "(T fitted on validation), then the chosen ensemble.",
                panels,
            ),
        ]
    )


def display_data(rep: SweepReport):
    """The member data with the largest images (all share val/test order)."""
    return max(rep.datas.values(), key=lambda d: d.img_size)


def sweep_samples_section(rep: SweepReport, figs: Figures) -> str:
    """Sample test predictions of the chosen ensemble (`sections.samples_section`)."""
    cap = (
        f"Test images, one row per true class, predicted by {rep.chosen_name}: up to 2 "
        "mistakes (red) first, then confident correct cases (green), more mistakes if the class "
        "has too few correct ones. Title: true class, predicted "
        "class and its probability."
    )
    prob = rep.ensembles[rep.chosen]["test_prob"]
    images = display_data(rep).images["test"]
    return samples_section(
        figs, "Sample test predictions", cap, rep.classes, rep.y_test, prob, images
    )


def gradcam_section(rep: SweepReport, figs: Figures) -> str:
    """Grad-CAM of the best-ranked convolutional member whose Grad-CAM layer is at least 2x2
    (`sections.gradcam_model`): per true class two correct then two wrong test cases."""
    classes, y = rep.classes, rep.y_test
    found = gradcam_model([mem.record for mem in rep.members])
    if found is None:
        return html.section(
            "Grad-CAM",
            html.para(
                "No convolutional member with a Grad-CAM layer in the ensemble pool.", "note"
            ),
        )
    i, model, res = found
    mem = rep.members[i]
    images = rep.datas[mem.data_key].images["test"]
    pred, conf = mem.test_prob.argmax(1), mem.test_prob.max(1)
    rows, labels = [], []
    for k, cls in enumerate(classes):
        right, wrong = pick_cases(y, pred, conf, k, 2, 2)
        cells: list = []
        for group in (right, wrong):
            if group:
                cells += cam_cases(model, mem.record, images, group, y, pred, conf, classes)
            cells += [None] * (2 - len(group))
        rows.append(cells)
        labels.append(f"true {cls}")
    return html.section(
        "Grad-CAM",
        figs.make("gradcam", _gradcam_caption(mem, model, res), plots.heatmap_grid, rows, labels),
        anchor="gradcam",
    )


def _gradcam_caption(mem, model, res) -> str:
    """The sweep Grad-CAM figure's caption: which member, layer and map size, and what it shows."""
    from ..gradcam import cam_target

    where = f"{res[0]}x{res[1]} feature map" if res else "feature map"
    chosen = cam_target(model, *input_size(mem.record))
    layer = chosen.name if chosen else "?"
    cap = (
        f"Grad-CAM of {mem.name} (rank {mem.rank}: the best-ranked convolutional member whose "
        "Grad-CAM layer is larger than 1x1; "
        f"layer {layer}, {where} at {input_size(mem.record)[0]} px) on test "
        "images: per true class two correct (green) then two wrong (red) cases. The heat map "
        "(red = most) is where the evidence for the predicted class came from: ReLU of the "
        "gradient-weighted sum of the layer's feature maps, upsampled to the image and scaled "
        "to [0, 1] (pytorch-grad-cam). The layer is the deepest whose map is at least 8x8 and "
        "1/16 of the image side (the Grad-CAM paper used 14x14 at 224 px)."
    )
    return cap + gradcam_caption_tail(res)


ATTENTION_CAPTIONS = {
    "lstm": "Row attention of {name}: the LSTM reads the image row by row, and the bar "
    "beside each image is the weight its attention gave each row (longest = most). One "
    "correct (green) and one wrong (red) test case per true class where available.",
    "vit": "ViT attention of {name}: attention from the CLS token to each image patch in "
    "the last transformer block, averaged over heads and upsampled (red = most). One "
    "correct (green) and one wrong (red) test case per true class where available.",
}


def _attention_figure(rep: SweepReport, mem, arch: str, figs: Figures) -> str:
    """HTML of one member's attention figure ("" when it has no test case to show)."""
    import torch

    from ..gradcam import attention_maps
    from ..inference import model_from_record, record_feed

    y, classes = rep.y_test, rep.classes
    images = rep.datas[mem.data_key].images["test"]
    pred, conf = mem.test_prob.argmax(1), mem.test_prob.max(1)
    idx = []
    for k in range(len(classes)):
        right, wrong = pick_cases(y, pred, conf, k, 1, 1)
        idx += right + wrong
    if not idx:
        return ""
    feed = record_feed(mem.record, torch.device("cpu"))
    res = attention_maps(model_from_record(mem.record), feed(torch.from_numpy(images[idx])))
    if res is None:
        return html.para(f"{mem.name} records no attention (built without it).", "note")
    kind, maps = res
    cases = [image_case(images, i, y, pred, conf, classes) for i in idx]
    cap = ATTENTION_CAPTIONS[arch].format(name=mem.name)
    if kind == "rows":
        for c, r in zip(cases, maps, strict=True):
            c["rows"] = r
        return figs.make(f"attention_{arch}", cap, plots.row_attention_grid, cases, 4)
    for c, mp in zip(cases, maps, strict=True):
        c["map"] = mp
    grid = [cases[i : i + 4] for i in range(0, len(cases), 4)]
    return figs.make(f"attention_{arch}", cap, plots.heatmap_grid, grid, [""] * len(grid))


def attention_section(rep: SweepReport, figs: Figures) -> str:
    """Attention maps of the best lstm and the best vit member in the pool ("" without)."""
    parts = []
    for arch in ("lstm", "vit"):
        mem = next((m for m in rep.members if m.model_name == arch), None)
        if mem is not None:
            parts.append(_attention_figure(rep, mem, arch, figs))
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return html.section("Attention maps", *parts, anchor="attention")


def method_section(rep: SweepReport) -> str:
    """How the pool, the calibration and the three ensembles were made, and the greedy rounds."""
    m = rep.metrics
    greedy = next(e for e in m["ensembles"] if e["method"] == "greedy")
    hist = greedy.get("greedy_history", [])
    rows = [[h["round"], h["added"], h["val_nll"]] for h in hist]
    text = (
        f"Pool: the top {m['n_members']} usable trials by validation {m['ranking_metric'][5:]} "
        "(failed trials and trials without a checkpoint are skipped), evaluated on the sweep's own "
        f"validation ({m['n_val']} images) and test ({m['n_test']} images) splits. "
        f"Calibration: {m['calibration']}. Ensembles, all on calibrated probabilities and chosen "
        "on validation only: 'mean' (equal weights), 'weighted' (weights proportional to each "
        "member's validation macro-F1), 'greedy' (Caruana et al. 2004: start from the member with "
        "the lowest validation NLL, then repeatedly add, with replacement, the member that lowers "
        "the validation NLL of the average the most; stop after 25 additions or when nothing "
        "helps; weights = how often each was picked). The one with the lowest validation NLL is "
        "saved as ensemble.pt and used by python -m ray_xray.predict."
    )
    return html.section(
        "Method",
        html.para(text),
        html.para("Greedy selection, round by round:"),
        html.table(["round", "added member", "val NLL of the bag"], rows),
        anchor="method",
    )


def _external_step(metrics: dict):
    """The 'External sets' section's step, None when the sweep scored no external set."""
    if not metrics.get("external"):
        return None
    from .external import external_section

    return lambda: external_section(metrics)


def write_report(rep: SweepReport) -> Path:
    """report.html (+ figures/) of a sweep's ensemble in `rep.out`; returns its path. A figure
    or section that fails becomes a note in the page (and a `rep.log` line), not a crash."""
    figs = Figures(rep.out, rep.log)
    m = rep.metrics
    title = f"Sweep report: {m['experiment']}"
    header = (
        f'<h1>{html.esc(title)}</h1><p class="meta">data <code>{html.esc(m["data"])}</code> · classes '
        f"{', '.join(class_html(c) for c in m['classes'])} · generated {html.esc(m['created'])} · "
        f"experiment <code>{html.esc(m['experiment_dir'])}</code></p>"
    )
    sweep = sweep_steps(rep, figs)
    steps = [
        ("context", sweep.get("context")),
        ("comparison", lambda: comparison_section(rep)),
        ("intervals", lambda: intervals_section(rep)),
        ("agreement", lambda: agreement_section(rep)),
        ("external", _external_step(m)),
        ("operating points", lambda: operating_section(rep)),
        ("trials", sweep.get("trials")),
        ("curves", sweep.get("curves")),
        ("history", sweep.get("history")),
        ("importance", sweep.get("importance")),
        ("pareto", sweep.get("pareto")),
        ("evaluation", lambda: evaluation_sections(rep, figs)),
        ("samples", lambda: sweep_samples_section(rep, figs)),
        ("gradcam", lambda: gradcam_section(rep, figs)),
        ("attention", lambda: attention_section(rep, figs)),
        ("method", lambda: method_section(rep)),
    ]
    body = [header, summary_section(rep), *render_sections(steps, rep.log)]
    files = "ensemble.pt, metrics.json, comparison.csv, figures/*.png"
    path = write_page(rep.out, title, body, files)
    rep.log(f"wrote {path}")
    return path
