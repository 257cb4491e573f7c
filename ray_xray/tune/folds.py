"""Cross-validated selection (`tune --cv K --cv-top N`): rank on one fold, confirm on all K.

Stage 1 is the ordinary search (TPE + ASHA), every trial trained on fold 0 of K (train+val
pooled, split by patient: data/folds.py), so ASHA stays as cheap as a single-split sweep.
Stage 2 re-runs the best N configurations of stage 1 on all K folds, as Tune trials of a second
experiment (`EXP/folds/`, resumed with the sweep); the configuration with the best mean fold
metric is chosen, and its K fold models become the ensemble (ensemble/folds.py). A candidate
whose search run ran all its epochs already is its fold-0 run (same data, settings and seed):
stage 2 runs only its other K-1 folds (`reusable`). With --budget-minutes, `FoldBudgetStopper`
ends stage 1 when the time left is what stage 2 (and --refit-seeds' refits, tune/refit.py)
is estimated to need.

Why not folds inside every trial: that multiplies every trial, the ones ASHA cuts after a
third of their epochs included, by K, and a trial that trains K models in turn can only be
cut after its first fold. The two-stage plan spends K-fold compute only on the N
configurations worth confirming (nnU-Net confirms its few configurations with 5 folds).
"""

from __future__ import annotations

import heapq
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from ray import tune
from ray.tune.stopper import Stopper

from ..io import write_atomic
from .trial import trial_fn

FOLDS_DIR = "folds"  # stage 2's Tune experiment, inside the sweep's folder
CANDIDATES_FILE = "cv_candidates.json"  # stage 1's top N, fixed before stage 2 starts
SELECTION_FILE = "cv.json"  # the fold metrics, means, spreads and the chosen configuration
# A fold run's cost beyond its epochs: Tune starting the trial, the model built, data mapped
# (an inline trial on 2 cores: ~4 s, benchmarks/RESULTS.md section 1), rounded up.
TRIAL_START_S = 5.0


def check_cv(
    cv: int, cv_top: int, storage: str, refit_seeds: int = 0, ensemble: bool = True
) -> None:
    """Refuse (ValueError, one line) --cv 1, a negative --cv-top, --cv on a URI storage, or
    --refit-seeds below 0, without --cv or with --no-ensemble (the refits would go unused)."""
    if refit_seeds < 0 or (refit_seeds and not cv):
        raise ValueError(f"--refit-seeds takes S >= 0 and needs --cv K, got {refit_seeds}")
    if refit_seeds and not ensemble:
        raise ValueError("--refit-seeds makes the ensemble: it cannot go with --no-ensemble")
    if cv == 1 or cv < 0:
        raise ValueError(f"--cv takes K >= 2 folds (0 = off), got {cv}")
    if cv and cv_top < 1:
        raise ValueError(f"--cv-top must be >= 1, got {cv_top}")
    if cv and "://" in storage:
        raise ValueError("--cv needs a local --storage for now (its fold stage is local-only)")


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def top_configs(rows: list[dict], key: str, mode: str, n: int) -> list[dict]:
    """The sampled configurations (dicts) of the best `n` distinct stage-1 trials by `key`
    (a validation metric column of `rows`, results' trial rows), best first; trials that
    failed or have no finite value are left out. Never reads a test column."""
    ok = [r for r in rows if r.get("status") != "ERROR" and _finite(r.get(key))]
    ok.sort(key=lambda r: r[key], reverse=mode == "max")
    out: list[dict] = []
    for r in ok:
        cfg = json.loads(r["config"])
        if cfg not in out:
            out.append(cfg)
        if len(out) == n:
            break
    return out


def reusable(rows: list[dict], configs: list[dict], epochs: int) -> dict[int, str]:
    """Candidate index -> the stage-1 trial (id) that already is its fold-0 run: the same
    configuration, trained on fold 0 with the sweep's seed as a fold run would be, no error,
    all of its planned epochs (its config's ``epochs``, else `epochs`; a run that ASHA or the
    budget cut, or that stopped early, is not reused) and a kept checkpoint."""
    out: dict[int, str] = {}
    for i, cfg in enumerate(configs):
        planned = cfg.get("epochs", epochs)
        for r in _runs_of(rows, cfg):
            full = _finite(r.get("epochs")) and _finite(planned) and r["epochs"] >= planned
            if r.get("status") == "TERMINATED" and r.get("checkpoint_path") and full:
                out[i] = r["trial_id"]
                break
    return out


