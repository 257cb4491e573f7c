"""What `evaluate` reads: the model (any checkpoint `predict` takes, or a sweep folder) and
the labelled images (any `--data`, plus folders of class sub-folders with no split folders).

Classes are matched by name (after the loader's aliases: `NORMAL`, `TB` ...). A data class the
model does not know is an error; a model class the data lacks makes a partial evaluation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import data_key, load_keyed_data, preprocess
from ..cli import UserError
from ..data.dataset import absolute_spec, load_table, resolve_items
from ..data.sources import (
    SPLITS,
    DataError,
    Item,
    assign_labels,
    is_hidden,
    normalise_label,
    normalise_split,
    patient_id,
)
from ..sweep_folder import model_path

log = logging.getLogger("ray_xray.evaluate")
SPLIT_CHOICES = ("test", "val", "train", "all")


@dataclass
class Subject:
    """The model under evaluation: one record or an ensemble, as lists of members.

    `members`: model records (format ray_xray/1); `weights` sum to 1; `temperatures` divide
    each member's logits (1.0 for a single model). `own_data`: the data spec it was trained on.
    `stored_points`: an ensemble's stored operating-point thresholds ({class: {"spec0.90": t,
    ...}}, `scores.stored_points`; a --cv ensemble's fixed out of fold), {} when it has none.
    """

    path: Path
    kind: str  # "model" | "ensemble"
    name: str
    classes: list[str]
    members: list[dict]
    weights: list[float]
    temperatures: list[float]
    own_data: str | None
    note: str = ""
    stored_points: dict = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        """The distinct input sizes (px) of the members, in member order."""
        return list(dict.fromkeys(preprocess(m)["img_size"] for m in self.members))


@dataclass
class EvalSet:
    """Labelled images of one evaluation set, decoded once per member input size.

    labels: int64 (N,) in the model's class order; views: img_size -> uint8 (N, S, S);
    paths: N source paths (synthetic keys for synthetic data)."""

    name: str
    labels: np.ndarray
    views: dict[int, np.ndarray]
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> EvalSet:
        """The set restricted to the rows `idx` (int indices, in the order given), every view and
        path with them."""
        idx = np.asarray(idx, dtype=np.int64)
        return EvalSet(
            self.name,
            self.labels[idx],
            {s: v[idx] for s, v in self.views.items()},
            [self.paths[i] for i in idx] if self.paths else [],
        )


# ---------------------------------------------------------------- the model


def resolve_subject(checkpoint: str) -> Subject:
    """A model record or ensemble from anything `predict` takes, or a sweep folder (its
    ensemble/ensemble.pt; best_model.pt with a note when the sweep was never ensembled).
    Raises UserError / ValueError with one line."""
    from ..checkpoint import is_ensemble, load_model_or_ensemble

    p = Path(checkpoint).expanduser()
    if not p.exists():
        raise UserError(f"{checkpoint}: no such checkpoint, run, ensemble or sweep folder")
    try:
        p, note = model_path(p)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    obj = load_model_or_ensemble(p)
    if is_ensemble(obj):
        members = list(obj["members"])
        own = obj.get("data") or members[0]["config"].get("data")
        name = f"ensemble_{obj.get('method', '?')}"
        if obj.get("experiment"):
            name += f" of {obj['experiment']}"
        return Subject(
            p,
            "ensemble",
            name,
            list(obj["classes"]),
            members,
            [float(w) for w in obj["weights"]],
            [float(m.get("temperature", 1.0)) for m in members],
            own,
            note,
            dict(obj.get("operating_points") or {}),
        )
    run = p.parent.name if p.is_file() else p.name
    return Subject(
        p,
        "model",
        f"{obj['model']} ({run})",
        list(obj["classes"]),
        [obj],
        [1.0],
        [1.0],
        obj["config"].get("data"),
        note,
    )


def same_data(spec: str, own: str | None) -> bool:
    """Whether `spec` names the data the model was trained on (paths compared resolved)."""
    if not own:
        return False
    return absolute_spec(spec) == absolute_spec(own)


def reachable(spec: str | None) -> bool:
    """Whether the model's own data can be read here (synthetic always can)."""
    if not spec:
        return False
    return spec.startswith("synthetic") or Path(spec).expanduser().exists()


