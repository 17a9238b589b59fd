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

    path: Path  # the cache, or for a pooled run the comma list of its caches
    cache: Cache  # a ``PooledCache`` for a pooled run
    dataset: CacheDataset  # a ``PooledDataset`` for a pooled run
    layout: Layout
    sources: tuple[Path, ...] = ()  # a pooled run's caches, in order (empty: one cache)


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
    if not rows:
        return
    ds = data.dataset
    if isinstance(ds, PooledDataset):  # name the source cache and its own sample index
        where = [ds.locate(int(indices[r])) for r in rows]
        k = where[0][0]
        raise nonfinite_error(ds.paths[k], ds.parts[k].split, [i for src, i in where if src == k])
    raise nonfinite_error(data.path, ds.split, [int(indices[r]) for r in rows])


def data_identity(data: TrainData) -> dict[str, Any]:
    """What a checkpoint records of its training data, for ``--resume`` to check: the cache's path, the
    split, its sample count and a digest of its sample names."""
    if isinstance(data.dataset, PooledDataset):
        return pooled_identity(data.dataset)
    return _split_identity(data.path, data.dataset.split)


def _split_identity(path: Path, split: CacheSplit) -> dict[str, Any]:
    digest = hashlib.sha1("\n".join(split.names).encode("utf-8")).hexdigest()
    return {"path": str(Path(path).resolve()), "split": split.name, "samples": len(split),
            "names_sha1": digest}


def _same_topology(a: Layout, b: Layout) -> bool:
    return a.num_joints == b.num_joints and tuple(a.parents) == tuple(b.parents) and a.center == b.center


def open_train_data(path: str | Path | Sequence[str | Path], *, split: str = "train",
                    layout: str | Layout | None = None, batch_size: int = 1, world_size: int = 1,
                    drop_last: bool = True, preload: bool = False, in_channels: int = 3) -> TrainData:
    """Open ``path`` and check it fits the run; every problem is a one-line ``CrossclrError``.

    ``path``: one cache, or several (a list, or ``"a.h5,b.h5"``) of the same layout pooled into one
    training set (``open_pooled_data``). ``layout``: the layout the model's graph is built for (a name, a
    TOML path, a ``Layout``) or None for the cache's own. A cache whose skeleton differs (joint count,
    parents, center) is refused.
    """
    sources = data_sources(path)
    if len(sources) > 1:
        return open_pooled_data(sources, split=split, layout=layout, batch_size=batch_size,
                                world_size=world_size, drop_last=drop_last, preload=preload,
                                in_channels=in_channels)
    path = sources[0]
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


# ---------------------------------------------------------------------------------------------- pooled caches


def data_sources(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The caches of ``--data``: one path, a list, or a comma list ``"a.h5,b.h5"`` (a path that exists is
    one cache even with a comma in its name). A cache named twice is refused."""
    if isinstance(path, (str, Path)):
        text = str(path)
        items = [text] if Path(text).exists() or "," not in text else text.split(",")
    else:
        items = [str(p) for p in path]
    paths = [Path(p.strip()) for p in items if p.strip()]
    if not paths:
        raise CrossclrError(f"--data {str(path)!r}: no cache named; expected a cache or a comma list "
                            "a.h5,b.h5 of caches of one layout")
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise CrossclrError(f"--data: {p} is named twice; expected each cache once in the list")
        seen.add(p.resolve())
    return paths


class PooledCache:
    """Several caches of one layout seen as one by the trainer: the shared layout, frames, bodies, channels
    and preprocessing, the union of the class names (a name in several sources is one class), and
    ``close`` closing every source."""

    def __init__(self, caches: Sequence[Cache]) -> None:
        self.caches = list(caches)
        first = self.caches[0]
        self.layout, self.frames, self.num_person = first.layout, first.frames, first.num_person
        self.num_channels, self.preprocess = first.num_channels, dict(first.preprocess)
        self.class_names: list[str] = list(dict.fromkeys(n for c in self.caches for n in c.class_names))
        self.num_class = len(self.class_names)
        self.path = Path(",".join(str(c.path) for c in self.caches))

    def label_map(self, k: int) -> np.ndarray:
        """Source ``k``'s label -> the pooled label (its class name's index in ``class_names``)."""
        return np.array([self.class_names.index(n) for n in self.caches[k].class_names], np.int64)

    def close(self) -> None:
        for c in self.caches:
            c.close()


class PooledDataset(Dataset):
    """The training splits of several caches one after another: ``[i]`` as ``CacheDataset``, labels mapped
    to the pooled class list; ``names`` are ``"<cache stem>/<sample name>"``."""

    def __init__(self, parts: Sequence[CacheDataset], paths: Sequence[Path],
                 label_maps: Sequence[np.ndarray]) -> None:
        self.parts, self.paths = list(parts), list(paths)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # part k: [offsets[k], offsets[k+1])
        self.labels = torch.cat([torch.from_numpy(m[p.labels.numpy()]) for p, m in
                                 zip(self.parts, label_maps, strict=True)])
        self._data = (torch.cat([p._data for p in self.parts]) if all(p.preloaded for p in self.parts)
                      else None)
        if self._data is not None:
            for p in self.parts:  # one copy in memory: the pooled one
                p._data = None

    @property
    def preloaded(self) -> bool:
        return self._data is not None

    @property
    def names(self) -> list[str]:
        return [f"{path.stem}/{n}" for part, path in zip(self.parts, self.paths, strict=True)
                for n in part.split.names]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Pooled index -> (source, index in that source's split)."""
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return k, int(i - self.offsets[k])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data is not None:
            return self._data[i], self.labels[i]
        k, local = self.locate(i)
        return self.parts[k][local][0], self.labels[i]


