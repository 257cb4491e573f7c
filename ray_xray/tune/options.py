"""`SweepOptions`, the one set of a sweep's options, and the trial runners: no Ray or Optuna
import here, so `python -m ray_xray.tune --help` and a mistyped flag answer at once.

The options are frozen: a sweep is planned once (`service.plan_sweep`: paths made absolute,
the external sets checked, the trial runner chosen), each step making a changed copy with
``dataclasses.replace``; nothing assigns to them while the sweep runs. Their list and dict
fields are never changed in place either."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNNERS = ("auto", "inline", "torchtrainer")


@dataclass(frozen=True)
class SweepOptions:
    """Everything one sweep needs; the ``python -m ray_xray.tune`` flags map onto these fields.

    ``ray_xray.sweep(...)`` builds one from keyword arguments. Units: ``budget_minutes`` in
    minutes of wall clock (0 = none), ``*_per_trial`` in CPUs/GPUs (fractions share), epochs
    counted per trial (``grace_epochs``) or summed over trials (``budget_epochs``, 0 = none).
    Frozen: ``dataclasses.replace(opts, trials=4)`` makes a changed copy (assigning a field
    raises ``dataclasses.FrozenInstanceError``).
    """

    space: str = "resnet18"
    data: str = "synthetic:chest3"
    trials: int = 20
    budget_minutes: float = 0.0  # 0 = no time limit
    storage: str = "runs/tune"
    name: str | None = None
    resume: bool = False
    objective: list[str] = field(default_factory=lambda: ["val_macro_f1"])
    gpus_per_trial: float = 0.0
    cpus_per_trial: float | None = None
    workers_per_trial: int = 1
    # "inline": a trial runs the training function in its own process (one worker);
    # "torchtrainer": through a TorchTrainer; "auto": inline for one-worker CPU trials.
    trial_runner: str = "auto"
    wandb: str = "off"
    wandb_project: str = "ray_xray"
    smoke_test: bool = False
    seed: int = 0
    top_k: int = 5  # evaluated on test, and the ensemble's candidate members
    ensemble: bool = True
    max_failures: int = 1  # restarts of a failed trial's training (from its last checkpoint)
    cache: str | None = None
    # ASHA's first rung. 0 = a third of the epochs: with one-cycle warm-up, epoch-1 validation
    # says little (a resnet18 that ends best was cut at epoch 1 behind a faster starter).
    grace_epochs: int = 0
    scheduler: str = "asha"  # "fifo": every trial runs all its epochs
    searcher: str = "tpe"  # "random": Optuna's RandomSampler (random search)
    tpe_startup: int = 10  # TPE's random trials before it models the space (Optuna's default)
    budget_epochs: int = 0  # >0: start no new trial once trials have reported this many epochs
    settings: dict = field(default_factory=dict)  # --set KEY=VALUE overrides for every trial
    # --external: labelled sets scored at the end (top-k + ensemble), never used to choose
    external: list[str] = field(default_factory=list)
    # --cv K: rank on fold 0 of K, then re-run the best cv_top configurations on all K folds;
    # their fold models are the ensemble (tune/folds.py). 0 = the data's own val split.
    cv: int = 0
    cv_top: int = 3
    # --refit-seeds S: after --cv's choice, train the chosen configuration on all of train+val
    # with S seeds; those S models, not the fold models, are the ensemble (tune/refit.py)
    refit_seeds: int = 0
    argv: list[str] = field(default_factory=list)
