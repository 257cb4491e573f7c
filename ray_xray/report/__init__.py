"""The sweep report: report.html with figures/ (see build.py), written by `ray_xray.ensemble`."""

from .build import write_report

__all__ = ["write_report"]
