"""Active learning: the pool bookkeeping, the scores on a planted case, MC-dropout, the CLI."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ray_xray.active import loop
from ray_xray.active.__main__ import main
from ray_xray.cli import run
from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.data.dataset import ImageDataset
from ray_xray.data.dataset import loader as make_loader
from ray_xray.inference import build_model, predict_proba
from ray_xray.train import engine

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_data():
    return load_data("synthetic:chest3", 32, limit_per_split=60)


# ----------------------------------------------------------------- 1. pool bookkeeping


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.55])
@pytest.mark.parametrize("seed", [0, 7])
def test_initial_pool_is_stratified(fraction, seed):
    labels = np.repeat([0, 1, 2], [50, 31, 7])
    np.random.default_rng(seed).shuffle(labels)
    pool = loop.initial_pool(labels, fraction, seed)
    assert len(pool) == round(fraction * len(labels))
    assert len(np.unique(pool)) == len(pool) and pool.min() >= 0 and pool.max() < len(labels)
    for c, n_c in zip(*np.unique(labels, return_counts=True), strict=True):
        assert abs((labels[pool] == c).sum() - fraction * n_c) < 1  # within one item of the mix
    assert np.array_equal(pool, loop.initial_pool(labels, fraction, seed))  # same seed, same pool


def test_select_takes_the_highest_scores_and_random_ignores_them():
    rng = np.random.default_rng(0)
    pool = np.array([10, 11, 12, 13, 14, 15])
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.0, 0.2])
    assert loop.select(scores, pool, 3, rng).tolist() == [11, 13, 12]  # most informative first
    picks = {tuple(sorted(loop.select(None, pool, 3, np.random.default_rng(s)))) for s in range(8)}
    assert len(picks) > 1  # random really is random across seeds...
    assert len(loop.select(None, pool, 99, rng)) == len(pool)  # ...and k is capped at the pool


def test_sequence_grows_by_query_size_with_train_items_only(tiny_data):
    cfg = TrainConfig(
        model="cnn",
        img_size=32,
        epochs=1,
        batch_size=16,
        model_kwargs={"width": 4, "head_dims": [16], "pool_size": 1},
    )
    rows = loop.run_sequence(tiny_data, cfg, "entropy", seed=3, initial=0.3, query=0.1, rounds=3)
    n_train = len(tiny_data.labels["train"])
    k, n0 = loop.query_size(n_train, 0.1), round(0.3 * n_train)
    seen = list(rows[0]["initial_idx"])
    for r, row in enumerate(rows):
        assert row["round"] == r and row["n_labelled"] == n0 + r * k
        assert len(row["queried_idx"]) == (k if r else 0)
        seen += row["queried_idx"]
        assert len(seen) == len(set(seen)) == row["n_labelled"]  # no item labelled twice
    paths = [tiny_data.paths["train"][i] for i in seen]  # indices are train positions...
    assert all("/train/" in p for p in paths)
    held_out = set(tiny_data.paths["val"]) | set(tiny_data.paths["test"])
    assert not held_out & set(paths)  # ...never a val or test item


# ----------------------------------------------------------------- 2. planted case


class NearestPrototype(nn.Module):
    """A real classifier with known confidence: logit_c = -beta * distance to the nearest
    labelled image of class c. A copy of a labelled image sits at distance 0 from its own class
    (confident); a 50/50 blend of two classes' images is equally far from both (unsure)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, n_classes: int, p: float = 0.0):
        super().__init__()
        self.register_buffer("protos", images.flatten(1))
        self.labels, self.n_classes, self.beta = torch.as_tensor(labels), n_classes, 0.5
        self.drop = nn.Dropout(p)

    def forward(self, x):
        d = torch.cdist(self.drop(x.flatten(1)), self.protos)
        return torch.stack(
            [-self.beta * d[:, self.labels == c].min(1).values for c in range(self.n_classes)], 1
        )


