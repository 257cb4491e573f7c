"""A sweep's own files on a storage URI (tune/storage.py), W&B without the key in Ray's hands
(tune/wandb_log.py): no Ray cluster here. A file:// URI goes through pyarrow's filesystem layer
exactly as s3:// does; only the filesystem object differs."""

import base64
import glob
import http.server
import json
import os
import pickle
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_results_race import F1, _seen, train_run, tune_result

from ray_xray import checkpoint
from ray_xray.tune import results
from ray_xray.tune.service import SweepOptions
from ray_xray.tune.storage import StudyUpload, SweepFiles, tool_commands

MARKER = "wandbMARKERd41d8cd98f00b204e9800998ecf8427e0"  # a fake key, found nowhere it must not be


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """TMPDIR (and so the local copies of URI sweeps) inside the test's folder."""
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
    (files.stage / "ensemble" / "latest.png").symlink_to("figures/roc.png")  # as W&B's links
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


def test_results_and_ensemble_of_a_uri_sweep_reach_the_storage(tmp_path, tmpdir_env, capsys):
    """results.finish and the ensemble step on a file:// storage: the trial's checkpoint and Tune's
    result.json are read through the filesystem layer (copied into the local stage), every
    result file and the ensemble with its report are copied to the storage, and the paths in
    the results and the summary are URIs a cluster user can follow."""
    from ray_xray.pipeline import _ensemble

    store = tmp_path / "bucket"
    exp = store / "sweep1"
    (kept,) = train_run(exp / "t1" / "train", [(1, 0.40)], seed=2)
    result = {"epoch": 1, F1: 0.40, "val_loss": 0.6, "training_iteration": 1, "trial_id": "t1"}
    (exp / "t1" / "result.json").write_text(json.dumps(result) + "\n")  # Tune's, per epoch
    files = SweepFiles(f"file://{exp}")
    files.local_path("sweep.json").write_text(json.dumps({"command": "python -m ray_xray.tune"}))
    files.local_path("optuna.db").write_bytes(b"SQLite format 3\x00")
    grid = [tune_result(exp, "t1", [_seen(1, 0.40, kept, wall=9.0)])]
    opts = SweepOptions(objective=[F1], top_k=2)
    summary = results.finish(
        grid, files.uri, None, opts, 30.0, False, {"cpus_per_trial": 1.0}, files
    )
    for name in (
        "results.parquet",
        "results.csv",
        "best_trials.json",
        "best_model.pt",
        "sweep.json",
        "optuna.db",
    ):
        assert (exp / name).is_file(), name
    table = pd.read_parquet(exp / "results.parquet")
    assert table.loc[0, "checkpoint_path"] == f"file://{kept}"
    assert table.loc[0, "trial_dir"] == f"file://{exp}/t1"
    best = json.loads((exp / "best_trials.json").read_text())
    assert best[0]["checkpoint"] == f"file://{kept}" and 0 <= best[0]["test"]["macro_f1"] <= 1
    assert checkpoint.load_checkpoint(exp / "best_model.pt")["epoch"] == 1
    assert json.loads((exp / "sweep.json").read_text())["time_use"]["trials_timed"] == 1
    # The checkpoint was read from the stage's copy, not from the storage's own folder.
    assert (files.stage / "t1" / "train" / kept.name / "checkpoint.pt").is_file()
    assert f"Results: file://{exp}/results.parquet" in capsys.readouterr().out
    assert summary["top"][0]["trial_id"] == "t1"

    ens = _ensemble(files.uri, opts, files, summary["rows"])
    for name in ("ensemble.pt", "metrics.json", "comparison.csv", "report.html"):
        assert (exp / "ensemble" / name).is_file(), name
    assert ens["report"] == f"file://{exp}/ensemble/report.html"  # not the local copy
    assert ens["ensemble"] == f"file://{exp}/ensemble/ensemble.pt"
    report = (exp / "ensemble" / "report.html").read_text()
    assert "No per-epoch logs" not in report  # the trial's result.json came from the storage
    assert {p.name for p in (exp / "ensemble" / "figures").glob("*.png")} >= {"confusion.png"}


def test_a_finished_sweep_on_a_uri_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from ray_xray.cli import run
    from ray_xray.tune.__main__ import main

    monkeypatch.setattr("ray_xray.tune.service.init_ray", _no_ray)

    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.parquet").write_bytes(b"PAR1")
    with pytest.raises(SystemExit) as exc:
        run(
            main,
            [
                "--space",
                "cnn_lstm",
                "--smoke-test",
                "--storage",
                f"file://{tmp_path}",
                "--name",
                "done",
            ],
        )
    assert exc.value.code == 2
    assert "already holds a finished sweep" in capsys.readouterr().err


