"""Pinning settings of a space: the file's ``smoke:`` block and ``--set KEY=VALUE``.

A pinned key moves from params to fixed (the study no longer samples it) or replaces a fixed
value; ``models`` / ``--set model=`` narrow a tuned model. Each value is checked like a fixed one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import checks
from .errors import SpaceError, did_you_mean, join
from .params import Conditional
from .schema import Smoke

if TYPE_CHECKING:
    from .space import SearchSpace

__all__ = ["apply_smoke", "pin_settings"]


def _copy_branches(base: SearchSpace) -> dict[str, Conditional]:
    return {m: Conditional(dict(c.fixed), dict(c.params)) for m, c in base.conditional.items()}


def _pin(fixed: dict, params: dict, key: str, value: Any) -> None:
    """Fix ``key`` to ``value`` (no longer tuned if it was)."""
    params.pop(key, None)
    fixed[key] = copy.deepcopy(value)


def _check_constant(
    key: str, value: Any, where: str, model_names: list[str], models: checks.Models
) -> None:
    if isinstance(value, Mapping):
        raise SpaceError(
            f"{where}: smoke values are constants that override or pin a setting, got a mapping"
        )
    for default in checks.defaults(key, where, model_names, models):
        checks.check_value(value, default, where)
    checks.try_config({"model": model_names[0], key: value}, where)


def apply_smoke(base: SearchSpace, smoke: Smoke, models: checks.Models) -> SearchSpace:
    """The space with the ``smoke:`` block applied (values override fixed ones and pin tuned ones)."""
    fixed, params, conditional = dict(base.fixed), dict(base.params), _copy_branches(base)
    if smoke.models is not None:
        if not base.tunes_model:
            raise SpaceError("smoke.models: only for spaces that tune params.model")
        for m in smoke.models:
            if m not in base.models:
                raise SpaceError(
                    f"smoke.models: {m!r} is not one of the params.model choices ({join(base.models)})"
                )
        chosen = tuple(dict.fromkeys(smoke.models))
        params["model"] = dataclasses.replace(params["model"], choices=chosen)
        conditional = {m: c for m, c in conditional.items() if m in chosen}
    model_names = list(params["model"].choices) if "model" in params else base.models

    for key, value in smoke.settings.items():
        where = f"smoke.{key}"
        if key == "model":
            raise SpaceError(
                f"{where}: smoke cannot change the model (narrow a tuned model with smoke.models)"
            )
        _check_constant(key, value, where, model_names, models)
        _pin(fixed, params, key, value)
        for cond in conditional.values():  # smoke wins over model-specific values too
            if key in cond.fixed or key in cond.params:
                _pin(cond.fixed, cond.params, key, value)

    for model, overrides in smoke.conditional.items():
        if model not in model_names:
            raise SpaceError(
                f"smoke.conditional.{model}: not a model of the smoke space ({join(model_names)})"
            )
        cond = conditional.setdefault(model, Conditional())
        for key, value in overrides.items():
            where = f"smoke.conditional.{model}.{key}"
            if key == "model":
                raise SpaceError(f"{where}: smoke cannot change the model")
            if key in params:
                raise SpaceError(f"{where}: tuned in top-level params, so pin it in smoke itself")
            _check_constant(key, value, where, [model], models)
            _pin(cond.fixed, cond.params, key, value)

    # Start points name full-size settings that smoke mode pins or narrows: not used there.
    return dataclasses.replace(
        base, fixed=fixed, params=params, conditional=conditional, smoke=True, start=[]
    )


def _narrow_model(base: SearchSpace, model: Any, where: str, fixed, params, conditional, start):
    """``--set model=NAME``: a tuned model narrowed to that choice, a fixed one replaced."""
    if not isinstance(model, str):
        raise SpaceError(f"{where} model: must be a model name, got {model!r}")
    if not base.tunes_model:
        fixed["model"] = model
        return conditional, start
    if model not in base.models:
        raise SpaceError(
            f"{where} model: {model!r} is not one of the params.model choices "
            f"({join(base.models)}){did_you_mean(model, base.models)}"
        )
    params["model"] = dataclasses.replace(params["model"], choices=(model,))
    conditional = {m: c for m, c in conditional.items() if m == model}
    start = [p for p in start if p.get("model", base.models[0]) == model]
    return conditional, start


def pin_settings(
    base: SearchSpace, settings: dict[str, Any], models: checks.Models, where: str
) -> SearchSpace:
    """``SearchSpace.with_settings``: every setting pinned like a ``smoke:`` value."""
    fixed, params, conditional = dict(base.fixed), dict(base.params), _copy_branches(base)
    start = [dict(p) for p in base.start]
    if "model" in settings:
        conditional, start = _narrow_model(
            base, settings["model"], where, fixed, params, conditional, start
        )
    model_names = list(params["model"].choices) if "model" in params else [fixed["model"]]
    for key, value in settings.items():
        if key == "model":
            continue
        label = f"{where} {key}"
        if isinstance(value, Mapping):
            raise SpaceError(f"{label}: must be a constant, got a mapping")
        targets = model_names
        if key.startswith("model.") and "model" in params:
            targets = checks.takers(key[len("model.") :], model_names, models)
            if not targets:
                raise SpaceError(
                    f"{label}: not a hyperparameter of any model of this space ({join(model_names)})"
                )
        _check_constant(key, value, label, targets, models)
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
        base,
        fixed=fixed,
        params=params,
        conditional=conditional,
        start=[p for p in start if p],
        pinned={**base.pinned, **settings},
    )
    try:
        checks.validate(pinned, models)
        checks.check_start(pinned)
    except SpaceError as e:
        raise SpaceError(
            f"with {where} {join(f'{k}={v!r}' for k, v in settings.items())}: {e}"
        ) from None
    return pinned
