"""Who runs the training function: a Ray Train worker, or a Tune trial's own process.

`worker.run_training` is one function whatever runs it; what differs is behind a session:
its rank and world size, the device, DDP wrapping, where the last checkpoint comes from and
where a report goes.

- `TrainSession`: a Ray Train worker (TorchTrainer; `python -m ray_xray.train`, multi-worker
  sweeps). Checkpoints go into the Ray Train run's storage; the controller keeps them.
- `TuneSession`: a single-worker Tune trial running the function in its own process (the
  sweep's `inline` trial runner, see `ray_xray.tune.trial`): no controller, no worker group, no
  process group. Reports and checkpoints go straight to Tune, which keeps the latest checkpoint
  and restores from it. Its `report` returns only once Tune has taken the result (a trial the
  scheduler stopped never reports again), so what Tune saw is what it kept.
"""

from __future__ import annotations

import os
import tempfile

import pyarrow.fs
import torch

from ..checkpoint import save_state


class TrainSession:
    """A Ray Train worker's session: rank and world size from Ray Train's context, DDP through
    `ray.train.torch`, checkpoints written into the run's storage."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self, cuda: bool) -> torch.device:
        """This worker's CUDA device (Ray Train assigns it) or the CPU."""
        import ray.train.torch

        return ray.train.torch.get_device() if cuda else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """On `device`, DDP-wrapped when there are several workers (`ray.train.torch`)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=device)

    def prepare_loader(self, loader):
        """A distributed sampler when there are several workers; batches stay on the CPU."""
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def get_checkpoint(self):
        """The checkpoint to resume from (a restart or a resumed sweep), or None."""
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, state: dict | None = None, checkpoint=None) -> None:
        """Report `metrics`; with `state`, that training state as this epoch's checkpoint;
        `checkpoint`: one already stored (a restored run re-reporting its last epoch)."""
        import ray.train

        if state is not None:
            report_with_state(metrics, state)
        else:
            ray.train.report(metrics, checkpoint=checkpoint)


def report_with_state(metrics: dict, state: dict) -> None:
    """`ray.train.report` with `state` as this epoch's checkpoint (STATE_FILE in its folder).

    On local storage the file is written straight into the run's folder and reported with
    `NO_UPLOAD`: Ray's default (save to a temporary folder, then copy into storage) wrote each
    checkpoint twice, 180 MB per epoch for resnet18. Other storage (s3://) goes through a
    temporary folder that Ray uploads. The folder name is Ray's own (checkpoint_<time>).
    """
    import ray.train

    storage = ray.train.get_context().get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        name = storage.make_default_checkpoint_dir_name()
        path = storage.build_checkpoint_path_from_name(name)
        os.makedirs(path, exist_ok=True)
        save_state(state, path)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint(path),
            checkpoint_dir_name=name,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_state(state, tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class TuneSession:
    """A single-worker Tune trial running the training function in its own process.

    Rank 0 of 1; the trial's device is the GPU Ray gave the trial (Ray sets
    CUDA_VISIBLE_DEVICES, so it is `cuda`) or the CPU. Checkpoints go to Tune through
    `ray.tune.report`, which copies the folder into the trial's storage before it returns.
    """

    rank, world = 0, 1

    def __init__(self, scratch: str | None = None) -> None:
        """`scratch`: a folder on the storage's disk for the state Tune then copies (the trial's
        folder on local storage); None: the system's temporary folder (a URI storage)."""
        self.scratch = scratch

    def device(self, cuda: bool) -> torch.device:
        """The GPU Ray assigned this trial (CUDA_VISIBLE_DEVICES names only it, so index 0;
        with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, its id among all), or the CPU."""
        if not cuda:
            return torch.device("cpu")
        if os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):
            import ray

            ids = ray.get_gpu_ids()
            return torch.device("cuda", int(ids[0]) if ids else 0)
        return torch.device("cuda", 0)

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`model` on `device`: one worker, nothing to wrap."""
        return model.to(device)

    def prepare_loader(self, loader):
        """`loader` as it is: one worker reads every batch."""
        return loader

    def get_checkpoint(self):
        """The trial's checkpoint to resume from (a resumed sweep, or a trial Tune restarted),
        or None."""
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, state: dict | None = None, checkpoint=None) -> None:
        """As `TrainSession.report`; a re-reported `checkpoint` is Tune's latest already, so
        only the metrics go (reporting it again would copy the folder onto itself)."""
        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        if self.scratch:
            os.makedirs(self.scratch, exist_ok=True)
        # A hidden folder: a process killed while saving leaves nothing named like a checkpoint.
        with tempfile.TemporaryDirectory(prefix=".saving-", dir=self.scratch) as tmp:
            save_state(state, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
