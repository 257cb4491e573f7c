"""A sweep planned once, then run (issue 31): frozen options, a plan that holds resolved
copies of them, and the post-sweep steps (ray_xray/pipeline.py) the service calls through its
`post_steps` hook. No Ray: the plan needs none, and the steps run on a fake sweep folder
(tests/test_report.py)."""

import dataclasses
import json

import pytest
from conftest import write_external

from ray_xray.tune.options import SweepOptions


def test_options_are_frozen_and_the_plan_holds_resolved_copies(tmp_path, monkeypatch):
    from ray_xray.tune.service import plan_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "site_b").mkdir()
    opts = SweepOptions(
        space="cnn",
        smoke_test=True,
        storage="runs",
        cache="cache",
        external=["site_b", "site_b"],
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.trials = 3
    plan = plan_sweep(opts)
    assert (plan.opts.storage, plan.opts.cache) == (str(tmp_path / "runs"), str(tmp_path / "cache"))
    assert plan.opts.external == [str(tmp_path / "site_b")]  # checked, absolute, once
    assert plan.name == "cnn-synthetic-chest3-smoke"
    assert plan.exp_dir == f"{tmp_path / 'runs'}/{plan.name}"
    assert plan.files.stage == tmp_path / "runs" / plan.name
    assert not plan.files.stage.exists()  # planning writes nothing into the sweep's folder
    # The caller's options are untouched: planning them again gives the same plan.
    assert (opts.storage, opts.cache, opts.external) == ("runs", "cache", ["site_b", "site_b"])
    assert plan_sweep(opts).opts == plan.opts


def test_post_sweep_steps_score_the_external_sets_without_an_ensemble(tmp_path, capsys):
    from test_external import _fake_top
    from test_report import fake_sweep

    from ray_xray.pipeline import post_sweep_steps
    from ray_xray.tune.service import SweepPlan
    from ray_xray.tune.storage import SweepFiles

    hp = {"width": 8, "head_dims": [16], "pool_size": 2}
    exp = fake_sweep(tmp_path / "exp", [("cnn", 32, hp)])
    ext = str(write_external(tmp_path / "site_b", 4))
    opts = SweepOptions(data="synthetic:chest3", external=[ext], ensemble=False)
    plan = SweepPlan(opts, None, "exp", str(exp), SweepFiles(str(exp)))
    top = _fake_top(exp)

    added = post_sweep_steps(plan, {"rows": [], "top": top}, None)

    assert list(added) == ["external"] and not (exp / "ensemble").exists()  # --no-ensemble
    (scored,) = added["external"]["sets"]
    assert scored["data"] == ext and [m["trial_id"] for m in scored["models"]] == ["trial000"]
    (entry,) = json.loads((exp / "best_trials.json").read_text())
    assert entry["external"][ext]["n"] == scored["n"] == 12
    assert f"{ext} (12 images)" in capsys.readouterr().out
