import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_xray.data import DataError, load_data, load_table, normalise_label, patient_id
from ray_xray.data import cache as cache_mod
from ray_xray.data.audit import audit
from ray_xray.data.sources import Item, carve_val, read_manifest, scan_folder
from ray_xray.data.synthetic import generate


def test_synthetic_is_deterministic_and_varied():
    a = [img for *_, img in generate("synthetic:chest3:5", 48)]
    b = [img for *_, img in generate("synthetic:chest3:5", 48)]
    c = [img for *_, img in generate("synthetic:chest3:5", 48, seed=1)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert len({x.tobytes() for x in a}) == len(a)  # no two images alike


def test_synthetic_load_counts_and_normalisation():
    d = load_data("synthetic:binary:10", 32)
    assert d.classes == ["normal", "pneumonia"]
    assert d.counts()["train"] == {"normal": 10, "pneumonia": 10}
    x, y, _ = d.dataset("train", aug_strength=1.0)[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8 and y in (0, 1)
    assert d.feed(3, "cpu")(x[None]).shape == (1, 3, 32, 32)  # channels repeated on the device
    train = d.images["train"].astype(np.float32) / 255
    assert d.mean == pytest.approx(train.mean(), abs=1e-5)


def test_the_data_line_is_logged_once_a_process(tiny_tree, caplog):
    """A --cv sweep's steps load the same data again and again: its 'data ...' line came 7
    times in the README's --cv example. Once a process; other data gets its own line."""
    import logging

    with caplog.at_level(logging.INFO):
        for _ in range(3):
            load_data(str(tiny_tree), 32)
        load_data(str(tiny_tree), 32, limit_per_split=3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data ")]
    assert lines == [
        f"data {tiny_tree}: train 18, val 18, test 18; skipped: 0 files",
        f"data {tiny_tree}: train 3, val 3, test 3; skipped: 0 files",
    ]


def test_label_aliases_and_patient_ids():
    assert normalise_label("Viral Pneumonia") == "pneumonia"
    assert normalise_label("TB") == "tuberculosis" == normalise_label("Tuberculosis")
    assert normalise_label("no_tumor") == "notumor" == normalise_label("NoTumor")
    assert normalise_label("NORMAL") == "normal"
    assert patient_id("person12_bacteria_3.jpeg") == "person12_bacteria"
    assert patient_id("person12_virus_9.jpeg") == "person12_virus"  # another patient
    assert patient_id("NORMAL2-IM-0115-0001.jpeg") == "normal2-im-0115"
    assert patient_id("a1b2c3.png") == ""


def test_carved_val_is_stratified_and_grouped_by_patient():
    items = [
        Item(f"/x/person{p}_{kind}_{k}.jpeg", label, "train", f"person{p}_{kind}")
        for p in range(40)
        for kind, label in (("bacteria", "pneumonia"), ("virus", "normal"))
        for k in range(3)
    ] + [Item("/t/a.png", "normal", "test"), Item("/t/b.png", "pneumonia", "test")]
    out = carve_val(items, fraction=0.1)
    val = [i for i in out if i.split == "val"]
    train = [i for i in out if i.split == "train"]
    assert 0.05 * len(items) < len(val) < 0.2 * len(items)
    assert {i.label for i in val} == {"normal", "pneumonia"}
    assert not {i.patient for i in val} & {i.patient for i in train}


def test_missing_val_is_carved_from_train(tiny_tree):
    shutil.rmtree(tiny_tree / "val")
    d = load_data(str(tiny_tree), 32)
    assert len(d.labels["val"]) > 0 and len(d.labels["train"]) + len(d.labels["val"]) == 18


def test_folder_loader_matches_aliases(tmp_path):
    root = tmp_path / "d"
    for split, label in (
        ("Training", "NORMAL"),
        ("Validation", "Viral Pneumonia"),
        ("Testing", "TB"),
    ):
        (root / split / label).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / split / label / "a.png")
    items = scan_folder(root)
    assert {(i.split, i.label) for i in items} == {
        ("train", "normal"),
        ("val", "pneumonia"),
        ("test", "tuberculosis"),
    }


def test_folder_and_manifest_give_the_same_items(shared_data):
    root = shared_data / "chest3"
    by_folder = {(i.path, i.label, i.split) for i in scan_folder(root)}
    by_manifest = {(i.path, i.label, i.split) for i in read_manifest(root / "manifest.csv")}
    assert by_folder == by_manifest and len(by_folder) == 3626


def test_cache_is_hit_on_second_load(tiny_tree, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.decode
    monkeypatch.setattr(cache_mod, "decode", lambda *a: calls.append(1) or real(*a))
    first = load_data(str(tiny_tree), 32, cache_root=str(tmp_path / "c"))
    n_first = len(calls)
    second = load_data(str(tiny_tree), 32, cache_root=str(tmp_path / "c"))
    assert n_first == 54 and len(calls) == n_first  # the second load decoded nothing
    assert np.array_equal(first.images["test"], second.images["test"])
    # Content, not names, keys the cache: changing a file's pixels makes a new cache.
    f = next((tiny_tree / "train" / "normal").iterdir())
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(f)
    load_data(str(tiny_tree), 32, cache_root=str(tmp_path / "c"))
    assert len(calls) == 2 * n_first


def plant_dirt(root: Path) -> dict:
    """Copy a train image into test, file a copy under another label, add a mirrored
    near-copy in val and a corrupt file."""
    src = root / "train" / "normal" / "normal_0.png"
    shutil.copy(src, root / "test" / "normal" / "leaked.png")
    shutil.copy(
        root / "train" / "pneumonia" / "pneumonia_1.png",
        root / "train" / "normal" / "mislabelled.png",
    )
    mirrored = np.asarray(Image.open(root / "train" / "tuberculosis" / "tuberculosis_2.png"))[
        :, ::-1
    ]
    Image.fromarray(np.clip(mirrored.astype(int) + 2, 0, 255).astype(np.uint8)).save(
        root / "val" / "tuberculosis" / "mirror.png"
    )
    (root / "train" / "normal" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"corrupt": str((root / "train" / "normal" / "corrupt.png").resolve())}


def test_audit_finds_planted_problems(tiny_tree):
    planted = plant_dirt(tiny_tree)
    table, bad, _ = load_table(str(tiny_tree), 48, skip_bad=True)
    report = audit(table, bad)
    assert report["unreadable"] == [planted["corrupt"]]
    assert len(report["cross_split_duplicates"]) == 1
    assert {m["split"] for m in report["cross_split_duplicates"][0]} == {"train", "test"}
    assert len(report["conflicting_label_duplicates"]) == 1
    near = report["near_duplicates_cross_split"]
    assert len(near) == 1 and {near[0]["a_split"], near[0]["b_split"]} == {"train", "val"}
    assert report["counts"]["test"]["normal"] == 7


def test_training_refuses_leakage_and_dedupe_repairs_it(tiny_tree):
    shutil.copy(
        tiny_tree / "train" / "normal" / "normal_0.png", tiny_tree / "test" / "normal" / "leak.png"
    )
    with pytest.raises(DataError, match="1 test image"):
        load_data(str(tiny_tree), 32)
    d = load_data(str(tiny_tree), 32, dedupe="drop-cross-split")
    assert d.dropped["dedupe"] == 1 and len(d.labels["train"]) == 17 and len(d.labels["test"]) == 19
    assert len(load_data(str(tiny_tree), 32, allow_leakage=True).labels["train"]) == 18


def test_corrupt_file_named_and_no_partial_cache(tiny_tree, tmp_path):
    bad = tiny_tree / "val" / "normal" / "broken.png"
    bad.write_bytes(b"truncated")
    cache = tmp_path / "c"
    with pytest.raises(DataError, match="broken.png"):
        load_data(str(tiny_tree), 32, cache_root=str(cache))
    assert list(cache.iterdir()) == []  # nothing half-written
    d = load_data(str(tiny_tree), 32, skip_bad=True, cache_root=str(cache))
    assert d.unreadable == [str(bad.resolve())] and len(d.labels["val"]) == 18


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: shutil.rmtree(r / "test"), "split 'test' is empty"),
        (lambda r: shutil.rmtree(r), "no such folder"),
        (
            lambda r: [p.unlink() for p in (r / "train" / "tuberculosis").iterdir()],
            "no training images",
        ),
    ],
)
def test_bad_folders_fail_clearly(tiny_tree, breakage, message):
    breakage(tiny_tree)
    with pytest.raises(DataError, match=message):
        load_data(str(tiny_tree), 32, classes=["normal", "pneumonia", "tuberculosis"])


