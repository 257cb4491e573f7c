"""The results step after a sweep: it reads the checkpoints each trial's Ray Train run kept, and
writes every trial's row even when one checkpoint is gone; where trial time went. No Ray cluster:
Ray's own checkpoint manager builds the trial folders, as a sweep's Train runs leave them."""

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from ray_xray.checkpoint import load_checkpoint, model_record
from ray_xray.cli import run
from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.inference import build_model
from ray_xray.tune import results
from ray_xray.tune.service import SweepOptions, finish_sweep

F1 = "val_macro_f1"


def _state(epoch: int, f1: float, seed: int) -> dict:
    """A worker's checkpoint.pt at the end of `epoch`: its best model so far is this epoch's."""
    torch.manual_seed(seed)
    cfg = TrainConfig(
        model="cnn",
        img_size=32,
        limit_per_split=48,
        epochs=2,
        model_kwargs={"width": 8, "head_dims": [16], "pool_size": 2},
    )
    data = load_data(cfg.data, cfg.img_size, limit_per_split=48)
    record = model_record(build_model(cfg, 3), cfg, data.classes, data.mean, data.std, {})
    record["epoch"] = epoch
    history = [_report(e, f1, seed) for e in range(1, epoch + 1)]
    return {"epoch": epoch, "best": record, "history": history}


def _report(epoch: int, f1: float, seed: int) -> dict:
    return {
        "epoch": epoch,
        F1: f1,
        "val_loss": 1.0 - f1,
        "val_acc": f1,
        "epoch_s": 4.0,
        "best_epoch": epoch,
        f"best_{F1}": f1,
        "seed": seed,
    }


