"""`evaluate(checkpoint, data)`: metrics with intervals, operating points, shift check, stress
test for any model or ensemble on any labelled set; writes metrics.json and report.html."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import stats
from ..cli import UserError
from ..device import pick_device
from ..io import write_atomic
from ..sweep_folder import ENSEMBLE_DIR
from .infer import probabilities
from .result import POINTS_FIXED, EvalResult, metric_name
from .sources import (
    SPLIT_CHOICES,
    EvalSet,
    Subject,
    external_set,
    own_sets,
    reachable,
    resolve_subject,
    same_data,
)
from .stress import stratified_subset

SPECIFICITIES = (0.90, 0.95)


def log(msg: str) -> None:
    """A progress line on stderr, prefixed `evaluate:` (stdout stays for the results)."""
    print(f"evaluate: {msg}", file=sys.stderr, flush=True)


def default_out(subject: Subject, data: str, split: str) -> Path:
    """runs/evaluate/<model>_on_<data>_<split>, names made file-system safe; <model> names the
    folder the model came from (a sweep's ensemble: the sweep, not its ENSEMBLE_DIR, which
    every sweep has)."""
    folder = subject.path.parent if subject.path.is_file() else subject.path
    if subject.kind == "ensemble" and folder.name == ENSEMBLE_DIR:
        folder = folder.parent
    run = folder.name
    name = Path(data.rstrip("/")).name if "://" not in data else data
    raw = f"{subject.members[0]['model'] if subject.kind == 'model' else 'ensemble'}-{run}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{raw}_on_{name}_{split}")
    return Path("runs") / "evaluate" / safe


def wilson_proportions(headline: dict, y: np.ndarray, pred: np.ndarray, classes: list) -> None:
    """Replace the bootstrap intervals of the headline's proportions (accuracy, recall_<class>)
    with Wilson score intervals (`ray_xray.stats.wilson`) and add their counts `k`/`n`.

    y, pred: (N,) int class indices. A bootstrap of 0/76 resamples only zeros and reads as
    certainty ([0, 0]); Wilson gives [0, 0.048]. Edits `headline` in place."""
    from ..stats import wilson

    rows = [("accuracy", int((y == pred).sum()), len(y))]
    rows += [
        (f"recall_{c}", int(((y == k) & (pred == k)).sum()), int((y == k).sum()))
        for k, c in enumerate(classes)
    ]
    for name, k, n in rows:
        if name in headline and n:
            lo, hi = wilson(k, n)
            headline[name].update(low=lo, high=hi, k=k, n=n, interval="wilson")


def own_split_note(warning: str) -> str:
    """A shift-check line about the model's own val and test splits, worded as what it is."""
    return (
        "own data, not a site shift: "
        + warning.replace(": beyond resampling noise)", ")")
        + "; two splits of the data it was trained on differ beyond resampling noise"
    )


def operating_points(y_val, p_val, sets: dict, classes: list[str], targets=SPECIFICITIES) -> dict:
    """Per class and target specificity: the lowest threshold on the class's probability that
    reaches the target on the model's own validation split (`ray_xray.scores`' rule), and the
    sensitivity/specificity it gives on each of `sets` ({name: (y, prob)}), with `holds`:
    the specificity is not significantly (z 1.96) below the target on that set."""
    from ..scores import threshold_for_specificity

    pos = [np.asarray(y_val) == k for k in range(len(classes))]
    thresholds = {
        c: {t: threshold_for_specificity(p_val[~pos[k], k], p_val[:, k], t) for t in targets}
        for k, c in enumerate(classes)
    }
    return _points_here(thresholds, sets, classes, (y_val, p_val))


def stored_operating_points(subject: Subject, sets: dict, targets=SPECIFICITIES) -> dict | None:
    """`operating_points`' table from the thresholds stored in an ensemble (a --cv ensemble's,
    fixed on its out-of-fold predictions: `ensemble/folds.py`), for a model whose own val
    split is not held out. No val columns (the out-of-fold figures are in the sweep's
    report). None when it stores none."""
    from ..scores import point_name

    stored = subject.stored_points
    if not stored:
        return None
    thresholds = {
        c: {t: stored.get(c, {}).get(point_name("spec", t)) for t in targets}
        for c in subject.classes
    }
    return _points_here(thresholds, sets, subject.classes)


