"""img_size in the search: the spaces tune it, the sweep prepares each size once and a trial
reads its own size's arrays."""

from __future__ import annotations

import pytest

from ray_xray.config import TrainConfig
from ray_xray.data.dataset import shared_key
from ray_xray.spaces import load_space
from ray_xray.train import worker
from ray_xray.tune.sizes import searched_sizes

CPU_SPACES = ["all", "cnn", "cnn_lstm", "conv1d_lstm", "lstm", "resnet18", "resnet18_cbam", "vit"]


@pytest.mark.parametrize("name", [*CPU_SPACES, "alexnet"])
def test_cpu_spaces_search_the_image_size_and_keep_128_px_as_default(name):
    space = load_space(name)
    assert searched_sizes(space) == [128, 64, 96]
    assert space.resolve(space.default_config()).img_size == 128
    for size in (64, 96):  # every size trains with every model of the space
        for model in space.models:
            cfg = {**space.default_config(model), "img_size": size}
            assert space.resolve(cfg).img_size == size
    # a smoke test or --set pins it: one size, nothing extra to prepare
    assert searched_sizes(load_space(name, smoke=True)) in ([32], [64])
    assert searched_sizes(space.with_settings({"img_size": 64})) == [64]


def test_a_trial_reads_the_shared_arrays_of_its_own_size(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: {"ref": ref})
    small, large = TrainConfig(img_size=64), TrainConfig(img_size=128)
    pairs = [(shared_key(large), "REF128"), (shared_key(small), "REF64")]
    assert worker.shared_data(small, pairs) == {"ref": "REF64"}
    assert worker.shared_data(large, pairs) == {"ref": "REF128"}
    assert worker.shared_data(TrainConfig(img_size=96), pairs) is None  # falls back to the cache
