"""The one training function every architecture runs: `train_loop_per_worker` under Ray Train,
`train_in_tune_trial` inside a single-worker Tune trial; both are `run_training`."""

from __future__ import annotations

import logging
import os
import signal
import time

import torch

from .. import trace
from ..checkpoint import load_state, model_record, training_state
from ..config import TrainConfig
from ..data import load_for_config
from ..data.dataset import shared_key
from ..device import pick_device
from . import engine
from .collectives import all_reduce_sum
from .loop import Hooks, Progress, Trainer, train_epochs
from .session import TrainSession, TuneSession


def split_config(config: dict) -> tuple[TrainConfig, dict]:
    """Ray hands us one flat dict: TrainConfig fields plus `_`-prefixed runtime options."""
    runtime = {k: v for k, v in config.items() if k.startswith("_")}
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    return cfg, runtime


def fault_hook(cfg: TrainConfig, epoch: int, rank: int, resumed: bool, steps: int):
    """Fault injection for the reliability tests, from RAY_XRAY_FAULT (unset: no hook).

    `kill:<epoch>`: rank 0 SIGKILLs itself halfway through that epoch, once (not after the
    restart), first appending a line to the file $RAY_XRAY_FAULT_LOG names, if any (so a test
    knows the kill happened). `raise_if_lr:<x>`: a trial whose lr == x raises as an
    out-of-memory would.
    """
    spec = os.environ.get("RAY_XRAY_FAULT", "")
    kind, _, arg = spec.partition(":")
    if kind == "kill" and rank == 0 and not resumed and epoch == int(arg):

        def hook(step: int) -> None:
            if step == steps // 2:
                # Ray Train's controller collects reports every 2 s; a worker dying sooner
                # after its report loses that checkpoint (it resumes from the one before).
                time.sleep(3)
                if os.environ.get("RAY_XRAY_FAULT_LOG"):
                    with open(os.environ["RAY_XRAY_FAULT_LOG"], "a") as fh:
                        fh.write(f"killed pid {os.getpid()} in epoch {epoch}\n")
                os.kill(os.getpid(), signal.SIGKILL)

        return hook
    if kind == "raise_if_lr" and cfg.lr == float(arg):

        def hook(step: int) -> None:
            raise RuntimeError("injected fault: CUDA out of memory (RAY_XRAY_FAULT)")

        return hook
    return None


