"""Assemble report.html (+ figures/) from what `ray_xray.ensemble.core.run_ensemble` computed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..io import write_atomic
from . import html as H
from . import plots as P

FIG_DIR = "figures"
HIDDEN_CONFIG = {
    "model",
    "data",
    "seed",
    "num_workers",
    "device",
    "precision",
    "_threads",
    "_cache",
}


def _log(ctx, msg: str) -> None:
    (ctx.get("log") or (lambda m: print(m, file=sys.stderr)))(msg)


def is_highlight(cls: str) -> bool:
    c = cls.lower()
    return "tuberc" in c or c in ("tb", "tbc")


def class_html(cls: str) -> str:
    return f'<span class="hl">{H.esc(cls)}</span>' if is_highlight(cls) else H.esc(cls)


class Figures:
    """Makes each figure in isolation: one failing plot becomes a note in the page, not a crash."""

    def __init__(self, ctx: dict):
        self.ctx, self.dir = ctx, Path(ctx["out"]) / FIG_DIR
        self.dir.mkdir(parents=True, exist_ok=True)

    def make(self, name: str, caption: str, fn, *args, **kw) -> str:
        path = self.dir / f"{name}.png"
        try:
            fn(*args, path=path, **kw)
        except Exception as exc:  # a report with a missing figure beats no report
            msg = f"figure '{name}' could not be drawn: {type(exc).__name__}: {exc}"
            _log(self.ctx, msg)
            return H.para(msg[:400], "note")
        return H.figure(f"{FIG_DIR}/{name}.png", caption)


# ---------------------------------------------------------------- data gathering


def read_history(trial_dir: Path | None) -> dict:
    """Per-epoch metrics of one trial from Tune's result.json (progress.csv as fallback)."""
    out: dict[str, list] = {"epoch": [], "val_macro_f1": [], "val_loss": []}
    if trial_dir is None:
        return out
    rows: list[dict] = []
    rj = Path(trial_dir) / "result.json"
    if rj.is_file():
        for line in rj.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    elif (Path(trial_dir) / "progress.csv").is_file():
        import pandas as pd

        rows = pd.read_csv(Path(trial_dir) / "progress.csv").to_dict("records")
    by_epoch: dict[int, dict] = {}
    for r in rows:
        if isinstance(r.get("epoch"), int | float) and math.isfinite(r["epoch"]):
            by_epoch[int(r["epoch"])] = r  # a restarted trial repeats epochs: keep the last
    for e in sorted(by_epoch):
        r = by_epoch[e]
        out["epoch"].append(e)
        for k in ("val_macro_f1", "val_loss"):
            v = r.get(k)
            out[k].append(float(v) if isinstance(v, int | float) else float("nan"))
    out["rows"] = [by_epoch[e] for e in sorted(by_epoch)]
    return out


def pareto_mask(points: np.ndarray, modes: list[str]) -> list[bool]:
    """True for points no other point dominates (>= on every objective, > on one)."""
    signed = points * np.array([1.0 if m == "max" else -1.0 for m in modes])
    mask = []
    for i in range(len(signed)):
        dominated = np.any(np.all(signed >= signed[i], axis=1) & np.any(signed > signed[i], axis=1))
        mask.append(not dominated)
    return mask


def _key_params(table, limit: int = 8) -> list[str]:
    cols = []
    for c in table.columns:
        if not c.startswith("config/") or c[len("config/") :] in HIDDEN_CONFIG:
            continue
        vals = table[c].dropna().astype(str)
        if vals.nunique() > 1:
            cols.append((-len(vals), c))
    return [c for _, c in sorted(cols)[:limit]]


def _pick_cases(y, pred, conf, k: int, n_correct: int, n_wrong: int) -> tuple[list, list]:
    """Indices of class-k test cases: the most confident correct ones, the most confident wrong."""
    idx = np.flatnonzero(y == k)
    right = sorted(idx[pred[idx] == k], key=lambda i: -conf[i])
    wrong = sorted(idx[pred[idx] != k], key=lambda i: -conf[i])
    return [int(i) for i in right[:n_correct]], [int(i) for i in wrong[:n_wrong]]


def _batch(data, idx: list[int], record: dict) -> torch.Tensor:
    """Test images `idx` as the member saw them (its own normalisation and channels)."""
    from ray_xray.inference import record_feed

    return record_feed(record, torch.device("cpu"))(torch.from_numpy(data.images["test"][idx]))


