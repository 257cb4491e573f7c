"""ray_xray.sweep_folder: the one reader of a sweep's folder (issue 18)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ray_xray import sweep_folder as SF


@pytest.fixture
def sweep(tmp_path):
    exp = tmp_path / "exp"
    (exp / "t1" / "checkpoint_000000").mkdir(parents=True)
    table = pd.DataFrame(
        {
            "trial_id": ["t1", "t2"],
            "status": ["TERMINATED", "ERROR"],
            "checkpoint_path": ["/gone/exp/t1/checkpoint_000000", None],
            "best_epoch": [1, 0],
            "best_val_macro_f1": [0.8, None],
        }
    )
    table.to_parquet(exp / SF.RESULTS_FILE)
    (exp / SF.SWEEP_FILE).write_text(json.dumps({"options": {"objective": "val_macro_f1"}}))
    (exp / SF.BEST_FILE).write_text(json.dumps([{"rank": 1, "trial_id": "t1"}]))
    return exp


def test_reads_a_sweep_folder(sweep):
    assert SF.is_sweep_folder(sweep) and not SF.is_sweep_folder(sweep / "t1")
    assert SF.check_sweep_folder(sweep) == sweep
    assert SF.read_sweep_json(sweep)["options"]["objective"] == "val_macro_f1"
    assert SF.read_best_trials(sweep) == [{"rank": 1, "trial_id": "t1"}]
    assert list(SF.read_table(sweep)["trial_id"]) == ["t1", "t2"]
    exp = SF.read_experiment(sweep)
    assert exp["key"] == "best_val_macro_f1" and exp["mode"] == "max"
    assert exp["objective"] == ["val_macro_f1"]
    moved = SF.relocate("/gone/exp/t1/checkpoint_000000", sweep, "t1")
    assert moved == sweep / "t1" / "checkpoint_000000"
    assert SF.relocate(None, sweep, "t1") is None and SF.relocate("/gone/t9", sweep, "t9") is None


def test_sweep_model_prefers_the_ensemble(sweep):
    with pytest.raises(ValueError, match="neither ensemble/ nor best_model.pt"):
        SF.sweep_model(sweep)
    (sweep / SF.MODEL_FILE).write_bytes(b"x")
    path, note = SF.sweep_model(sweep)
    assert path == sweep / SF.MODEL_FILE and "best trial" in note
    (sweep / SF.ENSEMBLE_DIR).mkdir()
    (sweep / SF.ENSEMBLE_DIR / SF.ENSEMBLE_FILE).write_bytes(b"x")
    assert SF.sweep_model(sweep)[0] == sweep / SF.ENSEMBLE_DIR / SF.ENSEMBLE_FILE


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_missing_or_bad_files_give_one_clear_error(sweep, tmp_path):
    with pytest.raises(ValueError) as e:
        SF.check_sweep_folder(tmp_path / "none")
    assert "no such experiment directory" in _one_line(e)
    with pytest.raises(ValueError) as e:
        SF.read_table(sweep / "t1")
    assert "not a finished ray_xray sweep (no results.parquet" in _one_line(e)
    (sweep / SF.SWEEP_FILE).write_text("{not json")
    with pytest.raises(ValueError) as e:
        SF.read_experiment(sweep)
    assert _one_line(e) == f"{sweep / SF.SWEEP_FILE}: not valid JSON"
    (sweep / SF.BEST_FILE).unlink()
    with pytest.raises(ValueError) as e:
        SF.read_best_trials(sweep)
    assert "has no best_trials.json" in _one_line(e)
    (sweep / SF.RESULTS_FILE).write_bytes(b"not parquet")
    with pytest.raises(ValueError) as e:
        SF.read_table(sweep)
    assert _one_line(e).startswith(f"{sweep}/results.parquet: unreadable")
    (sweep / SF.RESULTS_FILE).unlink()
    pd.DataFrame({"trial_id": ["t1"]}).to_parquet(sweep / SF.RESULTS_FILE)
    (sweep / SF.SWEEP_FILE).unlink()
    assert SF.read_sweep_json(sweep) == {}
    with pytest.raises(ValueError, match="no best_<metric> column"):
        SF.read_experiment(sweep)
