"""2. Mixed precision: training images/s of every registered model, fp32 vs bf16 autocast on
CPU, and for convolutional models also with channels_last (the project's default for them)."""

from __future__ import annotations

import gc

import torch

from ray_xray.models import list_models

from . import common as C
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
    },
    "quick": {
        "models": [],
        "img_size": 128,
        "batch_size": 32,
        "warmup": 1,
        "repeats": 1,
        "seconds": 0.3,
    },
}
# models: [] = every registered model (`python -m ray_xray.models` lists them)


def variants_for(is_conv: bool) -> list[tuple[str, str, bool]]:
    """(label, precision, channels_last) measured for one model."""
    out = [("fp32", "fp32", False), ("bf16", "bf16", False)]
    if is_conv:
        out += [("fp32+CL", "fp32", True), ("bf16+CL", "bf16", True)]
    return out


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or C.resolve_settings(DEFAULTS, quick, {})
    torch.set_num_threads(C.threads())
    names = list(s["models"]) or list_models()
    rows, raw = [], {}
    for i, name in enumerate(names, 1):
        C.say(NAME, f"[{i}/{len(names)}] {name} at {s['img_size']} px, batch {s['batch_size']}")
        raw[name] = measure_model(name, s)
        rows.append(row_for(name, raw[name]))
        gc.collect()
    speedups = [r["bf16_speedup_best"] for r in raw.values() if r.get("bf16_speedup_best")]
    best = max(raw, key=lambda n: raw[n].get("bf16_speedup_best") or 0)
    worst = min(raw, key=lambda n: raw[n].get("bf16_speedup_best") or float("inf"))
    headline = []
    if speedups:
        headline.append(
            f"bf16 autocast vs fp32 (best layout each): median {C.median(speedups):.2f}x over "
            f"{len(speedups)} models, from {raw[worst]['bf16_speedup_best']:.2f}x ({worst}) to "
            f"{raw[best]['bf16_speedup_best']:.2f}x ({best})"
        )
    cl = [r["cl_speedup_bf16"] for r in raw.values() if r.get("cl_speedup_bf16")]
    if cl:
        headline.append(
            f"channels_last under bf16, conv models: median {C.median(cl):.2f}x vs contiguous"
        )
    r18 = raw.get("resnet18", {})
    if r18.get("default_vs_fp32"):
        headline.append(
            f"resnet18 with the training default (bf16 + channels_last) vs plain fp32: "
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
    return C.result(
        NAME,
        settings=s,
        measured=(
            f"One training step (forward, backward, AdamW, grad clipping; `train_one_epoch`) on "
            f"a fixed synthetic batch of {s['batch_size']} grey {s['img_size']} px images, "
            f"{C.threads()} torch threads. Per model, the variants are measured in rotating "
            f"order, {s['repeats']} round(s) of ~{s['seconds']:g} s each after {s['warmup']} "
            "warm-up step(s); images/s is the median. CL = channels_last (conv models only)."
        ),
        tables=[C.table("training images/s (higher is better) and ratios", columns, rows)],
        headline=headline,
        data={"models": raw},
        notes=[
            "spread = (max - min) / median over rounds, worst variant: above ~0.1 the machine "
            "was busy and the ratios deserve a re-run.",
            "bf16 speed on a CPU depends on AVX-512 BF16 / AMX support (see the machine line).",
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
    samples = C.interleave(measure, s["repeats"])
    rates = {k: C.median(v) for k, v in samples.items()}
    out.update(rates=rates, samples=samples, steps=steps, errors=errors)
    out["spread"] = max((C.spread(v) or 0.0) for v in samples.values()) if samples else None
    fp32 = rates.get("fp32")
    out["bf16_vs_fp32"] = C.ratio(rates.get("bf16"), fp32)
    out["bf16cl_vs_fp32"] = C.ratio(rates.get("bf16+CL"), fp32)
    out["cl_speedup_bf16"] = C.ratio(rates.get("bf16+CL"), rates.get("bf16"))
    out["cl_speedup_fp32"] = C.ratio(rates.get("fp32+CL"), fp32)
    # Same layout on both sides: bf16 against fp32, each in its better layout.
    best_fp32 = max((rates.get(k) or 0) for k in ("fp32", "fp32+CL")) or None
    best_bf16 = max((rates.get(k) or 0) for k in ("bf16", "bf16+CL")) or None
    out["bf16_speedup_best"] = C.ratio(best_bf16, best_fp32)
    # What training actually uses (precision auto = bf16 on CPU, channels_last for conv models).
    default = rates.get("bf16+CL") if plain.is_conv else rates.get("bf16")
    out["default_vs_fp32"] = C.ratio(default, fp32)
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
