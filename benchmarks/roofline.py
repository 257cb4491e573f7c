"""3. Roofline: achieved FLOP/s of a resnet18 training step (FLOPs counted by
torch.utils.flop_counter) as a fraction of fp32 and bf16 matmul peaks measured in the same run."""

from __future__ import annotations

import time

import torch

from . import common
from .steps import TrainStep, count_step_flops

NAME = "roofline"
DEFAULTS = {
    "full": {
        "model": "resnet18",
        "img_size": 128,
        "batch_size": 32,
        "matmul_sizes": [1024, 2048, 4096],
        "repeats": 5,
        "seconds": 2.0,
        "warmup": 2,
    },
    "quick": {
        "model": "resnet18",
        "img_size": 128,
        "batch_size": 32,
        "matmul_sizes": [1024, 2048],
        "repeats": 1,
        "seconds": 0.5,
        "warmup": 1,
    },
}
STEP_VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+CL", "bf16", True))


def matmul_gflops(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """Square matmuls back to back for about `seconds`: achieved GFLOP/s (2 n^3 per product)."""
    n = a.shape[0]
    c = torch.empty_like(a)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=c)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2 * n**3 * reps / dt / 1e9


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    torch.set_num_threads(common.threads())
    measure: dict = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n in s["matmul_sizes"]:
            g = torch.Generator().manual_seed(n)
            a = torch.randn(n, n, generator=g).to(dtype)
            b = torch.randn(n, n, generator=g).to(dtype)
            torch.mm(a, b)  # warm-up: oneDNN picks its kernel on first use
            measure[f"mm {dtype_name} {n}"] = lambda a=a, b=b: matmul_gflops(a, b, s["seconds"] / 2)
    common.say(NAME, f"{s['model']} step at {s['img_size']} px, batch {s['batch_size']}")
    steps = {False: TrainStep(s["model"], s["img_size"], s["batch_size"], channels_last=False)}
    if steps[False].is_conv:
        steps[True] = TrainStep(s["model"], s["img_size"], s["batch_size"], channels_last=True)
    flops = count_step_flops(steps[False])
    n_steps = {}
    for label, prec, cl in STEP_VARIANTS:
        if cl not in steps:
            continue
        steps[cl].run(s["warmup"], prec)
        n_steps[label] = steps[cl].steps_for(s["seconds"], prec)
        measure[label] = lambda st=steps[cl], prec=prec, n=n_steps[label]: st.rate(n, prec)
    common.say(NAME, f"{s['repeats']} round(s) of {len(measure)} measurements, interleaved")
    samples = common.interleave(
        measure,
        s["repeats"],
        on_round=lambda r: common.say(NAME, f"round {r + 1}/{s['repeats']} done"),
    )

    peaks, peak_rows = {}, []
    for dtype_name in ("fp32", "bf16"):
        best = 0.0
        for n in s["matmul_sizes"]:
            vals = samples[f"mm {dtype_name} {n}"]
            best = max(best, max(vals))
            peak_rows.append(
                [
                    f"{dtype_name} matmul {n}x{n}",
                    common.median(vals),
                    max(vals),
                    common.spread(vals),
                ]
            )
        peaks[dtype_name] = best
    per_image = flops["total"] / s["batch_size"]
    step_rows, achieved = [], {}
    for label, _, _ in STEP_VARIANTS:
        if label not in samples:
            continue
        ips = common.median(samples[label])
        gflops = ips * per_image / 1e9
        achieved[label] = {
            "images_per_s": ips,
            "gflops": gflops,
            "of_fp32_peak": gflops / peaks["fp32"],
            "of_bf16_peak": gflops / peaks["bf16"],
        }
        step_rows.append(
            [
                f"{s['model']} {label}",
                ips,
                gflops,
                100 * gflops / peaks["fp32"],
                100 * gflops / peaks["bf16"],
                common.spread(samples[label]),
            ]
        )
    best_bf16 = max(
        (k for k in achieved if k.startswith("bf16")), key=lambda k: achieved[k]["gflops"]
    )
    headline = [
        f"{s['model']} training step reaches {common.pct(achieved[best_bf16]['of_bf16_peak'])} of the "
        f"bf16 matmul peak ({achieved[best_bf16]['gflops']:.0f} of {peaks['bf16']:.0f} GFLOP/s, "
        f"{best_bf16}) and {common.pct(achieved['fp32']['of_fp32_peak'])} of the fp32 peak in fp32 "
        f"({achieved['fp32']['gflops']:.0f} of {peaks['fp32']:.0f} GFLOP/s)",
        f"bf16/fp32 matmul peak ratio on this CPU: {peaks['bf16'] / peaks['fp32']:.2f}x",
    ]
    op_rows = [[op, v / s["batch_size"] / 1e9] for op, v in sorted(flops["per_op"].items())]
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"FLOPs of one {s['model']} training step (forward + backward, batch {s['batch_size']}, "
            f"{s['img_size']} px grey) counted with `torch.utils.flop_counter.FlopCounterMode`: "
            f"{per_image / 1e9:.2f} GFLOP per image. Peaks: square `torch.mm` in fp32 and bf16 at "
            f"{', '.join(map(str, s['matmul_sizes']))}, the best of all rounds; the training steps "
            f"use their median. Matmuls and steps alternate in rotating order, {s['repeats']} "
            f"round(s), {common.threads()} torch threads."
        ),
        tables=[
            common.table(
                "measured matmul peaks, GFLOP/s", ["matmul", "median", "best", "spread"], peak_rows
            ),
            common.table(
                "training step against the peaks",
                ["step", "img/s", "GFLOP/s", "% of fp32 peak", "% of bf16 peak", "spread"],
                step_rows,
            ),
            common.table(
                "counted FLOPs per image by operator (forward + backward), GFLOP",
                ["op", "GFLOP"],
                op_rows,
            ),
        ],
        headline=headline,
        data={
            "flops_per_step": flops,
            "flops_per_image": per_image,
            "peaks_gflops": peaks,
            "achieved": achieved,
            "samples": samples,
            "steps": n_steps,
        },
        notes=[
            "FLOPs counted are matmuls and convolutions only (elementwise work, BatchNorm and "
            "AdamW are not), so the fractions are a lower bound of how busy the CPU is.",
        ],
    )
