"""Data sources: where real images come from (docs/pipeline.md §1).

`build_data_source(cfg, split)` returns a `DataSource` for `data.source` gmm, digits or folder. Every source has
a `train` split and a `heldout` split; `sample(n, generator)` draws only from `generator`, so a checkpoint needs
no data position.
"""
from __future__ import annotations

from ..config import DataConfig
from .base import SPLITS, DataSource, DataSourceError, Split, TensorDataSource

__all__ = ["SPLITS", "DataSource", "DataSourceError", "Split", "TensorDataSource", "build_data_source"]


def build_data_source(cfg: DataConfig, split: Split = "train") -> DataSource:
    """The `split` of the data source `cfg` describes. Raises DataSourceError for a folder that cannot be used."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
    if cfg.source == "gmm":
        from .gmm import GmmDataSource

        return GmmDataSource(cfg.gmm, split)
    if cfg.source == "digits":
        from .digits import digits_split

        return digits_split(split)
    if cfg.source == "folder":
        from .folder import folder_split

        return folder_split(cfg.folder, split)
    if cfg.source == "prompts":
        raise DataSourceError("data.source", "data.source: prompts is a text-to-image source: it has prompts and "
                                             "latents (the latent cache), not an image data set of its own")
    raise DataSourceError("data.source", f"data.source: unknown source {cfg.source!r} (expected gmm, digits, folder "
                                         f"or prompts)")
