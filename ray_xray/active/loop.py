"""Active learning, one small step at a time.

A *run* is one (strategy, seed) sequence of rounds. Round r trains a fresh model on the
labelled set L_r, tests it on the fixed test set, scores the unlabelled pool with the strategy
and moves the k highest-scoring items into L_{r+1}. Validation and test never change.

Every strategy at a given seed starts from the same stratified initial pool and trains with the
same seeds, so round 0 is the same model for all of them and the curves can only differ by what
was queried. That is what makes "strategy X vs random at the same label budget" a fair question.

The first half of this file is pure numpy (pool, scores, selection) so the tests can pin it down
without training anything; the second half trains and scores with the plain-torch engine.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..config import TrainConfig
from ..data.dataset import loader as make_loader
from ..device import pick_device
from ..inference import autocast, predict_proba
from ..metrics import full_report
from ..train import engine
from ..train.loop import Hooks, Progress, Trainer, train_epochs

STRATEGIES = ("entropy", "margin", "mc_dropout", "random")
MC_SCORES = ("entropy", "bald")
EPS = 1e-12

# ----------------------------------------------------------------------------- pure core


def initial_pool(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified start: round(fraction * N) train indices with the training class mix.

    Each class gets floor(fraction * n_c) items and the leftover few go to the classes with the
    largest remainders, so every class is within one item of its exact share.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    total = int(round(fraction * len(labels)))
    quota = fraction * counts
    take = np.floor(quota).astype(int)
    leftover = total - int(take.sum())  # 0 <= leftover <= number of classes
    take[np.argsort(-(quota - take), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=m, replace=False)
        for c, m in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def query_size(n_train: int, query: float) -> int:
    """k is a fraction of the *original* training size, so every round buys the same labels."""
    return max(1, int(round(query * n_train)))


def entropy(prob: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def margin(prob: np.ndarray) -> np.ndarray:
    """Negative gap between the two most likely classes: a near-tie scores highest."""
    top2 = np.sort(np.asarray(prob, dtype=np.float64), axis=-1)[..., -2:]
    return -(top2[..., 1] - top2[..., 0])


def bald(mc_prob: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and weights (Houlsby et al. 2011; Gal et al. 2017):
    entropy of the mean prediction minus the mean entropy of each pass. High only where the
    passes *disagree*, not where they agree on a flat distribution. mc_prob is (T, N, K)."""
    mi = entropy(mc_prob.mean(0)) - entropy(mc_prob).mean(0)
    # >= 0 by Jensen (entropy is concave); clip only float round-off below zero.
    return np.maximum(mi, 0.0)


def score(strategy: str, prob: np.ndarray | None, mc_score: str = "entropy") -> np.ndarray | None:
    """Informativeness of every pool item, higher = ask for its label first; None for random.

    prob is (N, K) softmax outputs, or (T, N, K) stochastic passes for mc_dropout, which scores
    by the entropy of the averaged prediction (`entropy`) or by BALD (`bald`).
    """
    if strategy == "random":
        return None
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    prob = np.asarray(prob, dtype=np.float64)
    if strategy == "mc_dropout":
        if prob.ndim != 3:
            raise ValueError("mc_dropout scores (passes, items, classes) probabilities")
        if mc_score not in MC_SCORES:
            raise ValueError(f"unknown --mc-score {mc_score!r}; choose from {', '.join(MC_SCORES)}")
        return bald(prob) if mc_score == "bald" else entropy(prob.mean(0))
    if prob.ndim != 2:
        raise ValueError(f"{strategy} scores (items, classes) probabilities")
    return entropy(prob) if strategy == "entropy" else margin(prob)


