"""The fold ensemble of a `--cv` sweep: the chosen configuration's K fold models, each
temperature-scaled on its own (out-of-fold) validation images, averaged with equal weights;
the next configurations' K fold models join, in their rank order, where they lower the
out-of-fold NLL (greedy forward selection, Caruana et al., ICML 2004, over whole
configurations).

With --refit-seeds S the ensemble is instead the chosen configuration's S refits (trained on
all of train+val, tune/refit.py), each scaled by the mean temperature of that configuration's
fold models, with the operating points of their out-of-fold predictions: a refit has no held-out
images of its own; the fold models are the same configuration on (K-1)/K of the images, though
each kept its best validation epoch where a refit keeps its last. The fold ensemble is kept
beside it (fold_ensemble.pt) and scored on test too, so the two compare.

Everything is fixed from validation first: the temperatures, the out-of-fold metrics, the
operating-point thresholds; ensemble.pt is saved; only then are test (and --external) images
read (`score_test` after `fit_fold_ensemble`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..calibration import apply_temperature, fit_temperature, nll
from ..checkpoint import ENSEMBLE_FILE, ensemble_record, load_state, save_ensemble
from ..data import ImageDataset, load_for_config
from ..data.dataset import loader as make_loader
from ..data.folds import fold_view
from ..device import pick_device
from ..inference import ensemble_proba, inference_setup, predict_proba
from ..io import json_safe, write_atomic
from ..scores import (
    SENSITIVITIES,
    SPECIFICITIES,
    headline_cis,
    operating_points,
    report,
    stored_points,
)
from .core import log

METHOD = "cv_folds"
DESCRIPTION = (
    "equal-weight mean of the chosen configuration's K cross-validation fold models (and of the "
    "next configurations' where they lowered the out-of-fold NLL), each temperature-scaled on "
    "its own held-out fold"
)
REFIT_METHOD = "cv_refit"
REFIT_DESCRIPTION = (
    "equal-weight mean of the chosen configuration's refits on all of train+val (one per seed), "
    "each scaled by the mean temperature of its K fold models; operating points and out-of-fold "
    "figures are those fold models'"
)
FOLD_ENSEMBLE_FILE = "fold_ensemble.pt"  # beside a refit ensemble.pt: the fold models' own


def split_proba(record: dict, images: np.ndarray, labels: np.ndarray, device) -> np.ndarray:
    """float64 (N, K) softmax probabilities of one saved model on uint8 (N, H, W) images,
    with the model's own normalisation (what predict uses)."""
    model, feed, precision, channels_last = inference_setup(record, device)
    dl = make_loader(ImageDataset(images, labels), 256, device=device)
    _, prob, _ = predict_proba(model, dl, device, precision, channels_last, feed=feed)
    return prob.astype(np.float64)


def fit_fold_ensemble(checkpoints: list[str], cache: str | None, device) -> dict:
    """Load the K fold models (best-model records under `checkpoints`, in fold order), and fit
    each one's temperature on its own fold's validation images. Test images are not read.

    Returns {"records", "temperatures", "data" (the pooled, unfolded PreparedData),
    "oof_y" (int64 (N,)), "oof_prob" (float64 (N, K), calibrated, out-of-fold), "oof_paths"
    (the N images' paths, in that order), "fold_sizes"}.
    Raises ValueError when the records are not folds 0..K-1 of one K-fold split."""
    records = [load_state(c)["best"] for c in checkpoints]
    cfgs = [r["config"] for r in records]
    k = int(cfgs[0].get("cv_folds") or 0)
    if k < 2 or sorted(int(c.get("cv_fold", -1)) for c in cfgs) != list(range(k)):
        raise ValueError("a fold ensemble needs one model per fold 0..K-1 of one --cv split")
    pooled = load_for_config({**cfgs[0], "cv_folds": 0, "cv_fold": 0}, cache)
    ys, probs, temps, sizes, paths = [], [], [], [], []
    for rec, cfg in zip(records, cfgs, strict=True):
        fold = fold_view(pooled, k, int(cfg["cv_fold"]), int(cfg.get("seed", 0)))
        raw = split_proba(rec, fold.images["val"], fold.labels["val"], device)
        t = fit_temperature(fold.labels["val"], raw)
        log(
            f"fold {cfg['cv_fold']}: {len(raw)} val images, NLL {nll(fold.labels['val'], raw):.4f}"
            f" -> {nll(fold.labels['val'], apply_temperature(raw, t)):.4f} at T={t:.3f}"
        )
        ys.append(fold.labels["val"])
        probs.append(apply_temperature(raw, t))
        temps.append(t)
        sizes.append(len(raw))
        paths += fold.paths["val"]
    return {
        "records": records,
        "temperatures": temps,
        "data": pooled,
        "oof_y": np.concatenate(ys),
        "oof_prob": np.concatenate(probs),
        "oof_paths": paths,
        "fold_sizes": sizes,
    }


