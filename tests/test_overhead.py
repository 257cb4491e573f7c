"""What makes a trial cheaper to start and to checkpoint (issue #16), checked without a sweep:
light trial-process imports, Ray Train without Ray Data's actor, data from the object store,
one copy of the best model per checkpoint written straight into storage, and the trace marks
the overhead benchmark reads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ray_xray import trace
from ray_xray.checkpoint import STATE_FILE, safe_load
from ray_xray.config import TrainConfig
from ray_xray.data.dataset import shared_key

REPO = Path(__file__).resolve().parent.parent


def test_trace_marks_only_when_the_variable_names_a_file(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    monkeypatch.delenv(trace.TRACE_ENV, raising=False)
    trace.mark("trial_start", trial="a")
    assert trace.read(path) == []
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    trace.mark("trial_start", trial="a")
    trace.mark("epoch_end", epoch=1, epoch_s=2.5)
    recs = trace.read(path)
    assert [r["event"] for r in recs] == ["trial_start", "epoch_end"]
    assert recs[0]["trial"] == "a" and recs[0]["pid"] == os.getpid() and recs[1]["epoch_s"] == 2.5
    assert recs[0]["t"] <= recs[1]["t"]


def test_the_trial_process_imports_no_training_code():
    # Every trial's Tune function process imports ray_xray.tune.trial; the training code
    # (engine, data pipeline, albumentations) and the search service (optuna) are not its job.
    code = (
        "import sys, ray_xray.tune.trial, ray_xray.train.launch\n"
        "heavy = ['optuna', 'albumentations', 'sklearn', 'ray_xray.train.engine', "
        "'ray_xray.data.dataset', 'ray_xray.tune.service', 'torchvision']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_lazy_package_names_still_resolve():
    import ray_xray.train
    import ray_xray.tune

    assert ray_xray.train.make_trainer.__module__ == "ray_xray.train.launch"
    assert (
        callable(ray_xray.train.train_loop_per_worker)
        and ray_xray.tune.SweepOptions.__name__ == "SweepOptions"
    )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ray_xray.train.nope  # noqa: B018


def test_trainer_drops_ray_datas_callback_only_without_datasets():
    import ray

    from ray_xray.train.launch import make_trainer

    cfg = TrainConfig(model="cnn", epochs=1)
    trainer = make_trainer(cfg, name="x", storage="/tmp/unused", cpus_per_worker=1)
    names = [type(cb).__name__ for cb in trainer._create_default_callbacks()]
    assert "DatasetsCallback" not in names
    assert {"BackendSetupCallback", "AcceleratorSetupCallback"} <= set(names)  # the rest stays
    # A user's Ray Dataset keeps the machinery (a stand-in: ray.data.range would start a Ray in
    # this process, which later tests' init_ray would then join without its worker hook).
    trainer.datasets = {"train": ["a Ray Dataset"]}
    assert "DatasetsCallback" in [type(cb).__name__ for cb in trainer._create_default_callbacks()]
    assert not ray.is_initialized()


def test_shared_data_is_used_only_for_the_same_data_settings(monkeypatch):
    import ray

    from ray_xray.train import worker

    cfg = TrainConfig(data="synthetic:chest3", img_size=32)
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: {"ref": ref})
    assert worker.shared_data(cfg, (shared_key(cfg), "REF")) == {"ref": "REF"}
    other = TrainConfig(data="synthetic:chest3", img_size=64)  # a space tuning img_size
    assert worker.shared_data(other, (shared_key(cfg), "REF")) is None
    assert worker.shared_data(cfg, None) is None

    def gone(ref, timeout=None):
        raise RuntimeError("owner died")  # a resumed sweep's old driver

    monkeypatch.setattr(ray, "get", gone)
    assert worker.shared_data(cfg, (shared_key(cfg), "REF")) is None


def test_shared_key_covers_every_setting_load_for_config_reads():
    base = TrainConfig(data="synthetic:chest3")
    for change in (
        {"img_size": 64},
        {"dedupe": "drop-cross-split"},
        {"limit_per_split": 8},
        {"seed": 1},
        {"skip_bad": True},
        {"allow_leakage": True},
        {"data": "synthetic:binary"},
    ):
        assert shared_key(TrainConfig(**{**base.to_dict(), **change})) != shared_key(base), change
    assert shared_key(TrainConfig(**{**base.to_dict(), "lr": 0.5})) == shared_key(base)


class _Storage:
    def __init__(self, root: Path) -> None:
        import pyarrow.fs

        self.root, self.storage_filesystem = root, pyarrow.fs.LocalFileSystem()

    @staticmethod
    def make_default_checkpoint_dir_name() -> str:
        return "checkpoint_2026-12-01_00-00-00.000000"

    def build_checkpoint_path_from_name(self, name: str) -> str:
        return str(self.root / name)


def test_checkpoint_is_written_once_into_storage_with_one_copy_of_the_best(tmp_path, monkeypatch):
    import ray.train

    from ray_xray.train import session

    model = torch.nn.Linear(256, 256)
    state = {"model": model.state_dict(), "epoch": 3}
    reports = []
    monkeypatch.setattr(
        ray.train,
        "get_context",
        lambda: type("C", (), {"get_storage": lambda s: _Storage(tmp_path)})(),
    )
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: reports.append((metrics, kw)))
    # Improved this epoch: the best record holds the very same tensors as the model state.
    session.report_with_state({"epoch": 3}, {**state, "best": {"state_dict": state["model"]}})
    ((metrics, kw),) = reports
    assert kw["checkpoint_upload_mode"] == ray.train.CheckpointUploadMode.NO_UPLOAD
    path = Path(kw["checkpoint"].path)
    assert path.parent == tmp_path and path.name == kw["checkpoint_dir_name"]
    loaded = safe_load(path / STATE_FILE)
    assert torch.equal(loaded["best"]["state_dict"]["weight"], model.weight.detach())
    shared_size = (path / STATE_FILE).stat().st_size
    # The same state with a separate copy of the best weights (what was written before).
    copy = {k: v.clone() for k, v in state["model"].items()}
    torch.save({**state, "best": {"state_dict": copy}}, tmp_path / "two_copies.pt")
    weights = 257 * 256 * 4
    assert (tmp_path / "two_copies.pt").stat().st_size - shared_size == pytest.approx(
        weights, rel=0.05
    )


def test_trial_runner_choice():
    from ray_xray.tune.trial import plan_runner

    assert plan_runner("auto", 1, 0.0) == "inline"  # one worker on the CPU: in the trial's process
    assert plan_runner("auto", 2, 0.0) == "torchtrainer"  # DDP needs Ray Train's worker group
    assert plan_runner("auto", 1, 0.5) == "torchtrainer"  # GPU trials: until checked on a GPU
    assert (
        plan_runner("inline", 1, 0.5) == "inline"
        and plan_runner("torchtrainer", 1, 0) == "torchtrainer"
    )
    with pytest.raises(ValueError, match="inline runs one worker per trial"):
        plan_runner("inline", 2, 0.0)
    with pytest.raises(
        ValueError, match="--trial-runner must be one of auto, inline, torchtrainer"
    ):
        plan_runner("ddp", 1, 0.0)


def test_inline_trials_hold_their_resources_and_are_restarted_by_tune():
    from ray_xray.tune.service import SweepOptions, _run_config, trial_resources

    plan = {"runner": "inline", "cpus_per_trial": 2.0, "gpus_per_worker": 0.5}
    assert trial_resources(plan) == {"cpu": 2.0, "gpu": 0.5}
    assert trial_resources({**plan, "gpus_per_worker": 0.0}) == {"cpu": 2.0}
    assert trial_resources({**plan, "runner": "torchtrainer"}) == {
        "cpu": 0.01
    }  # workers hold the rest
    inline = _run_config(SweepOptions(trial_runner="inline", max_failures=3), "n", "/tmp/s")
    assert inline.failure_config.max_failures == 3 and inline.checkpoint_config.num_to_keep == 1
    tt = _run_config(SweepOptions(trial_runner="torchtrainer", max_failures=3), "n", "/tmp/s")
    assert tt.failure_config.max_failures == 0  # Ray Train restarts its workers itself


def test_tune_session_reports_the_state_as_a_checkpoint_tune_copies(monkeypatch):
    from ray import tune

    from ray_xray.train.session import TuneSession

    seen = []

    def report(metrics, checkpoint=None):  # Tune copies the folder before report returns
        state = safe_load(Path(checkpoint.path) / STATE_FILE) if checkpoint else None
        seen.append((metrics, state))

    monkeypatch.setattr(tune, "report", report)
    s = TuneSession()
    s.report({"epoch": 1}, {"epoch": 1, "w": torch.ones(3)})
    s.report({"epoch": 2})
    s.report({"epoch": 2}, checkpoint=object())  # a restored trial re-reports: metrics only
    assert [m for m, _ in seen] == [{"epoch": 1}, {"epoch": 2}, {"epoch": 2}]
    assert seen[0][1]["epoch"] == 1 and torch.equal(seen[0][1]["w"], torch.ones(3))
    assert seen[1][1] is None and seen[2][1] is None
    assert (s.rank, s.world, s.device(False).type) == (0, 1, "cpu")


class _Died(Exception):
    """The trial's process died (a SIGKILL, in a real sweep)."""


