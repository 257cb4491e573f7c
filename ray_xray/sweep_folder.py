"""The one reader of a finished sweep's folder (STORAGE/NAME, written by ``ray_xray.tune``).

Files: ``RESULTS_FILE`` (results.parquet: one row per trial, written last, so its presence
marks a finished sweep), ``SWEEP_FILE`` (sweep.json: the command, options, plan, time use),
``BEST_FILE`` (best_trials.json: the top-k evaluated on test, best first), ``MODEL_FILE``
(best_model.pt), ``ENSEMBLE_DIR``/``ENSEMBLE_FILE`` and one folder per trial (Tune's
result.json, or progress.csv, per epoch: ``read_history``). Errors are
ValueError with one line naming the file. Importing this module costs no torch or pandas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import quote

from .metrics import metric_mode

RESULTS_FILE = "results.parquet"
SWEEP_FILE = "sweep.json"
BEST_FILE = "best_trials.json"
MODEL_FILE = "best_model.pt"  # as ray_xray.checkpoint (which imports torch)
ENSEMBLE_DIR = "ensemble"
ENSEMBLE_FILE = "ensemble.pt"


def study_url(db: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file `db` (a sweep's optuna.db), path percent-escaped.

    SQLAlchemy decodes ``%XX`` in a URL's path and cuts it at ``?`` (the query), so a plain
    ``sqlite:///`` + path opened another file (``a%20b`` -> ``a b``) or crashed (sqlalchemy
    #11234); escaped, any name a file system allows opens as itself (spaces, ``%``, ``?``, ``#``,
    quotes, non-ASCII). optuna-dashboard reads the same URL. A relative `db` stays relative."""
    return "sqlite:///" + quote(Path(db).as_posix(), safe="/")


def is_sweep_folder(path: str | Path) -> bool:
    """True for a folder holding RESULTS_FILE (a finished sweep)."""
    path = Path(path)
    return path.is_dir() and (path / RESULTS_FILE).is_file()


def check_sweep_folder(exp_dir: str | Path) -> Path:
    """`exp_dir` as a Path once it is a finished sweep's folder; ValueError (one line) else."""
    exp = Path(exp_dir).expanduser()
    if not exp.exists():
        raise ValueError(f"{exp}: no such experiment directory")
    if not exp.is_dir():
        raise ValueError(f"{exp}: not a directory (give a sweep's STORAGE/NAME folder)")
    if not (exp / RESULTS_FILE).is_file():
        raise ValueError(
            f"{exp}: not a finished ray_xray sweep (no {RESULTS_FILE}; run python -m ray_xray.tune)"
        )
    return exp


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not valid JSON") from None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable ({type(exc).__name__})") from None


def read_sweep_json(exp_dir: str | Path) -> dict:
    """SWEEP_FILE's dict; {} when the folder has none (older sweeps). ValueError when it is
    not valid JSON or not an object."""
    path = Path(exp_dir) / SWEEP_FILE
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def read_best_trials(exp_dir: str | Path) -> list[dict]:
    """BEST_FILE's list (dicts with rank, trial_id, model, config, test, ...; best first).
    ValueError when it is missing, not valid JSON or not a list."""
    path = Path(exp_dir) / BEST_FILE
    if not path.is_file():
        raise ValueError(f"{Path(exp_dir)} has no {BEST_FILE} (a sweep writes it)")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a JSON list")
    return data


def read_table(exp_dir: str | Path):
    """RESULTS_FILE as a pandas DataFrame (one row per trial). ValueError when the folder is
    not a finished sweep or the file is unreadable."""
    import pandas as pd

    exp = check_sweep_folder(exp_dir)
    try:
        return pd.read_parquet(exp / RESULTS_FILE)
    except Exception as exc:
        raise ValueError(f"{exp}/{RESULTS_FILE}: unreadable ({type(exc).__name__})") from None


