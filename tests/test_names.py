"""Names explain themselves (issue 31, item 7): every public definition has a docstring, no
module is imported under a one-letter alias, and no function passes 60 lines without a comment
above it saying why. Read from the source with `ast`; nothing is imported.

The alias rule also holds tests/, benchmarks/ and docs/ (where `C` once meant checkpoint, common
or collectives depending on the file); its only exceptions are the third-party conventions in
CONVENTIONS. The other two rules hold the package.

Every module is covered (OUTSIDE_SCOPE is empty since issue 31's refactors landed); a folder may
be left out there only with a reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ray_xray"
OUTSIDE_SCOPE: tuple[str, ...] = ()
MAX_LINES = 60
# Folders of the repository whose Python files the alias rule reads.
ALIAS_FOLDERS = ("ray_xray", "tests", "benchmarks", "docs")
# One-letter aliases every reader of torch / albumentations code knows: the only ones allowed.
CONVENTIONS = {"torch.nn.functional": "F", "albumentations": "A"}


def modules() -> list[tuple[str, str]]:
    """(path relative to the package, source) of every module the rules cover."""
    out = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if not rel.startswith(OUTSIDE_SCOPE):
            out.append((rel, f.read_text(encoding="utf-8")))
    return out


def alias_scope() -> list[tuple[str, str]]:
    """(path relative to the repository, source) of every Python file the alias rule covers."""
    files = sorted(f for folder in ALIAS_FOLDERS for f in (ROOT / folder).rglob("*.py"))
    return [(f.relative_to(ROOT).as_posix(), f.read_text(encoding="utf-8")) for f in files]


def undocumented(source: str) -> list[str]:
    """Public definitions without a docstring: module-level functions and classes, and the
    methods of public classes, whose names do not start with `_` (nested helpers are private)."""
    out = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                out.append(prefix + node.name)
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return out


def one_letter_aliases(source: str) -> list[str]:
    """Imports under a one-letter name (`from . import stats as S`, `import ray_xray.tune as U`),
    as "module as alias", save the CONVENTIONS (`torch.nn.functional as F`, however imported)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named = [(a.name, a) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            where = "." * node.level + (node.module or "")
            sep = "" if where.endswith(".") else "."
            named = [(f"{where}{sep}{a.name}", a) for a in node.names]
        else:
            continue
        for full, a in named:
            if len(a.asname or "") == 1 and CONVENTIONS.get(full) != a.asname:
                out.append(f"{full} as {a.asname}")
    return out


def long_without_reason(source: str, limit: int = MAX_LINES) -> list[str]:
    """Functions longer than `limit` lines (decorators to last line) with no comment on the
    line right above them (above the first decorator) saying why."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if node.end_lineno - node.lineno + 1 <= limit:
            continue
        above = lines[first - 2].strip() if first >= 2 else ""
        if not above.startswith("#"):
            out.append(f"{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_every_public_definition_has_a_docstring():
    missing = [f"{rel}: {name}" for rel, src in modules() for name in undocumented(src)]
    assert not missing, "no docstring: " + "; ".join(missing)


def test_no_module_is_imported_under_a_one_letter_alias():
    found = [f"{rel}: {imp}" for rel, src in alias_scope() for imp in one_letter_aliases(src)]
    assert any(rel.startswith("tests/") for rel, _ in alias_scope())  # the folders were read
    assert not found, "use the module's name: " + "; ".join(found)


def test_no_function_passes_60_lines_without_a_comment_saying_why():
    found = [f"{rel}: {fn}" for rel, src in modules() for fn in long_without_reason(src)]
    assert not found, "split by idea, or say why above the def: " + "; ".join(found)


def test_the_checks_find_what_they_look_for():
    src = (
        "from . import stats as S\n"
        "import torch.nn.functional as F\n"
        "from torch.nn import functional as F\n"
        "import albumentations as A\n"
        "import ray_xray.tune as U\n"
        "from benchmarks import common as C\n"
        "from .. import checkpoint as C\n"
        "import numpy as N\n"
        "import numpy as np\n"
        "class A:\n"
        "    '''Doc.'''\n"
        "    def m(self):\n"
        "        pass\n"
        "    def _private(self):\n"
        "        pass\n"
        "def f():\n"
        "    def inner():\n"
        "        pass\n"
    )
    assert undocumented(src) == ["A.m", "f"]
    assert one_letter_aliases(src) == [
        ".stats as S",
        "ray_xray.tune as U",
        "benchmarks.common as C",
        "..checkpoint as C",
        "numpy as N",
    ]
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    assert long_without_reason(f"def g():\n{body}") == ["g (61 lines)"]
    assert long_without_reason(f"# long: a table\ndef g():\n{body}") == []
    assert long_without_reason(f"def g():\n{body[: -len('    x59 = 59') - 1]}") == []
