"""One loader for every data source: `load_data(spec, img_size)` -> in-memory uint8 splits."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from . import synthetic
from .cache import SCHEMA, cached, load_or_prepare
from .feed import DeviceFeed
from .sources import (
    SPLITS,
    DataError,
    Item,
    Skipped,
    carve_val,
    check_items,
    read_manifest,
    scan,
    skipped_summary,
)
from .transforms import TrainPreset

log = logging.getLogger("ray_xray.data")
DEDUPE = ("off", "drop-cross-split", "drop-conflicts")


def absolute_spec(spec: str) -> str:
    """Ray workers run in another directory: hand them absolute paths."""
    if spec.startswith("synthetic") or "://" in spec:
        return spec
    return str(Path(spec).expanduser().resolve())


def resolve_items(spec: str, skipped: list[Skipped] | None = None) -> list[Item]:
    """A folder (its manifest.csv when there is one), a manifest CSV path. Files a folder
    scan leaves out are appended to `skipped`."""
    path = Path(spec).expanduser()
    if path.is_dir():
        manifest = path / "manifest.csv"
        if manifest.is_file():
            items = read_manifest(manifest)
        else:
            items, left_out = scan(path)
            if skipped is not None:
                skipped.extend(left_out)
    elif path.suffix.lower() == ".csv":
        items = read_manifest(path)
    else:
        raise DataError(f"{spec}: no such folder or manifest (or use synthetic:chest3)")
    return carve_val(items)


def synthetic_table(spec: str, img_size: int, seed: int = 0) -> pa.Table:
    """The built-in synthetic set `spec` (``synthetic:chest3[:N]``) as a cache table in SCHEMA:
    one row per generated grey `img_size` x `img_size` image, deterministic for `seed`."""
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for key, label, split, img in synthetic.generate(spec, img_size, seed):
        sha = hashlib.sha1(img.tobytes()).hexdigest()
        values = (key, label, split, "", sha, sha, img_size, img_size, "L", img.tobytes())
        for name, value in zip(SCHEMA.names, values, strict=True):
            rows[name].append(value)
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def load_table(
    spec: str,
    img_size: int,
    skip_bad: bool = False,
    cache_root: str | None = None,
    log_fn=None,
    skipped: list[Skipped] | None = None,
) -> tuple[pa.Table, list[str], str]:
    """(table of prepared images, unreadable paths, where it came from). Every file not used
    (scan skips, unreadable files), with its reason, is appended to `skipped`."""
    if spec.startswith("synthetic"):
        name, sizes = synthetic.parse(spec)
        key = f"synthetic-v{synthetic.VERSION}-{name}-{sizes['train']}-{img_size}"
        build = lambda: (synthetic_table(spec, img_size), [])  # noqa: E731
        return cached(key, build, cache_root, log_fn or log.info)
    skipped = skipped if skipped is not None else []
    items = resolve_items(spec, skipped)
    table, bad, where = load_or_prepare(
        items, img_size, cache_root, skip_bad, log=log_fn or log.info
    )
    skipped.extend(bad)
    return table, [b.path for b in bad], where


@dataclass
class PreparedData:
    """A data set decoded into memory, split by split: what every training run and evaluation
    reads (built by `load_data`). `mean`/`std`: the training split's pixel statistics on
    [0, 1]; `dropped`: images removed by dedupe or unreadable; `skipped`: every file not used,
    with its reason."""

    classes: list[str]
    images: dict[str, np.ndarray]  # split -> (N, H, W) uint8
    labels: dict[str, np.ndarray]  # split -> (N,) int64
    paths: dict[str, list[str]]
    mean: float
    std: float
    source: str
    img_size: int
    dropped: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # files not used (unreadable too)
    # split -> patient id per image ("" where the file name carries none): CV folds group by it
    patients: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: images}} for every split and class (0 where a class is absent)."""
        return {
            s: {c: int((self.labels[s] == k).sum()) for k, c in enumerate(self.classes)}
            for s in SPLITS
        }

    def class_counts(self, split: str = "train") -> np.ndarray:
        """int64 (K,) images per class of `split`, in class order (class weights, focus class)."""
        return np.bincount(self.labels[split], minlength=len(self.classes))

    def dataset(
        self, split: str, aug_strength: float = 0.0, augment: str = "seeds"
    ) -> ImageDataset:
        """uint8 images of one split, with the loader-side (albumentations) augmentation for
        train when `aug_strength` > 0; normalisation and channels happen on the device
        (`feed()`)."""
        aug = TrainPreset(self.img_size, aug_strength, augment) if split == "train" else None
        if aug is not None and aug.aug is None:
            aug = None
        return ImageDataset(self.images[split], self.labels[split], aug)

    def feed(
        self,
        in_chans: int,
        device,
        channels_last: bool = False,
        augment=None,
        normalize: str = "dataset",
        equalize: str = "none",
    ) -> DeviceFeed:
        """The `DeviceFeed` that turns this data's uint8 batches into model input (this data's
        training statistics; `normalize`/`equalize` as in `TrainConfig`)."""
        return DeviceFeed(
            self.mean,
            self.std,
            in_chans,
            device,
            channels_last,
            augment,
            normalize=normalize,
            equalize=equalize,
        )