# ---------------------------------------------------------------- the model's own data


def own_sets(
    subject: Subject, splits: list[str], cache: str | None, limit: int | None = None
) -> dict[str, EvalSet]:
    """The model's own splits as its training run saw them (its seed, dedupe ...), one load
    per distinct member setting. `limit`: None keeps the run's limit_per_split (the images it
    trained and validated on); 0 reads every image of each split, since a subset chosen for
    training speed must not silently shrink an evaluation. Raises ValueError when members saw
    different images (then they cannot share one evaluation)."""
    loaded: dict[tuple, object] = {}
    for m in subject.members:
        key = data_key(m)
        if limit is not None:
            key = (key[0], int(limit), *key[2:])
        if key not in loaded:
            loaded[key] = load_keyed_data(subject.own_data, key, subject.classes, cache)
    ref = next(iter(loaded.values()))
    out = {}
    for split in splits:
        names = list(SPLITS) if split == "all" else [split]
        views = {}
        for d in loaded.values():
            labels = np.concatenate([d.labels[s] for s in names])
            ref_labels = np.concatenate([ref.labels[s] for s in names])
            if not np.array_equal(labels, ref_labels):
                raise UserError(
                    "the ensemble's members were trained on different images of "
                    f"{subject.own_data} (limit_per_split/seed differ)"
                )
            views[d.img_size] = np.concatenate([d.images[s] for s in names])
        paths = [p for s in names for p in ref.paths[s]]
        out[split] = EvalSet(f"{subject.own_data} ({split})", ref_labels, views, paths)
    return out


# ---------------------------------------------------------------- any other labelled data


def class_folder_items(root: Path) -> list[Item]:
    """ROOT/<label>/** with no split folders: every image counts as 'test'."""
    from ..data.images import IMAGE_EXTS

    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not is_hidden(d.name)]
    if not dirs or any(normalise_split(d.name) for d in dirs):
        return []
    labels = assign_labels({"test": dirs})
    items = []
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if (
                f.is_file()
                and f.suffix.lower() in IMAGE_EXTS
                and not any(is_hidden(part) for part in f.relative_to(root).parts)
            ):
                items.append(Item(str(f.resolve()), labels[d], "test", patient_id(f.name)))
    return items


def labelled_items(spec: str) -> tuple[list[Item], str]:
    """(items, note) of a folder or manifest CSV, listed without decoding an image. A folder of
    class folders with no split folders gives every image the split 'test' (the note says so).
    Raises DataError when `spec` is neither (missing, or no images in class folders)."""
    try:
        return resolve_items(spec), ""
    except DataError as exc:
        root = Path(spec).expanduser()
        items = class_folder_items(root) if root.is_dir() else []
        if not items and root.is_dir() and not (root / "manifest.csv").is_file():
            raise DataError(
                f"{exc}; nor under <label>/ (class folders, no split folders)"
            ) from None
        if not items:
            raise
        return items, "no split folders: every image counts as test"


def set_classes(spec: str, classes: list[str], whose: str = "the model") -> dict:
    """Which of a model's `classes` the labelled set `spec` holds, from its file list or the
    synthetic task's labels (no image is decoded): {"data_classes", "missing_classes", "note"},
    in the model's class order. Classes match by name as `external_set` matches them;
    `whose` names the owner of `classes` in the error ("the model", "the sweep's data").

    Raises UserError/DataError (one line) for a spec that is not a folder, manifest or known
    synthetic task, a set with no images, or a class the model does not know."""
    from ..data import synthetic

    if spec.startswith("synthetic"):
        try:
            labels, note = list(synthetic.TASKS[synthetic.parse(spec)[0]]), ""
        except ValueError as exc:
            raise UserError(str(exc)) from None
    else:
        items, note = labelled_items(spec)
        labels = [i.label for i in items]
    if not labels:
        raise UserError(f"{spec}: no labelled images")
    index = {normalise_label(c): c for c in classes}
    _unknown(spec, labels, index, classes, whose)
    present = {index[normalise_label(v)] for v in labels}
    return {
        "data_classes": [c for c in classes if c in present],
        "missing_classes": [c for c in classes if c not in present],
        "note": note,
    }