def _name(record: dict, candidate: int | None = None) -> str:
    """A fold model's name in ensemble.pt: model, candidate (when several may join), fold."""
    cand = "" if candidate is None else f"c{candidate}:"
    return f"{record['model']}:{cand}fold{record['config']['cv_fold']}"


def _aligned(first: dict, other: dict) -> np.ndarray | None:
    """`other`'s out-of-fold probabilities in `first`'s image order (None when the two do not
    hold the same images, or a path repeats: then they cannot be averaged image by image)."""
    where = {p: i for i, p in enumerate(other["oof_paths"])}
    if len(where) != len(other["oof_paths"]) or set(where) != set(first["oof_paths"]):
        return None
    return other["oof_prob"][[where[p] for p in first["oof_paths"]]]


def add_configurations(fitted: list[dict], candidates: list[int]) -> dict:
    """Greedy forward selection over whole configurations: `fitted[0]` (the chosen one's
    `fit_fold_ensemble`) is kept; each next one, in rank order, joins when the equal-weight
    mean of the kept configurations' out-of-fold probabilities gets a lower NLL with it. Every
    configuration's OOF prediction of an image comes from a model that never trained on it, so
    the mean is out of fold too. No test image is read. `candidates`: each one's candidate
    index (cv.json). Returns `fitted[0]`'s dict over the kept configurations' records, with
    "configurations": [{"candidate", "oof_nll" (the mean's NLL with it), "kept"}]."""
    first = fitted[0]
    y = first["oof_y"]
    kept, probs = [first], [first["oof_prob"]]
    log_rows = [{"candidate": candidates[0], "oof_nll": nll(y, probs[0]), "kept": True}]
    for cand, other in zip(candidates[1:], fitted[1:], strict=True):
        p = _aligned(first, other)
        before = nll(y, np.mean(probs, axis=0))
        trial = nll(y, np.mean([*probs, p], axis=0)) if p is not None else None
        keep = trial is not None and trial < before
        log_rows.append({"candidate": cand, "oof_nll": trial, "kept": keep})
        now = f"{trial:.4f}" if trial is not None else "- (its folds hold other images)"
        log(
            f"candidate {cand}: out-of-fold NLL {before:.4f} -> {now} "
            f"with it: {'added' if keep else 'left out'}"
        )
        if keep:
            kept.append(other)
            probs.append(p)
    return {
        **first,
        "records": [r for f in kept for r in f["records"]],
        "temperatures": [t for f in kept for t in f["temperatures"]],
        "member_names": [
            _name(r, row["candidate"])
            for f, row in zip(fitted, log_rows, strict=True)
            if row["kept"]
            for r in f["records"]
        ],
        "oof_prob": np.mean(probs, axis=0),
        "configurations": log_rows,
    }


def refit_ensemble(chosen: dict, checkpoints: list[str]) -> dict:
    """The refit ensemble of --refit-seeds: `chosen` (the chosen configuration's own
    `fit_fold_ensemble`) with its records replaced by the refits' (best-model records under
    `checkpoints`, all with cv_fold -1), each given the mean of the fold models' temperatures.
    Its out-of-fold data stay the fold models' (they fix the operating points). Raises
    ValueError when a checkpoint is not a refit of that configuration."""
    records = [load_state(c)["best"] for c in checkpoints]

    def recipe(cfg: dict) -> dict:  # a configuration less which fold and which refit
        return {k: v for k, v in cfg.items() if k not in ("cv_fold", "refit_seed")}

    for r in records:
        if r["config"].get("cv_fold") != -1 or recipe(r["config"]) != recipe(
            chosen["records"][0]["config"]
        ):
            raise ValueError(
                "a refit ensemble needs refits (cv_fold -1) of the chosen configuration"
            )
    t = float(np.mean(chosen["temperatures"]))
    log(f"refits: {len(records)} models, each at the fold models' mean temperature T={t:.3f}")
    return {
        **chosen,
        "records": records,
        "temperatures": [t] * len(records),
        "member_names": [f"{r['model']}:refit{r['config'].get('refit_seed', 0)}" for r in records],
        "method": REFIT_METHOD,
        "description": REFIT_DESCRIPTION,
    }