def test_resume_of_a_finished_sweep_says_what_it_will_do(tmp_path, capsys, monkeypatch):
    """--resume of a finished sweep re-reads its results and rebuilds its ensemble: it says
    so first, rather than looking like a sweep run again (a new user's surprise)."""
    from ray_xray.tune import service
    from ray_xray.tune.__main__ import main

    monkeypatch.setattr(service, "init_ray", _no_ray)
    monkeypatch.setattr(service, "check_resumable", lambda *a: None)  # its own tests: above
    exp = tmp_path / "done"
    exp.mkdir()
    (exp / "results.parquet").write_bytes(b"PAR1")
    (exp / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    args = ["--space", "cnn_lstm", "--smoke-test", "--storage", str(tmp_path), "--name", "done"]
    with pytest.raises(AssertionError, match="Ray was started"):
        main([*args, "--resume"])
    assert "holds a finished sweep: no trial left to run; re-reading its results" in (
        capsys.readouterr().err
    )


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started: the input should have been refused before")


def test_an_interrupted_uri_sweep_of_other_data_is_refused_from_its_stored_sweep_json(
    tmp_path, tmpdir_env, capsys, monkeypatch
):
    """A resume reads sweep.json from the storage (pulled into the local copy) before any
    work: another dataset is refused in one line, as for a local sweep."""
    from ray_xray.cli import run
    from ray_xray.tune.__main__ import main

    monkeypatch.setattr("ray_xray.tune.service.init_ray", _no_ray)
    exp = tmp_path / "store" / "old"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    (exp / "sweep.json").write_text(json.dumps({"options": {"data": "/elsewhere/chest_xray"}}))
    with pytest.raises(SystemExit) as exc:
        run(
            main,
            [
                "--space",
                "cnn_lstm",
                "--smoke-test",
                "--storage",
                f"file://{tmp_path}/store",
                "--name",
                "old",
            ],
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"file://{exp} holds an interrupted sweep of /elsewhere/chest_xray" in err
    assert "differs in data" in err


def test_tool_commands_name_the_sweeps_real_paths(tmp_path, monkeypatch):
    monkeypatch.setattr("ray_xray.links.installed", lambda tool: True)
    local = SweepFiles(str(tmp_path / "exp"))
    (tmp_path / "exp" / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)
    (tmp_path / "exp" / "ensemble").mkdir()
    (tmp_path / "exp" / "ensemble" / "report.html").write_text("<html></html>")
    lines = tool_commands(local, tmp_path / "exp")
    assert lines == [
        f"report:           file://{tmp_path}/exp/ensemble/report.html",
        f"TensorBoard:      tensorboard --logdir {tmp_path}/exp",
        f"optuna-dashboard: optuna-dashboard sqlite:///{tmp_path}/exp/optuna.db",
        f"W&B upload:       wandb sync {tmp_path}/exp/wandb/offline-run-*",
    ]
    assert len(tool_commands(local, None)) == 3  # W&B off: no sync line
    s3 = tool_commands(SweepFiles("s3://bucket/ray_xray/exp"))
    assert s3[0] == "copy the sweep here first: aws s3 sync s3://bucket/ray_xray/exp runs/tune/exp"
    assert s3[1].endswith("tensorboard --logdir runs/tune/exp")
    assert s3[2].endswith("optuna-dashboard sqlite:///runs/tune/exp/optuna.db")
    uri = tool_commands(SweepFiles(f"file://{tmp_path}/exp"))
    assert uri[0].endswith(f"tensorboard --logdir {tmp_path}/exp")  # file://: the path itself


def test_tool_commands_say_how_to_install_a_missing_dashboard(tmp_path, monkeypatch):
    monkeypatch.setattr("ray_xray.links.installed", lambda tool: tool == "tensorboard")
    lines = tool_commands(SweepFiles(str(tmp_path / "exp")))  # no ensemble: no report line
    assert lines[0] == f"TensorBoard:      tensorboard --logdir {tmp_path}/exp"
    assert lines[1] == (
        f"optuna-dashboard: optuna-dashboard sqlite:///{tmp_path}/exp/optuna.db"
        "   (not installed: pip install 'ray_xray[dashboards]')"
    )


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
    cb._trial_logging_actors.clear()  # its __del__ would signal the fake queue


def test_wandb_logger_actor_sets_the_key_in_its_own_process_before_wandb_init(
    monkeypatch, tmp_path
):
    from ray.air.integrations.wandb import _QueueItem

    from ray_xray.tune.wandb_log import _KeyedLoggingActor

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the actor chdirs into its logdir
    queue = type("Q", (), {"get": lambda self: (_QueueItem.END, None)})()
    actor = _KeyedLoggingActor(
        logdir=str(tmp_path), queue=queue, exclude=[], to_config=[], api_key=MARKER, project="p"
    )
    keys = []

    class FakeRun:
        config = type("C", (), {})()

    fake = type(
        "W",
        (),
        {
            "init": lambda self, *a, **k: keys.append(os.environ.get("WANDB_API_KEY")) or FakeRun(),
            "finish": lambda self: None,
        },
    )()
    actor._wandb = fake
    actor.run()
    assert keys == [MARKER]


def test_a_restored_offline_wandb_callback_needs_no_key(monkeypatch, tmp_path):
    """A resumed sweep gets its callbacks back from Tune's pickle, without the sweep setting
    WANDB_MODE: Ray's key lookup refused ("No WandB API key found") offline runs then."""
    from ray_xray.tune.wandb_log import KeySafeWandbCallback

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    cb = pickle.loads(pickle.dumps(KeySafeWandbCallback(project="p", mode="offline")))
    cb.setup()
    assert os.environ["WANDB_MODE"] == "offline" and cb._key is None


def test_sweep_end_tells_every_wandb_logger_to_finish_and_waits_a_bounded_time(monkeypatch):
    """Ray's callback waits at the sweep's end for logger actors it never told to stop: one
    whose trial got no `log_trial_end` hung a CI sweep. Ours sends END first; offline it waits
    at most OFFLINE_FINISH_TIMEOUT_S, not Ray's 30 minutes."""
    from ray.air.integrations import wandb as ray_wandb
    from ray.air.integrations.wandb import _QueueItem

    from ray_xray.tune.wandb_log import OFFLINE_FINISH_TIMEOUT_S, KeySafeWandbCallback

    puts, waits, killed = [], [], []
    queue = type("Q", (), {"put": lambda self, item: puts.append(item)})()

    def fake_wait(futures, num_returns, timeout):
        waits.append(timeout)
        assert puts == [(_QueueItem.END, None)], "waited before telling the actor to finish"
        return futures, []

    monkeypatch.setattr(ray_wandb.ray, "wait", fake_wait)
    monkeypatch.setattr(ray_wandb.ray, "kill", killed.append)
    cb = KeySafeWandbCallback(project="p", mode="offline")
    trial = _Trial()
    cb._trial_queues[trial] = queue
    cb._trial_logging_actors[trial] = "actor"
    cb._trial_logging_futures[trial] = "future"
    cb._logging_future_to_trial["future"] = trial
    cb.on_experiment_end([trial])
    assert waits == [OFFLINE_FINISH_TIMEOUT_S] and killed == ["actor"]
    assert not cb._trial_logging_actors


def test_a_trial_whose_wandb_logger_already_ended_ends_without_error(monkeypatch):
    """A logger actor whose run ended early (W&B refused the key) is cleaned up at another
    trial's end; Ray's callback then raised KeyError at this trial's end, ending the sweep."""
    from ray.air.integrations import wandb as ray_wandb

    from ray_xray.tune.wandb_log import KeySafeWandbCallback

    monkeypatch.setattr(ray_wandb.ray, "wait", lambda futures, **kw: (futures, []))
    cb = KeySafeWandbCallback(project="p", mode="offline")
    cb.log_trial_end(_Trial(), failed=True)  # no logger left for it: nothing to stop
    assert not cb._trial_logging_actors


def test_tune_puts_no_aws_key_in_a_trial_runtime_env(monkeypatch):
    """Ray Tune copies AWS keys from the driver's environment into every trial actor's
    runtime_env, which Ray's agent logs in clear; during a sweep's fit it copies none (and
    still copies the rest), and Ray's list is back afterwards."""
    from ray.tune.execution import class_cache

    from ray_xray.ray_env import CLOUD_KEYS, cloud_keys_kept_out_of_ray_logs

    for k in CLOUD_KEYS:
        monkeypatch.setenv(k, MARKER)
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    before = set(class_cache.ENV_VARS_TO_PROPAGATE)

    def runtime_env_of_a_trial(cls) -> dict:
        return class_cache._ActorClassCache().get(cls)._default_options["runtime_env"]

    assert MARKER in repr(runtime_env_of_a_trial(type("T0", (), {})))  # Ray's own behaviour
    with cloud_keys_kept_out_of_ray_logs():
        env = runtime_env_of_a_trial(type("T1", (), {}))
    assert MARKER not in repr(env) and env["env_vars"]["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    assert class_cache.ENV_VARS_TO_PROPAGATE == before


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


# ---------------------------------------------------------------- with Ray: real sweeps

REPO = Path(__file__).resolve().parent.parent
WANDB = str(Path(sys.executable).parent / "wandb")


def _readme_command(tool: str) -> str:
    """The README's command for `tool`, as written (inside backticks)."""
    readme = (REPO / "README.md").read_text()
    found = re.findall(rf"`({re.escape(tool)} [^`]+)`", readme)
    assert found, f"the README names no `{tool} ...` command"
    assert len(set(found)) == 1, f"the README names {tool} in different ways: {found}"
    return found[0]


def _tfevents_tags(path: Path) -> set[str]:
    """Scalar tags in a TensorBoard event file (TFRecord of Event protos, read with
    tensorboardX's proto; TensorBoard itself is not installed here)."""
    from tensorboardX.proto.event_pb2 import Event

    data, tags, i = path.read_bytes(), set(), 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        event = Event()
        event.ParseFromString(data[i + 12 : i + 12 + length])
        tags |= {v.tag for v in event.summary.value}
        i += 12 + length + 4
    return tags


@pytest.mark.slow_ray
def test_readme_commands_open_the_files_a_sweep_wrote(smoke_sweep):
    """The README's `wandb sync`, `tensorboard --logdir` and `optuna-dashboard` commands, with
    STORAGE/NAME replaced by the shared smoke sweep's folder, are what the sweep's summary
    prints and name files each tool can use. wandb is installed: its `sync --dry-run` runs on
    the README's glob (no upload, no network). TensorBoard and optuna-dashboard are not
    installed (the `dashboards` extra): their paths are checked the way they read them (event
    files under --logdir with the sweep's metrics; the SQLite URL opened as Optuna's storage)."""
    exp, out = smoke_sweep["exp"], smoke_sweep["output"]
    commands = {
        tool: _readme_command(tool).replace("STORAGE/NAME", str(exp))
        for tool in ("wandb sync", "tensorboard --logdir", "optuna-dashboard")
    }
    for cmd in commands.values():  # the summary prints the same command, with the real paths
        assert cmd in out, f"{cmd!r} not in the sweep's summary:\n{out[-2000:]}"
    assert out.count("tensorboard --logdir") == 1  # no second, other folder (Ray's banner)

    # W&B: one offline run per trial, each with its .wandb file, at the README's path only.
    runs = sorted(glob.glob(commands["wandb sync"].split()[-1]))
    assert len(runs) == 4 and all(glob.glob(f"{r}/*.wandb") for r in runs), runs
    assert not list(exp.glob("*/wandb")), "W&B runs also landed in the trial folders"
    dry = subprocess.run(
        ["bash", "-c", commands["wandb sync"].replace("wandb sync", f"{WANDB} sync --dry-run")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"},
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Would sync 4 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr

    # TensorBoard: event files under --logdir (it searches sub-folders), one per trial, with
    # the metrics the sweep ranks by.
    logdir = Path(commands["tensorboard --logdir"].split()[-1])
    events = sorted(logdir.rglob("events.out.tfevents.*"))
    assert len(events) == 4, events
    assert all("ray/tune/val_macro_f1" in _tfevents_tags(e) for e in events)

    # optuna-dashboard opens the URL as an Optuna storage.
    url = commands["optuna-dashboard"].split()[-1]
    assert url == f"sqlite:///{exp}/optuna.db"
    studies = optuna.storages.RDBStorage(url).get_all_studies()
    assert [s.study_name for s in studies] == ["t"]
    assert len(optuna.load_study(study_name="t", storage=url).trials) == 4


class FakeWandbServer:
    """A W&B server that refuses everything (401) and records each request's Authorization
    header: an online W&B run fails at once, after showing which key it was given."""

    def __init__(self):
        seen = self.auth = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(self.headers.get("Authorization") or "")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errors": [{"message": "unauthorized"}]}')

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.slow_ray
def test_failing_trials_on_a_uri_are_reported_and_no_secret_leaks(tmp_path):
    """One sweep for a cluster user's worries (file:// takes the same pyarrow path as s3://):
    - lr 1e30 diverges (NaN), lr 0.04 raises an injected OOM, lr 0.001 trains: the sweep
      finishes, the failures carry their reason, Optuna records them as failed;
    - every result file and the study reach the storage and the local copy is gone (the
      ensemble step on a URI: test_results_and_ensemble_of_a_uri_sweep_reach_the_storage);
    - online W&B hands its (fake) key to the W&B server but to no file: not Ray's session logs
      (runtime_env_agent.log held it before), the sweep folder or W&B's caches; nor does any
      other secret of the environment (cloud keys) land in a file."""
    from test_faults import FAKE_SECRETS, FAULTY_SPACE

    marker = "rxMARK" + secrets.token_hex(17)  # 40 characters, like a W&B key
    space = tmp_path / "faulty.yaml"
    space.write_text(FAULTY_SPACE)
    server = FakeWandbServer()
    # Ray's session folder and the sweep's local copy go under TMPDIR: a short path (Ray's
    # socket paths must stay under 108 bytes), removed at the end.
    short = Path(tempfile.mkdtemp(prefix="rx", dir="/tmp"))
    try:
        env = {
            **os.environ,
            **FAKE_SECRETS,
            "TMPDIR": str(short),
            "WANDB_API_KEY": marker,
            "WANDB_BASE_URL": server.url,
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "RAY_XRAY_FAULT": "raise_if_lr:0.04",
        }
        env.pop("WANDB_MODE", None)
        env.pop("WANDB_DIR", None)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "ray_xray.tune",
                "--space",
                str(space),
                "--trials",
                "3",
                "--storage",
                f"file://{tmp_path}/bucket",
                "--name",
                "c",
                "--wandb",
                "online",
                "--cpus-per-trial",
                "0.5",
                "--seed",
                "1",
                "--no-ensemble",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=600,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        exp = tmp_path / "bucket" / "c"
        for name in (
            "space.yaml",
            "sweep.json",
            "optuna.db",
            "results.parquet",
            "results.csv",
            "best_trials.json",
            "best_model.pt",
        ):
            assert (exp / name).is_file(), f"{name} not on the storage"

        # The failures: each start point once, the sweep went on, each failure says why.
        table = pd.read_parquet(exp / "results.parquet")
        lr = table["config/lr"]
        ok, nan, oom = table[lr == 0.001], table[lr > 1e20], table[lr == 0.04]
        assert len(table) == 3 and len(ok) == len(nan) == len(oom) == 1
        assert (ok["status"] == "TERMINATED").all()
        assert (nan["status"] == "ERROR").all() and nan["error"].str.contains("loss became").all()
        assert (oom["status"] == "ERROR").all()
        assert oom["error"].str.contains("out of memory").all()
        study = optuna.load_study(study_name="c", storage=f"sqlite:///{exp}/optuna.db")
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "FAIL"]

        # The files: on the storage, named by URI; the local stage is gone.
        good = ok.iloc[0]["checkpoint_path"]
        assert table["checkpoint_path"].dropna().str.startswith(f"file://{exp}/").all()
        assert Path(good[len("file://") :], "checkpoint.pt").is_file()
        best = json.loads((exp / "best_trials.json").read_text())
        assert best[0]["checkpoint"] == good
        assert checkpoint.load_checkpoint(exp / "best_model.pt")["model"] == "cnn_lstm"
        assert "time_use" in json.loads((exp / "sweep.json").read_text())  # the final copy
        assert not list((short / f"ray_xray-{os.getuid()}" / "stage").iterdir())  # cleaned up
        assert f"tensorboard --logdir {exp}" in out and f"sqlite:///{exp}/optuna.db" in out
        # Each failure is one console line with its reason, not Tune's 60-line traceback.
        assert "ERROR  RuntimeError: injected fault: CUDA out of memory" in out
        assert "Trial task failed for trial" not in out

        # The key went where it belongs, through the logger actors (online W&B) ...
        basic = "Basic " + base64.b64encode(f"api:{marker}".encode()).decode()
        assert basic in server.auth, f"the W&B logger never used the key: {server.auth}"
        # ... and nowhere else; nor did any other secret.
        sessions = list((short / "ray").glob("session_2*"))
        assert sessions and list(sessions[0].rglob("runtime_env_agent.log")), "no Ray logs?"
        forms = [marker.encode(), basic.split()[1].encode()]
        forms += [v.encode() for k, v in FAKE_SECRETS.items() if k != "WANDB_API_KEY"]
        scanned, leaks = 0, []
        for root in (short, tmp_path):
            for f in root.rglob("*"):
                if f.is_file() and not f.is_symlink() and not f.is_socket():
                    data, scanned = f.read_bytes(), scanned + 1
                    leaks += [str(f) for form in forms if form in data]
        assert not leaks, f"a secret was written to: {leaks}"
        assert scanned > 50 and marker not in out
    finally:
        server.close()
        shutil.rmtree(short, ignore_errors=True)