def _unknown(spec: str, labels, index: dict, classes: list[str], whose: str = "the model") -> None:
    unknown = sorted({normalise_label(v) for v in labels} - set(index))
    if unknown:
        raise UserError(
            f"{spec}: class(es) {', '.join(unknown)} unknown to {whose} "
            f"(it knows {', '.join(classes)})"
        )


def _table(spec: str, size: int, split: str, skip_bad: bool, cache: str | None, subject):
    """(prepared table, splits the data has, note) of any data spec at `size` px. Only the
    asked-for split is decoded (an external set's train split is never needed here), after
    its labels are checked against the model's classes."""
    from ..data.cache import load_or_prepare

    if spec.startswith("synthetic"):
        table = load_table(spec, size, skip_bad, cache)[0]
        return table, sorted(set(table.column("split").to_pylist())), ""
    items, note = labelled_items(spec)
    have = sorted({i.split for i in items})
    items = [i for i in items if split == "all" or i.split == split]
    if not items:
        return None, have, note
    index = {normalise_label(c) for c in subject.classes}
    _unknown(spec, [i.label for i in items], dict.fromkeys(index), subject.classes)
    table, _, _ = load_or_prepare(items, size, cache, skip_bad, log=log.info)
    return table, have, note


def external_set(
    spec: str, subject: Subject, split: str, skip_bad: bool = False, cache: str | None = None
) -> tuple[EvalSet, dict]:
    """One split (or all) of any labelled data, at every member input size, in the model's
    class order. Returns (set, info: data_classes, missing_classes, note). Raises UserError
    for an empty split or a class the model does not know."""
    index = {normalise_label(c): k for k, c in enumerate(subject.classes)}
    views, labels, paths, note = {}, None, None, ""
    for size in subject.sizes:
        table, have, note = _table(spec, size, split, skip_bad, cache, subject)
        splits = table.column("split").to_pylist() if table is not None else []
        keep = [i for i, s in enumerate(splits) if split == "all" or s == split]
        if not keep:
            raise UserError(
                f"{spec}: no '{split}' images (splits present: "
                f"{', '.join(have) or 'none'}); choose one with --split, or "
                "--split all"
            )
        names = [normalise_label(v) for v in table.column("label").to_pylist()]
        _unknown(spec, [names[i] for i in keep], index, subject.classes)
        y = np.array([index[names[i]] for i in keep], dtype=np.int64)
        all_paths, blobs = table.column("path").to_pylist(), table.column("image").to_pylist()
        p = [all_paths[i] for i in keep]
        views[size] = np.stack(
            [np.frombuffer(blobs[i], dtype=np.uint8).reshape(size, size) for i in keep]
        )
        if labels is not None and (not np.array_equal(labels, y) or paths != p):
            raise UserError(f"{spec}: images differ between input sizes (unreadable files?)")
        labels, paths = y, p
    present = sorted({subject.classes[k] for k in labels}, key=subject.classes.index)
    missing = [c for c in subject.classes if c not in present]
    info = {"data_classes": present, "missing_classes": missing, "note": note}
    return EvalSet(f"{spec} ({split})", labels, views, paths), info


def run_history(subject: Subject) -> list[dict]:
    """Per-epoch metrics of the `train` run a single model comes from: the `history` in
    metrics.json beside its best_model.pt ([] for an ensemble or a checkpoint without one)."""
    if subject.kind != "model":
        return []
    run = subject.path if subject.path.is_dir() else subject.path.parent
    try:
        history = json.loads((run / "metrics.json").read_text()).get("history")
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []
