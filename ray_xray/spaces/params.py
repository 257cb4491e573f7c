"""Tuned settings as Optuna distributions: what a space samples, and the range rules.

The range rules (low <= high, ``log`` needs low > 0, ``log`` and ``step`` do not mix, step > 0)
are ``optuna.distributions``' own: :func:`param_spec` builds the distribution and turns its
``ValueError`` into one ``SpaceError`` line. A grid whose range is not a whole number of steps
is refused too (Optuna would quietly lower ``high``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from . import schema
from .errors import SpaceError, one_line

__all__ = ["Conditional", "ParamSpec", "param_spec"]


@dataclass(frozen=True)
class ParamSpec:
    """One tuned setting: ``float``/``int`` (low, high, log, step) or ``categorical`` (choices)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def distribution(self) -> BaseDistribution:
        """The Optuna distribution a trial samples this setting from."""
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(self.choices)

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's wrapper of one) for a value."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def default(self) -> Any:
        """Midpoint (geometric for log, snapped to step) or the first choice."""
        if self.type == "categorical":
            return self.choices[0]
        low, high = self.low, self.high
        mid = math.sqrt(low * high) if self.log else (low + high) / 2
        if self.step:
            mid = low + round((mid - low) / self.step) * self.step
        mid = min(max(mid, low), high)
        return int(round(mid)) if self.type == "int" else float(mid)

    def extremes(self) -> list[tuple[str, Any]]:
        """The values that bound what a trial can see: (label, value)."""
        if self.type == "categorical":
            return [("choice", c) for c in self.choices]
        return [("low", self.low), ("high", self.high)]

    def contains(self, value: Any) -> bool:
        """Whether a trial of this distribution could have drawn ``value``."""
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def same_distribution(self, other: ParamSpec) -> bool:
        """Optuna keeps one distribution kind per parameter name within a study: whether
        ``other`` may share this one's name (``optuna.distributions``' own compatibility rule)."""
        try:
            check_distribution_compatibility(self.distribution, other.distribution)
        except ValueError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The spec in file format (``{type: float, low: ..., high: ...}``)."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass
class Conditional:
    """What a space fixes and tunes only when the trial chose this model."""

    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, ParamSpec] = field(default_factory=dict)


# optuna's ValueError (a phrase of it) -> our wording; anything else is shown as Optuna says it.
_OPTUNA_RULES = (
    ("`low <= high`", "low ({low}) > high ({high})"),
    ("for `log=True`", "log: true needs low > 0, got low ({low})"),
    ("`step` is not supported when `log`", "log and step cannot be combined"),
    ("step is 1 when `log`", "log and step cannot be combined"),
    ("`step > 0`", "step must be > 0, got {step!r}"),
)


def param_spec(name: str, spec: schema.Param, where: str) -> ParamSpec:
    """A parsed parameter as a ``ParamSpec`` whose Optuna distribution is valid."""
    if isinstance(spec, schema.CategoricalParam):
        return ParamSpec(name, spec.type, choices=tuple(spec.choices))
    out = ParamSpec(name, spec.type, low=spec.low, high=spec.high, log=spec.log, step=spec.step)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "not divisible by step" warning: refused below
            dist = out.distribution
    except ValueError as e:
        text = one_line(e)
        ours = next((ours for theirs, ours in _OPTUNA_RULES if theirs in text), None)
        if ours is not None:
            text = ours.format(low=out.low, high=out.high, step=out.step)
        raise SpaceError(f"{where}: {text}") from None
    if dist.high != out.high:  # optuna lowers high to the last point of the grid
        raise SpaceError(
            f"{where}: high - low ({out.high} - {out.low}) is not a multiple of step ({out.step})"
        )
    return out
