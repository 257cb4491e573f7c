import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from ray_xray import checkpoint
from ray_xray.data import load_data
from ray_xray.data.dataset import loader as make_loader
from ray_xray.inference import build_model
from ray_xray.spaces import list_spaces, load_space
from ray_xray.train import engine

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_trains_in_smoke_mode(name):
    """Each space's smoke config, as Optuna samples it, builds and trains a step (no Ray)."""
    space = load_space(name, smoke=True)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    trial = study.ask()
    fixed = space.define_by_run(trial)
    cfg = space.resolve({**fixed, **trial.params}, {"data": "synthetic:chest3:8"})
    data = load_data(cfg.data, cfg.img_size, limit_per_split=16)
    model = build_model(cfg, len(data.classes))
    loader = make_loader(data.dataset("train", aug_strength=cfg.aug_strength), 8)
    opt, dev = engine.make_optimizer(cfg, model), torch.device("cpu")
    out = engine.train_one_epoch(
        model,
        loader,
        engine.make_loss(cfg, None),
        opt,
        engine.Schedule(cfg, opt, len(loader)),
        engine.make_scaler(dev, "fp32"),
        dev,
        "fp32",
        cfg.grad_clip,
        feed=data.feed(cfg.in_chans, dev),
    )
    assert out["train_images"] == 16 and out["train_loss"] > 0


def _tune(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "ray_xray.tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--storage", "/etc/hostname/sub"], "storage is not writable"),
        (["--data", "/no/such/data"], "no such folder"),
        (["--resume", "--name", "never-ran"], "no sweep to resume"),
        (["--objective", "val_f1"], "not a reported metric"),
    ],
)
def test_bad_sweep_input_is_one_clear_line(args, message, tmp_path, capsys):
    from ray_xray.cli import run
    from ray_xray.tune.__main__ import main

    # In-process (each case is refused before Ray starts): the console script's own path.
    extra = ["--storage", str(tmp_path)] if "--storage" not in args else []
    with pytest.raises(SystemExit) as exc:
        run(main, [*args, *extra])
    captured = capsys.readouterr()
    out = (captured.out + captured.err).strip().splitlines()
    assert exc.value.code == 2, out
    assert len(out) == 1 and message in out[0], out


@pytest.mark.slow_ray
def test_smoke_sweep_writes_complete_results(smoke_sweep):
    out, exp = smoke_sweep["output"], smoke_sweep["exp"]  # tests/conftest.py: shared sweep
    table = pd.read_parquet(exp / "results.parquet")
    assert len(table) == 4 and table["trial_id"].is_unique
    assert set(table["status"]) == {"TERMINATED"} and (table["epochs"] >= 1).all()
    assert {"config/lr", "best_val_macro_f1", "checkpoint_path", "wall_s"} <= set(table.columns)
    best = json.loads((exp / "best_trials.json").read_text())
    assert best[0]["checkpoint"].startswith(str(exp))  # on the experiment's storage
    record = checkpoint.load_checkpoint(exp / "best_model.pt")
    assert record["model"] in {"resnet18", "cnn", "vit", "cnn_lstm"}  # all.yaml's smoke models
    assert 0 <= best[0]["test"]["macro_f1"] <= 1
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{exp}/optuna.db")
    assert len(study.trials) == 4
    sweep = json.loads((exp / "sweep.json").read_text())
    assert (exp / "space.yaml").is_file() and "python -m ray_xray.tune" in sweep["command"]
    assert "rank" in out and "4 trials (0 failed)" in out
    # Ray's warning that it turned token authentication on by default is not shown (auth stays on).
    assert "Token authentication is enabled" not in out
    # Where trial time went: in the summary and in sweep.json.
    assert 0 < sweep["time_use"]["training_share"] <= 1 and sweep["time_use"]["trials_timed"] == 4
    assert "of trial CPU-seconds went to training+validation" in out
    assert all(Path(p, "checkpoint.pt").is_file() for p in table["checkpoint_path"])


@pytest.mark.slow_ray
def test_each_trial_runs_its_cpu_share_of_threads_in_the_precision_the_sweep_announced(
    smoke_sweep,
):
    from ray_xray import trace
    from ray_xray.device import threads_for

    sweep = json.loads((smoke_sweep["exp"] / "sweep.json").read_text())
    choice = sweep["precision_choice"]
    assert f"precision: {choice['precision']} ({choice['reason']})" in smoke_sweep["output"]
    built = [r for r in trace.read(smoke_sweep["trace"]) if r["event"] == "model_built"]
    assert len({r["trial"] for r in built}) == 4, built
    share = threads_for(sweep["plan"]["cpus_per_worker"])  # the default: half the cluster
    assert all(r["threads"] == share and r["loader_workers"] <= share for r in built), built
    # Every trial read the driver's verdict from the per-machine cache: no trial decided apart.
    assert {r["precision"] for r in built} == {choice["precision"]}