class RayHooks(Hooks):
    """Ray's side of `train_epochs`: sums over workers, rank 0's early-stop decision, reports
    and checkpoints (rank 0 saves the full training state, so a restart never redoes an epoch),
    all through `session` (a Ray Train worker's or a Tune trial's, see `session.py`)."""

    def __init__(
        self, cfg: TrainConfig, tr: Trainer, data, session, resumed: bool, best_record: dict | None
    ) -> None:
        self.cfg, self.tr, self.data, self.session = cfg, tr, data, session
        self.rank, self.world = session.rank, session.world
        self.resumed, self.best_record = resumed, best_record

    def on_step(self, epoch: int, steps: int):
        """The fault-injection hook for this epoch's steps (`fault_hook`; None outside the
        reliability tests)."""
        return fault_hook(self.cfg, epoch, self.rank, self.resumed, steps)

    def before_epoch(self, epoch: int) -> None:
        """Trace the epoch's start; with several workers, set the distributed sampler's epoch
        (its shuffle differs every epoch)."""
        trace.mark("epoch_start", epoch=epoch)
        if self.world > 1:
            self.tr.train_loader.sampler.set_epoch(epoch)

    def reduce_train(self, out: dict, coverage: torch.Tensor | None) -> dict:
        """The epoch's training loss (image-weighted mean) and image count summed over every worker;
        with `coverage` (counts per training image), also how often each image was seen at least
        and at most (`coverage_min`/`coverage_max`)."""
        sums = all_reduce_sum(
            torch.tensor([out["train_loss"] * out["train_images"], out["train_images"]])
        )
        train = {"train_loss": float(sums[0] / sums[1]), "train_images": int(sums[1])}
        if coverage is not None:  # how often each training image was seen, over all workers
            coverage = all_reduce_sum(coverage)
            train["train_images_seen"] = int(sums[1])
            train["coverage_min"], train["coverage_max"] = int(coverage.min()), int(coverage.max())
        return train

    def agree_stop(self, stop: bool) -> bool:
        """Rank 0's early-stop decision, shared with every rank (all stop together)."""
        # Ranks can disagree slightly on val metrics (BatchNorm buffers), so rank 0 decides.
        return bool(all_reduce_sum(torch.tensor([float(stop and self.rank == 0)])).item() > 0)

    def on_epoch(self, metrics: dict, improved: bool, progress: Progress) -> None:
        """After validation: keep the best epoch's model record, print rank 0's epoch line, then
        report the metrics, with the full training state as a checkpoint when the best changed,
        every `checkpoint_every` epochs and at the last epoch (rank 0 only)."""
        trace.mark("epoch_end", epoch=metrics["epoch"], epoch_s=metrics["epoch_s"])
        cfg, tr = self.cfg, self.tr
        if improved:
            self.best_record = model_record(
                tr.bare, cfg, self.data.classes, self.data.mean, self.data.std, metrics
            )
            self.best_record["epoch"] = metrics["epoch"]
        if self.rank == 0:
            print(_progress_line(metrics, cfg), flush=True)
            if cfg.patience and progress.since_best >= cfg.patience:
                print(f"early stop: no {cfg.monitor} gain for {cfg.patience} epochs", flush=True)
        # Always when the best changed (the kept checkpoint then holds the best model whatever
        # epoch ASHA stops at), else every `checkpoint_every` epochs and at the last one.
        epoch = metrics["epoch"]
        save = improved or epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs
        if self.rank != 0 or not save:
            self.session.report(metrics)
            trace.mark("reported", epoch=epoch, checkpoint=False)
            return
        # When improved, the best model is this epoch's: the file holds one copy of its tensors.
        state = training_state(tr.state_dict(), progress, self.best_record, improved)
        self.session.report(metrics, state)
        trace.mark("reported", epoch=epoch, checkpoint=True)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's training function: `config` is a flat TrainConfig dict plus `_`-prefixed
    runtime options (`_cache`: the Parquet cache root, `_threads`: torch threads, `_data`: the
    sweep's prepared data in Ray's object store, `_trial`: the Tune trial id, for traces)."""
    cfg, runtime = split_config(config)
    run_training(cfg, runtime, TrainSession())


def train_in_tune_trial(cfg: TrainConfig, runtime: dict) -> None:
    """The training function run inside a Tune trial's own process (the `inline` runner);
    `runtime` as `train_loop_per_worker`'s `_` options, plus `_scratch` (see TuneSession)."""
    run_training(cfg, runtime, TuneSession(runtime.get("_scratch")))


