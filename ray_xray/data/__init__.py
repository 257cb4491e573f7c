"""Data: sources (folder, manifest, synthetic), the Parquet cache, augmentation, audit."""

from .dataset import (
    DEDUPE,
    ImageDataset,
    PreparedData,
    absolute_spec,
    class_weights,
    load_data,
    load_for_config,
    load_table,
)
from .sources import SPLITS, DataError, Item, normalise_label, patient_id

__all__ = [
    "DEDUPE",
    "SPLITS",
    "absolute_spec",
    "DataError",
    "ImageDataset",
    "Item",
    "PreparedData",
    "class_weights",
    "load_data",
    "load_for_config",
    "load_table",
    "normalise_label",
    "patient_id",
]
