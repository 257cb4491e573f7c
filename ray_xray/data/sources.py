"""Where images come from: a folder tree, a manifest CSV, or the built-in synthetic generator.

Every source becomes a list of `Item`s (path, label, split, patient); everything downstream
(cache, audit, training) works on that list only.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli import OUTSIDE_DATA_ENV
from .images import IMAGE_EXTS, sniff_dicom

log = logging.getLogger("ray_xray.data")
SPLITS = ("train", "val", "test")
# Never data: names starting with "." (macOS ._name AppleDouble files, .DS_Store, .git) and
# the __MACOSX folder macOS zips carry.
JUNK_DIRS = frozenset({"__MACOSX"})

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

# Folder names seen in public chest X-ray and brain MRI sets -> one canonical label.
_LABEL_ALIASES = {
    "normal": "normal",
    "no_finding": "normal",
    "healthy": "normal",
    "pneumonia": "pneumonia",
    "viral_pneumonia": "pneumonia",
    "bacterial_pneumonia": "pneumonia",
    "lung_opacity": "pneumonia",
    "tb": "tuberculosis",
    "tuberculosis": "tuberculosis",
    "covid": "covid",
    "covid19": "covid",
    "covid_19": "covid",
    "notumor": "notumor",
    "no_tumor": "notumor",
    "no_tumour": "notumor",
    "notumour": "notumor",
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
}

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
    """One labelled image file before decoding: where it is, its label and split as the folder
    or manifest gives them, and the patient id its name carries."""

    path: str  # absolute path, or `synthetic:<name>/<index>`
    label: str
    split: str
    patient: str = ""  # "" when the name carries no patient id


@dataclass(frozen=True)
class Skipped:
    """A file under a data folder that is not used, and why."""

    path: str  # as path_text() gives it
    reason: str  # "hidden", "not an image file (.txt)", "unreadable: <why>" ...

    @property
    def kind(self) -> str:
        """The reason without its detail: what the count line groups by."""
        return self.reason.split(" (")[0].split(":")[0]


def skipped_summary(skipped: list[Skipped]) -> str:
    """`skipped: N files (a hidden, b not an image file ...)`, also for N = 0."""
    kinds = Counter(s.kind for s in skipped)
    detail = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return f"skipped: {len(skipped)} files" + (f" ({detail})" if detail else "")


def path_text(path: str) -> str:
    """`path` as valid UTF-8 text (Parquet, JSON and the console need it).

    Python keeps a file name's non-UTF-8 bytes as lone surrogates ('\\udce9'); they become
    `\\xe9`, which path_from_text turns back into the byte. Other paths are returned as is.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_from_text(text: str) -> str:
    """Inverse of path_text: a path that opens the file path_text was given."""
    if "\\x" not in text or os.path.lexists(text):
        return text
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))
    return os.fsdecode(raw)


def folder_key(name: str) -> str:
    """A folder name as a label before aliases: `Viral Pneumonia` -> `viral_pneumonia`."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def normalise_label(name: str) -> str:
    """A class folder's or manifest label's canonical name: `folder_key`'s form, then the known
    spelling of that class (`No Finding` -> normal, `TB` -> tuberculosis, `no_tumor` ->
    notumor); unknown names are kept in `folder_key`'s form."""
    key = folder_key(name)
    return _LABEL_ALIASES.get(key, key)


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is never data: dot-files (macOS `._x.png`, `.DS_Store`) and
    junk folders such as `__MACOSX`."""
    return name.startswith(".") or name in JUNK_DIRS


def normalise_split(name: str) -> str | None:
    """`train`, `val` or `test` for a split folder's name in any of its usual spellings
    (`Training`, `validation`, `Testing` ...); None for any other name."""
    return _SPLIT_ALIASES.get(name.strip().lower())


def patient_id(name: str) -> str:
    """The patient id a file name carries, lower case, by the Kermany naming patterns
    (`person12_bacteria_45.jpeg` -> "person12_bacteria", `NORMAL2-IM-0115-0001.jpeg` ->
    "normal2-im-0115"); "" when it carries none. Validation carving and CV folds group by it."""
    stem = Path(name).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.search(stem)
        if match:
            return match.group(1).lower()
    return ""


# Set to 1 by --allow-outside-data (ray_xray/cli.py): manifests that name a shared image store
# outside their folder, or links out of the data folder, are then read. An environment
# variable, so Ray's workers (which inherit the driver's environment) read the data the same way.


def check_inside(path: Path, root: Path, where: str) -> None:
    """Refuse (DataError, one line) an image file `path` whose real location (links followed)
    is outside the data folder `root`, unless $RAY_XRAY_ALLOW_OUTSIDE_DATA is 1: a manifest
    row `../../etc/passwd`, an absolute path or a link out of the folder was opened and decoded.
    `where`: how the message names the source (a manifest line, a link)."""
    if os.environ.get(OUTSIDE_DATA_ENV) == "1":
        return
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise DataError(
            f"{where}: {path_text(real)} is outside the data folder {path_text(top)}; "
            "pass --allow-outside-data if the data really lives elsewhere"
        )


def scan_folder(root: str | Path) -> list[Item]:
    """The images of a folder tree (see `scan`), without the list of skipped files."""
    return scan(root)[0]


def scan(root: str | Path) -> tuple[list[Item], list[Skipped]]:
    """`ROOT/{train,val,test}/<label>/**` -> (items, every other file and why it is skipped).

    Split and label folder names are matched loosely (`Training`, `NORMAL`, `TB`); images may
    sit in sub-folders of a class folder. Hidden names (`.x`, `__MACOSX`) are never data.
    Raises DataError when there is no such folder, when two folders are the same split, or
    when nothing in it is an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    skipped: list[Skipped] = []

    def skip(path: Path, reason: str) -> None:
        skipped.append(Skipped(path_text(str(path)), reason))

    folders = _class_folders(root, skip)
    labels = assign_labels(folders)
    items = []
    for split, dirs in folders.items():
        for d in dirs:
            for f, hidden in _walk(d):
                if hidden:
                    skip(f, "hidden")
                elif not f.is_file():
                    skip(f, "not a regular file")
                elif f.suffix.lower() in IMAGE_EXTS or sniff_dicom(f):
                    check_inside(f, root, f"{path_text(str(f))} (a link)")
                    items.append(Item(str(f.resolve()), labels[d], split, patient_id(f.name)))
                else:
                    skip(f, f"not an image file ({f.suffix.lower() or 'no extension'})")
    if not items:
        hint = [str(d) for d in sorted(root.iterdir()) if d.is_dir() and _class_folders(d, None)]
        raise DataError(
            f"{root}: no images under {{train,val,test}}/<label>/ ({skipped_summary(skipped)})"
            + (f"; the splits are one level down: --data {hint[0]}" if hint else "")
        )
    return items, skipped