def test_unknown_label_and_missing_manifest_row(tiny_tree):
    with pytest.raises(DataError, match="not in the class list"):
        load_data(str(tiny_tree), 32, classes=["normal", "pneumonia"])
    manifest = tiny_tree / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split"])
        w.writerow(["train/normal/normal_0.png", "normal", "train"])
        w.writerow(["train/normal/gone.png", "normal", "train"])
    with pytest.raises(DataError, match=r"manifest.csv:3: .*gone.png does not exist"):
        load_data(str(tiny_tree), 32)


def test_audit_cli_json_and_bad_input(tiny_tree, tmp_path):
    plant_dirt(tiny_tree)
    ok = subprocess.run(
        [sys.executable, "-m", "ray_xray.audit", str(tiny_tree), "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert len(report["cross_split_duplicates"]) == 1 and len(report["unreadable"]) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "ray_xray.audit", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.strip().count("\n") == 0
        and "no such folder" in bad.stderr
    )


def test_shared_chest3_audit_matches_its_readme(shared_data):
    table, bad, _ = load_table(str(shared_data / "chest3"), 128, skip_bad=True)
    report = audit(table, bad)
    assert report["counts"] == {
        "train": {"normal": 1200, "pneumonia": 935, "tuberculosis": 476},
        "val": {"normal": 200, "pneumonia": 201, "tuberculosis": 114},
        "test": {"normal": 200, "pneumonia": 201, "tuberculosis": 99},
    }
    assert report["cross_split_duplicates"] == [] and report["unreadable"] == []
