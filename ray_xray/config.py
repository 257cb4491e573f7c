"""The one training configuration: every run, trial and search space resolves to this."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

CHOICES = {
    "optimizer": ("adamw", "adam", "sgd"),
    "loss": ("ce", "focal"),
    "scheduler": ("onecycle", "cosine", "plateau", "none"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "monitor": ("val_macro_f1", "val_acc", "val_auc", "val_loss"),
    "dedupe": ("off", "drop-cross-split", "drop-conflicts"),
    "augment": ("seeds", "flip"),
    "augment_on": ("auto", "loader", "device"),
}


@dataclass
class TrainConfig:
    """Resolved settings of one training run (saved as config.json beside it)."""

    model: str = "resnet18"
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
    scheduler: str = "onecycle"
    warmup_epochs: float = 0.0
    # scheduler "plateau" (ReduceLROnPlateau on `monitor`): lr x factor after `patience` epochs
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
    loader_workers: int = 0  # DataLoader processes for loader-side augmentation (torchvision -j)
    # Full training state (weights + optimiser) saved every N epochs, and always when the best
    # epoch changes: a restart redoes at most N-1 epochs; N > 1 cuts checkpoint traffic.
    checkpoint_every: int = 1
    compile: bool = False  # torch.compile the model (compiles per trial: worth it for long runs)
    seed: int = 0
    workers: int = 1  # Ray Train DDP workers
    dedupe: str = "off"  # audit policy applied before training
    allow_leakage: bool = False  # train even if test shares images with train
    skip_bad: bool = False  # drop unreadable images instead of failing
    limit_per_split: int = 0  # >0: keep at most N items per split (smoke tests)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"config: {name}={value!r} is not one of {', '.join(allowed)}")
        for name in ("img_size", "in_chans", "epochs", "batch_size", "workers", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)!r}")
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

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a flat dict; `model.<kw>` keys become model hyperparameters."""
        known, model_kwargs, unknown = {}, dict(d.get("model_kwargs") or {}), []
        for key, value in d.items():
            if key == "model_kwargs":
                continue
            if key.startswith("model."):
                model_kwargs[key[len("model.") :]] = value
            elif key in cls.field_names():
                known[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"config: unknown setting(s) {', '.join(sorted(unknown))}")
        return cls(**known, model_kwargs=model_kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
