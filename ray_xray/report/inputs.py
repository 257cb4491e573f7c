"""The sweep report's typed input: `SweepReport`, built by `ray_xray.ensemble` once the members
and ensembles are fixed, and read (never written) by every section of the sweep report.

The report never imports the ensemble package, so a member is described by the attributes the
report reads (`ReportMember`), which `ray_xray.ensemble.core.Member` has."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..data.dataset import PreparedData


def log_to_stderr(msg: str) -> None:
    """The default report log: one line on stderr."""
    print(msg, file=sys.stderr)


class ReportMember(Protocol):
    """One ensemble member as the report reads it.

    test_raw / test_prob: float64 (N_test, K) probabilities as trained and after temperature
    scaling at `temperature`; `record`: the model record (format ray_xray/1); `data_key`: the
    key of its images in `SweepReport.datas`."""

    name: str
    trial_id: str
    model_name: str
    rank: int
    record: dict
    data_key: tuple
    temperature: float
    test_raw: np.ndarray
    test_prob: np.ndarray


@dataclass(frozen=True)
class SweepReport:
    """Everything the sweep report renders.

    `experiment`: `sweep_folder.read_experiment`'s dict (table, options, objective, key, mode,
    exp_dir, sweep). `members`: the ensemble pool, best first. `ensembles`: method -> {"test_prob":
    float64 (N_test, K), "weights": per member, ...}; `chosen`: the method saved as ensemble.pt.
    `metrics`: metrics.json's dict. `datas`: data_key -> the members' prepared data (uint8
    images per split, `img_size`, `counts()`), every one in the same test order as `y_test`
    (int64 (N_test,) class indices in `classes` order). `out`: the folder report.html and
    figures/ go to; `log`: where notes about failed figures or sections go."""

    experiment: dict
    members: list[ReportMember]
    ensembles: dict[str, dict]
    chosen: str
    metrics: dict
    datas: dict[tuple, PreparedData]
    y_test: np.ndarray
    classes: list[str]
    out: Path
    log: Callable[[str], None] = field(default=log_to_stderr, compare=False)

    @property
    def chosen_entry(self) -> dict:
        """metrics.json's entry of the chosen ensemble."""
        return next(e for e in self.metrics["ensembles"] if e["chosen"])

    @property
    def chosen_name(self) -> str:
        """ "ensemble_<method>" of the chosen ensemble."""
        return f"ensemble_{self.chosen}"
