"""The one training configuration: every run, trial and search space resolves to this."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any

CHOICES = {
    "optimizer": ("adamw", "adam", "sgd"),
    "loss": ("ce", "focal"),
    "lr_scheduler": ("onecycle", "cosine", "plateau", "none"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "monitor": ("val_macro_f1", "val_acc", "val_auc", "val_loss"),
    "dedupe": ("off", "drop-cross-split", "drop-conflicts"),
    "augment": ("seeds", "flip", "robust"),
    "augment_on": ("auto", "loader", "device"),
    "normalize": ("dataset", "image", "imagenet"),
    "equalize": ("none", "hist"),
    "model_size": ("cpu", "seed"),
}

# What model_size=cpu fills in where model_kwargs leaves a size out: models a 2-core CPU trains
# in minutes (cnn: 3.2M parameters; the seed's width 64 with its 4096-2048 head has 111M and
# took 191 s for one epoch of 96 images at 64 px). model_size=seed keeps the builders' own
# defaults, which are the seed papers' sizes (the seed_* search spaces train those recipes).
CPU_MODEL_SIZES: dict[str, dict[str, Any]] = {
    "cnn": {"width": 32, "head_dims": [512, 256], "pool_size": 4},
    "lstm": {"proj_dim": 128, "hidden_size": 128, "num_layers": 2},
    "vit": {"dim": 128, "depth": 4, "heads": 4},
}

# One line of help per setting: `python -m ray_xray.train --help` is generated from these.
HELP = {
    "model": "architecture (python -m ray_xray.models lists them)",
    "model_size": "cpu: cnn/lstm/vit sizes a CPU trains in minutes (cnn width 32, 512-256 head); "
    "seed: the seed papers' sizes (cnn 4096-2048 head, 111M parameters); model.KEY wins",
    "data": "folder, manifest.csv or synthetic:chest3|binary[:N]",
    "img_size": "images are resized to SIZE x SIZE pixels",
    "in_chans": "input channels: 1 (grey) or 3 (grey repeated, for ImageNet weights)",
    "epochs": "training epochs",
    "batch_size": "images per optimiser step (per DDP worker)",
    "lr": "peak learning rate",
    "weight_decay": "optimiser weight decay",
    "optimizer": "optimiser",
    "momentum": "SGD momentum (sgd only)",
    "loss": "ce: cross-entropy; focal: focal loss (see focal_gamma)",
    "focal_gamma": "focal-loss gamma (0 is exactly cross-entropy)",
    "label_smoothing": "label smoothing of the loss",
    "class_weights": "weight the loss by inverse class frequency of the training split",
    "lr_scheduler": "learning-rate schedule",
    "warmup_epochs": "linear learning-rate warm-up, in epochs (fractions allowed)",
    "plateau_factor": "plateau schedule: lr multiplier when the monitored metric stalls",
    "plateau_patience": "plateau schedule: epochs without improvement before the lr drops",
    "min_lr": "plateau schedule: lr floor",
    "grad_clip": "max gradient norm (0 = off)",
    "patience": "early stopping after N epochs without improvement of monitor (0 = off)",
    "monitor": "validation metric that picks the best epoch",
    "precision": "auto: bf16 autocast where this CPU runs it natively and faster (a cached "
    "probe), else fp32; on CUDA bf16, else fp16",
    "device": "auto: CUDA when available",
    "channels_last": "channels-last memory layout for conv models",
    "aug_strength": "augmentation strength (0 = none, 1 = the seeds' recipe)",
    "augment": "seeds: flip+rotate+shift+contrast+crop; flip: horizontal flip only; robust: "
    "seeds + gamma, blur, noise, down-scaling, JPEG (what a new site changes; loader only)",
    "augment_on": "where augmentation runs (auto: device on CUDA, loader on CPU; robust: loader)",
    "normalize": "input scaling: dataset (training split mean/std), image (each image's own "
    "mean/std: z-score), imagenet (ImageNet's mean/std, for pretrained backbones)",
    "equalize": "hist: equalise each image's grey-level histogram before normalising",
    "loader_workers": "data-loading processes per training worker (torchvision's --workers)",
    "compile": "torch.compile the model (compiles per run: worth it for long runs)",
    "checkpoint_every": "save the training state every N epochs (and when the best changes)",
    "seed": "random seed",
    "num_workers": "Ray Train DDP workers (Ray's ScalingConfig.num_workers)",
    "dedupe": "duplicate policy applied before training",
    "allow_leakage": "train even if test shares images with train",
    "skip_bad": "leave unreadable images out instead of failing",
    "limit_per_split": "keep at most N images per split (0 = all; for smoke tests)",
    "cv_folds": "K > 0: train on fold cv_fold of K-fold CV over train+val (tune --cv sets it)",
    "cv_fold": "which of the cv_folds folds validates (0..K-1; -1: all of train+val trains, "
    "nothing validates: tune --refit-seeds)",
    "refit_seed": "a refit's index (tune --refit-seeds): its weights, shuffles and augmentation "
    "use seed + refit_seed; which images it trains on stays seed's",
    "model_kwargs": "model hyperparameters (model.KEY=VALUE)",
}
# Old setting name -> its name today: the one place that maps them. Old config.json files and
# checkpoint records, `--set scheduler=...` and search spaces with the old key still load.
RENAMED_SETTINGS = {"scheduler": "lr_scheduler", "workers": "num_workers"}


def current_name(key: str) -> str:
    """A setting's name today: ``"scheduler"`` -> ``"lr_scheduler"`` (RENAMED_SETTINGS); any
    other key (``"lr"``, ``"model.dropout"``) unchanged."""
    return RENAMED_SETTINGS.get(key, key)


def with_current_names(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with old setting names replaced by today's (a new dict, order kept).

    Raises ValueError when one setting is given under both names with different values
    (``scheduler=cosine`` and ``lr_scheduler=none``): which one was meant cannot be told."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        new = current_name(key)
        if new in out and out[new] != value:
            old = key if new != key else next(o for o, n in RENAMED_SETTINGS.items() if n == new)
            raise ValueError(
                f"config: {old!r} is the old name of {new!r} and they differ "
                f"({settings[old]!r} vs {settings[new]!r}); give only {new!r}"
            )
        out[new] = value
    return out


@dataclass
class TrainConfig:
    """Resolved settings of one training run (saved as config.json beside it)."""

    model: str = "resnet18"
    model_size: str = "cpu"  # CPU_MODEL_SIZES fill unset model sizes (see with_model_size)
    data: str = "synthetic:chest3"
    img_size: int = 128
    in_chans: int = 1
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    loss: str = "ce"
    focal_gamma: float = 0.0  # focal loss with gamma 0 is exactly cross-entropy
    label_smoothing: float = 0.0
    class_weights: bool = False  # inverse-frequency weights from training counts
    lr_scheduler: str = "onecycle"
    warmup_epochs: float = 0.0
    # lr_scheduler "plateau" (ReduceLROnPlateau on `monitor`): lr x factor after `patience` epochs
    # without a better value, never below min_lr. The seeds' 0.5 / 5 (the brain seed: 3, 1e-6).
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 0.0
    grad_clip: float = 1.0  # seeds: max norm 1.0; 0 disables
    patience: int = 0  # early stopping on `monitor`; 0 disables
    monitor: str = "val_macro_f1"
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = True  # conv models only; ignored elsewhere
    aug_strength: float = 1.0  # 0 = no augmentation, 1 = the seeds' recipe
    augment: str = "seeds"  # "flip": horizontal flip only (strength > 0 turns it on)
    # Where augmentation runs: "loader" (albumentations per image, CPU), "device" (one batched
    # affine on the training device, data/feed.py); "auto": device on CUDA, loader on CPU.
    augment_on: str = "auto"
    normalize: str = "dataset"  # "image": per-image z-score; "imagenet": ImageNet's mean/std
    equalize: str = "none"  # "hist": per-image histogram equalisation (data/feed.py)
    loader_workers: int = 0  # DataLoader processes for loader-side augmentation (torchvision -j)
    # Full training state (weights + optimiser) saved every N epochs, and always when the best
    # epoch changes: a restart redoes at most N-1 epochs; N > 1 cuts checkpoint traffic.
    checkpoint_every: int = 1
    compile: bool = False  # torch.compile the model (compiles per trial: worth it for long runs)
    seed: int = 0
    num_workers: int = 1  # Ray Train DDP workers
    dedupe: str = "off"  # audit policy applied before training
    allow_leakage: bool = False  # train even if test shares images with train
    skip_bad: bool = False  # drop unreadable images instead of failing
    limit_per_split: int = 0  # >0: keep at most N items per split (smoke tests)
    # Cross-validation (tune --cv): train+val pooled, split into cv_folds folds by patient
    # (data/folds.py); fold cv_fold validates, the rest train. 0 = the data's own val split.
    # cv_fold -1 (a refit, tune --refit-seeds): every fold trains, none validates.
    cv_folds: int = 0
    cv_fold: int = 0
    refit_seed: int = 0  # tune --refit-seeds: train_seed = seed + refit_seed, data by seed
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in field_types().items():
            setattr(self, name, _typed(name, getattr(self, name), kind))
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"config: {name}={value!r} is not one of {', '.join(allowed)}")
        for name in (
            "img_size",
            "in_chans",
            "epochs",
            "batch_size",
            "num_workers",
            "checkpoint_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)!r}")
        low = -1 if self.cv_folds >= 2 else 0  # -1: a refit on all of train+val
        if (
            self.cv_folds == 1
            or self.cv_folds < 0
            or not low <= self.cv_fold < max(1, self.cv_folds)
        ):
            raise ValueError(
                f"config: cv_folds must be 0 or >= 2 and cv_fold in -1..cv_folds-1, got "
                f"{self.cv_folds} and {self.cv_fold}"
            )
        if self.refit_seed < 0 or (self.refit_seed and self.cv_fold != -1):
            raise ValueError(
                f"config: refit_seed must be >= 0, and non-zero only with cv_fold -1 (a refit), "
                f"got {self.refit_seed} with cv_fold {self.cv_fold}"
            )
        if int(self.loader_workers) < 0:
            raise ValueError(f"config: loader_workers must be >= 0, got {self.loader_workers!r}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"config: in_chans must be 1 or 3, got {self.in_chans}")
        if not self.lr > 0:
            raise ValueError(f"config: lr must be > 0, got {self.lr}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"config: plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if int(self.plateau_patience) < 0 or self.min_lr < 0:
            raise ValueError(
                f"config: plateau_patience and min_lr must be >= 0, got "
                f"{self.plateau_patience} and {self.min_lr}"
            )
        if self.focal_gamma < 0:
            raise ValueError(f"config: focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.augment == "robust" and self.augment_on == "device":
            raise ValueError(
                "config: augment=robust runs on the loader only (JPEG re-compression has no "
                "batched version): use augment_on=loader or auto"
            )

    @classmethod
    def field_names(cls) -> set[str]:
        """The names of every setting (the dataclass fields, model_kwargs included)."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a flat dict (a config.json, a checkpoint record's config, a sampled
        trial): ``model.<kw>`` keys become model hyperparameters, old setting names
        (RENAMED_SETTINGS) load under today's. Raises ValueError naming unknown keys (with the
        closest valid name) or a value of the wrong type or outside its choices."""
        known, model_kwargs, unknown = {}, dict(d.get("model_kwargs") or {}), []
        for key, value in with_current_names(d).items():
            if key == "model_kwargs":
                continue
            if key.startswith("model."):
                model_kwargs[key[len("model.") :]] = value
            elif key in cls.field_names():
                known[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"config: {'; '.join(unknown_key_message(k) for k in sorted(unknown))}"
            )
        return cls(**known, model_kwargs=model_kwargs)

    def with_model_size(self) -> TrainConfig:
        """A copy whose model_kwargs hold `model_size`'s sizes where they name none:
        ``CPU_MODEL_SIZES[model]`` for "cpu", nothing for "seed" (the builders' defaults).

        Called where a run or trial starts (``fit``, ``train``, each sweep trial), so the saved
        config and every checkpoint name the sizes explicitly: a model record is rebuilt from
        its model_kwargs alone, and records written before this setting keep loading."""
        extra = CPU_MODEL_SIZES.get(self.model, {}) if self.model_size == "cpu" else {}
        return dataclasses.replace(self, model_kwargs={**extra, **self.model_kwargs})

    @property
    def train_seed(self) -> int:
        """The seed of the training randomness (initial weights, shuffles, augmentation):
        `seed` + `refit_seed`. The data's own randomness (a limit_per_split subset, the --cv
        folds) uses `seed` alone, so the refits of one sweep train on the same images."""
        return int(self.seed) + int(self.refit_seed)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as a flat JSON-able dict (model_kwargs a nested dict): what config.json and
        a checkpoint's record store, and what `from_dict` reads back."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """`to_dict` as indented JSON text with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
}