def _title(classes, t: int, p: int, prob: float) -> str:
    return f"true {classes[t][:12]}\npred {classes[p][:12]} {prob:.2f}"


# ---------------------------------------------------------------- sections


def summary_section(ctx: dict) -> str:
    m = ctx["metrics"]
    classes = ctx["classes"]
    best = m["members"][0]
    chosen = next(e for e in m["ensembles"] if e["chosen"])
    bt, et = best["test"], chosen["test"]

    def recalls(t):
        return ", ".join(f"{class_html(c)} {t['recall'][c]:.3f}" for c in classes)

    n_members = sum(1 for w in chosen["weights"].values() if w > 0)
    iv = et.get("intervals") or {}
    acc_ci = (iv.get("accuracy") or {}).get("ci") or [math.nan, math.nan]
    f1_ci = (iv.get("bootstrap") or {}).get("macro_f1")
    text = (
        f"Best single trial <b>{H.esc(best['name'])}</b> (rank 1 by the sweep's "
        f"{H.esc(m['ranking_metric'][5:])}): test macro-F1 <b>{bt['macro_f1']:.3f}</b>, "
        f"recall {recalls(bt)}, ECE {best['uncalibrated']['test_ece']:.3f} as trained "
        f"({bt['ece']:.3f} after temperature scaling). "
        f"Chosen ensemble <b>{H.esc(chosen['name'])}</b> ({n_members} distinct member(s); "
        f"{H.esc(chosen['description'])}): test macro-F1 <b>{et['macro_f1']:.3f}</b>, "
        f"recall {recalls(et)}, ECE {et['ece']:.3f}. "
        f"The ensemble method was picked by the lowest validation NLL among the three built; test "
        f"data ({et['n']} images) was used only for these numbers — with that many images, "
        f"the ensemble's accuracy {et['accuracy']:.3f} has a 95% interval of "
        f"{H.num(acc_ci[0])}–{H.num(acc_ci[1])} (Wilson)"
        + (f" and its macro-F1 {H.num(f1_ci[0])}–{H.num(f1_ci[1])} (bootstrap)" if f1_ci else "")
        + "; the section 'Uncertainty per class' gives every class's."
    )
    for c in classes:
        if is_highlight(c):
            d = et["recall"][c] - bt["recall"][c]
            word = "higher" if d > 0 else "lower" if d < 0 else "the same"
            sens = ((iv.get("per_class") or {}).get(c) or {}).get("sensitivity") or {}
            lo, hi = sens.get("ci") or [math.nan, math.nan]
            text += (
                f" <b>{class_html(c)} recall</b> (sensitivity): {bt['recall'][c]:.3f} for the best "
                f"trial, {et['recall'][c]:.3f} for the ensemble ({word}"
                + (f", {d:+.3f}" if d else "")
                + f"; {et['support'][c]} such test images, 95% interval "
                f"{H.num(lo)}–{H.num(hi)})."
            )
    agreement = m.get("val_test_agreement") or members_agreement(m)
    if agreement.get("warning"):
        text += f" <b>Warning:</b> {H.esc(agreement['warning'])}."
    return H.raw_para(text, "summary")


def members_agreement(m: dict) -> dict:
    """`agreement.val_test_agreement` over the evaluated members (val and test macro-F1)."""
    from .agreement import val_test_agreement

    members = m["members"]
    return val_test_agreement(
        [e["name"] for e in members],
        [e["val"]["macro_f1"] for e in members],
        [e["test"]["macro_f1"] for e in members],
    )


def agreement_section(ctx: dict) -> str:
    from .agreement import val_origin

    m = ctx["metrics"]
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
    parts = [H.para(text)]
    if a.get("warning"):
        parts.append(H.raw_para(f"<b>warning:</b> {H.esc(a['warning'])}", "note"))
    parts.append(H.table(["trial (by validation)", "val macro-F1", "test macro-F1"], rows))
    return H.section("Validation vs test", *parts, anchor="agreement")


