"""``python -m ray_xray.spaces``: list the spaces, print one resolved, or check them."""

from __future__ import annotations

import argparse
import sys

from ..cli import Parser, note_renamed
from .files import SPACES_DIR, SPACES_ENV, list_spaces
from .space import load_space

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """List the spaces; ``NAME [--smoke-test]`` prints one resolved; ``--check [NAME]`` validates
    one (a name or a .yaml path) or all, plain and (where it has a smoke: block) smoke.

    A bad space raises ``SpaceError`` and a bad option ``UserError``: ``ray_xray.cli.run``
    reports either as one ``error:`` line, exit 2."""
    ap = Parser(
        prog="python -m ray_xray.spaces",
        description="Search spaces: YAML files turned into Optuna define-by-run functions.",
    )
    ap.add_argument(
        "space",
        nargs="?",
        help=f"a space name (built-in or in ${SPACES_ENV} folders) or a .yaml path: print it "
        "(with --check: check it)",
    )
    ap.add_argument("--smoke-test", action="store_true", help="apply the smoke: block")
    ap.add_argument("--smoke", action="store_true", dest="smoke_test", help=argparse.SUPPRESS)
    ap.add_argument(
        "--check", action="store_true", help="validate the space, or every space (plain and smoke)"
    )
    args = ap.parse_args(argv)
    note_renamed(sys.argv[1:] if argv is None else argv, {"--smoke": "--smoke-test"})
    if args.check:
        for name in [args.space] if args.space else list_spaces():
            # load_space checks the plain space and its smoke: block when it has one; a space
            # without one is valid (it just cannot run --smoke-test), so it is not refused.
            space = load_space(name)
            smoke = space.raw.get("smoke") is not None
            print(
                f"ok  {name}" + ("" if smoke else "  (no smoke: block: --smoke-test cannot run it)")
            )
    elif args.space:
        print(load_space(args.space, smoke=args.smoke_test).to_yaml(), end="")
    else:
        for name in list_spaces():
            space = load_space(name)
            where = "" if space.path.parent == SPACES_DIR else f"  [{space.path}]"
            print(f"{name:16s} {space.description}{where}")
    return 0
