"""2. Mixed precision: training images/s of every registered model, fp32 vs bf16 autocast on
CPU, and for convolutional models also with channels_last (the project's default for them).

Then both kinds of CPU side by side (issue 32): a few models' fp32 and bf16 steps on this CPU
as it is ("native") and in a subprocess limited to AVX2 (`device.AVX2_ONLY_ENV`: no native
bf16, as on most CPUs people own), each path's bf16/fp32 ratio measured within its own
process, and what `precision auto` chooses on each.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

from ray_xray import device
from ray_xray.models import list_models
from ray_xray.models.timm_models import timm_available

from . import common
from .steps import TrainStep

NAME = "precision"
DEFAULTS = {
    "full": {
        "models": [],
        "img_size": 128,
        "batch_size": 32,
        "warmup": 2,
        "repeats": 3,
        "seconds": 2.0,
        "paths_models": ["resnet18", "cnn"],
        "paths_img_size": 64,
        "paths_batch_size": 8,
        "paths_repeats": 3,
        "paths_seconds": 1.0,
    },
    "quick": {
        "models": [],
        "img_size": 128,
        "batch_size": 32,
        "warmup": 1,
        "repeats": 1,
        "seconds": 0.3,
        "paths_models": ["resnet18"],
        "paths_img_size": 64,
        "paths_batch_size": 8,
        "paths_repeats": 1,
        "paths_seconds": 0.3,
    },
}
# models: [] = every registered model (`python -m ray_xray.models` lists them). paths_*: the
# native-vs-AVX2 table; small (the resnet18 at 64 px, batch 8), since emulated bf16
# runs 5-34x slower.


def variants_for(is_conv: bool) -> list[tuple[str, str, bool]]:
    """(label, precision, channels_last) measured for one model."""
    out = [("fp32", "fp32", False), ("bf16", "bf16", False)]
    if is_conv:
        out += [("fp32+CL", "fp32", True), ("bf16+CL", "bf16", True)]
    return out


def buildable_models() -> tuple[list[str], list[str]]:
    """(every registered model this install can build, those it cannot): the timm/* models
    need the optional timm package (`pip install 'ray_xray[timm]'`), which `make install` leaves
    out; without it they are left out of the default model list, and the notes say so."""
    names = list_models()
    if timm_available():
        return names, []
    return [n for n in names if not n.startswith("timm/")], [
        n for n in names if n.startswith("timm/")
    ]


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    torch.set_num_threads(common.threads())
    names, left_out = (list(s["models"]), []) if s["models"] else buildable_models()
    rows, raw = [], {}
    for i, name in enumerate(names, 1):
        common.say(
            NAME, f"[{i}/{len(names)}] {name} at {s['img_size']} px, batch {s['batch_size']}"
        )
        raw[name] = measure_model(name, s)
        rows.append(row_for(name, raw[name]))
        gc.collect()
    speedups = [r["bf16_speedup_best"] for r in raw.values() if r.get("bf16_speedup_best")]
    best = max(raw, key=lambda n: raw[n].get("bf16_speedup_best") or 0)
    worst = min(raw, key=lambda n: raw[n].get("bf16_speedup_best") or float("inf"))
    headline = []
    if speedups:
        headline.append(
            f"bf16 autocast vs fp32 (best layout each): median {common.median(speedups):.2f}x over "
            f"{len(speedups)} models, from {raw[worst]['bf16_speedup_best']:.2f}x ({worst}) to "
            f"{raw[best]['bf16_speedup_best']:.2f}x ({best})"
        )
    cl = [r["cl_speedup_bf16"] for r in raw.values() if r.get("cl_speedup_bf16")]
    if cl:
        headline.append(
            f"channels_last under bf16, conv models: median {common.median(cl):.2f}x vs contiguous"
        )
    r18 = raw.get("resnet18", {})
    if r18.get("default_vs_fp32"):
        headline.append(
            f"resnet18 with the training default ({device.pick_precision('auto', 'cpu')} + "
            "channels_last) vs plain fp32: "
            f"{r18['default_vs_fp32']:.2f}x"
        )
    columns = [
        "model",
        "params",
        "fp32 img/s",
        "bf16 img/s",
        "fp32+CL img/s",
        "bf16+CL img/s",
        "bf16/fp32",
        "bf16+CL/fp32",
        "CL gain (bf16)",
        "spread",
    ]
    paths = measure_paths(s)
    headline += paths_headline(paths)
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"One training step (forward, backward, AdamW, grad clipping; `train_one_epoch`) on "
            f"a fixed synthetic batch of {s['batch_size']} grey {s['img_size']} px images, "
            f"{common.threads()} torch threads. Per model, the variants are measured in rotating "
            f"order, {s['repeats']} round(s) of ~{s['seconds']:g} s each after {s['warmup']} "
            "warm-up step(s); images/s is the median. CL = channels_last (conv models only)."
        ),
        tables=[
            common.table("training images/s (higher is better) and ratios", columns, rows),
            paths_table(paths, s),
        ],
        headline=headline,
        data={"models": raw, "paths": paths},
        notes=[
            "spread = (max - min) / median over rounds, worst variant: above ~0.1 the machine "
            "was busy and the ratios deserve a re-run.",
            "bf16 speed on a CPU depends on AVX-512 BF16 / AMX support (see the machine line). "
            "The second table runs both kinds of CPU: this one as it is and, in a subprocess, "
            f"limited to AVX2 ({' '.join(f'{k}={v}' for k, v in device.AVX2_ONLY_ENV.items())}); "
            "each bf16/fp32 ratio is measured within one process, the two paths one after "
            "the other.",
            *([f"Left out (timm is not installed): {', '.join(left_out)}."] if left_out else []),
        ],
    )


def measure_model(name: str, s: dict) -> dict:
    steps_by_layout: dict[bool, TrainStep] = {}
    variants = []
    plain = TrainStep(name, s["img_size"], s["batch_size"], channels_last=False)
    steps_by_layout[False] = plain
    for label, prec, cl in variants_for(plain.is_conv):
        if cl and cl not in steps_by_layout:
            steps_by_layout[cl] = TrainStep(
                name, s["img_size"], s["batch_size"], channels_last=True
            )
        variants.append((label, prec, steps_by_layout[cl]))
    out: dict = {
        "params": sum(p.numel() for p in plain.model.parameters()),
        "is_conv": plain.is_conv,
    }
    errors = {}
    measure, steps = {}, {}
    for label, prec, st in variants:
        try:
            st.run(s["warmup"], prec)
            steps[label] = st.steps_for(s["seconds"], prec)
        except RuntimeError as exc:  # report, do not abort the table
            errors[label] = str(exc).splitlines()[0][:200]
            continue
        measure[label] = lambda st=st, prec=prec, n=steps[label]: st.rate(n, prec)
    samples = common.interleave(measure, s["repeats"])
    rates = {k: common.median(v) for k, v in samples.items()}
    out.update(rates=rates, samples=samples, steps=steps, errors=errors)
    out["spread"] = max((common.spread(v) or 0.0) for v in samples.values()) if samples else None
    fp32 = rates.get("fp32")
    out["bf16_vs_fp32"] = common.ratio(rates.get("bf16"), fp32)
    out["bf16cl_vs_fp32"] = common.ratio(rates.get("bf16+CL"), fp32)
    out["cl_speedup_bf16"] = common.ratio(rates.get("bf16+CL"), rates.get("bf16"))
    out["cl_speedup_fp32"] = common.ratio(rates.get("fp32+CL"), fp32)
    # Same layout on both sides: bf16 against fp32, each in its better layout.
    best_fp32 = max((rates.get(k) or 0) for k in ("fp32", "fp32+CL")) or None
    best_bf16 = max((rates.get(k) or 0) for k in ("bf16", "bf16+CL")) or None
    out["bf16_speedup_best"] = common.ratio(best_bf16, best_fp32)
    # What training actually uses here: `precision auto` (device.py), channels_last for conv.
    auto = device.pick_precision("auto", "cpu")
    default = rates.get(f"{auto}+CL") if plain.is_conv else rates.get(auto)
    out["default_vs_fp32"] = common.ratio(default, fp32)
    return out


def row_for(name: str, r: dict) -> list:
    rates = r["rates"]
    return [
        name,
        r["params"],
        rates.get("fp32"),
        rates.get("bf16"),
        rates.get("fp32+CL"),
        rates.get("bf16+CL"),
        r["bf16_vs_fp32"],
        r["bf16cl_vs_fp32"],
        r["cl_speedup_bf16"],
        r["spread"],
    ]


# ------------------------------------------------------------------ both kinds of CPU


def measure_path(s: dict) -> dict:
    """fp32 and bf16 images/s of `paths_models` on this process's CPU (as torch and oneDNN see
    it), interleaved, with what `precision auto` chooses here and the CPU facts behind it."""
    torch.set_num_threads(common.threads())
    choice = device.choose_precision("auto", "cpu")
    out: dict = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": device.cpu_bf16_native(),
        "auto": choice.to_dict(),
        "models": {},
    }
    for name in s["paths_models"]:
        # channels_last for conv models, as training runs them (TrainConfig's default).
        step = TrainStep(name, s["paths_img_size"], s["paths_batch_size"], channels_last=True)
        measure = {}
        for prec in ("fp32", "bf16"):
            # Its one timed step is also the warm-up (oneDNN builds its kernels).
            n = step.steps_for(s["paths_seconds"], prec, max_steps=20)
            measure[prec] = lambda prec=prec, step=step, n=n: step.rate(n, prec)
        samples = common.interleave(measure, s["paths_repeats"])
        rates = {k: common.median(v) for k, v in samples.items()}
        out["models"][name] = {
            "rates": rates,
            "samples": samples,
            "bf16_vs_fp32": common.ratio(rates["bf16"], rates["fp32"]),
        }
        gc.collect()
    return out


def measure_paths(s: dict) -> dict:
    """{"native": this CPU's `measure_path`, "avx2": the same in a subprocess limited to AVX2}."""
    common.say(NAME, f"native path: {', '.join(s['paths_models'])} at {s['paths_img_size']} px")
    native = measure_path(s)
    common.say(NAME, "forced-AVX2 path (a subprocess; emulated bf16 is slow)")
    env = {**os.environ, **device.AVX2_ONLY_ENV}
    got = subprocess.run(
        [sys.executable, "-m", "benchmarks.precision", json.dumps(s)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if got.returncode != 0:
        raise RuntimeError(f"the forced-AVX2 path failed: {got.stderr.strip()[-2000:]}")
    return {"native": native, "avx2": json.loads(got.stdout.strip().splitlines()[-1])}


def paths_table(paths: dict, s: dict) -> dict:
    rows = []
    for label, p in paths.items():
        for name, r in p["models"].items():
            rows.append(
                [
                    label,
                    p["capability"],
                    "yes" if p["native_bf16"] else "no",
                    name,
                    r["rates"]["fp32"],
                    r["rates"]["bf16"],
                    r["bf16_vs_fp32"],
                    p["auto"]["precision"],
                ]
            )
    columns = ["path", "torch capability", "native bf16", "model", "fp32 img/s", "bf16 img/s"]
    return common.table(
        f"both kinds of CPU: {s['paths_img_size']} px, batch {s['paths_batch_size']}, "
        f"{common.threads()} threads, channels_last for conv models (as training runs them)",
        [*columns, "bf16/fp32", "auto picks"],
        rows,
    )


def paths_headline(paths: dict) -> list[str]:
    lines = []
    for label, p in paths.items():
        for name, r in p["models"].items():
            ratio = r["bf16_vs_fp32"]
            slower = f" ({1 / ratio:.1f}x slower)" if ratio and ratio < 1 else ""
            lines.append(
                f"{label} path ({p['capability']}, native bf16 {'yes' if p['native_bf16'] else 'no'}): "
                f"{name} bf16/fp32 {ratio:.2f}x{slower}; auto picks {p['auto']['precision']}"
            )
    return lines


if __name__ == "__main__":  # the forced-AVX2 path: settings as JSON in, its result as JSON out
    print(json.dumps(measure_path(json.loads(sys.argv[1]))))
