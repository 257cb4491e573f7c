"""Data audit: counts, exact and near duplicates within and across splits, label conflicts,
patient overlap, unreadable files. Public chest X-ray sets are dirty; we look before training.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import cv2
import numpy as np
import pyarrow as pa

from .sources import SPLITS, Skipped, skipped_summary

# Cosine similarity of mean-centred 32x32 thumbnails (also against the mirror image).
# 0.98 is the threshold ../shared/data was de-duplicated with; see README for measured rates.
NEAR_THRESHOLD = 0.98
THUMB = 32


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, 32*32) unit vectors of mean-centred area-averaged thumbnails."""
    t = np.stack([cv2.resize(im, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for im in images])
    t = t.reshape(len(images), -1).astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)


def near_pairs(images: np.ndarray, splits: np.ndarray, threshold: float, cross_only: bool):
    """Index pairs (i < j) whose thumbnails (or one's mirror) have cosine >= threshold."""
    v = thumbnails(images)
    side = int(np.sqrt(v.shape[1]))
    mirror = v.reshape(-1, side, side)[:, :, ::-1].reshape(len(v), -1)
    pairs = []
    for start in range(0, len(v), 1024):  # blocks keep memory flat on big sets
        block = v[start : start + 1024]
        sim = np.maximum(block @ v.T, block @ mirror.T)
        for bi, j in zip(*np.nonzero(sim >= threshold), strict=True):
            i = start + bi
            if i < j and (not cross_only or splits[i] != splits[j]):
                pairs.append((int(i), int(j), float(sim[bi, j])))
    return pairs


def _groups(table: pa.Table, column: str) -> list[list[int]]:
    by = defaultdict(list)
    for i, h in enumerate(table.column(column).to_pylist()):
        by[h].append(i)
    return [idx for idx in by.values() if len(idx) > 1]


def audit(
    table: pa.Table,
    unreadable: list[str] | None = None,
    near_threshold: float = NEAR_THRESHOLD,
    skipped: list[Skipped] | None = None,
) -> dict:
    """The findings as a JSON-able dict. `skipped`: every file not used, with its reason
    (load_table's `skipped`), reported as `skipped` (a list) and `skipped_summary` (one line)."""
    path = table.column("path").to_pylist()
    split = table.column("split").to_pylist()
    label = table.column("label").to_pylist()
    patient = table.column("patient").to_pylist()

    def describe(idx):
        return [{"path": path[i], "split": split[i], "label": label[i]} for i in idx]

    counts = {
        s: dict(
            sorted(Counter(lab for lab, sp in zip(label, split, strict=True) if sp == s).items())
        )
        for s in SPLITS
    }
    exact = _groups(table, "sha1")
    pixel = [g for g in _groups(table, "pixel_sha1") if g not in exact]
    dup_groups = exact + pixel
    cross = [describe(g) for g in dup_groups if len({split[i] for i in g}) > 1]
    conflicts = [describe(g) for g in dup_groups if len({label[i] for i in g}) > 1]
    within = sum(len(g) - 1 for g in dup_groups if len({split[i] for i in g}) == 1)
    near = _near_not_identical(table, split, dup_groups, near_threshold)
    by_patient = defaultdict(set)
    for p, s in zip(patient, split, strict=True):
        if p:
            by_patient[p].add(s)
    overlap = sorted(p for p, s in by_patient.items() if len(s) > 1)
    return {
        "images": len(path),
        "counts": counts,
        "exact_duplicates_within_split": within,
        "cross_split_duplicates": cross,
        "conflicting_label_duplicates": conflicts,
        "near_duplicates_cross_split": [
            {
                "a": path[i],
                "a_split": split[i],
                "b": path[j],
                "b_split": split[j],
                "similarity": round(s, 4),
            }
            for i, j, s in near
        ],
        "near_threshold": near_threshold,
        "patients": len(by_patient),
        "patient_overlap_cross_split": overlap,
        "unreadable": list(unreadable or []),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped or []],
        "skipped_summary": skipped_summary(list(skipped or [])),
        "image_sizes": _image_sizes(table),
    }


def _pixels(table: pa.Table) -> np.ndarray:
    """The cached square grey images as uint8 (N, S, S); (0, 1, 1) for an empty table."""
    n = table.num_rows
    if not n:
        return np.zeros((0, 1, 1), np.uint8)
    side = int(np.sqrt(len(table.column("image")[0].as_py())))
    flat = np.frombuffer(b"".join(table.column("image").to_pylist()), dtype=np.uint8)
    return flat.reshape(n, side, side)