def _class_folders(root: Path, skip: Callable | None) -> dict[str, list[Path]]:
    """{split: its class folders}; what is neither goes to `skip` (None: just look)."""
    splits: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        split = (
            normalise_split(entry.name) if entry.is_dir() and not is_hidden(entry.name) else None
        )
        if split is None:
            if skip:
                _skip_tree(entry, "not under a split folder (train/val/test)", skip)
        elif split in splits:
            raise DataError(f"{splits[split]} and {entry} are both split '{split}': keep one")
        else:
            splits[split] = entry
    folders: dict[str, list[Path]] = {}
    for split, split_dir in splits.items():
        folders[split] = []
        for entry in sorted(split_dir.iterdir()):
            if entry.is_dir() and not is_hidden(entry.name):
                folders[split].append(entry)
            elif skip:
                _skip_tree(entry, "not inside a class folder", skip)
    return folders


def _skip_tree(entry: Path, reason: str, skip: Callable) -> None:
    if not entry.is_dir():
        skip(entry, "hidden" if is_hidden(entry.name) else reason)
        return
    for f, hidden in _walk(entry):
        skip(f, "hidden" if hidden or is_hidden(entry.name) else reason)


def _walk(top: Path) -> Iterator[tuple[Path, bool]]:
    """Every file under `top`, sorted, and whether a name below `top` on its way is hidden.
    Linked folders are followed, each real folder once (a link loop ends)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        here = Path(dirpath)
        hidden_dir = any(is_hidden(part) for part in here.relative_to(top).parts)
        for name in sorted(filenames):
            yield here / name, hidden_dir or is_hidden(name)


def assign_labels(folders: dict[str, list[Path]]) -> dict[Path, str]:
    """Class folder -> label. Loose names (`NORMAL` -> normal, `Viral Pneumonia` -> pneumonia)
    only where that merges nothing: when two folders of one split read as the same class
    (`Bacterial Pneumonia`, `Viral Pneumonia`), those keep their own names in every split."""
    clash: dict[str, set[str]] = defaultdict(set)
    for dirs in folders.values():
        by_label = defaultdict(set)
        for d in dirs:
            by_label[normalise_label(d.name)].add(folder_key(d.name))
        for label, keys in by_label.items():
            if len(keys) > 1:
                clash[label] |= keys
    for label, keys in clash.items():
        log.warning("class folders %s would all read as '%s': kept apart", sorted(keys), label)
    return {
        d: folder_key(d.name) if normalise_label(d.name) in clash else normalise_label(d.name)
        for dirs in folders.values()
        for d in dirs
    }


def read_manifest(csv_path: str | Path) -> list[Item]:
    """A CSV with at least `file,label,split`; `file` relative to the CSV's folder.

    Read as UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such manifest")
    base = csv_path.parent
    items = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames:  # "file, label" with a space after the comma reads the same
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        missing = {"file", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
        for lineno, row in enumerate(reader, start=2):
            split = normalise_split(row["split"] or "")
            if split is None:
                raise DataError(f"{csv_path}:{lineno}: unknown split {row['split']!r}")
            path = (base / row["file"]).resolve()
            check_inside(path, base, f"{csv_path}:{lineno}: file {row['file']!r}")
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