def ensemble_test_proba(fitted: dict, device, images=None) -> np.ndarray:
    """The fold ensemble's calibrated probabilities, float64 (N, K), on uint8 (N, H, W)
    `images` (default: the data's test split): the mean over folds of each model's
    temperature-scaled softmax."""
    images = fitted["data"].images["test"] if images is None else images
    labels = np.zeros(len(images), dtype=np.int64)
    out = [
        apply_temperature(split_proba(r, images, labels, device), t)
        for r, t in zip(fitted["records"], fitted["temperatures"], strict=True)
    ]
    return ensemble_proba(out, [1.0] * len(out))  # equal weights: the one ensemble average


def oof_test_warnings(oof: dict, test: dict) -> list[str]:
    """A warning for each headline metric whose out-of-fold value lies outside the test
    figure's 95 % interval (`scores.headline_cis`: Wilson for accuracy, the bootstrap's for
    macro-F1 and AUC): the folds (validation) did not predict this test set. A zero-width
    interval (an ensemble that predicts one class for every image: `one_class_warning`) is
    no spread to compare with, and gives no warning."""
    cis = headline_cis(test)
    out = []
    for key, label in (("macro_f1", "macro-F1"), ("accuracy", "accuracy"), ("auc", "AUC")):
        ci, v, t = cis.get(key), oof.get(key), test.get(key)
        if not ci or v is None or t is None or not ci[0] < ci[1]:
            continue
        if not ci[0] <= v <= ci[1]:
            out.append(
                f"test {label} {t:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] vs {v:.3f} out of fold: "
                "validation and test disagree (the test images differ from train+val)"
            )
    return out


def one_class_warning(prob: np.ndarray, classes: list[str]) -> list[str]:
    """[a warning] when the ensemble's probabilities `prob` (N, K) give the same class to all
    N images (its models did not learn to tell the classes apart), else []."""
    pred = np.unique(np.asarray(prob).argmax(1))
    if len(prob) < 2 or len(pred) != 1:
        return []
    return [
        f"the ensemble predicts {classes[int(pred[0])]!r} for all {len(prob)} test images: its "
        "models did not learn to tell the classes apart (train longer, or on larger images)"
    ]


def cv_selection(exp_dir: str | Path) -> dict | None:
    """The cv.json of a `--cv` sweep folder (tune/folds.py writes it), else None."""
    path = Path(exp_dir) / "cv.json"
    return json.loads(path.read_text()) if path.is_file() else None


def rebuild_fold_ensemble(exp_dir: str | Path, device: str = "auto", external=None) -> dict:
    """`python -m ray_xray.ensemble` on a `--cv` sweep: the fold ensemble of the configuration
    its cv.json chose (checkpoints from results.parquet), rebuilt as the sweep built it; the
    top-k ensemble of mixed folds would compare models validated on different images. With
    refits (--refit-seeds) in cv.json, they are the ensemble again."""
    from ..sweep_folder import read_experiment, relocate
    from ..tune.folds import ranked_candidates

    selection = cv_selection(exp_dir)
    exp = read_experiment(exp_dir)
    table = exp["table"].set_index("trial_id")
    groups = {}
    for c in ranked_candidates(selection):
        cand = c["candidate"]
        # a fold run lives in EXP/folds/; a search run reused as fold 0 in EXP itself
        paths = [
            relocate(
                table.loc[t, "checkpoint_path"],
                Path(exp["exp_dir"]) / ("folds" if table.loc[t, "cv_stage"] == "folds" else ""),
                t,
            )
            for t in c["trial_ids"]
        ]
        if not all(paths):
            raise ValueError(f"{exp_dir}: a checkpoint of candidate {cand}'s fold runs is gone")
        groups[cand] = [str(p) for p in paths]
    refits = [
        relocate(table.loc[t, "checkpoint_path"], Path(exp["exp_dir"]) / "refit", t)
        for t in selection.get("refit_trial_ids", [])
        if table.loc[t, "status"] != "ERROR"
    ]
    refits = [str(p) for p in refits if p]
    cache = exp["options"].get("cache") or None
    asked = len(selection.get("refit_trial_ids", []))
    return run_fold_ensemble(
        exp["exp_dir"], groups, selection, cache, device, external, refits, asked
    )


