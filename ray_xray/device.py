"""The device, precision and CPU threads a run uses, and why: the one place that chooses them.

`precision auto` on a CPU is bf16 autocast only where this CPU runs bf16 natively (oneDNN's
AVX512-BF16 or AMX kernels) and a short probe finds it faster than fp32; fp32 otherwise. Without
native bf16 (AVX2-only CPUs: AMD before Zen 4, Intel client CPUs, many cloud instance types)
oneDNN emulates it, and resnet18 trained 33.8x slower in bf16 than in fp32 on an AVX2 EPYC
(issue 32; benchmarks/RESULTS.md section 2 measures both paths side by side). On CUDA `auto`
stays capability-based: bf16 where the GPU has it, else fp16 with a gradient scaler.

The probe's verdict is cached per machine in the prepared-data cache folder
(`<cache>/precision/<key>.json`), keyed by torch's version, the CPU model and flags, torch's
capability string and the environment variables that change oneDNN's kernels, so every process
of a run (the driver, each Ray worker) on one machine reads the same verdict, and a new torch or
CPU probes again. `threads_for` sizes torch's threads to a trial's CPU share. Autocast itself
and running saved models are `ray_xray.inference`'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Environment variables that change which CPU kernels torch and oneDNN run (and so the verdict):
# ATEN_CPU_CAPABILITY=avx2 with ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 CPU behave as AVX2-only.
ISA_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
)
# What makes any x86 CPU run torch and oneDNN as an AVX2-only one does (no native bf16): for
# tests and the precision benchmark's second path; honoured at process start, so a subprocess.
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The /proc/cpuinfo flags that decide bf16 speed on x86.
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# bf16 must beat fp32 by this much in the probe to be chosen: it also costs accuracy, so a tie
# (or the probe's noise on a busy machine) keeps fp32.
MIN_SPEEDUP = 1.1
# Emulated bf16 vs fp32, a resnet18 training step at 64 px, batch 8: 34x slower on a real AVX2
# EPYC with 1 thread (issue 32); on an AVX-512 EPYC forced to AVX2 (AVX2_ONLY_ENV), 15x with 1
# thread and 5x with 2 (a shared machine, 2026-12-07; `python -m benchmarks --only precision`).
NO_NATIVE_BF16 = "this CPU has no native bf16; bf16 would be emulated, 5-34x slower"
PROBE_VERSION = 1  # bump when the probe's network or steps change: old verdicts are then ignored


@dataclass(frozen=True)
class PrecisionChoice:
    """What `choose_precision` decided: `precision` (fp32, bf16 or fp16), `reason` (one
    phrase), and for a probed CPU the probe's `speedup` (bf16 images/s over fp32's)."""

    precision: str
    reason: str
    device: str = "cpu"
    speedup: float | None = None

    def line(self) -> str:
        """The line training commands print: ``precision: fp32 (why)``."""
        return f"precision: {self.precision} ({self.reason})"

    def to_dict(self) -> dict:
        """The choice as a JSON-able dict (config.json's `precision_choice`)."""
        return asdict(self)


def pick_device(name: str) -> torch.device:
    """The torch device for a `device` setting: ``auto`` is cuda where this process sees a GPU,
    else cpu; ``cpu``/``cuda``/``cuda:N`` as given. Raises ValueError for ``cuda`` with no GPU
    visible (`launch.wants_gpu` decides, in the driver, whether workers get one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda asked for, but no CUDA GPU is visible")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_precision(precision: str, device: torch.device | str) -> str:
    """The precision to run in: `precision` unless it is ``auto``, else `choose_precision`'s
    (fp32 or bf16 on CPU, bf16 or fp16 on CUDA). Prints nothing."""
    return precision if precision != "auto" else choose_precision(precision, device).precision


def choose_precision(precision: str, device: torch.device | str) -> PrecisionChoice:
    """The precision for a `precision` setting on `device`, with the reason.

    ``auto`` on CUDA: bf16 where `torch.cuda.is_bf16_supported()`, else fp16. ``auto`` on CPU:
    fp32 when oneDNN reports no native bf16 (conclusive, nothing is timed), else the cached
    probe's verdict (bf16 when it ran >= MIN_SPEEDUP times fp32's speed). A precision given
    explicitly is kept (`warn_slow_bf16` says when it will be slow).
    """
    dev = torch.device(device).type
    if precision != "auto":
        return PrecisionChoice(precision, "asked for", dev)
    if dev == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "this GPU runs bf16 natively", dev)
        return PrecisionChoice("fp16", "this GPU has no bf16: fp16 with a gradient scaler", dev)
    if dev != "cpu":
        return PrecisionChoice("fp32", f"autocast is not tuned for {dev}", dev)
    if not cpu_bf16_native():
        return PrecisionChoice("fp32", NO_NATIVE_BF16, dev)
    speedup = cached_probe()["speedup"]
    if speedup >= MIN_SPEEDUP:
        why = f"this CPU runs bf16 natively; a probe measured bf16 {speedup:.1f}x fp32's speed"
        return PrecisionChoice("bf16", why, dev, speedup)
    why = f"bf16 is native here but a probe measured it at {speedup:.2f}x fp32's speed"
    return PrecisionChoice("fp32", why, dev, speedup)


_WARNED: set[str] = set()


def warn_slow_bf16(precision: str, device: torch.device | str) -> bool:
    """Print one ``warning:`` line to stderr (once per process) when bf16 was asked for on a CPU
    without native bf16: it works, but emulated. Returns whether it warned."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_bf16_native():
        return False
    if "bf16" not in _WARNED:
        _WARNED.add("bf16")
        print(
            "warning: precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): it "
            "works, but emulated, 5-34x slower than fp32; precision auto picks fp32 here",
            file=sys.stderr,
            flush=True,
        )
        return True
    return False