def _runs_of(rows: list[dict], cfg: dict) -> list[dict]:
    """The stage-1 rows whose sampled configuration is `cfg`."""
    return [r for r in rows if json.loads(r["config"]) == cfg]


def run_costs(rows: list[dict], configs: list[dict], epochs: int) -> list[float | None]:
    """Seconds one fold run of each configuration should take (`run_cost`), from its search
    run that got furthest, to its planned epochs (its config's ``epochs``, else `epochs`);
    None where no search run of it reported an epoch."""
    out: list[float | None] = []
    for cfg in configs:
        planned = cfg.get("epochs", epochs)
        runs = [
            r
            for r in _runs_of(rows, cfg)
            if _finite(r.get("wall_s")) and _finite(r.get("epochs")) and r["epochs"] >= 1
        ]
        best = max(runs, key=lambda r: r["epochs"], default=None)
        out.append(
            None
            if best is None
            else run_cost(best["wall_s"], best.get("compute_s"), best["epochs"], planned)
        )
    return out


def run_cost(wall_s: float, compute_s: float | None, epochs: int, planned: int) -> float:
    """Seconds a run of `planned` epochs should take, from one that ran `epochs` in `wall_s`
    (`compute_s` of them training and validating): its set-up once (wall - compute: data,
    model, the first batches), its compute per epoch x `planned`, + TRIAL_START_S. Without
    `compute_s` the set-up is spread over the epochs (an over-estimate)."""
    if not _finite(compute_s) or not 0 < compute_s <= wall_s:
        compute_s = wall_s
    return wall_s - compute_s + compute_s / epochs * max(planned, epochs) + TRIAL_START_S


def budget_slack(budget_s: float) -> float:
    """Seconds a fold-stage plan may overrun the time left and still be kept: max(30 s, 5 % of
    the `budget_s`-second budget). The stopper ends the search right at the line, so the fold
    stage always finds a little less time than planned (the search's wind-down, the estimate's
    own noise); without this slack it would always drop a candidate."""
    return max(30.0, 0.05 * budget_s)


def fit_to_budget(
    costs: list[float | None],
    reused: dict[int, str],
    k: int,
    slots: int,
    left_s: float,
    slack_s: float = 0.0,
    refits: int = 0,
) -> int:
    """How many of the ranked candidates (`costs`: `run_costs`) the fold stage keeps so that
    its runs (`fold_runs`, each on the first free of `slots`) end within `left_s` + `slack_s`
    seconds (and `refits` refit runs after them: `fold_stage_s`): the longest prefix that fits,
    and never fewer than one. A candidate of unknown cost ends the prefix."""
    keep = 1
    for n in range(2, len(costs) + 1):
        if any(c is None for c in costs[:n]):
            break
        if fold_stage_s(costs[:n], k, reused, slots, refits) > left_s + slack_s:
            break
        keep = n
    return keep


def budget_fit(
    rows: list[dict],
    epochs: int,
    k: int,
    slots: int,
    left_s: float,
    budget_s: float,
    refits: int = 0,
):
    """`candidates`' `fit` under --budget-minutes (`budget_s`): keeps as many candidates as end
    within `left_s` + twice `budget_slack` (`fit_to_budget`, costs from the search `rows`),
    saying so in one line when it drops any. FoldBudgetStopper planned with the same rule and
    one slack; this one allows two, because the stopper may end the search up to one slack
    past the line and the search's wind-down (trials stopped, results written) comes out of
    `left_s` too: with one, brain4's plan of 4.7 min, made with 4.3 min left, lost its second
    candidate to 4.1 min left. It still drops the candidates whose costs the stopper did not
    know (a slow trial that reported after the search was stopped)."""
    slack_s = 2 * budget_slack(budget_s)

    def fit(configs: list[dict], reused: dict[int, str]) -> int:
        costs = run_costs(rows, configs, epochs)
        kept = fit_to_budget(costs, reused, k, slots, left_s, slack_s, refits)
        if kept < len(configs):
            need = "a cost not measured yet"
            if all(c is not None for c in costs):
                need = f"about {fold_stage_s(costs, k, reused, slots, refits) / 60:.1f} min"
            print(
                f"cv: the fold stage takes the best {kept} of {len(configs)} candidates (all "
                f"would need {need}; {max(0.0, left_s) / 60:.1f} min of the budget are left)",
                file=sys.stderr,
                flush=True,
            )
        return kept

    return fit


