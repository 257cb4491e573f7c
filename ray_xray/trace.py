"""Time stamps of a trial's phases, for the overhead benchmark (off unless $RAY_XRAY_TRACE).

With `RAY_XRAY_TRACE=/path/file.jsonl` in the environment of Ray's workers (the overhead
benchmark sets it through the runtime_env), the Tune trial function and the Ray Train worker
append one JSON line per phase boundary: `{"event", "t" (wall clock, s), "pid", "trial", ...}`.
`benchmarks/overhead.py` joins them with Ray's own process launch times (state API) into the
per-phase table of benchmarks/RESULTS.md. Unset (every normal run), `mark` returns at once.
"""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "RAY_XRAY_TRACE"


def mark(event: str, **fields) -> None:
    """Append `{"event": event, "t": time.time(), "pid": os.getpid(), **fields}` to the trace
    file named by $RAY_XRAY_TRACE (one line, appended in one write, so processes can share the
    file); do nothing when the variable is unset or empty."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields})
    with open(path, "a") as fh:
        fh.write(line + "\n")


def read(path: str | os.PathLike) -> list[dict]:
    """The records of a trace file, in file order ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(ln) for ln in fh if ln.strip()]
