"""Fault injection: the run or sweep survives, nothing is lost, nothing leaks."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ray_xray.tune.service import SweepOptions, make_callbacks

REPO = Path(__file__).resolve().parent.parent
FAKE_SECRETS = {
    "WANDB_API_KEY": "wandbFAKEKEY0123456789abcdef0123456789abcd",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE1234",
    "AWS_SECRET_ACCESS_KEY": "fakeSecretAccessKey/abcdefghijklmnopqrstuvw",
}


def _run(module, *args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.slow_ray
def test_worker_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = _run(
        "ray_xray.train",
        "--model",
        "cnn_lstm",
        "--data",
        "synthetic:chest3:20",
        "--img-size",
        "32",
        "--epochs",
        "3",
        "--no-report",
        "--out",
        str(out),
        env={"RAY_XRAY_FAULT": "kill:2"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from epoch 1" in r.stdout + r.stderr
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epoch 1 not redone, none lost


@pytest.mark.slow
@pytest.mark.slow_ray
def test_sweep_trial_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    """A torchtrainer trial's training process SIGKILLed halfway through epoch 2: Ray Train
    restarts it from epoch 1's checkpoint; no epoch is lost or trained twice. (An inline
    trial's kill and restart, in each --cv stage: test_cv.py's serial --cv test.)"""
    space = tmp_path / "one.yaml"
    space.write_text(
        "fixed: {model: cnn_lstm, epochs: 3, img_size: 32, limit_per_split: 48, batch_size: 16,\n"
        "        precision: fp32, checkpoint_every: 1, model.channels: [8, 16], model.hidden_size: 16}\n"
        "params:\n  lr: {type: categorical, choices: [0.001]}\n"
    )
    r = _run(
        "ray_xray.tune",
        "--space",
        str(space),
        "--trials",
        "1",
        "--storage",
        str(tmp_path),
        "--name",
        "kill",
        "--trial-scheduler",
        "fifo",
        "--no-ensemble",
        "--trial-runner",
        "torchtrainer",
        env={"RAY_XRAY_FAULT": "kill:2", "RAY_XRAY_FAULT_LOG": str(tmp_path / "kills")},
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    kills = (tmp_path / "kills").read_text().splitlines()
    assert len(kills) == 1 and kills[0].endswith("in epoch 2"), kills  # killed once, not again
    exp = tmp_path / "kill"
    table = pd.read_parquet(exp / "results.parquet")
    assert list(table["status"]) == ["TERMINATED"] and list(table["epochs"]) == [3]
    trial = table["trial_id"][0]
    # What Tune received, in order: epoch 1 once (before the kill), then 2 and 3 after the restart.
    reported = [
        json.loads(ln)["epoch"] for ln in (exp / trial / "result.json").read_text().splitlines()
    ]
    assert reported == [1, 2, 3], reported
    state = torch.load(Path(table["checkpoint_path"][0]) / "checkpoint.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_wandb_online_without_a_key_falls_back_to_offline(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    callbacks = make_callbacks(SweepOptions(wandb="online"), "exp")
    assert "no API key found" in capsys.readouterr().err
    assert callbacks[-1].kwargs["mode"] == "offline"


def test_wandb_online_but_unreachable_falls_back_to_offline(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_SECRETS["WANDB_API_KEY"])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    callbacks = make_callbacks(SweepOptions(wandb="online"), "exp")
    err = capsys.readouterr().err
    assert "127.0.0.1:9 is unreachable" in err and "logging offline instead" in err
    assert FAKE_SECRETS["WANDB_API_KEY"] not in err
    assert callbacks[-1].kwargs["mode"] == "offline"
    assert "WANDB_API_KEY" not in os.environ  # else Ray logs it in the actors' runtime_env


def test_storage_on_a_full_disk_is_refused_before_any_work(tmp_path):
    """A real full filesystem (1 MiB tmpfs filled up): one line, exit 2, nothing started."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the ENOSPC path is untested")
    try:
        with open(mnt / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (2 << 20))  # fills the 1 MiB and raises ENOSPC
        r = _run(
            "ray_xray.tune",
            "--space",
            "cnn_lstm",
            "--smoke-test",
            "--storage",
            str(mnt / "exp"),
            timeout=120,
        )
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "storage is not writable (No space left on device)" in lines[0]
        assert not list((mnt / "exp").rglob("*.parquet"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


FAULTY_SPACE = """
description: half the trials fail on purpose (reliability test)
fixed: {model: cnn_lstm, epochs: 2, img_size: 32, limit_per_split: 48, batch_size: 16,
        precision: fp32, model.channels: [8, 16], model.hidden_size: 16}
params:
  lr: {type: categorical, choices: [0.001, 0.04, 1.0e+30]}
start: [{lr: 0.001}, {lr: 0.04}, {lr: 1.0e+30}]  # each fault once, whatever the sampler draws
"""


# The failing-trials sweep (NaN, OOM, a good trial; no secret in any file) runs on a storage
# URI with online W&B: test_storage.test_failing_trials_on_a_uri_are_reported_and_no_secret_leaks.
