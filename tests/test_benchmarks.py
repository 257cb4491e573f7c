"""The pure parts of benchmarks/: RESULTS.md rendering, settings, trial-epoch accounting.

Nothing here times anything or starts Ray.
"""

import json
import math
import platform
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `benchmarks` is a folder of the repo, not an installed package

from benchmarks import common  # noqa: E402
from benchmarks.__main__ import parse_sets  # noqa: E402


def sample(name: str, head: str, quick: bool = False) -> dict:
    res = common.result(
        name,
        settings={"img_size": 128, "models": ["a", "b"]},
        measured=f"what {name} measured",
        tables=[
            common.table(
                "t", ["variant", "img/s", "ratio"], [["fp32", 123.456, 1.0], ["bf16", 250.0, None]]
            )
        ],
        headline=[head],
        notes=["a note"],
    )
    res.update(
        command=f"python -m benchmarks --only {name}",
        quick=quick,
        duration_s=90.0,
        machine={
            "cpu": "Test CPU",
            "usable_cpus": 2,
            "torch": "2.x",
            "ray": "2.y",
            "optuna": "4.z",
            "python": "3.11",
            "date": "2026-01-02T03:04:05+00:00",
            "cpu_flags": ["avx512_bf16"],
        },
    )
    return res


def test_results_md_has_every_section_in_order_and_marks_missing_ones(tmp_path):
    common.save(sample("roofline", "roofline headline"), tmp_path)
    common.save(sample("precision", "bf16 is 1.8x", quick=True), tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert json.loads((tmp_path / "results" / "precision.json").read_text())["name"] == "precision"
    # Sections follow the numbering, whatever order they were run in.
    assert md.index("## 2. Mixed precision") < md.index("## 3. Roofline")
    assert "bf16 is 1.8x" in md and "roofline headline" in md
    assert (
        "| 1. Trial overhead | not run yet" in md and "| 5. Search efficiency | not run yet" in md
    )
    assert "`python -m benchmarks --only precision` (quick (indicative only) mode)" in md
    assert "Test CPU (avx512_bf16), 2 CPUs, torch 2.x, ray 2.y, optuna 4.z" in md  # old JSON


def test_every_section_states_the_cpu_capability_and_native_bf16(tmp_path):
    res = sample("precision", "ratio")
    res["machine"].update(torch_capability="AVX2", native_bf16=False, isa_env={})
    common.save(res, tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "Test CPU (avx512_bf16; torch AVX2, no native bf16), 2 CPUs, torch 2.x" in md
    m = common.machine()  # this machine's, as every benchmark records it
    assert m["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(m["native_bf16"], bool) and m["cpu"]
    assert "2026-01-02T03:04:05+00:00 (took 1.5 min)" in md
    assert "| fp32 | 123 | 1.00 |" in md and "| bf16 | 250 | – |" in md
    assert "settings: img_size=128, models=a,b" in md


def test_rerunning_one_benchmark_replaces_only_its_section(tmp_path):
    common.save(sample("precision", "old precision"), tmp_path)
    common.save(sample("datapath", "datapath stays"), tmp_path)
    common.save(sample("precision", "new precision"), tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "new precision" in md and "old precision" not in md and "datapath stays" in md
    assert not list((tmp_path / "results").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_cell_formatting():
    assert [
        common.fmt(v)
        for v in (None, 1234.5, 123.4, 12.34, 1.234, 0.1234, float("nan"), 7, 12345, "a|b")
    ] == ["–", "1,234", "123", "12.3", "1.23", "0.123", "–", "7", "12,345", "a\\|b"]


def test_settings_are_typed_like_their_defaults():
    defaults = {
        "full": {"n": 3, "x": 1.5, "on": True, "models": [], "seeds": [0, 1], "s": "a"},
        "quick": {"n": 1, "x": 0.5, "on": False, "models": [], "seeds": [0], "s": "b"},
    }
    got = common.resolve_settings(
        defaults, False, {"n": "5", "x": "2", "on": "no", "models": "cnn,vit", "seeds": "3,4"}
    )
    assert got == {
        "n": 5,
        "x": 2.0,
        "on": False,
        "models": ["cnn", "vit"],
        "seeds": [3, 4],
        "s": "a",
    }
    assert common.resolve_settings(defaults, True, {})["n"] == 1
    with pytest.raises(ValueError, match="unknown setting"):
        common.resolve_settings(defaults, False, {"nope": "1"})
    assert parse_sets(["precision.models=cnn"], ["precision"]) == {"precision": {"models": "cnn"}}
    with pytest.raises(ValueError, match="not selected"):
        parse_sets(["search.budget=3"], ["precision"])
    with pytest.raises(ValueError, match="NAME.KEY=VALUE"):
        parse_sets(["budget=3"], ["search"])


def test_interleave_rotates_the_order():
    calls = []
    common.interleave({k: (lambda k=k: calls.append(k) or 1.0) for k in "abc"}, repeats=3)
    assert calls == list("abcbcacab")


# ------------------------------------------------------------- search accounting


def ev(t, trial, epoch, value):
    return {"t": t, "trial": trial, "epoch": epoch, "value": value}


def test_spend_curve_orders_reports_across_trials_and_cuts_at_the_budget():
    from benchmarks.search import epochs_to_reach, spend_curve, value_at

    events = [
        ev(1.0, "A", 1, 0.50),
        ev(2.0, "B", 1, 0.40),
        ev(3.0, "A", 2, 0.60),
        ev(3.0, "A", 2, 0.60),  # a restored trial re-reporting its last epoch: counted once
        ev(4.0, "C", 1, float("nan")),  # a diverged epoch spends budget, never becomes the best
        ev(5.0, "B", 2, 0.70),
        ev(6.0, "C", 2, 0.90),
    ]
    curve = spend_curve(list(reversed(events)), budget=5)
    assert curve == [0.5, 0.5, 0.6, 0.6, 0.7]  # C's 0.90 came after the budget was spent
    assert epochs_to_reach(curve, 0.6) == 3 and epochs_to_reach(curve, 0.65) == 5
    assert epochs_to_reach(curve, 0.8) is None
    assert value_at(curve, 2) == 0.5 and value_at(curve, 99) == 0.7  # stopped early: last best
    assert value_at([], 3) is None
    assert math.isnan(spend_curve([ev(1, "A", 1, None)], 3)[0])


def test_search_summary_counts_trial_epochs_to_random_best(tmp_path, monkeypatch):
    from benchmarks import search

    monkeypatch.setattr(common, "OUT_DIR", tmp_path)
    s = {**search.DEFAULTS["quick"], "budget": 6, "seeds": [0, 1]}

    def run(curve, trials=3):
        return {
            "curve": curve,
            "trials": trials,
            "trial_epochs": [2] * trials,
            "wall_s": 60.0,
            "errors": 0,
        }

    runs = {
        "ASHA+TPE": {
            0: run([0.5, 0.6, 0.8, 0.8, 0.8, 0.8], 5),
            1: run([0.4, 0.4, 0.5, 0.7, 0.7, 0.7], 5),
        },
        "TPE": {0: run([0.5, 0.6, 0.6, 0.7, 0.7, 0.75]), 1: run([0.4, 0.4, 0.4, 0.4, 0.6, 0.6])},
        "random": {0: run([0.5, 0.6, 0.6, 0.7, 0.7, 0.7]), 1: run([0.4, 0.4, 0.5, 0.5, 0.6, 0.65])},
    }
    res = search.summarise(s, runs)
    reach = res["data"]["reach"]
    assert reach["random"] == {"0": 4, "1": 6}  # where random found its own final best
    assert reach["ASHA+TPE"] == {"0": 3, "1": 4}
    assert reach["TPE"] == {"0": 4, "1": None}  # never reached seed 1's 0.65 within budget
    table = res["tables"][0]["rows"]
    asha = next(r for r in table if r[0] == "ASHA+TPE")
    assert asha[1] == pytest.approx(0.75) and asha[6] == 3.5
    assert next(r for r in table if r[0] == "TPE")[6] is None  # a median needs every seed
    assert "ASHA+TPE after a median 3.5, 1.4x fewer" in res["headline"][1]
    assert "TPE reached it in 1/2 seed(s)" in res["headline"][1]
    assert (tmp_path / "results" / "search.png").is_file()


def test_overhead_phases_from_trace_and_launch_times():
    from benchmarks.overhead import trial_phases

    trace = [  # one trial: its function (pid 10), its worker (pid 20); another trial's marks interleave
        {"event": "trial_start", "t": 102.0, "pid": 10, "trial": "t1"},
        {"event": "worker_start", "t": 115.0, "pid": 20, "trial": "t1"},
        {"event": "data_loaded", "t": 115.5, "pid": 20, "trial": "t1"},
        {"event": "model_built", "t": 117.0, "pid": 20, "trial": "t1"},
        {"event": "epoch_start", "t": 117.5, "pid": 20, "epoch": 1},
        {"event": "epoch_start", "t": 118.0, "pid": 99, "epoch": 1},  # not this trial's worker
        {"event": "epoch_end", "t": 127.5, "pid": 20, "epoch": 1, "epoch_s": 9.5},
        {"event": "reported", "t": 128.0, "pid": 20, "epoch": 1},
        {"event": "epoch_start", "t": 128.1, "pid": 20, "epoch": 2},
        {"event": "epoch_end", "t": 138.1, "pid": 20, "epoch": 2, "epoch_s": 10.0},
        {"event": "reported", "t": 139.1, "pid": 20, "epoch": 2},
        {"event": "worker_end", "t": 139.2, "pid": 20, "trial": "t1"},
        {"event": "trial_end", "t": 141.1, "pid": 10, "trial": "t1"},
    ]
    p = trial_phases(trace, {10: 100.0, 20: 111.0})["t1"]
    assert p["tune actor start"] == 2.0 and p["controller + worker group"] == 9.0
    assert p["worker process start"] == 4.0 and p["data load"] == 0.5
    assert p["model build"] == 2.0  # data loaded -> first epoch starts
    assert p["compute (train + val)"] == 19.5 and p["epochs"] == 2
    assert p["report + checkpoint"] == pytest.approx(1.5)  # 0.5 + 1.0
    assert p["other in the loop"] == pytest.approx(0.6)  # 0.5 + 0.0 in epochs, 0.1 between
    assert p["teardown"] == pytest.approx(2.0) and p["total"] == pytest.approx(41.1)
    assert sum(v for k, v in p.items() if k not in ("total", "epochs")) == pytest.approx(p["total"])
    with pytest.raises(RuntimeError, match="incomplete trace"):
        trial_phases([r for r in trace if r["event"] != "data_loaded"], {10: 100.0, 20: 111.0})
    with pytest.raises(RuntimeError, match="launch times"):
        trial_phases(trace, {10: 100.0})


def test_overhead_phases_of_an_inline_trial():
    from benchmarks.overhead import trial_phases

    trace = [  # trained in the trial function's own process (pid 10): no worker process
        {"event": "trial_start", "t": 102.0, "pid": 10, "trial": "t1"},
        {"event": "worker_start", "t": 103.5, "pid": 10, "trial": "t1"},
        {"event": "data_loaded", "t": 103.6, "pid": 10, "trial": "t1"},
        {"event": "model_built", "t": 104.0, "pid": 10, "trial": "t1"},
        {"event": "epoch_start", "t": 104.5, "pid": 10, "epoch": 1},
        {"event": "epoch_end", "t": 114.5, "pid": 10, "epoch": 1, "epoch_s": 10.0},
        {"event": "reported", "t": 115.0, "pid": 10, "epoch": 1},
        {"event": "worker_end", "t": 115.1, "pid": 10, "trial": "t1"},
        {"event": "trial_end", "t": 115.2, "pid": 10, "trial": "t1"},
    ]
    p = trial_phases(trace, {10: 100.0})["t1"]
    assert p["tune actor start"] == 2.0 and p["controller + worker group"] == 0.0
    assert p["worker process start"] == 1.5  # importing the training code
    assert p["model build"] == pytest.approx(0.9) and p["report + checkpoint"] == pytest.approx(0.5)
    assert p["total"] == pytest.approx(15.2)
    assert sum(v for k, v in p.items() if k not in ("total", "epochs")) == pytest.approx(p["total"])


def test_g5_estimate_is_bounded_by_the_slower_of_gpu_and_data_path():
    from benchmarks.scaling import A10G, g5_estimate

    w = {
        "epochs": 2,
        "n_train": 1000,
        "n_val": 300,
        "flops_per_image": 1e9,
        "data_rate_1core": 500.0,
    }
    gpu_epoch = 1e9 * (1000 + 100) / (A10G["bf16_tensor_tflops"] * 1e12 * 0.1)  # 0.088 s
    assert g5_estimate(w, 20.0, 1, 0.1) == pytest.approx(20.0 + 2 * 2.0)  # data: 1000 / 500 img/s
    assert g5_estimate(w, 20.0, 40, 0.1) == pytest.approx(
        20.0 + 2 * 40 * gpu_epoch
    )  # GPU shared 40 ways


@pytest.mark.slow  # two processes that import torch: ~8 s on 2 idle cores
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the forced path limits an x86 CPU to AVX2",
)
def test_the_precision_benchmark_runs_this_cpu_and_a_forced_avx2_one_side_by_side():
    from benchmarks import precision

    s = {"paths_models": ["cnn_lstm"], "paths_img_size": 32, "paths_batch_size": 4}
    s |= {"paths_seconds": 0.01}  # one step per measurement: this checks the plumbing
    paths = precision.measure_paths({**s, "paths_repeats": 1})
    assert set(paths) == {"native", "avx2"}
    avx2 = paths["avx2"]
    assert avx2["capability"] == "AVX2" and avx2["native_bf16"] is False
    assert avx2["auto"]["precision"] == "fp32"  # chosen without a probe: oneDNN said no
    for p in paths.values():
        r = p["models"]["cnn_lstm"]
        assert r["rates"]["fp32"] > 0 and r["rates"]["bf16"] > 0
        assert r["bf16_vs_fp32"] == pytest.approx(r["rates"]["bf16"] / r["rates"]["fp32"])
    table = precision.paths_table(paths, s)
    assert [row[0] for row in table["rows"]] == ["native", "avx2"]
    assert any(
        "avx2 path (AVX2, native bf16 no)" in line for line in precision.paths_headline(paths)
    )


def test_value_tables_put_every_arm_beside_the_published_figures():
    """benchmarks/value.py's summary (pure): one row per scored model with intervals, the
    adapted figures and estimated prior where measured, the published table, and a headline
    per searched arm that says whether it is above, within or below the single runs' intervals
    and, on pneumonia2, whether it meets the issue's target."""
    from benchmarks import value as value_bench

    def ci(v, lo, hi):
        return {"value": v, "low": lo, "high": hi}

    s = dict(value_bench.DEFAULTS["quick"])
    prior = {"estimate": [0.37, 0.63], "interval": {"low": [0.33, 0.6], "high": [0.4, 0.67]}}
    prior["train"] = [0.26, 0.74]
    rows = [
        {"arm": "a", "seed": 0, "wall_s": 60, "accuracy": ci(0.8, 0.77, 0.83)}
        | {"macro_f1": ci(0.78, 0.75, 0.81), "auc": ci(0.9, 0.88, 0.92)},
        {"arm": "b", "seed": 0, "wall_s": 120, "trials": 5},  # no ensemble: no figures
        {"arm": "c", "seed": 0, "wall_s": 130, "accuracy": ci(0.88, 0.85, 0.9)}
        | {"macro_f1": ci(0.86, 0.83, 0.89), "auc": ci(0.95, 0.93, 0.97), "prior": prior}
        | {"adapted": {"accuracy": ci(0.9, 0.87, 0.92), "macro_f1": ci(0.89, 0.86, 0.91)}},
    ]
    brain = [
        {"arm": "a", "seed": 0, "macro_f1": ci(0.78, 0.75, 0.81)},
        {"arm": "a", "seed": 1, "macro_f1": ci(0.80, 0.77, 0.83)},
        {"arm": "b", "seed": 0, "macro_f1": ci(0.76, 0.73, 0.79)},  # inside seed 0's interval
        {"arm": "c", "seed": 0, "macro_f1": ci(0.74, 0.71, 0.77)},  # under both intervals
    ]
    res = value_bench.summarise(s, {"pneumonia2": rows, "brain4": brain})
    table, published = res["tables"]
    assert len(table["rows"]) == 3 + 4 and published["rows"][2] == [
        "AutoKeras (MedMNIST v2)",
        0.878,
        0.947,
    ]
    c = table["rows"][2]
    assert c[5] == "0.880 [0.850, 0.900]" and c[8] == "0.900 [0.870, 0.920]"
    assert c[10] == "0.630 [0.600, 0.670] (train 0.740)"
    assert table["rows"][1][5] == "-"
    assert res["headline"] == [
        "pneumonia2 at 32 px: (c) cross-validated sweep, fold ensemble, seed 0, 2.2 min: test "
        "macro-F1 0.860 "
        "[0.830, 0.890], above every single run's interval (0.780 [0.750, 0.810]); ACC 0.880, "
        "AUC 0.950 meets the target ACC >= 0.88, AUC >= 0.95",
        "brain4 at 32 px: (b) sweep, one val split, top-k ensemble, seed 0: test macro-F1 0.760 "
        "[0.730, 0.790], within every single run's interval (0.780 [0.750, 0.810], 0.800 "
        "[0.770, 0.830])",
        "brain4 at 32 px: (c) cross-validated sweep, fold ensemble, seed 0: test macro-F1 0.740 "
        "[0.710, 0.770], below every single run's interval (0.780 [0.750, 0.810], 0.800 "
        "[0.770, 0.830])",
    ]
    assert "value" in common.ORDER and common.TITLES["value"].startswith("8.")
    # one arm rerun alone (--set value.arms=c): nothing to compare with, and it says so
    alone = value_bench.summarise(s, {"brain4": brain[3:]})["headline"]
    assert alone == [
        "brain4 at 32 px: (c) cross-validated sweep, fold ensemble, seed 0: test macro-F1 0.740 "
        "[0.710, 0.770], no hand-set run in this run to compare with"
    ]
    # (d) --refit-seeds: its refits, and that same sweep's fold ensemble in the row after
    d = {"arm": "d", "seed": 1, "macro_f1": ci(0.8, 0.77, 0.83), "accuracy": ci(0.81, 0.78, 0.84)}
    d["fold_ensemble"] = {"macro_f1": ci(0.75, 0.72, 0.78), "accuracy": ci(0.76, 0.73, 0.79)}
    res = value_bench.summarise(s, {"brain4": [brain[1], d]})
    rows = res["tables"][0]["rows"]
    assert [r[1] for r in rows[1:]] == [
        "(d) cross-validated sweep, refits on all of train+val",
        "(d) that sweep's fold ensemble",
    ]
    assert rows[2][5:8] == ["0.760 [0.730, 0.790]", "0.750 [0.720, 0.780]", "-"]
    assert res["headline"] == [
        "brain4 at 32 px: (d) cross-validated sweep, refits on all of train+val, seed 1: test "
        "macro-F1 0.800 [0.770, 0.830], within every single run's interval (0.800 [0.770, "
        "0.830]); that sweep's fold ensemble 0.750 [0.720, 0.780]"
    ]


def test_precision_benchmark_leaves_out_models_this_install_cannot_build(monkeypatch):
    """Without timm, the default model list (every registered model) drops timm/* and says
    which; with timm every registered model stays."""
    from benchmarks import precision

    monkeypatch.setattr(precision, "timm_available", lambda: False)
    names, left_out = precision.buildable_models()
    assert left_out and all(n.startswith("timm/") for n in left_out)
    assert "resnet18" in names and not any(n.startswith("timm/") for n in names)
    monkeypatch.setattr(precision, "timm_available", lambda: True)
    assert precision.buildable_models() == (precision.list_models(), [])


def test_benchmark_trials_run_this_checkouts_code(monkeypatch):
    """Ray's worker processes inherit the driver's environment: `python -m benchmarks` puts its
    own checkout first on PYTHONPATH, so a clean clone that shares another checkout's venv (an
    editable install of that one) trains with its own code, not the other's. Importing the
    module changes nothing (a test process's children keep their PYTHONPATH)."""
    import os

    from benchmarks import __main__ as bench_main

    monkeypatch.setenv("PYTHONPATH", f"/elsewhere{os.pathsep}{REPO}")
    assert bench_main.workers_path(os.environ["PYTHONPATH"]) == f"{REPO}{os.pathsep}/elsewhere"
    assert os.environ["PYTHONPATH"] == f"/elsewhere{os.pathsep}{REPO}"  # imported: unchanged
    assert bench_main.main(["--only", "value", "--list-settings"]) == 0
    assert os.environ["PYTHONPATH"] == f"{REPO}{os.pathsep}/elsewhere"  # set by main
