"""ray_xray.io: the one atomic writer every result, checkpoint and report goes through."""

import os
import stat

import pytest
import torch

from ray_xray.checkpoint import atomic_save, safe_load
from ray_xray.io import atomic_path, write_atomic


def test_write_atomic_text_bytes_and_new_folders(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    assert write_atomic(target, "µ-text") == target
    assert target.read_text(encoding="utf-8") == "µ-text"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # what open() would give
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_litter(tmp_path):
    target = tmp_path / "results.parquet"
    target.write_text("old")
    with pytest.raises(OSError, match="No space"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]


def test_atomic_save_round_trips_a_checkpoint(tmp_path):
    path = tmp_path / "best_model.pt"
    atomic_save({"state": {"w": torch.ones(2)}, "epoch": 3}, path)
    back = safe_load(path)
    assert back["epoch"] == 3 and torch.equal(back["state"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]
