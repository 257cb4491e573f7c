"""Search spaces: YAML files turned into Optuna define-by-run functions.

The built-in spaces ship inside the package (``ray_xray/search_spaces/``, package data found
through ``importlib.resources``); folders named in ``$RAY_XRAY_SPACES`` (``os.pathsep``-separated)
are searched first, so your own spaces are usable by name too, and any YAML path works as well.

A space fixes some settings, tunes others and, when it searches over architectures, tunes
per-model hyperparameters only for the model a trial picked. Every key is a flat
:class:`~ray_xray.config.TrainConfig` field (``lr``) or a model hyperparameter (``model.dropout``);
``SearchSpace.resolve`` turns one sampled flat config into a ``TrainConfig``.
The file format is described in ``ray_xray/search_spaces/README.md``.

    space = load_space("vit", smoke=args.smoke_test)
    searcher = OptunaSearch(space=space.define_by_run, metric=..., mode=...)
    ...
    cfg = space.resolve(config)  # inside the trainable

Validation is strict and every failure is one ``SpaceError`` line naming the file and the key.
``python -m ray_xray.spaces`` lists the spaces, ``... NAME [--smoke]`` prints one resolved,
``... --check`` validates them all.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ray_xray.config import TrainConfig

__all__ = [
    "SPACES_DIR",
    "SPACES_ENV",
    "Conditional",
    "ParamSpec",
    "SearchSpace",
    "SpaceError",
    "list_spaces",
    "load_space",
    "space_dirs",
]

# Package data: present in the wheel as in a checkout (a zipped install is not supported).
SPACES_DIR = Path(str(resources.files("ray_xray") / "search_spaces")).resolve()
SPACES_ENV = "RAY_XRAY_SPACES"  # extra folders of spaces, searched before the built-in ones
SUFFIXES = (".yaml", ".yml")
TOP_KEYS = ("description", "fixed", "params", "conditional", "start", "smoke")
BRANCH_KEYS = ("fixed", "params")
SMOKE_RESERVED = ("models", "conditional")
PARAM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # type -> (required, optional)
    "float": (("type", "low", "high"), ("log", "step")),
    "int": (("type", "low", "high"), ("log", "step")),
    "categorical": (("type", "choices"), ()),
}
# TrainConfig fields usable as keys, with their defaults (the defaults give the expected types).
FIELD_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.default is not dataclasses.MISSING and f.name != "model_kwargs"
}


class SpaceError(ValueError):
    """An invalid search space file; the message is one line naming the file and the key."""


# --------------------------------------------------------------------------- models API


class _Models:
    """``ray_xray.models`` (``list_models``, ``model_hparams``) if importable, else no checks."""

    def __init__(self, api: tuple[Callable[[], Iterable[str]], Callable[[str], dict]] | None):
        self.available = api is not None
        self._names = sorted(api[0]()) if api else []
        self._hparams = api[1] if api else None
        self._cache: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        return list(self._names)

    def known(self, name: str) -> bool:
        return not self.available or name in self._names

    def hparams(self, name: str) -> dict[str, Any] | None:
        """Keyword -> default of a model, or None when unknown/unchecked."""
        if not self.available or name not in self._names:
            return None
        if name not in self._cache:
            self._cache[name] = dict(self._hparams(name))
        return self._cache[name]


def _models_api() -> tuple[Callable[[], Iterable[str]], Callable[[str], dict]] | None:
    """The model registry used to validate ``model.<kw>`` keys (tests monkeypatch this)."""
    try:
        from ray_xray.models import list_models, model_hparams
    except ImportError:  # registry not there (yet): model names and keywords go unchecked
        return None
    return list_models, model_hparams


# --------------------------------------------------------------------------- data classes


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
        """Optuna keeps one distribution kind per parameter name within a study."""
        if self.type != other.type:
            return False
        if self.type == "categorical":
            return list(self.choices) == list(other.choices)
        return self.log == other.log

    def to_dict(self) -> dict[str, Any]:
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


@dataclass
class SearchSpace:
    """A loaded, validated search space (smoke overrides already applied if ``smoke``)."""

    name: str
    path: Path
    fixed: dict[str, Any]
    params: dict[str, ParamSpec]
    conditional: dict[str, Conditional] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    smoke: bool = False
    # Known-good points the search evaluates first (Optuna enqueue_trial), so a sweep starts
    # from the best recipe we know and spends its budget trying to beat it.
    start: list[dict[str, Any]] = field(default_factory=list)
    # Sweep-wide settings pinned by ``with_settings`` (``--set``), for the saved space's header.
    pinned: dict[str, Any] = field(default_factory=dict)

    @property
    def tunes_model(self) -> bool:
        return "model" in self.params

    @property
    def models(self) -> list[str]:
        """The model(s) a trial can use."""
        if self.tunes_model:
            return list(self.params["model"].choices)
        return [self.fixed.get("model", FIELD_DEFAULTS["model"])]

    def fixed_for(self, model: str) -> dict[str, Any]:
        """Constants of a trial using ``model`` (model-specific ones win); a fresh copy."""
        cond = self.conditional.get(model)
        return copy.deepcopy({**self.fixed, **(cond.fixed if cond else {})})

    def params_for(self, model: str) -> dict[str, ParamSpec]:
        """Tuned settings of a trial using ``model`` (the ``model`` choice itself excluded)."""
        cond = self.conditional.get(model)
        out = {k: v for k, v in self.params.items() if k != "model"}
        out.update(cond.params if cond else {})
        return out

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: suggest every tuned value, return the constants.

        Works with ``optuna.trial.Trial``/``FixedTrial`` and Ray's ``OptunaSearch(space=...)``,
        which merges the returned constants with the suggested values into one flat config.
        """
        if self.tunes_model:
            model = self.params["model"].suggest(trial)
        else:
            model = self.models[0]
        for spec in self.params_for(model).values():
            spec.suggest(trial)
        return self.fixed_for(model)

    def default_config(self, model: str | None = None) -> dict[str, Any]:
        """One concrete flat config: midpoints / first choices (``model``: pick the branch)."""
        if model is None:
            model = self.models[0]
        elif model not in self.models:
            raise SpaceError(
                f"{self.label}: model {model!r} is not in this space ({_join(self.models)})"
            )
        out = self.fixed_for(model)
        if self.tunes_model:
            out["model"] = model
        out.update({k: spec.default() for k, spec in self.params_for(model).items()})
        return out

    def resolve(
        self, flat_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> TrainConfig:
        """Fixed values + a sampled flat config (+ overrides) -> ``TrainConfig``."""
        model = (overrides or {}).get("model", flat_config.get("model", self.models[0]))
        merged = {**self.fixed_for(model), **flat_config, **(overrides or {})}
        models = _Models(_models_api())
        if not models.known(model):
            raise SpaceError(
                f"{self.label}: unknown model {model!r} (available: {_join(models.names())})"
            )
        hparams = models.hparams(model)
        if hparams is not None:
            takes = {*hparams, "pretrained"}
            bad = sorted(k for k in merged if k.startswith("model.") and k[6:] not in takes)
            if bad:
                raise SpaceError(
                    f"{self.label}: {_join(bad)} not hyperparameter(s) of model {model!r} "
                    f"(it takes: {_join(sorted(hparams))})"
                )
        try:
            return TrainConfig.from_dict(merged)
        except (TypeError, ValueError) as e:
            raise SpaceError(f"{self.label}: {_config_msg(e)}") from None

    def with_settings(self, settings: Mapping[str, Any], where: str = "--set") -> SearchSpace:
        """The space with sweep-wide settings (``--set KEY=VALUE``) pinned, as ``smoke:`` does:
        a tuned key moves from params to fixed, so the study never samples it, and a fixed one
        takes the new value. ``model`` narrows a tuned model to that one choice; a ``model.<kw>``
        that only some of a tuned model's choices take is pinned for those models only. Start
        points lose the pinned keys (and the points of other models). Returns a new, validated
        space; raises ``SpaceError`` (one line naming ``where`` and the key) on a bad setting."""
        if not settings:
            return self
        try:
            pinned = _pin_settings(self, dict(settings), _Models(_models_api()), where)
        except SpaceError as e:
            raise SpaceError(f"{self.label}: {e}") from None
        return pinned

    @property
    def label(self) -> str:
        return _label(self.path)

    def to_dict(self) -> dict[str, Any]:
        """The space in file format (smoke overrides applied when ``smoke``)."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["fixed"] = _plain(self.fixed)
        out["params"] = {k: v.to_dict() for k, v in self.params.items()}
        if self.conditional:
            out["conditional"] = {}
            for model, cond in self.conditional.items():
                branch: dict[str, Any] = {}
                if cond.fixed:
                    branch["fixed"] = _plain(cond.fixed)
                if cond.params:
                    branch["params"] = {k: v.to_dict() for k, v in cond.params.items()}
                out["conditional"][model] = branch
        if self.start:
            out["start"] = _plain(self.start)
        if not self.smoke and isinstance(self.raw.get("smoke"), Mapping):
            out["smoke"] = _plain(self.raw["smoke"])
        return out

    def to_yaml(self) -> str:
        """YAML to save beside an experiment; ``load_space`` reads it back."""
        mode = " with smoke overrides applied" if self.smoke else ""
        if self.pinned:
            mode += f"{' and' if mode else ' with'} --set {_join(f'{k}={v!r}' for k, v in self.pinned.items())}"
        header = f"# search space {self.name!r}{mode}, from {self.path}\n"
        body = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, width=100)
        return header + body


# --------------------------------------------------------------------------- loading


def space_dirs() -> list[Path]:
    """Folders searched for a space name, first match wins: ``$RAY_XRAY_SPACES``, then built-ins.

    ``$RAY_XRAY_SPACES`` holds folders separated by ``os.pathsep`` (``:`` on Linux); empty
    entries are skipped. Raises ``SpaceError`` when a named folder does not exist, so a typo
    is not silently ignored.
    """
    dirs = []
    for entry in os.environ.get(SPACES_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise SpaceError(f"${SPACES_ENV}: {entry}: no such folder")
        dirs.append(folder.resolve())
    return [*dirs, SPACES_DIR]


def list_spaces() -> list[str]:
    """Names of the spaces in ``$RAY_XRAY_SPACES`` folders and the built-in ones, sorted."""
    names = set()
    for folder in space_dirs():
        if folder.is_dir():
            names |= {p.stem for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()}
    return sorted(names)


def load_space(name_or_path: str | Path, smoke: bool = False) -> SearchSpace:
    """Load and validate a space: a name (``vit``: ``$RAY_XRAY_SPACES`` folders, then the
    built-in ones) or a path to a YAML file.

    ``smoke=True`` applies the file's ``smoke:`` block (tiny, seconds-long trials). Both the
    plain and the smoke variant are validated either way.
    """
    path = _find(name_or_path)
    label = _label(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{label}: cannot read: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{label}: {_yaml_msg(e)}") from None
    models = _Models(_models_api())
    try:
        base = _parse(raw, path)
        _validate(base, models)
        _check_start(base)
        smoke_raw = raw.get("smoke")
        smoked = None
        if smoke_raw is not None:
            smoked = _apply_smoke(base, smoke_raw, models)
            try:
                _validate(smoked, models)
            except SpaceError as e:
                raise SpaceError(f"with the smoke overrides: {e}") from None
    except SpaceError as e:
        raise SpaceError(f"{label}: {e}") from None
    if not smoke:
        return base
    if smoked is None:
        raise SpaceError(f"{label}: no smoke: block, so it cannot run as a smoke test")
    return smoked


def _find(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(SUFFIXES):
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"{text}: no such search space file")
        return path
    for folder in space_dirs():
        for suffix in SUFFIXES:
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path
    raise SpaceError(
        f"unknown search space {text!r} (available: {_join(list_spaces()) or 'none'}; "
        f"or pass a path to your own .yaml, or name its folder in ${SPACES_ENV})"
    )


def _label(path: Path) -> str:
    """How errors name a file: the bare name for built-in spaces, the path otherwise."""
    try:
        if path.resolve().parent == SPACES_DIR:
            return path.name
    except OSError:
        pass
    return str(path)


def _yaml_msg(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        msg = f"invalid YAML at {where}{what}"
    else:
        msg = f"invalid YAML: {e}"
    if isinstance(e, yaml.constructor.ConstructorError) or "!!python" in msg or "tag:" in msg:
        msg += " (only plain YAML is accepted; tags such as !!python/... are refused)"
    return " ".join(msg.split())


# --------------------------------------------------------------------------- parsing


def _parse(raw: Any, path: Path) -> SearchSpace:
    if not isinstance(raw, Mapping):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise SpaceError(f"expected a mapping with keys {_join(TOP_KEYS)}, got {kind}")
    _check_keys(raw, TOP_KEYS, "", "top-level key")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError(f"description: must be a string, got {description!r}")
    fixed = _mapping(raw.get("fixed"), "fixed")
    params = _parse_params(raw.get("params"), "params")
    conditional = {}
    for model, branch in _mapping(raw.get("conditional"), "conditional").items():
        where = f"conditional.{model}"
        branch = _mapping(branch, where)
        _check_keys(branch, BRANCH_KEYS, f"{where}: ", "key")
        conditional[model] = Conditional(
            fixed=_mapping(branch.get("fixed"), f"{where}.fixed"),
            params=_parse_params(branch.get("params"), f"{where}.params"),
        )
    if "smoke" in raw:
        _mapping(raw["smoke"], "smoke")
    start = raw.get("start") or []
    if not isinstance(start, list) or not all(isinstance(p, Mapping) for p in start):
        raise SpaceError(f"start: must be a list of mappings (tuned name: value), got {start!r}")
    return SearchSpace(
        name=path.stem,
        path=path,
        fixed=dict(fixed),
        params=params,
        conditional=conditional,
        raw=raw,
        description=description,
        start=[dict(p) for p in start],
    )


def _check_start(space: SearchSpace) -> None:
    """Every start point names tuned settings only, with values their distributions allow."""
    for i, point in enumerate(space.start):
        where = f"start[{i}]"
        model = point.get("model", space.models[0])
        if space.tunes_model and not space.params["model"].contains(model):
            raise SpaceError(f"{where}.model: {model!r} is not one of {_join(space.models)}")
        tuned = space.params_for(model)
        for key, value in point.items():
            if key == "model" and space.tunes_model:
                continue
            if key not in tuned:
                raise SpaceError(
                    f"{where}.{key}: not tuned for model {model!r} (tuned: {_join(tuned)})"
                )
            if not tuned[key].contains(value):
                raise SpaceError(f"{where}.{key}: {value!r} is outside {tuned[key].to_dict()}")


def _parse_params(section: Any, where: str) -> dict[str, ParamSpec]:
    return {
        name: _parse_param(name, spec, f"{where}.{name}")
        for name, spec in _mapping(section, where).items()
    }


def _parse_param(name: str, spec: Any, where: str) -> ParamSpec:
    if not isinstance(spec, Mapping):
        raise SpaceError(
            f"{where}: expected a mapping such as {{type: float, low: 0.0, high: 1.0}}, got {spec!r} "
            f"(constants belong in fixed)"
        )
    kind = spec.get("type")
    if "type" not in spec:
        raise SpaceError(f"{where}: missing key 'type' ({_join(PARAM_KEYS)})")
    if kind not in PARAM_KEYS:
        raise SpaceError(f"{where}: unknown type {kind!r} (expected {_join(PARAM_KEYS)})")
    required, optional = PARAM_KEYS[kind]
    missing = [k for k in required if k not in spec]
    if missing:
        raise SpaceError(f"{where}: missing key(s) {_join(missing)} for type {kind}")
    extra = [str(k) for k in spec if k not in required + optional]
    if extra:
        raise SpaceError(
            f"{where}: unexpected key(s) {_join(extra)} for type {kind} (allowed: {_join(required + optional)})"
        )

    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {choices!r}")
        seen = []
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise SpaceError(
                    f"{where}: choices must be scalars (number, string, bool or null), got {c!r}; "
                    f"keep list-valued settings in fixed"
                )
            if (type(c), c) in seen:
                raise SpaceError(f"{where}: duplicate choice {c!r}")
            seen.append((type(c), c))
        return ParamSpec(name, kind, choices=tuple(choices))

    for key in ("low", "high"):
        _check_number(spec[key], f"{where}: {key}", integer=kind == "int")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        _check_number(step, f"{where}: step", integer=kind == "int")
        if step <= 0:
            raise SpaceError(f"{where}: step must be > 0, got {step!r}")
    if low > high:
        raise SpaceError(f"{where}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got low ({low})")
    if log and step is not None and (kind == "float" or step != 1):
        raise SpaceError(f"{where}: log and step cannot be combined")
    if step is not None:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9:
            raise SpaceError(
                f"{where}: high - low ({high} - {low}) is not a multiple of step ({step})"
            )
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step)


def _check_number(value: Any, where: str, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str) and _is_float(value):
            hint = " (YAML reads 1e-5 as a string: write 1.0e-5)"
        raise SpaceError(f"{where} must be a number, got {value!r}{hint}")
    if integer and not isinstance(value, int):
        raise SpaceError(f"{where} must be an integer for type int, got {value!r}")
    if not math.isfinite(value):
        raise SpaceError(f"{where} must be finite, got {value!r}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpaceError(f"{where}: must be a mapping, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise SpaceError(f"{where}: keys must be strings, got {key!r}")
    return dict(value)


def _check_keys(mapping: Mapping, allowed: Iterable[str], prefix: str, what: str) -> None:
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise SpaceError(
                f"{prefix}unknown {what} {key!r}{_did_you_mean(key, allowed)} (allowed: {_join(allowed)})"
            )


# --------------------------------------------------------------------------- validation


def _validate(space: SearchSpace, models: _Models) -> None:
    fixed, params, conditional = space.fixed, space.params, space.conditional

    # which model(s)
    if "model" in params:
        spec = params["model"]
        if "model" in fixed:
            raise SpaceError("params.model: also set in fixed (a setting is either fixed or tuned)")
        if spec.type != "categorical" or not all(isinstance(c, str) for c in spec.choices):
            raise SpaceError("params.model: must be {type: categorical, choices: [model names]}")
        where = "params.model"
    elif "model" in fixed:
        if not isinstance(fixed["model"], str):
            raise SpaceError(f"fixed.model: must be a model name, got {fixed['model']!r}")
        where = "fixed.model"
    else:
        raise SpaceError("no model: set fixed.model, or tune params.model (type categorical)")
    for name in space.models:
        if not models.known(name):
            raise SpaceError(
                f"{where}: unknown model {name!r}{_did_you_mean(name, models.names())} (available: {_join(models.names())})"
            )

    # each key set in one place
    for key in params:
        if key in fixed:
            raise SpaceError(
                f"params.{key}: also set in fixed (a setting is either fixed or tuned)"
            )
    if conditional and not space.tunes_model:
        raise SpaceError(
            "conditional: needs params.model (type categorical) to choose between models"
        )
    for model, cond in conditional.items():
        where = f"conditional.{model}"
        if model not in space.models:
            raise SpaceError(
                f"{where}: {model!r} is not one of the params.model choices ({_join(space.models)})"
            )
        for key in cond.params:
            if key == "model":
                raise SpaceError(
                    f"{where}.params.model: the model cannot be tuned inside its own branch"
                )
            if key in cond.fixed:
                raise SpaceError(
                    f"{where}.params.{key}: also set in {where}.fixed (a setting is either fixed or tuned)"
                )
            if key in params or key in fixed:
                section = "params" if key in params else "fixed"
                raise SpaceError(f"{where}.params.{key}: also set in top-level {section}")
        for key in cond.fixed:
            if key == "model":
                raise SpaceError(f"{where}.fixed.model: a branch cannot change its model")
            if key in params:
                raise SpaceError(
                    f"{where}.fixed.{key}: tuned in top-level params (fix it per model or tune it everywhere)"
                )

    # names and value types
    for key, value in fixed.items():
        for default in _defaults(key, f"fixed.{key}", space.models, models):
            _check_value(value, default, f"fixed.{key}")
    for key, spec in params.items():
        for default in _defaults(key, f"params.{key}", space.models, models):
            _check_spec(spec, default, f"params.{key}")
    for model, cond in conditional.items():
        for key, value in cond.fixed.items():
            where = f"conditional.{model}.fixed.{key}"
            for default in _defaults(key, where, [model], models):
                _check_value(value, default, where)
        for key, spec in cond.params.items():
            where = f"conditional.{model}.params.{key}"
            for default in _defaults(key, where, [model], models):
                _check_spec(spec, default, where)

    # Optuna keeps one distribution kind per name: a name tuned in several branches must agree
    first: dict[str, tuple[str, ParamSpec]] = {}
    for model, cond in conditional.items():
        for key, spec in cond.params.items():
            if key not in first:
                first[key] = (model, spec)
            elif not spec.same_distribution(first[key][1]):
                raise SpaceError(
                    f"conditional.{model}.params.{key}: must have the same type, log and choices as "
                    f"conditional.{first[key][0]}.params.{key} (Optuna needs one distribution per name)"
                )

    # what TrainConfig accepts: each fixed value, each range end / choice, each model's default config
    for key, value in fixed.items():
        _try_config({"model": space.models[0], key: value}, f"fixed.{key}")
    for model in space.models:
        cond = conditional.get(model, Conditional())
        for key, value in cond.fixed.items():
            _try_config({"model": model, key: value}, f"conditional.{model}.fixed.{key}")
        base = space.default_config(model)
        _try_config(
            base, f"default config for model {model!r}" if space.tunes_model else "default config"
        )
        for key, spec in space.params_for(model).items():
            where = f"conditional.{model}.params.{key}" if key in cond.params else f"params.{key}"
            for label, value in spec.extremes():
                _try_config({**base, key: value}, f"{where}: {label} {value!r}")


def _defaults(key: str, where: str, model_names: list[str], models: _Models) -> list[Any]:
    """Check that ``key`` is a setting of every model it applies to; return the default(s)."""
    if key == "model_kwargs":
        raise SpaceError(
            f"{where}: write model hyperparameters as model.<kw> keys, not model_kwargs"
        )
    if key.startswith("model."):
        kw = key[len("model.") :]
        if not kw:
            raise SpaceError(f"{where}: empty model hyperparameter name")
        out = []
        for name in model_names:
            hparams = models.hparams(name)
            if hparams is None:  # registry unavailable: unchecked
                continue
            if kw == "pretrained":  # accepted by every model (a local weights file or null)
                continue
            if kw not in hparams:
                raise SpaceError(
                    f"{where}: {kw!r} is not a hyperparameter of model {name!r}"
                    f"{_did_you_mean(kw, hparams)} (it takes: {_join(sorted(hparams))})"
                )
            out.append(hparams[kw])
        return out
    if key not in FIELD_DEFAULTS:
        raise SpaceError(
            f"{where}: unknown setting {key!r}{_did_you_mean(key, FIELD_DEFAULTS)} "
            f"(not a TrainConfig field, nor model.<kw>)"
        )
    return [FIELD_DEFAULTS[key]]


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (None if it can or the type is open)."""
    if default is None:
        return None
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, (list, tuple)):
        ok, want = isinstance(value, (list, tuple)), "a list"
    else:
        return None
    return None if ok else f"must be {want}, got {value!r}"


