"""Prior (prevalence) shift: a site's class mix differs from the training mix.

A calibrated model's posteriors carry the training prior. Where the classes are mixed
differently (Kermany's test set: 62.5 % pneumonia against about 74 % in training), Bayes' rule
re-weights them: p'(y|x) is proportional to p(y|x) * pi'(y) / pi(y) (Saerens, Latinne &
Decaestecker, "Adjusting the outputs of a classifier to new a priori probabilities: a simple
procedure", Neural Computation 14(1), 2002). The new prior pi' is either known (`--prevalence`)
or estimated from the unlabelled target images by EM (the same paper, section 2.3): alternate
the re-weighted posteriors and their mean until the prior stops moving. Its interval is a
percentile bootstrap over the images. EM assumes calibrated posteriors (ensembles are
temperature-scaled; a single model's softmax is not) and that only the prior moved, not how
each class looks. AUC does not change for two classes (the re-weighting is monotone);
thresholded figures (accuracy, F1, recall) do.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 200


def reweight(prob: np.ndarray, train_prior, new_prior) -> np.ndarray:
    """Posteriors float64 (N, K) under `new_prior` from `prob` (N, K) under `train_prior`
    (both length K, summing to 1): p * new/train, renormalised per row. Raises ValueError for
    a prior with a non-positive entry or the wrong length."""
    prob = np.asarray(prob, dtype=np.float64)
    train, new = _check(train_prior, prob.shape[1]), _check(new_prior, prob.shape[1])
    w = prob * (new / train)
    return w / w.sum(axis=1, keepdims=True)


def _check(prior, k: int) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (k,) or not np.all(p > 0) or not np.isfinite(p).all():
        raise ValueError(f"a prior needs {k} positive values, got {list(np.ravel(prior))}")
    return p / p.sum()


def em_prior(
    prob: np.ndarray, train_prior, tol: float = 1e-8, max_iter: int = 1000
) -> tuple[np.ndarray, int]:
    """The class prior of the images behind `prob` (float (N, K) calibrated posteriors under
    `train_prior`), by Saerens et al.'s EM: (prior float64 (K,), iterations). Starts from the
    training prior; stops when no entry moves more than `tol`."""
    train = _check(train_prior, np.shape(prob)[1])
    prior = train.copy()
    for it in range(1, max_iter + 1):
        new = reweight(prob, train, np.clip(prior, 1e-12, None)).mean(axis=0)
        if np.max(np.abs(new - prior)) < tol:
            return new, it
        prior = new
    return prior, max_iter


def adapt(
    prob: np.ndarray,
    train_prior,
    method: str = "em",
    prevalence=None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Prior adaptation of `prob` (float (N, K) calibrated posteriors under `train_prior`).

    `method` "em": the prior is estimated from `prob` itself, with a percentile bootstrap
    interval over the N images (`n_boot` resamples, `level`); "known": `prevalence` (K values)
    is the target prior. Returns {"method", "train_prior", "prior", "interval" ({"low",
    "high"}: K values each, EM only), "iterations", "prob" (float64 (N, K) adapted)}. Raises
    ValueError for an unknown method or a bad prior."""
    train = _check(train_prior, np.shape(prob)[1])
    out: dict = {"method": method, "train_prior": train.tolist(), "source": SOURCE}
    if method == "known":
        if prevalence is None:
            raise ValueError("--prevalence: give the target prior (one value per class)")
        target, out["iterations"], out["interval"] = _check(prevalence, len(train)), 0, None
    elif method == "em":
        target, out["iterations"] = em_prior(prob, train)
        rng = np.random.default_rng(seed)
        n = len(prob)
        boots = np.array(
            [em_prior(prob[rng.integers(0, n, n)], train)[0] for _ in range(max(0, n_boot))]
        )
        a = (1 - level) / 2
        out["interval"] = (
            {
                "low": np.quantile(boots, a, axis=0).tolist(),
                "high": np.quantile(boots, 1 - a, axis=0).tolist(),
                "level": level,
                "resamples": int(n_boot),
            }
            if n_boot > 0
            else None
        )
    else:
        raise ValueError(f"--adapt-prior must be em, got {method!r}")
    out["prior"] = target.tolist()
    out["prob"] = reweight(prob, train, target)
    return out


SOURCE = (
    "Saerens, Latinne & Decaestecker, Neural Computation 14(1):21-41, 2002 (EM re-estimation "
    "of class priors; posteriors re-weighted by new/train prior)"
)


def parse_prevalence(text: str, classes: list[str]) -> list[float]:
    """`--prevalence` as `CLASS=P[,CLASS=P...]` (the classes left out share what is left
    equally) or K comma-separated numbers in class order. Raises ValueError (one line)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all("=" not in p for p in parts):
        values = [float(p) for p in parts]
        if len(values) != len(classes):
            raise ValueError(f"--prevalence: {len(classes)} values needed ({', '.join(classes)})")
    else:
        given = {}
        for p in parts:
            name, _, v = p.partition("=")
            if name.strip() not in classes:
                raise ValueError(f"--prevalence: unknown class {name.strip()!r} ({classes})")
            given[name.strip()] = float(v)
        rest = 1.0 - sum(given.values())
        left = [c for c in classes if c not in given]
        values = [given.get(c, rest / len(left) if left else 0.0) for c in classes]
    if any(v <= 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--prevalence: values must be > 0 and sum to 1, got {values}")
    return values


def train_prior_of(obj: dict, cache: str | None = None) -> list[float]:
    """The class prior a model or ensemble (`load_model_or_ensemble`'s dict) was trained
    under: the ensemble's stored "train_prior", else the class frequencies of the training
    split its first member saw (its data is read; its cross-validation fold's training part
    for a --cv member). Raises ValueError when that data is not readable here."""
    if obj.get("train_prior"):
        return list(obj["train_prior"])
    from .data import load_for_config

    record = obj["members"][0] if "members" in obj else obj
    try:
        data = load_for_config(record["config"], cache)
    except Exception as exc:  # noqa: BLE001 - said in one line: where the prior would come from
        raise ValueError(
            f"prior adaptation needs the model's training class mix, read from its data "
            f"{record['config'].get('data')!r}, which failed ({exc})"
        ) from None
    counts = data.class_counts("train").astype(np.float64)
    return (counts / counts.sum()).tolist()


def summary_line(block: dict, classes: list[str]) -> str:
    """One line: the target prior per class (with its interval for EM) and the training one."""
    iv = block.get("interval")
    parts = []
    for i, c in enumerate(classes):
        s = f"{c} {block['prior'][i]:.3f}"
        if iv:
            s += f" [{iv['low'][i]:.3f}, {iv['high'][i]:.3f}]"
        parts.append(s + f" (train {block['train_prior'][i]:.3f})")
    what = "EM-estimated" if block["method"] == "em" else "given"
    return f"prior ({what}): " + ", ".join(parts)
