"""Prepared-data cache: decode once, store uint8 pixels in Parquet, reuse forever.

The cache key is the content (sha1 of every source file's bytes, with its label and split) plus
the image size, so editing, adding or relabelling a file makes a new cache, and a second load
decodes nothing. Written to a temporary name and renamed, so a crash never leaves half a cache.
Lives on a local path or any pyarrow filesystem URI (s3://bucket/prefix) so every node of a
cluster reads the same prepared data.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from .images import UnreadableImage, read_grey
from .sources import DataError, Item, Skipped, path_text

# Bump when the stored layout or preprocessing changes. 2: 16-bit scaled, EXIF orientation,
# DICOM, reasons stored beside the unreadable paths.
CACHE_VERSION = "2"

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("patient", pa.string()),
        ("sha1", pa.string()),  # of the source file's bytes
        ("pixel_sha1", pa.string()),  # of the decoded, resized pixels
        ("orig_width", pa.int32()),
        ("orig_height", pa.int32()),
        ("orig_mode", pa.string()),
        ("image", pa.binary()),  # img_size * img_size uint8, row-major
    ]
)


def cache_location(root: str | None = None) -> str:
    """Where the prepared-data cache lives: `root`, else $RAY_XRAY_CACHE, else
    ~/.cache/ray_xray; `~` expanded and made absolute (Ray workers run in another directory),
    a URI (s3://...) as given. Resolve it once in the driver and hand workers the result."""
    root = root or os.environ.get("RAY_XRAY_CACHE") or "~/.cache/ray_xray"
    if "://" in root:
        return root
    return str(Path(root).expanduser().resolve())


def default_cache_root() -> str:
    """The prepared-data cache used when none is given: $RAY_XRAY_CACHE, else ~/.cache/ray_xray
    (absolute)."""
    return cache_location(None)


def _fs(root: str) -> tuple[pafs.FileSystem, str]:
    root = cache_location(root)
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    return pafs.LocalFileSystem(), root


def decode(data: bytes, img_size: int, name: str = "") -> tuple[np.ndarray, tuple[int, int], str]:
    """Bytes of an image file -> (grey uint8 img_size x img_size, (w, h) as shown, mode).

    Decoding as `images.read_grey` (EXIF orientation, 16-bit scaled, DICOM); `name` is the
    file's name. Raises UnreadableImage with the one-line reason.
    """
    pixels, orig, mode = read_grey(data, name)
    grey = Image.fromarray(pixels)
    if grey.size != (img_size, img_size):
        # Shorter side to img_size, centre crop: keeps the anatomy's aspect ratio.
        w, h = grey.size
        scale = img_size / min(w, h)
        nw, nh = max(img_size, round(w * scale)), max(img_size, round(h * scale))
        grey = grey.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - img_size) // 2, (nh - img_size) // 2
        grey = grey.crop((left, top, left + img_size, top + img_size))
    return np.asarray(grey, dtype=np.uint8), orig, mode


def read_sources(items: list[Item]) -> tuple[list[bytes], list[str]]:
    """(bytes of each item's file, their SHA-1 hex digests), in item order. Raises DataError (one
    line naming the file) when a file cannot be read."""
    datas, hashes = [], []
    for it in items:
        try:
            data = Path(it.path).read_bytes()
        except OSError as exc:
            raise DataError(f"{path_text(it.path)}: cannot read ({exc.strerror})") from None
        datas.append(data)
        hashes.append(hashlib.sha1(data).hexdigest())
    return datas, hashes


def cache_key(items: list[Item], hashes: list[str], img_size: int) -> str:
    """The cache entry's name: 20 hex digits of a SHA-1 over the cache version, `img_size` and
    each file's (content hash, label, split, file name), in a fixed order, so the same data at
    the same size finds the same entry wherever its folder lives."""
    h = hashlib.sha1(f"v{CACHE_VERSION}/{img_size}".encode())
    for it, sha in sorted(
        zip(items, hashes, strict=True), key=lambda p: (p[1], p[0].split, p[0].path)
    ):
        h.update(f"{sha}|{it.label}|{it.split}|{path_text(Path(it.path).name)}\n".encode())
    return h.hexdigest()[:20]


def build_table(
    items: list[Item], datas: list[bytes], hashes: list[str], img_size: int, skip_bad: bool
) -> tuple[pa.Table, list[str]]:
    """Decode every item -> (table in SCHEMA, `path<TAB>reason` of each unreadable file).

    Paths are stored as path_text gives them. Raises DataError naming the first unreadable
    file unless `skip_bad`.
    """
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    bad = []
    for it, data, sha in zip(items, datas, hashes, strict=True):
        path = path_text(it.path)
        try:
            pixels, (w, h), mode = decode(data, img_size, it.path)
        except UnreadableImage as exc:
            if not skip_bad:
                raise DataError(f"{path}: {exc}; use --skip-bad to leave such files out") from None
            bad.append(f"{path}\t{exc}")
            continue
        for name, value in zip(
            SCHEMA.names,
            (
                path,
                it.label,
                it.split,
                it.patient,
                sha,
                hashlib.sha1(pixels.tobytes()).hexdigest(),
                w,
                h,
                mode,
                pixels.tobytes(),
            ),
            strict=True,
        ):
            rows[name].append(value)
    return pa.Table.from_pydict(rows, schema=SCHEMA), bad


def cached(key: str, build, cache_root: str | None = None, log=print):
    """Return (table, extra lines, location): read `key` from the cache or build and store it.

    `build()` returns (table, extra lines); the lines (e.g. unreadable paths) are kept beside.
    """
    fs, root = _fs(cache_root or default_cache_root())
    target, extra_file = f"{root}/{key}.parquet", f"{root}/{key}.txt"
    if fs.get_file_info(target).type == pafs.FileType.File:
        extra = []
        if fs.get_file_info(extra_file).type == pafs.FileType.File:
            with fs.open_input_stream(extra_file) as fh:
                extra = [line for line in fh.read().decode("utf-8").splitlines() if line]
        return pq.read_table(target, filesystem=fs), extra, target
    log(f"preparing data -> {target}")
    table, extra = build()
    tmp = f"{root}/.{key}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, filesystem=fs)
        if extra:
            with fs.open_output_stream(extra_file) as fh:
                fh.write("\n".join(extra).encode("utf-8"))
        fs.move(tmp, target)  # atomic rename on a local disk; S3 puts are atomic anyway
    finally:
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
    return table, extra, target


def load_or_prepare(
    items: list[Item],
    img_size: int,
    cache_root: str | None = None,
    skip_bad: bool = False,
    log=print,
) -> tuple[pa.Table, list[Skipped], str]:
    """Return (table, unreadable files with the reason, cache location); decodes only on a
    cache miss."""
    datas, hashes = read_sources(items)
    key = cache_key(items, hashes, img_size) + ("-skipbad" if skip_bad else "")
    table, extra, where = cached(
        key, lambda: build_table(items, datas, hashes, img_size, skip_bad), cache_root, log
    )
    bad = []
    for line in extra:
        path, _, reason = line.partition("\t")
        bad.append(Skipped(path, f"unreadable: {reason or 'not a readable image'}"))
    return table, bad, where