def save_fold_ensemble(fitted: dict, path: Path, experiment: str) -> Path:
    """ensemble.pt of `fit_fold_ensemble`'s result: equal weights, each member's temperature,
    operating-point thresholds and the class prior from the out-of-fold predictions (no test
    image involved). Returns the path written (atomically)."""
    classes = fitted["data"].classes
    y_oof, p_oof = fitted["oof_y"], fitted["oof_prob"]
    records = [
        {**r, "temperature": float(t)}
        for r, t in zip(fitted["records"], fitted["temperatures"], strict=True)
    ]
    k = len(records)
    # Thresholds from the out-of-fold predictions (operating_points wants a second set to
    # measure them on: the same one here; the test side is measured after saving).
    points = operating_points(y_oof, p_oof, y_oof, p_oof, classes, SPECIFICITIES, SENSITIVITIES)
    obj = ensemble_record(
        records,
        [1.0 / k] * k,
        fitted.get("method", METHOD),
        classes,
        extra={
            "member_names": fitted.get("member_names") or [_name(r) for r in records],
            "experiment": experiment,
            "data": records[0]["config"].get("data"),
            "description": fitted.get("description", DESCRIPTION),
            "operating_points": stored_points(points),
            "train_prior": (np.bincount(y_oof, minlength=len(classes)) / len(y_oof)).tolist(),
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_ensemble(obj, path)


def fold_metrics(
    fitted: dict,
    p_test: np.ndarray,
    selection: dict,
    experiment: str,
    fold_ensemble: tuple[dict, dict] | None = None,
) -> dict:
    """metrics.json's record of a fold ensemble (`fit_fold_ensemble`'s `fitted`, its test
    probabilities `p_test` float64 (N, K)): members, temperatures, fold sizes, the cv.json
    `selection`, out-of-fold ("oof") and test metrics (test with 95 % intervals), operating
    points fixed out of fold, and warnings where the two disagree (also logged).
    `fold_ensemble`: beside refits (`fitted` a `refit_ensemble`), the fold ensemble's
    (out-of-fold, test) reports: stored as "fold_ensemble_oof"/"fold_ensemble_test", and the
    disagreement warnings compare that pair (the refits have no out-of-fold figures of their
    own: "oof" is their fold models')."""
    data, classes = fitted["data"], fitted["data"].classes
    y_oof, p_oof = fitted["oof_y"], fitted["oof_prob"]
    y_test = data.labels["test"]
    metrics = {
        "experiment": experiment,
        "method": fitted.get("method", METHOD),
        "description": fitted.get("description", DESCRIPTION),
        "classes": classes,
        "n_members": len(fitted["records"]),
        "configurations": fitted.get("configurations"),
        "temperatures": fitted["temperatures"],
        "fold_val_sizes": fitted["fold_sizes"],
        "selection": selection,
        "oof": report(y_oof, p_oof, classes),
        "test": report(y_test, p_test, classes, intervals=True),
        "operating_points": operating_points(y_oof, p_oof, y_test, p_test, classes),
        "n_test": int(len(y_test)),
    }
    metrics["warnings"] = one_class_warning(p_test, classes)
    if fold_ensemble is None:
        metrics["warnings"] += oof_test_warnings(metrics["oof"], metrics["test"])
    else:
        metrics["fold_ensemble_oof"], metrics["fold_ensemble_test"] = fold_ensemble
        metrics["warnings"] += [
            f"the fold ensemble's {w}" for w in oof_test_warnings(*fold_ensemble)
        ]
    for w in metrics["warnings"]:
        log(f"warning: {w}")
    return metrics


def _fold_report(out_dir: Path, metrics: dict, y_test, p_test) -> str | None:
    """EXP/ensemble/report.html (report/folds.py), or None with a warning when it cannot be
    written: the saved ensemble and metrics.json stand without it."""
    from ..report.folds import write_fold_report

    try:
        search = metrics["selection"].get("search_trials")
        return str(write_fold_report(out_dir, metrics, y_test, p_test, search, log))
    except Exception as exc:  # noqa: BLE001 - a report is not worth losing the ensemble over
        log(f"warning: report.html not written: {type(exc).__name__}: {exc}")
        return None


def run_fold_ensemble(
    exp_dir: str | Path,
    groups: dict[int, list[str]],
    selection: dict,
    cache: str | None = None,
    device: str = "auto",
    external=None,
    refits: list[str] | None = None,
    refits_asked: int = 0,
) -> dict:
    """Fit, save and then score the fold ensemble of a `--cv` sweep into EXP/ensemble/.
    `groups`: candidate index -> its K fold checkpoints, the chosen candidate first and the
    others in the order they may join (`tune.folds.ranked_candidates`; `add_configurations`
    decides). `refits`: the chosen configuration's refit checkpoints (--refit-seeds), those
    that finished of `refits_asked`: then they are the ensemble (`refit_ensemble`) and the
    fold ensemble is saved beside it as FOLD_ENSEMBLE_FILE; fewer than asked is a warning,
    none leaves the fold ensemble as ensemble.pt. Written: ensemble.pt (method "cv_folds" or
    "cv_refit"; operating points fixed on the out-of-fold predictions), metrics.json ("oof": out-of-fold validation
    metrics, "test": with 95 % intervals, "selection": the cv.json record, and with refits
    "fold_ensemble_test": the fold ensemble's test figures) and report.html (how the
    configuration was selected, out of fold beside test). `external`: called with
    ensemble.pt's path after it is saved (tune --external); its result goes to metrics.json.
    Returns {"out", "ensemble", "metrics", "report" (None when it could not be written),
    "chosen", "summary", "external"}."""
    t0 = time.perf_counter()
    dev = pick_device(device)
    fits = [fit_fold_ensemble(c, cache, dev) for c in groups.values()]
    fitted = folded = add_configurations(fits, list(groups))
    out_dir, name = Path(exp_dir) / "ensemble", Path(exp_dir).name
    if refits:
        fitted = refit_ensemble(fits[0], refits)
        save_fold_ensemble(folded, out_dir / FOLD_ENSEMBLE_FILE, name)
    ens_path = save_fold_ensemble(fitted, out_dir / ENSEMBLE_FILE, name)
    method = fitted.get("method", METHOD)
    log(f"saved {ens_path} ({len(fitted['records'])} models, method {method})")
    # ---- fixed: now, and only now, the test images
    p_test = ensemble_test_proba(fitted, dev)
    pair = _scored(folded, dev) if refits else None  # beside the refits: which is better
    metrics = fold_metrics(fitted, p_test, selection, name, pair)
    if refits_asked:
        _count_refits(metrics, len(refits or []), refits_asked)
    if external is not None:
        metrics["external"] = external(ens_path)
    metrics["timings"] = {"total_s": time.perf_counter() - t0}
    write_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2))
    report_path = _fold_report(out_dir, metrics, fitted["data"].labels["test"], p_test)
    _log_test(metrics)
    return {
        "out": str(out_dir),
        "ensemble": str(ens_path),
        "metrics": str(out_dir / "metrics.json"),
        "report": report_path,
        "chosen": f"ensemble_{method}",
        "summary": {"ensemble": {"name": method, "test_macro_f1": metrics["test"]["macro_f1"]}},
        "external": metrics.get("external"),
    }