def candidates(
    exp_dir: str,
    rows: list[dict],
    key: str,
    mode: str,
    n: int,
    epochs: int,
    fit=None,
) -> tuple[list[dict], dict[int, str]]:
    """Stage 1's top `n` configurations and the search runs that are their fold 0
    (`reusable`; `epochs`: a trial's planned epochs where its config does not say), written to
    CANDIDATES_FILE the first time and read back from it on resume (a resumed stage 1 may add
    trials; stage 2's grid must not move). `fit(configs, reused) -> int`: how many of them to
    keep (`fit_to_budget` under --budget-minutes; None: all)."""
    path = Path(exp_dir) / CANDIDATES_FILE
    if path.is_file():
        rec = json.loads(path.read_text())
        return rec["configs"], {int(i): t for i, t in rec.get("reused", {}).items()}
    configs = top_configs(rows, key, mode, n)
    reused = reusable(rows, configs, epochs)
    if fit is not None and configs:
        kept = fit(configs, reused)
        configs, reused = configs[:kept], {i: t for i, t in reused.items() if i < kept}
    rec = {"ranked_by": key, "configs": configs, "reused": reused}
    write_atomic(path, json.dumps(rec, indent=2, default=str))
    return configs, reused


def fold_runs(n_configs: int, k: int, reused: dict[int, str]) -> list[list[int]]:
    """Stage 2's runs, [candidate, fold] pairs: every fold of every candidate, but fold 0 of
    the candidates whose search run is reused."""
    return [[i, f] for i in range(n_configs) for f in range(k) if not (f == 0 and i in reused)]


def fold_stage_s(
    costs: list[float], k: int, reused: dict[int, str], slots: int, refits: int = 0
) -> float:
    """Seconds the fold stage of these candidates takes (`costs`: one run of each): their
    `fold_runs`, each on the first free of `slots` (`makespan`), then `refits` refit runs of
    the chosen one (`refit_cost` of the costliest, as the choice is not known yet)."""
    folds_s = makespan([costs[i] for i, _ in fold_runs(len(costs), k, reused)], slots)
    refit_s = makespan([refit_cost(max(costs), k)] * refits, slots) if refits else 0.0
    return folds_s + refit_s


def refit_cost(fold_run_s: float, k: int) -> float:
    """Seconds a refit run (all of train+val, no validation) should take, from one fold run's
    `fold_run_s`: K/(K-1) times it, as it trains on K folds' images instead of K-1. An upper
    bound: it skips the fold's validation pass."""
    return fold_run_s * k / (k - 1)


def makespan(costs: list[float], slots: int) -> float:
    """Seconds until the last of `costs` (seconds each, in order) ends, each started on
    whichever of `slots` frees first, as Tune starts queued trials."""
    free = [0.0] * max(1, slots)
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return max(free)


# The stopper each --cv sweep's search runs with, by sweep name (`search_spent_s`). Tune
# restores a resumed sweep's stopper from its experiment state: a new object, holding the time
# spent before the interruption, which the service never sees. It registers itself here when
# made and when restored, so that the fold stage reads the search's time from the same clock
# that ended the search, not from a second one that starts again at every resume.
_RUNNING: dict[str, FoldBudgetStopper] = {}


def search_spent_s(sweep: str, default: float) -> float:
    """Seconds sweep `sweep`'s search stage has run, across its resumes (`FoldBudgetStopper.
    elapsed_s`), or `default` (this process's search seconds) when it ran with no stopper (no
    --budget-minutes). Read once, by the fold stage: the entry is dropped."""
    stopper = _RUNNING.pop(sweep, None)
    return stopper.elapsed_s() if stopper is not None else default


