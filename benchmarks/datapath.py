"""4. Data path: images/s the training DataLoader delivers from the prepared cache (with and
without augmentation) vs decoding the PNGs of chest3 every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ray_xray import device
from ray_xray.data import load_data
from ray_xray.data.cache import decode
from ray_xray.data.dataset import resolve_items
from ray_xray.data.transforms import TrainPreset

from . import common
from .steps import TrainStep

NAME = "datapath"
DEFAULTS = {
    "full": {"img_size": 128, "batch_size": 32, "images": 0, "repeats": 3, "model_steps": 8},
    "quick": {"img_size": 128, "batch_size": 32, "images": 512, "repeats": 1, "model_steps": 2},
}  # images: 0 = the whole training split


SAME_AUG = {  # the PNG row each cached row is compared with (same augmentation)
    "cache, no augmentation": "PNG decode, no augmentation",
    "cache + seeds augmentation": "PNG decode + seeds augmentation",
}


class PngDataset(Dataset):
    """What training would do without the cache: read and decode every file, every epoch.

    Same decode (`ray_xray.data.cache.decode`: grey, shorter side to img_size, centre crop),
    same augmentation and the same uint8 output as the cached path (normalising is the
    device's job, `DeviceFeed`)."""

    def __init__(self, paths, labels, img_size, transform=None):
        self.paths, self.labels, self.img_size = list(paths), list(labels), img_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        pixels, _, _ = decode(Path(self.paths[i]).read_bytes(), self.img_size)
        x = pixels if self.transform is None else self.transform(pixels)
        return torch.from_numpy(np.ascontiguousarray(x))[None], int(self.labels[i]), i


def loader_rate(ds: Dataset, batch_size: int) -> float:
    """Iterate one epoch of a DataLoader as training does (shuffled, in-process): images/s."""
    import time

    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    n, t0 = 0, time.perf_counter()
    for x, _, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def run(quick: bool, data: str, settings: dict | None = None, keep: bool = False) -> dict:
    s = settings or common.resolve_settings(DEFAULTS, quick, {})
    spec = common.require_data(data)
    torch.set_num_threads(common.threads())
    size, bs = s["img_size"], s["batch_size"]
    common.say(NAME, f"loading {spec} at {size} px (prepared cache; built on first use)")
    prepared = load_data(spec, size)
    items = [it for it in resolve_items(spec) if it.split == "train"]
    index = {c: k for k, c in enumerate(prepared.classes)}
    n_all = len(prepared.labels["train"])
    n = min(s["images"] or n_all, n_all)
    # The same images on both paths: the cache's rows for `n` training items, and those files.
    chosen = torch.randperm(n_all, generator=torch.Generator().manual_seed(0))[:n].tolist()
    by_path = {it.path: it for it in items}
    paths = [prepared.paths["train"][i] for i in chosen]
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise ValueError(f"{missing[0]}: in the prepared cache but not in {spec}")
    labels = [index[by_path[p].label] for p in paths]
    for p in paths:  # read every file once: later reads come from the OS page cache, as in epoch 2+
        Path(p).read_bytes()

    def cache_ds(strength: float, preset: str = "seeds"):
        return Subset(prepared.dataset("train", aug_strength=strength, augment=preset), chosen)

    variants = {
        "cache, no augmentation": cache_ds(0.0),
        "cache + flip (augment=flip)": cache_ds(1.0, "flip"),
        "cache + seeds augmentation": cache_ds(1.0, "seeds"),
        "PNG decode, no augmentation": PngDataset(paths, labels, size),
        "PNG decode + seeds augmentation": PngDataset(
            paths, labels, size, TrainPreset(size, 1.0, "seeds")
        ),
    }
    for ds in variants.values():  # warm-up: one batch each
        next(iter(DataLoader(ds, batch_size=bs)))
    measure = {k: (lambda ds=ds: loader_rate(ds, bs)) for k, ds in variants.items()}
    # The consumer trains as `train` would here: in the precision `auto` picks on this CPU.
    prec = device.pick_precision("auto", "cpu")
    common.say(
        NAME,
        f"resnet18 {prec}+channels_last training step for reference ({s['model_steps']} steps)",
    )
    step = TrainStep("resnet18", size, bs, channels_last=True)
    step.run(2, prec)
    measure["resnet18 training step (consumer)"] = lambda: step.rate(s["model_steps"], prec)
    common.say(
        NAME, f"{len(variants)} loaders over {n} images, {s['repeats']} round(s), interleaved"
    )
    samples = common.interleave(
        measure,
        s["repeats"],
        on_round=lambda r: common.say(NAME, f"round {r + 1}/{s['repeats']} done"),
    )
    rates = {k: common.median(v) for k, v in samples.items()}
    model_rate = rates.pop("resnet18 training step (consumer)")
    png_plain = rates["PNG decode, no augmentation"]
    png_aug = rates["PNG decode + seeds augmentation"]
    rows = []
    for k, r in rates.items():
        # With num_workers=0 (as training runs) loading and the step take turns:
        # the loader's share of an epoch is (1/data) / (1/data + 1/model).
        frac = (1 / r) / (1 / r + 1 / model_rate)
        vs = rates.get(SAME_AUG.get(k, k)) if "flip" not in k else None
        rows.append(
            [k, r, r / png_plain, common.ratio(r, vs), 100 * frac, common.spread(samples[k])]
        )
    rows.append(
        [
            f"resnet18 {prec}+CL training step",
            model_rate,
            None,
            None,
            None,
            common.spread(samples["resnet18 training step (consumer)"]),
        ]
    )
    cache_plain = rates["cache, no augmentation"]
    cache_aug = rates["cache + seeds augmentation"]

    def share(rate: float) -> float:
        return (1 / rate) / (1 / rate + 1 / model_rate)

    flip = rates["cache + flip (augment=flip)"]
    headline = [
        f"prepared cache vs decoding PNGs each epoch: {cache_plain / png_plain:.1f}x without "
        f"augmentation ({cache_plain:.0f} vs {png_plain:.0f} img/s), {cache_aug / png_aug:.1f}x "
        f"with the seeds augmentation ({cache_aug:.0f} vs {png_aug:.0f} img/s)",
        f"the seeds augmentation takes {common.pct(1 - cache_aug / cache_plain)} of the cached "
        f"loader's speed and {common.pct(share(cache_aug))} of a resnet18 {prec} epoch at {size} px "
        f"(flip only: {common.pct(share(flip))}; PNG decode + seeds: {common.pct(share(png_aug))})",
    ]
    return common.result(
        NAME,
        settings=s,
        measured=(
            f"Images/s a shuffled `DataLoader` (batch {bs}, `num_workers=0` as in training) "
            f"delivers over {n} chest3 training images at {size} px: from the prepared Parquet "
            "cache (decoded once, in memory) with no, flip-only and the seeds' augmentation, vs "
            "reading and decoding each PNG every epoch (same decode and resize as the cache). "
            "Files are read once beforehand, so PNG reads come from the OS page cache as in "
            f"epoch 2 onwards. {s['repeats']} round(s), rotating order, medians. A resnet18 "
            f"{prec} + channels_last training step (`precision auto` on this CPU) is timed "
            "alongside as the consumer."
        ),
        tables=[
            common.table(
                "images/s delivered to the model",
                [
                    "path",
                    "img/s",
                    "vs PNG decode (no aug)",
                    "vs PNG decode (same aug)",
                    "% of a resnet18 epoch",
                    "spread",
                ],
                rows,
            )
        ],
        headline=headline,
        data={"rates": rates, "model_rate": model_rate, "samples": samples, "images": n},
        notes=[
            "'% of a resnet18 epoch' assumes loading and compute alternate (num_workers=0): "
            "time per image = 1/loader + 1/step.",
        ],
    )
