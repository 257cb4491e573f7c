"""Model table: ``python -m ray_xray.models [--models a,b] [--img-size N] [--batch-size N] [--json]``.

Times one optimiser-free training step (forward + backward) per image, fp32 and bf16 autocast,
so a search space can be sized to the CPU budget before launching trials.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from .registry import count_params, create_model, list_models
from .timm_models import timm_available

# The seeds' published sizes at 224x224 RGB, 3 classes: a drift here means the layout changed.
REFERENCE_PARAMS = {"lstm": 18_066_948, "vit": 19_411_971}


def _step_ms(model, x, y, bf16: bool, warmup: int = 2, steps: int = 3) -> float:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) * 1000 / (steps * x.shape[0])


def benchmark(
    name: str,
    img_size: int,
    batch_size: int,
    in_chans: int = 1,
    num_classes: int = 3,
    warmup: int = 2,
    steps: int = 3,
) -> dict:
    """One row of the `models` table: `name` built for `num_classes` classes at `img_size` px
    with `in_chans` channels (seeded, channels-last for conv models), its parameter count, and
    ms per image of a training step (forward + backward, no optimiser) on a random float32
    batch of `batch_size`, in fp32 and in bf16 autocast, each after `warmup` untimed steps and
    averaged over `steps`. A precision that fails gives None and its error's first line."""
    torch.manual_seed(0)
    model = create_model(name, num_classes, in_chans=in_chans, img_size=img_size)
    model.train()
    x = torch.randn(batch_size, in_chans, img_size, img_size)
    y = torch.randint(0, num_classes, (batch_size,))
    if model.is_conv:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    row = {"model": name, "params": count_params(model), "is_conv": bool(model.is_conv)}
    for key, bf16 in (("fp32_ms", False), ("bf16_ms", True)):
        try:
            row[key] = round(_step_ms(model, x, y, bf16, warmup, steps), 2)
        except RuntimeError as e:  # report, don't abort the whole table
            row[key] = None
            row[f"{key}_error"] = str(e).splitlines()[0]
    return row


def reference_checks(names: list[str]) -> list[dict]:
    """For each of `names` in REFERENCE_PARAMS: its parameter count at the seeds' size (224 px RGB,
    3 classes) against the published one ({"model", "params", "expected", "ok"})."""
    out = []
    for name in names:
        if name in REFERENCE_PARAMS:
            n = count_params(create_model(name, 3, in_chans=3, img_size=224))
            expected = REFERENCE_PARAMS[name]
            out.append({"model": name, "params": n, "expected": expected, "ok": n == expected})
    return out


def build_parser() -> argparse.ArgumentParser:
    """The `models` command's options: which models, the timed input's shape, steps, output."""
    from ..cli import HelpFormatter

    ap = argparse.ArgumentParser(
        prog="python -m ray_xray.models",
        formatter_class=HelpFormatter,
        description="List the registered models with parameter counts and CPU step times "
        "(forward+backward, ms per image, fp32 and bf16 autocast).",
    )
    ap.add_argument("--models", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--img-size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--batch-size", type=int, default=8, help="images per timed step")
    ap.add_argument("--in-chans", type=int, default=1, help="input channels (1 or 3)")
    ap.add_argument("--num-classes", type=int, default=3, help="output classes")
    # Two warm-up steps: the first step of a process pays oneDNN's kernel selection, the second
    # still paid it for some RNN/BN shapes here (5x slower than steady state).
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per precision")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The `models` command: time every asked model (`benchmark`) and print the table (or
    JSON), the precision `auto` picks here, and the reference parameter checks. Returns 0, or 1
    when a reference check fails; an unknown model name exits 2 through argparse."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # timm's models are listed only when the optional timm package is there to build them.
    default = [n for n in list_models() if not n.startswith("timm/") or timm_available()]
    names = args.models.split(",") if args.models else default
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(list_models())}")

    rows = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        rows.append(
            benchmark(
                name,
                args.img_size,
                args.batch_size,
                args.in_chans,
                args.num_classes,
                args.warmup,
                args.steps,
            )
        )
    checks = reference_checks(names)
    if args.json:
        config = {
            k: getattr(args, k) for k in ("img_size", "batch_size", "in_chans", "warmup", "steps")
        }
        config |= {"num_classes": args.num_classes, "threads": torch.get_num_threads()}
        print(json.dumps({"config": config, "models": rows, "reference_params": checks}, indent=2))
    else:
        print_table(args, rows, checks)
    return 0 if all(c["ok"] for c in checks) else 1


def print_table(args: argparse.Namespace, rows: list[dict], checks: list[dict]) -> None:
    """The human-readable table: one line per model (parameters, conv or not, ms per image
    fp32 and bf16, "error" where a precision failed), the precision `auto` picks on this CPU,
    and one line per reference check."""
    print(
        f"{args.img_size}x{args.img_size}x{args.in_chans}, {args.num_classes} classes, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads; ms per image (fwd+bwd)"
    )
    print(f"{'model':<15}{'params':>14}{'conv':>6}{'fp32 ms':>10}{'bf16 ms':>10}")
    for r in rows:
        fp32, bf16 = (
            f"{r[k]:.1f}" if r[k] is not None else "error" for k in ("fp32_ms", "bf16_ms")
        )
        conv = "yes" if r["is_conv"] else "no"
        print(f"{r['model']:<15}{r['params']:>14,}{conv:>6}{fp32:>10}{bf16:>10}")
    from ..device import choose_precision

    print(f"training on this CPU with --precision auto: {choose_precision('auto', 'cpu').line()}")
    for c in checks:
        verdict = "OK" if c["ok"] else "MISMATCH"
        print(
            f"check {c['model']} @224x224x3, 3 classes: {c['params']:,} params "
            f"(expected {c['expected']:,}) {verdict}"
        )


if __name__ == "__main__":
    sys.exit(main())
