"""`precision auto` picks what is fast on the CPU at hand and says why (issue 32); threads and
loader processes fit the run's CPU share. No test here depends on a timing: the probe is
stubbed, or the CPU's bf16 support is switched off in a subprocess through the environment."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ray_xray import device

REPO = Path(__file__).resolve().parents[1]
x86_only = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="ONEDNN_MAX_CPU_ISA=AVX2 names an x86 instruction set",
)


@pytest.fixture
def fresh_probe_cache():
    device._read_or_probe.cache_clear()
    yield
    device._read_or_probe.cache_clear()


def _no_probe():
    raise AssertionError("the probe ran, but oneDNN's answer was conclusive")


def test_auto_is_fp32_without_native_bf16_and_says_why_without_probing(monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(device, "cached_probe", _no_probe)
    choice = device.choose_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32"
    assert choice.line() == f"precision: fp32 ({device.NO_NATIVE_BF16})"
    assert device.pick_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("speedup, expect", [(1.9, "bf16"), (1.05, "fp32"), (0.4, "fp32")])
def test_auto_with_native_bf16_follows_the_probe(monkeypatch, speedup, expect):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(device, "cached_probe", lambda: {"speedup": speedup})
    choice = device.choose_precision("auto", "cpu")
    assert (choice.precision, choice.speedup) == (expect, speedup)
    assert f"{speedup:.1f}x" in choice.reason or f"{speedup:.2f}x" in choice.reason


def test_explicit_precision_is_kept_and_bf16_on_a_non_native_cpu_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(device, "cached_probe", _no_probe)
    monkeypatch.setattr(device, "_WARNED", set())
    assert device.announce("bf16", "cpu").precision == "bf16"
    assert device.announce("bf16", "cpu").precision == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert err.count("precision: bf16 (asked for)") == 2
    assert sum(line.startswith("warning: precision bf16") for line in err) == 1
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(device, "_WARNED", set())
    assert not device.warn_slow_bf16("bf16", "cpu")  # native: nothing to warn about
    assert device.choose_precision("fp32", "cpu").line() == "precision: fp32 (asked for)"


def test_auto_on_cuda_stays_capability_based(monkeypatch):
    monkeypatch.setattr(device, "cached_probe", _no_probe)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device.choose_precision("auto", "cuda").precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert device.choose_precision("auto", "cuda").precision == "fp16"


def _in_subprocess(code: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_XRAY_CACHE": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@x86_only
def test_a_cpu_forced_to_avx2_trains_in_fp32_and_says_why(tmp_path):
    """The non-bf16 path for real: oneDNN and torch limited to AVX2, as on most CPUs people own
    (any x86 CPU can be limited so; this one may have AVX512-BF16 or AMX)."""
    code = (
        "import json, torch; from ray_xray.device import announce\n"
        "c = announce('auto', 'cpu')\n"
        "announce('bf16', 'cpu'); announce('bf16', 'cpu')\n"
        "print(json.dumps([c.to_dict(), torch.backends.cpu.get_cpu_capability()]))\n"
    )
    got = _in_subprocess(code, device.AVX2_ONLY_ENV, tmp_path)
    assert got.returncode == 0, got.stderr
    choice, capability = json.loads(got.stdout)
    assert capability == "AVX2" and choice["precision"] == "fp32"
    err = got.stderr.splitlines()
    assert f"precision: fp32 ({device.NO_NATIVE_BF16})" in err
    assert sum(line.startswith("warning: precision bf16") for line in err) == 1
    assert not (tmp_path / "precision").exists()  # decided without a probe


def test_the_probe_verdict_is_cached_per_machine_and_env(monkeypatch, tmp_path, fresh_probe_cache):
    calls = []
    for var in device.ISA_ENV:  # a baseline without them, whatever the run's own environment sets
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_XRAY_CACHE", str(tmp_path))
    monkeypatch.setattr(device, "probe", lambda: calls.append(1) or {"speedup": 1.5})
    first = device.cached_probe()
    device._read_or_probe.cache_clear()  # a new process: reads the file, does not probe
    assert device.cached_probe() == first and len(calls) == 1
    saved = list((tmp_path / "precision").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["key"] == device.machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # other kernels: another verdict
    device.cached_probe()
    assert len(calls) == 2 and len(list((tmp_path / "precision").glob("*.json"))) == 2
    saved[0].write_text("{not json")  # a damaged file is probed again, not a crash
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    device._read_or_probe.cache_clear()
    assert device.cached_probe()["speedup"] == 1.5 and len(calls) == 3


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_probe_runs_inside_a_callers_no_grad(mode):
    # evaluate's inference makes the first `auto` choice of a fresh cache under no_grad: the
    # probe's backward failed there ("element 0 of tensors does not require grad").
    with mode():
        timed = device.probe(steps=1)
    assert timed["fp32_s"] > 0 and timed["bf16_s"] > 0


def test_the_probe_leaves_rng_and_threads_as_they_were():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expect = torch.rand(3)
    torch.manual_seed(123)
    result = device.probe(steps=1)
    assert torch.equal(torch.rand(3), expect)
    assert torch.get_num_threads() == threads
    assert result["fp32_s"] > 0 and result["bf16_s"] > 0
    assert result["speedup"] == pytest.approx(result["fp32_s"] / result["bf16_s"])


@pytest.mark.parametrize(
    "cpus, threads", [(0.5, 1), (1, 1), (1.5, 1), (1.99, 2), (2, 2), (2.5, 2), (7.99, 8)]
)
def test_threads_are_the_whole_cpus_a_trial_holds(cpus, threads):
    from ray_xray.device import threads_for

    assert threads_for(cpus) == threads


def test_loader_processes_never_outnumber_the_runs_cpus(capsys):
    from ray_xray.train.loop import loader_workers

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert loader_workers(0) == 0 and loader_workers(1) == 1
        assert capsys.readouterr().out == ""
        assert loader_workers(3) == 1
        assert "loader_workers 3 -> 1" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
