"""Prior adaptation (Saerens et al. 2002): EM recovers a known shifted prior on synthetic,
calibrated posteriors, within its bootstrap interval; a known prevalence re-weights exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ray_xray import prior


def posteriors(target, train, n=3000, seed=0):
    """Images drawn under `target`; exact posteriors under `train` (1-D Gaussians, unit
    variance, one mean per class): what a perfectly calibrated model trained under `train`
    outputs on a site with prior `target`."""
    rng = np.random.default_rng(seed)
    k = len(target)
    means = np.linspace(-1.5, 1.5, k)
    y = rng.choice(k, size=n, p=target)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    post = lik * np.asarray(train)
    return y, post / post.sum(1, keepdims=True)


@pytest.mark.parametrize(
    "train,target",
    [((0.26, 0.74), (0.375, 0.625)), ((0.5, 0.3, 0.2), (0.2, 0.3, 0.5))],
)
def test_em_recovers_a_known_shifted_prior_within_its_interval(train, target):
    y, prob = posteriors(target, train)
    out = prior.adapt(prob, train, "em", n_boot=100, seed=1)
    est, iv = np.array(out["prior"]), out["interval"]
    assert np.all(np.array(iv["low"]) <= target) and np.all(np.array(iv["high"]) >= target)
    assert np.abs(est - target).max() < 0.04
    # the interval says something: narrower than the shift it detects
    assert np.max(np.array(iv["high"]) - np.array(iv["low"])) < 0.1
    # adapted posteriors fit the site better than the unadapted ones
    nll = lambda p: -np.mean(np.log(p[np.arange(len(y)), y]))  # noqa: E731
    assert nll(out["prob"]) < nll(prob)


def test_em_without_shift_stays_at_the_training_prior():
    y, prob = posteriors((0.3, 0.7), (0.3, 0.7), seed=3)
    out = prior.adapt(prob, (0.3, 0.7), "em", n_boot=50)
    lo, hi = np.array(out["interval"]["low"]), np.array(out["interval"]["high"])
    assert lo[1] <= 0.7 <= hi[1] and lo[0] <= 0.3 <= hi[0]
    assert abs(out["prior"][1] - 0.7) < 0.04


def test_known_prevalence_reweights_by_bayes_rule():
    prob = np.array([[0.5, 0.5], [0.9, 0.1]])
    out = prior.adapt(prob, (0.25, 0.75), "known", prevalence=(0.5, 0.5))
    # odds x (0.5/0.5) / (0.25/0.75) = odds x 1/3 for class 1
    assert out["prob"][0] == pytest.approx([0.75, 0.25])
    assert out["prior"] == [0.5, 0.5] and out["interval"] is None


def test_prevalence_parsing_and_bad_input():
    assert prior.parse_prevalence("pneumonia=0.625", ["normal", "pneumonia"]) == pytest.approx(
        [0.375, 0.625]
    )
    assert prior.parse_prevalence("0.2,0.8", ["a", "b"]) == [0.2, 0.8]
    for text in ("0.5", "x=0.3", "a=1.2", "0.5,0.6"):
        with pytest.raises(ValueError, match="--prevalence"):
            prior.parse_prevalence(text, ["a", "b"])
    with pytest.raises(ValueError, match="positive"):
        prior.reweight(np.ones((1, 2)) / 2, (0, 1), (0.5, 0.5))
    with pytest.raises(ValueError, match="em"):
        prior.adapt(np.ones((1, 2)) / 2, (0.5, 0.5), "mle")


def test_evaluate_and_predict_report_adapted_figures_beside_the_unadapted(tmp_path, capsys):
    """`evaluate --adapt-prior em` and `predict --prevalence`: the unadapted figures stay as
    they were, the adapted ones and the prior come beside them."""
    import json

    import torch

    from ray_xray import checkpoint
    from ray_xray.cli import run
    from ray_xray.config import TrainConfig
    from ray_xray.data import load_for_config
    from ray_xray.evaluate.__main__ import main as evaluate_main
    from ray_xray.inference import build_model
    from ray_xray.predict import main as predict_main
    from tests.conftest import grey_png

    torch.manual_seed(0)
    cfg = TrainConfig(
        model="cnn",
        data="synthetic:chest3:10",
        img_size=32,
        precision="fp32",
        device="cpu",
        model_kwargs={"width": 8, "head_dims": [16], "pool_size": 2},
    )
    data = load_for_config(cfg)
    rec = checkpoint.model_record(build_model(cfg, 3), cfg, data.classes, data.mean, data.std, {})
    checkpoint.atomic_save(rec, tmp_path / "best_model.pt")
    args = [str(tmp_path / "best_model.pt"), cfg.data, "--no-shift", "--bootstrap", "20"]
    for extra in ([], ["--adapt-prior", "em"]):
        with pytest.raises(SystemExit) as exc:
            run(evaluate_main, [*args, "--out", str(tmp_path / f"ev{len(extra)}"), *extra])
        assert exc.value.code == 0
    plain = json.loads((tmp_path / "ev0" / "metrics.json").read_text())
    both = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert plain["prior_adaptation"] is None and plain["headline"] == both["headline"]
    a = both["prior_adaptation"]
    assert a["method"] == "em" and len(a["prior"]) == 3 and len(a["interval"]["low"]) == 3
    assert a["train_prior"] == pytest.approx([1 / 3] * 3)  # synthetic:chest3 is balanced
    assert set(a["headline"]) == set(both["headline"])
    assert "prior-adapted: accuracy" in capsys.readouterr().out

    images = [str(grey_png(tmp_path / f"{v}.png", v)) for v in (40, 120, 200)]
    with pytest.raises(SystemExit) as exc:
        run(predict_main, [str(tmp_path / "best_model.pt"), *images, "--json"])
    rows = json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:
        run(
            predict_main,
            [str(tmp_path / "best_model.pt"), *images, "--json", "--prevalence", "normal=0.8"],
        )
    assert exc.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prior_adaptation"]["prior"] == pytest.approx([0.8, 0.1, 0.1])
    for r, r2 in zip(rows, out["predictions"], strict=True):
        assert r["probabilities"] == r2["probabilities"]  # unadapted, unchanged
        p, q = r["probabilities"], r2["adapted"]["probabilities"]
        assert q["normal"] / q["pneumonia"] == pytest.approx(
            p["normal"] / p["pneumonia"] * 0.8 / 0.1, rel=1e-6
        )
    with pytest.raises(SystemExit) as exc:
        run(predict_main, [str(tmp_path / "best_model.pt"), *images, "--prevalence", "x=0.5"])
    assert exc.value.code == 2 and "error: --prevalence" in capsys.readouterr().err