class FoldBudgetStopper(Stopper):
    """Ends a --cv sweep's search stage once the time it has run plus the fold stage's
    estimated wall time reaches --budget-minutes, so that both stages together keep to it
    (the fold runs then run to their end: a fold cut short could not be compared).

    The estimate (`fold_stage`): the best `cv_top` trials so far by `metric` are the likely
    candidates; one fold run of each costs what its search run costs (`run_cost`: its set-up
    once, its seconds per epoch, from the results' ``epoch_s``, x its planned epochs); each needs
    `cv` runs, `cv` - 1 when its search run has run all its epochs (`reusable`), and the runs
    go, in rank order, to whichever of the `slots` frees first (`makespan`). When the runs of
    all of them would not end within the time left (+ `budget_slack`), the plan is the longest
    rank prefix that would (`fit_to_budget`, the fold stage's own rule): ending the search then
    would not save the candidates left out (a slow trial entering the top N late), so the search
    goes on until that prefix's runs fill what is left. Ray's start-up,
    stage 2's Tuner and the ensemble after it are not in the estimate. With no epoch reported
    yet there is no estimate, and the search runs on. Time counts from the first `stop_all`
    call, as Tune's own time budget does; Tune keeps the stopper with the experiment, so on
    resume the time spent before carries over (the pause between the runs does not count), and
    the fold stage reads it back (`search_spent_s`).

    Args:
        budget_s: the whole sweep's budget, seconds (> 0).
        cv, cv_top: K folds and N candidates (`tune --cv K --cv-top N`).
        slots: trials that run at once (the fold stage runs as many).
        metric, mode: the objective ("val_macro_f1") and "max" or "min".
        epochs: a trial's planned epochs when its config does not say.
        sweep: the sweep's name, under which `search_spent_s` finds it ("": not registered).
        refits: --refit-seeds S, refit runs after the fold stage (in the estimate).
    """

    def __init__(
        self,
        budget_s: float,
        cv: int,
        cv_top: int,
        slots: int,
        metric: str,
        mode: str,
        epochs: int,
        sweep: str = "",
        refits: int = 0,
    ) -> None:
        self.budget_s, self.cv, self.cv_top, self.slots = float(budget_s), cv, cv_top, max(1, slots)
        self.metric, self.sign, self.epochs = metric, 1.0 if mode == "max" else -1.0, epochs
        # trial id -> {"best": signed value, "cost_s": seconds a run, "full": all epochs run}
        self.trials: dict[str, dict] = {}
        self.kept = cv_top  # candidates in the last plan (`fold_stage`)
        self.spent_s = 0.0
        self._last: float | None = None
        self.stopped_at: float | None = None  # seconds into the search when it ended it
        self.sweep, self.refits = sweep, refits
        self._register()

    def _register(self) -> None:
        if self.sweep:
            _RUNNING[self.sweep] = self

    def elapsed_s(self) -> float:
        """Seconds the search has run, across resumes: the time spent up to the last
        `stop_all`, and since it in this process (the search's wind-down after the stop)."""
        since = time.monotonic() - self._last if self._last is not None else 0.0
        return self.spent_s + since

    def __call__(self, trial_id: str, result: dict) -> bool:
        """Learns the trial's best value so far and its cost; never stops one trial."""
        value, epoch, total = (result.get(k) for k in (self.metric, "epoch", "time_total_s"))
        if not (_finite(value) and _finite(epoch) and _finite(total)) or epoch < 1:
            return False
        planned = (result.get("config") or {}).get("epochs", self.epochs)
        planned = planned if _finite(planned) else epoch
        rec = self.trials.setdefault(trial_id, {"best": -math.inf, "epoch": 0, "compute_s": 0.0})
        rec["best"] = max(rec["best"], self.sign * value)
        if epoch > rec["epoch"]:  # Tune passes a trial's last result twice
            step = result.get("epoch_s")
            whole = _finite(step) and epoch == rec["epoch"] + 1 and rec["compute_s"] is not None
            rec["compute_s"] = rec["compute_s"] + step if whole else None  # None: not known
            rec["epoch"] = epoch
        rec["cost_s"] = run_cost(total, rec["compute_s"], epoch, planned)
        rec["full"] = epoch >= planned
        return False

    def fold_stage(self, left_s: float = math.inf) -> tuple[int, float] | None:
        """(runs, estimated wall seconds) of the fold stage if the search ended now with
        `left_s` seconds of the budget left: the best `cv_top` trials so far, or the longest
        rank prefix of them that fits (`fit_to_budget`; `self.kept` holds how many). None while
        no trial has reported an epoch."""
        top = sorted(self.trials.values(), key=lambda r: r["best"], reverse=True)[: self.cv_top]
        if not top:
            return None
        # candidates not seen yet (fewer trials than cv_top so far): at the mean cost
        mean = float(np.mean([r["cost_s"] for r in top]))
        costs = [r["cost_s"] for r in top] + [mean] * (self.cv_top - len(top))
        reused = {i: "search" for i, r in enumerate(top) if r["full"]}
        slack_s = budget_slack(self.budget_s)
        self.kept = fit_to_budget(costs, reused, self.cv, self.slots, left_s, slack_s, self.refits)
        runs = len(fold_runs(self.kept, self.cv, reused))
        return runs, fold_stage_s(costs[: self.kept], self.cv, reused, self.slots, self.refits)

    def stop_all(self) -> bool:
        """True (Tune stops every search trial) once spent + the planned fold stage's seconds
        (`fold_stage`) >= the budget; prints one line saying so, once."""
        now = time.monotonic()
        if self._last is not None:
            self.spent_s += now - self._last
        self._last = now
        plan = self.fold_stage(self.budget_s - self.spent_s)
        if plan is None or self.spent_s + plan[1] < self.budget_s:
            return False
        if self.stopped_at is None:
            self.stopped_at = self.spent_s
            print(self.stop_line(*plan), file=sys.stderr, flush=True)
        return True

    def stop_line(self, runs: int, folds_s: float) -> str:
        """The console line when the search ends, with a hint when the fold stage alone nearly
        fills the budget."""
        refits = f" and {self.refits} refit(s)" if self.refits else ""
        line = (
            f"cv: search stage ended after {self.spent_s / 60:.1f} min of the "
            f"{self.budget_s / 60:g}-min budget: the fold stage's {runs} runs{refits} need "
            f"about {folds_s / 60:.1f} min more"
        )
        if self.kept < self.cv_top:
            line += (
                f" (for the best {self.kept} of {self.cv_top} candidates: the others' runs "
                "would not end in time)"
            )
        if self.spent_s < 0.25 * self.budget_s:
            line += " (the search had little time: raise --budget-minutes, or lower --cv-top)"
        return line

    def __setstate__(self, state: dict) -> None:
        state["_last"] = None  # unpickled on resume: the pause between runs is not spent
        state.setdefault("kept", state["cv_top"])  # pickled before it existed
        state.setdefault("sweep", "")
        state.setdefault("refits", 0)
        self.__dict__.update(state)
        self._register()  # Tune resumes the search with this copy


