"""Several models on several external labelled sets: the headline metrics with intervals and
the drop from each model's own test split, exactly as `evaluate` computes them.

A sweep's `--external` uses this (ray_xray/tune/external.py). Each figure equals what
`python -m ray_xray.evaluate CHECKPOINT DATA --split all` reports for that model and set: the
same loader (`external_set`), probabilities, intervals (`stats.with_intervals`, same resamples
and seed, then `core.wilson_proportions`) and shift check (`core.shift_check` against the model's own test split). An external
set has no train/val meaning, so all of its images count (`--split all`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .. import stats
from ..checkpoint import data_key
from ..device import pick_device
from .core import shift_check, wilson_proportions
from .infer import probabilities
from .sources import EvalSet, Subject, external_set, own_sets

SPLIT = "all"  # every image of an external set, whatever split folders it has


def _log(msg: str) -> None:
    print(f"external: {msg}", file=sys.stderr, flush=True)


def score_model(
    subject: Subject,
    ev: EvalSet,
    ref: EvalSet | None,
    p_ref,
    spec: str,
    dev,
    n_boot: int,
    seed: int,
) -> dict:
    """One model on one loaded set: {"name", "kind", "headline", "drops", "ece",
    "n_reference", "warnings"}. `headline`: accuracy, macro_f1, auc, recall_<class>, each
    {"value", "low", "high"} (95%: Wilson with "k"/"n" for accuracy and the recalls, stratified
    bootstrap for macro-F1 and AUC, as `evaluate`). `drops` (None when `ref` is None):
    metric -> {"reference" (own test), "new" (here), "drop", "low", "high", "significant"}.
    `ref`/`p_ref`: the model's own test split and its (N, K) probabilities on it."""
    prob = probabilities(subject, ev, dev)[0]
    headline, samples = stats.with_intervals(ev.labels, prob, subject.classes, n_boot, seed)
    wilson_proportions(headline, ev.labels, prob.argmax(1), subject.classes)
    out = {
        "name": subject.name,
        "kind": subject.kind,
        "headline": headline,
        "drops": None,
        "ece": None,
        "n_reference": None,
        "warnings": [],
    }
    if ref is not None:
        parts = {"y": ev.labels, "prob": prob, "headline": headline, "samples": samples}
        block, warnings = shift_check(subject, ref, p_ref, "test", parts, spec, n_boot, seed)
        out.update(
            drops=block["drops"],
            ece=block["ece"],
            n_reference=block["n_reference"],
            warnings=warnings,
        )
    return out


def _own_test(subject: Subject, cache: str | None, dev, log: Callable, memo: dict) -> tuple:
    """(the model's whole own test split (as `evaluate`: no training subset), its probabilities
    there), or (None, None) with a log line
    when its own data cannot be loaded (then no drops are reported). `memo` keeps each
    loaded test split by (data, member data settings): members of one sweep share it."""
    key = (subject.own_data, tuple(sorted({repr(data_key(m)) for m in subject.members})))
    try:
        if key not in memo:
            memo[key] = own_sets(subject, ["test"], cache, limit=0)["test"]
    except ValueError as exc:
        log(f"{subject.name}: its own test split could not be loaded ({exc}): no drops")
        return None, None
    return memo[key], probabilities(subject, memo[key], dev)[0]


def score_sets(
    subjects: list[Subject],
    specs: list[str],
    *,
    device: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    cache: str | None = None,
    skip_bad: bool = False,
    log: Callable[[str], None] = _log,
) -> list[dict]:
    """Every model of `subjects` on every labelled set of `specs` (all of each set's images).

    Returns one dict per spec, in order: {"data", "split": "all", "n", "data_classes",
    "missing_classes", "note", "models": [`score_model`'s dict per subject, in order]}.
    Each set is decoded once per distinct tuple of member input sizes; each model's own
    test split is read and predicted once. Raises UserError for an unreadable set, an empty
    set or a class the models do not know (`external_set`)."""
    dev = pick_device(device)
    loaded: dict[tuple, tuple[EvalSet, dict]] = {}
    own: dict[tuple, EvalSet] = {}
    per_spec: list[list[dict]] = [[] for _ in specs]
    for subject in subjects:
        ref, p_ref = _own_test(subject, cache, dev, log, own)
        for i, spec in enumerate(specs):
            key = (spec, tuple(subject.sizes))
            if key not in loaded:
                loaded[key] = external_set(spec, subject, SPLIT, skip_bad, cache)
            ev = loaded[key][0]
            row = score_model(subject, ev, ref, p_ref, spec, dev, n_boot, seed)
            per_spec[i].append(row)
            f1 = row["headline"]["macro_f1"]["value"]
            log(f"{subject.name} on {spec}: macro-F1 {f1:.3f} ({len(ev)} images)")
    out = []
    for spec, rows in zip(specs, per_spec, strict=True):
        ev, info = next(v for k, v in loaded.items() if k[0] == spec)
        out.append({"data": spec, "split": SPLIT, "n": len(ev), **info, "models": rows})
    return out
