"""Where images come from: a folder tree, a manifest CSV, or the built-in synthetic generator.

Every source becomes a list of `Item`s (path, label, split, patient); everything downstream
(cache, audit, training) works on that list only.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip

# Folder names seen in public chest X-ray and brain MRI sets -> one canonical label.
_LABEL_ALIASES = {
    "normal": "normal", "no_finding": "normal", "healthy": "normal",
    "pneumonia": "pneumonia", "viral_pneumonia": "pneumonia",
    "bacterial_pneumonia": "pneumonia", "lung_opacity": "pneumonia",
    "tb": "tuberculosis", "tuberculosis": "tuberculosis",
    "covid": "covid", "covid19": "covid", "covid_19": "covid",
    "notumor": "notumor", "no_tumor": "notumor", "no_tumour": "notumor", "notumour": "notumor",
    "glioma": "glioma", "glioma_tumor": "glioma",
    "meningioma": "meningioma", "meningioma_tumor": "meningioma",
    "pituitary": "pituitary", "pituitary_tumor": "pituitary",
}  # fmt: skip

# Kermany names: person12_bacteria_3.jpeg and person12_virus_9.jpeg are *different* patients
# (numbering restarts per aetiology); IM-0115-0001 and NORMAL2-IM-0115-0001 likewise.
_PATIENT_PATTERNS = (
    re.compile(r"(person\d+_(?:bacteria|virus))", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE),
)


class DataError(ValueError):
    """Bad or unusable data; the message names the offending path."""


@dataclass(frozen=True)
class Item:
    path: str  # absolute path, or `synthetic:<name>/<index>`
    label: str
    split: str
    patient: str = ""  # "" when the name carries no patient id


def normalise_label(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return _LABEL_ALIASES.get(key, key)


def normalise_split(name: str) -> str | None:
    return _SPLIT_ALIASES.get(name.strip().lower())


def patient_id(name: str) -> str:
    stem = Path(name).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.search(stem)
        if match:
            return match.group(1).lower()
    return ""


def scan_folder(root: str | Path) -> list[Item]:
    """`ROOT/{train,val,test}/<label>/*.{png,jpg,jpeg}`, split and label names matched loosely."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    items = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = normalise_split(split_dir.name)
        if split is None:
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = normalise_label(label_dir.name)
            for f in sorted(label_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    items.append(Item(str(f.resolve()), label, split, patient_id(f.name)))
    if not items:
        raise DataError(f"{root}: no images under {{train,val,test}}/<label>/")
    return items


def read_manifest(csv_path: str | Path) -> list[Item]:
    """A CSV with at least `file,label,split`; `file` relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such manifest")
    base = csv_path.parent
    items = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
        for lineno, row in enumerate(reader, start=2):
            split = normalise_split(row["split"] or "")
            if split is None:
                raise DataError(f"{csv_path}:{lineno}: unknown split {row['split']!r}")
            path = (base / row["file"]).resolve()
            if not path.is_file():
                raise DataError(f"{csv_path}:{lineno}: {path} does not exist")
            # The original file name (if recorded) carries the patient id, ours is a hash.
            pid = patient_id(row.get("source_path") or row["file"])
            items.append(Item(str(path), normalise_label(row["label"]), split, pid))
    if not items:
        raise DataError(f"{csv_path}: manifest has no rows")
    return items


def carve_val(items: list[Item], fraction: float = 0.1, seed: int = 0) -> list[Item]:
    """Kermany-style sets ship no (or a 16-image) val: carve a stratified one from train.

    Grouped by patient when names carry ids, so one patient never sits in train and val.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    train = [i for i in items if i.split == "train"]
    n_val = sum(i.split == "val" for i in items)
    if not train or n_val >= 0.05 * len(train):
        return items
    groups = [i.patient or i.path for i in train]
    per_class = Counter(i.label for i in train)
    n_splits = min(max(2, round(1 / fraction)), min(per_class.values()))
    if n_splits < 2:
        return items  # too few images to carve from; check_items reports the empty split
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(folds.split(np.zeros(len(train)), [i.label for i in train], groups))
    moved = {train[k].path for k in val_idx}
    return [Item(i.path, i.label, "val", i.patient) if i.path in moved else i for i in items]


def check_items(items: list[Item], classes: list[str] | None = None) -> list[str]:
    """Refuse empty splits, empty classes and labels outside the class list; return classes."""
    counts = Counter((i.split, i.label) for i in items)
    found = sorted({i.label for i in items if i.split == "train"})
    classes = list(classes) if classes else found
    for split in SPLITS:
        if not any(s == split for s, _ in counts):
            raise DataError(f"split '{split}' is empty")
    unknown = sorted({i.label for i in items} - set(classes))
    if unknown:
        raise DataError(f"label(s) {', '.join(unknown)} not in the class list {classes}")
    empty = [c for c in classes if counts[("train", c)] == 0]
    if empty:
        raise DataError(f"class(es) {', '.join(empty)} have no training images")
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes, found {classes}")
    return classes