def announce(precision: str, device: torch.device | str) -> PrecisionChoice:
    """What a training command calls once: choose, print ``precision: X (why)`` to stderr
    (plus `warn_slow_bf16`'s warning), and return the choice for the run's records."""
    choice = choose_precision(precision, device)
    print(choice.line(), file=sys.stderr, flush=True)
    warn_slow_bf16(choice.precision, device)
    return choice


def threads_for(cpus: float) -> int:
    """torch's intra-op threads for a process holding `cpus` CPUs: the whole CPUs it holds, at
    least 1 (Ray's own rule for OMP_NUM_THREADS, `ray._private.utils`). More threads than CPUs
    oversubscribe (issue 32: that doubles step times on 2 cores); round() gave a 1.5-CPU trial
    2 threads. A torchtrainer trial's workers hold 0.01 CPU less than whole (its function keeps
    a token CPU, tune/trial.py): that still counts as whole."""
    return max(1, int(cpus + 0.02))


# ---------------------------------------------------------------- the CPU and its probe


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16, AMX, or Arm's bf16 extensions):
    torch's own check, which honours ONEDNN_MAX_CPU_ISA. False where torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model": the CPU's model name, "flags": the BF16_FLAGS it has}, from /proc/cpuinfo
    (Linux); elsewhere `platform.processor()` and no flags."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"model": model, "flags": flags}
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    have = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return {"model": names[0] if names else model, "flags": [f for f in BF16_FLAGS if f in have]}


def machine_key() -> dict:
    """What the probe's verdict depends on: torch's version, the CPU, torch's capability string
    (``AVX512``, ``AVX2`` ...), oneDNN's bf16 check and the ISA_ENV variables that are set."""
    return {
        "probe": PROBE_VERSION,
        "torch": torch.__version__,
        "cpu": cpu_info()["model"],
        "flags": cpu_info()["flags"],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_bf16_native(),
        "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
    }


def probe(steps: int = 5) -> dict:
    """Time training steps of a small conv net in fp32 and in bf16 autocast, interleaved.

    Forward + backward of two 3x3 convolutions (32 and 64 channels) on a batch of 8 grey 64 px
    images, one untimed step each, then `steps` of each in turn, on one thread (the verdict is
    the CPU's, and one thread is steadier on a shared machine); the global RNG and the thread
    count are left as they were. Returns {"fp32_s", "bf16_s": median seconds per step,
    "speedup": fp32_s / bf16_s}. Took 0.15 s on an AVX-512 EPYC, 1.4 s with bf16 emulated
    (which `choose_precision` never probes: oneDNN's check decides there).
    """
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The first `auto` choice may come from inside a caller's no_grad or inference_mode
        # (evaluate's inference): the probe's backward needs autograd on.
        with torch.inference_mode(False), torch.enable_grad():
            return _probe_steps(nn, steps)
    finally:
        torch.set_num_threads(threads)


def _probe_steps(nn, steps: int) -> dict:

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 3),
        )
        x, y = torch.randn(8, 1, 64, 64), torch.randint(0, 3, (8,))
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(steps + 1):
        for bf16 in (False, True):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(net(x).float(), y)
            loss.backward()
            if i:  # the first step of each builds oneDNN's kernels
                times[bf16].append(time.perf_counter() - t0)
    fp32_s, bf16_s = statistics.median(times[False]), statistics.median(times[True])
    return {"fp32_s": fp32_s, "bf16_s": bf16_s, "speedup": fp32_s / bf16_s}


def probe_path(key: dict | None = None) -> Path:
    """Where this machine's verdict is cached: ``<cache>/precision/<hash of machine_key>.json``,
    in the prepared-data cache (`data.cache.cache_location`; ~/.cache/ray_xray when that is a
    URI, since a verdict belongs to one machine)."""
    from .data.cache import cache_location

    root = cache_location(None)
    if "://" in root:
        root = str(Path("~/.cache/ray_xray").expanduser())
    digest = hashlib.sha256(json.dumps(key or machine_key(), sort_keys=True).encode()).hexdigest()
    return Path(root) / "precision" / f"{digest[:16]}.json"


def cached_probe() -> dict:
    """`probe()`'s result for this machine: read from `probe_path()`, else measured and saved
    there (atomically; a cache folder that cannot be written only costs a probe next time)."""
    key = machine_key()
    path = probe_path(key)
    return _read_or_probe(str(path), json.dumps(key, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _read_or_probe(path: str, key_json: str) -> dict:
    # lru_cache: predict and evaluate ask once per model; one read per process is enough.
    from .io import write_atomic

    try:
        saved = json.loads(Path(path).read_text())
        if saved.get("key") == json.loads(key_json) and saved.get("speedup", 0) > 0:
            return saved
    except (OSError, ValueError):
        pass
    result = {"key": json.loads(key_json), **probe()}
    try:
        write_atomic(path, json.dumps(result, indent=2))
    except OSError:
        pass
    return result
