"""The sweep's Optuna study file (optuna.db): its URL, and closing it when the sweep ends."""

from __future__ import annotations

from pathlib import Path

from ..sweep_folder import study_url


def close_running(db: str | Path, study_name: str, reason: str) -> int:
    """Mark the study's trials still RUNNING as FAIL, each with the user attribute
    ``ended_by`` = `reason` (e.g. "budget"): called when a sweep ends (not when it is
    interrupted: a resumed sweep's searcher still tells those trials). Tune stops trials at the
    time budget without telling the searcher, so they stayed RUNNING in optuna.db for ever.
    Returns how many were closed; 0 when the file or the study does not exist."""
    if not Path(db).is_file():
        return 0
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(study_url(db))
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    closed = 0
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "ended_by", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        closed += 1
    storage.remove_session()
    storage.engine.dispose()
    return closed
