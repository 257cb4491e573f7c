"""7. Feed: does the input path keep the model busy? On whatever device is present, images/s of
(a) the pure training step on device-resident batches and (b) a real epoch through the real
loader and `DeviceFeed` (`Trainer.build`, `train_one_epoch`), per augmentation preset and side
(`augment_on`: loader = albumentations per image in the DataLoader, device = `BatchAugment` per
batch), for resnet18 and a recurrent model at 128 and 224 px. The ratio b/a is the share of the
step rate a real epoch reaches (issue target on a GPU: >= 0.70 with the seeds preset at 224 px).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.device import pick_device
from ray_xray.train.loop import Trainer

from . import common

NAME = "feed"
DEFAULTS = {
    "full": {
        "models": ["resnet18", "cnn_lstm"],
        "sizes": [128, 224],
        "batch_size": 64,
        "images": 256,
        "cuda_images": 3072,
        "repeats": 2,
        "presets": ["none", "flip", "seeds"],
    },
    "quick": {
        "models": ["resnet18"],
        "sizes": [64],
        "batch_size": 16,
        "images": 64,
        "cuda_images": 512,
        "repeats": 1,
        "presets": ["none", "seeds"],
    },
}
# (preset, side) rows: "none" has nothing to augment, so one row.
SIDES = ("loader", "device")


def _data(data: str, size: int, images: int):
    """chest3 when it is there (a developer's checkout), else the synthetic generator at the
    same size (a bare GPU machine): the loader's work per image is the same uint8 array."""
    spec = data if data and Path(data).is_dir() else f"synthetic:chest3:{max(8, images // 3)}"
    return load_data(spec, size), spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(tr: Trainer, steps: int) -> float:
    """(a) images/s of `train_one_epoch` over one device-resident, already normalised batch."""
    x, _, _ = next(iter(tr.train_loader))
    batch = (tr.feed(x), torch.randint(0, len(tr.classes), (len(x),), device=tr.device), None)
    run = lambda n: tr.train_epoch([batch] * n, fed=True)  # noqa: E731
    run(2)  # warm-up: kernels chosen, caches filled
    _sync(tr.device)
    t0 = time.perf_counter()
    out = run(steps)
    _sync(tr.device)
    return out["train_images"] / (time.perf_counter() - t0)


def epoch_rate(tr: Trainer) -> float:
    """(b) images/s of one real epoch: shuffled loader, uint8 to the device, augmentation on
    its side, normalisation, the same training step."""
    tr.train_epoch([next(iter(tr.train_loader))])  # warm-up
    _sync(tr.device)
    t0 = time.perf_counter()
    out = tr.train_epoch(tr.train_loader)
    _sync(tr.device)
    return out["train_images"] / (time.perf_counter() - t0)


def _variants(presets: list[str]) -> list[tuple[str, str]]:
    return [(p, s) for p in presets for s in (SIDES if p != "none" else ("-",))]


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    device = pick_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(common.threads())
    # A GPU epoch of 512 images is a few dozen milliseconds: time more of them there.
    n_images = s["cuda_images"] if device.type == "cuda" else s["images"]
    rows, raw = [], []
    for size in s["sizes"]:
        prepared, spec = _data(data, size, n_images)
        idx = list(range(min(n_images, len(prepared.labels["train"]))))
        steps = max(2, len(idx) // s["batch_size"])
        for model in s["models"]:
            base = TrainConfig(
                model=model,
                img_size=size,
                batch_size=s["batch_size"],
                data=spec,
                epochs=1,
                lr_scheduler="none",
            )
            trainers = {}
            for preset, side in _variants(s["presets"]):
                cfg = dataclasses.replace(
                    base,
                    aug_strength=0.0 if preset == "none" else 1.0,
                    augment="seeds" if preset == "none" else preset,
                    augment_on="loader" if side == "-" else side,
                )
                torch.manual_seed(0)
                trainers[(preset, side)] = Trainer.build(cfg, prepared, device, train_idx=idx)
            precision = next(iter(trainers.values())).precision
            common.say(
                NAME,
                f"{model} {size} px {precision} on {device}: step + "
                f"{len(trainers)} epoch variants x {s['repeats']}",
            )
            measure = {"step": lambda tr=trainers[("none", "-")], n=steps: step_rate(tr, n)}
            measure.update({k: (lambda tr=tr: epoch_rate(tr)) for k, tr in trainers.items()})
            samples = common.interleave(measure, s["repeats"])
            step = common.median(samples.pop("step"))
            for (preset, side), v in samples.items():
                real = common.median(v)
                rows.append(
                    [
                        model,
                        size,
                        precision,
                        preset,
                        side,
                        step,
                        real,
                        real / step,
                        common.spread(v),
                    ]
                )
                raw.append(
                    {
                        "model": model,
                        "img_size": size,
                        "precision": precision,
                        "preset": preset,
                        "augment_on": side,
                        "step_images_per_s": step,
                        "real_images_per_s": real,
                        "real_over_step": real / step,
                        "samples": v,
                    }
                )
            del trainers
    return _result(s, device, rows, raw, n_images)


def _result(s: dict, device: torch.device, rows: list, raw: list, n_images: int) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    seeds = [r for r in raw if r["preset"] == "seeds"]
    best = {}
    for r in seeds:
        key = (r["model"], r["img_size"])
        if key not in best or r["real_over_step"] > best[key]["real_over_step"]:
            best[key] = r
    headline = [
        f"{m} {px} px, seeds augmentation on {name}: a real epoch reaches "
        f"{common.pct(r['real_over_step'])} of the pure step rate with augment_on={r['augment_on']} "
        f"({r['real_images_per_s']:.0f} vs {r['step_images_per_s']:.0f} img/s)"
        for (m, px), r in best.items()
    ]
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"On {name} ({device}): (a) `train_one_epoch` over one device-resident, normalised "
            f"batch of {s['batch_size']} (the pure training step: forward, backward, AdamW, "
            "clipping, precision `auto`, channels_last for conv models); (b) one real epoch over "
            f"{n_images} training images through `Trainer.build`'s shuffled loader and "
            "`DeviceFeed` with each augmentation preset, augmentation on the loader side "
            "(albumentations per image) or the device side (`BatchAugment` per batch). "
            f"{s['repeats']} round(s) interleaved, medians; real_over_step = b / a."
        ),
        tables=[
            common.table(
                "images/s: pure step (a) vs real epoch (b)",
                [
                    "model",
                    "px",
                    "precision",
                    "preset",
                    "augment_on",
                    "step img/s (a)",
                    "epoch img/s (b)",
                    "b / a",
                    "spread",
                ],
                rows,
            )
        ],
        headline=headline,
        data={"rows": raw, "device": str(device), "device_name": name},
        notes=[
            "augment_on=auto picks the device side on CUDA and the loader side on CPU.",
            "On a CPU the step and the augmentation share the same cores, so b/a < 1 there "
            "measures the augmentation's cost; on a GPU it measures how well the host keeps the "
            "GPU fed.",
        ],
    )
