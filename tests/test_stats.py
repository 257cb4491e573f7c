"""Interval arithmetic (Wilson, stratified bootstrap) and sensitivity-target operating points."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ray_xray import stats
from ray_xray.scores import (
    log_odds,
    operating_points,
    report,
    stored_points,
    threshold_for_sensitivity,
)


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (99, 99, 0.96264679, 1.0),  # the example: "1.000" sensitivity on 99 images
        (0, 10, 0.0, 0.27753280),
        (5, 10, 0.23659309, 0.76340691),
        (81, 263, 0.25528852, 0.36620958),
    ],
)
def test_wilson_matches_the_closed_form(k, n, lo, hi):
    from scipy.stats import binomtest

    got = stats.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-7)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert got == pytest.approx((ref.low, ref.high), abs=1e-9)  # scipy's own Wilson
    # the closed form written out independently
    z, p = 1.959963984540054, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert got == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-12)


def test_wilson_edges_and_errors():
    assert all(math.isnan(v) for v in stats.wilson(0, 0))
    with pytest.raises(ValueError):
        stats.wilson(3, 2)
    lo, hi = stats.wilson(1, 1)
    assert hi == 1.0 and 0 < lo < 1
    assert stats.proportion(3, 4) == {"value": 0.75, "k": 3, "n": 4, "ci": list(stats.wilson(3, 4))}


def test_class_proportions_count_one_vs_rest():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    p = stats.class_proportions(y, pred, ["a", "b", "c"])
    assert p["a"]["sensitivity"]["k"] == 2 and p["a"]["sensitivity"]["n"] == 3
    assert p["a"]["specificity"]["k"] == 3 and p["a"]["specificity"]["n"] == 3
    assert p["b"]["precision"]["k"] == 1 and p["b"]["precision"]["n"] == 2
    assert p["c"]["npv"]["k"] == 4 and p["c"]["npv"]["n"] == 4
    assert p["b"]["npv"]["k"] == 3 and p["b"]["npv"]["n"] == 4  # case 4 (true b, called c)


def _scores(n, seed=0, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    prob = rng.dirichlet(np.ones(k), n)
    prob[np.arange(n), y] += 0.4
    prob = np.round(prob / prob.sum(1, keepdims=True), 2)  # rounding makes ties
    prob /= prob.sum(1, keepdims=True)
    return y, prob


def test_weighted_statistics_equal_sklearn_on_the_resampled_rows():
    y, prob = _scores(300)
    w = stats.resample_weights(y, 4, seed=3)
    for b in range(4):
        idx = np.repeat(np.arange(len(y)), w[b].astype(int))
        assert np.bincount(y[idx], minlength=3).tolist() == np.bincount(y).tolist()  # stratified
        for c in range(3):
            auc = stats.weighted_auc(y == c, prob[:, c], w[b : b + 1])[0]
            assert auc == pytest.approx(roc_auc_score(y[idx] == c, prob[idx, c]), abs=1e-12)
        cm = stats.weighted_confusion(y, prob.argmax(1), w[b : b + 1], 3)
        f1 = stats.macro_f1_from_confusion(cm)[0]
        assert f1 == pytest.approx(f1_score(y[idx], prob[idx].argmax(1), average="macro"))


def test_bootstrap_contains_the_estimate_is_seeded_and_shrinks_with_n():
    small, large = _scores(150, seed=1), _scores(2400, seed=1)
    widths = []
    for y, prob in (small, large):
        ci = stats.bootstrap(y, prob, ["a", "b", "c"], n_boot=1000, seed=0)
        f1 = f1_score(y, prob.argmax(1), average="macro")
        auc = roc_auc_score(y, prob, multi_class="ovr", average="macro")
        assert ci["macro_f1"][0] <= f1 <= ci["macro_f1"][1]
        assert ci["auc"][0] <= auc <= ci["auc"][1]
        assert ci["accuracy"][0] <= accuracy_score(y, prob.argmax(1)) <= ci["accuracy"][1]
        for c, name in enumerate("abc"):
            lo, hi = ci["auc_per_class"][name]
            assert lo <= roc_auc_score(y == c, prob[:, c]) <= hi
        widths.append(ci["macro_f1"][1] - ci["macro_f1"][0])
        assert stats.bootstrap(y, prob, ["a", "b", "c"], n_boot=1000, seed=0) == ci  # seeded
    # 16x the cases: about 4x narrower (1/sqrt(n)); at least 2.5x here
    assert widths[1] < widths[0] / 2.5


def test_an_absent_class_is_left_out_of_the_macro_averages():
    # The one rule (ray_xray/stats.py): an absent class has NaN recall and AUC, and macro-F1 /
    # macro-AUC average over the classes present. Hand-computed case: 4 cases of a, 2 of b,
    # none of c; decisions a a b c | b a.
    y = np.array([0, 0, 0, 0, 1, 1])
    prob = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.7, 0.2, 0.1],
            [0.3, 0.6, 0.1],
            [0.3, 0.2, 0.5],
            [0.2, 0.7, 0.1],
            [0.5, 0.4, 0.1],
        ]
    )
    # a: TP 2, FN 2, FP 1 -> F1 4/7; b: TP 1, FN 1, FP 1 -> F1 1/2; c: absent, left out.
    # AUC a vs rest: a-scores 0.8 0.7 0.3 0.3 vs 0.2 0.5: pairs won 2+2+1+1 = 6 of 8 -> 0.75;
    # AUC b vs rest: b-scores 0.7 0.4 vs 0.1 0.2 0.6 0.2: pairs won 4+3 = 7 of 8 -> 0.875.
    p = stats.point(y, prob, ["a", "b", "c"])
    assert p["macro_f1"] == pytest.approx((4 / 7 + 1 / 2) / 2)
    assert p["accuracy"] == pytest.approx(3 / 6)
    assert math.isnan(p["recall_c"]) and p["recall_a"] == 0.5 and p["recall_b"] == 0.5
    assert p["auc"] == pytest.approx((6 / 8 + 7 / 8) / 2)
    ci = stats.bootstrap(y, prob, ["a", "b", "c"], n_boot=200)
    assert all(math.isnan(v) for v in ci["auc_per_class"]["c"])
    assert ci["auc"][0] <= p["auc"] <= ci["auc"][1]
    assert ci["macro_f1"][0] <= p["macro_f1"] <= ci["macro_f1"][1]
    # one present class: macro-AUC is undefined, macro-F1 is that class's F1
    one = stats.point(np.zeros(6, int), prob, ["a", "b", "c"])
    assert math.isnan(one["auc"]) and one["macro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 3))


def test_report_intervals_hold_wilson_and_bootstrap():
    y, prob = _scores(200)
    r = report(y, prob, ["a", "b", "c"], intervals=True, n_boot=300)
    sens = r["intervals"]["per_class"]["b"]["sensitivity"]
    assert sens["value"] == pytest.approx(r["recall"]["b"])
    assert sens["ci"] == list(stats.wilson(sens["k"], sens["n"]))
    assert r["intervals"]["bootstrap"]["n_boot"] == 300
    assert "intervals" not in report(y, prob, ["a", "b", "c"])


@pytest.mark.parametrize("target", [0.90, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_point_reaches_the_target_sensitivity_on_validation(target, seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 2, n)
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(2)
    prob = np.stack([1 - score, score], 1)
    ops = operating_points(
        y, prob, y, prob, ["neg", "pos"], specificities=(), sensitivities=(target,)
    )
    row = ops["pos"][f"sens{target:.2f}"]
    assert row["kind"] == "sensitivity" and row["val_sensitivity"] >= target
    # the most specific such threshold: the next higher observed score breaks the target
    higher = score[score >= row["threshold"]]
    above = higher[higher > higher.min()]
    if len(above):
        assert (score[y == 1] >= above.min()).mean() < target
    t = row["test"]["sensitivity"]
    assert t["value"] == row["test_sensitivity"] and t["ci"][0] <= t["value"] <= t["ci"][1]
    assert row["threshold_logit"] == pytest.approx(
        math.log(row["threshold"] / (1 - row["threshold"]))
    )
    assert threshold_for_sensitivity(np.array([]), score, target) is None
    assert stored_points(ops) == {
        "neg": {f"sens{target:.2f}": ops["neg"][f"sens{target:.2f}"]["threshold"]},
        "pos": {f"sens{target:.2f}": row["threshold"]},
    }


def test_log_odds_keeps_thresholds_near_one_apart():
    assert log_odds(0.5) == 0.0
    assert log_odds(0.99999) - log_odds(0.9999) == pytest.approx(math.log(10), abs=1e-3)
    assert log_odds(None) is None
