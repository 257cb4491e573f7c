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


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with this checkout first on the path (also in Ray's workers)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=840)


PYTHON = [b for b in BLOCKS if b["lang"] == "python"]
BASH = [b for b in BLOCKS if b["lang"] == "bash"]


@pytest.mark.slow_ray
def test_readme_python_blocks_run(tmp_path):
    """The python blocks in order, in one process (one Ray start for all), each in a fresh
    namespace as if pasted into its own script, in a fresh folder (so `runs/...` is its own)."""
    script = "\n".join(
        f"print('--- README.md:{b['line']}', flush=True)\nexec({b['code']!r}, {{'__name__': '__main__'}})"
        for b in PYTHON
    )
    proc = _run([sys.executable, "-c", script], tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("--- README.md:") == len(PYTHON)


@pytest.mark.slow_ray
@pytest.mark.parametrize("block", BASH, ids=[f"line{b['line']}" for b in BASH])
def test_readme_bash_block_runs(block, tmp_path):
    proc = _run(["bash", "-euo", "pipefail", "-c", block["code"]], tmp_path)
    assert proc.returncode == 0, (
        f"README.md:{block['line']}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
