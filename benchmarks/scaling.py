"""6. Scaling: trials/hour with 1, 2, 4 trials in parallel on this machine (each trial gets
CPUs / concurrency), the same small fixed workload every time; then a written extrapolation
to AWS g5 nodes (A10G GPUs) from the measured start-up cost, counted FLOPs and data-path rate.
"""

from __future__ import annotations

import shutil
import time

import torch
from torch.utils.data import DataLoader, Subset

from ray_xray.data import load_data
from ray_xray.spaces import load_space
from ray_xray.tune.service import SweepOptions, run_sweep

from . import common
from .steps import TrainStep, count_step_flops

NAME = "scaling"
DEFAULTS = {
    "full": {
        "space": "cnn_lstm",
        "img_size": 64,
        "epochs": 2,
        "trials": 8,
        "levels": [1, 2, 4],
        "limit_per_split": 0,
    },
    "quick": {
        "space": "cnn_lstm",
        "img_size": 32,
        "epochs": 1,
        "trials": 4,
        "levels": [1, 2, 4],
        "limit_per_split": 300,
    },
}

# Published figures (not measured here). NVIDIA A10 datasheet: 31.2 TFLOPS FP32, 125 TFLOPS
# BF16/FP16 tensor (dense). AWS g5: g5.xlarge 4 vCPU + 1 A10G, g5.12xlarge 48 vCPU + 4 A10G.
A10G = {"fp32_tflops": 31.2, "bf16_tensor_tflops": 125.0}
G5 = {"g5.xlarge": {"vcpus": 4, "gpus": 1}, "g5.12xlarge": {"vcpus": 48, "gpus": 4}}
UTILISATION = (0.05, 0.20)  # assumed fraction of the bf16 tensor peak a small model reaches
RESNET_EPOCHS = 8  # the resnet18 space's default


def pinned_settings(space_name: str, s: dict) -> dict:
    """Every tuned value pinned (the space's defaults, batch 32): identical trials."""
    space = load_space(space_name)
    model = space.models[0]
    pinned = {k: v for k, v in space.default_config(model).items() if k in space.params_for(model)}
    return {
        **pinned,
        "batch_size": 32,
        "epochs": s["epochs"],
        "img_size": s["img_size"],
        "limit_per_split": s["limit_per_split"],
    }


