"""What every entry point shares: one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


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