def comparison_section(ctx: dict) -> str:
    m, classes = ctx["metrics"], ctx["classes"]
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
            acc = H.ci(t["accuracy"], (iv.get("accuracy") or {}).get("ci"))
            rows.append(
                [
                    e["name"],
                    kind,
                    e.get("temperature"),
                    e.get("chosen_weight"),
                    e["val"]["macro_f1"],
                    e["val"]["nll"],
                    acc,
                    H.ci(t["macro_f1"], boot.get("macro_f1")),
                    t["weighted_f1"],
                    H.ci(t["auc"], boot.get("auc")),
                    t["pr_ap_macro"],
                    t["ece"],
                    t["nll"],
                ]
                + [t["recall"][c] for c in classes]
            )
            cls.append("chosen" if e.get("chosen") else "")
    cap = H.para(
        "Test metrics of every member (after temperature scaling: T is the fitted temperature; "
        "accuracy, F1 and AUC do not change with T, ECE and NLL do) and every ensemble. "
        "'weight' is the member's weight in the chosen ensemble (highlighted). PR-AP is the "
        "macro average of per-class average precision; ECE uses 15 equal-width bins on the "
        "top-class confidence. Intervals: Wilson 95% for accuracy, stratified bootstrap (seeded) "
        "95% for macro-F1 and ROC-AUC. Full numbers, per-class precision/F1 and validation "
        "metrics are in metrics.json and comparison.csv."
    )
    return H.section(
        "Members and ensembles on test", cap, H.table(headers, rows, cls), anchor="comparison"
    )


def threshold_text(t) -> str | None:
    """Enough digits to tell thresholds near 0 or 1 apart (0.999962, 3.1e-05), not '0.000'."""
    if t is None or not math.isfinite(t):
        return None
    return H.Shown(f"{t:.3g}" if 0 < t < 1e-3 else f"{t:.6g}")


def _op_rows(entry: dict, classes: list[str]) -> list[list]:
    rows = []
    for c in classes:
        for name, r in entry["operating_points"][c].items():
            test = r.get("test") or {}
            sens, spec = test.get("sensitivity") or {}, test.get("specificity") or {}
            kind = r.get("kind", "specificity")
            rows.append(
                [
                    c,
                    name,
                    f"{kind} >= {r.get('target', float(name[-4:])):.2f}",
                    threshold_text(r["threshold"]),
                    r.get("threshold_logit"),
                    r["val_sensitivity"],
                    r["val_specificity"],
                    H.ci(r["test_sensitivity"], sens.get("ci")),
                    H.ci(r["test_specificity"], spec.get("ci")),
                ]
            )
    return rows


