"""One sweep folder, one owner: an exclusive lock file held while a sweep runs.

Two sweeps of one name into one storage both trained, and the one that finished last wrote
its results over the other's (Ray #35006, Optuna #820). The lock is a file, ``.sweep.lock``,
in the sweep's local folder (for a URI storage: its local copy, so it guards sweeps started
on this machine only), holding the owner's host, pid and process start time. It is created
whole or not at all (written under a temporary name, then hard-linked to its name: a link
fails when the name exists), so two sweeps starting together cannot both take it.

A lock whose owner is gone is stale: same host, and no process with that pid (or one that
started at another time: the pid was reused). It is reclaimed, saying so. A lock taken on
another host is never reclaimed: this host cannot see that process (the refusal says which
file to delete once the owner is known to be gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".sweep.lock"


class SweepLocked(ValueError):
    """Another live process holds the sweep folder's lock (one line: the owner and the file)."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None
    where /proc is not available (macOS): then only the pid is compared."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    """Whether the owner recorded in a lock (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process with that pid: it exists
    started = owner.get("started")
    now = _start_time(pid)
    return started is None or now is None or started == now


def _read(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: nobody can be named, treated as held by an unknown owner
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since', '?')})"


def _try_create(path: Path, owner: dict) -> bool:
    """Create the lock file holding `owner`, whole; False when it exists already."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        os.link(tmp, path)  # atomic, and fails if the name exists (O_EXCL's guarantee)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def acquire(folder: str | Path) -> Path:
    """Take the lock of sweep folder `folder` (created if missing) for this process.

    Returns the lock file's path. Raises SweepLocked (a ValueError: one `error:` line) naming
    the owner when a live process holds it, or an owner on another host; reclaims a stale
    lock of this host, with a note on stderr. Raises OSError when the folder is not writable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    host = socket.gethostname()
    me = {
        "host": host,
        "pid": os.getpid(),
        "started": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for _ in range(3):  # a stale lock removed by us and retaken by another: look again
        if _try_create(path, me):
            return path
        owner = _read(path)
        if owner is None:
            continue  # released between our attempt and the read
        if owner.get("host") == host and not _alive(owner):
            print(
                f"note: {path}: the sweep that held it ({_describe(owner)}) is gone; "
                "taking it over",
                file=sys.stderr,
            )
            # Read again just before removing it: another sweep may have reclaimed it since
            # (the window left is between this read and the unlink).
            if _read(path) == owner:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        raise SweepLocked(
            f"{folder} is in use by another sweep ({_describe(owner)}); wait for it to end or "
            f"pick another --name (if that process is gone, delete {path})"
        )
    raise SweepLocked(f"{folder}: could not take {LOCK_FILE}; another sweep keeps taking it")


def release(path: Path) -> None:
    """Remove the lock file `path` if this process still owns it."""
    owner = _read(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def sweep_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the lock of `folder` for the block (see `acquire`); released however it ends."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(path)
