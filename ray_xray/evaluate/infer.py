"""Class probabilities of a model or an ensemble on uint8 images, through the training input path.

Each member sees its own input size and its own training normalisation (`DeviceFeed` with the
record's preprocess mean/std), in the record's precision, exactly as validation did.
"""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import preprocess
from ..train import engine as E
from .sources import EvalSet, Subject


@torch.no_grad()
def member_logits(
    record: dict, images: np.ndarray, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """float64 logits (N, K) of one model record on uint8 images (N, S, S), S its img_size."""
    model, feed, precision, _ = E.inference_setup(record, device)
    out = []
    for start in range(0, len(images), batch_size):
        x = feed(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
        with E.autocast(device, precision):
            out.append(model(x).float().cpu())
    k = len(record["classes"])
    return torch.cat(out).double().numpy() if out else np.zeros((0, k))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def probabilities(
    subject: Subject,
    data: EvalSet,
    device: torch.device,
    views: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, list]:
    """(float64 (N, K) probabilities of the model or ensemble, each member's own (N, K)).

    The ensemble's answer is the weighted mean of its members' softmax(logits / T), as
    `predict` computes it. `views` (img_size -> images) replaces `data.views` (stress test).
    """
    views = views if views is not None else data.views
    per_member, total = [], None
    for rec, w, t in zip(subject.members, subject.weights, subject.temperatures, strict=True):
        p = _softmax(member_logits(rec, views[preprocess(rec)["img_size"]], device) / t)
        per_member.append(p)
        total = p * w if total is None else total + p * w
    return total / total.sum(1, keepdims=True), per_member
