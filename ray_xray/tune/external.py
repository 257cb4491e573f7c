"""A sweep's `--external DATA[,DATA]`: labelled sets from elsewhere, checked before any trial
runs and scored at the end, after the ensemble, with the evaluate package.

Each of the top-k members (as trained) and the chosen ensemble is scored on every image of
every set (`evaluate --split all`): accuracy, macro-F1, ROC-AUC and each class's recall with
95% intervals, and the drop from the model's own test split. Stored in best_trials.json (each
member's figures under "external", keyed by set) and in the ensemble's metrics.json (all
models, "external"), drawn as the report's 'External sets' section and printed as a table.

Reported, never used to choose: best_trials.json's ranking is written, and the members'
temperatures and the ensemble are fixed and saved (ensemble.pt), before an external image is
read (`ExternalStep` is run_ensemble's `external` hook, called after the save).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..cli import UserError
from ..data.dataset import absolute_spec
from ..io import json_safe
from ..stats import N_BOOT, SEED  # evaluate's defaults: the stored figures equal its command's
from . import results
from .options import SweepOptions


def parse_specs(values: str | Sequence[str] | None) -> list[str]:
    """`--external` values ('A', 'A,B', repeated, or a list from the Python API) -> the
    distinct data specs, in order of first mention, blanks dropped."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    specs = [s.strip() for v in values for s in str(v).split(",")]
    return list(dict.fromkeys(s for s in specs if s))


def check_specs(opts: SweepOptions) -> list[str]:
    """Before the sweep's data is read: `opts.external` as distinct absolute specs (the
    caller keeps them: ``dataclasses.replace(opts, external=...)``). Raises UserError (one
    line) for a folder or manifest that does not exist, a remote URI, an unknown synthetic
    task or the sweep's own --data (`opts.data`, already absolute)."""
    from ..data import synthetic

    specs = [absolute_spec(s) for s in parse_specs(opts.external)]
    for spec in specs:
        if "://" in spec:
            raise UserError(f"--external {spec}: a local folder, manifest or synthetic: set")
        if spec == opts.data:
            raise UserError(
                f"--external {spec}: that is the sweep's own --data (its test "
                "split is scored anyway); give data from elsewhere"
            )
        if spec.startswith("synthetic"):
            try:
                synthetic.parse(spec)
            except ValueError as exc:
                raise UserError(f"--external {exc}") from None
        elif not Path(spec).exists():
            raise UserError(f"--external {spec}: no such folder or manifest")
    return specs


def check_classes(specs: list[str], classes: list[str]) -> list[dict]:
    """Each set's classes against the sweep's, by name as `evaluate` matches them (no image
    decoded). A set lacking some classes is scored as a labelled partial evaluation (said
    here); a class the sweep does not have, or no images, raises UserError (one line).
    Returns `evaluate.sources.set_classes`'s dict per spec."""
    from ..evaluate.sources import set_classes

    out = []
    for spec in specs:
        try:
            info = set_classes(spec, classes, "the sweep's data")
        except ValueError as exc:
            raise UserError(f"--external {exc}") from None
        if info["missing_classes"]:
            print(
                f"--external {spec}: no {', '.join(info['missing_classes'])} images: a partial "
                "evaluation (macro-F1 and AUC over the classes present)",
                file=sys.stderr,
            )
        out.append(info)
    return out


def score(opts: SweepOptions, top: list[dict], ensemble_path: str | Path | None = None) -> dict:
    """The top-k members of `top` (best_trials.json's entries) and the ensemble at
    `ensemble_path` (None: members only) on every `opts.external` set, on the GPU when the
    sweep's trials held one, with evaluate's bootstrap (N_BOOT resamples, SEED). Returns
    {"split", "bootstrap", "sets": `evaluate.external.score_sets`'s list, member rows with
    "trial_id" and "rank"}. Raises what evaluate raises (ValueError, OSError) on a set or a
    checkpoint it cannot read."""
    from ..evaluate.external import SPLIT, score_sets
    from ..evaluate.sources import resolve_subject

    subjects = [
        replace(resolve_subject(str(t["checkpoint"])), name=f"{t['model']}:{t['trial_id']}")
        for t in top
    ]
    if ensemble_path is not None:  # "ensemble_greedy of EXP" -> "ensemble_greedy"
        ens = resolve_subject(str(ensemble_path))
        subjects.append(replace(ens, name=ens.name.partition(" of ")[0]))
    device = "cuda" if opts.gpus_per_trial else "auto"
    sets = score_sets(
        subjects,
        list(opts.external),
        device=device,
        n_boot=N_BOOT,
        seed=SEED,
        cache=opts.cache,
        skip_bad=bool(opts.settings.get("skip_bad", False)),
    )
    for s in sets:
        for t, row in zip(top, s["models"], strict=False):  # members first, then the ensemble
            row.update(trial_id=t["trial_id"], rank=t["rank"])
    return json_safe(
        {
            "split": SPLIT,
            "bootstrap": {"resamples": N_BOOT, "seed": SEED, "stratified": True},
            "sets": sets,
        }
    )