def train_run(run_dir: Path, epochs: list[tuple[int, float]], seed: int) -> list[Path]:
    """Report each (epoch, f1) with a checkpoint through Ray Train's CheckpointManager, set up as
    make_trainer sets it (num_to_keep=1, scored on val_macro_f1): Ray deletes what it drops.
    Returns every checkpoint folder reported, deleted or not."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext
    from ray.train.v2._internal.execution.training_report import _TrainingReport

    run_dir.mkdir(parents=True)
    storage = StorageContext(storage_path=str(run_dir.parent), experiment_dir_name=run_dir.name)
    config = CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=F1, checkpoint_score_order="max"
    )

    async def report_all() -> list[Path]:
        manager, folders = CheckpointManager(config, storage), []
        for epoch, f1 in epochs:
            folder = run_dir / f"checkpoint_2026-01-01_00-00-{epoch:02d}.000000"
            folder.mkdir()
            torch.save(_state(epoch, f1, seed), folder / "checkpoint.pt")
            report = _report(epoch, f1, seed)
            manager.register_checkpoint(
                _TrainingReport(Checkpoint.from_directory(str(folder)), report, False)
            )
            folders.append(folder)
        await asyncio.sleep(0)  # the manager's change notification
        return folders

    return asyncio.run(report_all())


def tune_result(exp: Path, trial_id: str, seen: list[dict], error=None) -> SimpleNamespace:
    """What a ray.tune.Result tells the results step: path, per-report metrics, config, error."""
    frame = pd.DataFrame(seen) if seen else None
    return SimpleNamespace(
        path=str(exp / trial_id),
        metrics_dataframe=frame,
        error=error,
        config={"model": "cnn", "lr": 1e-3},
    )


def _seen(epoch: int, f1: float, checkpoint: Path | None, wall: float) -> dict:
    return {
        **_report(epoch, f1, 0),
        "checkpoint_path": str(checkpoint) if checkpoint else None,
        "time_total_s": wall,
    }


@pytest.fixture
def raced_sweep(tmp_path):
    """Three trials after the race of issue #16, 3: `raced`: ASHA stopped it after epoch 1, its
    Train run reported epoch 2 (better) anyway, and Ray deleted epoch 1's checkpoint, the last
    one Tune heard of. `plain`: one epoch, nothing odd. `lost`: reported an epoch, but its
    Train run folder is gone."""
    exp = tmp_path / "exp"
    e1, e2 = train_run(exp / "raced" / "train", [(1, 0.30), (2, 0.50)], seed=1)
    assert not e1.exists() and (e2 / "checkpoint.pt").is_file()  # what Ray's manager did
    (p1,) = train_run(exp / "plain" / "train", [(1, 0.40)], seed=2)
    (exp / "lost").mkdir()
    (exp / "sweep.json").write_text(json.dumps({"command": "python -m ray_xray.tune"}))
    grid = [
        tune_result(exp, "raced", [_seen(1, 0.30, e1, wall=10.0)]),
        tune_result(exp, "plain", [_seen(1, 0.40, p1, wall=9.0)]),
        tune_result(exp, "lost", [_seen(1, 0.45, exp / "lost" / "train" / "gone", wall=8.0)]),
    ]
    return exp, grid, {"raced": e2, "plain": p1}


def test_results_use_the_checkpoint_the_train_run_kept(raced_sweep, capsys):
    exp, grid, kept = raced_sweep
    opts = SweepOptions(objective=[F1], top_k=5)
    summary = results.finish(grid, str(exp), None, opts, 30.0, True, {"cpus_per_trial": 2.0})
    table = pd.read_parquet(exp / "results.parquet").set_index("trial_id")
    raced, plain, lost = (table.loc[t] for t in ("raced", "plain", "lost"))
    # The raced trial: the kept epoch-2 checkpoint, its epoch counted, its better score ranked.
    assert raced["checkpoint_path"] == str(kept["raced"]) and raced["epochs"] == 2
    assert raced[f"best_{F1}"] == 0.50 and raced["epochs_after_tune_stopped"] == 1
    assert raced["compute_s"] == 8.0 and raced["wall_s"] == 14.0 and raced["error"] == ""
    assert (
        plain["checkpoint_path"] == str(kept["plain"]) and plain["epochs_after_tune_stopped"] == 0
    )
    # The lost trial is still a row, and says why it has no checkpoint.
    assert pd.isna(lost["checkpoint_path"]) and lost["status"] == "TERMINATED"
    assert lost["error"].startswith("no checkpoint kept:") and "doesn't exist" in lost["error"]
    best = json.loads((exp / "best_trials.json").read_text())
    assert [b["trial_id"] for b in best] == ["raced", "plain"] and best[0]["best_epoch"] == 2
    assert 0 <= best[0]["test"]["macro_f1"] <= 1 and table["test_macro_f1"].notna().sum() == 2
    assert load_checkpoint(exp / "best_model.pt")["epoch"] == 2
    # Where the time went, in sweep.json beside the command written at the start.
    sweep = json.loads((exp / "sweep.json").read_text())
    assert sweep["command"] == "python -m ray_xray.tune"
    assert sweep["time_use"] == summary["time_use"] and sweep["time_use"]["resource"] == "CPU"
    # (8 + 4 + 4) s of compute x 2 CPUs out of (14 + 9 + 8) s x 2 CPUs held.
    assert sweep["time_use"]["training_share"] == pytest.approx(16 / 31)
    out = capsys.readouterr().out
    assert "52% of trial CPU-seconds went to training+validation (32 of 62)" in out
    assert "reason: no checkpoint kept:" in out


def test_unreadable_checkpoint_is_noted_and_the_next_trial_takes_its_place(raced_sweep):
    exp, grid, kept = raced_sweep
    (kept["raced"] / "checkpoint.pt").write_bytes(b"not a torch file")
    results.finish(grid, str(exp), None, SweepOptions(objective=[F1], top_k=1), 30.0, True, {})
    table = pd.read_parquet(exp / "results.parquet").set_index("trial_id")
    assert table.loc["raced", "error"].startswith("checkpoint unreadable: ")
    assert pd.isna(table.loc["raced", "checkpoint_path"])  # so the ensemble skips it too
    best = json.loads((exp / "best_trials.json").read_text())
    assert [b["trial_id"] for b in best] == ["plain"]


def test_snapshot_naming_a_deleted_folder_falls_back_to_the_newest_on_disk(tmp_path):
    """A run killed between Ray's snapshot write and its deletions (or a folder removed by
    hand): Ray refuses the snapshot; the newest checkpoint folder on disk is used."""
    run_dir = tmp_path / "t" / "train"
    e1, e2 = train_run(run_dir, [(1, 0.5), (2, 0.3)], seed=0)  # both kept: best + latest
    assert results.kept_checkpoint(str(run_dir)).path == str(e2)
    for f in e1.iterdir():
        f.unlink()
    e1.rmdir()
    kept = results.kept_checkpoint(str(run_dir))
    assert kept.path == str(e2) and kept.why == "" and kept.metrics == []
    for f in e2.iterdir():
        f.unlink()
    kept = results.kept_checkpoint(str(run_dir))
    assert kept.path is None and "does not exist anymore" in kept.why


def test_merge_history_counts_each_epoch_once():
    """A restored trial re-reports its final epoch; reports after Tune's last are added."""
    seen = [
        {"epoch": 1, "epoch_s": 3.0},
        {"epoch": 2, "epoch_s": 5.0},
        {"epoch": 2, "epoch_s": 5.0},
    ]
    kept = [{"epoch": 1, "epoch_s": 3.0}, {"epoch": 3, "epoch_s": 7.0}]
    history, unseen = results.merge_history(seen, kept)
    assert [h["epoch"] for h in history] == [1, 2, 3] and unseen == [kept[1]]


