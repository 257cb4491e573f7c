"""README's layout table is the map: it names every module of the package, one line each."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def layout_modules(readme: str) -> list[str]:
    """Module paths the `## Layout` code block names: `ray_xray/x.py` lines, and `  y.py`
    lines indented under a `ray_xray/pkg/` line (pkg/y.py)."""
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    out, package = [], None
    for line in block.splitlines():
        top = re.match(r"(ray_xray/\S*)", line)
        if top:
            name = top.group(1)
            package = name if name.endswith("/") else None
            if name.endswith(".py"):
                out.append(name)
            continue
        sub = re.match(r"  (\S+\.py)\s", line)
        if sub and package:
            out.append(package + sub.group(1))
    return out


def test_the_layout_table_names_every_module_once():
    listed = layout_modules((REPO / "README.md").read_text(encoding="utf-8"))
    actual = {
        str(p.relative_to(REPO))
        for p in (REPO / "ray_xray").rglob("*.py")
        if not (p.name == "__init__.py" and p.parent.name != "ray_xray")
    }
    assert len(listed) == len(set(listed)), "a module listed twice"
    assert set(listed) == actual, (
        f"missing: {sorted(actual - set(listed))}; gone: {sorted(set(listed) - actual)}"
    )


def test_the_parser_reads_packages_and_their_files():
    readme = "## Layout\n\n```\nray_xray/a.py  x\nray_xray/p/  (package)\n  b.py   y\n```\n"
    assert layout_modules(readme) == ["ray_xray/a.py", "ray_xray/p/b.py"]
