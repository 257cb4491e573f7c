"""The ``SearchSpace`` object: loading one, sampling it (Optuna define-by-run), resolving a
sampled flat config into a ``TrainConfig``, pinning settings and saving it back as YAML."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ray_xray.config import RENAMED_SETTINGS, TrainConfig, with_current_names

from . import checks, files, pinning, schema
from .errors import SpaceError, join
from .params import Conditional, ParamSpec, param_spec

__all__ = ["SearchSpace", "load_space"]


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
        """Whether trials choose the model (``params.model``)."""
        return "model" in self.params

    @property
    def models(self) -> list[str]:
        """The model(s) a trial can use."""
        if self.tunes_model:
            return list(self.params["model"].choices)
        return [self.fixed.get("model", checks.FIELD_DEFAULTS["model"])]

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
                f"{self.label}: model {model!r} is not in this space ({join(self.models)})"
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
        models = checks.models()
        if not models.known(model):
            raise SpaceError(
                f"{self.label}: unknown model {model!r} (available: {join(models.names())})"
            )
        hparams = models.hparams(model)
        if hparams is not None:
            takes = {*hparams, "pretrained"}
            bad = sorted(k for k in merged if k.startswith("model.") and k[6:] not in takes)
            if bad:
                raise SpaceError(
                    f"{self.label}: {join(bad)} not hyperparameter(s) of model {model!r} "
                    f"(it takes: {join(sorted(hparams))})"
                )
        try:
            return TrainConfig.from_dict(merged)
        except (TypeError, ValueError) as e:
            raise SpaceError(f"{self.label}: {checks.config_msg(e)}") from None

    def with_settings(self, settings: Mapping[str, Any], where: str = "--set") -> SearchSpace:
        """The space with sweep-wide settings (``--set KEY=VALUE``) pinned, as ``smoke:`` does:
        a tuned key moves from params to fixed, so the study never samples it, and a fixed one
        takes the new value. ``model`` narrows a tuned model to that one choice; a ``model.<kw>``
        that only some of a tuned model's choices take is pinned for those models only. Start
        points lose the pinned keys (and the points of other models). Old setting names
        (``scheduler``, config.RENAMED_SETTINGS) pin today's. Returns a new, validated space;
        raises ``SpaceError`` (one line naming ``where`` and the key) on a bad setting."""
        if not settings:
            return self
        try:
            settings = with_current_names(dict(settings))
        except ValueError as e:
            raise SpaceError(f"{self.label}: {where}: {checks.config_msg(e)}") from None
        try:
            return pinning.pin_settings(self, settings, checks.models(), where)
        except SpaceError as e:
            raise SpaceError(f"{self.label}: {e}") from None

    @property
    def label(self) -> str:
        """How errors name this space's file."""
        return files.label(self.path)

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

    def to_yaml(self, before_renames: bool = False) -> str:
        """YAML to save beside an experiment; ``load_space`` reads it back.

        ``before_renames=True``: the text the same space gave before config.RENAMED_SETTINGS
        (``lr_scheduler`` written ``scheduler``), so a sweep started then can be recognised."""
        pinned, doc = self.pinned, self.to_dict()
        if before_renames:
            pinned = _old_names(pinned)
            doc = _rename_settings(doc, lambda section, _where: _old_names(section))
        mode = " with smoke overrides applied" if self.smoke else ""
        if pinned:
            mode += f"{' and' if mode else ' with'} --set {join(f'{k}={v!r}' for k, v in pinned.items())}"
        header = f"# search space {self.name!r}{mode}, from {self.path}\n"
        body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
        return header + body


