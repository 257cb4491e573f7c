"""Where spaces are found (``$RAY_XRAY_SPACES`` folders, then the built-in ones) and how a file
is read: plain YAML only, every failure one ``SpaceError`` line naming the file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import SpaceError, join, one_line

__all__ = ["SPACES_DIR", "SPACES_ENV", "find", "label", "list_spaces", "read_yaml", "space_dirs"]


def builtin_dir() -> Path:
    """The built-in spaces' folder: the installed wheel's package data
    (``ray_xray/search_spaces/``, mapped there by setup.py), else a checkout's top-level
    ``search_spaces/`` (a source tree, or an editable install, has no package copy). A zipped
    install is not supported."""
    shipped = Path(str(resources.files("ray_xray") / "search_spaces"))
    if shipped.is_dir():
        return shipped.resolve()
    return Path(__file__).resolve().parents[2] / "search_spaces"


SPACES_DIR = builtin_dir()
SPACES_ENV = "RAY_XRAY_SPACES"  # extra folders of spaces, searched before the built-in ones
SUFFIXES = (".yaml", ".yml")


def space_dirs() -> list[Path]:
    """Folders searched for a space name, first match wins: ``$RAY_XRAY_SPACES``, then built-ins.

    ``$RAY_XRAY_SPACES`` holds folders separated by ``os.pathsep`` (``:`` on Linux); empty
    entries are skipped. Raises ``SpaceError`` when a named folder does not exist, so a typo
    is not silently ignored.
    """
    dirs = []
    for entry in os.environ.get(SPACES_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise SpaceError(f"${SPACES_ENV}: {entry}: no such folder")
        dirs.append(folder.resolve())
    return [*dirs, SPACES_DIR]


def list_spaces() -> list[str]:
    """Names of the spaces in ``$RAY_XRAY_SPACES`` folders and the built-in ones, sorted."""
    names = set()
    for folder in space_dirs():
        if folder.is_dir():
            names |= {p.stem for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()}
    return sorted(names)


def find(name_or_path: str | Path) -> Path:
    """The file of a space name (``vit``) or the path itself (a ``Path``, or text with a ``/``
    or a YAML suffix); ``SpaceError`` listing the available names when there is none."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(SUFFIXES):
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"{text}: no such search space file")
        return path
    for folder in space_dirs():
        for suffix in SUFFIXES:
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path
    raise SpaceError(
        f"unknown search space {text!r} (available: {join(list_spaces()) or 'none'}; "
        f"or pass a path to your own .yaml, or name its folder in ${SPACES_ENV})"
    )


def label(path: Path) -> str:
    """How errors name a file: the bare name for built-in spaces, the path otherwise."""
    try:
        if path.resolve().parent == SPACES_DIR:
            return path.name
    except OSError:
        pass
    return str(path)


def read_yaml(path: Path) -> Any:
    """The file's YAML document (``yaml.safe_load``: tags such as ``!!python/...`` refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{label(path)}: cannot read: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{label(path)}: {_yaml_msg(e)}") from None


def _yaml_msg(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        msg = f"invalid YAML at {where}{what}"
    else:
        msg = f"invalid YAML: {e}"
    if isinstance(e, yaml.constructor.ConstructorError) or "!!python" in msg or "tag:" in msg:
        msg += " (only plain YAML is accepted; tags such as !!python/... are refused)"
    return one_line(msg)
