"""Pretraining data: a torch Dataset over one split of an HDF5 cache, and the DataLoader around it.

Reads are per sample (one HDF5 chunk each) in DataLoader workers; the cache reader opens its file lazily
per process, so workers never share an h5py handle. Augmentation happens later, batched, on the
training device (``training.augment``), so the workers only read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from crossclr_infer.cache import Cache, CacheSplit, open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout, get_layout

log = logging.getLogger(__name__)


class CacheDataset(Dataset):
    """``[i] -> (x (C, T, V, M) float32 tensor, label int64 tensor)`` from a ``CacheSplit``.

    ``preload=True`` reads the whole split once into memory (small caches; then use no workers).
    """

    def __init__(self, split: CacheSplit, *, preload: bool = False) -> None:
        self.split = split
        self.labels = torch.from_numpy(np.asarray(split.labels, np.int64))
        self._data: torch.Tensor | None = torch.from_numpy(split.read_all()) if preload else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data is not None:
            return self._data[i], self.labels[i]
        x, _ = self.split[i]
        return torch.from_numpy(x), self.labels[i]


@dataclass(frozen=True)
class TrainData:
    """The opened cache, its training split as a Dataset, and the checked layout."""

    path: Path
    cache: Cache
    dataset: CacheDataset
    layout: Layout


def _same_topology(a: Layout, b: Layout) -> bool:
    return a.num_joints == b.num_joints and tuple(a.parents) == tuple(b.parents) and a.center == b.center


def open_train_data(path: str | Path, *, split: str = "train", layout: str | Layout | None = None,
                    batch_size: int = 1, world_size: int = 1, drop_last: bool = True,
                    preload: bool = False, in_channels: int = 3) -> TrainData:
    """Open ``path`` and check it fits the run; every problem is a one-line ``CrossclrError``.

    ``layout``: the layout the model's graph is built for (a name, a TOML path, a ``Layout``) or None for
    the cache's own. A cache whose skeleton differs (joint count, parents, center) is refused.
    """
    path = Path(path)
    cache = open_cache(path)
    try:
        if layout is not None and layout != "":
            want = layout if isinstance(layout, Layout) else get_layout(layout)
            have = cache.layout
            if not _same_topology(want, have):
                raise CrossclrError(
                    f"{path}: cache layout {have.name!r} ({have.num_joints} joints) does not fit the chosen "
                    f"graph {want.name!r} ({want.num_joints} joints); expected a cache prepared with layout "
                    f"{want.name!r}, or leave the config's layout empty to use the cache's")
        if cache.num_channels != in_channels:
            raise CrossclrError(f"{path}: samples have {cache.num_channels} channels, expected {in_channels} "
                                "(x, y, z) for the encoder")
        s = cache.split(split)
        n = len(s)
        if n == 0:
            raise CrossclrError(f"{path}: split {split!r} is empty; expected training samples (prepare the "
                                "cache again or choose another split)")
        per_rank = n // world_size
        if drop_last and per_rank < batch_size:
            raise CrossclrError(f"{path}: split {split!r} has {n} samples ({per_rank} per process), fewer "
                                f"than one batch of {batch_size}; expected at least a full batch (lower "
                                "--batch-size)")
        dataset = CacheDataset(s, preload=preload)
    except BaseException:
        cache.close()
        raise
    return TrainData(path=path, cache=cache, dataset=dataset, layout=cache.layout)


def make_loader(dataset: CacheDataset, *, batch_size: int, seed: int, num_workers: int, device: torch.device,
                rank: int = 0, world_size: int = 1, drop_last: bool = True) -> tuple[DataLoader,
                                                                                      DistributedSampler]:
    """DataLoader with a (distributed) sampler whose order depends only on ``seed`` and the epoch.

    The sampler is a ``DistributedSampler`` in every case (one replica when not distributed), so the order
    of epoch ``e`` is reproducible after a resume (call ``sampler.set_epoch(e)`` before each epoch).
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=drop_last)
    if dataset._data is not None:
        num_workers = 0  # preloaded: indexing memory is faster than IPC
    kwargs: dict = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=drop_last, **kwargs)
    return loader, sampler
