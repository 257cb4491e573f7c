"""Search spaces: every shipped YAML loads and samples; bad files fail with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from ray_xray import spaces
from ray_xray.cli import UserError
from ray_xray.config import TrainConfig
from ray_xray.spaces import SPACES_DIR, SearchSpace, SpaceError, list_spaces, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXPECTED = [
    "alexnet",
    "all",
    "cnn",
    "cnn_lstm",
    "conv1d_lstm",
    "lstm",
    "resnet18",
    "resnet18_cbam",
    "seed_cnn",
    "seed_lstm",
    "seed_resnet18_cbam",
    "seed_vit",
    "vgg16",
    "vit",
]
RECURRENT = {"lstm", "conv1d_lstm", "cnn_lstm"}
# The model registry's hyperparameters as the brief specifies them (stands in when
# ray_xray.models cannot be imported; checked against the real one when it can).
FAKE_HPARAMS = {
    "cnn": {
        "width": 64,
        "pool_size": 7,
        "head_dims": (4096, 2048),
        "dropout": 0.5,
        "conv_dropout": None,
    },
    "lstm": {
        "proj_dim": 512,
        "hidden_size": 512,
        "num_layers": 3,
        "rnn_type": "lstm",
        "bidirectional": True,
        "attention": True,
        "dropout": 0.5,
        "rnn_dropout": 0.3,
        "proj_dropout": 0.2,
    },
    "vit": {
        "patch_size": 16,
        "dim": 512,
        "depth": 6,
        "heads": 8,
        "mlp_ratio": 4.0,
        "dropout": 0.1,
    },
    "conv1d_lstm": {
        "conv_channels": 64,
        "kernel_size": 5,
        "hidden_size": 128,
        "num_layers": 1,
        "rnn_type": "lstm",
        "bidirectional": True,
        "dropout": 0.5,
    },
    "cnn_lstm": {
        "channels": (32, 64),
        "hidden_size": 128,
        "num_layers": 1,
        "rnn_type": "lstm",
        "bidirectional": True,
        "dropout": 0.5,
    },
    "resnet18": {"dropout": 0.0},
    "resnet18_cbam": {"dropout": 0.0, "reduction": 16},
    "alexnet": {"dropout": 0.5},
    "vgg16": {"dropout": 0.5},
}


def _fake_api():
    return (lambda: sorted(FAKE_HPARAMS), lambda name: dict(FAKE_HPARAMS[name]))


REAL_API = spaces.checks._models_api()


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Use the real model registry when it imports, the brief's description otherwise."""
    if REAL_API is None:
        monkeypatch.setattr(spaces.checks, "_models_api", _fake_api)


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(spaces.checks, "_models_api", _fake_api)


@pytest.mark.skipif(REAL_API is None, reason="ray_xray.models not importable")
def test_fake_registry_matches_real_one():
    list_models, model_hparams = REAL_API
    assert set(FAKE_HPARAMS) <= set(list_models())
    for name, hp in FAKE_HPARAMS.items():
        real = model_hparams(name)
        assert set(hp) <= set(real), name
        for kw, default in hp.items():
            assert real[kw] == default, (name, kw)


# --------------------------------------------------------------------------- shipped spaces


def test_list_spaces():
    assert list_spaces() == EXPECTED
    assert SPACES_DIR == Path(spaces.__file__).resolve().parents[2] / "search_spaces"
    assert (SPACES_DIR / "README.md").is_file()


def test_user_space_folders_come_first(tmp_path, monkeypatch):
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (mine / "my_vit.yaml").write_text("description: mine\n" + BASE)
    (other / "resnet18.yml").write_text("description: shadows the built-in\n" + BASE)
    monkeypatch.setenv(spaces.SPACES_ENV, f"{mine}{os.pathsep}{os.pathsep}{other}")
    assert spaces.space_dirs() == [mine.resolve(), other.resolve(), SPACES_DIR]
    assert list_spaces() == sorted({*EXPECTED, "my_vit"})
    space = load_space("my_vit")
    assert space.path == mine / "my_vit.yaml" and space.description == "mine"
    assert load_space("resnet18").path == other / "resnet18.yml"  # first folder wins
    assert load_space("vit").path == SPACES_DIR / "vit.yaml"  # built-ins stay reachable


def test_missing_user_space_folder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(spaces.SPACES_ENV, str(tmp_path / "nope"))
    with pytest.raises(SpaceError, match=r"^\$RAY_XRAY_SPACES: .*nope: no such folder$"):
        list_spaces()


