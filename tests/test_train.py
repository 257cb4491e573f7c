import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_xray import checkpoint, inference
from ray_xray.config import TrainConfig
from ray_xray.inference import build_model
from ray_xray.train import engine


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(64, 3), torch.randint(0, 3, (64,))
    w = torch.tensor([0.5, 1.0, 2.0])
    for weight, smooth in ((None, 0.0), (w, 0.0), (w, 0.1)):
        ce = F.cross_entropy(logits, target, weight=weight, label_smoothing=smooth)
        fl = engine.FocalLoss(0.0, weight, smooth)(logits, target)
        assert torch.allclose(fl, ce, atol=1e-6)
    # gamma > 0 down-weights easy (confident, correct) examples
    easy = torch.tensor([[8.0, 0.0, 0.0]])
    assert engine.FocalLoss(2.0)(easy, torch.tensor([0])) < 1e-3 * F.cross_entropy(
        easy, torch.tensor([0])
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_epoch_runs_and_lowers_loss(precision):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(32, 1, 32, 32)
    y = (x.mean((1, 2, 3)) > 0).long()  # learnable from the pixels
    ds = TensorDataset(x, y, torch.arange(32))
    cfg = TrainConfig(
        model="cnn_lstm", img_size=32, epochs=10, lr=3e-3, precision=precision, lr_scheduler="none"
    )
    model = build_model(cfg, 2)
    opt, dev = engine.make_optimizer(cfg, model), torch.device("cpu")
    loader = DataLoader(ds, batch_size=8)
    sched, scaler, loss_fn = (
        engine.Schedule(cfg, opt, len(loader)),
        engine.make_scaler(dev, precision),
        engine.make_loss(cfg, None),
    )
    losses = [
        engine.train_one_epoch(model, loader, loss_fn, opt, sched, scaler, dev, precision, 1.0)[
            "train_loss"
        ]
        for _ in range(10)
    ]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


def test_schedules_follow_their_shape():
    cfg = TrainConfig(epochs=2, lr=1.0, lr_scheduler="cosine", warmup_epochs=0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, lrs = engine.Schedule(cfg, opt, 10), []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_batch()
    assert lrs[0] < lrs[4] and max(lrs) == pytest.approx(1.0, abs=0.05) and lrs[-1] < 0.05


LR_CURVES = json.loads(
    (Path(__file__).parent / "data" / "lr_curves.json").read_text(encoding="utf-8")
)


def _lr_run(case: dict, state: dict | None = None, from_epoch: int = 0, until: int | None = None):
    """The lr of both parameter groups after construction and after every step_batch and
    step_epoch of the recorded run (tests/data/lr_curves.json), from `from_epoch` (resuming
    from `state`, a Schedule.state_dict) to `until`; returns (lrs, state after epoch 3)."""
    d = LR_CURVES
    cfg = TrainConfig(
        epochs=d["epochs"],
        lr=d["lr"],
        lr_scheduler=case["scheduler"],
        warmup_epochs=case["warmup_epochs"],
        **d["plateau"],
    )
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=d["lr"], momentum=0.9)
    sched = engine.Schedule(cfg, opt, d["steps_per_epoch"])
    if state is not None:  # as Trainer.load_state_dict: the optimiser first (its saved lr)
        for g, lr in zip(opt.param_groups, state["optimizer_lrs"], strict=True):
            g["lr"] = lr
        sched.load_state_dict(state["schedule"])
    lrs = [] if state is not None else [[g["lr"] for g in opt.param_groups]]
    saved = None
    for e in range(from_epoch, d["epochs"] if until is None else until):
        for _ in range(d["steps_per_epoch"]):
            opt.step()
            sched.step_batch()
            lrs.append([g["lr"] for g in opt.param_groups])
        sched.step_epoch(d["metrics"][e])
        lrs.append([g["lr"] for g in opt.param_groups])
        if e == 2:
            saved = {"schedule": sched.state_dict(), "optimizer_lrs": lrs[-1]}
    return lrs, saved


@pytest.mark.parametrize(
    "case", LR_CURVES["cases"], ids=lambda c: f"{c['scheduler']}-warm{c['warmup_epochs']}"
)
def test_lr_schedules_equal_the_recorded_hand_written_curves(case):
    # The curves were recorded from the hand-written Schedule these torch schedulers replaced.
    lrs, state = _lr_run(case)
    assert np.allclose(lrs, case["lrs"], rtol=1e-9, atol=1e-12)
    # Resuming from this version's state, or from an old checkpoint's (a LambdaLR's state,
    # replayed), continues the same curve.
    cut = 1 + 3 * (LR_CURVES["steps_per_epoch"] + 1)
    assert state["schedule"]["format"] == 2
    for saved in (state, case["state_after_epoch_3"]):
        rest, _ = _lr_run(case, json.loads(json.dumps(saved)), from_epoch=3)
        assert np.allclose(rest, case["lrs"][cut:], rtol=1e-9, atol=1e-12)


def test_a_schedule_state_from_a_newer_version_is_refused_in_one_line():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = engine.Schedule(TrainConfig(lr_scheduler="cosine"), opt, 10)
    with pytest.raises(ValueError, match="schedule state format 3 is newer"):
        sched.load_state_dict({**sched.state_dict(), "format": 3})


def test_diverging_loss_stops_with_a_reason():
    from torch.utils.data import DataLoader, TensorDataset

    cfg = TrainConfig(model="cnn_lstm", img_size=32, lr_scheduler="none", precision="fp32")
    model = build_model(cfg, 2)
    x = torch.full((4, 1, 32, 32), float("nan"))
    loader = DataLoader(
        TensorDataset(x, torch.zeros(4, dtype=torch.long), torch.arange(4)), batch_size=4
    )
    opt, dev = engine.make_optimizer(cfg, model), torch.device("cpu")
    with pytest.raises(engine.TrainingDiverged, match="loss became nan"):
        engine.train_one_epoch(
            model,
            loader,
            engine.make_loss(cfg, None),
            opt,
            engine.Schedule(cfg, opt, 1),
            engine.make_scaler(dev, "fp32"),
            dev,
            "fp32",
            1.0,
        )


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    cfg = TrainConfig(model="resnet18", img_size=32)
    model = build_model(cfg, 3).eval()
    record = checkpoint.model_record(model, cfg, ["a", "b", "c"], 0.5, 0.25, {"val_acc": 0.9})
    checkpoint.atomic_save(record, tmp_path / "best_model.pt")
    loaded = checkpoint.load_checkpoint(tmp_path / "best_model.pt")
    again = inference.model_from_record(loaded)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert loaded["classes"] == ["a", "b", "c"] and checkpoint.preprocess(loaded)["mean"] == 0.5
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with bad.open("wb") as fh:
        pickle.dump({"format": checkpoint.CHECKPOINT_FORMAT, "x": _Evil()}, fh)
    with pytest.raises(ValueError, match="not a loadable ray_xray checkpoint"):
        checkpoint.load_checkpoint(bad)
    assert not (tmp_path / "PWNED").exists()
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a ray_xray checkpoint"):
        checkpoint.load_checkpoint(foreign)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--optimizer", "rmsprop"], "optimizer takes one of adamw, adam, sgd"),
        (["--hp", "no_such_hp=1"], "no_such_hp"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--data", "/no/such/dir"], "no such folder"),
    ],
)
def test_bad_training_input_is_one_clear_line(args, message, tmp_path, capsys):
    from ray_xray.cli import run
    from ray_xray.train.__main__ import main

    with pytest.raises(SystemExit) as exc:  # in-process: the same path as the console script
        run(main, [*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="precision='fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"learning_rate": 1})
    assert TrainConfig.from_dict({"model.dropout": 0.2}).model_kwargs == {"dropout": 0.2}


@pytest.fixture
def ray_session():
    # train_and_test() starts Ray inside this process: shut it down so later tests' sweeps (their
    # own Ray, in a subprocess) do not share the 2 cores with an idle second cluster. And before:
    # a Ray an earlier in-process test left running (without this project's worker hook) would
    # otherwise be joined by init_ray.
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.mark.slow_ray
def test_ddp_run_learns_and_covers_the_split(tmp_path, ray_session, monkeypatch, capsys):
    """Two DDP workers through TorchTrainer: each epoch they see every training image exactly
    once between them, the model ends above chance, and the outputs are complete. Each worker
    runs as many torch threads as it holds CPUs; the run says and records its precision."""
    import ray

    from ray_xray import trace
    from ray_xray.device import threads_for
    from ray_xray.train import train_and_test

    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "trace.jsonl"))  # before Ray starts

    cfg = TrainConfig(
        model="resnet18",
        data="synthetic:chest3:100",
        img_size=48,
        epochs=5,
        lr=1e-3,
        batch_size=16,
        num_workers=2,
        precision="fp32",
    )
    report = train_and_test(cfg, tmp_path / "run")
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert all(
        h["train_images_seen"] == 300 and h["coverage_min"] == h["coverage_max"] == 1
        for h in history
    )
    assert report["test"]["accuracy"] > 0.5  # chance is 1/3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]["recall"]) == {"normal", "pneumonia", "tuberculosis"}
    assert len(metrics["test"]["confusion"]) == 3
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_workers"] == 2 and config["precision"] == "fp32"
    assert config["precision_choice"] == {
        "precision": "fp32",
        "reason": "asked for",
        "device": "cpu",
        "speedup": None,
    }
    assert "precision: fp32 (asked for)" in capsys.readouterr().err
    built = [r for r in trace.read(tmp_path / "trace.jsonl") if r["event"] == "model_built"]
    share = threads_for(ray.cluster_resources()["CPU"] // 2)  # two workers split the cluster
    assert sorted(r["rank"] for r in built) == [0, 1]
    assert all(r["threads"] == share and r["precision"] == "fp32" for r in built), built
    record = checkpoint.load_checkpoint(tmp_path / "run" / "best_model.pt")
    assert record["epoch"] == report["best_epoch"]

    # Every Ray worker is pinned to its cluster: with a second local Ray on the machine an
    # unpinned worker's state API cannot pick one, and a sweep hangs (ray_env.pin_ray_address).
    # Twice in one process: Ray once kept the first cluster's setup hook in a shared dict.
    from ray_xray.train import init_ray

    @ray.remote
    def worker_address():
        return os.environ.get("RAY_ADDRESS")

    for _ in range(2):
        init_ray(num_cpus=1, dashboard=False)
        address = ray.get(worker_address.remote(), timeout=120)  # a broken hook hangs workers
        assert address == ray.get_runtime_context().gcs_address
        ray.shutdown()


def test_cnn_is_cpu_sized_by_default_and_the_seeds_size_is_one_setting_away():
    """`train --model cnn` / `fit("cnn", ...)` build the 3.2M-parameter cnn the `cnn` search
    space describes (width 32, 512-256 head), not the seed's 111M; model_size=seed gives the
    builder's (the seed's) sizes, and an explicit model.KEY wins either way. The sizes are
    written into the config, so the checkpoint names them."""
    from ray_xray.models import count_params, create_model, model_hparams
    from ray_xray.train.__main__ import config_from_args, parse_args

    cpu = config_from_args(parse_args(["--model", "cnn"]))
    assert cpu.model_size == "cpu"
    assert cpu.model_kwargs == {"width": 32, "head_dims": [512, 256], "pool_size": 4}
    assert 3.0e6 < count_params(create_model("cnn", 3, 1, 64, **cpu.model_kwargs)) < 3.5e6
    seed = config_from_args(parse_args(["--model", "cnn", "--set", "model_size=seed"]))
    assert seed.model_kwargs == {}  # the builder's defaults: width 64, 4096-2048 head
    assert config_from_args(parse_args(["--model", "cnn", "--model-size", "seed"])) == seed
    mine = config_from_args(parse_args(["--model", "cnn", "--set", "model.width=8"]))
    assert mine.model_kwargs["width"] == 8 and mine.model_kwargs["head_dims"] == [512, 256]
    assert config_from_args(parse_args(["--model", "resnet18"])).model_kwargs == {}
    # Rebuilding a record uses its model_kwargs alone: an old one (no sizes) gets the
    # builder's defaults, the seed's, as when it was trained.
    assert model_hparams("cnn")["head_dims"] == (4096, 2048)
    old = TrainConfig.from_dict({"model": "cnn", "img_size": 32, "model_kwargs": {"width": 8}})
    assert build_model(old, 3).classifier[1].out_features == 4096


def test_worker_log_prefixes_carry_no_colour_codes_off_a_terminal(monkeypatch):
    """Ray prints `(RayTrainWorker pid=...)` in cyan escapes unless RAY_COLOR_PREFIX=0: set
    when the console is a file or pipe, left alone on a terminal or when the user chose."""
    import io

    from ray._private.worker import print_worker_logs

    from ray_xray.ray_env import plain_worker_prefixes

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    assert not plain_worker_prefixes((Tty(), Tty())) and "RAY_COLOR_PREFIX" not in os.environ
    line = {"pid": 42, "actor_name": "RayTrainWorker", "lines": ["epoch 1"], "ip": "x"}
    log = io.StringIO()
    print_worker_logs({**line, "localhost": "x"}, log)
    assert "\x1b[" in log.getvalue()  # Ray's default: colour
    assert plain_worker_prefixes((io.StringIO(), Tty()))
    log = io.StringIO()
    print_worker_logs({**line, "localhost": "x"}, log)
    assert log.getvalue() == "(RayTrainWorker pid=42) epoch 1\n"
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")
    assert not plain_worker_prefixes((io.StringIO(), io.StringIO()))
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
