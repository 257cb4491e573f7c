"""A sweep's own files on a storage URI (tune/storage.py), W&B without the key in Ray's hands
(tune/wandb_log.py): no Ray cluster here. A file:// URI goes through pyarrow's filesystem layer
exactly as s3:// does; only the filesystem object differs."""

import json
import os
import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_results_race import F1, _seen, train_run, tune_result

from ray_xray.train import engine as E
from ray_xray.tune import results as R
from ray_xray.tune.service import SweepOptions
from ray_xray.tune.storage import StudyUpload, SweepFiles, tool_commands

MARKER = "wandbMARKERd41d8cd98f00b204e9800998ecf8427e0"  # a fake key, found nowhere it must not be


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """TMPDIR (and so the local copies of URI sweeps) inside the test's folder."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    yield tmp_path / "tmp"
    tempfile.tempdir = None


def test_sweep_files_copy_through_a_uri_and_leave_no_partial_files(tmp_path, tmpdir_env):
    store = tmp_path / "bucket" / "sweeps"
    files = SweepFiles(f"file://{store}/exp1")
    assert files.remote and files.stage.name == "exp1"
    assert str(files.stage).startswith(str(tmpdir_env))  # a private local copy, not the bucket
    files.local_path("results.csv").write_text("a,b\n1,2\n")
    files.local_path("ensemble/figures/roc.png").write_bytes(b"\x89PNG" + bytes(range(256)) * 9000)
    files.local_path("ensemble/.report.html.123.tmp").write_text("half")  # an atomic write's temp
    written = files.push("results.csv", "ensemble", "missing.json")
    assert written == [
        f"file://{store}/exp1/results.csv",
        f"file://{store}/exp1/ensemble/figures/roc.png",
    ]
    assert (store / "exp1" / "results.csv").read_text() == "a,b\n1,2\n"
    assert (store / "exp1" / "ensemble/figures/roc.png").stat().st_size == 4 + 256 * 9000
    assert not list(store.rglob("*.tmp")) and not (store / "exp1" / "missing.json").exists()
    assert files.exists("results.csv") and files.exists("ensemble") and not files.exists("nope")

    # Ray's paths for this storage are the filesystem's own; the results hold URIs.
    assert files.to_uri(f"{store}/exp1/t1/train/ckpt") == f"file://{store}/exp1/t1/train/ckpt"
    assert files.to_uri(None) is None and files.to_uri("/elsewhere/x") == "/elsewhere/x"

    # A resume pulls files back into a fresh local copy; fetch brings one checkpoint file.
    (store / "exp1" / "t1" / "train" / "ckpt").mkdir(parents=True)
    (store / "exp1" / "t1" / "train" / "ckpt" / "checkpoint.pt").write_bytes(b"state")
    files.cleanup()
    assert not files.stage.exists()
    assert files.pull("results.csv", "ensemble", "absent.json") == ["results.csv", "ensemble"]
    assert (files.stage / "ensemble/figures/roc.png").stat().st_size == 4 + 256 * 9000
    local = files.fetch(f"file://{store}/exp1/t1/train/ckpt", "checkpoint.pt")
    assert (
        local == files.stage / "t1/train/ckpt"
        and (local / "checkpoint.pt").read_bytes() == b"state"
    )
    with pytest.raises(FileNotFoundError):
        files.fetch(f"file://{store}/exp1/t2/train/ckpt", "checkpoint.pt")
    # Tune pickles its callbacks (StudyUpload holds the files): the filesystem is re-opened.
    again = pickle.loads(pickle.dumps(StudyUpload(files))).files
    assert again.stage == files.stage and again.exists("results.csv")


def test_local_storage_is_its_own_stage_and_push_is_a_no_op(tmp_path):
    files = SweepFiles(str(tmp_path / "exp"))
    assert not files.remote and files.stage == tmp_path / "exp"
    files.local_path("x.json").write_text("{}")
    assert files.push("x.json") == [] and files.exists("x.json")
    files.cleanup()  # never removes a local sweep
    assert (tmp_path / "exp" / "x.json").is_file()


def test_results_of_a_uri_sweep_reach_the_storage(tmp_path, tmpdir_env, capsys):
    """R.finish on a file:// storage: the trial's checkpoint is read through the filesystem
    layer (copied into the local stage), every result file is copied to the storage, and the
    paths in the results are URIs a cluster user can follow."""
    store = tmp_path / "bucket"
    exp = store / "sweep1"
    (kept,) = train_run(exp / "t1" / "train", [(1, 0.40)], seed=2)
    files = SweepFiles(f"file://{exp}")
    files.local_path("sweep.json").write_text(json.dumps({"command": "python -m ray_xray.tune"}))
    files.local_path("optuna.db").write_bytes(b"SQLite format 3\x00")
    grid = [tune_result(exp, "t1", [_seen(1, 0.40, kept, wall=9.0)])]
    opts = SweepOptions(objective=[F1], top_k=2)
    summary = R.finish(grid, files.uri, None, opts, 30.0, False, {"cpus_per_trial": 1.0}, files)
    for name in ("results.parquet", "results.csv", "best_trials.json", "best_model.pt",
                 "sweep.json", "optuna.db"):  # fmt: skip
        assert (exp / name).is_file(), name
    table = pd.read_parquet(exp / "results.parquet")
    assert table.loc[0, "checkpoint_path"] == f"file://{kept}"
    assert table.loc[0, "trial_dir"] == f"file://{exp}/t1"
    best = json.loads((exp / "best_trials.json").read_text())
    assert best[0]["checkpoint"] == f"file://{kept}" and 0 <= best[0]["test"]["macro_f1"] <= 1
    assert E.load_checkpoint(exp / "best_model.pt")["epoch"] == 1
    assert json.loads((exp / "sweep.json").read_text())["time_use"]["trials_timed"] == 1
    # The checkpoint was read from the stage's copy, not from the storage's own folder.
    assert (files.stage / "t1" / "train" / kept.name / "checkpoint.pt").is_file()
    assert f"Results: file://{exp}/results.parquet" in capsys.readouterr().out
    assert summary["top"][0]["trial_id"] == "t1"


def test_a_finished_sweep_on_a_uri_is_refused_before_any_work(tmp_path, capsys):
    from ray_xray.cli import run
    from ray_xray.tune.__main__ import main

    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.parquet").write_bytes(b"PAR1")
    with pytest.raises(SystemExit) as exc:
        run(main, ["--space", "cnn_lstm", "--smoke-test", "--storage", f"file://{tmp_path}",
                   "--name", "done"])  # fmt: skip
    assert exc.value.code == 2
    assert "already holds a finished sweep" in capsys.readouterr().err


def test_tool_commands_name_the_sweeps_real_paths(tmp_path):
    local = SweepFiles(str(tmp_path / "exp"))
    (tmp_path / "exp" / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)
    lines = tool_commands(local, tmp_path / "exp")
    assert lines == [
        f"TensorBoard:      tensorboard --logdir {tmp_path}/exp",
        f"optuna-dashboard: optuna-dashboard sqlite:///{tmp_path}/exp/optuna.db",
        f"W&B upload:       wandb sync {tmp_path}/exp/wandb/offline-run-*",
    ]
    assert len(tool_commands(local, None)) == 2  # W&B off: no sync line
    s3 = tool_commands(SweepFiles("s3://bucket/ray_xray/exp"))
    assert s3[0] == "copy the sweep here first: aws s3 sync s3://bucket/ray_xray/exp runs/tune/exp"
    assert s3[1].endswith("tensorboard --logdir runs/tune/exp")
    assert s3[2].endswith("optuna-dashboard sqlite:///runs/tune/exp/optuna.db")
    uri = tool_commands(SweepFiles(f"file://{tmp_path}/exp"))
    assert uri[0].endswith(f"tensorboard --logdir {tmp_path}/exp")  # file://: the path itself


class _Trial:
    trial_id, config, local_path, experiment_dir_name = "t1", {"lr": 0.1}, "/nonexistent", "e"

    def __str__(self):
        return self.trial_id


def test_wandb_logger_actors_get_the_key_as_an_argument_not_a_runtime_env(monkeypatch):
    """What Ray's callback hands to ray.remote: the runtime_env (which Ray logs) has no key;
    the actor's constructor has it; the driver keeps it in its environment; a pickled
    callback (Tune pickles callbacks) does not carry it."""
    from ray.air.integrations import wandb as ray_wandb

    from ray_xray.tune.wandb_log import KeySafeWandbCallback, _KeyedLoggingActor

    seen = {}

    class FakeActorClass:
        def __init__(self, cls):
            seen["cls"] = cls

        def remote(self, **kwargs):
            seen["kwargs"] = kwargs
            return type("Handle", (), {"run": type("M", (), {"remote": lambda self: "future"})()})()

    def fake_remote(**options):
        seen["options"] = options
        return FakeActorClass

    monkeypatch.setattr(ray_wandb.ray, "remote", fake_remote)
    monkeypatch.setattr(ray_wandb, "Queue", lambda **kw: "queue")
    monkeypatch.setattr(ray_wandb, "_force_on_current_node", lambda: {})
    monkeypatch.setenv("WANDB_API_KEY", MARKER)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cb = KeySafeWandbCallback(project="p", group="g", mode="online")
    cb.setup()
    assert MARKER.encode() not in pickle.dumps(cb)  # as Tune pickles it, after setup
    cb.log_trial_start(_Trial())
    assert seen["cls"] is _KeyedLoggingActor
    assert MARKER not in repr(seen["options"])  # Ray's runtime_env: what its agent logs
    assert seen["kwargs"]["api_key"] == MARKER and seen["kwargs"]["mode"] == "online"
    assert os.environ["WANDB_API_KEY"] == MARKER  # the driver still has it


def test_wandb_logger_actor_sets_the_key_in_its_own_process_before_wandb_init(
    monkeypatch, tmp_path
):
    from ray.air.integrations.wandb import _QueueItem

    from ray_xray.tune.wandb_log import _KeyedLoggingActor

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the actor chdirs into its logdir
    queue = type("Q", (), {"get": lambda self: (_QueueItem.END, None)})()
    actor = _KeyedLoggingActor(logdir=str(tmp_path), queue=queue, exclude=[], to_config=[],
                               api_key=MARKER, project="p")  # fmt: skip
    keys = []

    class FakeRun:
        config = type("C", (), {})()

    fake = type("W", (), {"init": lambda self, *a, **k: keys.append(os.environ.get("WANDB_API_KEY")) or FakeRun(),
                          "finish": lambda self: None})()  # fmt: skip
    actor._wandb = fake
    actor.run()
    assert keys == [MARKER]


def test_study_upload_copies_optuna_db_after_each_trial(tmp_path, tmpdir_env):
    files = SweepFiles(f"file://{tmp_path}/store/exp")
    url = f"sqlite:///{files.local_path('optuna.db')}"
    study = optuna.create_study(study_name="exp", storage=url)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    StudyUpload(files).on_trial_complete(1, [], None)
    copied = optuna.load_study(
        study_name="exp", storage=f"sqlite:///{tmp_path}/store/exp/optuna.db"
    )
    assert [t.value for t in copied.trials] == [0.5]
    assert Path(tmp_path / "store/exp/optuna.db").stat().st_size > 0
