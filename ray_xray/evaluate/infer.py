"""Class probabilities of a model or an ensemble on uint8 images, through the training input path.

Each member sees its own input size and its own training normalisation (`DeviceFeed` with the
record's preprocess mean/std), in the record's precision, exactly as validation did.
"""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import preprocess
from ..inference import autocast, ensemble_proba, inference_setup, member_proba
from .sources import EvalSet, Subject


@torch.no_grad()
def member_logits(
    record: dict, images: np.ndarray, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """float64 logits (N, K) of one model record on uint8 images (N, S, S), S its img_size."""
    model, feed, precision, _ = inference_setup(record, device)
    out = []
    for start in range(0, len(images), batch_size):
        x = feed(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
        with autocast(device, precision):
            out.append(model(x).float().cpu())
    k = len(record["classes"])
    return torch.cat(out).double().numpy() if out else np.zeros((0, k))


def probabilities(
    subject: Subject,
    data: EvalSet,
    device: torch.device,
    views: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, list]:
    """(float64 (N, K) probabilities of the model or ensemble, each member's own (N, K)).

    The ensemble's answer is `inference.ensemble_proba` of its members' softmax(logits / T),
    as `predict` computes it. `views` (img_size -> images) replaces `data.views` (stress test).
    """
    views = views if views is not None else data.views
    per_member = [
        member_proba(member_logits(rec, views[preprocess(rec)["img_size"]], device), t)
        for rec, t in zip(subject.members, subject.temperatures, strict=True)
    ]
    return ensemble_proba(per_member, subject.weights), per_member
