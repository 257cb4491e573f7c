"""ray_xray's Python API end to end, notebook style, on built-in synthetic chest X-rays.

    python docs/api_example.py [--out DIR]

Trains a small CNN for one epoch at 32 px (about a minute on 2 CPU cores, most of it Ray's
start-up; one epoch on 64 images leaves it near chance: this shows the calls, not a model), opens the saved model, and predicts from a numpy batch, float images and PNG files.
Each cell below works as-is in a notebook. CI runs this file (tests/test_package.py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import ray_xray
from ray_xray.data.synthetic import render

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=None, help="where the run goes (default: a temp folder)")
args = parser.parse_args()
out = Path(args.out or tempfile.mkdtemp(prefix="ray_xray_api_"))

# %% 1. Train one model (ray-xray train ...). Keyword arguments are TrainConfig fields;
# limit_per_split keeps 64 images per split so the epoch takes about a second.
report = ray_xray.fit(
    "cnn",
    "synthetic:chest3",
    out=out / "cnn",
    epochs=1,
    img_size=32,
    limit_per_split=64,
    model_kwargs={"width": 8, "head_dims": [64], "pool_size": 2},
)
print(f"test accuracy {report['test']['accuracy']:.3f}, macro-F1 {report['test']['macro_f1']:.3f}")

# %% 2. Open it: a run folder, best_model.pt, a sweep folder or an ensemble.pt all work.
clf = ray_xray.load(report["out"])
print(clf)

# %% 3. Predict from a numpy batch (N, H, W) uint8: any size, resized as in training.
labels = ["normal", "pneumonia", "tuberculosis", "normal"]
batch = np.stack([render(label, seed=10_000 + i, size=128) for i, label in enumerate(labels)])
prob = clf.predict(batch)  # (4, 3) float64, columns = clf.classes, rows sum to 1
assert prob.shape == (len(batch), len(clf.classes))
assert np.allclose(prob.sum(axis=1), 1.0)
for label, p in zip(labels, prob, strict=True):
    print(f"true {label:<13} predicted {clf.classes[p.argmax()]:<13} p = {np.round(p, 3)}")

# %% 4. Float images in [0, 1], torch tensors and file paths give the same answer.
png = out / "example.png"
Image.fromarray(batch[0]).save(png)
same = clf.predict([png, batch[0] / 255.0])
assert np.allclose(same, prob[[0, 0]], atol=1e-6)
print(f"{png.name} and the float copy: {np.round(same[0], 3)}")

# %% 5. A sweep is one call too (not run here: minutes, not seconds):
#   summary = ray_xray.sweep("resnet18", data="path/to/data", trials=20, budget_minutes=30)
#   best = ray_xray.load(summary["exp_dir"])     # its best_model.pt
print("done:", out)