@functools.cache
def field_types() -> dict[str, type]:
    """Setting name -> its Python type (bool, int, float, str or dict)."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: typing.get_origin(t) or t for name, t in hints.items()}


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (3 -> 3.0 for a float; 4.0 -> 4 for an int); ValueError otherwise."""
    ok = False
    if kind is bool:
        ok = value is True or value is False or type(value).__name__ == "bool_"  # numpy's too
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(
            f"config: {name}={value!r} is not {TYPE_WORDS.get(kind, kind.__name__)} "
            f"({name} takes {_takes(name, kind)})"
        )
    return kind(value) if kind in (bool, int, float) else value


def _takes(name: str, kind: type) -> str:
    if name in CHOICES:
        return "one of " + ", ".join(CHOICES[name])
    return {bool: "true/false", int: "an integer", float: "a number (e.g. 0.001)"}.get(
        kind, TYPE_WORDS.get(kind, kind.__name__)
    )


def unknown_key_message(key: str) -> str:
    """``unknown setting 'epoch' (did you mean 'epochs'?)`` plus the valid names, one line."""
    names = sorted(TrainConfig.field_names() - {"model_kwargs"})
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown setting {key!r}{hint}; settings are {', '.join(names)} and model.KEY for "
        "model hyperparameters"
    )


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(key: str, text: str) -> Any:
    """One setting given as text (``--set KEY=VALUE``, ``--lr 1e-3``) -> its typed value.

    ``key`` is a TrainConfig field (or its old name, RENAMED_SETTINGS); ``model.KEY`` values
    are parsed as JSON when they parse, else kept as text. Raises ValueError with one line naming the key,
    the value and the expected type or choices (``lr takes a number (e.g. 0.001), got 'abc'``).
    """
    if key.startswith("model."):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    key = current_name(key)
    kind = field_types().get(key)
    if kind is None or key == "model_kwargs":
        raise ValueError(unknown_key_message(key))
    value: Any = text.strip()
    try:
        if kind is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError
            value = value.lower() in _TRUE
        elif kind in (int, float):
            value = kind(value)
    except ValueError:
        raise ValueError(f"{key} takes {_takes(key, kind)}, got {text!r}") from None
    if key in CHOICES and value not in CHOICES[key]:
        close = difflib.get_close_matches(value, CHOICES[key], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{key} takes {_takes(key, kind)}, got {text!r}{hint}")
    return value


def parse_settings(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["epochs=4", "model.dropout=0.3"]`` -> ``{"epochs": 4, "model.dropout": 0.3}``.

    Keys are TrainConfig fields (or their old names, stored under today's) or
    ``model.KEY``; values are checked against the field's type and choices. Raises ValueError,
    one line starting ``{flag} ITEM:``, for a missing ``=``, an unknown key (with the closest
    valid name) or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag} {item}: expected KEY=VALUE, e.g. {flag} epochs=4")
        try:
            value = parse_value(key, text)
        except ValueError as e:
            raise ValueError(f"{flag} {item}: {e}") from None
        out[current_name(key)] = value
    return out
