"""The sweep report's 'External sets' section: the top-k members and the chosen ensemble on
each `--external` set, beside their own test figures (the block `ray_xray.tune.external`
stores in the ensemble's metrics.json under "external")."""

from __future__ import annotations

from . import html


def _ci(d: dict | None):
    """A headline/drop entry {"value"|"drop", "low", "high"} as '0.912 [0.871, 0.950]'."""
    if not d:
        return None
    value = d.get("value", d.get("drop"))
    return html.ci(value, [d.get("low"), d.get("high")])


def _row(m: dict, classes: list[str]) -> list:
    h, drops, ece = m["headline"], m.get("drops") or {}, m.get("ece") or {}
    f1 = drops.get("macro_f1") or {}
    return (
        [m["name"], m["kind"], _ci(h["accuracy"]), _ci(h["macro_f1"]), _ci(h["auc"])]
        + [_ci(h.get(f"recall_{c}")) for c in classes]
        + [f1.get("reference"), _ci(f1) if f1 else None, ece.get("new"), ece.get("reference")]
    )


def external_section(metrics: dict) -> str:
    """HTML of the section, from metrics["external"] (see `ray_xray.tune.external`)."""
    block, classes = metrics["external"], metrics["classes"]
    boot = block.get("bootstrap") or {}
    parts = [
        html.para(
            "The top-k members (as trained, no temperature) and the chosen ensemble on each "
            "external set given with --external, all of its images counted. These figures are "
            "reported only: the ranking, the members' temperatures and the ensemble were fixed on "
            "validation before these sets were read. Intervals: 95% class-stratified bootstrap "
            f"({boot.get('resamples', '?')} resamples, seed {boot.get('seed', '?')}); 'drop' is "
            "the model's macro-F1 on its own test split (over the classes the set has) minus here, "
            "with the interval of the difference (independent bootstraps of both sets). ECE: 15 bins, here and on own test. "
            "Each row equals python -m ray_xray.evaluate CHECKPOINT DATA --split all, which adds "
            "the figures, operating points and a stress test."
        )
    ]
    headers = (
        ["model", "kind", "accuracy [95% CI]", "macro-F1 [95% CI]", "ROC-AUC [95% CI]"]
        + [f"recall {c} [95% CI]" for c in classes]
        + ["own test macro-F1", "macro-F1 drop [95% CI]", "ECE here", "ECE own test"]
    )
    for s in block["sets"]:
        text = f"{s['data']}: {s['n']} images"
        if s.get("missing_classes"):
            text += (
                f" (partial: no {', '.join(s['missing_classes'])}; macro-F1 and AUC average "
                "over the classes present)"
            )
        if s.get("note"):
            text += f"; {s['note']}"
        parts.append(html.raw_para(f"<b>{html.esc(text)}</b>"))
        rows = [_row(m, classes) for m in s["models"]]
        marks = ["chosen" if m["kind"] == "ensemble" else "" for m in s["models"]]
        parts.append(html.table(headers, rows, marks))
        for m in s["models"]:
            for w in m.get("warnings") or []:
                parts.append(
                    html.raw_para(f"<b>warning:</b> {html.esc(m['name'])}: {html.esc(w)}", "note")
                )
    return html.section("External sets", *parts, anchor="external")
