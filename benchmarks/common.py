"""What every benchmark shares: machine facts, settings, interleaved timing, results + RESULTS.md.

Each benchmark module has ``NAME``, ``TITLE``, ``DEFAULTS`` ({"full": {...}, "quick": {...}})
and ``run(quick, data, settings) -> dict`` returning ``result(...)``. The runner saves that as
``results/<name>.json`` and rebuilds ``RESULTS.md`` from every JSON file present, so running one
benchmark replaces its own section only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ray_xray.io import write_atomic

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR  # where results/ and RESULTS.md go; the runner's --out sets it
# Order of the sections in RESULTS.md (and of `make bench`).
ORDER = ("overhead", "precision", "roofline", "datapath", "search", "scaling", "feed", "value")
TITLES = {
    "overhead": "1. Trial overhead",
    "precision": "2. Mixed precision",
    "roofline": "3. Roofline",
    "datapath": "4. Data path",
    "search": "5. Search efficiency",
    "scaling": "6. Scaling",
    "feed": "7. Feed",
    "value": "8. Value of search",
}


# ------------------------------------------------------------------ machine and data


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and the date: the context of every number."""
    import torch

    from ray_xray import device

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        # A busy machine moves every number: say how busy it was, and how nice we ran.
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
    }
    if torch.cuda.is_available():  # the GPU a GPU benchmark ran on
        info["gpu"] = torch.cuda.get_device_name(0)
    for lib in ("ray", "optuna", "torchvision", "numpy"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None
    # The CPU and what decides bf16 speed on it (ray_xray.device chooses precision from these):
    # the instruction sets, torch's kernel capability and oneDNN's native-bf16 check, which
    # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can lower (`isa_env`).
    cpu = device.cpu_info()
    info["cpu"], info["cpu_flags"] = cpu["model"], cpu["flags"]
    info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    info["native_bf16"] = device.cpu_bf16_native()
    info["isa_env"] = {k: os.environ[k] for k in device.ISA_ENV if k in os.environ}
    try:
        text = Path("/proc/cpuinfo").read_text()
        physical = {
            ln.split(":", 1)[1].strip()
            for ln in text.splitlines()
            if ln.startswith(("physical id", "core id"))
        }
        info["physical_cores_hint"] = len(physical) or None
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def cpu_line(m: dict[str, Any]) -> str:
    """``AMD EPYC (avx2, avx512f, avx512_bf16; torch AVX512, native bf16)``: the CPU as the
    figures saw it (results saved before the capability was recorded show only the flags)."""
    flags = ", ".join(m.get("cpu_flags") or []) or "no avx512/amx"
    if m.get("torch_capability"):
        native = "native bf16" if m.get("native_bf16") else "no native bf16"
        flags += f"; torch {m['torch_capability']}, {native}"
    env = " ".join(f"{k}={v}" for k, v in (m.get("isa_env") or {}).items())
    return f"{m.get('cpu')} ({flags}{'; ' + env if env else ''})"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{cpu_line(m)}, {m.get('usable_cpus') or m.get('logical_cpus')} CPUs, "
        f"torch {m.get('torch')}, ray {m.get('ray')}, optuna {m.get('optuna')}, "
        f"Python {m.get('python')}"
    )


def default_data(arg: str | None = None) -> str:
    """--data, else $RAY_XRAY_SHARED_DATA/chest3, else ../shared/data/chest3 beside the repo."""
    if arg:
        return str(Path(arg).expanduser().resolve())
    root = os.environ.get("RAY_XRAY_SHARED_DATA")
    base = Path(root).expanduser() if root else REPO.parent / "shared" / "data"
    return str((base / "chest3").resolve())


def require_data(path: str) -> str:
    p = Path(path)
    if not (p.is_dir() and ((p / "manifest.csv").is_file() or (p / "train").is_dir())):
        raise ValueError(
            f"{path}: chest3 not found (pass --data DIR or set RAY_XRAY_SHARED_DATA to the "
            "folder holding chest3/)"
        )
    return str(p)


def threads() -> int:
    """All CPUs this process may use: every in-process benchmark runs torch with this many."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, int(n or 1))


# ------------------------------------------------------------------ settings


def resolve_settings(defaults: dict[str, dict], quick: bool, overrides: dict[str, str]) -> dict:
    """DEFAULTS[mode] with `--set NAME.key=value` overrides, typed like the default value."""
    out = dict(defaults["quick" if quick else "full"])
    for key, raw in overrides.items():
        if key not in out:
            raise ValueError(f"--set {key}: unknown setting; known: {', '.join(sorted(out))}")
        out[key] = coerce(raw, out[key])
    return out


def coerce(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"expected a boolean, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    if isinstance(like, list | tuple):
        items = [s.strip() for s in raw.split(",") if s.strip()]
        if like and not isinstance(like[0], str):
            return [coerce(s, like[0]) for s in items]
        return items
    return raw


# ------------------------------------------------------------------ timing


def say(name: str, text: str) -> None:
    """A progress line on stderr: long parts of a benchmark never run silently."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {name} {stamp}] {text}", file=sys.stderr, flush=True)