def _points_here(thresholds: dict, sets: dict, classes: list[str], val=None) -> dict:
    """{class: {"0.90": row}} for thresholds {class: {target: probability or None}}: the
    sensitivity/specificity each gives on every set of `sets` ({name: (y, prob)}) and whether
    its specificity holds there (`stats.specificity_holds`); with `val` (y, prob), also there."""
    from ..scores import sens_spec

    out: dict = {}
    for k, c in enumerate(classes):
        out[c] = {}
        named = ({"val": val} if val is not None else {}) | sets
        for target, t in thresholds[c].items():
            row: dict = {"threshold": t}
            for name, (y, p) in named.items():
                pos = np.asarray(y) == k
                sens, spec = sens_spec(pos, p[:, k], t) if t is not None else (math.nan,) * 2
                row[f"{name}_sensitivity"], row[f"{name}_specificity"] = sens, spec
                if name != "val":
                    row[f"{name}_holds"] = (
                        stats.specificity_holds(spec, target, int((~pos).sum()))
                        if t is not None
                        else None
                    )
            out[c][f"{target:.2f}"] = row
    return out


def _headline_warning(name: str, d: dict, where: str, ref_split: str) -> str:
    return (
        f"{metric_name(name)} fell from {d['reference']:.3f} on the model's own {ref_split} "
        f"split to {d['new']:.3f} on {where} (drop {d['drop']:.3f}, 95% interval "
        f"{d['low']:.3f} to {d['high']:.3f}: beyond resampling noise)"
    )


def _stored_reference(subject: Subject, parts: dict) -> dict:
    """The shift block when the model's own data cannot be read: its stored val metrics."""
    from ..calibration import ece

    stored = subject.members[0].get("metrics", {}) if subject.kind == "model" else {}
    ref = {
        k[len("val_") :].replace("acc", "accuracy", 1): v
        for k, v in stored.items()
        if k.startswith("val_") and k != "val_loss"
    }
    new = parts["headline"]
    rows = {
        k: {
            "reference": v,
            "new": new[k]["value"],
            "drop": v - new[k]["value"],
            "low": None,
            "high": None,
            "significant": False,
        }
        for k, v in ref.items()
        if k in new and math.isfinite(new[k]["value"])
    }
    return {
        "reference": "validation metrics stored in the checkpoint (own data not readable "
        "here: no intervals, no ECE comparison)",
        "reference_split": "val",
        "drops": rows,
        "ece": {"new": ece(parts["y"], parts["prob"])},
    }


def shift_check(
    subject: Subject,
    ref: EvalSet,
    p_ref: np.ndarray,
    ref_split: str,
    parts: dict,
    data: str,
    n_boot: int,
    seed: int,
) -> tuple[dict, list[str]]:
    """This set against one of the model's own splits (`ref`, probabilities `p_ref`): the drop
    of each headline metric with its interval, ECE on both. Returns (block, warning lines)."""
    from ..calibration import ece

    y, prob, classes = parts["y"], parts["prob"], subject.classes
    # A partial set is compared on its own classes: the reference's macro-F1/AUC average over
    # the same ones.
    only = stats.present(y, len(classes))
    ref_head, ref_samples = stats.with_intervals(
        ref.labels, p_ref, classes, n_boot, seed, only=only
    )
    drops = stats.drops(ref_head, ref_samples, parts["headline"], parts["samples"])
    warnings = [
        _headline_warning(k, d, data, ref_split) for k, d in drops.items() if d["significant"]
    ]
    block = {
        "reference": f"the model's own {ref_split} split: {ref.name}",
        "reference_split": ref_split,
        "n_reference": len(ref),
        "classes_compared": [c for c, keep in zip(classes, only, strict=True) if keep],
        "reference_headline": ref_head,
        "drops": drops,
        "ece": {"reference": ece(ref.labels, p_ref), "new": ece(y, prob)},
    }
    return block, warnings


