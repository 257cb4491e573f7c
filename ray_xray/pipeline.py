"""A sweep from start to end, what ``python -m ray_xray.tune`` and ``ray_xray.sweep()`` run:
the search service (tune/service.py: planned once, then trials, results.parquet,
best_trials.json, best_model.pt), then the post-sweep steps on its results:

- the ensemble of the best trials and its report (ensemble/core.py), or for a --cv sweep the
  chosen configuration's fold ensemble (ensemble/folds.py);
- the --external sets scored, members and ensemble (tune/external.py), their figures added
  to best_trials.json and the ensemble's metrics.json.

They live here, on the floor above both the service and the ensemble (tests/test_imports.py),
so the service never imports the ensemble: `run_sweep` calls them through its `post_steps`
hook, inside the sweep's lock and signal guard, before the closing lines.
"""

from __future__ import annotations

import sys

from .tune import folds
from .tune.external import ExternalStep
from .tune.options import SweepOptions
from .tune.results import ResultsError
from .tune.service import SweepPlan, run_sweep
from .tune.storage import SweepFiles


def run_full_sweep(opts: SweepOptions) -> dict:
    """Plan and run (or resume) the sweep of `opts`, then its post-sweep steps.

    Returns `tune.service.run_sweep`'s summary (``rows``, ``top``, ``exp_dir``, ``wall_s``,
    ``time_use``, ``commands``) plus ``"ensemble"`` (`ensemble.run_ensemble`'s or
    `run_fold_ensemble`'s dict) when one was built and ``"external"`` (the figures on each
    ``opts.external`` set) when there are sets. Raises ValueError on bad input (one line, before
    any trial), `tune.results.ResultsError` when the trials ran but a later step failed,
    `tune.interrupt.Interrupted` on SIGINT/SIGTERM.
    """
    return run_sweep(opts, post_steps=post_sweep_steps)


def post_sweep_steps(plan: SweepPlan, summary: dict, cv: folds.FoldStage | None) -> dict:
    """The steps after a sweep's results are written: the ensemble (unless ``--no-ensemble``;
    a --cv sweep's is its chosen fold models), then the --external sets scored. `summary`:
    run_sweep's so far (``rows``, ``top``); `cv`: the fold stage of a --cv sweep, else None.
    Returns the keys to add to the summary: ``"ensemble"``, ``"external"`` (each only when
    made). Raises `ResultsError` when the ensemble or the scoring fails (the results stay)."""
    opts, files = plan.opts, plan.files
    rows, top = summary["rows"], summary["top"]
    external = ExternalStep(opts, top) if opts.external and top else None
    out: dict = {}
    if cv and opts.ensemble:  # the deliverable of a --cv sweep: the chosen fold models
        out["ensemble"] = _fold_ensemble(plan, cv, rows, external)
    elif opts.ensemble and top:
        print("\nensemble of the best trials (--no-ensemble to skip):", file=sys.stderr)
        out["ensemble"] = _ensemble(plan.exp_dir, opts, files, rows, external)
    if external:  # written in the local stage, then to the storage (a no-op when local)
        out["external"] = external.finish(str(files.stage))
        files.push("best_trials.json", "ensemble")
    return out


def _fold_ensemble(
    plan: SweepPlan, cv: folds.FoldStage, rows: list[dict], external: ExternalStep | None
) -> dict:
    """The chosen configuration's K fold models (and the next ones' where they help), or with
    --refit-seeds its refits, calibrated and averaged (a local --storage only, as --cv is):
    `ensemble.folds.run_fold_ensemble`'s dict."""
    from .ensemble.folds import run_fold_ensemble

    device = "cuda" if plan.opts.gpus_per_trial else "auto"
    groups, refits = cv.groups(rows), cv.refits(rows)
    return run_fold_ensemble(
        plan.exp_dir,
        groups,
        cv.selection,
        plan.opts.cache,
        device,
        external,
        refits,
        plan.opts.refit_seeds,
    )


def _ensemble(
    exp_dir: str,
    opts: SweepOptions,
    files: SweepFiles,
    rows: list[dict],
    external: ExternalStep | None = None,
) -> dict:
    """The ensemble + report after the results are written; its failure is not bad input.
    It runs on the sweep's local files (`files.stage`: for a URI, a copy holding the results,
    the top trials' checkpoints and every trial's result.json), then goes to the storage.
    `external`: run_ensemble's hook, called once the ensemble is saved. Returns
    `run_ensemble`'s dict, its paths on the storage (URIs for a URI storage). Raises
    `ResultsError` naming the command that retries it."""
    from .ensemble import run_ensemble

    device = "cuda" if opts.gpus_per_trial else "auto"
    try:
        files.pull(*(f"{r['trial_id']}/{f}" for r in rows for f in ("result.json", "progress.csv")))
        out = run_ensemble(
            files.stage, top_k=opts.top_k, data=opts.data, device=device, external=external
        )
        files.push("ensemble")
        if files.remote:  # name the storage's files, not the local copy (removed at the end)
            stage = f"{files.stage}/"
            out = {
                k: files.where(v[len(stage) :]) if isinstance(v, str) and v.startswith(stage) else v
                for k, v in out.items()
            }
        return out
    except Exception as exc:
        where = exp_dir if not files.remote else f"a local copy of {exp_dir}"
        raise ResultsError(
            f"the sweep's results are written in {exp_dir}, but its ensemble step failed "
            f"({type(exc).__name__}: {exc}); `python -m ray_xray.ensemble` on {where} retries it"
        ) from exc