def interleave(
    measure: dict[str, Callable[[], float]],
    repeats: int,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Call every measurement once per round, rotating the order each round (A B C, B C A, ...):
    slow drift of a shared machine then hits every variant alike. Returns the samples."""
    names = list(measure)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for n in names[shift:] + names[:shift]:
            samples[n].append(float(measure[n]()))
        if on_round:
            on_round(r)
    return samples


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def spread(values: Iterable[float]) -> float | None:
    """(max - min) / median of the repeats: how noisy this measurement was."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pct(x: float) -> str:
    """A fraction as a percentage for prose: 0.034 -> '3.4%', 0.34 -> '34%'."""
    v = 100 * x
    return f"{v:.1f}%" if abs(v) < 10 else f"{v:.0f}%"


# ------------------------------------------------------------------ results


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict:
    return {"title": title, "columns": columns, "rows": rows}


def result(
    name: str,
    *,
    settings: dict,
    measured: str,
    tables: list[dict],
    headline: list[str],
    data: dict | None = None,
    notes: list[str] | None = None,
    figures: list[str] | None = None,
) -> dict:
    """One benchmark's record: what RESULTS.md renders, plus raw numbers under `data`."""
    return {
        "name": name,
        "title": TITLES.get(name, name),
        "settings": settings,
        "measured": measured,
        "tables": tables,
        "headline": headline,
        "notes": notes or [],
        "figures": figures or [],
        "data": data or {},
    }


def write_json(path: Path, obj: dict) -> None:
    """Atomically (ray_xray.io): never half a result."""
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def load_results(results_dir: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            obj = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("name"):
            out[obj["name"]] = obj
    return out


def fmt(v: Any) -> str:
    """Table cell: numbers to a sensible precision, None as a dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_table(t: dict) -> list[str]:
    lines = []
    if t.get("title"):
        lines += [f"*{t['title']}*", ""]
    cols = t["columns"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
    for row in t["rows"]:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return lines + [""]


def render_markdown(results: dict[str, dict]) -> str:
    """RESULTS.md from every benchmark's JSON (sections in ORDER, then any others)."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks` (`make bench`; `make bench BENCH_ARGS=--smoke-test` for a "
        "fast look) from `benchmarks/results/*.json`; do not edit by hand. Speed claims are "
        "ratios of measurements taken side by side in the same run (interleaved, medians); the "
        "absolute figures describe only the machine named in each section. Check each "
        "section's load average: well above the CPU count before a benchmark means something "
        "else was running, and its numbers are noise.",
        "",
        "## Summary",
        "",
        "| benchmark | headline | mode | date |",
        "|---|---|---|---|",
    ]
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    for n in list(ORDER) + names[len([n for n in ORDER if n in results]) :]:
        if n not in results:
            lines.append(f"| {TITLES[n]} | not run yet (`python -m benchmarks --only {n}`) | | |")
            continue
        r = results[n]
        head = fmt(r["headline"][0]) if r.get("headline") else ""
        mode = "quick" if r.get("quick") else "full"
        date = (r.get("machine") or {}).get("date", "")[:10]
        lines.append(
            f"| [{r.get('title', n)}](#{_anchor(r.get('title', n))}) | {head} | {mode} | {date} |"
        )
    lines.append("")
    for n in names:
        lines += render_section(results[n])
    return "\n".join(lines).rstrip() + "\n"


def render_section(r: dict) -> list[str]:
    m = r.get("machine") or {}
    lines = [f"## {r.get('title', r['name'])}", ""]
    mode = "quick (indicative only)" if r.get("quick") else "full"
    lines.append(f"- command: `{r.get('command', '')}` ({mode} mode)")
    lines.append(f"- machine: {machine_line(m)}")
    dur = r.get("duration_s")
    took = f" (took {dur / 60:.1f} min)" if isinstance(dur, int | float) else ""
    lines.append(f"- date: {m.get('date', '')}{took}")
    if m.get("load_avg_1min") is not None:
        before = r.get("load_before")
        load = (
            f"{before:g} before, {m['load_avg_1min']:g} after"
            if before is not None
            else f"{m['load_avg_1min']:g}"
        )
        nice = f"; ran at niceness {m['niceness']}" if m.get("niceness") else ""
        lines.append(f"- load average (1 min): {load}{nice}")
    if r.get("settings"):
        shown = ", ".join(f"{k}={_setting(v)}" for k, v in r["settings"].items())
        lines.append(f"- settings: {shown}")
    lines.append("")
    if r.get("measured"):
        lines += [r["measured"], ""]
    for t in r.get("tables", []):
        lines += render_table(t)
    for fig in r.get("figures", []):
        lines += [f"![{r['name']}]({fig})", ""]
    if r.get("headline"):
        lines.append("**Headline:**")
        lines.append("")
        lines += [f"- {h}" for h in r["headline"]]
        lines.append("")
    if r.get("notes"):
        lines += [f"> {n}" if i == 0 else f">\n> {n}" for i, n in enumerate(r["notes"])]
        lines.append("")
    return lines


def _setting(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return keep.replace(" ", "-")


def save(res: dict, out_dir: Path) -> Path:
    """results/<name>.json, then RESULTS.md rebuilt from every JSON in results/."""
    out_dir = Path(out_dir)
    path = out_dir / "results" / f"{res['name']}.json"
    write_json(path, res)
    write_markdown(out_dir)
    return path


def write_markdown(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    md = render_markdown(load_results(out_dir / "results"))
    return write_atomic(out_dir / "RESULTS.md", md)


# ------------------------------------------------------------------ Ray


STAMP_ENV = "RAY_XRAY_BENCH_STAMPS"


def _report_stamper():
    """Built in the driver and shipped by value (cloudpickle) as Ray's worker setup hook, so
    workers need not import `benchmarks`. In every Ray worker it wraps `ray.train.report`:
    each report gets `bench_t` (wall clock at the call), and a line with the call's entry and
    exit times goes to the file named by $RAY_XRAY_BENCH_STAMPS. Only the training function
    calls ray.train.report, so only it is timed; nothing else changes."""

    def install() -> None:
        import json as _json
        import os as _os
        import time as _time

        import ray.train as _train

        from ray_xray.ray_env import pin_ray_address

        pin_ray_address()  # see its docstring and ray_session

        original = _train.report
        if getattr(original, "_bench_stamped", False):
            return

        def report(metrics, *args, **kwargs):
            t_in = _time.time()
            out = original({**metrics, "bench_t": t_in}, *args, **kwargs)
            path = _os.environ.get("RAY_XRAY_BENCH_STAMPS")
            if path:
                rec = {
                    "pid": _os.getpid(),
                    "epoch": metrics.get("epoch"),
                    "epoch_s": metrics.get("epoch_s"),
                    "t_in": t_in,
                    "t_out": _time.time(),
                }
                with open(path, "a") as fh:
                    fh.write(_json.dumps(rec) + "\n")
            return out

        report._bench_stamped = True
        _train.report = report

    return install


@contextlib.contextmanager
def ray_session(stamps: str | Path | None = None, env: dict | None = None):
    """A local Ray for one benchmark, with report time stamps; shut down afterwards. `env`:
    more environment variables for every worker (e.g. $RAY_XRAY_TRACE).

    Same runtime env as `ray_xray.train.run.init_ray` (so trials behave as in a real sweep)
    plus the stamping hook. Refuses to run inside an already-initialised Ray.

    RAY_ADDRESS is pinned to this instance in the driver and every worker: with a second local
    Ray on the machine a sweep can hang otherwise (`ray_xray.ray_env.pin_ray_address`).
    """
    import logging

    import ray

    from ray_xray.ray_env import pin_ray_address, runtime_env

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    # The stamper's hook pins the address too.
    extra = {**(env or {}), **({STAMP_ENV: str(stamps)} if stamps else {})}
    # Without stamps, the project's own hook: the stamper imports ray.train in every Ray
    # process (Tune's queue, Train's helper actors), which added ~0.7 s of CPU to each.
    env = runtime_env(extra, hook=_report_stamper() if stamps else pin_ray_address)
    saved = os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=threads(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env=env,
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def read_stamps(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


@contextlib.contextmanager
def timed_tuner_fit(marks: dict):
    """Record when Tuner.fit starts and returns (the sweep service calls it once)."""
    from ray import tune

    original = tune.Tuner.fit

    def fit(self, *args, **kwargs):
        marks["fit_start"] = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            marks["fit_end"] = time.time()

    tune.Tuner.fit = fit
    try:
        yield marks
    finally:
        tune.Tuner.fit = original


def runs_dir(name: str) -> Path:
    """Scratch storage for a benchmark's Ray runs (under runs/, which git ignores)."""
    d = REPO / "runs" / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True, exist_ok=True)
    return d