def test_time_use_arithmetic_on_known_values():
    rows = pd.DataFrame(
        [
            {"wall_s": 100.0, "compute_s": 60.0, "cpus": 2.0, "gpus": 0.0},
            {"wall_s": 50.0, "compute_s": 40.0, "cpus": 4.0, "gpus": 0.0},
            {"wall_s": float("nan"), "compute_s": 0.0, "cpus": 2.0, "gpus": 0.0},  # never reported
            {"wall_s": 10.0, "compute_s": 12.0, "cpus": 1.0, "gpus": 0.0},  # clipped to its wall
        ]
    ).to_dict("records")
    use = results.time_use(rows)
    # CPU-s held 100*2 + 50*4 + 10*1 = 410; training 60*2 + 40*4 + 10*1 = 290.
    assert (use["cpu_s_held"], use["cpu_s_training"]) == (410.0, 290.0)
    assert use["training_share"] == pytest.approx(290 / 410) and use["resource"] == "CPU"
    assert use["trials_timed"] == 3 and use["median_overhead_s"] == 10.0  # of 40, 10, -2
    assert results.time_line(use).startswith("71% of trial CPU-seconds went to training+validation")
    # GPU trials: the GPU-seconds decide (0.5 and 1 GPU per trial).
    rows[0]["gpus"], rows[1]["gpus"], rows[3]["gpus"] = 0.5, 1.0, 0.0
    use = results.time_use(rows)
    assert use["resource"] == "GPU" and (use["gpu_s_held"], use["gpu_s_training"]) == (100.0, 70.0)
    assert use["training_share"] == pytest.approx(0.70)
    low = results.time_use([{"wall_s": 40.0, "compute_s": 10.0, "cpus": 1.0, "gpus": 0.0}])
    assert "start-up dominates" in results.time_line(low)
    tiny = results.time_use([{"wall_s": 165.0, "compute_s": 0.76, "cpus": 1.0, "gpus": 0.0}])
    assert results.time_line(tiny).startswith("0.5% of trial CPU-seconds")
    assert (
        results.time_use([])["training_share"] is None
        and results.time_line(results.time_use([])) is None
    )


def test_a_failing_results_step_is_not_reported_as_bad_input(monkeypatch, tmp_path):
    """Exit 2 means bad input; a results step that breaks after the trials ran is ours."""

    def broken(*args, **kwargs):
        raise FileNotFoundError("[Errno 2] No such file or directory: 'x/checkpoint.pt'")

    monkeypatch.setattr(results, "finish", broken)
    exp = str(tmp_path / "exp" / "sweep1")
    with pytest.raises(
        results.ResultsError
    ) as info:  # cli.run lets it through: a traceback, exit 1
        run(lambda argv: finish_sweep([], exp, None, SweepOptions(), 1.0, True, {}), [])
    assert not isinstance(info.value, ValueError | FileNotFoundError | PermissionError)
    assert "with --resume retries" in str(info.value) and "No such file" in str(info.value)


def test_inline_trials_use_the_checkpoint_tune_kept(tmp_path):
    """An inline trial has no Ray Train run: its checkpoint is the one Tune kept (the Result's),
    which its trial reported with its last checkpointed epoch; a folder without our state file
    is not used, and says why."""
    import ray.tune

    exp = tmp_path / "exp"
    kept = exp / "inline" / "checkpoint_000001"
    kept.mkdir(parents=True)
    torch.save(_state(2, 0.6, seed=3), kept / "checkpoint.pt")
    empty = exp / "empty" / "checkpoint_000000"
    empty.mkdir(parents=True)
    grid = [
        SimpleNamespace(
            **vars(
                tune_result(exp, "inline", [_seen(1, 0.5, None, 5.0), _seen(2, 0.6, None, 9.0)])
            ),
            checkpoint=ray.tune.Checkpoint(str(kept)),
        ),
        SimpleNamespace(
            **vars(tune_result(exp, "empty", [_seen(1, 0.4, None, 5.0)])),
            checkpoint=ray.tune.Checkpoint(str(empty)),
        ),
    ]
    rows = {r["trial_id"]: r for r in results.trial_rows(grid, F1, "max", str(exp))}
    assert rows["inline"]["checkpoint_path"] == str(kept) and rows["inline"]["error"] == ""
    assert rows["inline"]["epochs"] == 2 and rows["inline"]["epochs_after_tune_stopped"] == 0
    assert results.load_record(rows["inline"]["checkpoint_path"])["epoch"] == 2
    assert rows["empty"]["checkpoint_path"] is None
    assert rows["empty"]["error"] == f"no checkpoint kept: {empty}/checkpoint.pt is missing"


def test_an_inline_checkpoint_tune_never_registered_is_used(tmp_path):
    """The sweep stopped while an inline trial's report was in flight: its checkpoint folder
    (epoch 2) is on disk, Tune's Result has none and saw epoch 1 only. The row uses that
    checkpoint with the epoch its state records; a trial with no folder says it reported none."""
    exp = tmp_path / "exp"
    late = exp / "late" / "checkpoint_000000"
    late.mkdir(parents=True)
    torch.save(_state(2, 0.6, seed=3), late / "checkpoint.pt")
    (exp / "none").mkdir(parents=True)
    grid = [
        SimpleNamespace(**vars(tune_result(exp, t, [_seen(1, 0.5, None, 5.0)])), checkpoint=None)
        for t in ("late", "none")
    ]
    rows = {
        r["trial_id"]: r for r in results.trial_rows(grid, F1, "max", str(exp), runner="inline")
    }
    assert rows["late"]["checkpoint_path"] == str(late) and rows["late"]["error"] == ""
    assert rows["late"]["epochs"] == 2 and rows["late"]["epochs_after_tune_stopped"] == 1
    assert rows["none"]["checkpoint_path"] is None
    assert rows["none"]["error"] == "no checkpoint kept: the trial reported none"
