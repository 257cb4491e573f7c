"""The declared schema of a search-space YAML file, as pydantic models.

pydantic checks the file's shape: which keys a section or a parameter takes (``extra="forbid"``),
which are required, and their types (strict: ``1e-5`` read by YAML as a string is not a number,
``2.5`` is not an int bound). :func:`parse` turns the first problem into one ``SpaceError`` line
(``params.lr: low must be a number, got 'x'``) instead of pydantic's multi-line report. What a key
*means* (a TrainConfig field, a model's hyperparameter, a value TrainConfig accepts) is checked
after parsing (``checks``); the range rules (low <= high, log needs low > 0, ...) come from
``optuna.distributions`` (``params``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpaceError, did_you_mean, join, one_line

__all__ = [
    "Branch",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "Smoke",
    "SpaceFile",
    "parse",
]

PARAM_TYPES = ("float", "int", "categorical")
Real = Annotated[float, Field(allow_inf_nan=False)]  # strict: an int is accepted, a bool is not


class _Model(BaseModel):
    """Strict types, no unknown keys; a section left empty in YAML (``fixed:``, null) is absent."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class FloatParam(_Model):
    """``{type: float, low, high[, log][, step]}``: a real range (``step``: a grid on it)."""

    type: Literal["float"]
    low: Real
    high: Real
    log: bool = False
    step: Real | None = None


class IntParam(_Model):
    """``{type: int, low, high[, log][, step]}``: an integer range."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int | None = None


class CategoricalParam(_Model):
    """``{type: categorical, choices: [...]}``: distinct scalar choices."""

    type: Literal["categorical"]
    choices: Annotated[list[Any], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _scalars_once_each(cls, choices: list[Any]) -> list[Any]:
        seen: list[tuple[type, Any]] = []
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise ValueError(
                    f"must be scalars (number, string, bool or null), got {c!r}; "
                    f"keep list-valued settings in fixed"
                )
            if (type(c), c) in seen:
                raise ValueError(f"must be distinct, got {c!r} twice")
            seen.append((type(c), c))
        return choices


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Branch(_Model):
    """``conditional.<model>``: what a trial of that model fixes and tunes besides the rest."""

    fixed: dict[str, Any] = {}
    params: dict[str, Param] = {}


class Smoke(_Model):
    """``smoke:``: constants that override or pin settings for seconds-long trials; ``models``
    narrows a tuned model, ``conditional.<model>`` pins that model's own settings."""

    model_config = ConfigDict(extra="allow")
    models: Annotated[list[str], Field(min_length=1)] | None = None
    conditional: dict[str, dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _string_keys(cls, data: Any) -> Any:
        for key in data if isinstance(data, Mapping) else ():
            if not isinstance(key, str):
                raise ValueError(f"keys must be strings, got {key!r}")
        return data

    @property
    def settings(self) -> dict[str, Any]:
        """The ``KEY: value`` constants (everything but ``models`` and ``conditional``)."""
        return dict(self.model_extra or {})


class SpaceFile(_Model):
    """A search-space file (the format: ``search_spaces/README.md``)."""

    description: str = ""
    fixed: dict[str, Any] = {}
    params: dict[str, Param] = {}
    conditional: dict[str, Branch] = {}
    start: list[dict[str, Any]] = []
    smoke: Smoke | None = None


def parse(raw: Any) -> SpaceFile:
    """Validate a loaded YAML document; raises ``SpaceError`` (one line, no file name)."""
    try:
        return SpaceFile.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(_message(e.errors(include_url=False))) from None


# --------------------------------------------------------------------------- pydantic -> one line

# What a value must be, by pydantic error type, and where a field says it better.
_MUST_BE = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "too_short": "non-empty",
    "finite_number": "finite",
}
_FIELD_MUST_BE = {
    "start": "a list of mappings (tuned name: value)",
    "choices": "a non-empty list",
    "models": "a non-empty list of model names",
}
_SPEC_EXAMPLE = "{type: float, low: 0.0, high: 1.0}"
_YAML_1E = " (YAML reads 1e-5 as a string: write 1.0e-5)"