class _FakeTune:
    """A TuneSession whose reports land in a list, checkpoints in folders under `root`; it
    "dies" after reporting epoch `die_after`."""

    rank, world = 0, 1

    def __init__(self, root: Path, restore: Path | None = None, die_after: int = 0) -> None:
        from ray_xray.train.session import TuneSession

        self.inner, self.root, self.restore, self.reports = TuneSession(), root, restore, []
        self.die_after = die_after
        root.mkdir(exist_ok=True)

    def __getattr__(self, name):  # device, prepare_model, prepare_loader: TuneSession's
        return getattr(self.inner, name)

    def get_checkpoint(self):
        import ray.tune

        return ray.tune.Checkpoint(str(self.restore)) if self.restore else None

    def report(self, metrics, state=None, checkpoint=None):
        from ray_xray.checkpoint import save_state

        if state is not None:
            path = self.root / f"checkpoint_{len(self.reports):06d}"
            path.mkdir()
            save_state(state, path)
        self.reports.append(metrics)
        if metrics["epoch"] == self.die_after:
            raise _Died


def test_inline_training_resumes_from_its_last_checkpoint_without_redoing_an_epoch(
    tmp_path, capsys
):
    from ray_xray.train.worker import run_training

    cfg = TrainConfig(
        model="cnn_lstm",
        data="synthetic:chest3:16",
        img_size=32,
        epochs=3,
        batch_size=16,
        checkpoint_every=1,
    )
    runtime = {"_threads": 1, "_cache": str(tmp_path / "cache")}
    first = _FakeTune(tmp_path / "first", die_after=2)
    with pytest.raises(_Died):
        run_training(cfg, runtime, first)
    assert [m["epoch"] for m in first.reports] == [1, 2]
    last = sorted((tmp_path / "first").glob("checkpoint_*"))[-1]
    # Tune restarts the trial in a new process from the checkpoint it kept.
    again = _FakeTune(tmp_path / "again", restore=last)
    run_training(cfg, runtime, again)
    assert "resumed from epoch 2" in capsys.readouterr().out
    assert [m["epoch"] for m in again.reports] == [3]  # epochs 1 and 2 not redone
    state = safe_load(sorted((tmp_path / "again").glob("checkpoint_*"))[-1] / STATE_FILE)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_a_resumed_sweep_keeps_the_runner_it_started_with(tmp_path):
    import json

    from ray_xray.tune.service import SweepOptions, resumed_runner, sweep_differences

    def folder(name: str, options: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        if options is not None:
            (d / "sweep.json").write_text(json.dumps({"options": options}))
        return d

    old = folder("old", {"data": "x"})  # from before --trial-runner: its trials used TorchTrainer
    assert resumed_runner("auto", old) == "torchtrainer"
    assert resumed_runner("auto", folder("tt", {"trial_runner": "torchtrainer"})) == "torchtrainer"
    assert resumed_runner("auto", folder("in", {"trial_runner": "inline"})) == "inline"
    with pytest.raises(ValueError, match="started with torchtrainer trials"):
        resumed_runner("inline", old)  # it would not find the trials' checkpoints
    assert resumed_runner("torchtrainer", old) == "torchtrainer"
    assert resumed_runner("auto", folder("none", None)) == "auto"  # no sweep.json to go by
    stored = {"options": {"trial_runner": "torchtrainer"}}
    new = {"options": {"trial_runner": SweepOptions(trial_runner="inline").trial_runner}}
    assert sweep_differences(stored, new) == ["trial_runner"]  # refused by check_resumable


def test_deleted_checkpoint_names_come_back_as_links_to_the_newest_and_go_at_the_end(tmp_path):
    """A driver killed between Tune deleting a trial's previous checkpoint and its next
    snapshot: the snapshot names checkpoint_000000, only checkpoint_000002 is left."""
    from ray_xray.tune import results

    trial = tmp_path / "t1"
    newest = trial / "checkpoint_000002"
    newest.mkdir(parents=True)
    (newest / STATE_FILE).write_bytes(b"epoch 3 state")
    (tmp_path / "t2").mkdir()  # a trial without checkpoints: left alone
    assert results.relink_deleted_checkpoints(tmp_path) == 2
    for name in ("checkpoint_000000", "checkpoint_000001"):
        linked = trial / name / STATE_FILE
        assert linked.read_bytes() == b"epoch 3 state"
        assert linked.stat().st_ino == (newest / STATE_FILE).stat().st_ino  # no copy: a link
    assert results.relink_deleted_checkpoints(tmp_path) == 0  # nothing missing any more
    # After the resumed sweep Tune keeps checkpoint_000003: the rest goes.
    (trial / "checkpoint_000003").mkdir()
    (trial / "train").mkdir()  # not a Tune checkpoint name: never touched
    results.prune_unkept(
        [{"checkpoint_path": str(trial / "checkpoint_000003")}, {"checkpoint_path": None}]
    )
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000003", "train"]


def test_an_inline_trial_uses_the_gpu_ray_gave_it(monkeypatch):
    import ray

    from ray_xray.train.session import TuneSession

    monkeypatch.delenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", raising=False)
    assert TuneSession().device(True) == torch.device("cuda", 0)  # the only one it sees
    monkeypatch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    assert TuneSession().device(True) == torch.device("cuda", 3)  # every GPU visible: its id
    assert TuneSession().device(False) == torch.device("cpu")
