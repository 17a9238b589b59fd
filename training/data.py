"""Pretraining data: a torch Dataset over one split of an HDF5 cache, and the DataLoader around it.

Reads are per sample (one HDF5 chunk each) in DataLoader workers; the cache reader opens its file lazily
per process, so workers never share an h5py handle. Augmentation happens later, batched, on the
training device (``training.augment``), so the workers only read.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    @property
    def preloaded(self) -> bool:
        """The whole split is in memory (``preload=True``)."""
        return self._data is not None

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


def batch_is_finite(x: torch.Tensor) -> bool:
    """Cheap test that a batch holds no NaN or inf: its sum is finite (one pass; the sum of finite
    coordinates cannot overflow float32). Use ``nonfinite_rows`` to find the samples when it is not."""
    return bool(torch.isfinite(x.sum()))


def nonfinite_rows(x: torch.Tensor, chunk: int = 1024) -> list[int]:
    """Indices along the first axis of the samples holding NaN or inf (in chunks of ``chunk`` samples,
    each first summed: a finite sum clears the chunk)."""
    rows: list[int] = []
    for lo in range(0, len(x), chunk):
        part = x[lo:lo + chunk].reshape(min(chunk, len(x) - lo), -1)  # (B, C·T·V·M)
        if not batch_is_finite(part):
            bad = ~torch.isfinite(part).all(dim=1)
            rows += [lo + int(i) for i in torch.nonzero(bad).flatten()]
    return rows


def nonfinite_error(path: Path, split: CacheSplit, indices: Sequence[int]) -> CrossclrError:
    """The error for training samples ``indices`` (of ``split``) that hold NaN or inf: the cache is at
    fault, not the learning rate."""
    names = split.names
    first = int(indices[0])
    more = f" and {len(indices) - 1} more" if len(indices) > 1 else ""
    return CrossclrError(f"{path}: sample {names[first]!r} (split {split.name!r}, index {first}){more} holds "
                         "NaN or inf coordinates; expected finite values (prepare the cache again from the "
                         "source data)")


def check_batch(x: torch.Tensor, data: TrainData, indices: Sequence[int]) -> None:
    """Raise ``nonfinite_error`` when the batch ``x`` of the samples ``indices`` holds NaN or inf."""
    if batch_is_finite(x):
        return
    rows = nonfinite_rows(x)
    if rows:
        raise nonfinite_error(data.path, data.dataset.split, [int(indices[r]) for r in rows])


def data_identity(data: TrainData) -> dict[str, Any]:
    """What a checkpoint records of its training data, for ``--resume`` to check: the cache's path, the
    split, its sample count and a digest of its sample names."""
    split = data.dataset.split
    digest = hashlib.sha1("\n".join(split.names).encode("utf-8")).hexdigest()
    return {"path": str(data.path.resolve()), "split": split.name, "samples": len(split),
            "names_sha1": digest}


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
        if dataset.preloaded:  # in memory already: one pass over it costs little
            bad = nonfinite_rows(dataset._data)
            if bad:
                raise nonfinite_error(path, s, bad)
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
    if dataset.preloaded:
        num_workers = 0  # preloaded: indexing memory is faster than IPC
    kwargs: dict = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=drop_last, **kwargs)
    return loader, sampler
