"""Build a synthetic sweep's report without Ray and screenshot it at 1400 px (headless Chromium).

    PYTHONPATH=. python docs/report/make_demo.py OUT_DIR [--shots docs/report]

Trains six tiny CNNs for a few epochs on synthetic:chest3 (32 px, CPU, a minute or two),
writes the sweep folder as ray_xray.tune leaves it (results.parquet, sweep.json, result.json
per trial, optuna.db), runs the ensemble step (which writes report.html) and, with --shots,
saves full-width screenshots of the report's sections. It is a demonstration of the page, not
a benchmark: the models are small and the sets are synthetic (900 train, 180 val, 180 test images).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import torch.nn.functional as F

from ray_xray import checkpoint
from ray_xray.config import TrainConfig
from ray_xray.data import load_data
from ray_xray.ensemble import run_ensemble
from ray_xray.inference import build_model
from ray_xray.metrics import summary

LIMIT, SIZE, EPOCHS = 0, 32, 8


def train(cfg: TrainConfig, data, seed: int, epochs: int) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(seed)
    model = build_model(cfg, len(data.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    norm = lambda a: (torch.as_tensor(a, dtype=torch.float32)[:, None] / 255 - data.mean) / data.std  # noqa: E731
    x, y = norm(data.images["train"]), torch.as_tensor(data.labels["train"])
    xv, yv = norm(data.images["val"]), data.labels["val"]
    log, t = [], 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(xv)
        prob = torch.softmax(logits, 1).numpy()
        t += 20.0
        row = {
            "epoch": epoch,
            "train_loss": total / len(x),
            "val_loss": float(F.cross_entropy(logits, torch.as_tensor(yv))),
            **summary(yv, prob, data.classes),
            "timestamp": 1.7e9 + 90 * seed + t,
            "time_total_s": t,
        }
        log.append(row)
    return model, log


def build(out: Path) -> Path:
    exp = out / "demo-sweep"
    shutil.rmtree(exp, ignore_errors=True)
    exp.mkdir(parents=True)
    dist = {
        "lr": optuna.distributions.FloatDistribution(1e-3, 2e-2, log=True),
        "model.width": optuna.distributions.CategoricalDistribution([4, 8, 16]),
    }
    study = optuna.create_study(
        study_name=exp.name, storage=f"sqlite:///{exp}/optuna.db", direction="maximize"
    )
    data = load_data("synthetic:chest3", SIZE, limit_per_split=LIMIT)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        lr, width = float(np.exp(rng.uniform(np.log(1e-3), np.log(2e-2)))), [4, 8, 16][i % 3]
        epochs = EPOCHS if i < 4 else 2  # two "ASHA-stopped" trials
        hp = {"width": width, "head_dims": [16], "pool_size": 2}
        cfg = TrainConfig(
            model="cnn", img_size=SIZE, model_kwargs=hp, limit_per_split=LIMIT, epochs=EPOCHS, lr=lr
        )
        model, log = train(cfg, data, i, epochs)
        tid = f"trial{i:03d}"
        ckpt = exp / tid / "train" / "checkpoint_000001"
        ckpt.mkdir(parents=True)
        rec = checkpoint.model_record(model, cfg, data.classes, data.mean, data.std, {})
        checkpoint.atomic_save({"best": rec}, ckpt / checkpoint.STATE_FILE)
        (exp / tid / "result.json").write_text("\n".join(json.dumps(r) for r in log) + "\n")
        best = max(r["val_macro_f1"] for r in log)
        rows.append(
            {
                "trial_id": tid,
                "status": "TERMINATED",
                "error": "",
                "model": "cnn",
                "epochs": epochs,
                "best_val_macro_f1": best,
                "checkpoint_path": str(ckpt),
                "trial_dir": str(exp / tid),
                "config/model": "cnn",
                "config/lr": lr,
                "config/model.width": width,
                "config/epochs": EPOCHS,
                "config/img_size": SIZE,
            }
        )
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "model.width": width},
                distributions=dist,
                value=log[-1]["val_macro_f1"],
            )
        )
        print(f"{tid}: lr {lr:.2e} width {width} best val macro-F1 {best:.3f}", flush=True)
    rows.append(
        {
            "trial_id": "trial006",
            "status": "ERROR",
            "model": "cnn",
            "epochs": 0,
            "error": "RuntimeError: CUDA out of memory (demo row)",
            "best_val_macro_f1": None,
            "checkpoint_path": None,
            "trial_dir": str(exp / "trial006"),
            "config/model": "cnn",
            "config/lr": 0.01,
            "config/model.width": 16,
            "config/epochs": EPOCHS,
            "config/img_size": SIZE,
        }
    )
    pd.DataFrame(rows).to_parquet(exp / "results.parquet")
    argv = [
        "--space",
        "cnn",
        "--data",
        "synthetic:chest3",
        "--trials",
        "12",
        "--budget-minutes",
        "3",
    ]
    (exp / "sweep.json").write_text(
        json.dumps(
            {
                "command": "python -m ray_xray.tune " + " ".join(argv),
                "options": {
                    "data": "synthetic:chest3",
                    "objective": ["val_macro_f1"],
                    "trials": 12,
                    "budget_minutes": 3.0,
                    "scheduler": "asha",
                    "searcher": "tpe",
                },
            }
        )
    )
    run_ensemble(exp, top_k=4, device="cpu")
    return exp / "ensemble" / "report.html"


def screenshots(report: Path, shots: Path) -> None:
    """Full-page PNG of the report at 1400 px wide (Chromium's own page screenshot)."""
    shots.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shots / 'report-1400px.png'}",
            "--window-size=1400,9000",
            report.resolve().as_uri(),
        ],
        check=True,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shots", default=None)
    args = ap.parse_args()
    page = build(Path(args.out))
    print(page)
    if args.shots:
        screenshots(page, Path(args.shots))
