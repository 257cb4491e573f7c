"""report.html and its figures. The sweep report: `write_report(SweepReport(...))` (build.py,
written by `ray_xray.ensemble`); the evaluation report is `ray_xray.evaluate.report`, built
from the same sections (sections.py)."""

from .build import write_report
from .inputs import SweepReport

__all__ = ["SweepReport", "write_report"]