def planted(data, n_copies=24, n_blends=8):
    """Labelled set, and a pool of exact copies of labelled images plus ambiguous blends."""
    y = data.labels["train"]
    labelled = loop.initial_pool(y, 0.5, 0)
    rng = np.random.default_rng(1)
    copies = rng.choice(labelled, n_copies, replace=False)
    a = rng.choice(labelled[y[labelled] == 0], n_blends)  # normal ...
    b = rng.choice(labelled[y[labelled] == 2], n_blends)  # ... half-way to tuberculosis
    imgs = data.images["train"]
    blends = ((imgs[a].astype(np.float32) + imgs[b]) / 2).round().astype(np.uint8)
    pool_imgs = np.concatenate([imgs[copies], blends])
    pool_y = np.concatenate([y[copies], y[a]])
    feed = data.feed(1, CPU)  # what training feeds the model: normalised on the device
    protos = feed(torch.from_numpy(imgs[labelled])[:, None])
    pool_idx = np.arange(len(pool_imgs)) + 1000  # ids: copies 1000.., blends after
    is_blend = pool_idx >= 1000 + n_copies
    loader = make_loader(ImageDataset(pool_imgs, pool_y), 64)
    return protos, y[labelled], loader, pool_idx, is_blend, feed


@pytest.mark.parametrize("strategy", ["entropy", "margin", "mc_dropout"])
def test_uncertainty_strategies_skip_copies_of_labelled_images(tiny_data, strategy):
    protos, proto_y, loader, pool_idx, is_blend, feed = planted(tiny_data)
    k = int(is_blend.sum())
    if strategy == "mc_dropout":
        model = NearestPrototype(protos, proto_y, 3, p=0.05)
        probs = loop.mc_predict(model, loader, CPU, "fp32", passes=8, seed=0, feed=feed)
    else:
        model = NearestPrototype(protos, proto_y, 3)
        probs = predict_proba(model, loader, CPU, "fp32", feed=feed)[1]
    # The model really is sure about the copies (so the test is about the scores, not luck).
    mean = probs.mean(0) if probs.ndim == 3 else probs
    assert mean[~is_blend].max(1).min() > mean[is_blend].max(1).max()

    picked = loop.select(loop.score(strategy, probs), pool_idx, k, np.random.default_rng(0))
    # Every pick is a blend: the ranking puts all ambiguous images before any copy. A flipped
    # sign (or scoring confidence instead of doubt) would pick copies first.
    assert set(picked) == set(pool_idx[is_blend])
    flipped = loop.select(-loop.score(strategy, probs), pool_idx, k, np.random.default_rng(0))
    assert not set(flipped) & set(pool_idx[is_blend])

    # Random sampling, same seed and budget, does spend labels on copies.
    rand = loop.select(loop.score("random", probs), pool_idx, k, np.random.default_rng(0))
    assert set(rand) & set(pool_idx[~is_blend])


# ----------------------------------------------------------------- 3. MC-dropout


def test_mc_dropout_passes_differ_and_bald_is_non_negative(tiny_data):
    cfg = TrainConfig(
        model="cnn", img_size=32, model_kwargs={"width": 4, "head_dims": [16], "pool_size": 1}
    )
    engine.seed_everything(0)
    model = build_model(cfg, 3)
    loader, feed = make_loader(tiny_data.dataset("test"), 32), tiny_data.feed(1, CPU)
    mc = loop.mc_predict(model, loader, CPU, "fp32", passes=5, seed=0, feed=feed)
    assert mc.shape == (5, len(tiny_data.labels["test"]), 3)
    assert not np.allclose(mc[0], mc[1])  # dropout really was on
    assert np.array_equal(
        mc, loop.mc_predict(model, loader, CPU, "fp32", passes=5, seed=0, feed=feed)
    )
    assert not any(m.training for m in model.modules())  # and is off again afterwards
    a, b = (predict_proba(model, loader, CPU, "fp32", feed=feed)[1] for _ in range(2))
    assert np.array_equal(a, b)  # plain scoring stays deterministic

    b = loop.score("mc_dropout", mc, "bald")
    assert (b >= 0).all() and (b > 0).any()
    # BALD is disagreement between passes, not flatness: two confident passes that disagree
    # score ln 2; two passes agreeing on 50/50 score 0, though both have the same mean entropy.
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    agree_flat = np.full((2, 1, 2), 0.5)
    assert loop.score("mc_dropout", disagree, "bald")[0] == pytest.approx(np.log(2), abs=1e-6)
    assert loop.score("mc_dropout", agree_flat, "bald")[0] == pytest.approx(0.0, abs=1e-12)
    assert loop.score("mc_dropout", agree_flat, "entropy")[0] == pytest.approx(np.log(2))


