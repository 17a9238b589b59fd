"""The one preamble of every evaluation protocol (linear, kNN, fine-tuning, t-SNE).

``open_protocol`` loads the encoders of a checkpoint once (a pretrain checkpoint or a ``linear.pt``, with its
heads), opens the cache, checks that the two fit (same skeleton layout; with ``need_classes`` the same
classes) and resolves the named splits. The returned ``ProtocolContext`` is a context manager that closes the
cache on exit; what the protocols need after that (encoders, heads, layout, class names, the cache's
``info``) stays on it.

    with open_protocol(data, checkpoint, streams=None, splits=("train", "val")) as ctx:
        feats = ctx.encode("train")          # {view: (N, hidden)}
        y = ctx.labels("train")              # (N,) int64
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from training.protocols.io import check_compatible, default_device, encode_split, load_any_encoders


@dataclass
class ProtocolContext(AbstractContextManager):
    """Encoders, heads and metadata of one checkpoint beside the open cache they were checked against."""

    data: Path  # the cache file
    checkpoint: Path  # the checkpoint file
    device: torch.device
    encoders: dict[str, nn.Module]  # {view: encoder in eval mode on ``device``}, in the requested order
    heads: dict[str, nn.Linear] | None  # a linear checkpoint's heads, None for a pretrain checkpoint
    meta: dict[str, Any]  # the checkpoint's other fields (config, layout, fusion weights, ...)
    layout: Layout  # the cache's layout (the checkpoint's, checked)
    cache: Any  # crossclr_infer.cache.Cache, open until ``close``
    splits: dict[str, Any]  # {name: CacheSplit} of the splits asked for
    class_names: list[str]
    info: dict[str, Any]  # frames, num_person, preprocess, benchmark: what a linear.pt records of the cache

    @property
    def streams(self) -> list[str]:
        return list(self.encoders)

    @property
    def num_class(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Any:
        """A split resolved at open (CrossclrError naming the split when it was not asked for)."""
        try:
            return self.splits[name]
        except KeyError:
            raise CrossclrError(f"protocol: split {name!r} was not opened; opened {list(self.splits)}"
                                ) from None

    def labels(self, name: str) -> Tensor:
        """(N,) int64 labels of a split, on CPU."""
        return torch.as_tensor(np.asarray(self.split(name).labels), dtype=torch.long)

    def encode(self, name: str, *, batch_size: int = 256, desc: str | None = None) -> dict[str, Tensor]:
        """Frozen features of a split: {view: (N, hidden) float32 on CPU} (``io.encode_split``)."""
        return encode_split(self.encoders, self.split(name), self.layout, batch_size=batch_size,
                            device=self.device, desc=desc or f"encode {name}")

    def header(self, protocol: str) -> dict[str, Any]:
        """The first fields of every protocol report."""
        return {"protocol": protocol, "data": str(self.data), "checkpoint": str(self.checkpoint)}

    def close(self) -> None:
        self.cache.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def cache_info(cache: Any) -> dict[str, Any]:
    """What a checkpoint records about the cache its heads were trained on."""
    return {
        "frames": cache.frames,
        "num_person": cache.num_person,
        "preprocess": dict(cache.preprocess),
        "benchmark": cache.benchmark,
    }


def open_protocol(
    data: str | Path,
    checkpoint: str | Path,
    *,
    streams: Sequence[str] | None = None,
    splits: Sequence[str] = ("train", "val"),
    device: str | torch.device | None = None,
    need_classes: bool | None = False,
) -> ProtocolContext:
    """Load the checkpoint's encoders (once), open and check the cache, resolve ``splits``.

    ``need_classes``: the cache must have the checkpoint's classes (its heads are used); None means "when the
    checkpoint has heads". Errors are one CrossclrError line naming the file; the cache is closed on error.
    """
    from crossclr_infer.cache import open_cache

    dev = device if isinstance(device, torch.device) else default_device(device)
    encoders, heads, meta = load_any_encoders(checkpoint, streams, dev)
    cache = open_cache(data)
    try:
        need = heads is not None if need_classes is None else need_classes
        layout = check_compatible(meta, cache, checkpoint, data, need_classes=need)
        resolved = {name: cache.split(name) for name in splits}
        return ProtocolContext(
            data=Path(data), checkpoint=Path(checkpoint), device=dev, encoders=encoders, heads=heads,
            meta=meta, layout=layout, cache=cache, splits=resolved, class_names=list(cache.class_names),
            info=cache_info(cache),
        )
    except BaseException:
        cache.close()
        raise
