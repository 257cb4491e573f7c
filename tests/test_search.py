"""What the searcher sees: `--set` pins (never sampled), the objective Optuna records, pruning."""

from __future__ import annotations

import types

import optuna
import pytest

from ray_xray.spaces import SpaceError, load_space
from ray_xray.tune import service as S
from ray_xray.tune import trial as T


class _Stop(Exception):
    """Raised by the fake Tuner: the sweep is built, nothing runs."""


def _built_sweep(monkeypatch, tmp_path, **opts) -> tuple[object, dict]:
    """run_sweep up to `Tuner(...)`, Ray replaced by stand-ins: (search algorithm, trial_fn's
    keyword arguments)."""
    got: dict = {}
    monkeypatch.setattr(S, "init_ray", lambda **kw: None)
    monkeypatch.setattr(S, "plan_resources", lambda o: {
        "cpus_per_trial": 1.0, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0,
        "max_concurrent": 1, "cluster_cpus": 1.0, "cluster_gpus": 0.0})  # fmt: skip

    def with_parameters(fn, **kwargs):
        got["kwargs"] = kwargs
        return fn

    class Tuner:
        can_restore = staticmethod(lambda path: False)

        def __init__(self, trainable, tune_config, run_config):
            got["search"] = tune_config.search_alg

        def fit(self):
            raise _Stop

    monkeypatch.setattr(S.tune, "with_parameters", with_parameters)
    monkeypatch.setattr(S.tune, "with_resources", lambda fn, res: fn)
    monkeypatch.setattr(S.tune, "Tuner", Tuner)
    with pytest.raises(_Stop):
        S.run_sweep(S.SweepOptions(storage=str(tmp_path), data="synthetic:chest3:8", **opts))
    search = got["search"]
    return getattr(search, "searcher", search), got["kwargs"]


def _trained_config(monkeypatch, config: dict, kwargs: dict):
    """The TrainConfig trial_fn hands to Ray Train for a sampled `config`."""
    seen = {}

    def make_trainer(cfg, **kw):
        seen["cfg"] = cfg
        return types.SimpleNamespace(fit=lambda: types.SimpleNamespace(error=None))

    monkeypatch.setattr(T, "make_trainer", make_trainer)
    monkeypatch.setattr(T, "TuneReportCallback", lambda: None)
    monkeypatch.setattr(
        T.tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t")
    )
    T.trial_fn(config, **kwargs)
    return seen["cfg"]


def test_set_on_a_tuned_key_pins_it_so_the_study_never_samples_it(monkeypatch, tmp_path):
    """--set lr=... on a space that tunes lr: every trial trains with that lr and the study has
    no lr parameter (it used to sample one, record it, and train with --set's value instead)."""
    search, kwargs = _built_sweep(
        monkeypatch,
        tmp_path,
        space="resnet18",
        smoke_test=True,
        name="pin",
        settings={"lr": 1.0e-3, "model.dropout": 0.25},
    )
    for trial_id in ("a", "b"):
        config = search.suggest(trial_id)
        cfg = _trained_config(monkeypatch, config, kwargs)
        assert cfg.lr == 1.0e-3 and cfg.model_kwargs["dropout"] == 0.25
        sampled = search._ot_trials[trial_id].params
        assert "lr" not in sampled and "model.dropout" not in sampled
        assert "weight_decay" in sampled  # what --set leaves alone is still tuned
        assert cfg.weight_decay == sampled["weight_decay"]
    study = optuna.load_study(study_name="pin", storage=f"sqlite:///{tmp_path}/pin/optuna.db")
    assert all("lr" not in t.params for t in study.trials) and len(study.trials) == 2
    assert "--set lr=0.001" in (tmp_path / "pin" / "space.yaml").read_text().splitlines()[0]


def test_set_pins_like_smoke_and_refuses_bad_values():
    space = load_space("all")
    vit_only = space.with_settings({"model": "vit", "model.dim": 512})
    assert vit_only.models == ["vit"] and list(vit_only.conditional) == ["vit"]
    assert vit_only.conditional["vit"].fixed["model.dim"] == 512
    assert "model.dim" not in vit_only.conditional["vit"].params
    # A model setting that only some models take is pinned for those models only.
    dim = space.with_settings({"model.dim": 512})
    assert dim.models == space.models and "model.dim" not in dim.fixed
    assert dim.resolve(dim.default_config("vit")).model_kwargs["dim"] == 512
    assert "dim" not in dim.resolve(dim.default_config("resnet18")).model_kwargs
    # The start point (a resnet18 recipe) loses a pinned key; a start of another model goes.
    assert "lr" not in space.with_settings({"lr": 0.01}).start[0]
    assert space.with_settings({"model": "vit"}).start == []
    for bad, message in [
        ({"lrr": 0.1}, "did you mean 'lr'"),
        ({"lr": "fast"}, "--set lr: must be a number"),
        ({"model": "vitt"}, "did you mean 'vit'"),
        ({"model.nope": 1}, "not a hyperparameter of any model"),
    ]:
        with pytest.raises(SpaceError, match=message):
            space.with_settings(bad)
