"""The search service: `python -m ray_xray.tune --space vit`."""

from .service import SweepOptions, run_sweep

__all__ = ["SweepOptions", "run_sweep"]