def _message(errors: list[dict[str, Any]]) -> str:
    """The first problem pydantic found, in our words: ``where: what, got value``."""
    for e in errors:  # a key that is not a string, where a model's keys are: an unknown key too
        if e["type"] == "invalid_key":
            e["type"] = "extra_forbidden"
    first = errors[0]
    where, kind, _ = _split(first["loc"])
    here = [e for e in errors if _split(e["loc"])[0] == where]
    for wanted in ("missing", "extra_forbidden"):  # all the keys a parameter lacks, or has extra
        fields = [str(e["loc"][-1]) for e in here if e["type"] == wanted]
        if fields and kind:
            allowed = join(_PARAM_MODELS[kind].model_fields)
            if wanted == "missing":
                return f"{where}: missing key(s) {join(fields)} for type {kind}"
            return f"{where}: unexpected key(s) {join(fields)} for type {kind} (allowed: {allowed})"
    return _one(first)


def _one(e: dict[str, Any]) -> str:
    """One pydantic error as ``where: field must be ..., got value``."""
    loc, typ, value = tuple(e["loc"]), e["type"], e.get("input")
    if "[key]" in loc:  # a mapping key that is not a string: (..., section, key, "[key]")
        at = loc.index("[key]") - 1
        return f"{_dotted(loc[:at])}: keys must be strings, got {loc[at]!r}"
    where, kind, field = _split(loc)
    if typ == "extra_forbidden":
        return _unknown_key(loc)
    if typ == "union_tag_not_found":
        return f"{where}: missing key 'type' ({join(PARAM_TYPES)})"
    if typ == "union_tag_invalid":
        return f"{where}: unknown type {value.get('type')!r} (expected {join(PARAM_TYPES)})"
    if not loc and typ == "model_type":
        got = "empty" if value is None else f"a {type(value).__name__}"
        return f"expected a mapping with keys {join(SpaceFile.model_fields)}, got {got}"
    if _is_param(loc) and typ == "model_attributes_type":  # a constant where a spec belongs
        return f"{where}: expected a mapping such as {_SPEC_EXAMPLE}, got {value!r} (constants belong in fixed)"
    prefix = f"{where}: {field} " if field else f"{where}: "
    if typ == "value_error":
        return prefix + one_line(e["ctx"]["error"])
    if typ in _MUST_BE:
        must = _MUST_BE[typ]
        if typ in ("list_type", "too_short"):  # a list field says what it holds
            must = _FIELD_MUST_BE.get(str(loc[-1]), must)
        if typ == "int_type" and kind == "int":
            must += " for type int"
        hint = _YAML_1E if typ in ("float_type", "int_type") and _is_float(value) else ""
        return f"{prefix}must be {must}, got {value!r}{hint}"
    return prefix + one_line(e["msg"])


def _unknown_key(loc: tuple[Any, ...]) -> str:
    key, parent = loc[-1], loc[:-1]
    allowed = list(SpaceFile.model_fields if not parent else Branch.model_fields)
    what = "unknown top-level key" if not parent else f"{_dotted(parent)}: unknown key"
    return f"{what} {key!r}{did_you_mean(key, allowed)} (allowed: {join(allowed)})"


_PARAM_MODELS: dict[str, type[_Model]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


def _param_at(loc: tuple[Any, ...]) -> int | None:
    """Index in ``loc`` of a parameter's name (``params.NAME``, ``conditional.M.params.NAME``)."""
    if loc[:1] == ("params",):
        return 1
    if loc[:1] == ("conditional",) and loc[2:3] == ("params",):
        return 3
    return None


def _is_param(loc: tuple[Any, ...]) -> bool:
    at = _param_at(loc)
    return at is not None and len(loc) == at + 1


def _split(loc: Any) -> tuple[str, str | None, str | None]:
    """``loc`` -> (where, parameter type, field): the tag pydantic puts after a parameter's name
    (``params.lr.float.low``) is its type, not part of the path."""
    loc = tuple(loc)
    at = _param_at(loc)
    if at is None or len(loc) <= at + 1 or loc[at + 1] not in _PARAM_MODELS:
        return _dotted(loc), None, None
    return _dotted(loc[: at + 1]), loc[at + 1], _dotted(loc[at + 2 :]) or None


def _dotted(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out


def _is_float(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True
