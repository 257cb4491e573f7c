"""A sweep's own files on its storage: a local folder, or any URI that pyarrow's filesystem
layer opens (``s3://``, ``gs://``, ``file://`` ...).

Ray Tune writes its own files (trial folders, checkpoints, experiment state) to the storage
itself. The sweep's own files (``space.yaml``, ``sweep.json``, ``optuna.db``,
``results.parquet``/``.csv``, ``best_trials.json``, ``best_model.pt``, ``ensemble/``,
``wandb/``) go through `SweepFiles`: each is written into a local folder, ``stage``, with the
atomic writes of `ray_xray.io`, then `push`ed to the storage.

- Local storage path: ``stage`` *is* the experiment folder and `push` does nothing.
- URI: ``stage`` is a private local folder named after the URI (the same one on every run, so a
  resumed sweep's restored Optuna searcher finds its SQLite file where it left it) and `push`
  copies through ``pyarrow.fs.FileSystem.from_uri``: on object stores one PUT per file (an
  object appears whole or not at all), on a local file system a temporary name and a rename.
  `pull` brings files back (before a resume), `fetch` one checkpoint file.

Optuna's study stays a SQLite file (``optuna.db``, what optuna-dashboard opens) in ``stage``,
pushed after every finished trial (`StudyUpload`) and at the end: SQLite cannot live on an
object store, and Optuna's journal storage needs a file system with locks (or Redis).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ray import tune

from ..io import atomic_path
from ..links import dashboard_line, report_line
from ..sweep_folder import study_url

log = logging.getLogger("ray_xray.tune")
STUDY_FILE = "optuna.db"
_CHUNK = 1 << 20  # bytes per read/write when copying


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (storage through pyarrow), False for a local path."""
    return "://" in str(path)


def stage_root() -> Path:
    """Where the local copies of URI-stored sweeps are kept while they run:
    ``<tempfile.gettempdir()>/ray_xray-<uid>/stage`` (TMPDIR moves it), private to the user."""
    root = Path(tempfile.gettempdir()) / f"ray_xray-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root / "stage"