def _near_not_identical(
    table: pa.Table, split: list[str], dup_groups: list[list[int]], threshold: float
) -> list[tuple[int, int, float]]:
    """Cross-split near-duplicate pairs (i, j, similarity) (`near_pairs` at `threshold`), less
    the pairs already reported as identical files or pixels (`dup_groups`)."""
    if not table.num_rows:
        return []
    near = near_pairs(_pixels(table), np.array(split), threshold, cross_only=True)
    # Identical files are already reported: near-duplicates are the *other* copies.
    same = {frozenset((i, j)) for g in dup_groups for i in g for j in g if i != j}
    return [(i, j, s) for i, j, s in near if frozenset((i, j)) not in same]


def _image_sizes(table: pa.Table) -> dict[str, int]:
    """The ten most common original sizes and modes ("1024x1024 L": count)."""
    sizes = Counter(
        f"{w}x{h} {m}"
        for w, h, m in zip(
            table.column("orig_width").to_pylist(),
            table.column("orig_height").to_pylist(),
            table.column("orig_mode").to_pylist(),
            strict=True,
        )
    )
    return dict(sizes.most_common(10))


def format_report(report: dict, source: str) -> str:
    """`audit`'s findings as the table `python -m ray_xray.audit` prints: counts per label and
    split, then duplicates, conflicts, near-duplicates, patient overlap, unreadable and skipped
    files, image sizes."""
    labels = sorted({lab for c in report["counts"].values() for lab in c})
    width = max([len(lab) for lab in labels] + [8])
    lines = [f"audit of {source}: {report['images']} images", ""]
    lines.append(f"{'label':<{width}} " + " ".join(f"{s:>7}" for s in SPLITS) + "   total")
    for lab in labels:
        row = [report["counts"][s].get(lab, 0) for s in SPLITS]
        lines.append(f"{lab:<{width}} " + " ".join(f"{v:>7}" for v in row) + f" {sum(row):>7}")
    totals = [sum(report["counts"][s].values()) for s in SPLITS]
    lines.append(
        f"{'total':<{width}} " + " ".join(f"{v:>7}" for v in totals) + f" {sum(totals):>7}"
    )
    lines.append("")

    def flag(name, value, bad=True):
        mark = "!!" if bad and value else "ok"
        lines.append(f"  [{mark}] {name}: {value}")

    flag("exact duplicates within a split", report["exact_duplicates_within_split"], bad=False)
    flag("exact duplicate groups across splits", len(report["cross_split_duplicates"]))
    flag("duplicate groups with different labels", len(report["conflicting_label_duplicates"]))
    flag(
        f"near-duplicate pairs across splits (cos >= {report['near_threshold']})",
        len(report["near_duplicates_cross_split"]),
    )
    flag(
        f"patients sharing splits (of {report['patients']} with ids)",
        len(report["patient_overlap_cross_split"]),
    )
    flag("unreadable files", len(report["unreadable"]))
    for p in report["unreadable"][:10]:
        lines.append(f"       {p}")
    skipped = report.get("skipped", [])
    # Hidden files are never data: counted, listed by --json only. Every other skipped file
    # may be an image the user expected to be used, so each is named with its reason.
    shown = [s for s in skipped if s["reason"] != "hidden"]
    lines.append(
        f"  [{'!!' if shown else 'ok'}] {report.get('skipped_summary', 'skipped: 0 files')}"
    )
    for s in shown:
        lines.append(f"       {s['path']}  ({s['reason']})")
    if len(shown) < len(skipped):
        lines.append(
            f"       ({len(skipped) - len(shown)} hidden files: names starting with '.' "
            "or under __MACOSX are never data; --json lists them)"
        )
    for g in report["cross_split_duplicates"][:5]:
        lines.append("       " + "  ==  ".join(f"{m['split']}/{m['label']}:{m['path']}" for m in g))
    for p in report["near_duplicates_cross_split"][:5]:
        lines.append(
            f"       {p['a_split']}:{p['a']} ~ {p['b_split']}:{p['b']} ({p['similarity']})"
        )
    lines.append(
        "  image sizes (original): "
        + ", ".join(f"{k} x{v}" for k, v in report["image_sizes"].items())
    )
    return "\n".join(lines)