def _run_of(grid_config: dict) -> tuple[int, int]:
    """(candidate, fold) of a stage-2 trial's grid point (``cv_run``; ``cv_config`` and
    ``cv_fold`` in sweeps started before fold 0 could be reused)."""
    if "cv_run" in grid_config:
        i, fold = grid_config["cv_run"]
    else:
        i, fold = grid_config["cv_config"], grid_config["cv_fold"]
    return int(i), int(fold)


def fold_trial_fn(config: dict, configs: list[dict], overrides: dict, runtime: dict) -> None:
    """A stage-2 trial: candidate `config["cv_run"][0]` trained on fold `config["cv_run"][1]`."""
    i, fold = _run_of(config)
    trial_fn({**configs[i], "cv_fold": fold}, overrides, runtime)


def fold_tuner(
    opts,
    exp_dir: str,
    configs: list[dict],
    overrides: dict,
    runtime: dict,
    res: dict,
    max_concurrent: int,
    callbacks: list | None = None,
    runs: list[list[int]] | None = None,
):
    """The stage-2 Tuner: `runs` ([candidate, fold] pairs, `fold_runs`; None: every candidate
    x every fold), FIFO (each must finish to be compared), restored from `EXP/folds/` when that
    exists. `res`: the trial's resources (service's `trial_resources`); `callbacks`: Tune
    callbacks (the console lines)."""
    ovr = {k: v for k, v in overrides.items() if k != "cv_fold"}
    grid = {"cv_run": runs or fold_runs(len(configs), opts.cv, {})}
    params = {"configs": configs, "overrides": ovr, "runtime": runtime}
    return stage_tuner(
        opts, exp_dir, FOLDS_DIR, fold_trial_fn, params, grid, res, max_concurrent, callbacks
    )


