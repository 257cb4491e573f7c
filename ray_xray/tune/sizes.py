"""Image size in the search: a space may tune `img_size` (a categorical of sizes); the sweep
prepares each size's data once, in the driver, and every trial reads its size's arrays from
Ray's object store (`train/worker.shared_data`)."""

from __future__ import annotations

import sys

import ray

from ..data import load_for_config
from ..data.dataset import shared_key


def searched_sizes(space) -> list[int]:
    """Every `img_size` a trial of `space` (a loaded `SearchSpace`) can get: the choices of a
    tuned img_size (in any model's branch) and the fixed values, in first-seen order."""
    sizes: list[int] = []
    for model in space.models:
        spec = space.params_for(model).get("img_size")
        found = list(spec.choices) if spec is not None and spec.choices else []
        if "img_size" in space.fixed_for(model):
            found.append(space.fixed_for(model)["img_size"])
        sizes += [int(s) for s in found if int(s) not in sizes]
    return sizes


def shared_datasets(space, probe_cfg, data, cache: str | None) -> list[tuple]:
    """[(shared_key, ObjectRef)] for the probe config's `data` and every other searched size
    (each decoded once into the Parquet cache and put into the object store here)."""
    out = [(shared_key(probe_cfg), ray.put(data))]
    for size in searched_sizes(space):
        if size == probe_cfg.img_size:
            continue
        cfg = {**probe_cfg.to_dict(), "img_size": size}
        print(f"preparing the data at {size} px (img_size is searched)", file=sys.stderr)
        out.append((shared_key(cfg), ray.put(load_for_config(cfg, cache))))
    return out