def _check_value(value: Any, default: Any, where: str) -> None:
    problem = _type_problem(value, default)
    if problem:
        raise SpaceError(f"{where}: {problem}")


def _check_spec(spec: ParamSpec, default: Any, where: str) -> None:
    if spec.type in ("float", "int") and default is not None:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise SpaceError(
                f"{where}: the setting is not numeric (default {default!r}), use type categorical"
            )
        if spec.type == "float" and isinstance(default, int):
            raise SpaceError(f"{where}: the setting is an integer, use type int or categorical")
    for label, value in spec.extremes():
        problem = _type_problem(value, default)
        if problem:
            raise SpaceError(f"{where}: {label} {problem}")


def _try_config(flat: dict[str, Any], where: str) -> None:
    try:
        TrainConfig.from_dict(flat)
    except (TypeError, ValueError) as e:
        raise SpaceError(f"{where}: rejected by TrainConfig: {_config_msg(e)}") from None


def _config_msg(e: Exception) -> str:
    msg = " ".join(str(e).split())
    return msg[len("config: ") :] if msg.startswith("config: ") else msg


# --------------------------------------------------------------------------- smoke


def _apply_smoke(base: SearchSpace, smoke: Any, models: _Models) -> SearchSpace:
    """The space with the ``smoke:`` block applied (values override fixed ones and pin tuned ones)."""
    smoke = _mapping(smoke, "smoke")
    fixed, params = dict(base.fixed), dict(base.params)
    conditional = {
        m: Conditional(dict(c.fixed), dict(c.params)) for m, c in base.conditional.items()
    }

    if "models" in smoke:
        chosen = smoke["models"]
        if not base.tunes_model:
            raise SpaceError("smoke.models: only for spaces that tune params.model")
        if (
            not isinstance(chosen, list)
            or not chosen
            or not all(isinstance(m, str) for m in chosen)
        ):
            raise SpaceError(
                f"smoke.models: must be a non-empty list of model names, got {chosen!r}"
            )
        for m in chosen:
            if m not in base.models:
                raise SpaceError(
                    f"smoke.models: {m!r} is not one of the params.model choices ({_join(base.models)})"
                )
        params["model"] = dataclasses.replace(params["model"], choices=tuple(dict.fromkeys(chosen)))
        conditional = {m: c for m, c in conditional.items() if m in chosen}
    model_names = list(params["model"].choices) if "model" in params else base.models

    pin = _pin

    for key, value in smoke.items():
        if key in SMOKE_RESERVED:
            continue
        where = f"smoke.{key}"
        if key == "model":
            raise SpaceError(
                f"{where}: smoke cannot change the model (narrow a tuned model with smoke.models)"
            )
        if isinstance(value, Mapping):
            raise SpaceError(
                f"{where}: smoke values are constants that override or pin a setting, got a mapping"
            )
        for default in _defaults(key, where, model_names, models):
            _check_value(value, default, where)
        _try_config({"model": model_names[0], key: value}, where)
        pin(fixed, params, key, value)
        for cond in conditional.values():  # smoke wins over model-specific values too
            if key in cond.fixed or key in cond.params:
                pin(cond.fixed, cond.params, key, value)

    for model, overrides in _mapping(smoke.get("conditional"), "smoke.conditional").items():
        if model not in model_names:
            raise SpaceError(
                f"smoke.conditional.{model}: not a model of the smoke space ({_join(model_names)})"
            )
        cond = conditional.setdefault(model, Conditional())
        for key, value in _mapping(overrides, f"smoke.conditional.{model}").items():
            where = f"smoke.conditional.{model}.{key}"
            if key == "model":
                raise SpaceError(f"{where}: smoke cannot change the model")
            if key in params:
                raise SpaceError(f"{where}: tuned in top-level params, so pin it in smoke itself")
            if isinstance(value, Mapping):
                raise SpaceError(
                    f"{where}: smoke values are constants that override or pin a setting, got a mapping"
                )
            for default in _defaults(key, where, [model], models):
                _check_value(value, default, where)
            _try_config({"model": model, key: value}, where)
            pin(cond.fixed, cond.params, key, value)

    # Start points name full-size settings that smoke mode pins or narrows: not used there.
    return dataclasses.replace(
        base, fixed=fixed, params=params, conditional=conditional, smoke=True, start=[]
    )


