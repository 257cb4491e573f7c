"""What a parsed space means: every key a TrainConfig field or a model's hyperparameter, each
set in one place, values of the right type, and each fixed value, range end and choice accepted
by ``TrainConfig``. The file's shape was checked by ``schema`` already, the ranges by Optuna.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ray_xray.config import TrainConfig

from .errors import SpaceError, did_you_mean, join, one_line
from .params import Conditional, ParamSpec

if TYPE_CHECKING:
    from .space import SearchSpace

# TrainConfig fields usable as keys, with their defaults (the defaults give the expected types).
FIELD_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.default is not dataclasses.MISSING and f.name != "model_kwargs"
}


# --------------------------------------------------------------------------- models API


class Models:
    """``ray_xray.models`` (``list_models``, ``model_hparams``) if importable, else no checks."""

    def __init__(self, api: tuple[Callable[[], Iterable[str]], Callable[[str], dict]] | None):
        self.available = api is not None
        self._names = sorted(api[0]()) if api else []
        self._hparams = api[1] if api else None
        self._cache: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        """The registered model names (empty when unchecked)."""
        return list(self._names)

    def known(self, name: str) -> bool:
        """Whether ``name`` is a model (always, when unchecked)."""
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


def models() -> Models:
    """The model registry as it is now (``_models_api`` looked up at call time)."""
    return Models(_models_api())


# --------------------------------------------------------------------------- the whole space


def validate(space: SearchSpace, models: Models) -> None:
    """Raise ``SpaceError`` (``section.key: problem``) for the first meaningless part."""
    _check_model_choice(space, models)
    _check_one_place(space)
    _check_names_and_types(space, models)
    _check_branch_distributions(space.conditional)
    _check_with_trainconfig(space)


def _check_model_choice(space: SearchSpace, models: Models) -> None:
    fixed, params = space.fixed, space.params
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
                f"{where}: unknown model {name!r}{did_you_mean(name, models.names())} "
                f"(available: {join(models.names())})"
            )


def _check_one_place(space: SearchSpace) -> None:
    """Each key is fixed or tuned, at the top level or in a model's branch, not both."""
    for key in space.params:
        if key in space.fixed:
            raise SpaceError(
                f"params.{key}: also set in fixed (a setting is either fixed or tuned)"
            )
    if space.conditional and not space.tunes_model:
        raise SpaceError(
            "conditional: needs params.model (type categorical) to choose between models"
        )
    for model, cond in space.conditional.items():
        where = f"conditional.{model}"
        if model not in space.models:
            raise SpaceError(
                f"{where}: {model!r} is not one of the params.model choices ({join(space.models)})"
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
            if key in space.params or key in space.fixed:
                section = "params" if key in space.params else "fixed"
                raise SpaceError(f"{where}.params.{key}: also set in top-level {section}")
        for key in cond.fixed:
            if key == "model":
                raise SpaceError(f"{where}.fixed.model: a branch cannot change its model")
            if key in space.params:
                raise SpaceError(
                    f"{where}.fixed.{key}: tuned in top-level params (fix it per model or tune it everywhere)"
                )


def _check_names_and_types(space: SearchSpace, models: Models) -> None:
    sections = [("", space.models, space.fixed, space.params)] + [
        (f"conditional.{m}.", [m], c.fixed, c.params) for m, c in space.conditional.items()
    ]
    for prefix, model_names, fixed, params in sections:
        for key, value in fixed.items():
            where = f"{prefix}fixed.{key}"
            for default in defaults(key, where, model_names, models):
                check_value(value, default, where)
        for key, spec in params.items():
            where = f"{prefix}params.{key}"
            for default in defaults(key, where, model_names, models):
                _check_spec(spec, default, where)


def _check_branch_distributions(conditional: dict[str, Conditional]) -> None:
    """Optuna keeps one distribution kind per name: a name tuned in several branches must agree."""
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


def _check_with_trainconfig(space: SearchSpace) -> None:
    """Each fixed value, each range end / choice, each model's default config."""
    for key, value in space.fixed.items():
        try_config({"model": space.models[0], key: value}, f"fixed.{key}")
    for model in space.models:
        cond = space.conditional.get(model, Conditional())
        for key, value in cond.fixed.items():
            try_config({"model": model, key: value}, f"conditional.{model}.fixed.{key}")
        base = space.default_config(model)
        try_config(
            base, f"default config for model {model!r}" if space.tunes_model else "default config"
        )
        for key, spec in space.params_for(model).items():
            where = f"conditional.{model}.params.{key}" if key in cond.params else f"params.{key}"
            for label, value in spec.extremes():
                try_config({**base, key: value}, f"{where}: {label} {value!r}")


def check_start(space: SearchSpace) -> None:
    """Every start point names tuned settings only, with values their distributions allow."""
    for i, point in enumerate(space.start):
        where = f"start[{i}]"
        model = point.get("model", space.models[0])
        if space.tunes_model and not space.params["model"].contains(model):
            raise SpaceError(f"{where}.model: {model!r} is not one of {join(space.models)}")
        tuned = space.params_for(model)
        for key, value in point.items():
            if key == "model" and space.tunes_model:
                continue
            if key not in tuned:
                raise SpaceError(
                    f"{where}.{key}: not tuned for model {model!r} (tuned: {join(tuned)})"
                )
            if not tuned[key].contains(value):
                raise SpaceError(f"{where}.{key}: {value!r} is outside {tuned[key].to_dict()}")


# --------------------------------------------------------------------------- one key


def defaults(key: str, where: str, model_names: list[str], models: Models) -> list[Any]:
    """Check that ``key`` is a setting of every model it applies to; return the default(s)."""
    if key == "model_kwargs":
        raise SpaceError(
            f"{where}: write model hyperparameters as model.<kw> keys, not model_kwargs"
        )
    if not key.startswith("model."):
        if key not in FIELD_DEFAULTS:
            raise SpaceError(
                f"{where}: unknown setting {key!r}{did_you_mean(key, FIELD_DEFAULTS)} "
                f"(not a TrainConfig field, nor model.<kw>)"
            )
        return [FIELD_DEFAULTS[key]]
    kw = key[len("model.") :]
    if not kw:
        raise SpaceError(f"{where}: empty model hyperparameter name")
    out = []
    for name in model_names:
        hparams = models.hparams(name)
        if hparams is None or kw == "pretrained":  # unchecked; pretrained: every model takes it
            continue
        if kw not in hparams:
            raise SpaceError(
                f"{where}: {kw!r} is not a hyperparameter of model {name!r}"
                f"{did_you_mean(kw, hparams)} (it takes: {join(sorted(hparams))})"
            )
        out.append(hparams[kw])
    return out


def takers(kw: str, model_names: list[str], models: Models) -> list[str]:
    """The models among ``model_names`` that take hyperparameter ``kw`` (all when unchecked)."""
    out = []
    for name in model_names:
        hparams = models.hparams(name)
        if hparams is None or kw == "pretrained" or kw in hparams:
            out.append(name)
    return out


_WANT = (
    (bool, "true or false"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    ((list, tuple), "a list"),
)


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (None if it can or the type is open)."""
    kind = next((k for k, _ in _WANT if isinstance(default, k)), None)
    if kind is None:  # None or another type: open
        return None
    want = dict(_WANT)[kind]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return None if ok else f"must be {want}, got {value!r}"


def check_value(value: Any, default: Any, where: str) -> None:
    """Raise ``SpaceError`` when ``value`` is not of the type of the setting's ``default``."""
    problem = _type_problem(value, default)
    if problem:
        raise SpaceError(f"{where}: {problem}")


def _check_spec(spec: ParamSpec, default: Any, where: str) -> None:
    if spec.type in ("float", "int") and default is not None:
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise SpaceError(
                f"{where}: the setting is not numeric (default {default!r}), use type categorical"
            )
        if spec.type == "float" and isinstance(default, int):
            raise SpaceError(f"{where}: the setting is an integer, use type int or categorical")
    for label, value in spec.extremes():
        problem = _type_problem(value, default)
        if problem:
            raise SpaceError(f"{where}: {label} {problem}")


def try_config(flat: dict[str, Any], where: str) -> None:
    """Raise ``SpaceError`` when ``TrainConfig`` refuses the flat config ``flat``."""
    try:
        TrainConfig.from_dict(flat)
    except (TypeError, ValueError) as e:
        raise SpaceError(f"{where}: invalid training setting: {config_msg(e)}") from None


def config_msg(e: Exception) -> str:
    """A TrainConfig error in one line, without its ``config:`` prefix."""
    msg = one_line(e)
    return msg.removeprefix("config: ")
