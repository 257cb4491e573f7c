"""`ray-xray COMMAND [ARGS...]` (or `python -m ray_xray COMMAND ...`): every tool under one name.

Each command runs that module's own entry point, exactly as `python -m ray_xray.COMMAND ARGS`
does (same options, output and exit codes); `ray-xray COMMAND --help` lists its options.
Nothing heavy is imported until a command is chosen, so `ray-xray --help` is instant.
"""

from __future__ import annotations

import difflib
import runpy
import sys

# command -> (module run as __main__, one-line summary). Order = the order --help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "tune": ("ray_xray.tune", "hyperparameter sweep: Ray Tune + Optuna TPE + ASHA over a space"),
    "train": ("ray_xray.train", "train one model through Ray Train; evaluate it on test"),
    "predict": ("ray_xray.predict", "class probabilities of image files from a model/ensemble"),
    "evaluate": ("ray_xray.evaluate", "metrics with intervals, shift check and report on any set"),
    "ensemble": ("ray_xray.ensemble", "calibrate and ensemble a finished sweep's best trials"),
    "spaces": ("ray_xray.spaces", "list, print or check the search spaces"),
    "models": ("ray_xray.models", "the model table: parameters and step time per architecture"),
    "audit": ("ray_xray.audit", "look at a dataset (duplicates, leakage, balance) before use"),
    "active": ("ray_xray.active", "active-learning strategies against random sampling"),
    "cluster": ("ray_xray.cluster", "offline checks of Ray cluster-launcher YAML"),
}
PROG = "ray-xray"


def usage() -> str:
    """`ray-xray --help`'s text: the usage line, every command with its one-line summary, and
    where each command's own options and the Python API are."""
    from ray_xray import __version__

    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [ARGS...]   (also: python -m ray_xray COMMAND ...)",
        "",
        f"ray_xray {__version__}: distributed hyperparameter search on Ray for medical-image "
        "classifiers.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        f"`{PROG} COMMAND --help` shows a command's options; each one is also",
        "`python -m ray_xray.COMMAND`. Python API: `import ray_xray` (ray_xray.sweep, .fit, .load).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns the exit code.

    ``--help``/``-h``/no argument print the command list (exit 0, or 2 when nothing was given);
    ``--version`` prints the version; an unknown command is one ``error:`` line, exit 2.
    A command's own exit code passes through (it raises ``SystemExit``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in ("-h", "--help", "help") and not rest:
        print(usage())
        return 0
    if command == "help":  # `ray-xray help tune` = `ray-xray tune --help`
        command, rest = rest[0], ["--help"]
    if command == "--version":
        from ray_xray import __version__

        print(f"ray_xray {__version__}")
        return 0
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(
            f"error: unknown command {command!r}{hint}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = COMMANDS[command][0]
    sys.argv = [f"{PROG} {command}", *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def console() -> None:
    """The ``ray-xray`` console script (``[project.scripts]`` in pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    console()
