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
from torch.utils.data import DataLoader, Subset

from .. import metrics as M
from ..config import TrainConfig
from ..data import class_weights
from ..train import engine as E

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
    # nn.LSTM's between-layer dropout only runs in LSTM training mode, which would also change
    # nothing else; MC-dropout here samples the explicit Dropout layers, as Gal & Ghahramani do.
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@torch.no_grad()
def mc_predict(model, loader, device, precision, channels_last=False, passes=10,
               seed=0) -> np.ndarray:  # fmt: skip
    """(passes, N, K) softmax outputs with dropout on and everything else (BatchNorm) in eval."""
    model.eval()
    for m in dropout_modules(model):
        m.train()
    torch.manual_seed(seed)  # the dropout masks, so a run is reproducible
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    try:
        for x, _, _ in loader:
            x = x.to(device, memory_format=fmt)
            with E.autocast(device, precision):
                logits = torch.stack([model(x) for _ in range(passes)])
            out.append(F.softmax(logits.float(), -1).cpu().numpy())
    finally:
        model.eval()
    return np.concatenate(out, axis=1)


def seed_augmentation(dataset, seed: int) -> None:
    """albumentations 2 draws from its own generator, not numpy's: seed it, or two strategies
    at the same seed would see different augmentations and round 0 would not match."""
    aug = getattr(getattr(dataset, "transform", None), "aug", None)
    if aug is not None and hasattr(aug, "set_random_seed"):
        aug.set_random_seed(seed)


def fit_round(cfg: TrainConfig, data, train_idx: np.ndarray, device: torch.device):
    """Train a fresh model on train[train_idx] for cfg.epochs; return it at its best validation
    epoch (by cfg.monitor, default val macro-F1) and a summary of the fit.

    Plain engine, in-process: a TorchTrainer per round would add ~30 s of Ray Train start-up to
    every round, more than a round of a small CNN costs on a CPU.
    """
    E.seed_everything(cfg.seed)
    precision = E.pick_precision(cfg.precision, device)
    model = E.build_model(cfg, len(data.classes)).to(device)
    channels_last = E.uses_channels_last(cfg, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    full = data.dataset("train", cfg.in_chans, cfg.aug_strength, cfg.augment)
    seed_augmentation(full, cfg.seed)
    train_ds = Subset(full, [int(i) for i in train_idx])
    # A last batch of one image would break BatchNorm: drop it (as the Ray Train worker does).
    drop_last = len(train_ds) % cfg.batch_size == 1
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last, generator=gen
    )
    val_loader = DataLoader(data.dataset("val", cfg.in_chans), batch_size=256)

    # Class weights come from the *labelled* counts: that is the imbalance the model sees.
    counts = np.bincount(data.labels["train"][train_idx], minlength=len(data.classes))
    loss_fn = E.make_loss(cfg, class_weights(counts) if cfg.class_weights else None).to(device)
    opt = E.make_optimizer(cfg, model)
    sched = E.Schedule(cfg, opt, len(loader))
    scaler = E.make_scaler(device, precision)

    maximise = cfg.monitor != "val_loss"
    best, best_state, best_metrics, since_best, history = None, None, None, 0, []
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        tr = E.train_one_epoch(
            model, loader, loss_fn, opt, sched, scaler, device, precision, cfg.grad_clip,
            channels_last,
        )  # fmt: skip
        y, prob, val_loss = E.predict_proba(model, val_loader, device, precision, channels_last)
        m = {"epoch": epoch, "train_loss": tr["train_loss"], "val_loss": val_loss,
             **M.summary(y, prob, data.classes)}  # fmt: skip
        history.append(m)
        value = m[cfg.monitor]
        if best is None or (value > best if maximise else value < best):
            # Keep the best weights in memory: a round is short and nothing needs them on disk.
            best, best_metrics, since_best = value, m, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        sched.step_epoch(value)
        if cfg.patience and since_best >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    fit = {"best_epoch": best_metrics["epoch"], "val": best_metrics, "history": history,
           "train_s": time.perf_counter() - t0}  # fmt: skip
    return model, precision, channels_last, fit