def data_rate(spec: str, img_size: int, aug_strength: float, augment: str, n: int = 512) -> float:
    """Images/s one CPU core's in-process DataLoader delivers (cache + this augmentation)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = load_data(spec, img_size)
        ds = d.dataset("train", aug_strength=aug_strength, augment=augment)
        ds = Subset(ds, list(range(min(n, len(ds)))))
        next(iter(DataLoader(ds, batch_size=32)))
        t0, k = time.perf_counter(), 0
        for x, _, _ in DataLoader(ds, batch_size=32, shuffle=True):
            k += len(x)
        return k / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    spec = common.require_data(data)
    threads = common.threads()
    sweep_settings = pinned_settings(s["space"], s)
    space = load_space(s["space"])
    cfg = space.resolve(space.default_config(), {**sweep_settings, "data": spec})
    work = common.runs_dir(NAME)
    levels = []
    try:
        with common.ray_session():
            for level in s["levels"]:
                cpus = threads / level
                common.say(
                    NAME, f"{level} trial(s) at a time, {cpus:g} CPU each, {s['trials']} trials"
                )
                opts = SweepOptions(
                    space=s["space"],
                    data=spec,
                    trials=s["trials"],
                    storage=str(work),
                    name=f"parallel-{level}",
                    settings=dict(sweep_settings),
                    cpus_per_trial=cpus,
                    ensemble=False,
                    top_k=1,
                    scheduler="fifo",
                    searcher="random",
                    seed=0,
                )
                marks: dict = {}
                with common.timed_tuner_fit(marks):
                    summary = run_sweep(opts)
                rows = summary["rows"]
                done = [r for r in rows if r["status"] == "TERMINATED"]
                wall = marks["fit_end"] - marks["fit_start"]
                levels.append(
                    {
                        "concurrent": level,
                        "cpus_per_trial": cpus,
                        "threads_per_trial": max(1, round(cpus - 0.01)),
                        "trials": len(done),
                        "errors": len(rows) - len(done),
                        "wall_s": wall,
                        "trials_per_hour": len(done) * 3600 / wall,
                        "trial_wall_s": common.median(r["wall_s"] for r in done if r["wall_s"]),
                        "trial_compute_s": common.median(r["compute_s"] for r in done),
                        "trial_overhead_s": common.median(
                            r["wall_s"] - r["compute_s"] for r in done if r["wall_s"]
                        ),
                    }
                )
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    common.say(NAME, "inputs of the g5 estimate: counted FLOPs, one-core data-path rates")
    torch.set_num_threads(threads)
    est = g5_inputs(spec, cfg, s)
    return summarise(s, cfg, threads, levels, est)


def g5_inputs(spec: str, cfg, s: dict) -> dict:
    d = load_data(spec, cfg.img_size, limit_per_split=cfg.limit_per_split)
    full = load_data(spec, 128)
    small = TrainStep(cfg.model, cfg.img_size, 8, channels_last=False, cfg=cfg)
    r18 = TrainStep("resnet18", 128, 8, channels_last=False)
    return {
        "workload": {
            "name": f"{cfg.model} {cfg.img_size} px, {cfg.epochs} epoch(s)",
            "epochs": cfg.epochs,
            "n_train": len(d.labels["train"]),
            "n_val": len(d.labels["val"]),
            "flops_per_image": count_step_flops(small)["total"] / 8,
            "data_rate_1core": data_rate(spec, cfg.img_size, cfg.aug_strength, cfg.augment),
        },
        "resnet18": {
            "name": f"resnet18 128 px, {RESNET_EPOCHS} epochs",
            "epochs": RESNET_EPOCHS,
            "n_train": len(full.labels["train"]),
            "n_val": len(full.labels["val"]),
            "flops_per_image": count_step_flops(r18)["total"] / 8,
            "data_rate_1core": data_rate(spec, 128, 1.0, "seeds"),
        },
    }


def g5_estimate(w: dict, startup_s: float, k: int, u: float) -> float:
    """Trial seconds with k trials sharing one A10G at utilisation u, one vCPU each.

    Per epoch a trial needs max(GPU time, data time): the GPU is shared k ways, and the
    in-process DataLoader (num_workers=0) runs on one core. Validation ~ 1/3 of a training
    image's FLOPs. Start-up is taken as measured here."""
    flops_epoch = w["flops_per_image"] * (w["n_train"] + w["n_val"] / 3)
    gpu_s = flops_epoch / (A10G["bf16_tensor_tflops"] * 1e12 * u)
    data_s = w["n_train"] / w["data_rate_1core"]
    return startup_s + w["epochs"] * max(k * gpu_s, data_s)


def summarise(s: dict, cfg, threads: int, levels: list[dict], est: dict) -> dict:
    base = levels[0]["trials_per_hour"] if levels else None
    rows = []
    for lv in levels:
        rows.append(
            [
                lv["concurrent"],
                lv["cpus_per_trial"],
                lv["threads_per_trial"],
                lv["trials"],
                lv["wall_s"],
                lv["trials_per_hour"],
                common.ratio(lv["trials_per_hour"], base),
                lv["trial_wall_s"],
                lv["trial_compute_s"],
                lv["trial_overhead_s"],
            ]
        )
    startup = levels[0]["trial_overhead_s"] if levels else 25.0
    g5_rows = []
    for inst, spec in G5.items():
        per_gpu = spec["vcpus"] // spec["gpus"]
        for key in ("workload", "resnet18"):
            w = est[key]
            for k in sorted({1, 2, min(4, per_gpu), per_gpu}):
                tph = [spec["gpus"] * k * 3600 / g5_estimate(w, startup, k, u) for u in UTILISATION]
                g5_rows.append([inst, w["name"], k, spec["gpus"] * k, tph[0], tph[1]])
    best = max(levels, key=lambda lv: lv["trials_per_hour"]) if levels else None
    headline = []
    if best and base:
        by = {lv["concurrent"]: lv for lv in levels}
        headline.append(
            "trials/hour on this machine: "
            + ", ".join(
                f"{c} at a time {by[c]['trials_per_hour']:.0f} ({by[c]['trials_per_hour'] / base:.2f}x)"
                for c in sorted(by)
            )
            + f"; per-trial overhead {secs(startup)} vs {secs(levels[0]['trial_compute_s'])} of compute"
        )
    r = est["resnet18"]
    slow, fast = (g5_estimate(r, startup, 4, u) for u in UTILISATION)
    tph = [G5["g5.12xlarge"]["gpus"] * 4 * 3600 / t for t in (slow, fast)]
    headline.append(
        f"g5 estimate (not a measurement): a {r['name']} trial takes {fast:.0f}-{slow:.0f} s "
        f"with 4 trials per A10G, {common.pct(startup / slow)}-{common.pct(startup / fast)} of it start-up; "
        f"a g5.12xlarge would run about {tph[0]:.0f}-{tph[1]:.0f} such trials/hour"
    )
    text = g5_text(est, startup, UTILISATION)
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"{s['trials']} identical trials (space `{s['space']}`, every tuned value pinned; "
            f"{cfg.model} at {cfg.img_size} px, {cfg.epochs} epoch(s), chest3) through the sweep "
            f"service with `--cpus-per-trial` = {threads} / concurrency, FIFO. trials/hour = "
            "finished trials / wall time of `Tuner.fit`. Per-trial overhead = trial wall time "
            "minus its train+validation compute (start-up, checkpoints, reporting)."
        ),
        tables=[
            common.table(
                "measured on this machine",
                [
                    "trials at a time",
                    "CPUs per trial",
                    "torch threads",
                    "trials",
                    "wall s",
                    "trials/hour",
                    "vs 1 at a time",
                    "trial wall s (median)",
                    "compute s",
                    "overhead s",
                ],
                rows,
            ),
            common.table(
                "ESTIMATE for AWS g5 (A10G), not measured: trials/hour per node",
                [
                    "instance",
                    "workload",
                    "trials per GPU",
                    "trials at a time",
                    f"A10G at {int(UTILISATION[0] * 100)}% of bf16 peak",
                    f"at {int(UTILISATION[1] * 100)}%",
                ],
                g5_rows,
            ),
        ],
        headline=headline,
        data={"levels": levels, "g5_inputs": est, "a10g": A10G, "g5": G5, "startup_s": startup},
        notes=text,
    )