def _load(
    subject: Subject,
    data: str,
    split: str,
    own: bool,
    want_ref: bool,
    skip_bad: bool,
    cache: str | None,
) -> tuple[EvalSet, dict, dict, list[str]]:
    """(evaluation set, class info, reference sets {"val", "test"} of the model's own data,
    notes). The own data is read for the operating points (val) and the shift check (test)."""
    notes: list[str] = []
    if own:
        need = list(dict.fromkeys([split, "val"]))
        sets = own_sets(subject, need, cache, limit=0)
        ev = sets[split]
        present = [c for k, c in enumerate(subject.classes) if (ev.labels == k).any()]
        info = {
            "data_classes": present,
            "missing_classes": [c for c in subject.classes if c not in present],
            "note": "",
        }
        return ev, info, {"val": sets["val"]}, notes
    ev, info = external_set(data, subject, split, skip_bad, cache)
    refs: dict = {}
    if not reachable(subject.own_data):
        notes.append(
            f"the model's own data ({subject.own_data}) is not readable here: no "
            "operating points from its validation split, shift check from stored "
            "figures only"
        )
        return ev, info, refs, notes
    try:
        refs = own_sets(subject, ["val", "test"] if want_ref else ["val"], cache, limit=0)
    except ValueError as exc:  # moved or changed since training: evaluate without it
        notes.append(f"the model's own data could not be loaded ({exc}): no reference figures")
    return ev, info, refs, notes


def _held_out(subject: Subject, refs: dict, notes: list[str]) -> tuple[dict, list[str]]:
    """`refs` less the model's own val split when its members trained on it (a --cv sweep's
    fold models and refits pool train+val), with a note saying so: thresholds or a shift
    reference from images a model trained on would flatter it."""
    if "val" not in refs or not _from_cv(subject):
        return refs, notes
    note = (
        "its members trained on its own data's val split (--cv pools train and val): no "
        "operating points or validation reference from it (operating points: those fixed out "
        "of fold, stored in the ensemble)"
    )
    return {k: v for k, v in refs.items() if k != "val"}, [*notes, note]


def _compare(
    subject: Subject,
    refs: dict,
    parts: dict,
    data: str,
    dev,
    shift: str | None,
    n_boot: int,
    seed: int,
) -> tuple:
    """(operating points, where their thresholds were fixed, shift block, {"y", "prob"} of the
    reference split, warnings) from the model's own splits in `refs` ({"val"[, "test"]}).
    `shift`: the own split to compare this set with ("test" for other data, "val" for its own
    test split), None: no check."""
    y, prob = parts["y"], parts["prob"]
    shift_block, ref_arrays, warnings = None, None, []
    p_val = probabilities(subject, refs["val"], dev)[0] if "val" in refs else None
    sets = {"eval": (y, prob)}
    if shift in refs:
        p_ref = p_val if shift == "val" else probabilities(subject, refs[shift], dev)[0]
        shift_block, warnings = shift_check(
            subject, refs[shift], p_ref, shift, parts, data, n_boot, seed
        )
        ref_arrays = {"y": refs[shift].labels, "prob": p_ref, "split": shift}
        if shift == "test":
            sets["reference_test"] = (refs["test"].labels, p_ref)
    elif shift == "test" and not refs:
        shift_block = _stored_reference(subject, parts)
    if p_val is not None:
        op, fixed_on = operating_points(refs["val"].labels, p_val, sets, subject.classes), "val"
    else:  # unreadable, or a --cv model's val split, not held out (`_held_out`): stored ones
        op, fixed_on = stored_operating_points(subject, sets), _stored_where(subject)
    warnings += [
        f"{c}: the threshold for {float(t):.0%} specificity fixed {POINTS_FIXED[fixed_on]} "
        f"gives {r['eval_specificity']:.0%} specificity here"
        for c, rows in (op or {}).items()
        for t, r in rows.items()
        if r.get("eval_holds") is False
    ]
    return op, fixed_on if op else None, shift_block, ref_arrays, warnings


def _stored_where(subject: Subject) -> str:
    """ "oof" for a --cv sweep's ensemble (its thresholds were fixed out of fold), else
    "stored"."""
    return "oof" if _from_cv(subject) else "stored"


def _from_cv(subject: Subject) -> bool:
    """True when the members come from a --cv sweep (fold models, refits): they trained on
    their data's val split, and their stored thresholds were fixed out of fold."""
    return any(m["config"].get("cv_folds") for m in subject.members)


