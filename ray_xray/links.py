"""The lines that end a sweep, a training run and an evaluation: the report first, as a
``file://`` URL (most terminals open it on a click), then the dashboards, each with the command
that installs it when it is missing (they come with the ``dashboards`` extra, which neither
``make install`` nor a plain ``pip install .`` installs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DASHBOARDS_INSTALL = "pip install 'ray_xray[dashboards]'"
# Dashboard -> the module whose presence means its command works.
DASHBOARD_MODULES = {"tensorboard": "tensorboard", "optuna-dashboard": "optuna_dashboard"}


def report_line(path: str | Path) -> str:
    """``report:           file:///abs/path/report.html`` for a report file (made absolute)."""
    return f"report:           {Path(path).expanduser().resolve().as_uri()}"


def installed(tool: str) -> bool:
    """Whether the dashboard `tool` ("tensorboard", "optuna-dashboard") is importable here."""
    return importlib.util.find_spec(DASHBOARD_MODULES[tool]) is not None


def dashboard_line(label: str, tool: str, command: str) -> str:
    """``label: command``, plus ``(not installed: pip install 'ray_xray[dashboards]')`` when the
    dashboard `tool` is missing. `label` is padded to line up with `report_line`."""
    hint = "" if installed(tool) else f"   (not installed: {DASHBOARDS_INSTALL})"
    return f"{label + ':':<18}{command}{hint}"
