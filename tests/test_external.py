"""A sweep's --external sets: checked before any trial, scored at the end with the evaluate
package, stored in best_trials.json and the ensemble's metrics.json/report, never used to choose.

The external set is a folder of class folders (no split folders) of synthetic X-rays rendered
from other seeds than the sweep's synthetic:chest3 images. Without Ray: a fake sweep folder
(tests/test_report.py) through run_ensemble with and without the hook. With Ray: one tiny
2-trial sweep through the command line.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_external

from ray_xray.tune import external
from ray_xray.tune.service import SweepOptions

CLASSES = ("normal", "pneumonia", "tuberculosis")


# ---------------------------------------------------------------- checks before the sweep


def test_external_values_split_on_commas_repeat_and_round_trip():
    from ray_xray.api import _cli_argv
    from ray_xray.tune.__main__ import build_parser

    args = build_parser().parse_args(["--external", "a, b", "--external", "c,a", "--external", ""])
    assert external.parse_specs(args.external) == ["a", "b", "c"]
    assert external.parse_specs("synthetic:chest3:20") == ["synthetic:chest3:20"]
    assert external.parse_specs(None) == [] and build_parser().parse_args([]).external == []
    argv = _cli_argv(SweepOptions(external=["x", "y"]))
    assert argv == ["--external", "x,y"]
    assert external.parse_specs(build_parser().parse_args(argv).external) == ["x", "y"]


def _bad_sweep(args: list[str], tmp_path, capsys) -> list[str]:
    """Run `python -m ray_xray.tune ARGS` in-process; it must be refused with exit 2 before
    Ray starts. Returns its output lines."""
    from ray_xray.cli import run
    from ray_xray.tune.__main__ import main

    base = [
        "--space",
        "cnn",
        "--smoke-test",
        "--data",
        "synthetic:chest3:8",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "x",
    ]
    with pytest.raises(SystemExit) as exc:
        run(main, [*base, *args])
    captured = capsys.readouterr()
    assert exc.value.code == 2, captured
    assert not (tmp_path / "runs" / "x").exists()  # nothing written for the sweep
    return (captured.out + captured.err).strip().splitlines()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "/nowhere/ext: no such folder or manifest"),
        (
            "synthetic",
            "--external synthetic:nope: unknown synthetic task; choose from chest3, binary",
        ),
        ("own", "--external synthetic:chest3:8: that is the sweep's own --data"),
        (
            "unknown_class",
            "class(es) cat unknown to the sweep's data (it knows normal, pneumonia, tuberculosis)",
        ),
        (
            "empty",
            "/empty: no images under {train,val,test}/<label>/ (skipped: 0 files); "
            "nor under <label>/ (class folders, no split folders)",
        ),
    ],
)
def test_bad_external_sets_are_one_error_line_before_the_sweep(case, message, tmp_path, capsys):
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)  # a class folder with no image
    ext = {
        "missing": lambda: "/nowhere/ext",
        "synthetic": lambda: "synthetic:nope",
        "own": lambda: "synthetic:chest3:8",
        "unknown_class": lambda: str(
            write_external(tmp_path / "ext", 2, classes=("normal", "cat"))
        ),
        "empty": lambda: str(tmp_path / "empty"),
    }[case]()
    lines = _bad_sweep(["--external", f"synthetic:chest3:20,{ext}"], tmp_path, capsys)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], lines
    assert errors[0].startswith("error: --external "), errors


def test_a_partial_external_set_is_accepted_and_said(tmp_path, capsys):
    ext = write_external(tmp_path / "tb_only", 3, classes=("tuberculosis",))
    infos = external.check_classes([str(ext)], list(CLASSES))
    assert infos == [
        {
            "data_classes": ["tuberculosis"],
            "missing_classes": ["normal", "pneumonia"],
            "note": "no split folders: every image counts as test",
        }
    ]
    assert "no normal, pneumonia images: a partial evaluation" in capsys.readouterr().err


# ---------------------------------------------------------------- scoring, no Ray


def _fake_top(exp: Path) -> list[dict]:
    """best_trials.json's entries for test_report.fake_sweep's two trials (trial000 ranks 1)."""
    table = pd.read_parquet(exp / "results.parquet")
    ok = table[table["status"] != "ERROR"].sort_values("best_val_macro_f1", ascending=False)
    return [
        {
            "rank": i + 1,
            "trial_id": r["trial_id"],
            "model": r["model"],
            "checkpoint": r["checkpoint_path"],
            "best_val_macro_f1": r["best_val_macro_f1"],
        }
        for i, r in enumerate(ok.to_dict("records"))
    ]


def _cli_headline(checkpoint: str, data: str, out: Path, capsys) -> dict:
    """metrics.json's headline and shift of `python -m ray_xray.evaluate CKPT DATA --split
    all`, run in-process as the console script runs it."""
    from ray_xray.cli import run
    from ray_xray.evaluate.__main__ import main

    with pytest.raises(SystemExit) as exc:
        run(
            main,
            [
                checkpoint,
                data,
                "--split",
                "all",
                "--out",
                str(out),
                "--no-images",
                "--device",
                "cpu",
            ],
        )
    assert exc.value.code == 0, capsys.readouterr().err[-2000:]
    return json.loads((out / "metrics.json").read_text())


def _ensemble_state(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "method": obj["method"],
        "weights": list(obj["weights"]),
        "members": obj["member_names"],
        "points": obj["operating_points"],
        "temperatures": [m["temperature"] for m in obj["members"]],
    }


def test_members_and_ensemble_are_scored_after_the_choice_and_equal_evaluate(tmp_path, capsys):
    from test_report import fake_sweep

    from ray_xray.ensemble import run_ensemble
    from ray_xray.evaluate import evaluate

    hp = {"width": 8, "head_dims": [16], "pool_size": 2}
    exp = fake_sweep(tmp_path / "exp", [("cnn", 32, hp), ("cnn", 48, hp)])
    ext = str(write_external(tmp_path / "site_b", 8))
    top = _fake_top(exp)
    opts = SweepOptions(data="synthetic:chest3", external=[ext], top_k=2)
    step = external.ExternalStep(opts, top)
    with_ext = run_ensemble(exp, top_k=2, device="cpu", external=step)
    without = run_ensemble(exp, top_k=2, device="cpu", out=tmp_path / "plain", report_html=False)
    block = step.finish(str(exp))
    table = capsys.readouterr().out

    # Never used to choose: the same members, temperatures, method, weights and thresholds.
    assert _ensemble_state(Path(with_ext["ensemble"])) == _ensemble_state(Path(without["ensemble"]))
    saved, plain = (json.loads(Path(r["metrics"]).read_text()) for r in (with_ext, without))
    for key in ("members", "ensembles", "chosen", "val_test_agreement"):
        assert saved[key] == plain[key], key
    assert saved["external"] == block == with_ext["external"] and "external" not in plain

    (s,) = block["sets"]
    assert (s["data"], s["split"], s["n"], s["missing_classes"]) == (ext, "all", 24, [])
    names = [m["name"] for m in s["models"]]
    assert names[:2] == ["cnn:trial000", "cnn:trial001"] and s["models"][2]["kind"] == "ensemble"
    # Each stored figure is what `python -m ray_xray.evaluate CKPT DATA --split all` gives.
    best = json.loads((exp / "best_trials.json").read_text())
    assert [b["trial_id"] for b in best] == ["trial000", "trial001"]
    # The command for member 1; the function it calls (no report) for member 2 and the ensemble.
    refs = [_cli_headline(best[0]["checkpoint"], ext, tmp_path / "ev0", capsys)]
    for ckpt in (best[1]["checkpoint"], with_ext["ensemble"]):
        r = evaluate(ckpt, ext, "all", out=tmp_path / "ev", device="cpu", report_html=False)
        refs.append(json.loads(json.dumps(r.to_json())))
    stored = [b["external"][ext] for b in best] + [{**s["models"][2], "n": s["n"]}]
    for got, ref in zip(stored, refs, strict=True):
        assert ref["n"] == got["n"] == 24 and ref["shift"]["reference_split"] == "test"
        assert got["headline"] == ref["headline"]
        assert got["drops"] == ref["shift"]["drops"] and got["ece"] == ref["shift"]["ece"]
        f1 = got["drops"]["macro_f1"]
        assert f1["drop"] == pytest.approx(f1["reference"] - got["headline"]["macro_f1"]["value"])
        assert (
            0
            <= got["headline"]["macro_f1"]["low"]
            <= f1["new"]
            <= got["headline"]["macro_f1"]["high"]
            <= 1
        )

    # The report's section and the console table show those numbers.
    html = (exp / "ensemble" / "report.html").read_text()
    assert 'id="external"' in html and f"{ext}: 24 images" in html
    assert html.index('id="external"') < html.index('id="operating-points"')
    f1 = s["models"][0]["headline"]["macro_f1"]
    assert f"{f1['value']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}]" in html
    row = next(ln for ln in table.splitlines() if ln.strip().startswith("cnn:trial000"))
    assert f"{f1['value']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}]" in row
    assert f"{ext} (24 images)" in table and s["models"][2]["name"] == with_ext["chosen"]
    ens_f1 = s["models"][2]["headline"]["macro_f1"]
    row = next(ln for ln in table.splitlines() if ln.strip().startswith(with_ext["chosen"]))
    assert f"{ens_f1['value']:.3f} [{ens_f1['low']:.3f}, {ens_f1['high']:.3f}]" in row


def test_the_ensemble_command_scores_external_sets(tmp_path, capsys):
    """`python -m ray_xray.ensemble EXP --external DATA` (in-process, as the console script
    runs it): the same figures as the sweep's --external, in --json's output, the ensemble's
    metrics.json and best_trials.json; the table goes to stderr so stdout stays JSON; a
    missing set is one error line before any model is loaded."""
    from test_report import fake_sweep

    from ray_xray.cli import run
    from ray_xray.ensemble.__main__ import main
    from ray_xray.tune import results

    hp = {"width": 8, "head_dims": [16], "pool_size": 2}
    exp = fake_sweep(tmp_path / "exp", [("cnn", 32, hp), ("cnn", 48, hp)])
    results.write_best_trials(exp, _fake_top(exp))  # what the sweep wrote
    ext = str(write_external(tmp_path / "site_b", 4))
    assert (
        main(
            [
                str(exp),
                "--top-k",
                "2",
                "--external",
                ext,
                "--device",
                "cpu",
                "--json",
                "--no-report",
                "--out",
                str(tmp_path / "ens"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    (s,) = result["external"]["sets"]
    assert (s["data"], s["n"]) == (ext, 12) and [m["kind"] for m in s["models"]][-1] == "ensemble"
    assert len(s["models"]) == 3 and f"{ext} (12 images)" in captured.err
    metrics = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert metrics["external"] == result["external"]
    best = json.loads((exp / "best_trials.json").read_text())
    assert [b["external"][ext]["headline"] for b in best] == [
        m["headline"] for m in s["models"][:2]
    ]

    with pytest.raises(SystemExit) as exc:
        run(main, [str(exp), "--external", str(tmp_path / "nowhere"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == [
        f"error: --external {tmp_path / 'nowhere'}: no such folder or manifest"
    ]


def test_without_an_ensemble_the_members_are_still_scored(tmp_path, capsys):
    from test_report import fake_sweep

    hp = {"width": 8, "head_dims": [16], "pool_size": 2}
    exp = fake_sweep(tmp_path / "exp", [("cnn", 32, hp)])
    ext = str(write_external(tmp_path / "tb", 4, classes=("tuberculosis", "normal")))
    top = _fake_top(exp)
    opts = SweepOptions(
        data="synthetic:chest3", external=[ext, "synthetic:chest3:5"], ensemble=False
    )
    block = external.ExternalStep(opts, top).finish(str(exp))
    assert [s["data"] for s in block["sets"]] == [ext, "synthetic:chest3:5"]
    assert [len(s["models"]) for s in block["sets"]] == [1, 1]  # no ensemble row
    (entry,) = json.loads((exp / "best_trials.json").read_text())
    partial = entry["external"][ext]
    assert partial["n"] == 8 and partial["missing_classes"] == ["pneumonia"]
    assert partial["headline"]["recall_pneumonia"]["value"] is None  # undefined: no images
    # synthetic:chest3:5: all splits (5 + 2 + 2 per class), like evaluate --split all.
    assert entry["external"]["synthetic:chest3:5"]["n"] == 27
    assert f"{ext} (8 images; no pneumonia)" in capsys.readouterr().out


def test_a_failed_scoring_is_a_results_error_naming_the_retry(tmp_path, monkeypatch):
    from ray_xray.tune import results

    opts = SweepOptions(data="synthetic:chest3", external=["synthetic:chest3:5"])
    step = external.ExternalStep(
        opts, [{"rank": 1, "trial_id": "t", "model": "cnn", "checkpoint": str(tmp_path / "gone")}]
    )
    assert step(tmp_path / "ensemble.pt") is None  # the ensemble's own outputs go on
    with pytest.raises(
        results.ResultsError, match="scoring the --external sets failed .* --resume"
    ):
        step.finish(str(tmp_path))
    assert not (tmp_path / "best_trials.json").exists()


# ---------------------------------------------------------------- one real sweep


@pytest.mark.slow_ray
def test_a_sweep_with_external_sets(smoke_sweep, tmp_path):
    """The session's smoke sweep (tests/conftest.py) ran with one external folder: the top-k
    figures land in best_trials.json, the ensemble's in its metrics.json and report, the
    table in the console; ranking and ensemble are those of validation alone."""
    from ray_xray.evaluate import evaluate

    exp, ext, out = smoke_sweep["exp"], smoke_sweep["external"], smoke_sweep["output"]
    table = pd.read_parquet(exp / "results.parquet")
    best = json.loads((exp / "best_trials.json").read_text())
    by_val = table.sort_values("best_val_macro_f1", ascending=False, kind="stable")
    assert [b["trial_id"] for b in best] == list(by_val["trial_id"])[: len(best)]
    member = best[0]
    got = member["external"][ext]
    ref = evaluate(
        member["checkpoint"], ext, "all", out=tmp_path / "ev", device="cpu", report_html=False
    )
    assert got["n"] == ref.n == 18
    assert got["headline"]["macro_f1"]["value"] == pytest.approx(
        ref.headline["macro_f1"]["value"], abs=1e-12
    )
    assert got["drops"]["macro_f1"]["reference"] == pytest.approx(
        ref.shift["reference_headline"]["macro_f1"]["value"], abs=1e-12
    )  # its whole own test split, as evaluate takes it (not the smoke sweep's subset)
    metrics = json.loads((exp / "ensemble" / "metrics.json").read_text())
    ens_row = metrics["external"]["sets"][0]["models"][-1]
    assert ens_row["kind"] == "ensemble"
    # The saved ensemble is the one validation alone picks: the ensemble command, which
    # knows nothing of the external set, chose the same from the same sweep.
    assert _ensemble_state(exp / "ensemble" / "ensemble.pt") == _ensemble_state(
        smoke_sweep["cli_out"] / "ensemble.pt"
    )
    assert 'id="external"' in (exp / "ensemble" / "report.html").read_text()
    assert "external sets (reported only" in out and f"{ext} (18 images)" in out
