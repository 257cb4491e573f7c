"""The saved-model runtime's one ensemble average (ray_xray/inference.py)."""

import numpy as np
import pytest
import torch

from ray_xray.inference import ensemble_proba, member_proba


def test_ensemble_proba_is_the_weighted_mean_of_the_members():
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.5, 0.5], [0.6, 0.4]])
    # weights 3:1 (any scale): row 0 = 0.75 * 0.9 + 0.25 * 0.5 = 0.8
    got = ensemble_proba([a, b], [3.0, 1.0])
    assert got == pytest.approx(np.array([[0.8, 0.2], [0.3, 0.7]]))
    assert got.dtype == np.float64 and np.allclose(got.sum(1), 1.0)
    # a member of weight 0 is left out: its NaNs cannot reach the answer
    assert ensemble_proba([a, np.full((2, 2), np.nan)], [1.0, 0.0]) == pytest.approx(a)
    with pytest.raises(ValueError, match="one weight per member"):
        ensemble_proba([a, b], [0.0, 0.0])
    with pytest.raises(ValueError, match="one weight per member"):
        ensemble_proba([a, b], [1.0])


def test_member_proba_is_the_temperature_scaled_softmax():
    logits = np.array([[2.0, 0.0, -1.0]])
    for t in (1.0, 2.5):
        want = np.exp(logits / t) / np.exp(logits / t).sum()
        assert member_proba(logits, t) == pytest.approx(want, rel=1e-12)
        assert member_proba(torch.tensor(logits, dtype=torch.float32), t) == pytest.approx(
            want, rel=1e-6
        )