class SweepFiles:
    """The files of the sweep stored at `exp_dir` (an absolute local path or a URI).

    `stage`: the local folder files are written to and read from (a ``Path`` whose last part is
    the sweep's name, as the ensemble and report expect). `remote`: True for a URI.
    Picklable (Tune pickles its callbacks with the experiment); the filesystem is re-opened.
    Errors: pyarrow's ``OSError`` (or a subclass) when the storage cannot be read or written.
    """

    def __init__(self, exp_dir: str):
        self.uri = str(exp_dir).rstrip("/")
        self.remote = is_uri(self.uri)
        if self.remote:
            digest = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
            self.stage = stage_root() / digest / self.uri.rsplit("/", 1)[-1]
        else:
            self.stage = Path(self.uri)
        self._fs = None
        self._root = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_root": None}

    # ------------------------------------------------------------------ the filesystem
    def _open(self):
        if self._fs is None:
            from pyarrow.fs import FileSystem

            self._fs, self._root = FileSystem.from_uri(self.uri)
            self._root = self._root.rstrip("/")
        return self._fs, self._root

    def _kind(self, rel: str):
        from pyarrow.fs import FileType

        fs, root = self._open()
        kind = fs.get_file_info(f"{root}/{rel}").type
        return "file" if kind == FileType.File else "dir" if kind == FileType.Directory else None

    # ------------------------------------------------------------------ paths
    def where(self, name: str = "") -> str:
        """The storage location of `name` (relative to the sweep folder), as users type it."""
        if not name:
            return self.uri
        return f"{self.uri}/{name}" if self.remote else str(self.stage / name)

    def to_uri(self, path: str | None) -> str | None:
        """A path as Ray reports it for this storage (``Result.path``, ``Checkpoint.path``: the
        filesystem's own path, without the scheme) as a location under `where()`; local
        storage, None and paths outside the sweep come back unchanged."""
        if not self.remote or not path or is_uri(path):
            return path
        _, root = self._open()
        if path == root or path.startswith(root + "/"):
            return self.uri + path[len(root) :]
        return path

    def local_path(self, name: str) -> Path:
        """Where `name` lives in `stage` (parents created)."""
        path = self.stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ copying
    def exists(self, name: str) -> bool:
        """Whether the storage holds the file or folder `name`."""
        if not self.remote:
            return (self.stage / name).exists()
        return self._kind(name) is not None

    def push(self, *names: str) -> list[str]:
        """Copy files or folders (relative to `stage`, in the order given) from `stage` to the
        storage; names missing in `stage` are skipped. Returns the storage locations written.
        No-op for local storage. Raises OSError when the storage refuses a write."""
        if not self.remote:
            return []
        written = []
        for name in names:
            src = self.stage / name
            if src.is_dir():
                # Links (W&B's latest-run, debug.log) would be copies: only real files go.
                for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
                    if not (path.name.startswith(".") and path.name.endswith(".tmp")):
                        written.append(self._upload(path, path.relative_to(self.stage).as_posix()))
            elif src.is_file():
                written.append(self._upload(src, name))
        return written

    def pull(self, *names: str) -> list[str]:
        """Copy files or folders `names` from the storage into `stage` (replacing what is there);
        names the storage lacks are skipped. Returns the names copied. No-op locally."""
        if not self.remote:
            return []
        from pyarrow.fs import FileSelector

        fs, root = self._open()
        got = []
        for name in names:
            kind = self._kind(name)
            if kind == "file":
                self._download(name)
                got.append(name)
            elif kind == "dir":
                for info in fs.get_file_info(FileSelector(f"{root}/{name}", recursive=True)):
                    if info.is_file:
                        self._download(info.path[len(root) + 1 :])
                got.append(name)
        return got

    def fetch(self, location: str, name: str) -> Path:
        """The local folder holding file `name` of the storage folder `location` (a path from
        `to_uri`, e.g. a checkpoint): the folder itself locally, else a copy in `stage`.
        Raises FileNotFoundError when the storage has no such file."""
        if not self.remote or not is_uri(location):
            return Path(location)
        if not location.startswith(self.uri + "/"):
            raise FileNotFoundError(f"{location}: not inside {self.uri}")
        rel = location[len(self.uri) + 1 :]
        if self._kind(f"{rel}/{name}") != "file":
            raise FileNotFoundError(f"{location}/{name}: no such file")
        self._download(f"{rel}/{name}")
        return self.stage / rel

    def reset(self) -> None:
        """Empty `stage` (URIs only: locally it is the sweep itself): a new sweep must not pick
        up a study or results left by an earlier run with the same URI."""
        if self.remote:
            shutil.rmtree(self.stage, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove `stage` once everything is pushed (URIs only)."""
        if self.remote:
            shutil.rmtree(self.stage.parent, ignore_errors=True)

    def _upload(self, src: Path, rel: str) -> str:
        from pyarrow.fs import LocalFileSystem

        fs, root = self._open()
        dest = f"{root}/{rel}"
        parent, _, base = dest.rpartition("/")
        fs.create_dir(parent, recursive=True)
        # Object stores publish an object whole when its upload completes; a local file system
        # would show a half-written file, so write a temporary name and rename it.
        target = f"{parent}/.{base}.{os.getpid()}.tmp" if isinstance(fs, LocalFileSystem) else dest
        try:
            with open(src, "rb") as inp, fs.open_output_stream(target) as out:
                shutil.copyfileobj(inp, out, _CHUNK)
            if target != dest:
                fs.move(target, dest)
        except BaseException:
            if target != dest:
                try:
                    fs.delete_file(target)
                except OSError:
                    pass
            raise
        return self.where(rel)

    def _download(self, rel: str) -> Path:
        fs, root = self._open()
        dest = self.local_path(rel)
        with atomic_path(dest) as tmp, fs.open_input_stream(f"{root}/{rel}") as inp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(inp, out, _CHUNK)
        return dest


class StudyUpload(tune.Callback):
    """Pushes optuna.db to a URI storage after every finished trial, so a killed sweep's study
    is on the storage up to its last finished trial (the sweep's end pushes it again). An
    upload that fails is logged, not raised: the next one, or the end, tries again."""

    def __init__(self, files: SweepFiles):
        self.files = files

    def _push(self) -> None:
        try:
            self.files.push(STUDY_FILE)
        except OSError as exc:
            log.warning("could not copy %s to %s: %s", STUDY_FILE, self.files.uri, exc)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Push optuna.db after a trial finished (Tune's callback hook)."""
        self._push()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Push optuna.db after a trial failed (Tune's callback hook)."""
        self._push()


def tool_commands(files: SweepFiles, wandb_dir: str | Path | None = None) -> list[str]:
    """The lines that open this sweep's results, with its real paths: the ensemble's
    ``report.html`` as a ``file://`` URL first (when the sweep built one), then TensorBoard and
    optuna-dashboard (each with the install command when missing, ``links.dashboard_line``),
    and ``wandb sync`` when `wandb_dir`/wandb holds offline runs. For a URI other than
    file://, a first line says how to copy the folder here (the report is then in the copy)."""
    lines = []
    has_report = (files.stage / "ensemble" / "report.html").is_file()
    folder = files.where()
    if files.remote:
        scheme, rest = urlsplit(files.uri).scheme, files.uri.split("://", 1)[1]
        if scheme == "file":
            folder = "/" + rest.lstrip("/")
        else:
            local = f"runs/tune/{files.stage.name}"
            copy = {"s3": "aws s3 sync", "gs": "gcloud storage rsync -r"}.get(scheme, "copy")
            lines.append(f"copy the sweep here first: {copy} {files.uri} {local}")
            folder = local
    q = shlex.quote
    if has_report:
        lines.append(report_line(Path(folder) / "ensemble" / "report.html"))
    tb = f"tensorboard --logdir {q(folder)}"
    lines.append(dashboard_line("TensorBoard", "tensorboard", tb))
    study = f"optuna-dashboard {q(study_url(f'{folder}/{STUDY_FILE}'))}"
    lines.append(dashboard_line("optuna-dashboard", "optuna-dashboard", study))
    if wandb_dir is not None:
        wandb_dir = Path(wandb_dir)
        if glob.glob(str(wandb_dir / "wandb" / "offline-run-*")):
            runs = Path(folder) / "wandb" if wandb_dir == files.stage else wandb_dir / "wandb"
            lines.append(f"W&B upload:       wandb sync {q(str(runs))}/offline-run-*")
    return lines