def stage_tuner(
    opts,
    exp_dir: str,
    dirname: str,
    fn,
    params: dict,
    grid: dict,
    res: dict,
    max_concurrent: int,
    callbacks: list | None = None,
):
    """A Tuner of fixed runs after the search (the fold stage, the refits): `fn(config,
    **params)` over the grid points `grid` ({key: [values]}), FIFO, in EXP/`dirname`/,
    restored from there when that exists (the sweep resumed). `params["runtime"]` gets this
    stage's folder as its "exp_dir". `res`: each trial's resources; `callbacks`: the console
    lines."""
    stage_dir = f"{exp_dir}/{dirname}"
    params = {**params, "runtime": {**params["runtime"], "exp_dir": stage_dir}}
    trainable = tune.with_resources(tune.with_parameters(fn, **params), res)
    inline = params["runtime"].get("runner") == "inline"
    if tune.Tuner.can_restore(stage_dir):
        if inline:  # --cv is local-only: as the search's restore (service._make_tuner)
            from .results import relink_deleted_checkpoints

            relink_deleted_checkpoints(stage_dir)
        return tune.Tuner.restore(
            stage_dir, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    return tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(values) for key, values in grid.items()},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=lambda t: t.trial_id,
            trial_name_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=dirname,
            storage_path=exp_dir,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures if inline else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def label_rows(
    search_rows: list[dict],
    fold_rows: list[dict],
    configs: list[dict],
    reused: dict[int, str] | None = None,
) -> list[dict]:
    """results.parquet's rows of a --cv sweep: stage 1's (cv_stage "search", fold 0;
    `cv_candidate` set on the runs `reused` as a candidate's fold 0) then stage 2's with their
    full configuration (`cv_stage` "folds", `cv_candidate`, `cv_fold`)."""
    fold0 = {t: i for i, t in (reused or {}).items()}
    for r in search_rows:
        r.update(cv_stage="search", cv_candidate=fold0.get(r["trial_id"]), cv_fold=0)
    out = []
    for r in fold_rows:
        i, fold = _run_of(json.loads(r["config"]))
        out.append(relabel(r, {**configs[i], "cv_fold": fold}, "folds", i))
    return [*search_rows, *out]


def relabel(row: dict, cfg: dict, stage: str, candidate: int) -> dict:
    """`row` (a stage-2 or refit trial's results row, whose config is only its grid point)
    with the full configuration `cfg` it trained (its ``config`` and ``config/`` columns),
    `cv_stage` `stage`, `cv_candidate` and `cv_fold` (cfg's)."""
    for k in [k for k in row if k.startswith("config/")]:
        del row[k]
    row.update(
        model=cfg.get("model"),
        config=json.dumps(cfg, sort_keys=True, default=str),
        cv_stage=stage,
        cv_candidate=candidate,
        cv_fold=cfg["cv_fold"],
        **{
            f"config/{k}": (json.dumps(v) if isinstance(v, list | dict) else v)
            for k, v in cfg.items()
        },
    )
    return row


def _without_fold(config_json: str) -> dict:
    """A run's configuration less its ``cv_fold``: the candidate's, whichever fold ran it."""
    return {k: v for k, v in json.loads(config_json).items() if k != "cv_fold"}


