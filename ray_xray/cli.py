"""What every entry point shares: one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence


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

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def note_renamed(argv: Sequence[str], renamed: Mapping[str, str]) -> None:
    """One stderr note per old option spelling in ``argv`` (``{"--scheduler": "--lr-scheduler"}``):
    the old names still work for this release."""
    for old, new in renamed.items():
        if any(a == old or a.startswith(old + "=") for a in argv):
            print(
                f"note: {old} is now {new} (the old name goes in the next release)", file=sys.stderr
            )


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        # ValueError covers UserError, DataError, SpaceError and config validation.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
