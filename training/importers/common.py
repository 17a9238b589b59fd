"""What every official-checkpoint importer shares: reading a stranger's file safely, writing the result."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from crossclr_infer.errors import CrossclrError
from training.checkpoint import atomic_torch_save, torch_load_safe

log = logging.getLogger(__name__)


def read_official(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official file (``torch.load(weights_only=True)``): a ``state_dict``/``model``
    wrapper is unwrapped and ``module.`` prefixes removed; this project's own checkpoints are refused."""
    obj = torch_load_safe(path, missing="no such file",
                          unreadable="not a readable torch state dict ({reason}); expected an official "
                                     "CrosSCLR/SkeletonCLR .pt file")
    if isinstance(obj, dict) and "format" in obj:
        raise CrossclrError(f"{path}: already a {obj['format']!r} checkpoint of this project; expected an "
                            "official one")
    for key in ("state_dict", "model"):  # tolerate a wrapped state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CrossclrError(f"{path}: expected a state dict of tensors (official CrosSCLR/SkeletonCLR), got "
                            f"{type(obj).__name__}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def save_imported(ckpt: dict[str, Any], out: Path, source: Path, notes: list[str]) -> Path:
    """Write a ``crossclr-pretrain-v1`` checkpoint made from ``source`` atomically, with its import notes."""
    ckpt["imported_from"] = str(source)
    ckpt["import_notes"] = list(notes)
    return atomic_torch_save(ckpt, out)
