"""One image file's bytes -> grey uint8 pixels, read the way the file says to read them.

Pillow formats (PNG, JPEG, BMP, TIFF, WebP ...): EXIF orientation applied first (a phone or
viewer export stored sideways is upright in every viewer, so it must be upright here too), and
images deeper than 8 bits scaled by their real range rather than clipped. DICOM (what X-ray
machines and PACS export) through pydicom: modality LUT, then the VOI LUT or window, MONOCHROME1
inverted, first frame of a multi-frame file. Every failure is an `UnreadableImage` whose message
is one line; Pillow's decompression-bomb limit is kept, and applies to DICOM too.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DICOM_EXTS = frozenset({".dcm", ".dicom"})
# What a folder scan takes as an image by its name; other files are sniffed for DICOM.
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}) | DICOM_EXTS
_DEPTHS = (8, 10, 12, 14, 16)  # bit depths radiographs are stored at


class UnreadableImage(ValueError):
    """A file that cannot be decoded; the message is the one-line reason (without the path)."""


def is_dicom(head: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then `DICM`. `head`: the file's first bytes."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_dicom(path: str | Path) -> bool:
    """Whether the file at `path` is DICOM by content (PACS exports often have no extension)."""
    try:
        with open(path, "rb") as fh:
            return is_dicom(fh.read(132))
    except OSError:
        return False


def read_grey(data: bytes, name: str = "") -> tuple[np.ndarray, tuple[int, int], str]:
    """Bytes of one image file -> (pixels (H, W) uint8, (width, height) as shown, mode).

    `name` (the file name) only helps tell DICOM without a preamble apart. `mode` is Pillow's
    (`L`, `I;16`, `RGB` ...) or `DICOM <photometric> <bits>-bit`. Raises UnreadableImage, with
    the reason, for anything that cannot be decoded (corrupt, truncated, over Pillow's
    decompression-bomb limit, DICOM compressed with a codec that is not installed).
    """
    try:
        if is_dicom(data[:132]) or Path(name).suffix.lower() in DICOM_EXTS:
            return _read_dicom(data)
        return _read_pillow(data)
    except UnreadableImage:
        raise
    except Exception as exc:  # decoders raise anything from OSError to struct.error
        raise UnreadableImage(f"not a readable image ({type(exc).__name__})") from exc


def scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (values outside clip); uint8, same shape."""
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    out = (np.asarray(arr, np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def integer_range(arr: np.ndarray) -> tuple[float, float]:
    """The range deep integer pixels were stored at: 0 .. 2**bits - 1 for the smallest usual
    depth (8, 10, 12, 14, 16 bits) that holds them all, since a 12-bit radiograph saved as a
    16-bit PNG says 16 in its header; the image's own min/max when no such depth fits
    (negative or 32-bit values)."""
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0:
        for bits in _DEPTHS:
            if hi < 2**bits:
                return 0.0, float(2**bits - 1)
    return lo, hi


def _read_pillow(data: bytes) -> tuple[np.ndarray, tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as im:  # raises DecompressionBombError over the limit
        mode = im.mode
        im = ImageOps.exif_transpose(im)  # a transposed copy, fully loaded
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float: scale, never clip
        arr = np.asarray(im)
        if mode == "F" or not np.issubdtype(arr.dtype, np.integer):
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        else:
            lo, hi = integer_range(arr)
        return scale_to_uint8(arr, lo, hi), im.size, mode
    return np.asarray(im.convert("L"), dtype=np.uint8), im.size, mode


def _read_dicom(data: bytes) -> tuple[np.ndarray, tuple[int, int], str]:
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "PixelData" not in ds:
        raise UnreadableImage("DICOM file holds no image (no PixelData)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if Image.MAX_IMAGE_PIXELS and rows * cols > 2 * Image.MAX_IMAGE_PIXELS:
        raise UnreadableImage("not a readable image (DecompressionBombError)")
    _check_decoder(ds)
    frames = int(ds.get("NumberOfFrames") or 1)
    arr = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    mode = f"DICOM {photometric} {bits}-bit"
    if photometric == "PALETTE COLOR":
        arr, photometric = apply_color_lut(arr, ds), "RGB"
        bits = 16 if arr.dtype == np.uint16 else 8
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # RGB (YBR comes back as RGB)
        rgb = scale_to_uint8(arr, 0, 2**bits - 1)
        return np.asarray(Image.fromarray(rgb, "RGB").convert("L")), (cols, rows), mode
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    values = apply_modality_lut(arr, ds)  # stored values -> e.g. Hounsfield units
    lo, hi = _range(apply_modality_lut(stored, ds))
    if _has_voi(ds):
        values = apply_voi_lut(values, ds, prefer_lut=True)
        lo, hi = _voi_range(ds)
    grey = scale_to_uint8(values, lo, hi)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        grey = 255 - grey
    return grey, (cols, rows), mode


def _check_decoder(ds) -> None:
    """Refuse, in one line, pixel data compressed with a codec no installed plugin decodes."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:  # a bare dataset without the Part 10 header
        implicit, little = ds.original_encoding
        if not little:
            raise UnreadableImage("DICOM without a transfer syntax, in big-endian encoding")
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    uid = meta.TransferSyntaxUID
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnreadableImage(
            f"DICOM compressed as {uid.name}: pydicom has no decoder for it"
        ) from None
    if not decoder.is_available:
        raise UnreadableImage(
            f"DICOM compressed as {uid.name} ({uid}) needs a decoder that is not installed: "
            + "; or ".join(decoder.missing_dependencies)
        )


def _range(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.min()), float(values.max())


def _has_voi(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    return lut or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_range(ds) -> tuple[float, float]:
    """Output range of the VOI transform apply_voi_lut applied: the LUT's own values, or the
    window's (below the window pydicom gives its lowest output, above it its highest)."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        entries, first, _ = (int(v) for v in seq[0].LUTDescriptor)
        every_input = np.arange(first, first + (entries or 2**16), dtype=np.int64)
        return _range(apply_voi_lut(every_input, ds, prefer_lut=True))
    with np.errstate(over="ignore"):  # SIGMOID's exp() at the probes
        return _range(apply_voi_lut(np.array([-1e30, 1e30]), ds, prefer_lut=True))