class ExternalStep:
    """The end-of-sweep step for `opts.external` and the finished sweep's `top` list.

    Called with ensemble.pt's path (run_ensemble's `external` hook) it scores members and
    ensemble and returns the block for the ensemble's metrics.json; a failure is kept for
    `finish`, so the ensemble and its report are still written. `finish` scores the members
    alone when no ensemble was built, stores and prints the figures."""

    def __init__(self, opts: SweepOptions, top: list[dict]):
        self.opts, self.top = opts, top
        self.block: dict | None = None
        self.error: Exception | None = None

    def __call__(self, ensemble_path: Path) -> dict | None:
        """Score members and the ensemble at `ensemble_path`: the block for metrics.json, or
        None when scoring failed (kept, and raised by `finish`)."""
        try:
            self.block = score(self.opts, self.top, ensemble_path)
        except Exception as exc:  # reported by finish(); the ensemble's own outputs go on
            self.error = exc
            print(f"external: scoring failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return self.block

    def finish(self, exp_dir: str) -> dict:
        """Score (when the ensemble hook did not), add each member's figures to
        best_trials.json, print the table; returns the block. Raises results.ResultsError when
        scoring failed: the trials, results and ensemble are written by then."""
        try:
            if self.error is not None:
                raise self.error
            if self.block is None:
                self.block = score(self.opts, self.top)
        except Exception as exc:
            raise results.ResultsError(
                f"the sweep's results{' and ensemble' if self.opts.ensemble else ''} are "
                f"written in {exp_dir}, but scoring the --external sets failed "
                f"({type(exc).__name__}: {exc}); the same command with --resume retries it"
            ) from exc
        store(exp_dir, self.top, self.block)
        print_table(self.block)
        return self.block


def for_finished_sweep(
    exp_dir: str | Path, values, top_k: int, device: str = "auto"
) -> ExternalStep:
    """The `ExternalStep` for `python -m ray_xray.ensemble EXP --external DATA[,DATA]`: the
    sweep's recorded options (sweep.json: its data, cache, settings, classes) and the first
    `top_k` entries of its best_trials.json. Checks the sets as a sweep does before its
    trials (same errors: UserError, one line); `device` "cuda" scores on the GPU."""
    from ..sweep_folder import read_best_trials, read_experiment

    swept = read_experiment(exp_dir)
    record, options = swept["sweep"], swept["options"]
    try:
        top = read_best_trials(exp_dir)[:top_k]
    except ValueError as exc:
        raise UserError(f"--external: {exc}") from None
    data = options.get("data")
    opts = SweepOptions(
        external=parse_specs(values),
        data=absolute_spec(data) if data else "",  # "": no --data to tell the sets apart from
        cache=options.get("cache"),
        settings=options.get("settings") or {},
        gpus_per_trial=1 if device == "cuda" else 0,
        ensemble=True,
    )
    opts = replace(opts, external=check_specs(opts))
    if record.get("classes"):
        check_classes(opts.external, list(record["classes"]))
    return ExternalStep(opts, top)


def store(exp_dir: str | Path, top: list[dict], block: dict) -> None:
    """Each member's figures into its best_trials.json entry: entry["external"][spec] =
    {"split", "n", "missing_classes", "headline", "drops", "ece", "warnings"}."""
    keep = ("headline", "drops", "ece", "n_reference", "warnings")
    for i, entry in enumerate(top):
        entry["external"] = {
            s["data"]: {
                "split": s["split"],
                "n": s["n"],
                "missing_classes": s["missing_classes"],
                **{k: s["models"][i][k] for k in keep},
            }
            for s in block["sets"]
        }
    results.write_best_trials(exp_dir, top)


def _num(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _ci(d: dict | None, key: str = "value") -> str:
    """'0.812 [0.741, 0.879]' from {key, "low", "high"}; '-' when undefined."""
    d = d or {}
    text = _num(d.get(key))
    lo, hi = d.get("low"), d.get("high")
    if text == "-" or lo is None or hi is None:
        return text
    return f"{text} [{lo:.3f}, {hi:.3f}]"


def print_table(block: dict) -> None:
    """The end-of-sweep table: per set, each model's macro-F1 [95% CI], accuracy, AUC, its
    own test macro-F1 and the drop [95% CI] (* = beyond resampling noise)."""
    print("\nexternal sets (reported only: ranking, calibration and ensemble used validation):")
    for s in block["sets"]:
        partial = f"; no {', '.join(s['missing_classes'])}" if s["missing_classes"] else ""
        print(f"{s['data']} ({s['n']} images{partial})")
        print(
            f"  {'model':<28} {'macro-F1 [95% CI]':<22} {'accuracy':>8} {'AUC':>6} "
            f"{'own test':>8}  drop [95% CI]"
        )
        for m in s["models"]:
            h, drop = m["headline"], (m.get("drops") or {}).get("macro_f1")
            star = " *" if drop and drop.get("significant") else ""
            print(
                f"  {m['name'][:28]:<28} {_ci(h['macro_f1']):<22} "
                f"{_num(h['accuracy']['value']):>8} {_num(h['auc']['value']):>6} "
                f"{_num((drop or {}).get('reference')):>8}  {_ci(drop, 'drop')}{star}"
            )
    print(
        "own test: the model's macro-F1 on its own test split, over the classes the set has; "
        "* the drop's interval excludes 0 (beyond resampling noise).\nFigures: "
        "best_trials.json (members), ensemble/metrics.json and report.html (with the ensemble)."
    )
