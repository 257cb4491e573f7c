"""Checks of a sweep's options that need no Ray and no data: its name, its budgets, and that
every ``--set`` builds the model (as ``train`` checks before it starts)."""

from __future__ import annotations

import math
from typing import Any

BAD_NAMES = ("", ".", "..")


def check_sweep_name(name: str) -> str:
    """A sweep name is one path component of the storage: returns `name`, or raises ValueError
    (one line) for `/` (or `\\`), a NUL byte, or a name that is `.`/`..`/empty, any of which
    would put the sweep outside ``--storage`` or nowhere (``--name ../x`` wrote beside it)."""
    if name in BAD_NAMES or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"--name {name!r}: a sweep name is one folder inside --storage; it may not be "
            "'.', '..' or empty, nor hold '/', '\\' or a NUL byte"
        )
    return name


def check_budgets(budget_minutes: Any, budget_epochs: Any, trials: Any) -> None:
    """Refuse (ValueError, one line) a negative, NaN or infinite --budget-minutes, a negative
    --budget-epochs and fewer than one trial. 0 means no limit for both budgets."""
    if not isinstance(budget_minutes, int | float) or not math.isfinite(budget_minutes):
        raise ValueError(f"--budget-minutes must be a number of minutes, got {budget_minutes!r}")
    if budget_minutes < 0:
        raise ValueError(f"--budget-minutes must be >= 0 (0 = no limit), got {budget_minutes:g}")
    if not isinstance(budget_epochs, int) or budget_epochs < 0:
        raise ValueError(f"--budget-epochs must be >= 0 (0 = no limit), got {budget_epochs!r}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials!r}")


def check_settings_build(space, settings: dict, overrides: dict, n_classes: int = 3) -> None:
    """Build the model of the space's default configuration and of each start point with the
    sweep's ``--set`` values, on CPU, before any trial: a value the model refuses
    (``model.patch_size=7`` for a 32 px ViT) fails here in one line, not inside every trial.
    No-op without settings. `space`: a SearchSpace with the settings pinned; `overrides`: what
    the sweep sets for every trial. Raises ValueError naming the settings and the model."""
    if not settings:
        return
    from ..models import create_model

    configs = [space.default_config()] + [dict(p) for p in space.start]
    seen = set()
    for point in configs:
        try:
            cfg = space.resolve(point, overrides)
        except ValueError:
            continue  # a start point of another model, left for the space's own checks
        key = (cfg.model, cfg.in_chans, cfg.img_size, repr(sorted(cfg.model_kwargs.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            create_model(cfg.model, n_classes, cfg.in_chans, cfg.img_size, **cfg.model_kwargs)
        except (ValueError, TypeError, RuntimeError, AssertionError) as exc:
            given = " ".join(f"--set {k}={v}" for k, v in settings.items())
            raise ValueError(
                f"{given}: model {cfg.model} at {cfg.img_size} px refuses it: "
                + " ".join(str(exc).split())
            ) from None


def check_trial_disk_errors(errors: list, exp_dir: str, hint: str) -> None:
    """After ``fit``: when any trial failed because the disk was full or read-only (its
    checkpoint could not be written), raise OSError(ENOSPC) naming `exp_dir` and how many, so
    the sweep ends in one ``error:`` line (exit 1) without writing results that would mark it
    finished. `errors`: the ResultGrid's ``errors``; `hint`: how to resume once there is room
    (the failed trials stay failed; the others go on)."""
    import errno

    from ..cli import disk_problem

    full = [e for e in errors if disk_problem(e)]
    if full:
        raise OSError(
            errno.ENOSPC,
            f"the disk is full or read-only: {len(full)} trial(s) could not save a checkpoint; "
            f"free space, then {hint}",
            exp_dir,
        )


def disk_full_in_sweep(exc: BaseException, exp_dir: str, hint: str) -> OSError | None:
    """For an exception that ended a sweep after its trials started: when it is a full or
    read-only disk (``optuna.db`` that cannot grow, Tune's state, a result), an OSError(ENOSPC)
    naming `exp_dir` and how to go on (`hint`) for ``cli.run``'s one line; None otherwise
    (and for the one `check_trial_disk_errors` raised, which says it already)."""
    import errno

    from ..cli import disk_problem

    if isinstance(exc, OSError) and exc.filename == exp_dir or not disk_problem(exc):
        return None
    return OSError(errno.ENOSPC, f"the disk is full or read-only; free space, then {hint}", exp_dir)
