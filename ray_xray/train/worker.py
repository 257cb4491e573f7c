"""`train_loop_per_worker`: the one training function every architecture runs under Ray Train."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import metrics as M
from ..config import TrainConfig
from ..data import class_weights, load_for_config
from . import engine as E

STATE_FILE = "checkpoint.pt"


def split_config(config: dict) -> tuple[TrainConfig, dict]:
    """Ray hands us one flat dict: TrainConfig fields plus `_`-prefixed runtime options."""
    runtime = {k: v for k, v in config.items() if k.startswith("_")}
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    return cfg, runtime


def fault_hook(cfg: TrainConfig, epoch: int, rank: int, resumed: bool, steps: int):
    """Fault injection for the reliability tests, from RAY_XRAY_FAULT (unset: no hook).

    `kill:<epoch>`: rank 0 SIGKILLs itself halfway through that epoch, once (not after the
    restart). `raise_if_lr:<x>`: a trial whose lr == x raises as an out-of-memory would.
    """
    spec = os.environ.get("RAY_XRAY_FAULT", "")
    kind, _, arg = spec.partition(":")
    if kind == "kill" and rank == 0 and not resumed and epoch == int(arg):

        def hook(step: int) -> None:
            if step == steps // 2:
                # Ray Train's controller collects reports every 2 s; a worker dying sooner
                # after its report loses that checkpoint (it resumes from the one before).
                time.sleep(3)
                os.kill(os.getpid(), signal.SIGKILL)

        return hook
    if kind == "raise_if_lr" and cfg.lr == float(arg):

        def hook(step: int) -> None:
            raise RuntimeError("injected fault: CUDA out of memory (RAY_XRAY_FAULT)")

        return hook
    return None


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def train_loop_per_worker(config: dict) -> None:
    cfg, runtime = split_config(config)
    # Ray Train logs every report and checkpoint at INFO through the root logger; our one
    # epoch line says the same in a tenth of the space.
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if runtime.get("_threads"):
        torch.set_num_threads(int(runtime["_threads"]))
    E.seed_everything(cfg.seed)

    data = load_for_config(cfg, runtime.get("_cache"))
    device = (
        ray.train.torch.get_device()
        if E.pick_device(cfg.device).type == "cuda"
        else torch.device("cpu")
    )
    precision = E.pick_precision(cfg.precision, device)

    model = E.build_model(cfg, len(data.classes))
    channels_last = E.uses_channels_last(cfg, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    bare = model.module if hasattr(model, "module") else model

    train_ds = data.dataset("train", cfg.in_chans, cfg.aug_strength, cfg.augment)
    # Drop a ragged last batch only when it would be tiny: BatchNorm cannot train on 1 image.
    drop_last = len(train_ds) // world % cfg.batch_size == 1
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last
    )
    train_loader = ray.train.torch.prepare_data_loader(train_loader, move_to_device=False)
    val_loader = DataLoader(data.dataset("val", cfg.in_chans), batch_size=max(64, cfg.batch_size))

    weights = class_weights(data.class_counts()) if cfg.class_weights else None
    loss_fn = E.make_loss(cfg, weights).to(device)
    opt = E.make_optimizer(cfg, model)
    sched = E.Schedule(cfg, opt, len(train_loader))
    scaler = E.make_scaler(device, precision)

    start_epoch, best_value, best_record, since_best, resumed = 1, None, None, 0, False
    history: list[dict] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # restarted after a failure, or a resumed sweep: continue, never redo an epoch
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_value = state["epoch"] + 1, state["best_value"]
        best_record, since_best, resumed = state["best"], state["since_best"], True
        history = state["history"]
        if rank == 0:
            print(f"resumed from epoch {state['epoch']}", flush=True)

    maximise = cfg.monitor != "val_loss"
    if start_epoch > cfg.epochs and history:
        # Restored after the last epoch was saved but before the run was marked done (a
        # killed sweep): report the final epoch again so Tune and its scheduler see a result.
        ray.train.report(dict(history[-1]), checkpoint=ckpt if rank == 0 else None)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        coverage = torch.zeros(len(train_ds)) if world > 1 else None
        hook = fault_hook(cfg, epoch, rank, resumed, len(train_loader))
        tr = E.train_one_epoch(
            model, train_loader, loss_fn, opt, sched, scaler, device, precision, cfg.grad_clip,
            channels_last, coverage, on_step=hook,
        )  # fmt: skip
        sums = _all_reduce_sum(
            torch.tensor([tr["train_loss"] * tr["train_images"], tr["train_images"]])
        )
        y, prob, val_loss = E.predict_proba(bare, val_loader, device, precision, channels_last)
        epoch_s = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "train_loss": float(sums[0] / sums[1]),
            "val_loss": val_loss,
            **M.summary(y, prob, data.classes),
            "epoch_s": epoch_s,
            "images_per_s": float(sums[1]) / tr["train_s"],
            "lr": opt.param_groups[0]["lr"],
        }
        if coverage is not None:  # how often each training image was seen, over all workers
            coverage = _all_reduce_sum(coverage)
            metrics["train_images_seen"] = int(sums[1])
            metrics["coverage_min"], metrics["coverage_max"] = (
                int(coverage.min()),
                int(coverage.max()),
            )
        value = metrics[cfg.monitor]
        improved = best_value is None or (value > best_value if maximise else value < best_value)
        if improved:
            best_value, since_best = value, 0
            best_record = E.model_record(bare, cfg, data.classes, data.mean, data.std, metrics)
            best_record["epoch"] = epoch
        else:
            since_best += 1
        sched.step_epoch(value)
        metrics.update(best_epoch=best_record["epoch"], improved=int(improved))
        metrics[f"best_{cfg.monitor}"] = best_value
        # Ranks can disagree slightly on val metrics (BatchNorm buffers), so rank 0 decides.
        stop = bool(cfg.patience and since_best >= cfg.patience) and rank == 0
        stop = bool(_all_reduce_sum(torch.tensor([float(stop)])).item() > 0)
        history.append(dict(metrics))
        if rank == 0:
            print(_progress_line(metrics, cfg), flush=True)
            state = {
                "epoch": epoch, "model": bare.state_dict(), "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(), "scaler": scaler.state_dict(),
                "best_value": best_value, "since_best": since_best, "best": best_record,
                "history": history,
            }  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                E.atomic_save(state, os.path.join(tmp, STATE_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if stop:
            if rank == 0:
                print(f"early stop: no {cfg.monitor} gain for {cfg.patience} epochs", flush=True)
            break


def _progress_line(m: dict, cfg: TrainConfig) -> str:
    recalls = " ".join(
        f"{k[len('val_recall_') :][:4]}={v:.3f}"
        for k, v in m.items()
        if k.startswith("val_recall_")
    )
    star = "*" if m["improved"] else " "
    return (
        f"epoch {m['epoch']:>3}/{cfg.epochs} {star} train_loss {m['train_loss']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  acc {m['val_acc']:.4f}  f1 {m['val_macro_f1']:.4f}  "
        f"auc {m['val_auc']:.4f}  recall {recalls}  {m['epoch_s']:.1f}s {m['images_per_s']:.0f} img/s"
    )
