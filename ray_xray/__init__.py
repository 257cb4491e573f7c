"""ray_xray: distributed hyperparameter search on Ray for medical-image classifiers."""

import os

# Quiet third-party chatter before anything imports them (set, not forced: users may override).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"
