"""What every entry point shares: one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

OUTSIDE_DATA_ENV = "RAY_XRAY_ALLOW_OUTSIDE_DATA"  # data/sources.py's switch (--allow-outside-data)


class UserError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help names it already or there is
    none worth showing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = isinstance(action, argparse.BooleanOptionalAction) or default is not False
        if "default" in text or not shown or default in (None, argparse.SUPPRESS, [], ""):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one ``error:`` line and exit 2 (through ``run``),
    and whose help shows every default."""

    def __init__(self, *args, data_boundary: bool = False, **kwargs):
        """`data_boundary`: the command reads data folders, so it gets --allow-outside-data."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        if data_boundary:
            add_data_boundary(self)

    def error(self, message: str):
        """argparse's usage error as a UserError (one `error:` line, exit 2 through `run`)
        instead of argparse's usage dump and exit."""
        raise UserError(f"{message} (see --help)")


class _AllowOutsideData(argparse.Action):
    """--allow-outside-data: sets $RAY_XRAY_ALLOW_OUTSIDE_DATA=1 in this process, which
    data/sources.py reads and Ray's workers inherit (they load the data too)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        os.environ[OUTSIDE_DATA_ENV] = "1"


def add_data_boundary(parser: argparse.ArgumentParser) -> None:
    """Give a command that reads data folders the --allow-outside-data flag."""
    parser.add_argument(
        "--allow-outside-data",
        action=_AllowOutsideData,
        help="read manifest rows and links that lead outside the data folder (a shared image "
        "store); without it they are refused in one line",
    )


def note_renamed(argv: Sequence[str], renamed: Mapping[str, str]) -> None:
    """One stderr note per old option spelling in ``argv`` (``{"--scheduler": "--lr-scheduler"}``):
    the old names still work for this release."""
    for old, new in renamed.items():
        if any(a == old or a.startswith(old + "=") for a in argv):
            print(
                f"note: {old} is now {new} (the old name goes in the next release)", file=sys.stderr
            )


# What a full, over-quota or read-only disk raises: an OSError with one of these numbers, or
# SQLite's own words (through SQLAlchemy/Optuna, which wrap them in their exceptions).
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
DISK_WORDS = (
    "database or disk is full",
    "readonly database",
    "no space left on device",
    "read-only file system",
    "disk quota exceeded",
)


def disk_problem(exc: BaseException) -> str | None:
    """One line saying which write the disk refused, when `exc` (or an exception it was raised
    from or during) is a full or read-only disk; None otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            where = f"{exc.filename}: " if exc.filename else ""
            return (
                f"{where}cannot write: {exc.strerror or exc} (errno {errno.errorcode[exc.errno]})"
            )
        text = str(exc).lower()
        for words in DISK_WORDS:
            if words in text:
                return f"cannot write: {words} ({type(exc).__name__})"
        exc = exc.__cause__ or exc.__context__
    return None


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's `main(argv)` and exit with its code: bad input (ValueError, a missing or
    unreadable path) is one `error: ...` line and exit 2, a full or read-only disk one line and
    exit 1, an interrupt its own line and 130 (SIGINT) or 143 (SIGTERM); anything else raises."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main(argv)
        sys.stdout.flush()  # here, so a full disk under `> out.json` is reported, not lost
    except KeyboardInterrupt as exc:
        # A sweep's interrupt (tune/interrupt.py) carries its own line and code: 130 for
        # SIGINT, 143 for SIGTERM (128 + the signal, the shell's convention).
        print(str(exc) or "interrupted", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 130))
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        # ValueError covers UserError, DataError, SpaceError and config validation.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # A full or read-only disk is the machine's state, not a bug: one line, exit 1 (the
        # writes are atomic, ray_xray/io.py, so nothing half-written is left behind).
        problem = disk_problem(exc)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