def load_space(name_or_path: str | Path, smoke: bool = False) -> SearchSpace:
    """Load and validate a space: a name (``vit``: ``$RAY_XRAY_SPACES`` folders, then the
    built-in ones) or a path to a YAML file.

    ``smoke=True`` applies the file's ``smoke:`` block (tiny, seconds-long trials). Both the
    plain and the smoke variant are validated either way.
    """
    path = files.find(name_or_path)
    models = checks.models()
    try:
        raw = _current_names(files.read_yaml(path))
        parsed = schema.parse(raw)
        base = _build(parsed, raw, path)
        checks.validate(base, models)
        checks.check_start(base)
        smoked = None
        if parsed.smoke is not None:
            smoked = pinning.apply_smoke(base, parsed.smoke, models)
            try:
                checks.validate(smoked, models)
            except SpaceError as e:
                raise SpaceError(f"with the smoke overrides: {e}") from None
    except SpaceError as e:
        raise SpaceError(f"{files.label(path)}: {e}") from None
    if not smoke:
        return base
    if smoked is None:
        raise SpaceError(f"{files.label(path)}: no smoke: block, so it cannot run as a smoke test")
    return smoked


def _old_names(settings: Mapping) -> dict:
    """`settings` with today's names of renamed settings back under their old ones."""
    old = {new: was for was, new in RENAMED_SETTINGS.items()}
    return {old.get(k, k): v for k, v in settings.items()}


def _rename_settings(doc: Any, rename: Callable[[Mapping, str], dict]) -> Any:
    """`doc` (a space document: the YAML read, or `SearchSpace.to_dict`) with `rename(section,
    where)` applied to every section that names settings: fixed, params, each conditional
    branch's, the smoke block and its conditional branches, each start point. Sections that are
    not mappings, and a document that is not one, are returned as they are (for
    ``schema.parse`` to refuse in its own words)."""
    if not isinstance(doc, Mapping):
        return doc

    def each(section: Any, where: str) -> Any:
        return rename(section, where) if isinstance(section, Mapping) else section

    out = dict(doc)
    for key in ("fixed", "params", "smoke"):
        if key in out:
            out[key] = each(out[key], key)
    if isinstance(out.get("conditional"), Mapping):
        out["conditional"] = {
            model: {k: each(v, f"conditional.{model}.{k}") for k, v in branch.items()}
            if isinstance(branch, Mapping)
            else branch
            for model, branch in out["conditional"].items()
        }
    if isinstance(out.get("smoke"), Mapping) and isinstance(
        out["smoke"].get("conditional"), Mapping
    ):
        smoke = out["smoke"]
        smoke["conditional"] = {
            m: each(v, f"smoke.conditional.{m}") for m, v in smoke["conditional"].items()
        }
    if isinstance(out.get("start"), list):
        out["start"] = [each(p, f"start[{i}]") for i, p in enumerate(out["start"])]
    return out


def _current_names(raw: Any) -> Any:
    """The YAML document with old setting names (``scheduler: plateau``, config.RENAMED_SETTINGS)
    under today's in every section that names settings (`_rename_settings`); a setting given
    under both names with different values raises ``SpaceError``."""

    def renamed(section: Mapping, where: str) -> dict:
        try:
            return with_current_names(dict(section))
        except ValueError as e:
            raise SpaceError(f"{where}: {checks.config_msg(e)}") from None

    return _rename_settings(raw, renamed)


def _build(parsed: schema.SpaceFile, raw: dict[str, Any], path: Path) -> SearchSpace:
    """The ``SearchSpace`` of a parsed file (each range a valid Optuna distribution)."""

    def specs(section: dict[str, schema.Param], where: str) -> dict[str, ParamSpec]:
        return {k: param_spec(k, spec, f"{where}.{k}") for k, spec in section.items()}

    conditional = {
        model: Conditional(dict(branch.fixed), specs(branch.params, f"conditional.{model}.params"))
        for model, branch in parsed.conditional.items()
    }
    return SearchSpace(
        name=path.stem,
        path=path,
        fixed=dict(parsed.fixed),
        params=specs(parsed.params, "params"),
        conditional=conditional,
        raw=raw,
        description=parsed.description,
        start=[dict(p) for p in parsed.start],
    )


# --------------------------------------------------------------------------- YAML out


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, for yaml.safe_dump."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
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
