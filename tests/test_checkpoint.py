"""ray_xray.checkpoint: the one owner of the .pt files (issue 18)."""

from __future__ import annotations

import pickle

import pytest
import torch

from ray_xray import checkpoint
from ray_xray.config import TrainConfig
from ray_xray.inference import build_model


def _record(img_size: int = 32) -> dict:
    cfg = TrainConfig(model="cnn", img_size=img_size, model_kwargs={"width": 8})
    return checkpoint.model_record(build_model(cfg, 2), cfg, ["a", "b"], 0.4, 0.2, {"val_acc": 0.5})


def test_atomic_save_round_trips(tmp_path):
    path = checkpoint.atomic_save({"w": torch.arange(3), "epoch": 2}, tmp_path / "x.pt")
    back = checkpoint.safe_load(path)
    assert back["epoch"] == 2 and torch.equal(back["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pt"
    checkpoint.atomic_save({"epoch": 1}, path)

    def half_then_fail(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.safe_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_with_code_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "best_model.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"format": checkpoint.CHECKPOINT_FORMAT, "x": _Evil()}, fh)
    with pytest.raises(ValueError) as err:
        checkpoint.load_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: not a loadable") and "\n" not in str(err.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint"):
        checkpoint.safe_load(tmp_path / "nope.pt")
    checkpoint.atomic_save({"format": "other"}, tmp_path / "f.pt")
    with pytest.raises(ValueError, match="not a ray_xray checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "f.pt")
    with pytest.raises(ValueError, match="not a ray_xray training state"):
        checkpoint.load_state(
            checkpoint.atomic_save({"x": 1}, tmp_path / checkpoint.STATE_FILE).parent
        )


def test_preprocess_reads_old_and_new_records_alike():
    new = _record(48)
    assert "preprocess" not in new and new["config"]["img_size"] == 48
    old = {k: v for k, v in new.items() if k != "stats"}
    old["format"] = "ray_xray/1"  # as written before: img_size twice, mean/std in preprocess
    old["preprocess"] = {"img_size": 48, "in_chans": 1, "mean": 0.4, "std": 0.2}
    assert checkpoint.preprocess(new) == checkpoint.preprocess(old)
    assert checkpoint.preprocess(new) == {
        "img_size": 48,
        "in_chans": 1,
        "mean": pytest.approx(0.4),
        "std": pytest.approx(0.2),
    }
    no_size = {"preprocess": {"in_chans": 1, "mean": 0.4, "std": 0.2}, "config": {}}
    with pytest.raises(ValueError, match="without img_size"):
        checkpoint.preprocess(no_size)


def test_resolve_and_load_each_kind_of_path(tmp_path):
    rec = _record()
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.atomic_save(rec, run / checkpoint.MODEL_FILE)
    trial = tmp_path / "trial" / "checkpoint_000001"
    trial.mkdir(parents=True)
    state = checkpoint.training_state(
        {"model": rec["state_dict"]},
        type("P", (), {"epoch": 1, "best_value": 0.5, "since_best": 0, "history": []})(),
        rec,
        improved=True,
    )
    checkpoint.save_state(state, trial)
    ens_dir = tmp_path / "ens"
    ens_dir.mkdir()
    ens = checkpoint.ensemble_record([{**rec, "temperature": 1.5}], [1.0], "mean", ["a", "b"])
    checkpoint.save_ensemble(ens, ens_dir / checkpoint.ENSEMBLE_FILE)

    assert checkpoint.resolve(run) == run / checkpoint.MODEL_FILE
    assert checkpoint.resolve(run / checkpoint.MODEL_FILE) == run / checkpoint.MODEL_FILE
    assert checkpoint.resolve(trial) == trial / checkpoint.STATE_FILE
    assert checkpoint.resolve(ens_dir) == ens_dir / checkpoint.ENSEMBLE_FILE
    with pytest.raises(ValueError, match="no best_model.pt or ensemble.pt"):
        checkpoint.resolve(tmp_path)
    for where in (run, run / checkpoint.MODEL_FILE, trial):
        got = checkpoint.load_checkpoint(where)
        assert got["classes"] == ["a", "b"] and checkpoint.preprocess(got)["img_size"] == 32
    assert checkpoint.load_state(trial)["epoch"] == 1
    assert checkpoint.is_ensemble(checkpoint.load_model_or_ensemble(ens_dir))
    assert checkpoint.load_ensemble(ens_dir)["members"][0]["temperature"] == 1.5
    with pytest.raises(ValueError, match="not a ray_xray checkpoint"):
        checkpoint.load_checkpoint(ens_dir)