class ImageDataset(Dataset):
    """uint8 images and labels; items are (uint8 tensor (1, H, W), label int, row index int).

    Without a per-image `transform` an item is a view of the array (microseconds: a loader
    needs no worker processes); the device does the rest (`DeviceFeed`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        # The index rides along so DDP workers can prove they cover the split exactly once.
        img = self.images[i] if self.transform is None else self.transform(self.images[i])
        # A copy: a sweep's arrays come read-only from Ray's object store (torch warns on those).
        return torch.from_numpy(np.array(img, order="C"))[None], int(self.labels[i]), i


def _base(ds):
    while hasattr(ds, "dataset"):  # Subset
        ds = ds.dataset
    return ds


def seed_augmentation(ds, seed: int) -> None:
    """Seed a dataset's albumentations pipeline (it draws from its own generator, not numpy's):
    two runs at one seed then see the same augmentations."""
    aug = getattr(getattr(_base(ds), "transform", None), "aug", None)
    if aug is not None and hasattr(aug, "set_random_seed"):
        aug.set_random_seed(int(seed) % 2**32)


def _seed_worker(worker_id: int) -> None:
    # Each loader process gets a copy of the same generator: reseed it, or every worker would
    # hand out the same augmentations.
    info = torch.utils.data.get_worker_info()
    seed_augmentation(info.dataset, info.seed)


def loader(
    ds,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    device=None,
    workers: int = 0,
    generator=None,
) -> DataLoader:
    """A `DataLoader` over an `ImageDataset` (or a `Subset` of one): pinned memory on CUDA so
    copies overlap compute, `workers` processes only where a per-image transform needs them."""
    cuda = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        pin_memory=cuda,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
        worker_init_fn=_seed_worker if workers else None,
    )


def apply_dedupe(table: pa.Table, policy: str) -> tuple[pa.Table, int]:
    """drop-cross-split: remove from train/val what also sits in a later split (test wins);
    drop-conflicts: remove every copy of an image filed under different labels."""
    if policy not in DEDUPE:
        raise DataError(f"--dedupe must be one of {', '.join(DEDUPE)}, got {policy!r}")
    if policy == "off":
        return table, 0
    sha, split, label = (table.column(c).to_pylist() for c in ("pixel_sha1", "split", "label"))
    keep = np.ones(len(sha), dtype=bool)
    if policy == "drop-cross-split":
        rank = {"test": 0, "val": 1, "train": 2}
        best: dict[str, int] = {}
        for h, s in zip(sha, split, strict=True):
            best[h] = min(best.get(h, 9), rank[s])
        keep = np.array([rank[s] == best[h] for h, s in zip(sha, split, strict=True)])
    else:
        labels_of: dict[str, set] = {}
        for h, lab in zip(sha, label, strict=True):
            labels_of.setdefault(h, set()).add(lab)
        keep = np.array([len(labels_of[h]) == 1 for h in sha])
    return table.filter(pa.array(keep)), int((~keep).sum())


def leakage(table: pa.Table) -> int:
    """How many test images are pixel-identical to a training image."""
    sha, split = table.column("pixel_sha1").to_pylist(), table.column("split").to_pylist()
    train = {h for h, s in zip(sha, split, strict=True) if s == "train"}
    return sum(1 for h, s in zip(sha, split, strict=True) if s == "test" and h in train)


def refuse_leakage(table: pa.Table, spec: str) -> None:
    """Raise DataError (one line naming `spec`) when a test image of the cache table is
    pixel-identical to a training image (`leakage`)."""
    n_leak = leakage(table)
    if n_leak:
        raise DataError(
            f"{spec}: {n_leak} test image(s) are identical to training images; "
            "fix the split, use --dedupe drop-cross-split, or --allow-leakage"
        )


def load_data(
    spec: str,
    img_size: int = 128,
    *,
    classes: list[str] | None = None,
    skip_bad: bool = False,
    dedupe: str = "off",
    allow_leakage: bool = False,
    limit_per_split: int = 0,
    seed: int = 0,
    cache_root: str | None = None,
) -> PreparedData:
    """Every image of `spec` (a folder, a manifest.csv or ``synthetic:...``) decoded once
    into the Parquet cache (`cache_root`), resized to `img_size` x `img_size` grey pixels, and
    returned as in-memory splits: uint8 (N, S, S) images and int64 (N,) labels per split, in
    the order of `classes` (default: the training split's labels, sorted), with the training
    split's mean/std (pixels scaled to [0, 1]) for normalisation.

    `dedupe` is the audit policy applied first ("off", "drop-cross-split", "drop-conflicts");
    `limit_per_split` N > 0 keeps a seeded random N per split (smoke tests); `skip_bad` leaves
    unreadable images out instead of failing. Raises DataError (one line) for unreadable
    images without `skip_bad`, a test image identical to a training one without
    `allow_leakage`, an empty split or class, or a label outside `classes`.
    """
    skipped: list[Skipped] = []
    table, bad, source = load_table(spec, img_size, skip_bad, cache_root, skipped=skipped)
    table, n_dropped = apply_dedupe(table, dedupe)
    if not allow_leakage:
        refuse_leakage(table, spec)
    labels_col, splits_col = table.column("label").to_pylist(), table.column("split").to_pylist()
    items = [Item("", lab, s) for lab, s in zip(labels_col, splits_col, strict=True)]
    classes = check_items(items, classes)
    images, labels, split_paths, split_patients = _splits(
        table, classes, img_size, limit_per_split, seed
    )
    train = images["train"].astype(np.float32) / 255.0
    mean, std = float(train.mean()), float(train.std()) or 1.0
    data = PreparedData(
        classes,
        images,
        labels,
        split_paths,
        mean,
        std,
        source,
        img_size,
        dropped={"dedupe": n_dropped, "unreadable": len(bad)},
        unreadable=bad,
        skipped=skipped,
        patients=split_patients,
    )
    line = (
        f"data {spec}: {', '.join(f'{s} {len(data.labels[s])}' for s in SPLITS)}; "
        f"{skipped_summary(skipped)}"
    )
    if line not in _SAID:  # once a process: a --cv sweep's steps load the same data often
        _SAID.add(line)
        log.info(line)
    return data


_SAID: set[str] = set()  # load_data's lines logged so far


def _splits(
    table: pa.Table, classes: list[str], img_size: int, limit_per_split: int, seed: int
) -> tuple[dict, dict, dict, dict]:
    """The cache table cut into splits: (images: split -> uint8 (N, S, S), labels: split ->
    int64 (N,) indices into `classes`, paths: split -> file paths, patients: split -> patient
    id or ""), each split at most `limit_per_split` rows (a seeded random subset, in order)."""
    labels_col, splits_col = table.column("label").to_pylist(), table.column("split").to_pylist()
    index = {c: k for k, c in enumerate(classes)}
    blobs, paths = table.column("image").to_pylist(), table.column("path").to_pylist()
    rng = np.random.default_rng(seed)
    patients_col = table.column("patient").to_pylist()
    images, labels, split_paths, split_patients = {}, {}, {}, {}
    for split in SPLITS:
        idx = np.array([i for i, s in enumerate(splits_col) if s == split])
        if limit_per_split and len(idx) > limit_per_split:
            idx = np.sort(rng.choice(idx, limit_per_split, replace=False))
        images[split] = np.stack(
            [np.frombuffer(blobs[i], dtype=np.uint8).reshape(img_size, img_size) for i in idx]
        )
        labels[split] = np.array([index[labels_col[i]] for i in idx], dtype=np.int64)
        split_paths[split] = [paths[i] for i in idx]
        split_patients[split] = [patients_col[i] or "" for i in idx]
    return images, labels, split_paths, split_patients


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 (so the loss scale does not move)."""
    w = counts.sum() / np.maximum(counts, 1) / len(counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


DATA_SETTINGS = (
    "data",
    "img_size",
    "skip_bad",
    "dedupe",
    "allow_leakage",
    "limit_per_split",
    "seed",
)


def shared_key(cfg) -> tuple:
    """The TrainConfig settings (object or dict) that decide what `load_for_config` returns:
    two configs with the same key get the same `PreparedData`."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return tuple(c[k] for k in DATA_SETTINGS)


def load_for_config(cfg, cache_root: str | None = None) -> PreparedData:
    """The data exactly as a training run with this TrainConfig (or its dict) sees it (its
    cross-validation fold when `cv_folds` > 0: data/folds.py)."""
    from .folds import for_config

    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    data = load_data(
        c["data"],
        c["img_size"],
        skip_bad=c["skip_bad"],
        dedupe=c["dedupe"],
        allow_leakage=c["allow_leakage"],
        limit_per_split=c["limit_per_split"],
        seed=c["seed"],
        cache_root=cache_root,
    )
    return for_config(data, c)