def round_seed(seed: int, r: int) -> int:
    # Depends on (seed, round) only, never on the strategy: round 0 trains the same model for all.
    return seed * 1000 + r


def run_sequence(data, cfg: TrainConfig, strategy: str, seed: int, *, initial: float,
                 query: float, rounds: int, mc_passes: int = 10, mc_score: str = "entropy",
                 focus: str | None = None, threads: int | None = None) -> list[dict]:  # fmt: skip
    """One (strategy, seed) run: rounds 0..`rounds`, a fresh model each. Returns one row per round
    (test metrics, labelled count and class mix, the indices queried to reach that round)."""
    if threads:
        torch.set_num_threads(int(threads))  # a Ray task's CPU share, not the whole machine
    device = E.pick_device(cfg.device)
    classes, y_train = data.classes, data.labels["train"]
    n_train, k = len(y_train), query_size(len(y_train), query)
    labelled = initial_pool(y_train, initial, seed)
    queried = np.array([], dtype=np.int64)  # what the previous round asked for (none in round 0)
    # Scoring sees the pool without augmentation: uncertainty about the image, not the crop.
    pool_ds = data.dataset("train", cfg.in_chans, 0.0)
    test_loader = DataLoader(data.dataset("test", cfg.in_chans), batch_size=256)
    tag = f"[{strategy} s{seed}]"
    rows = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        model, precision, cl, fit = fit_round(
            dataclasses.replace(cfg, seed=round_seed(seed, r)), data, labelled, device
        )
        y, prob, _ = E.predict_proba(model, test_loader, device, precision, cl)
        test = M.full_report(y, prob, classes)
        row = {
            "strategy": strategy, "seed": seed, "round": r, "n_labelled": len(labelled),
            "n_queried": len(queried),
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            **{f"test_f1_{c}": test["f1"][c] for c in classes},
            "val_macro_f1": fit["val"]["val_macro_f1"], "best_epoch": fit["best_epoch"],
            **{f"labelled_{c}": int(v) for c, v in
               zip(classes, np.bincount(y_train[labelled], minlength=len(classes)), strict=True)},
            **{f"queried_{c}": int(v) for c, v in
               zip(classes, np.bincount(y_train[queried], minlength=len(classes)), strict=True)},
            "train_s": fit["train_s"],
        }  # fmt: skip
        if r == 0:
            row["initial_idx"] = labelled.tolist()
        row["queried_idx"] = queried.tolist()

        t1 = time.perf_counter()
        if r < rounds:
            pool = np.setdiff1d(np.arange(n_train), labelled)
            probs = None
            if strategy != "random":
                loader = DataLoader(Subset(pool_ds, pool.tolist()), batch_size=256)
                if strategy == "mc_dropout":
                    probs = mc_predict(model, loader, device, precision, cl, mc_passes,
                                       seed=round_seed(seed, r))  # fmt: skip
                else:
                    probs = E.predict_proba(model, loader, device, precision, cl)[1]
            rng = np.random.default_rng([seed, r])
            queried = select(score(strategy, probs, mc_score), pool, k, rng)
            # The invariants the whole comparison rests on: k new, distinct, train-only items.
            assert len(queried) == k and len(np.unique(queried)) == k
            assert not np.isin(queried, labelled).any()
            labelled = np.sort(np.concatenate([labelled, queried]))
        row["score_s"] = time.perf_counter() - t1
        row["round_s"] = time.perf_counter() - t0
        rows.append(row)
        focus_txt = f"  {focus[:4]}-F1 {test['f1'][focus]:.3f}" if focus in classes else ""
        mix = " ".join(f"{c[:4]} {row[f'queried_{c}']}" for c in classes)
        print(
            f"{tag:<20} round {r}/{rounds}  labels {row['n_labelled']:>5}"
            + (f" (+{len(row['queried_idx'])}: {mix})" if r else "")
            + f"  acc {test['accuracy']:.3f}  F1 {test['macro_f1']:.3f}{focus_txt}"
            f"  best ep {fit['best_epoch']}  {row['round_s']:.1f}s",
            flush=True,
        )
    return rows
