"""README.md's code runs as written (issue 33): every fenced ``python``/``bash`` block marked
``<!-- runnable ... -->`` is extracted and run in a fresh folder, on synthetic data.

A marker may name literal replacements that shrink the block's budget for the test
(``<!-- runnable | epochs=4 -> epochs=1 | trials=20 -> trials=2 -->``); each must occur in
its block, so a marker cannot drift from the code it shrinks. Blocks that need real data, a
GPU or a cluster are left unmarked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(
    r"^<!-- runnable(?P<opts>[^\n]*?)\s*-->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S
)


def runnable_blocks(text: str) -> list[dict]:
    """[{"lang", "code" (replacements applied), "line"}] of every marked block in `text`.

    Raises ValueError for a marker not followed by a python/bash fence, or a replacement
    whose text is not in its block."""
    blocks = []
    for m in MARK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m["lang"] not in ("python", "bash"):
            raise ValueError(f"README.md:{line}: runnable block in {m['lang']!r}")
        code = m["code"]
        for pair in filter(None, (p.strip() for p in m["opts"].split("|"))):
            old, sep, new = (x.strip() for x in pair.partition(" -> "))
            if not sep or old not in code:
                raise ValueError(f"README.md:{line}: replacement {pair!r} does not apply")
            code = code.replace(old, new)
        blocks.append({"lang": m["lang"], "code": code, "line": line})
    if len(re.findall(r"^<!-- runnable", text, re.M)) != len(blocks):
        raise ValueError("README.md: a '<!-- runnable' marker is not right above a fence")
    return blocks


BLOCKS = runnable_blocks(README.read_text())


def test_readme_marks_its_runnable_blocks_and_the_markers_apply():
    assert len(BLOCKS) >= 2 and {b["lang"] for b in BLOCKS} <= {"python", "bash"}
    bad = "<!-- runnable | nothing-like-this -> x -->\n```python\nprint(1)\n```\n"
    with pytest.raises(ValueError, match="does not apply"):
        runnable_blocks(bad)
    with pytest.raises(ValueError, match="not right above a fence"):
        runnable_blocks("<!-- runnable -->\ntext\n```python\nprint(1)\n```\n")


@pytest.mark.slow_ray
@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b['line']}" for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    """Each block in a fresh folder (so `runs/...` paths are its own), this checkout first on
    the path; a failure shows the block's output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if block["lang"] == "python":
        cmd = [sys.executable, "-c", block["code"]]
    else:
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        cmd = ["bash", "-euo", "pipefail", "-c", block["code"]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, (
        f"README.md:{block['line']}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