def _pin(fixed: dict, params: dict, key: str, value: Any) -> None:
    """Fix ``key`` to ``value`` (no longer tuned if it was)."""
    params.pop(key, None)
    fixed[key] = copy.deepcopy(value)


def _takers(kw: str, model_names: list[str], models: _Models) -> list[str]:
    """The models among ``model_names`` that take hyperparameter ``kw`` (all when unchecked)."""
    out = []
    for name in model_names:
        hparams = models.hparams(name)
        if hparams is None or kw == "pretrained" or kw in hparams:
            out.append(name)
    return out


def _pin_settings(
    base: SearchSpace, settings: dict[str, Any], models: _Models, where: str
) -> SearchSpace:
    """``SearchSpace.with_settings``: every setting pinned like a ``smoke:`` value."""
    fixed, params = dict(base.fixed), dict(base.params)
    conditional = {
        m: Conditional(dict(c.fixed), dict(c.params)) for m, c in base.conditional.items()
    }
    start = [dict(p) for p in base.start]
    if "model" in settings:
        model = settings["model"]
        if not isinstance(model, str):
            raise SpaceError(f"{where} model: must be a model name, got {model!r}")
        if base.tunes_model:
            if model not in base.models:
                raise SpaceError(
                    f"{where} model: {model!r} is not one of the params.model choices "
                    f"({_join(base.models)}){_did_you_mean(model, base.models)}"
                )
            params["model"] = dataclasses.replace(params["model"], choices=(model,))
            conditional = {m: c for m, c in conditional.items() if m == model}
            start = [p for p in start if p.get("model", base.models[0]) == model]
        else:
            fixed["model"] = model
    model_names = list(params["model"].choices) if "model" in params else [fixed["model"]]
    for key, value in settings.items():
        if key == "model":
            continue
        label = f"{where} {key}"
        if isinstance(value, Mapping):
            raise SpaceError(f"{label}: must be a constant, got a mapping")
        targets = model_names
        if key.startswith("model.") and "model" in params:
            targets = _takers(key[len("model.") :], model_names, models)
            if not targets:
                raise SpaceError(
                    f"{label}: not a hyperparameter of any model of this space "
                    f"({_join(model_names)})"
                )
        for default in _defaults(key, label, targets, models):
            _check_value(value, default, label)
        _try_config({"model": targets[0], key: value}, label)
        if targets == model_names:
            _pin(fixed, params, key, value)
            for cond in conditional.values():  # the setting wins over model-specific values
                if key in cond.fixed or key in cond.params:
                    _pin(cond.fixed, cond.params, key, value)
        else:
            for m in targets:
                cond = conditional.setdefault(m, Conditional())
                _pin(cond.fixed, cond.params, key, value)
        for point in start:
            point.pop(key, None)
    pinned = dataclasses.replace(
        base, fixed=fixed, params=params, conditional=conditional,
        start=[p for p in start if p], pinned={**base.pinned, **settings},
    )  # fmt: skip
    try:
        _validate(pinned, models)
        _check_start(pinned)
    except SpaceError as e:
        raise SpaceError(
            f"with {where} {_join(f'{k}={v!r}' for k, v in settings.items())}: {e}"
        ) from None
    return pinned