def test_spaces_cli_lists_prints_and_fails_in_one_line(capsys):
    assert spaces.main([]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == EXPECTED
    assert spaces.main(["cnn", "--smoke"]) == 0
    assert "smoke overrides applied" in capsys.readouterr().out
    with pytest.raises(SpaceError, match="unknown search space 'nope'"):
        spaces.main(["nope"])  # cli.run turns it into one `error:` line, exit 2


def test_spaces_cli_check_one_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert spaces.main(["--check", str(good)]) == 0
    assert capsys.readouterr().out == f"ok  {good}\n"
    with pytest.raises(UserError, match=r"^unrecognized arguments: --bogus \(see --help\)$"):
        spaces.main(["--bogus"])


def test_spaces_cli_check_bad_file_is_one_error_line_exit_2(tmp_path):
    """The real command (cli.run): a bad file is one `error:` line naming file and key, exit 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "  weight_decay: {type: float, low: 0.1, high: 0.01}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(spaces.__file__).parents[2])}
    out = subprocess.run(
        [sys.executable, "-m", "ray_xray.spaces", "--check", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"error: {bad}: params.weight_decay: low (0.1) > high (0.01)"
    ], out.stderr


@pytest.mark.parametrize("name", list_spaces())
def test_space_tunes_the_common_knobs(name):
    space = load_space(name)
    assert isinstance(space, SearchSpace)
    assert space.name == name and space.path == SPACES_DIR / f"{name}.yaml"
    assert space.raw == yaml.safe_load(space.path.read_text())
    assert space.description and not space.smoke
    p = space.params
    assert p["lr"].type == "float" and p["lr"].log
    assert p["weight_decay"].type == "float"
    assert p["model.dropout"].type == "float"
    assert (p["focal_gamma"].low, p["focal_gamma"].high) == (0.0, 3.0)
    assert space.fixed["loss"] == "focal"
    assert p["batch_size"].type == "categorical"
    assert p["aug_strength"].type == "float"
    assert {"seeds", "flip"} <= set(p["augment"].choices)
    if name == "all":  # the shift-robust options are searched across architectures
        assert "robust" in p["augment"].choices
        assert list(p["normalize"].choices) == ["dataset", "image"]
        assert list(p["equalize"].choices) == ["none", "hist"]
    for key in ("epochs", "img_size", "precision", "lr_scheduler"):
        # the CPU spaces search img_size (tune/sizes.py); the GPU seed recipes fix it
        assert key in space.fixed or (key == "img_size" and p[key].type == "categorical")
    for model in space.models:
        if model in RECURRENT:
            tuned = space.params_for(model)
            for kw in ("num_layers", "hidden_size", "rnn_type", "bidirectional"):
                assert f"model.{kw}" in tuned, (model, kw)
            assert set(tuned["model.rnn_type"].choices) == {"lstm", "gru"}


@pytest.mark.parametrize("name", list_spaces())
def test_smoke_mode_is_tiny(name):
    space = load_space(name, smoke=True)
    assert space.smoke
    fixed = space.fixed
    assert fixed["epochs"] <= 2 and fixed["limit_per_split"] == 64
    assert fixed["img_size"] <= 64
    assert "batch_size" in fixed and "batch_size" not in space.params
    assert "lr" in space.params  # smoke pins the expensive knobs, not everything


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", list_spaces())
def test_define_by_run_with_fixed_trial(name, smoke):
    space = load_space(name, smoke=smoke)
    for model in space.models:
        config = space.default_config(model)
        trial = optuna.trial.FixedTrial(config)
        constants = space.define_by_run(trial)
        assert isinstance(constants, dict)
        assert not set(constants) & set(trial.params), (
            "Ray refuses constants that were also sampled"
        )
        flat = {**trial.params, **constants}
        assert flat == config
        cfg = space.resolve(flat)
        assert isinstance(cfg, TrainConfig) and cfg.model == model
        assert cfg.loss == "focal"
        assert all(not k.startswith("model.") for k in cfg.to_dict())


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", list_spaces())
def test_define_by_run_with_study(name, smoke):
    space = load_space(name, smoke=smoke)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        constants = space.define_by_run(trial)
        assert not set(constants) & set(trial.params)
        cfg = space.resolve({**trial.params, **constants})
        assert isinstance(cfg, TrainConfig)
        for key, spec in space.params_for(cfg.model).items():
            value = trial.params[key]
            if spec.type == "categorical":
                assert value in spec.choices
            else:
                assert spec.low <= value <= spec.high
        study.tell(trial, 0.5)


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_all_samples_conditional_params_only_for_their_model(smoke):
    space = load_space("all", smoke=smoke)
    assert space.tunes_model and set(space.conditional) <= set(space.models)
    branch_keys = {k for c in space.conditional.values() for k in (*c.params, *c.fixed)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = space.define_by_run(trial)
        model = trial.params["model"]
        seen.add(model)
        cond = space.conditional.get(model, spaces.Conditional())
        flat = {**trial.params, **constants}
        for key in branch_keys:
            assert (key in flat) == (key in cond.params or key in cond.fixed), (model, key)
        assert set(cond.params) <= set(trial.params)
        assert space.resolve(flat).model == model
        study.tell(trial, 0.5)
    assert len(seen) >= min(4, len(space.models))


def test_all_smoke_narrows_models_and_pins_their_settings():
    full, smoke = load_space("all"), load_space("all", smoke=True)
    assert set(smoke.models) < set(full.models)
    assert set(smoke.conditional) <= set(smoke.models)
    vit = smoke.conditional["vit"]
    assert vit.fixed["model.dim"] == 64 and "model.dim" not in vit.params
    assert "model.dim" in full.conditional["vit"].params


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", ["vit", "all"])
def test_vit_dims_and_patches_fit(name, smoke):
    space = load_space(name, smoke=smoke)
    fixed, params = space.fixed_for("vit"), space.params_for("vit")

    def values(key):
        return [fixed[key]] if key in fixed else list(params[key].choices)

    for dim in values("model.dim"):
        assert all(dim % heads == 0 for heads in values("model.heads"))
    assert all(
        size % patch == 0 for size in values("img_size") for patch in values("model.patch_size")
    )
    if name == "vit" and not smoke:
        assert all(64 % patch == 0 and 128 % patch == 0 for patch in values("model.patch_size"))


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("name", list_spaces())
def test_to_yaml_round_trips(name, smoke, tmp_path):
    space = load_space(name, smoke=smoke)
    saved = tmp_path / f"{name}.yaml"
    saved.write_text(space.to_yaml())
    again = load_space(saved)
    assert (again.fixed, again.params, again.conditional) == (
        space.fixed,
        space.params,
        space.conditional,
    )
    if not smoke:  # the plain dump keeps the smoke block
        smoked = load_space(saved, smoke=True)
        assert smoked.fixed == load_space(name, smoke=True).fixed


def test_ray_optuna_search_accepts_define_by_run():
    pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("all", smoke=True)
    searcher = OptunaSearch(space=space.define_by_run, metric="val_macro_f1", mode="max", seed=0)
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        cfg = space.resolve(config)
        assert cfg.epochs == 2 and cfg.model in space.models


# --------------------------------------------------------------------------- user files


GOOD = """\
description: mine
fixed: {model: vit, epochs: 3, img_size: 64, model.patch_size: 8}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.depth: {type: int, low: 2, high: 4}
smoke: {epochs: 1, img_size: 32}
"""


def test_own_yaml_by_path(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    space = load_space(str(path))
    assert space.name == "mine" and space.path == path
    assert load_space(path).fixed == space.fixed  # a Path works too
    monkeypatch.chdir(tmp_path)
    assert load_space("mine.yaml").fixed == space.fixed  # relative, by its suffix
    cfg = space.resolve(space.default_config())
    assert (
        cfg.model == "vit" and cfg.epochs == 3 and cfg.model_kwargs == {"patch_size": 8, "depth": 3}
    )
    assert cfg.lr == pytest.approx(1e-3)
    assert load_space(path, smoke=True).fixed["img_size"] == 32
    assert space.resolve(space.default_config(), overrides={"seed": 7}).seed == 7


OLD_FIXED = """\
fixed: {model: vit, epochs: 3, img_size: 64, scheduler: plateau, workers: 1}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
smoke: {epochs: 1, scheduler: none}
"""
OLD_TUNED = """\
fixed: {model: vit, epochs: 3, img_size: 64}
params:
  scheduler: {type: categorical, choices: [plateau, cosine]}
start:
  - {scheduler: cosine}
"""


def test_a_space_written_with_old_setting_names_loads_under_the_new_ones(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_FIXED)
    space = load_space(path)
    assert space.fixed["lr_scheduler"] == "plateau" and space.fixed["num_workers"] == 1
    assert "scheduler" not in space.fixed and "workers" not in space.fixed
    assert load_space(path, smoke=True).fixed["lr_scheduler"] == "none"
    assert space.resolve(space.default_config()).lr_scheduler == "plateau"
    tuned = tmp_path / "tuned.yaml"  # a tuned old name, and its start point
    tuned.write_text(OLD_TUNED)
    space = load_space(tuned)
    assert list(space.params["lr_scheduler"].choices) == ["plateau", "cosine"]
    assert space.start == [{"lr_scheduler": "cosine"}]
    pinned = space.with_settings({"scheduler": "plateau", "workers": 1})  # the API's settings
    assert pinned.fixed["lr_scheduler"] == "plateau" and "lr_scheduler" not in pinned.params
    assert pinned.fixed["num_workers"] == 1
    both = tmp_path / "both.yaml"
    both.write_text(OLD_FIXED.replace("workers: 1}", "workers: 1, lr_scheduler: cosine}"))
    with pytest.raises(SpaceError, match=r"both.yaml: fixed: 'scheduler' is the old name of"):
        load_space(both)


def test_missing_name_lists_available():
    with pytest.raises(
        SpaceError, match=r"unknown search space 'nope' \(available: alexnet, all, cnn, "
    ) as e:
        load_space("nope")
    assert "vit" in str(e.value)


def test_missing_path(tmp_path):
    with pytest.raises(SpaceError, match="no such search space file"):
        load_space(tmp_path / "gone.yaml")


def test_smoke_needs_a_smoke_block(tmp_path):
    path = tmp_path / "nosmoke.yaml"
    path.write_text(GOOD.split("smoke:")[0])
    load_space(path)
    with pytest.raises(SpaceError, match="nosmoke.yaml: no smoke: block"):
        load_space(path, smoke=True)


def test_resolve_rejects_unknown_model_keyword():
    space = load_space("vit")
    with pytest.raises(SpaceError, match="model.bogus not hyperparameter"):
        space.resolve({**space.default_config(), "model.bogus": 1})
    with pytest.raises(SpaceError, match="model 'cnn' is not in this space"):
        space.default_config("cnn")


# --------------------------------------------------------------------------- bad files

BASE = """\
fixed: {model: vit, epochs: 2}
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""
ALL = """\
fixed: {epochs: 2}
params:
  model: {type: categorical, choices: [vit, lstm]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""

BAD = {
    "unknown_param": (
        BASE + "  learning_rate: {type: float, low: 0.1, high: 0.2}\n",
        "params.learning_rate: unknown setting 'learning_rate'",
    ),
    "unknown_type": (
        BASE + "  aug_strength: {type: uniform, low: 0.0, high: 1.0}\n",
        "params.aug_strength: unknown type 'uniform' (expected float, int, categorical)",
    ),
    "bound_not_number": (
        BASE + "  aug_strength: {type: float, low: zero, high: 1.0}\n",
        "params.aug_strength: low must be a number, got 'zero'",
    ),
    "yaml_1e_string": (
        BASE + "  weight_decay: {type: float, low: 1e-6, high: 0.1, log: true}\n",
        "params.weight_decay: low must be a number, got '1e-6' (YAML reads 1e-5 as a string",
    ),
    "int_bound_float": (
        BASE + "  model.depth: {type: int, low: 2.5, high: 6}\n",
        "params.model.depth: low must be an integer for type int, got 2.5",
    ),
    "float_for_int_setting": (
        BASE + "  model.depth: {type: float, low: 2, high: 6}\n",
        "params.model.depth: the setting is an integer, use type int or categorical",
    ),
    "choice_wrong_type": (
        BASE + "  model.heads: {type: categorical, choices: [4, eight]}\n",
        "params.model.heads: choice must be an integer, got 'eight'",
    ),
    "low_gt_high": (
        BASE + "  weight_decay: {type: float, low: 0.1, high: 0.01}\n",
        "params.weight_decay: low (0.1) > high (0.01)",
    ),
    "log_low_zero": (
        BASE + "  weight_decay: {type: float, low: 0.0, high: 0.1, log: true}\n",
        "params.weight_decay: log: true needs low > 0, got low (0.0)",
    ),
    "missing_spec_key": (
        BASE + "  aug_strength: {type: float, low: 0.0}\n",
        "params.aug_strength: missing key(s) high for type float",
    ),
    "extra_spec_key": (
        BASE + "  aug_strength: {type: float, low: 0.0, high: 1.0, choices: [1]}\n",
        "params.aug_strength: unexpected key(s) choices for type float",
    ),
    "empty_choices": (
        BASE + "  batch_size: {type: categorical, choices: []}\n",
        "params.batch_size: choices must be a non-empty list, got []",
    ),
    "choices_not_list": (
        BASE + "  batch_size: {type: categorical, choices: 16}\n",
        "params.batch_size: choices must be a non-empty list, got 16",
    ),
    "list_choice": (
        BASE + "  batch_size: {type: categorical, choices: [[16, 32]]}\n",
        "params.batch_size: choices must be scalars",
    ),
    "spec_not_mapping": (BASE + "  batch_size: 16\n", "params.batch_size: expected a mapping"),
    "unknown_top_level": (BASE + "paramz: {}\n", "unknown top-level key 'paramz'"),
    "fixed_and_tuned": (
        BASE.replace("epochs: 2", "epochs: 2, lr: 0.001"),
        "params.lr: also set in fixed",
    ),
    "fixed_rejected": (
        BASE.replace("epochs: 2", "epochs: 2, precision: fp64"),
        "fixed.precision: invalid training setting: precision='fp64' is not one of auto, fp32",
    ),
    "fixed_wrong_type": (
        BASE.replace("epochs: 2", "epochs: two"),
        "fixed.epochs: must be an integer, got 'two'",
    ),
    "range_rejected": (
        BASE + "  focal_gamma: {type: float, low: -1.0, high: 2.0}\n",
        "params.focal_gamma: low -1.0: invalid training setting: focal_gamma must be >= 0",
    ),
    "unknown_model": (
        BASE.replace("model: vit", "model: vitt"),
        "fixed.model: unknown model 'vitt'",
    ),
    "no_model": (BASE.replace("model: vit, ", ""), "no model: set fixed.model"),
    "model_kwargs_key": (
        BASE.replace("epochs: 2", "epochs: 2, model_kwargs: {depth: 2}"),
        "fixed.model_kwargs: write model hyperparameters as model.<kw> keys",
    ),
    "conditional_not_a_choice": (
        ALL
        + "conditional:\n  vgg16: {params: {model.dropout: {type: float, low: 0.0, high: 0.5}}}\n",
        "conditional.vgg16: 'vgg16' is not one of the params.model choices (vit, lstm)",
    ),
    "conditional_without_tuned_model": (
        BASE + "conditional:\n  vit: {fixed: {model.depth: 2}}\n",
        "conditional: needs params.model",
    ),
    "conditional_wrong_model_kw": (
        ALL + "conditional:\n  lstm: {fixed: {model.depth: 2}}\n",
        "conditional.lstm.fixed.model.depth: 'depth' is not a hyperparameter of model 'lstm'",
    ),
    "conditional_also_top_level": (
        ALL + "conditional:\n  vit: {params: {lr: {type: float, low: 0.1, high: 0.2}}}\n",
        "conditional.vit.params.lr: also set in top-level params",
    ),
    "conditional_distributions_clash": (
        ALL
        + "conditional:\n"
        + "  vit: {params: {model.dropout: {type: float, low: 0.0, high: 0.5}}}\n"
        + "  lstm: {params: {model.dropout: {type: categorical, choices: [0.1, 0.2]}}}\n",
        "conditional.lstm.params.model.dropout: must have the same type, log and choices",
    ),
    "top_model_kw_not_shared": (
        ALL + "  model.depth: {type: int, low: 2, high: 4}\n",
        "params.model.depth: 'depth' is not a hyperparameter of model 'lstm'",
    ),
    "smoke_unknown_key": (BASE + "smoke: {epochz: 1}\n", "smoke.epochz: unknown setting 'epochz'"),
    "smoke_bad_value": (
        BASE + "smoke: {img_size: 0}\n",
        "smoke.img_size: invalid training setting: img_size must be >= 1",
    ),
    "smoke_models_not_choices": (
        ALL + "smoke: {models: [cnn]}\n",
        "smoke.models: 'cnn' is not one of the params.model choices",
    ),
    "start_not_list": (BASE + "start: {lr: 0.001}\n", "start: must be a list of mappings"),
    "start_not_tuned": (
        BASE + "start: [{lr: 0.001, epochs: 3}]\n",
        "start[0].epochs: not tuned for model 'vit' (tuned: lr)",
    ),
    "start_out_of_range": (
        BASE + "start: [{lr: 0.5}]\n",
        "start[0].lr: 0.5 is outside {'type': 'float', 'low': 0.0001, 'high': 0.01, 'log': True}",
    ),
    "start_unknown_model": (
        ALL + "start: [{model: cnn, lr: 0.001}]\n",
        "start[0].model: 'cnn' is not one of vit, lstm",
    ),
    # the range rules are optuna.distributions' own, reworded
    "log_and_step": (
        BASE + "  aug_strength: {type: float, low: 0.1, high: 1.0, log: true, step: 0.1}\n",
        "params.aug_strength: log and step cannot be combined",
    ),
    "int_log_low_zero": (
        BASE + "  model.depth: {type: int, low: 0, high: 4, log: true}\n",
        "params.model.depth: log: true needs low > 0, got low (0)",
    ),
    "step_not_positive": (
        BASE + "  model.depth: {type: int, low: 1, high: 5, step: -1}\n",
        "params.model.depth: step must be > 0, got -1",
    ),
    "not_a_multiple_of_step": (
        BASE + "  model.depth: {type: int, low: 1, high: 10, step: 4}\n",
        "params.model.depth: high - low (10 - 1) is not a multiple of step (4)",
    ),
    # the file's shape is the pydantic schema's, reworded
    "missing_type": (
        BASE + "  aug_strength: {low: 0.0, high: 1.0}\n",
        "params.aug_strength: missing key 'type' (float, int, categorical)",
    ),
    "non_finite_bound": (
        BASE + "  aug_strength: {type: float, low: 0.0, high: .inf}\n",
        "params.aug_strength: high must be finite, got inf",
    ),
    "duplicate_choice": (
        BASE + "  batch_size: {type: categorical, choices: [16, 16]}\n",
        "params.batch_size: choices must be distinct, got 16 twice",
    ),
    "branch_unknown_key": (
        ALL + "conditional:\n  vit: {fix: {model.depth: 2}}\n",
        "conditional.vit: unknown key 'fix' (did you mean 'fixed'?) (allowed: fixed, params)",
    ),
    "spec_key_not_string": (
        BASE + "  aug_strength: {type: float, low: 0.0, high: 1.0, 1: 2}\n",
        "params.aug_strength: unexpected key(s) 1 for type float",
    ),
    "start_point_not_mapping": (BASE + "start: [3]\n", "start[0]: must be a mapping, got 3"),
    "smoke_models_not_names": (
        ALL + "smoke: {models: [3]}\n",
        "smoke.models[0]: must be a string, got 3",
    ),
    "empty_file": ("", "expected a mapping with keys description, fixed, params"),
    "list_file": ("- a\n- b\n", "got a list"),
    "syntax_error": (BASE + "  aug: {type: float, low: 0.0\n", "invalid YAML at line"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file(case, tmp_path, fake_registry):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpaceError) as e:
        load_space(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    assert expected in msg, msg
    assert "\n" not in msg


def test_start_points_are_evaluated_first_and_dropped_in_smoke(tmp_path, fake_registry):
    path = tmp_path / "start.yaml"
    path.write_text(ALL + "start: [{model: lstm, lr: 0.002}]\nsmoke: {epochs: 1}\n")
    space = load_space(path)
    assert space.start == [{"model": "lstm", "lr": 0.002}]
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(space.start[0])
    trial = study.ask()
    fixed = space.define_by_run(trial)
    assert trial.params == {"model": "lstm", "lr": 0.002} and fixed == {"epochs": 2}
    assert load_space(path, smoke=True).start == []
    assert load_space(_roundtrip(space, tmp_path)).start == space.start


def _roundtrip(space: SearchSpace, tmp_path: Path) -> Path:
    out = tmp_path / "saved.yaml"
    out.write_text(space.to_yaml())
    return out


def test_bad_shipped_name_is_bare_file_name(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text(BASE + "  lr2: {type: float, low: 0.1, high: 0.2}\n")
    monkeypatch.setattr(spaces.files, "SPACES_DIR", tmp_path)
    with pytest.raises(
        SpaceError, match=r"^broken.yaml: params.lr2: unknown setting 'lr2' \(did you mean 'lr'\?\)"
    ):
        load_space("broken")


def test_python_tags_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'fixed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SpaceError) as e:
        load_space(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "python/object/apply:os.system" in msg and "only plain YAML is accepted" in msg
    assert not marker.exists()


def test_model_keywords_unchecked_without_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(spaces.checks, "_models_api", lambda: None)
    path = tmp_path / "x.yaml"
    path.write_text(BASE + "  model.whatever: {type: int, low: 1, high: 2}\n")
    assert "model.whatever" in load_space(path).params