def sweep_model(exp_dir: str | Path) -> tuple[Path, str]:
    """(file, note) of the model a sweep folder stands for: its ensemble when it has one,
    else its best trial's MODEL_FILE (the note says so). ValueError when it has neither."""
    exp = Path(exp_dir)
    if (exp / ENSEMBLE_DIR / ENSEMBLE_FILE).is_file():
        return exp / ENSEMBLE_DIR / ENSEMBLE_FILE, "a sweep folder: its ensemble"
    if (exp / MODEL_FILE).is_file():
        return exp / MODEL_FILE, (
            f"a sweep folder without {ENSEMBLE_DIR}/{ENSEMBLE_FILE}: its best trial by "
            "validation (run python -m ray_xray.ensemble for the ensemble)"
        )
    raise ValueError(f"{exp}: a sweep folder with neither {ENSEMBLE_DIR}/ nor {MODEL_FILE}")


def model_path(path: str | Path) -> tuple[Path, str]:
    """(file, note) of the model a path given to `predict`, `evaluate` or `api.load` stands
    for: a sweep folder's `sweep_model` (its ensemble, else its best trial, and a note saying
    which), anything else `checkpoint.resolve`'s file and no note. Raises ValueError (one line)
    for a folder holding no model."""
    if is_sweep_folder(path):
        return sweep_model(path)
    from .checkpoint import resolve

    return resolve(path), ""


def relocate(path, exp_dir: str | Path, trial_id: str) -> Path | None:
    """A stored path as written, or re-rooted under exp_dir when the sweep folder moved (the
    part from the `trial_id` component on); None when neither exists or `path` is empty."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    if p.exists():
        return p
    parts = p.parts
    if trial_id in parts:
        q = Path(exp_dir).joinpath(*parts[parts.index(trial_id) :])
        if q.exists():
            return q
    return None


def read_experiment(exp_dir: str | Path) -> dict:
    """A finished sweep, read: {"exp_dir": resolved Path, "table": DataFrame, "sweep":
    SWEEP_FILE's dict, "options": its options, "objective": [metric, ...], "key": the
    best_<metric> ranking column, "mode": "max"/"min"}. ValueError (one line) when the
    folder, its files or the table's columns (trial_id, status, checkpoint_path) are wrong."""
    exp = check_sweep_folder(exp_dir)
    table = read_table(exp)
    sweep = read_sweep_json(exp)
    options = sweep.get("options", {})
    objective = options.get("objective") or []
    if isinstance(objective, str):
        objective = [m for m in objective.split(",") if m]
    key = f"best_{objective[0]}" if objective else None
    if key not in table.columns:
        found = [c for c in table.columns if c.startswith("best_") and c != "best_epoch"]
        if not found:
            raise ValueError(f"{exp}/{RESULTS_FILE}: no best_<metric> column")
        key = found[0]
        objective = [key[len("best_") :], *objective[1:]]
    for col in ("trial_id", "status", "checkpoint_path"):
        if col not in table.columns:
            raise ValueError(f"{exp}/{RESULTS_FILE}: column '{col}' missing")
    return {
        "exp_dir": exp.resolve(),
        "table": table,
        "sweep": sweep,
        "options": options,
        "objective": objective,
        "key": key,
        "mode": metric_mode(objective[0]),
    }


def read_history(trial_dir: str | Path | None) -> dict:
    """Per-epoch metrics of one trial from Tune's result.json (progress.csv as fallback):
    {"epoch": [int], "val_macro_f1": [float], "val_loss": [float] (NaN where not logged),
    "rows": [every logged value of that epoch]}, in epoch order. A restarted trial repeats
    epochs: the last report of each counts. Lines that are not JSON are skipped; a missing
    folder or log gives empty lists."""
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


def read_trial_histories(exp: dict) -> dict[str, list[dict]]:
    """{trial_id: its result.json rows, one per epoch (``read_history``'s "rows")} for every
    trial of `exp` (``read_experiment``'s dict), in the table's order; a trial folder that
    moved with the sweep folder is found under it (``relocate``)."""
    out = {}
    for r in exp["table"].to_dict("records"):
        tid = str(r["trial_id"])
        where = relocate(r.get("trial_dir"), exp["exp_dir"], tid) or exp["exp_dir"] / tid
        out[tid] = read_history(where).get("rows", [])
    return out