def pooled_identity(ds: PooledDataset) -> dict[str, Any]:
    """A pooled run's data identity: the digest over every source's sample names, and each source's own
    identity (path, split, sample count, names digest) under ``sources``."""
    sources = [_split_identity(p, part.split) for p, part in zip(ds.paths, ds.parts, strict=True)]
    digest = hashlib.sha1("\n".join(s["names_sha1"] for s in sources).encode("utf-8")).hexdigest()
    return {"path": ",".join(s["path"] for s in sources), "split": ds.parts[0].split.name,
            "samples": len(ds), "names_sha1": digest, "sources": sources}


def _pool_mismatch(first: Cache, other: Cache) -> str | None:
    """Why ``other`` cannot be pooled with ``first`` (None: it can)."""
    if other.layout != first.layout:
        return (f"layout {other.layout.name!r} ({other.layout.num_joints} joints) differs from "
                f"{first.path}'s {first.layout.name!r} ({first.layout.num_joints} joints); expected caches "
                "of one layout (map a cache with `crossclr prepare arrays --to-layout`)")
    for what in ("frames", "num_person", "num_channels"):
        if getattr(other, what) != getattr(first, what):
            return (f"{what} {getattr(other, what)} differs from {first.path}'s {getattr(first, what)}; "
                    f"expected caches prepared with the same {what}")
    if other.preprocess.get("mode") != first.preprocess.get("mode"):
        return (f"preprocessing {other.preprocess.get('mode')!r} differs from {first.path}'s "
                f"{first.preprocess.get('mode')!r}; expected caches prepared the same way")
    return None


def open_pooled_data(paths: Sequence[Path], *, split: str, layout: str | Layout | None, batch_size: int,
                     world_size: int, drop_last: bool, preload: bool, in_channels: int) -> TrainData:
    """Several caches of one layout (same frames, bodies, channels, preprocessing) as one training set;
    each is checked as a single cache is, then against the first (one line naming the cache)."""
    opened: list[TrainData] = []
    try:
        for p in paths:
            one = open_train_data(p, split=split, layout=layout, batch_size=1, drop_last=False,
                                  preload=preload, in_channels=in_channels)
            opened.append(one)
            problem = _pool_mismatch(opened[0].cache, one.cache)
            if problem is not None:
                raise CrossclrError(f"--data {p}: {problem}")
        cache = PooledCache([d.cache for d in opened])
        dataset = PooledDataset([d.dataset for d in opened], list(paths),
                                [cache.label_map(k) for k in range(len(opened))])
        per_rank = len(dataset) // world_size
        if drop_last and per_rank < batch_size:
            raise CrossclrError(f"--data {cache.path}: {len(dataset)} pooled samples ({per_rank} per "
                                f"process), fewer than one batch of {batch_size}; expected at least a full "
                                "batch (lower --batch-size)")
    except BaseException:
        for d in opened:
            d.cache.close()
        raise
    log.info("pooled %d caches: %s samples", len(paths), [len(d.dataset) for d in opened])
    return TrainData(path=cache.path, cache=cache, dataset=dataset, layout=cache.layout,  # type: ignore[arg-type]
                     sources=tuple(paths))


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