def _scored(fitted: dict, device) -> tuple[dict, dict]:
    """(out-of-fold report, test report with intervals) of a fold ensemble; reads test."""
    y_test, classes = fitted["data"].labels["test"], fitted["data"].classes
    return (
        report(fitted["oof_y"], fitted["oof_prob"], classes),
        report(y_test, ensemble_test_proba(fitted, device), classes, intervals=True),
    )


def _count_refits(metrics: dict, used: int, asked: int) -> None:
    """metrics.json's "refits" ({"asked", "used"}), and a warning (logged) when fewer than
    asked finished with a checkpoint: a refit that failed is left out, not retried."""
    metrics["refits"] = {"asked": asked, "used": used}
    if used < asked:
        w = f"{used} of {asked} refits finished with a checkpoint"
        w += "" if used else ": the ensemble is the fold ensemble"
        metrics["warnings"].append(w)
        log(f"warning: {w}")


def _log_test(metrics: dict) -> None:
    """The closing lines: out of fold, then test (and the fold ensemble's, beside refits)."""
    rows = [("fold ensemble", "", "")]
    if "fold_ensemble_test" in metrics:  # refits: their out-of-fold figure is their folds'
        rows = [
            ("refit ensemble", "", " (of its fold models)"),
            ("fold ensemble", "fold_ensemble_", ""),
        ]
    for label, key, whose in rows:
        t, oof = metrics[f"{key}test"], metrics[f"{key}oof"]
        log(
            f"{label}: out-of-fold macro-F1{whose} {oof['macro_f1']:.4f}; test accuracy "
            f"{t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, AUC {t['auc']:.4f}"
        )