def choose(rows: list[dict], key: str, mode: str, k: int) -> dict:
    """The candidate with the best mean of `key` (a validation metric) over its K fold runs;
    a candidate missing a fold, or with a non-finite one, is not eligible. Returns the
    selection record (cv.json): per candidate its fold values, mean, standard deviation and
    whether every fold has a checkpoint; "chosen" (candidate index) and its fold rows' trial
    ids (fold 0's may be a search run: `label_rows`). Raises ValueError when no candidate has
    all K folds. Reads only validation columns."""
    by: dict[int, dict[int, dict]] = {}
    for r in rows:
        if r.get("cv_candidate") is not None and r.get("status") != "ERROR":
            by.setdefault(int(r["cv_candidate"]), {})[int(r["cv_fold"])] = r
    table = []
    for i in sorted(by):
        folds = by[i]
        values = [folds[f].get(key) if f in folds else None for f in range(k)]
        complete = all(_finite(v) for v in values) and all(
            folds[f].get("checkpoint_path") for f in range(k)
        )
        table.append(
            {
                "candidate": i,
                "fold_values": values,
                "mean": float(np.mean(values)) if complete else None,
                "std": float(np.std(values, ddof=1)) if complete else None,
                "complete": complete,
                "trial_ids": [folds[f]["trial_id"] if f in folds else None for f in range(k)],
                "config": _without_fold(folds[min(folds)]["config"]) if folds else None,
            }
        )
    ok = [c for c in table if c["complete"]]
    if not ok:
        raise ValueError(f"--cv {k}: no candidate finished all {k} folds with a checkpoint")
    best = (max if mode == "max" else min)(ok, key=lambda c: c["mean"])
    return {"metric": key, "mode": mode, "folds": k, "candidates": table, "chosen": best}


def ranked_candidates(selection: dict) -> list[dict]:
    """The candidates of a selection record (cv.json) that finished every fold: the chosen one
    first, then the others, best mean fold metric first. The console's runner-up is the second;
    the fold ensemble tries them in this order."""
    chosen = selection["chosen"]["candidate"]
    rest = [c for c in selection["candidates"] if c["complete"] and c["candidate"] != chosen]
    rest.sort(key=lambda c: c["mean"], reverse=selection["mode"] == "max")
    return [next(c for c in selection["candidates"] if c["candidate"] == chosen), *rest]


def write_selection(exp_dir: str, selection: dict, fold_sizes: list[int] | None = None) -> Path:
    """cv.json in the sweep's folder: how the configuration was chosen."""
    rec = {**selection, "fold_val_sizes": fold_sizes}
    return write_atomic(Path(exp_dir) / SELECTION_FILE, json.dumps(rec, indent=2, default=str))


def selection_line(selection: dict) -> str:
    """One console line: the chosen candidate (its model and fold runs' trial ids), its mean +-
    sd over K folds, the runner-up's, and the candidates left out for a fold that failed."""
    c, *rest = ranked_candidates(selection)
    line = (
        f"cv: chose candidate {c['candidate']} ({c['config'].get('model')}; trials "
        f"{', '.join(map(str, c['trial_ids']))}): {selection['metric']} {c['mean']:.4f} +- "
        f"{c['std']:.4f} (mean +- sd over {selection['folds']} folds)"
    )
    if rest:
        r = rest[0]
        line += f"; runner-up candidate {r['candidate']} {r['mean']:.4f} +- {r['std']:.4f}"
    out = [str(x["candidate"]) for x in selection["candidates"] if not x["complete"]]
    if out:
        line += (
            f"; left out, a fold failed or kept no checkpoint: candidate{'s' * (len(out) > 1)} "
            + ", ".join(out)
        )
    return line


