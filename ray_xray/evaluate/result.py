"""`EvalResult`: everything one evaluation found, as metrics.json stores it and report.html
renders it (the arrays ride along for the figures and stay out of the JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ..io import json_safe

FORMAT = "ray_xray/evaluation/1"

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "auc": "ROC-AUC"}


def metric_name(key: str) -> str:
    """`macro_f1` -> `macro-F1`, `recall_glioma` -> `recall of glioma`."""
    return METRIC_NAMES.get(key) or key.replace("recall_", "recall of ", 1)


clean = json_safe  # one JSON-safe converter: ray_xray/io.py


# Where an evaluation's operating-point thresholds were fixed (EvalResult.points_fixed_on).
POINTS_FIXED = {
    "val": "on the model's own validation split",
    "oof": "on the out-of-fold predictions of its --cv sweep (stored in the ensemble)",
    "stored": "on its sweep's validation split (stored in the ensemble)",
}


@dataclass
class EvalResult:
    """One model or ensemble on one labelled set.

    `metrics`: the sweep report's set (`ray_xray.scores.report`: accuracy, macro/weighted F1,
    per-class precision/recall/F1/AUC/AP, confusion, NLL, ECE). `headline`: accuracy, macro_f1,
    auc, recall_<class> as {"value", "low", "high"} (stratified bootstrap percentile interval).
    `operating_points`: class -> target specificity -> threshold from the model's own
    validation split (or stored in a --cv ensemble, fixed out of fold: `points_fixed_on`) and
    what it gives here. `shift`: the comparison with the model's own test
    split when this set is other data, with its validation split when this is its own test
    split (None otherwise). `stress`: `stress.run_stress`'s table.
    """

    checkpoint: str
    model: str
    kind: str  # "model" | "ensemble"
    data: str
    split: str
    own_data: str | None
    is_own_data: bool
    classes: list[str]
    data_classes: list[str]
    missing_classes: list[str]
    n: int
    created: str
    metrics: dict
    headline: dict
    bootstrap: dict
    operating_points: dict | None = None
    # where their thresholds were fixed: a key of POINTS_FIXED, None without operating points
    points_fixed_on: str | None = None
    shift: dict | None = None
    stress: dict | None = None
    # --adapt-prior / --prevalence: the same figures after prior adaptation (ray_xray/prior.py),
    # beside the unadapted ones above, never instead of them
    prior_adaptation: dict | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    out: str = ""  # the folder metrics.json and report.html were written to
    n_available: int = 0  # images in the split; n < n_available after `--limit`
    # For the report's figures only (not in metrics.json).
    y: np.ndarray | None = field(default=None, repr=False)
    prob: np.ndarray | None = field(default=None, repr=False)
    member_prob: list | None = field(default=None, repr=False)
    images: dict | None = field(default=None, repr=False)  # img_size -> uint8 (N, S, S)
    reference: dict | None = field(default=None, repr=False)  # {"y", "prob"}: own test

    ARRAYS = ("y", "prob", "member_prob", "images", "reference")

    @property
    def partial(self) -> bool:
        """True when the set lacks some of the model's classes."""
        return bool(self.missing_classes)

    def to_json(self) -> dict:
        """metrics.json's content: every field but the arrays, JSON-safe (NaN -> null)."""
        out = {"format": FORMAT}
        for f in fields(self):
            if f.name not in self.ARRAYS:
                out[f.name] = getattr(self, f.name)
        out["partial"] = self.partial
        return clean(out)
