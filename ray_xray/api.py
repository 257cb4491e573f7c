"""The Python API for notebooks and scripts: ``sweep``, ``fit``, ``load`` -> ``Predictor``.

    import ray_xray

    report = ray_xray.fit("cnn", "synthetic:chest3", out="runs/cnn", epochs=1, img_size=64)
    clf = ray_xray.load("runs/cnn")          # a run/sweep folder, best_model.pt or ensemble.pt
    prob = clf.predict(images)               # (N, K) float64; columns are clf.classes
    summary = ray_xray.sweep("resnet18", data="path/to/data", trials=20)

Each function does what its command does (``ray-xray train``/``tune``/``predict``; options map
to keyword arguments) and raises ``ValueError`` with a one-line message on bad input, where the
command would print ``error: ...``. torch and Ray are imported on first call, not on import.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Predictor", "fit", "load", "sweep"]

DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- sweep


# Over 60 lines only for its docstring (the API reference of every argument); the body is 20.
def sweep(
    space: str | os.PathLike = "resnet18",
    data: str | os.PathLike = "synthetic:chest3",
    *,
    trials: int | None = None,
    storage: str | os.PathLike | None = None,
    name: str | None = None,
    objective: str | Sequence[str] = "val_macro_f1",
    settings: Mapping[str, Any] | None = None,
    smoke_test: bool = False,
    **options: Any,
) -> dict:
    """Run a hyperparameter sweep (``ray-xray tune``) and return its summary.

    Args:
        space: a built-in space name (``ray_xray.list_spaces()``), one in a ``$RAY_XRAY_SPACES``
            folder, or a path to a YAML file.
        data: a folder, a ``manifest.csv``, or ``synthetic:chest3`` / ``synthetic:binary[:N]``.
        trials: number of trials (default 20; 4 with ``smoke_test``).
        storage: where ``NAME/`` goes: a local folder or ``s3://bucket/prefix`` (default
            ``$RAY_XRAY_STORAGE`` or ``runs/tune``).
        name: experiment name (default ``SPACE-DATA``); an existing finished one is refused,
            an interrupted one is resumed.
        objective: the metric to maximise/minimise (``val_macro_f1``, ``val_loss``, ...), or up
            to three for a multi-objective search (a list or ``"a,b"``).
        settings: overrides for every trial, e.g. ``{"epochs": 4, "img_size": 64}``
            (the command's ``--set KEY=VALUE``; ``"model.dropout"`` keys for model settings).
        smoke_test: tiny trials of a few seconds each (the space's ``smoke:`` block).
        **options: any other ``ray_xray.tune.SweepOptions`` field: ``budget_minutes``,
            ``gpus_per_trial``, ``cpus_per_trial``, ``workers_per_trial``, ``trial_runner``
            ("auto"/"inline"/"torchtrainer"), ``top_k``,
            ``ensemble`` (False: skip the ensemble), ``seed``, ``scheduler`` ("asha"/"fifo"),
            ``searcher`` ("tpe"/"random"), ``wandb`` ("off"/"offline"/"online"), ``cache``,
            ``external`` (labelled sets scored at the end, a list or ``"a,b"``), ...

    Returns:
        ``{"exp_dir": str, "top": [...], "rows": [...], "wall_s": float, "commands": [...]}``
        plus ``"ensemble"`` when one was built, and ``"external"`` (the figures on each
        ``external`` set); ``commands`` are the lines the sweep prints last (TensorBoard,
        optuna-dashboard, ``wandb sync`` with the sweep's real paths). ``top`` lists the best
        trials, best first, each with ``rank``, ``model``, ``best_<objective>``, ``config``,
        ``checkpoint``, its ``test`` metrics (and ``external`` ones);
        ``rows`` has one dict per trial (as ``results.parquet``). ``exp_dir`` holds
        ``best_model.pt``, which ``ray_xray.load(exp_dir)`` opens.

    Raises:
        TypeError: an unknown option.  ValueError: bad space, data, objective or option value.
    """
    from .pipeline import run_full_sweep
    from .tune.service import SweepOptions

    fields = {f.name for f in dataclasses.fields(SweepOptions)} - {"argv"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"sweep(): unknown option(s) {', '.join(unknown)}")
    if isinstance(objective, str):
        objective = [m.strip() for m in objective.split(",") if m.strip()]
    opts = SweepOptions(
        space=str(space),
        data=str(data),
        objective=list(objective),
        smoke_test=bool(smoke_test),
        storage=str(storage or os.environ.get("RAY_XRAY_STORAGE", SweepOptions.storage)),
        name=name,
        settings=dict(settings or {}),
        **options,
    )
    from .tune.external import parse_specs

    opts = dataclasses.replace(  # SweepOptions are frozen: changed copies
        opts,
        trials=trials if trials is not None else (4 if smoke_test else SweepOptions.trials),
        external=parse_specs(opts.external),
    )
    _check_sweep(opts)
    # sweep.json records the equivalent command
    return run_full_sweep(dataclasses.replace(opts, argv=_cli_argv(opts)))


def _check_sweep(opts: Any) -> None:
    """The checks ``python -m ray_xray.tune`` makes on its arguments, as ValueErrors."""
    if opts.trials < 1:
        raise ValueError(f"trials must be >= 1, got {opts.trials}")
    if not 1 <= len(opts.objective) <= 3:
        raise ValueError("objective takes one to three metrics")
    if opts.grace_epochs < 0 or opts.tpe_startup < 1 or opts.budget_epochs < 0:
        raise ValueError("grace_epochs and budget_epochs must be >= 0, tpe_startup >= 1")


def _cli_argv(opts: Any) -> list[str]:
    """The ``python -m ray_xray.tune`` arguments that would run the same sweep."""
    defaults = type(opts)()
    argv: list[str] = []
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if f.name in ("argv", "settings", "max_failures") or value == getattr(defaults, f.name):
            continue
        if f.name == "ensemble":
            argv.append("--no-ensemble")
        elif isinstance(value, bool):
            argv.append(f"--{f.name.replace('_', '-')}")
        else:
            text = ",".join(value) if f.name in ("objective", "external") else str(value)
            argv += [f"--{f.name.replace('_', '-')}", text]
    for key, value in opts.settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


# --------------------------------------------------------------------------- fit


def fit(
    model: str = "resnet18",
    data: str | os.PathLike = "synthetic:chest3",
    out: str | os.PathLike | None = None,
    *,
    max_failures: int = 2,
    cache: str | None = None,
    **settings: Any,
) -> dict:
    """Train one model through Ray Train (``ray-xray train``) and evaluate it on test.

    Args:
        model: an architecture name (``python -m ray_xray.models`` lists them).
        data: a folder, a ``manifest.csv``, or ``synthetic:chest3`` / ``synthetic:binary[:N]``.
        out: the run folder (default ``runs/<model>-<time>``); it receives ``best_model.pt``
            (open it with ``ray_xray.load(out)``), ``config.json`` and ``metrics.json``.
        max_failures: worker restarts from the last checkpoint.
        cache: prepared-data cache (local path or ``s3://``; default ``$RAY_XRAY_CACHE``).
        **settings: ``TrainConfig`` fields (``epochs``, ``img_size`` in pixels, ``batch_size``,
            ``lr``, ``precision``, ``device``, ``limit_per_split``, ...) and ``model_kwargs``,
            a dict of model hyperparameters (``{"dropout": 0.3}``). ``model_size``: "cpu"
            (default: ``cnn``, ``lstm`` and ``vit`` at sizes a CPU trains in minutes,
            ``ray_xray.config.CPU_MODEL_SIZES``) or "seed" (the seed papers' sizes).

    Returns:
        The run's report (as ``metrics.json``): ``test`` metrics (``accuracy``, ``macro_f1``,
        ``auc``, per-class ``recall``), ``val``, ``classes``, ``best_epoch``, ``history``,
        ``wall_s`` (seconds), ``params``, and ``out``, the run folder.

    Raises:
        ValueError: an unknown setting or model, a bad value or unusable data.
    """
    from .config import TrainConfig
    from .models import create_model
    from .train.run import train_and_test

    cfg = TrainConfig.from_dict({"model": model, "data": str(data), **settings}).with_model_size()
    # Fail on a bad model hyperparameter here, not inside a Ray worker.
    create_model(cfg.model, 3, cfg.in_chans, cfg.img_size, **cfg.model_kwargs)
    out = Path(out or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    report = train_and_test(cfg, out, max_failures=max_failures, cache=cache)
    return {**report, "out": str(out.resolve())}


# --------------------------------------------------------------------------- load / predict


def load(path: str | os.PathLike, device: str = "auto") -> Predictor:
    """Open a trained model or ensemble for prediction.

    Args:
        path: ``best_model.pt`` (a run's or a sweep's), a trial checkpoint, ``ensemble.pt``
            (``ray-xray ensemble``), a folder holding ``best_model.pt`` or ``ensemble.pt``, or
            a sweep folder (its ``ensemble/ensemble.pt``; its best trial when it has none).
        device: ``"auto"`` (GPU when available), ``"cpu"`` or ``"cuda"``.

    Returns:
        A ``Predictor``. Loading uses ``torch.load(weights_only=True)``: a file that would
        run code when unpickled is refused.

    Raises:
        ValueError: no such file, or not a ray_xray model/ensemble, or a bad ``device``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    from .checkpoint import load_model_or_ensemble
    from .sweep_folder import model_path

    file, _ = model_path(path)
    return Predictor(load_model_or_ensemble(file), file, device)


class Predictor:
    """A loaded model or ensemble; ``predict(images)`` gives class probabilities.

    Attributes:
        classes: the K class names, in the column order of ``predict``'s output.
        kind: ``"model"`` or ``"ensemble"``.
        path: the file (or folder) it was loaded from.
        img_sizes: the side(s) in pixels inputs are resized to (one per distinct member size).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        record: the underlying record (as ``python -m ray_xray.predict`` uses it).
    """

    def __init__(self, record: dict, path: str | os.PathLike, device: str = "auto"):
        from .checkpoint import is_ensemble, preprocess

        self.record = record
        self.path = Path(path)
        self.device = device
        self.kind = "ensemble" if is_ensemble(record) else "model"
        self.classes: list[str] = list(record["classes"])
        members = record["members"] if self.kind == "ensemble" else [record]
        self.img_sizes = sorted({preprocess(m)["img_size"] for m in members})

    def __repr__(self) -> str:
        return (
            f"Predictor({self.kind}, classes={self.classes}, img_sizes={self.img_sizes}, "
            f"path='{self.path}')"
        )

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities, one row per image.

        Args:
            images: any of
                - a file path (``str``/``os.PathLike``; PNG, JPEG, ... as the CLI reads) or a
                  list of paths;
                - a numpy array or torch tensor of grey images, shape (H, W) for one image,
                  (N, H, W) or (N, 1, H, W) for N; ``uint8`` is 0..255, floats must lie in
                  [0, 1] (scale them first; 12/16-bit data: window it to [0, 1]);
                - a list mixing paths and (H, W) arrays of any sizes.
                Each image is resized (shorter side, centre crop) and normalised exactly as in
                training; colour (H, W, 3) arrays are refused (convert to grey first).

        Returns:
            float64 array (N, K), K = ``len(self.classes)``; rows sum to 1. ``(0, K)`` for no
            images. Predicted labels: ``[p.classes[i] for i in prob.argmax(1)]``.

        Raises:
            TypeError: an unsupported input type.  ValueError: an unreadable file, a bad
            shape, dtype or value range (the message names the image).
        """
        from .predict import probabilities

        names, blobs = _encode(images)
        return probabilities(self.record, blobs, names, self.device)


def _encode(images: Any) -> tuple[list[str], list[bytes]]:
    """(names, encoded bytes): file bytes as they are, arrays as lossless PNG.

    Arrays go through PNG so they take the very decode/resize path files take (no second
    copy of the preprocessing that could drift from training's).
    """
    if isinstance(images, str | os.PathLike):
        return [str(images)], [_read(images)]
    arr = _as_array(images)
    if arr is not None:
        stack = _stack(arr, "images")
        names = [f"images[{i}]" for i in range(len(stack))]
        return names, [_png(a, n) for a, n in zip(stack, names, strict=True)]
    if not isinstance(images, Sequence):
        raise TypeError(
            f"images: expected a path, an array/tensor or a list of them, got {type(images).__name__}"
        )
    names, blobs = [], []
    for i, item in enumerate(images):
        if isinstance(item, str | os.PathLike):
            names.append(str(item))
            blobs.append(_read(item))
            continue
        a = _as_array(item)
        if a is None:
            raise TypeError(
                f"images[{i}]: expected a path or an array/tensor, got {type(item).__name__}"
            )
        if a.ndim != 2:
            raise ValueError(f"images[{i}]: list items must be (H, W) arrays, got {a.shape}")
        names.append(f"images[{i}]")
        blobs.append(_png(a, names[-1]))
    return names, blobs


def _read(path: str | os.PathLike) -> bytes:
    from .predict import _read_images

    return _read_images([str(path)])[0]


def _as_array(x: Any) -> np.ndarray | None:
    """A numpy array, or a torch tensor copied to one (no torch import needed); else None."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()  # bf16/fp16 -> float32
    return None


def _stack(arr: np.ndarray, where: str) -> np.ndarray:
    """(H, W) / (N, H, W) / (N, 1, H, W) -> (N, H, W)."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise ValueError(
            f"{where}: shape {arr.shape} looks like a colour image (H, W, C); pass grey (H, W) "
            f"images (PIL: .convert('L'))"
        )
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4 and arr.shape[1] == 1:
        return arr[:, 0]
    raise ValueError(f"{where}: expected shape (H, W), (N, H, W) or (N, 1, H, W), got {arr.shape}")


def _png(a: np.ndarray, name: str) -> bytes:
    from PIL import Image

    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        pixels = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: contains NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: float images must lie in [0, 1], got {lo:g}..{hi:g} "
                f"(scale them, or pass uint8 0..255)"
            )
        pixels = np.round(a * 255.0).astype(np.uint8)
    else:
        raise ValueError(
            f"{name}: dtype {a.dtype} not supported: pass uint8 (0..255) or floats in [0, 1] "
            f"(window 12/16-bit data to [0, 1] first)"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