# ----------------------------------------------------------------- 4. the command


def test_smoke_run_writes_a_side_by_side_comparison(tmp_path, capsys):
    out = tmp_path / "al"
    with pytest.raises(SystemExit) as exc:
        run(main, ["--smoke-test", "--local", "--strategy", "entropy,margin", "--out", str(out)])
    assert exc.value.code == 0
    for name in ("config.json", "rounds.csv", "summary.csv", "results.json", "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategies"] == ["entropy", "margin", "random"] and cfg["seeds"] == [0, 1]
    assert cfg["focus_class"] == "tuberculosis" and "--smoke-test" in cfg["command"]
    rows = doc["rows"]
    assert len(rows) == 3 * 2 * 3  # strategies x seeds x rounds 0..2
    for strategy in cfg["strategies"]:
        for seed in cfg["seeds"]:
            counts = [
                r["n_labelled"] for r in rows if (r["strategy"], r["seed"]) == (strategy, seed)
            ]
            assert counts == [cfg["n_initial"] + i * cfg["query_size"] for i in range(3)]
    for seed in cfg["seeds"]:  # same initial pool and training seed: round 0 is one model
        r0 = [r for r in rows if r["seed"] == seed and r["round"] == 0]
        assert (
            len(
                {
                    json.dumps(
                        {k: v for k, v in r.items() if k.startswith(("test_", "initial"))},
                        sort_keys=True,
                    )
                    for r in r0
                }
            )
            == 1
        )
    header = (out / "rounds.csv").read_text().splitlines()[0].split(",")
    for col in ("test_macro_f1", "test_f1_tuberculosis", "queried_tuberculosis", "n_labelled"):
        assert col in header
    summ = [s for s in doc["summary"] if s["strategy"] == "entropy"]
    assert [s["round"] for s in summ] == [0, 1, 2] and summ[0]["d_macro_f1_mean"] == 0.0
    table = capsys.readouterr().out
    assert "entropy F1" in table and "random F1" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "entropy,coreset"], "unknown strategy 'coreset'"),
        (["--initial", "1.2"], "--initial must be a fraction in (0, 1)"),
        (["--query", "0"], "--query must be a fraction in (0, 1)"),
        (["--initial", "0.5", "--query", "0.2", "--rounds", "3"], "the pool runs out"),
        (
            ["--strategy", "mc_dropout", "--model", "resnet18", "--set", "model.dropout=0"],
            "needs dropout layers",
        ),
        (["--mc-score", "variance"], "invalid choice"),
        (["--set", "nonsense=1"], "unknown setting"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(main, [*args, "--local", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    ray.shutdown()  # do not leave an idle cluster on the 2 cores for later tests


@pytest.mark.slow_ray
def test_runs_as_ray_tasks_give_the_same_round_zero(tmp_path, ray_shutdown):
    """Strategies run as separate Ray tasks (other processes, one CPU each) still train the
    identical round-0 model from the same seed, and the outputs are complete."""
    out = tmp_path / "al"
    with pytest.raises(SystemExit) as exc:
        run(
            main,
            [
                "--smoke-test",
                "--repeats",
                "1",
                "--strategy",
                "mc_dropout",
                "--cpus-per-job",
                "1",
                "--out",
                str(out),
            ],
        )
    assert exc.value.code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["strategy"] for r in rows} == {"mc_dropout", "random"}
    r0 = [
        (r["test_accuracy"], r["test_macro_f1"], r["initial_idx"]) for r in rows if r["round"] == 0
    ]
    assert len(r0) == 2 and r0[0] == r0[1]
    assert (out / "learning_curve.png").stat().st_size > 0