def select(
    scores: np.ndarray | None, pool_idx: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """The k pool indices to label next, most informative first (scores None: uniformly random).

    Ties (exact copies score exactly alike) are broken at random, not by position in the pool.
    """
    pool_idx = np.asarray(pool_idx, dtype=np.int64)
    k = min(int(k), len(pool_idx))
    if scores is None:
        return rng.choice(pool_idx, size=k, replace=False)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != pool_idx.shape:
        raise ValueError(f"{len(scores)} scores for a pool of {len(pool_idx)}")
    perm = rng.permutation(len(pool_idx))
    order = perm[np.argsort(-scores[perm], kind="stable")]
    return pool_idx[order[:k]]


# ----------------------------------------------------------------------------- torch side


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout layers (any `_DropoutNd` with p > 0) of `model` that MC-dropout switches on."""
    # nn.LSTM's between-layer dropout only runs in LSTM training mode, which would also change
    # nothing else; MC-dropout here samples the explicit Dropout layers, as Gal & Ghahramani do.
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@torch.no_grad()
def mc_predict(
    model, loader, device, precision, channels_last=False, passes=10, seed=0, feed=None
) -> np.ndarray:
    """(passes, N, K) softmax outputs with dropout on and everything else (BatchNorm) in eval."""
    model.eval()
    for m in dropout_modules(model):
        m.train()
    torch.manual_seed(seed)  # the dropout masks, so a run is reproducible
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    try:
        for x, _, _ in loader:
            x = feed(x) if feed is not None else x.to(device, memory_format=fmt)
            with autocast(device, precision):
                logits = torch.stack([model(x) for _ in range(passes)])
            out.append(F.softmax(logits.float(), -1).cpu().numpy())
    finally:
        model.eval()
    return np.concatenate(out, axis=1)


class _KeepBest(Hooks):
    """Active learning's side of `train_epochs`: keep the best epoch's weights in memory (a round is
    short and nothing needs them on disk)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.state, self.metrics = model, None, None

    def on_epoch(self, metrics: dict, improved: bool, progress: Progress) -> None:
        if improved:
            self.metrics = metrics
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def fit_round(cfg: TrainConfig, data, train_idx: np.ndarray, device: torch.device):
    """Train a fresh model on train[train_idx] for cfg.epochs; return it at its best validation
    epoch (by cfg.monitor, default val macro-F1) and a summary of the fit.

    The same `train_epochs` loop as the Ray Train worker, in-process: a TorchTrainer per round
    would add ~30 s of Ray Train start-up to every round, more than a round of a small CNN costs
    on a CPU.
    Class weights come from the *labelled* counts: that is the imbalance the model sees.
    """
    engine.seed_everything(cfg.seed)
    tr = Trainer.build(cfg, data, device, train_idx=train_idx)
    keep = _KeepBest(tr.bare)
    t0 = time.perf_counter()
    progress = train_epochs(tr, hooks=keep)
    tr.bare.load_state_dict(keep.state)
    tr.bare.eval()
    fit_summary = {
        "best_epoch": progress.best_epoch,
        "val": keep.metrics,
        "history": progress.history,
        "train_s": time.perf_counter() - t0,
    }
    return tr.bare, tr.precision, tr.channels_last, fit_summary, tr.feed


def round_seed(seed: int, r: int) -> int:
    """The training seed of round `r` of the run seeded `seed` (seed * 1000 + r)."""
    # Depends on (seed, round) only, never on the strategy: round 0 trains the same model for all.
    return seed * 1000 + r


def run_sequence(
    data,
    cfg: TrainConfig,
    strategy: str,
    seed: int,
    *,
    initial: float,
    query: float,
    rounds: int,
    mc_passes: int = 10,
    mc_score: str = "entropy",
    focus: str | None = None,
    threads: int | None = None,
) -> list[dict]:
    """One (strategy, seed) run: rounds 0..`rounds`, a fresh model each. Returns one row per round
    (test metrics, labelled count and class mix, the indices queried to reach that round)."""
    if threads:
        torch.set_num_threads(int(threads))  # a Ray task's CPU share, not the whole machine
    device = pick_device(cfg.device)
    classes, y_train = data.classes, data.labels["train"]
    k = query_size(len(y_train), query)
    labelled = initial_pool(y_train, initial, seed)
    queried = np.array([], dtype=np.int64)  # what the previous round asked for (none in round 0)
    # Scoring sees the pool without augmentation: uncertainty about the image, not the crop.
    pool_ds = data.dataset("train")
    test_loader = make_loader(data.dataset("test"), 256, device=device)
    rows = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        model, precision, cl, summary, feed = fit_round(
            dataclasses.replace(cfg, seed=round_seed(seed, r)), data, labelled, device
        )
        y, prob, _ = predict_proba(model, test_loader, device, precision, cl, feed=feed)
        test = full_report(y, prob, classes)
        row = {
            "strategy": strategy,
            "seed": seed,
            "round": r,
            "n_labelled": len(labelled),
            "n_queried": len(queried),
            **_round_scores(test, summary, classes),
            **_class_counts("labelled", y_train[labelled], classes),
            **_class_counts("queried", y_train[queried], classes),
            "train_s": summary["train_s"],
        }
        if r == 0:
            row["initial_idx"] = labelled.tolist()
        row["queried_idx"] = queried.tolist()
        t1 = time.perf_counter()
        if r < rounds:
            trained = (model, precision, cl, feed)
            queried = _query(
                strategy, trained, pool_ds, labelled, k, device, mc_passes, mc_score, r, seed
            )
            labelled = np.sort(np.concatenate([labelled, queried]))
        row["score_s"] = time.perf_counter() - t1
        row["round_s"] = time.perf_counter() - t0
        rows.append(row)
        print(_round_line(row, rounds, test, classes, focus), flush=True)
    return rows


def _round_scores(test: dict, summary: dict, classes: list[str]) -> dict:
    """A round's row figures: test accuracy, macro-F1 and per-class F1 (`metrics.full_report`'s
    `test`), the validation macro-F1 and best epoch of its training (`fit_round`'s summary)."""
    return {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        **{f"test_f1_{c}": test["f1"][c] for c in classes},
        "val_macro_f1": summary["val"]["val_macro_f1"],
        "best_epoch": summary["best_epoch"],
    }


def _class_counts(prefix: str, y: np.ndarray, classes: list[str]) -> dict:
    """{"<prefix>_<class>": count} of the int class indices `y`, every class (0 when absent)."""
    counts = np.bincount(y, minlength=len(classes))
    return {f"{prefix}_{c}": int(v) for c, v in zip(classes, counts, strict=True)}


def _query(
    strategy: str,
    trained: tuple,
    pool_ds,
    labelled: np.ndarray,
    k: int,
    device,
    mc_passes: int,
    mc_score: str,
    r: int,
    seed: int,
) -> np.ndarray:
    """Round `r`'s k new training indices to label: the unlabelled pool (`pool_ds` minus
    `labelled`) scored by `strategy` (`mc_score` over `mc_passes` passes for mc_dropout) with
    the round's model (`trained`: model, precision, channels_last, feed, as `fit_round`
    returns them), ties and `random` drawn with a (seed, round) generator. int64 (k,)."""
    pool = np.setdiff1d(np.arange(len(pool_ds)), labelled)
    probs = None
    if strategy != "random":
        loader = make_loader(Subset(pool_ds, pool.tolist()), 256, device=device)
        probs = _pool_probabilities(strategy, trained, loader, device, mc_passes, r, seed)
    rng = np.random.default_rng([seed, r])
    queried = select(score(strategy, probs, mc_score), pool, k, rng)
    # The invariants the whole comparison rests on: k new, distinct, train-only items.
    assert len(queried) == k and len(np.unique(queried)) == k
    assert not np.isin(queried, labelled).any()
    return queried


def _pool_probabilities(
    strategy: str, trained: tuple, loader, device, mc_passes: int, r: int, seed: int
) -> np.ndarray:
    """What `score` ranks the unlabelled pool by: (N, K) softmax outputs, or for mc_dropout
    (mc_passes, N, K) passes with dropout on, seeded by the round. `trained`: (model,
    precision, channels_last, feed) as `fit_round` returns them."""
    model, precision, cl, feed = trained
    if strategy == "mc_dropout":
        return mc_predict(
            model, loader, device, precision, cl, mc_passes, seed=round_seed(seed, r), feed=feed
        )
    return predict_proba(model, loader, device, precision, cl, feed=feed)[1]


def _round_line(row: dict, rounds: int, test: dict, classes: list, focus) -> str:
    """The console line of one finished round: labels bought (and their class mix), test
    accuracy and macro-F1 (and the `focus` class's F1), best epoch, seconds."""
    r, tag = row["round"], f"[{row['strategy']} s{row['seed']}]"
    focus_txt = f"  {focus[:4]}-F1 {test['f1'][focus]:.3f}" if focus in classes else ""
    mix = " ".join(f"{c[:4]} {row[f'queried_{c}']}" for c in classes)
    return (
        f"{tag:<20} round {r}/{rounds}  labels {row['n_labelled']:>5}"
        + (f" (+{len(row['queried_idx'])}: {mix})" if r else "")
        + f"  acc {test['accuracy']:.3f}  F1 {test['macro_f1']:.3f}{focus_txt}"
        f"  best ep {row['best_epoch']}  {row['round_s']:.1f}s"
    )
