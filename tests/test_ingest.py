"""Real-world image folders (issue #17): every file read as its format says, DICOM included,
nothing merged or dropped in silence. Inputs are generated here, small; no Ray except the one
smoke sweep marked slow_ray."""

import io
import json
import os
import subprocess
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_xray import checkpoint
from ray_xray.data import DataError, load_data, load_table
from ray_xray.data.audit import audit, format_report
from ray_xray.data.cache import cache_location, decode
from ray_xray.data.images import UnreadableImage, read_grey
from ray_xray.data.sources import path_from_text, read_manifest, scan
from ray_xray.data.synthetic import render

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("normal", "pneumonia", "tuberculosis")
PER_SPLIT = {"train": 6, "val": 3, "test": 3}  # the base: 36 images


def picture(label: str = "normal", k: int = 1, size: int = 64) -> np.ndarray:
    """A synthetic radiograph, uint8, kept below 255 so clipping would show."""
    return np.rint(render(label, k, size).astype(np.float64) * 240 / 255).astype(np.uint8)


def base_tree(root: Path, folders=None, sub=None, ext="png") -> Path:
    """ROOT/{train,val,test}/<folder>/*.png, 6/3/3 per class; `sub`: how many of each folder's
    images go into its sub-folder batch_2/."""
    k = 0
    for split, n in PER_SPLIT.items():
        for label in folders or CLASSES:
            d = root / split / label
            for i in range(n):
                k += 1
                where = d / "batch_2" if sub and i >= n - sub else d
                where.mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture(CLASSES[k % 3], k)).save(where / f"img_{k}.{ext}")
    return root


def counts(spec: str, **kw) -> dict:
    return load_data(spec, 32, **kw).counts()


