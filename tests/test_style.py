"""The formatter owns the layout: `ruff format --check` and `ruff check` pass on the whole tree,
and no `# fmt: skip` / `# fmt: off` switches the formatter off outside the allow-list below."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (path relative to the repository root, how many markers it may keep, why). Empty today: add an
# entry only where a table of numbers reads better hand-aligned, and say why.
ALLOWED_MARKERS: dict[str, tuple[int, str]] = {}

MARKER = re.compile(r"#\s*fmt:\s*(skip|off)\b")


def python_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode == 0 and tracked.stdout.strip():
        return [ROOT / p for p in tracked.stdout.split()]
    return [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]


def count_switches(source: str) -> int:
    """Comments (tokenize's COMMENT tokens, so never a string literal) that switch the formatter
    off: `# fmt: skip` or `# fmt: off`."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return sum(1 for t in tokens if t.type == tokenize.COMMENT and MARKER.search(t.string))


def formatter_switches(files: list[Path]) -> dict[str, int]:
    """{relative path: number of comments that switch the formatter off} for files with any."""
    found = {}
    for path in files:
        n = count_switches(path.read_text(encoding="utf-8"))
        if n:
            found[str(path.relative_to(ROOT))] = n
    return found


def test_marker_counter_finds_both_forms_and_ignores_strings():
    source = "a = 1  # fmt: skip\n# fmt: off\nb = 2\n# fmt: on\nc = '# fmt: skip'\n"
    # The string literal on the last line is not a comment: only the two comments count.
    assert count_switches(source) == 2


def test_no_formatter_switch_outside_the_allow_list():
    found = formatter_switches(python_files())
    over = {path: n for path, n in found.items() if n > ALLOWED_MARKERS.get(path, (0, ""))[0]}
    assert not over, (
        f"`# fmt: skip`/`# fmt: off` beyond the allow-list in tests/test_style.py: {over}; "
        "let `ruff format` own the layout"
    )


def ruff() -> list[str]:
    if shutil.which("ruff", path=str(Path(sys.executable).parent)):
        return [str(Path(sys.executable).parent / "ruff")]
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[dev]')")
    return [sys.executable, "-m", "ruff"]


@pytest.mark.parametrize("args", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff_is_clean_on_the_whole_tree(args):
    out = subprocess.run(
        [*ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