def secs(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 0.1 else f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


def g5_text(est: dict, startup: float, utilisation: tuple[float, float]) -> list[str]:
    def gpu_epoch(x, u):
        return (
            x["flops_per_image"]
            * (x["n_train"] + x["n_val"] / 3)
            / (A10G["bf16_tensor_tflops"] * 1e12 * u)
        )

    lines = [
        "g5 extrapolation (an ESTIMATE, not a measurement). Published figures: NVIDIA's A10 "
        "datasheet gives 31.2 TFLOPS FP32 and 125 TFLOPS dense BF16/FP16 tensor; the A10G in g5 "
        "is AWS's variant of the same GA102 part (third-party comparisons, e.g. Baseten's "
        "'NVIDIA A10 vs A10G', report lower tensor and higher FP32 throughput for it, so 125 is "
        "an upper bound). g5.xlarge = 4 vCPU + 1 A10G; g5.12xlarge = 48 vCPU + 4 A10G.",
        f"Model: a trial costs start-up + epochs x max(GPU time, data time). Start-up is taken as "
        f"measured here ({startup:.0f} s per trial: processes, imports, Ray actors, data loading; "
        f"a GPU does not shorten it). GPU time = FLOPs counted here / ({int(utilisation[0] * 100)}"
        f"-{int(utilisation[1] * 100)}% of 125 TFLOPS), shared by the trials on one GPU. Data "
        "time = training images / the images/s one core's in-process DataLoader (num_workers=0, "
        "as training runs) delivered here with the workload's augmentation.",
    ]
    for x in (est["resnet18"], est["workload"]):
        g_hi, g_lo = gpu_epoch(x, utilisation[1]), gpu_epoch(x, utilisation[0])
        data = x["n_train"] / x["data_rate_1core"]
        t = g5_estimate(x, startup, 1, utilisation[1])
        lines.append(
            f"{x['name']}: {x['flops_per_image'] / 1e9:.2f} GFLOP per training image; per epoch "
            f"the A10G needs {secs(g_hi)}-{secs(g_lo)}, one core's data path {secs(data)} "
            f"({x['data_rate_1core']:.0f} img/s), so one GPU feeds about "
            f"{data / g_lo:.1f}-{data / g_hi:.1f} trials before it, not the CPU, is the limit. A "
            f"lone trial takes ~{t:.0f} s, {common.pct(startup / t)} of it start-up."
        )
    lines.append(
        "Reading: per-trial start-up dominates short trials on a GPU even more than here, so "
        "trials/hour grows with concurrent trials per GPU until the GPU or the vCPUs (4 per GPU "
        "on g5.xlarge, 12 on g5.12xlarge; the last rows leave nothing for Ray itself, a "
        "ceiling) run out; longer trials (more epochs, larger images) use the A10G better. The "
        "FLOP counter does not see fused LSTM kernels, so recurrent models' GPU time is "
        "understated."
    )
    return lines