# --------------------------------------------------------------------------- helpers


def _join(items: Iterable[Any]) -> str:
    return ", ".join(str(i) for i in items)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, for yaml.safe_dump."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for one-line param specs and lists (as in the files)."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = "type" in data  # a param spec
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .cli import HelpFormatter, note_renamed

    ap = argparse.ArgumentParser(
        prog="python -m ray_xray.spaces",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument(
        "space",
        nargs="?",
        help=f"a space name (built-in or in ${SPACES_ENV} folders) or a .yaml path: print it",
    )
    ap.add_argument("--smoke-test", action="store_true", help="apply the smoke: block")
    ap.add_argument("--smoke", action="store_true", dest="smoke_test", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help="validate every space (plain and smoke)")
    args = ap.parse_args(argv)
    note_renamed(sys.argv[1:] if argv is None else argv, {"--smoke": "--smoke-test"})
    if args.space:
        print(load_space(args.space, smoke=args.smoke_test).to_yaml(), end="")
    elif args.check:
        for name in list_spaces():
            load_space(name)
            load_space(name, smoke=True)
            print(f"ok  {name}")
    else:
        for name in list_spaces():
            space = load_space(name)
            where = "" if space.path.parent == SPACES_DIR else f"  [{space.path}]"
            print(f"{name:16s} {space.description}{where}")
    return 0


if __name__ == "__main__":
    from ray_xray.cli import run

    run(main)