def operating_section(ctx: dict) -> str:
    m, classes = ctx["metrics"], ctx["classes"]
    chosen = next(e for e in m["ensembles"] if e["chosen"])
    parts = [
        H.para(
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
    headers = [
        "class",
        "name",
        "target on validation",
        "threshold",
        "log-odds",
        "val sensitivity",
        "val specificity",
        "test sensitivity [95% CI]",
        "test specificity [95% CI]",
    ]
    for entry in (chosen, m["members"][0]):
        parts.append(H.raw_para(f"<b>{H.esc(entry['name'])}</b>"))
        parts.append(H.table(headers, _op_rows(entry, classes)))
    return H.section("Operating points", *parts, anchor="operating-points")


def intervals_section(ctx: dict) -> str:
    """Per class: sensitivity, specificity, precision (Wilson), ROC-AUC (bootstrap), PR-AP."""
    m, classes = ctx["metrics"], ctx["classes"]
    chosen = next(e for e in m["ensembles"] if e["chosen"])
    parts = [
        H.para(
            "What each test figure could plausibly be, given how many images it rests on. "
            "Sensitivity (= recall), specificity and precision (= PPV) are one-vs-rest at the "
            "argmax decision, with Wilson 95% score intervals (k/n shown: a 1.000 on 99 images is "
            "compatible with 0.963); ROC-AUC per class and macro-F1 / macro AUC with stratified, "
            "seeded percentile-bootstrap 95% intervals (resampling within each true class); PR-AP "
            "is the average precision per class (prevalence is its chance level)."
        )
    ]
    for entry in (chosen, m["members"][0]):
        t = entry["test"]
        iv = t.get("intervals")
        if not iv:
            continue
        boot = iv["bootstrap"]
        rows = []
        for c in classes:
            pc = iv["per_class"][c]
            frac = lambda p: f"{p['k']}/{p['n']}"  # noqa: E731
            rows.append(
                [
                    c,
                    t["support"][c],
                    H.ci(pc["sensitivity"]["value"], pc["sensitivity"]["ci"]),
                    frac(pc["sensitivity"]),
                    H.ci(pc["specificity"]["value"], pc["specificity"]["ci"]),
                    frac(pc["specificity"]),
                    H.ci(pc["precision"]["value"], pc["precision"]["ci"]),
                    frac(pc["precision"]),
                    H.ci(t["auc_per_class"][c], boot["auc_per_class"].get(c)),
                    t["pr_ap"][c],
                ]
            )
        parts.append(
            H.raw_para(
                f"<b>{H.esc(entry['name'])}</b>: macro-F1 {H.esc(H.ci(t['macro_f1'], boot['macro_f1']))}"
                f", macro ROC-AUC {H.esc(H.ci(t['auc'], boot['auc']) or '–')}, accuracy "
                f"{H.esc(H.ci(t['accuracy'], iv['accuracy']['ci']))} ({boot['n_boot']} bootstrap "
                f"resamples, seed {boot['seed']})."
            )
        )
        parts.append(
            H.table(
                [
                    "class",
                    "test n",
                    "sensitivity [95% CI]",
                    "k/n",
                    "specificity [95% CI]",
                    "k/n",
                    "precision [95% CI]",
                    "k/n",
                    "ROC-AUC [95% CI]",
                    "PR-AP",
                ],
                rows,
            )
        )
    return H.section("Uncertainty per class", *parts, anchor="intervals")


def trial_section(ctx: dict) -> str:
    exp = ctx["exp"]
    table, key, mode = exp["table"], exp["key"], exp["mode"]
    t = table.copy()
    t["_m"] = t[key].astype(float)
    t["_bad"] = t["_m"].isna() | (t["status"] == "ERROR")
    t = t.sort_values(["_bad", "_m"], ascending=[True, mode == "min"], kind="stable")
    params = _key_params(table)
    member_ids = {mm.trial_id for mm in ctx["members"]}
    headers = ["rank", "trial", "model", "status", "epochs", key.replace("best_", "best ")]
    headers += [p[len("config/") :] for p in params] + ["in ensemble pool", "error"]
    rows = []
    for rank, r in enumerate(t.to_dict("records"), start=1):
        row = [rank, str(r["trial_id"]), r.get("model"), r["status"], r.get("epochs"), r["_m"]]
        for p in params:
            v = r.get(p)
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
                v = int(v)  # an int column that pandas widened to float for its gaps
            row.append(v)
        err = r.get("error")
        row += [
            "yes" if str(r["trial_id"]) in member_ids else "",
            err[:120] if isinstance(err, str) else "",
        ]
        rows.append([v.item() if hasattr(v, "item") else v for v in row])
    cap = H.para(
        f"Every trial of the sweep, ranked by {key[5:]} on validation "
        f"({'higher' if mode == 'max' else 'lower'} is better; failed trials last). Trials stopped "
        "early by ASHA have fewer epochs. Columns after the metric are the hyperparameters that "
        "varied between trials; '–' means the parameter does not apply to that architecture. "
        f"The top {len(member_ids)} usable trials form the ensemble pool."
    )
    return H.section("Trials", cap, H.table(headers, rows, small_sig=True), anchor="trials")


def pareto_section(ctx: dict, figs: Figures) -> str:
    exp = ctx["exp"]
    objective = exp["objective"]
    if len(objective) < 2:
        return ""
    from ray_xray.metrics import metric_mode
    from ray_xray.sweep_folder import relocate

    names, values = [], []
    for r in exp["table"].to_dict("records"):
        tid = str(r["trial_id"])
        h = read_history(relocate(r.get("trial_dir"), exp["exp_dir"], tid) or exp["exp_dir"] / tid)
        best = []
        for metric in objective[:2]:
            vals = [
                float(x[metric])
                for x in h.get("rows", [])
                if isinstance(x.get(metric), int | float) and math.isfinite(x[metric])
            ]
            best.append((max if metric_mode(metric) == "max" else min)(vals) if vals else None)
        if None not in best:
            names.append(tid)
            values.append(best)
    if len(values) < 2:
        return H.section(
            "Pareto front",
            H.para(
                f"Multi-objective sweep ({', '.join(objective)}) but fewer than 2 trials have both "
                "metrics logged: no front to draw.",
                "note",
            ),
        )
    modes = [metric_mode(x) for x in objective[:2]]
    pts = np.array(values, dtype=float)
    mask = pareto_mask(pts, modes)
    cap = (
        f"Each trial's best validation {objective[0]} ({modes[0]}imise) against its best "
        f"{objective[1]} ({modes[1]}imise), from result.json; red points are not beaten on "
        "both at once by any other trial (the Pareto front)."
    )
    rows = [
        [n, v[0], v[1], "yes" if f else ""] for n, v, f in zip(names, values, mask, strict=True)
    ]
    return H.section(
        "Pareto front",
        figs.make(
            "pareto",
            cap,
            P.pareto,
            [(n, v[0], v[1]) for n, v in zip(names, values, strict=True)],
            mask,
            (objective[0], objective[1]),
        ),
        H.table(["trial", objective[0], objective[1], "on front"], rows),
        anchor="pareto",
    )


def evaluation_sections(ctx: dict, figs: Figures) -> str:
    m, classes = ctx["metrics"], ctx["classes"]
    from ray_xray.calibration import reliability_bins

    best_m = ctx["members"][0]
    chosen = ctx["chosen"]
    ens = ctx["ensembles"][chosen]
    ens_name = f"ensemble_{chosen}"
    y = ctx["y_test"]
    cm_best = m["members"][0]["test"]["confusion"]
    cm_ens = next(e for e in m["ensembles"] if e["chosen"])["test"]["confusion"]
    out = [
        H.section(
            "Confusion matrices",
            figs.make(
                "confusion",
                f"Test confusion matrices: counts and row percentages (recall on the "
                f"diagonal). Left: best single trial {best_m.name}; right: {ens_name}.",
                P.confusion_matrices,
                [(f"best trial {best_m.name}", cm_best), (ens_name, cm_ens)],
                classes,
            ),
            anchor="confusion",
        )
    ]
    out.append(
        H.section(
            "ROC and precision-recall curves",
            figs.make(
                "roc_pr",
                f"One-vs-rest ROC (left) and precision-recall (right) curves per class for "
                f"{ens_name} on test. Dashed line: chance. When every class's AUC is 0.97 or more, "
                "each panel has a zoomed inset of its top corner.",
                P.roc_pr,
                y,
                ens["test_prob"],
                classes,
                title=ens_name,
            ),
            anchor="roc",
        )
    )
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
        (
            ens_name,
            reliability_bins(y, ens["test_prob"]),
            next(e for e in m["ensembles"] if e["chosen"])["test"]["ece"],
        ),
    ]
    out.append(
        H.section(
            "Calibration",
            figs.make(
                "reliability",
                "Reliability diagrams on test (15 confidence bins): blue bars are the "
                "accuracy of the cases in each bin, red hatching the gap to their mean confidence, the "
                "number over each bar how many cases the bin holds; a calibrated "
                "model follows the dashed diagonal. Best trial before and after temperature scaling "
                "(T fitted on validation), then the chosen ensemble.",
                P.reliability,
                panels,
            ),
            anchor="calibration",
        )
    )
    return "".join(out)


def display_data(ctx: dict):
    """The member data with the largest images (all share val/test order)."""
    return max(ctx["datas"].values(), key=lambda d: d.img_size)


def samples_section(ctx: dict, figs: Figures) -> str:
    classes, y = ctx["classes"], ctx["y_test"]
    prob = ctx["ensembles"][ctx["chosen"]]["test_prob"]
    pred, conf = prob.argmax(1), prob.max(1)
    data = display_data(ctx)
    cases = []
    for k in range(len(classes)):
        right, wrong = _pick_cases(y, pred, conf, k, 4, 4)
        idx = (wrong[:2] + right + wrong[2:])[:4]  # <= 2 mistakes unless there is nothing else
        row = [
            {
                "image": data.images["test"][i],
                "correct": pred[i] == y[i],
                "title": _title(classes, y[i], pred[i], conf[i]),
            }
            for i in idx
        ]
        cases += row + [None] * (4 - len(row))
    cap = (
        f"Test images, one row per true class, predicted by ensemble_{ctx['chosen']}: up to 2 "
        "mistakes (red) first, then confident correct cases (green), more mistakes if the class "
        "has too few correct ones. Title: true class, predicted "
        "class and its probability."
    )
    return H.section(
        "Sample test predictions",
        figs.make("samples", cap, P.sample_grid, cases, 4),
        anchor="samples",
    )


def _size_chans(record: dict) -> tuple[int, int]:
    """(img_size, in_chans) of a member's model record."""
    from ray_xray.checkpoint import preprocess

    pre = preprocess(record)
    return pre["img_size"], pre["in_chans"]


def gradcam_candidate(ctx: dict):
    """The best-ranked convolutional member whose Grad-CAM layer is at least 2x2 (a 1x1 map,
    e.g. resnet18 at 32 px, is flat); failing that the best convolutional member at all."""
    from ray_xray.gradcam import cam_resolution, supports_gradcam
    from ray_xray.inference import model_from_record

    fallback = None
    for mem in ctx["members"]:
        model = model_from_record(mem.record)
        if not supports_gradcam(model):
            continue
        res = cam_resolution(model, *_size_chans(mem.record))
        if res and min(res) >= 2:
            return mem, model, res
        fallback = fallback or (mem, model, res)
    return fallback


def gradcam_section(ctx: dict, figs: Figures) -> str:
    from ray_xray.gradcam import cam_target, grad_cam

    classes, y = ctx["classes"], ctx["y_test"]
    found = gradcam_candidate(ctx)
    if found is None:
        return H.section(
            "Grad-CAM",
            H.para("No convolutional member with a Grad-CAM layer in the ensemble pool.", "note"),
        )
    mem, model, res = found
    data = ctx["datas"][mem.data_key]
    pred, conf = mem.test_prob.argmax(1), mem.test_prob.max(1)
    rows, labels = [], []
    for k, cls in enumerate(classes):
        right, wrong = _pick_cases(y, pred, conf, k, 2, 2)
        cells: list = []
        for group in (right, wrong):
            if group:
                maps = grad_cam(
                    model, _batch(data, group, mem.record), torch.as_tensor(pred[group])
                )
                cells += [
                    {
                        "image": data.images["test"][i],
                        "map": maps[j],
                        "correct": bool(pred[i] == y[i]),
                        "title": _title(classes, y[i], pred[i], conf[i]),
                    }
                    for j, i in enumerate(group)
                ]
            cells += [None] * (2 - len(group))
        rows.append(cells)
        labels.append(f"true {cls}")
    where = f"{res[0]}x{res[1]} feature map" if res else "feature map"
    chosen = cam_target(model, *_size_chans(mem.record))
    layer = chosen.name if chosen else "?"
    cap = (
        f"Grad-CAM of {mem.name} (rank {mem.rank}: the best-ranked convolutional member whose "
        "Grad-CAM layer is larger than 1x1; "
        f"layer {layer}, {where} at {_size_chans(mem.record)[0]} px) on test "
        "images: per true class two correct (green) then two wrong (red) cases. The heat map "
        "(red = most) is where the evidence for the predicted class came from: ReLU of the "
        "gradient-weighted sum of the layer's feature maps, upsampled to the image and scaled "
        "to [0, 1] (pytorch-grad-cam). The layer is the deepest whose map is at least 8x8 and "
        "1/16 of the image side (the Grad-CAM paper used 14x14 at 224 px)."
    )
    if res and min(res) < 2:
        cap += " At this image size the layer is 1x1, so the maps carry no spatial information."
    return H.section(
        "Grad-CAM", figs.make("gradcam", cap, P.heatmap_grid, rows, labels), anchor="gradcam"
    )


def attention_section(ctx: dict, figs: Figures) -> str:
    from ray_xray.gradcam import attention_maps
    from ray_xray.inference import model_from_record

    classes, y = ctx["classes"], ctx["y_test"]
    parts = []
    for arch in ("lstm", "vit"):
        mem = next((m for m in ctx["members"] if m.model_name == arch), None)
        if mem is None:
            continue
        model = model_from_record(mem.record)
        data = ctx["datas"][mem.data_key]
        pred, conf = mem.test_prob.argmax(1), mem.test_prob.max(1)
        idx = []
        for k in range(len(classes)):
            right, wrong = _pick_cases(y, pred, conf, k, 1, 1)
            idx += right + wrong
        if not idx:
            continue
        res = attention_maps(model, _batch(data, idx, mem.record))
        if res is None:
            parts.append(H.para(f"{mem.name} records no attention (built without it).", "note"))
            continue
        kind, maps = res
        cases = [
            {
                "image": data.images["test"][i],
                "correct": pred[i] == y[i],
                "title": _title(classes, y[i], pred[i], conf[i]),
            }
            for i in idx
        ]
        if kind == "rows":
            for c, r in zip(cases, maps, strict=True):
                c["rows"] = r
            parts.append(
                figs.make(
                    f"attention_{arch}",
                    (
                        f"Row attention of {mem.name}: the LSTM reads the image row by row, and the bar "
                        "beside each image is the weight its attention gave each row (longest = most). One "
                        "correct (green) and one wrong (red) test case per true class where available."
                    ),
                    P.row_attention_grid,
                    cases,
                    4,
                )
            )
        else:
            for c, mp in zip(cases, maps, strict=True):
                c["map"] = mp
            parts.append(
                figs.make(
                    f"attention_{arch}",
                    (
                        f"ViT attention of {mem.name}: attention from the CLS token to each image patch in "
                        "the last transformer block, averaged over heads and upsampled (red = most). One "
                        "correct (green) and one wrong (red) test case per true class where available."
                    ),
                    P.heatmap_grid,
                    [cases[i : i + 4] for i in range(0, len(cases), 4)],
                    [""] * (-(-len(cases) // 4)),
                )
            )
    if not parts:
        return ""
    return H.section("Attention maps", *parts, anchor="attention")


def method_section(ctx: dict) -> str:
    m = ctx["metrics"]
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
    return H.section(
        "Method",
        H.para(text),
        H.para("Greedy selection, round by round:"),
        H.table(["round", "added member", "val NLL of the bag"], rows),
        anchor="method",
    )


def _external_step(metrics: dict):
    """The 'External sets' section's step, None when the sweep scored no external set."""
    if not metrics.get("external"):
        return None
    from .external import external_section

    return lambda: external_section(metrics)


def write_report(ctx: dict) -> Path:
    out = Path(ctx["out"])
    figs = Figures(ctx)
    m = ctx["metrics"]
    title = f"Sweep report: {m['experiment']}"
    header = (
        f'<h1>{H.esc(title)}</h1><p class="meta">data <code>{H.esc(m["data"])}</code> · classes '
        f"{', '.join(class_html(c) for c in m['classes'])} · generated {H.esc(m['created'])} · "
        f"experiment <code>{H.esc(m['experiment_dir'])}</code></p>"
    )
    body = [header, summary_section(ctx)]
    from .sweep import sweep_sections

    try:
        sweep_steps = dict(sweep_sections(ctx, figs))
    except Exception as exc:  # unreadable trial logs cost these sections, not the report
        _log(ctx, f"sweep sections failed: {type(exc).__name__}: {exc}")
        sweep_steps = {}
    steps = [
        ("context", sweep_steps.get("context")),
        ("comparison", lambda: comparison_section(ctx)),
        ("intervals", lambda: intervals_section(ctx)),
        ("agreement", lambda: agreement_section(ctx)),
        ("external", _external_step(m)),
        ("operating points", lambda: operating_section(ctx)),
        ("trials", lambda: trial_section(ctx)),
        ("curves", sweep_steps.get("curves")),
        ("history", sweep_steps.get("history")),
        ("importance", sweep_steps.get("importance")),
        ("pareto", lambda: pareto_section(ctx, figs)),
        ("evaluation", lambda: evaluation_sections(ctx, figs)),
        ("samples", lambda: samples_section(ctx, figs)),
        ("gradcam", lambda: gradcam_section(ctx, figs)),
        ("attention", lambda: attention_section(ctx, figs)),
        ("method", lambda: method_section(ctx)),
    ]
    for name, fn in steps:
        if fn is None:
            continue
        try:
            body.append(fn())
        except Exception as exc:
            msg = f"section '{name}' failed: {type(exc).__name__}: {exc}"
            _log(ctx, msg)
            body.append(H.para(msg[:400], "note"))
    body.append(
        H.para(
            "Files beside this page: ensemble.pt, metrics.json, comparison.csv, figures/*.png.",
            "meta",
        )
    )
    path = write_atomic(out / "report.html", H.page(title, "".join(body)))
    _log(ctx, f"wrote {path}")
    return path