# Long only for its 16 keyword options and their docstring: the body is one line per stage
# (load, score, compare with its own splits, stress), each stage a function below.
def evaluate(
    checkpoint: str,
    data: str,
    split: str = "test",
    *,
    out: str | Path | None = None,
    stress: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    images: bool = True,
    shift: bool = True,
    skip_bad: bool = False,
    cache: str | None = None,
    stress_limit: int = 400,
    report_html: bool = True,
    limit: int = 0,
    adapt_prior: str | None = None,
    prevalence: str | None = None,
) -> EvalResult:
    """Evaluate a model or ensemble (`checkpoint`: anything `predict` takes, or a sweep folder)
    on `split` of `data` (anything `--data` takes). Writes metrics.json and report.html (with
    figures/; `images=False` leaves out the figures that show images) to `out`, default
    runs/evaluate/<model>_on_<data>_<split>. Returns the `EvalResult`.

    Every image of the split is scored (a model's own data too: its training run's
    limit_per_split is not carried over); `limit` N > 0 scores a class-stratified, seeded
    subset of N (`result.n` of `result.n_available`). Accuracy and each recall get Wilson
    score intervals from their counts (defined at 0/n and n/n, where a bootstrap gives a
    zero-width interval); macro-F1 and AUC keep the stratified bootstrap.

    `adapt_prior` "em" (the set's class prior estimated from its unlabelled images) or
    `prevalence` (a known prior, `prior.parse_prevalence`'s text): `prior_adaptation` holds the
    figures after re-weighting the posteriors to that prior, beside the unadapted ones.

    Raises UserError (exit 2) for a missing checkpoint, an unknown split, an empty split, a
    data class the model does not know, or a negative `limit`.
    """
    t0 = time.perf_counter()
    _check_arguments(split, n_boot, limit)
    subject = resolve_subject(checkpoint)
    dev, own = pick_device(device), same_data(data, subject.own_data)
    log(
        f"{subject.name}: {len(subject.members)} member(s), classes {', '.join(subject.classes)}; "
        f"data {data} ({split}){' = its own data' if own else ''}"
    )
    ev, info, refs, notes = _load(subject, data, split, own, shift, skip_bad, cache)
    refs, notes = _held_out(subject, refs, notes)
    n_available = len(ev)
    ev = _limited(ev, limit, seed)
    timings = {"data_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    parts = _score(subject, ev, dev, n_boot, seed)
    timings["predict_s"] = time.perf_counter() - t1
    adapted = None
    if adapt_prior or prevalence:
        adapted = prior_block(
            subject, ev.labels, parts["prob"], adapt_prior, prevalence, n_boot, seed, cache
        )
    against = _shift_reference(shift, own, split)
    where = f"its {split} split" if own else data
    op, fixed_on, shift_block, ref_arrays, more = _compare(
        subject, refs, parts, where, dev, against, n_boot, seed
    )
    warnings, notes = _messages(subject, info, notes, more, against)
    stress_block = None
    if stress:
        t1 = time.perf_counter()
        from .stress import run_stress

        stress_block = run_stress(subject, ev, dev, stress_limit, seed, log)
        timings["stress_s"] = time.perf_counter() - t1
    result = EvalResult(
        **_set_fields(subject, data, split, own, info, ev, n_available),
        **_score_fields(parts, n_boot, seed, subject.classes),
        operating_points=op,
        points_fixed_on=fixed_on,
        shift=shift_block,
        reference=ref_arrays,
        stress=stress_block,
        prior_adaptation=adapted,
        warnings=warnings,
        notes=notes,
        timings=timings,
    )
    out = Path(out) if out else default_out(subject, data, split)
    write(result, out, subject, images, report_html)
    return result


def _check_arguments(split: str, n_boot: int, limit: int) -> None:
    """Refuse, before anything is read, what `evaluate` cannot run: raises UserError."""
    if split not in SPLIT_CHOICES:
        raise UserError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if n_boot < 0:
        raise UserError(f"--bootstrap must be >= 0, got {n_boot}")
    if limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")


def _limited(ev: EvalSet, limit: int, seed: int) -> EvalSet:
    """`ev`, or its class-stratified seeded subset of `limit` images when `limit` is smaller."""
    if not limit or limit >= len(ev):
        return ev
    small = ev.subset(stratified_subset(ev.labels, limit, seed))
    log(f"--limit {limit}: scoring {len(small)} of the split's {len(ev)} images")
    return small


def _score(subject: Subject, ev: EvalSet, dev, n_boot: int, seed: int) -> dict:
    """The model's probabilities on `ev` and its headline figures with intervals:
    {"y": int64 (N,), "prob": float64 (N, K), "member_prob": each member's (N, K),
    "headline": `stats.with_intervals` with Wilson intervals for the proportions, "samples":
    the bootstrap samples the shift check compares}."""
    prob, member_prob = probabilities(subject, ev, dev)
    y = ev.labels
    headline, samples = stats.with_intervals(y, prob, subject.classes, n_boot, seed)
    wilson_proportions(headline, y, prob.argmax(1), subject.classes)
    return {
        "y": y,
        "prob": prob,
        "member_prob": member_prob,
        "headline": headline,
        "samples": samples,
    }


def _shift_reference(shift: bool, own: bool, split: str) -> str | None:
    """Which of the model's own splits this set is compared with: other data with its test
    split; its own test split with its validation split (the pneumonia2 lesson: validation need
    not resemble test); None when there is no check (`shift` off, or its own val/train)."""
    if not shift or (own and split != "test"):
        return None
    return "val" if own else "test"


def _messages(
    subject: Subject, info: dict, notes: list[str], more: list[str], against: str | None
) -> tuple[list[str], list[str]]:
    """(warnings, notes) of the evaluation: the checkpoint's and the data's notes, a partial
    set's warning, and the shift check's lines `more`, which are notes when they compare two
    splits of the model's own data (`against` "val"): that is not a site shift."""
    notes = ([f"checkpoint: {subject.note}"] if subject.note else []) + notes
    if info["note"]:
        notes.append(f"data: {info['note']}")
    warnings = []
    if info["missing_classes"]:
        warnings.append(
            f"partial evaluation: no {', '.join(info['missing_classes'])} images in this set; "
            "macro-F1 and AUC average over the classes present, and their recall is undefined"
        )
    if against == "val":
        notes += [own_split_note(w) if "fell from" in w else w for w in more]
    else:
        warnings += more
    return warnings, notes


def _set_fields(
    subject: Subject, data: str, split: str, own: bool, info: dict, ev: EvalSet, n_available: int
) -> dict:
    """EvalResult's fields that say what was evaluated on what (and the images, for figures)."""
    return {
        "checkpoint": str(subject.path),
        "model": subject.name,
        "kind": subject.kind,
        "data": data,
        "split": split,
        "own_data": subject.own_data,
        "is_own_data": own,
        "classes": subject.classes,
        "data_classes": info["data_classes"],
        "missing_classes": info["missing_classes"],
        "n": len(ev),
        "n_available": n_available,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "images": ev.views,
    }


def _score_fields(parts: dict, n_boot: int, seed: int, classes: list[str]) -> dict:
    """EvalResult's fields that hold the scores (`_score`'s parts): metrics, headline with its
    bootstrap settings, and the arrays the figures use."""
    from ..scores import report

    y, prob = parts["y"], parts["prob"]
    return {
        "metrics": report(y, prob, classes),
        "headline": parts["headline"],
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": stats.LEVEL, "stratified": True},
        "y": y,
        "prob": prob,
        "member_prob": parts["member_prob"],
    }


def prior_block(subject: Subject, y, prob, method, prevalence, n_boot: int, seed: int, cache):
    """The evaluation after prior adaptation (ray_xray/prior.py): the training prior (the
    ensemble's, else its first member's training split), the target prior (EM-estimated, with
    its bootstrap interval, or the given prevalence), and the headline figures with intervals
    and the full metrics on the re-weighted posteriors. Raises UserError on a bad prevalence."""
    from .. import prior
    from ..checkpoint import load_model_or_ensemble
    from ..scores import report

    classes = subject.classes
    try:
        train = prior.train_prior_of(load_model_or_ensemble(subject.path), cache)
        target = prior.parse_prevalence(prevalence, classes) if prevalence else None
        method = "known" if prevalence else method
        out = prior.adapt(prob, train, method, target, n_boot=min(n_boot, prior.N_BOOT), seed=seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    adapted = out.pop("prob")
    headline, _ = stats.with_intervals(y, adapted, classes, n_boot, seed)
    log(prior.summary_line(out, classes))
    return {**out, "headline": headline, "metrics": report(y, adapted, classes)}


def write(result: EvalResult, out: Path, subject: Subject, images: bool, html: bool) -> None:
    """metrics.json (and report.html + figures/) in `out`; paths land in result.timings."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    result.out = str(out)
    if html:
        from .report import write_eval_report

        write_eval_report(result, subject, out, images=images, log=log)
    result.timings["report_s"] = time.perf_counter() - t0
    write_atomic(out / "metrics.json", json.dumps(result.to_json(), indent=2))
    log(f"wrote {out / 'metrics.json'}" + (f", {out / 'report.html'}" if html else ""))