def run_cli(module: str, *args, cwd=REPO, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# A. The decoder reads pixels the way the file says ------------------------------------------


@pytest.mark.parametrize("factor", [16, 257])
def test_16_bit_png_is_scaled_not_clipped(factor):
    """A 12-bit radiograph stored as 16-bit PNG (x16), and full 16-bit (x257)."""
    orig = picture(size=96)
    deep = orig.astype(np.uint16) * factor
    assert Image.open(io.BytesIO(png_bytes(deep))).mode == "I;16"
    got, _, mode = decode(png_bytes(deep), 96)
    assert mode == "I;16"
    assert (got == 255).mean() < 0.01
    assert np.abs(got.astype(int) - orig).mean() <= 2


def test_16_bit_tiff_and_unknown_depth_use_the_images_range():
    orig = picture(size=64)
    buf = io.BytesIO()
    Image.fromarray(orig.astype(np.uint16) * 16).save(buf, "TIFF")
    got, _, _ = read_grey(buf.getvalue())
    assert np.abs(got.astype(int) - orig).mean() <= 2
    # 32-bit float: no bit depth to go by, so its own min/max.
    buf = io.BytesIO()
    Image.fromarray(orig.astype(np.float32) * 1000.0 - 5.0).save(buf, "TIFF")
    got, _, mode = read_grey(buf.getvalue())
    assert mode == "F" and got.min() == 0 and got.max() == 255


def test_exif_orientation_is_applied():
    upright = picture(size=96)[:, 16:80]  # 96 high, 64 wide: a turn shows in the size too
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # sideways on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    sideways, control = io.BytesIO(), io.BytesIO()
    stored.save(sideways, "JPEG", quality=95, exif=exif)
    Image.fromarray(upright).save(control, "JPEG", quality=95)
    got, size, _ = read_grey(sideways.getvalue())
    ref, _, _ = read_grey(control.getvalue())
    assert size == (64, 96) and got.shape == upright.shape
    assert np.abs(got.astype(int) - upright).mean() < 2
    assert np.abs(ref.astype(int) - upright).mean() < 2  # the control: JPEG's own loss


@pytest.mark.parametrize("fmt, ext", [("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_other_pillow_formats_in_a_folder_are_read(tmp_path, fmt, ext):
    root = base_tree(tmp_path / "d")
    extra = root / "train" / "normal" / f"extra.{ext}"
    Image.fromarray(picture()).save(extra, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    items, skipped = scan(root)
    assert str(extra.resolve()) in {i.path for i in items} and skipped == []
    assert counts(str(root))["train"]["normal"] == 7


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric="MONOCHROME2",
    bits=12,
    window=None,
    syntax=None,
    pixel_data=None,
) -> Path:
    """A DX DICOM file (Part 10) of uint16 `stored` (H, W) or frames (F, H, W), via pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation as DX
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DX, generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "anon"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixel_data if pixel_data is not None else stored.astype("<u2").tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def window_8bit(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out independently."""
    y = ((x.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return np.rint(y * 255).astype(np.uint8)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("window", [None, (1500, 1000)])
def test_dicom_12_bit_in_16_with_and_without_window(tmp_path, photometric, window):
    stored = picture(size=48).astype(np.uint16) * 16 + 7  # 12-bit values, 7..3847
    path = write_dicom(tmp_path / "x.dcm", stored, photometric, 12, window)
    got, size, mode = read_grey(path.read_bytes())
    if window:
        expected = window_8bit(stored, *window)
    else:  # no window: the 12-bit range the file declares
        expected = np.rint(stored.astype(np.float64) * 255 / 4095).astype(np.uint8)
    if photometric == "MONOCHROME1":  # 0 is white
        expected = 255 - expected
    assert size == (48, 48) and mode == f"DICOM {photometric} 12-bit"
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_dicom_multiframe_gives_the_first_frame_and_folders_take_dicom(tmp_path):
    first, second = picture("normal", 1, 32), picture("pneumonia", 2, 32)
    frames = np.stack([first, second]).astype(np.uint16) * 16
    path = write_dicom(tmp_path / "multi.dcm", frames)
    got, _, _ = read_grey(path.read_bytes())
    assert np.abs(got.astype(int) - first).max() <= 1
    # In a class folder: .dcm, and DICOM without an extension (PACS exports), are data.
    root = base_tree(tmp_path / "d")
    write_dicom(root / "train" / "normal" / "a.dcm", frames[0])
    write_dicom(root / "train" / "normal" / "IM000001", frames[1])
    assert counts(str(root))["train"]["normal"] == 8


def test_dicom_with_a_codec_not_installed_is_refused_in_one_line(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    root = base_tree(tmp_path / "d")
    bad = write_dicom(
        root / "val" / "normal" / "ls.dcm",
        np.zeros((8, 8), np.uint16),
        syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8\xff\xf7"]),
    )
    with pytest.raises(DataError) as err:
        load_data(str(root), 32)
    msg = str(err.value)
    assert msg.startswith(f"{bad.resolve()}: DICOM compressed as JPEG-LS Lossless")
    assert "not installed" in msg and "pylibjpeg" in msg and "\n" not in msg
    skipped = []
    load_table(str(root), 32, skip_bad=True, skipped=skipped)
    assert [(s.path, s.kind) for s in skipped] == [(str(bad.resolve()), "unreadable")]


def tiny_record(img_size=32):
    import torch

    from ray_xray.config import TrainConfig
    from ray_xray.inference import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(model="cnn", img_size=img_size)
    return checkpoint.model_record(build_model(cfg, 2), cfg, ["normal", "pneumonia"], 0.4, 0.2, {})


def test_predict_reads_16_bit_png_and_dicom_as_their_8_bit_original(tmp_path):
    from ray_xray import predict

    orig = picture(size=64)
    files = {"8.png": orig, "16.png": orig.astype(np.uint16) * 16}
    for name, arr in files.items():
        Image.fromarray(arr).save(tmp_path / name)
    write_dicom(tmp_path / "x.dcm", orig.astype(np.uint16) * 16)
    paths = [str(tmp_path / n) for n in ("8.png", "16.png", "x.dcm")]
    rows = predict.predict(tiny_record(), paths, "cpu")
    p = [r["probabilities"]["normal"] for r in rows]
    assert abs(p[1] - p[0]) < 0.01 and abs(p[2] - p[0]) < 0.01


# B. Bad files: one line, exit 2 -------------------------------------------------------------


def bomb_png(path: Path, width=14000, height=13000) -> Path:
    """A PNG whose header says width x height (over Pillow's limit), a few bytes on disk."""
    data = bytearray(png_bytes(np.zeros((8, 8), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_unreadable_not_a_crash(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    root = base_tree(tmp_path / "d")
    bomb = bomb_png(root / "train" / "pneumonia" / "huge.png")
    with pytest.raises(UnreadableImage, match=r"^not a readable image \(DecompressionBombError\)$"):
        read_grey(bomb.read_bytes())
    assert Image.MAX_IMAGE_PIXELS == limit  # the safety limit is kept, not raised
    # train: one line naming the file
    with pytest.raises(DataError) as err:
        load_data(str(root), 32)
    assert str(err.value).startswith(f"{bomb.resolve()}: not a readable image (Decompression")
    # audit: listed as unreadable, exit 0
    r = run_cli("ray_xray.audit", root, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["unreadable"] == [str(bomb.resolve())] and report["images"] == 36
    # predict: exit 2, one line
    from ray_xray import predict

    with pytest.raises(ValueError) as err:
        predict.predict(tiny_record(), [str(bomb)], "cpu")
    assert str(err.value) == f"{bomb}: not a readable image (DecompressionBombError)"


def test_predict_cli_bomb_is_one_error_line(tmp_path):

    checkpoint.atomic_save(tiny_record(), tmp_path / "best_model.pt")
    bomb = bomb_png(tmp_path / "huge.png")
    r = run_cli("ray_xray.predict", tmp_path / "best_model.pt", bomb, "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {bomb}: not a readable image (DecompressionBombError)"


def test_a_non_utf8_file_name_loads_and_round_trips(tmp_path):
    root = base_tree(tmp_path / "d")
    odd = root / "train" / "normal" / os.fsdecode(b"caf\xe9.png")
    Image.fromarray(picture("normal", 99)).save(odd)
    d = load_data(str(root), 32)
    assert d.counts()["train"]["normal"] == 7
    stored = [p for p in d.paths["train"] if "caf" in p]
    assert stored == [str(odd.resolve()).replace("\udce9", "\\xe9")]
    assert Path(path_from_text(stored[0])).read_bytes() == odd.read_bytes()
    r = run_cli("ray_xray.audit", root)  # printed, not a UnicodeEncodeError
    assert r.returncode == 0 and "audit of" in r.stdout, r.stderr


# C. The folder scan: junk is not data, and nothing vanishes without a word -------------------


def test_hidden_files_and_folders_are_never_data(tmp_path):
    root = base_tree(tmp_path / "d")
    for img in list(root.rglob("*.png")):  # AppleDouble files beside every image
        (img.parent / f"._{img.name}").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    (root / "train" / "normal" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / ".hidden_class").mkdir()
    Image.fromarray(picture()).save(root / "train" / ".hidden_class" / "x.png")
    (root / "__MACOSX" / "train" / "normal").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "normal" / "._img_1.png").write_bytes(b"\x00\x05\x16\x07")
    skipped = []
    table, bad, _ = load_table(str(root), 32, skip_bad=False, skipped=skipped)
    report = audit(table, bad, skipped=skipped)
    assert sorted({lab for c in report["counts"].values() for lab in c}) == list(CLASSES)
    assert report["unreadable"] == [] and report["images"] == 36
    assert report["skipped_summary"] == "skipped: 39 files (39 hidden)"
    assert "[ok] skipped: 39 files (39 hidden)" in format_report(report, "d")


def test_distinct_class_folders_are_not_merged(tmp_path):
    folders = ("Normal", "Bacterial Pneumonia", "Viral Pneumonia")
    root = base_tree(tmp_path / "d", folders=folders)
    d = load_data(str(root), 32)
    assert d.classes == ["bacterial_pneumonia", "normal", "viral_pneumonia"]
    assert d.counts() == {s: dict.fromkeys(d.classes, n) for s, n in PER_SPLIT.items()}
    # Unambiguous loose names still match: one folder per class in each split.
    root2 = base_tree(tmp_path / "e", folders=("NORMAL", "Viral Pneumonia", "TB"))
    assert load_data(str(root2), 32).classes == list(CLASSES)


def test_subfolders_are_read_and_every_skipped_file_is_listed(tmp_path, caplog):
    root = base_tree(tmp_path / "d", sub=4)  # train: 2 per class on top, 4 in batch_2/
    assert counts(str(root))["train"] == dict.fromkeys(CLASSES, 6)
    (root / "train" / "normal" / "notes.txt").write_text("reader's notes")
    (root / "train" / "loose.png").write_bytes(png_bytes(picture()))
    (root / "extra" / "normal").mkdir(parents=True)  # a split name the scan does not know
    (root / "extra" / "normal" / "e.png").write_bytes(png_bytes(picture()))
    r = run_cli("ray_xray.audit", root)
    assert r.returncode == 0, r.stderr
    summary = (
        "skipped: 3 files (1 not under a split folder, 1 not inside a class folder, "
        "1 not an image file)"
    )
    assert f"[!!] {summary}" in r.stdout
    for name, reason in (
        ("e.png", "not under a split folder (train/val/test)"),
        ("loose.png", "not inside a class folder"),
        ("notes.txt", "not an image file (.txt)"),
    ):
        assert any(name in line and f"({reason})" in line for line in r.stdout.splitlines())
    caplog.set_level("INFO", logger="ray_xray.data")
    load_data(str(root), 32)
    assert summary in caplog.text  # training logs the same count


def test_two_folders_for_one_split_are_refused(tmp_path):
    root = base_tree(tmp_path / "d")
    (root / "Validation" / "normal").mkdir(parents=True)
    with pytest.raises(DataError, match="are both split 'val'") as err:
        scan(root)
    assert f"{root / 'Validation'} and {root / 'val'}" in str(err.value)


# D. Excel's "CSV UTF-8" ---------------------------------------------------------------------


def test_manifest_with_a_byte_order_mark_reads_like_the_plain_one(tmp_path):
    root = base_tree(tmp_path / "d")
    rows = ["file,label,split"] + [
        f"{p.relative_to(root).as_posix()},{p.parent.name},{p.parent.parent.name}"
        for p in sorted(root.rglob("*.png"))
    ]
    (root / "plain.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "excel.csv").write_text("\r\n".join(rows) + "\r\n", encoding="utf-8-sig")
    assert (root / "excel.csv").read_bytes().startswith(b"\xef\xbb\xbffile,label,split")
    plain, excel = read_manifest(root / "plain.csv"), read_manifest(root / "excel.csv")
    assert len(excel) == 36 and excel == plain


# E. The cache location is resolved like --data and --storage ---------------------------------


def test_cache_location_is_expanded_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_location("relcache") == str(tmp_path / "relcache")
    assert cache_location("~/xray-cache") == str(tmp_path / "home" / "xray-cache")
    assert cache_location("s3://bucket/prefix") == "s3://bucket/prefix"
    monkeypatch.setenv("RAY_XRAY_CACHE", "envcache")
    assert cache_location(None) == str(tmp_path / "envcache")
    root = base_tree(tmp_path / "d")
    load_data(str(root), 32, cache_root="~/xray-cache")
    assert not (tmp_path / "~").exists()
    assert list((tmp_path / "home" / "xray-cache").glob("*.parquet"))


def test_sweep_paths_are_absolute_before_ray(tmp_path, monkeypatch):
    from ray_xray.tune.service import SweepOptions, resolve_paths

    monkeypatch.chdir(tmp_path)
    opts = SweepOptions(data="d", storage="runs", cache="relcache")
    opts = resolve_paths(opts)  # SweepOptions are frozen: a resolved copy
    assert (opts.data, opts.storage, opts.cache) == tuple(
        str(tmp_path / p) for p in ("d", "runs", "relcache")
    )


# (That trial workers read a relative --cache instead of decoding again is checked by
# test_package's smoke sweep from the wheel, which runs with relative paths.)


# F. A sweep resumes only its own interrupted sweep -------------------------------------------


def two_datasets(tmp_path):
    a = base_tree(tmp_path / "a" / "chest_xray", folders=("normal", "pneumonia"))
    b = base_tree(tmp_path / "b" / "chest_xray")
    return a, b


def sweep_record(data: Path, classes):
    from ray_xray.spaces import load_space
    from ray_xray.tune.service import SweepOptions, resolve_paths, sweep_identity

    opts = SweepOptions(space="cnn", data=str(data), smoke_test=True, storage=str(data.parent))
    opts = resolve_paths(opts)  # SweepOptions are frozen: a resolved copy
    space = load_space("cnn", smoke=True)
    return opts, space, {**sweep_identity(opts, space, classes), "options": asdict(opts)}


def test_default_names_differ_for_folders_with_one_base_name(tmp_path):
    from ray_xray.tune.service import experiment_name

    a, b = two_datasets(tmp_path)
    (opts_a, space, _), (opts_b, _, _) = sweep_record(a, None), sweep_record(b, None)
    name_a, name_b = experiment_name(opts_a, space), experiment_name(opts_b, space)
    assert name_a != name_b
    assert name_a.startswith("cnn-chest_xray-") and name_a.endswith("-smoke")
    assert name_a == experiment_name(sweep_record(a, None)[0], space)  # stable: resumes


def test_sweep_differences_name_what_changed(tmp_path):
    from ray_xray.tune.service import sweep_differences

    a, b = two_datasets(tmp_path)
    _, _, rec_a = sweep_record(a, ["normal", "pneumonia"])
    _, _, rec_b = sweep_record(b, list(CLASSES))
    assert sweep_differences(rec_a, rec_b) == ["data", "classes"]
    assert sweep_differences(rec_a, json.loads(json.dumps(rec_a, default=str))) == []
    # Same folder, a class added since: the classes differ.
    assert sweep_differences(rec_a, {**rec_a, "classes": list(CLASSES)}) == ["classes"]
    # An older sweep.json without classes or space is compared on what it has.
    old = {"options": {"data": rec_a["options"]["data"], "seed": 0}}
    assert sweep_differences(old, rec_a) == [] and sweep_differences(old, rec_b) == ["data"]


def test_interrupted_sweep_of_other_data_is_not_resumed(tmp_path):
    """a's interrupted sweep sits under the name b's command uses: exit 2 naming both, no
    file touched (tuner.pkl is what makes Tune call a sweep resumable; no Ray starts)."""
    a, b = two_datasets(tmp_path)
    exp = tmp_path / "runs" / "same"
    exp.mkdir(parents=True)
    _, _, rec_a = sweep_record(a, ["normal", "pneumonia"])
    (exp / "sweep.json").write_text(json.dumps(rec_a, indent=2, default=str))
    (exp / "tuner.pkl").write_bytes(b"a's tuner state")
    before = {p: p.read_bytes() for p in exp.rglob("*")}
    r = run_cli(
        "ray_xray.tune",
        "--space",
        "cnn",
        "--smoke-test",
        "--data",
        b,
        "--name",
        "same",
        "--storage",
        tmp_path / "runs",
        "--no-ensemble",
    )
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {exp} holds an interrupted sweep of {a}")
    assert f"this command is for {b}" in line and "--name" in line
    assert {p: p.read_bytes() for p in exp.rglob("*")} == before


def test_same_data_passes_the_resume_check(tmp_path):
    from ray_xray.tune.service import check_resumable

    a, _ = two_datasets(tmp_path)
    _, _, rec = sweep_record(a, ["normal", "pneumonia"])
    (tmp_path / "sweep.json").write_text(json.dumps(rec, default=str))
    check_resumable(str(tmp_path), rec)  # no exception: the same command resumes
    with pytest.raises(ValueError, match="differs in classes"):
        check_resumable(str(tmp_path), {**rec, "classes": list(CLASSES)})