@pytest.mark.slow_ray
def test_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path):
    # 2 trials, one at a time: the first finishes before the kill, the second runs after it.
    args = [
        "--space",
        "cnn_lstm",
        "--smoke-test",
        "--trials",
        "2",
        "--cpus-per-trial",
        "2",
        "--storage",
        str(tmp_path),
        "--name",
        "resume",
        "--no-ensemble",
    ]
    p = _tune(*args, start_new_session=True)
    finished, deadline = None, time.time() + 400
    for line in p.stdout:  # kill the driver as soon as one trial has finished
        if " done " in line:
            finished = line.split("]")[1].split()[0]
            break
        assert time.time() < deadline, "no trial finished in time"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(2)
    exp = tmp_path / "resume"
    assert not (exp / "results.parquet").exists()
    r = _tune(*args, "--resume")
    out, _ = r.communicate(timeout=600)
    assert r.returncode == 0, out
    table = pd.read_parquet(exp / "results.parquet")
    assert len(table) == 2 and table["trial_id"].is_unique and finished in set(table["trial_id"])
    assert set(table["status"]) == {"TERMINATED"}, table[
        ["trial_id", "status", "error", "epochs"]
    ].to_string()
    # No epoch ran twice: the training history in each trial's last checkpoint lists every
    # epoch once (a trial that finished just before the kill is restored and only re-reports).
    for path in table["checkpoint_path"]:
        state = torch.load(Path(path) / "checkpoint.pt", map_location="cpu", weights_only=True)
        epochs = [h["epoch"] for h in state["history"]]
        assert epochs == list(range(1, len(epochs) + 1)), epochs
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{exp}/optuna.db")
    # Every trial is recorded once as finished: COMPLETE, or PRUNED where ASHA cut it short.
    states = [t.state.name for t in study.trials]
    assert len(states) <= 3 and sum(s in ("COMPLETE", "PRUNED") for s in states) == 2, states
    assert states.count("PRUNED") == int((table["epochs"] < table["epochs"].max()).sum()), states


def test_scheduler_searcher_and_epoch_budget_options():
    """--trial-scheduler/--searcher/--tpe-startup/--budget-epochs reach Tune (no Ray started)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import Searcher

    from ray_xray.tune.__main__ import build_parser
    from ray_xray.tune.service import BudgetedOptunaSearch, SweepOptions, _sampler, _tune_config

    args = build_parser().parse_args(
        [
            "--trial-scheduler",
            "fifo",
            "--searcher",
            "random",
            "--tpe-startup",
            "3",
            "--budget-epochs",
            "12",
        ]
    )
    assert (args.scheduler, args.searcher, args.tpe_startup, args.budget_epochs) == (
        "fifo",
        "random",
        3,
        12,
    )
    d = build_parser().parse_args([])
    assert (d.scheduler, d.searcher, d.tpe_startup, d.budget_epochs) == ("asha", "tpe", 10, 0)
    assert isinstance(_sampler(SweepOptions(searcher="random")), optuna.samplers.RandomSampler)
    tpe = _sampler(SweepOptions(tpe_startup=3))
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 3
    space = load_space("resnet18", smoke=True)
    for scheduler, cls in (("asha", ASHAScheduler), ("fifo", FIFOScheduler)):
        config = _tune_config(
            SweepOptions(scheduler=scheduler, budget_epochs=5),
            space,
            "s3://b/exp",
            {"max_concurrent": 1},
        )
        assert isinstance(config.scheduler, cls)  # ASHA is a FIFOScheduler too:
        assert isinstance(config.scheduler, ASHAScheduler) == (cls is ASHAScheduler)
        searcher = (
            config.search_alg.searcher
            if hasattr(config.search_alg, "searcher")
            else config.search_alg
        )
        assert searcher.budget_epochs == 5
    # --budget-epochs: no new trial once the trials reported that many epochs (each counted once).
    search = BudgetedOptunaSearch(
        budget_epochs=3, space=space.define_by_run, metric="val_macro_f1", mode="max"
    )
    assert isinstance(search.suggest("a"), dict)
    search.on_trial_result("a", {"training_iteration": 1, "val_macro_f1": 0.5})
    search.on_trial_result("a", {"training_iteration": 2, "val_macro_f1": 0.6})
    search.on_trial_complete(
        "a", {"training_iteration": 2, "val_macro_f1": 0.6}
    )  # Tune repeats the last
    assert search.spent_epochs() == 2 and isinstance(search.suggest("b"), dict)
    search.on_trial_complete("b", {"training_iteration": 1, "val_macro_f1": 0.4})
    assert search.suggest("c") == Searcher.FINISHED