def run_training(cfg: TrainConfig, runtime: dict, session) -> None:
    """Train `cfg` to its last epoch (or early stop), reporting every epoch to `session`
    (`TrainSession` or `TuneSession`); resumes from the session's checkpoint when there is one.
    Raises what training raises (a NaN loss, out of memory)."""
    trial = runtime.get("_trial")
    trace.mark("worker_start", trial=trial)
    # Ray logs every report and checkpoint at INFO through the root logger; our one epoch
    # line says the same in a tenth of the space.
    logging.getLogger().setLevel(logging.WARNING)
    rank = session.rank
    if runtime.get("_threads"):
        torch.set_num_threads(int(runtime["_threads"]))
    engine.seed_everything(cfg.train_seed)

    data = shared_data(cfg, runtime.get("_data")) or load_for_config(cfg, runtime.get("_cache"))
    trace.mark("data_loaded", trial=trial)
    device = session.device(pick_device(cfg.device).type == "cuda")
    tr = Trainer.build(
        cfg,
        data,
        device,
        world=session.world,
        prepare_model=lambda m: session.prepare_model(m, device),
        prepare_loader=session.prepare_loader,
    )

    # What the run got: torch's threads (its CPU share), loader processes and precision.
    trace.mark(
        "model_built",
        trial=trial,
        rank=rank,
        threads=torch.get_num_threads(),
        loader_workers=getattr(tr.train_loader, "num_workers", 0),
        precision=tr.precision,
    )
    progress, best_record, resumed = Progress(), None, False
    ckpt = session.get_checkpoint()
    if ckpt:  # restarted after a failure, or a resumed sweep: continue, never redo an epoch
        with ckpt.as_directory() as d:
            state = load_state(d)
        tr.load_state_dict(state)
        best_record, resumed = state["best"], True
        progress = Progress(
            epoch=state["epoch"],
            best_value=state["best_value"],
            best_epoch=(best_record or {}).get("epoch", 0),
            since_best=state["since_best"],
            history=state["history"],
        )
        if rank == 0:
            print(f"resumed from epoch {state['epoch']}", flush=True)

    if progress.epoch >= cfg.epochs and progress.history:
        # Restored after the last epoch was saved but before the run was marked done (a
        # killed sweep): report the final epoch again so Tune and its scheduler see a result.
        session.report(dict(progress.history[-1]), checkpoint=ckpt if rank == 0 else None)
    hooks = RayHooks(cfg, tr, data, session, resumed, best_record)
    world = session.world
    train_epochs(tr, progress, hooks, coverage_size=len(data.labels["train"]) if world > 1 else 0)
    trace.mark("worker_end", trial=trial)


def shared_data(cfg: TrainConfig, shared: tuple | None):
    """The sweep's `PreparedData` from Ray's object store when it is this run's data, else None.

    `shared` = (`shared_key` of the config the driver prepared, ObjectRef), or a list of such
    pairs (one per searched img_size: tune/sizes.py); None when none matches. Every trial of a
    sweep reads the same arrays from shared memory instead of reading, hashing and decoding
    the Parquet cache again (0.7-0.9 s of CPU per trial on chest3 at 64 px, measured here).
    A trial whose data settings differ (a space that tunes img_size), or whose driver has gone
    (a resumed sweep's restored trial, with the reference of a driver that no longer exists),
    loads from the cache as before.
    """
    pairs = [shared] if isinstance(shared, tuple) else list(shared or [])
    ref = next((r for key, r in pairs if key == shared_key(cfg)), None)
    if ref is None:
        return None
    import ray

    from ..data.folds import for_config

    try:
        return for_config(ray.get(ref, timeout=60), cfg)
    except Exception as exc:  # noqa: BLE001 - the cache is always there to fall back on
        print(f"shared data unavailable ({type(exc).__name__}); loading from the cache", flush=True)
        return None


def _progress_line(m: dict, cfg: TrainConfig) -> str:
    recalls = " ".join(
        f"{k[len('val_recall_') :][:4]}={v:.3f}"
        for k, v in m.items()
        if k.startswith("val_recall_")
    )
    star = "*" if m["improved"] else " "
    left = m["epoch_s"] * (cfg.epochs - m["epoch"])  # at this epoch's pace (early stop: less)
    eta = f"  ETA {left / 60:.1f} min" if left >= 60 else f"  ETA {left:.0f}s" if left else ""
    val = (
        f"val_loss {m['val_loss']:.4f}  acc {m['val_acc']:.4f}  f1 {m['val_macro_f1']:.4f}  "
        f"auc {m['val_auc']:.4f}  recall {recalls}"
        if "val_loss" in m
        else "no validation (a refit on all of train+val)"
    )
    return (
        f"epoch {m['epoch']:>3}/{cfg.epochs} {star} train_loss {m['train_loss']:.4f}  {val}  "
        f"{m['epoch_s']:.1f}s {m['images_per_s']:.0f} img/s{eta}"
    )