class FoldStage:
    """A finished stage 2: `label` is `results.finish`'s rows hook (adds the fold runs to the
    rows, chooses the configuration from their validation metrics and writes cv.json, before
    any test image is read); `checkpoints` then names the chosen folds' models, which the
    post-sweep steps ensemble (ray_xray/pipeline.py, ensemble/folds.py).

    `opts`: the sweep's SweepOptions; `configs`: stage 1's candidates; `grid`: stage 2's
    ResultGrid; `held`: {"cpus", "gpus"} each trial held; `reused`: candidate -> the search
    run that is its fold 0 (`reusable`); `search`: stage 1's results rows (for `choice`).
    `refit_grid`: the refits' ResultGrid (--refit-seeds, tune/refit.py), set after `choice`,
    else None."""

    def __init__(
        self,
        opts,
        exp_dir: str,
        configs: list[dict],
        grid,
        held: dict,
        reused: dict | None = None,
        search: list[dict] | None = None,
    ) -> None:
        self.opts, self.exp_dir, self.configs = opts, exp_dir, configs
        self.grid, self.held, self.reused = grid, held, reused or {}
        self.search = search or []
        self.selection: dict | None = None
        self.refit_grid = None
        self._refitted: dict | None = None  # `choice`'s chosen candidate (printed then)
        self._folds: list[dict] | None = None  # the fold runs' rows, read once (`_fold_rows`)

    def _rows(self, grid, dirname: str) -> list[dict]:
        """The results rows of `grid`, a Tuner of EXP/`dirname`/."""
        from ..metrics import metric_mode
        from .results import trial_rows

        objective = self.opts.objective[0]
        folder, runner = f"{self.exp_dir}/{dirname}", self.opts.trial_runner
        return trial_rows(grid, objective, metric_mode(objective), folder, self.held, runner)

    def _fold_rows(self) -> list[dict]:
        """The fold runs' results rows, read from the grid once (`choice` and `label` both
        need them); copies, since `label_rows` relabels its rows in place."""
        if self._folds is None:
            self._folds = self._rows(self.grid, FOLDS_DIR)
        return [dict(r) for r in self._folds]

    def choice(self) -> dict:
        """The selection record (`choose`) from stage 1's rows (copied, not changed) and the
        fold runs: what the refits train, known before results are written. Prints the
        choice (`label` then does not print it again)."""
        from ..metrics import metric_mode

        objective = self.opts.objective[0]
        rows = label_rows(
            [dict(r) for r in self.search],
            self._fold_rows(),
            self.configs,
            self.reused,
        )
        selection = choose(rows, f"best_{objective}", metric_mode(objective), self.opts.cv)
        print(selection_line(selection), flush=True)
        self._refitted = selection["chosen"]  # what the refits train: `label` keeps it
        return selection

    def label(self, rows: list[dict]) -> list[dict]:
        """Stage 1's `rows` followed by the fold runs' (`label_rows`) and the refits'
        (`refit.label_refits`); chooses the configuration by its mean fold metric (`choose`:
        ValueError when none finished all K folds), writes cv.json and prints the choice.
        Reads only validation columns."""
        from ..metrics import metric_mode
        from .refit import REFIT_DIR, label_refits

        objective = self.opts.objective[0]
        mode = metric_mode(objective)
        rows = label_rows(rows, self._fold_rows(), self.configs, self.reused)
        self.selection = choose(rows, f"best_{objective}", mode, self.opts.cv)
        self.selection["search_trials"] = sum(r.get("cv_stage") == "search" for r in rows)
        self.selection["reused_search_runs"] = self.reused
        if self.refit_grid is not None:
            chosen = self._refitted  # the same rows choose the same; the refits trained this
            refits = label_refits(self._rows(self.refit_grid, REFIT_DIR), chosen)
            self.selection["refit_trial_ids"] = [r["trial_id"] for r in refits]
            rows += refits
        write_selection(self.exp_dir, self.selection)
        if self._refitted is None:
            print(selection_line(self.selection), flush=True)
        return rows

    def groups(self, rows: list[dict]) -> dict[int, list[str]]:
        """Candidate index -> its K fold checkpoints, in fold order, for every candidate with
        all K folds, in `ranked_candidates` order (the order in which the fold ensemble may
        add them). After `label`; `rows`: the labelled rows, whose "checkpoint_path" they are."""
        by_id = {r["trial_id"]: r["checkpoint_path"] for r in rows}
        return {
            c["candidate"]: [by_id[t] for t in c["trial_ids"]]
            for c in ranked_candidates(self.selection)
        }

    def refits(self, rows: list[dict]) -> list[str]:
        """The refit models' checkpoints (--refit-seeds), in seed order; [] without refits.
        After `label`; a refit that failed or kept no checkpoint is left out."""
        by_id = {r["trial_id"]: r for r in rows}
        out = [by_id[t] for t in self.selection.get("refit_trial_ids", [])]
        return [
            r["checkpoint_path"] for r in out if r["status"] != "ERROR" and r["checkpoint_path"]
        ]
