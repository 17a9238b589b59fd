"""What every official-checkpoint importer shares: reading a stranger's file safely, writing the result."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from crossclr_infer.errors import CrossclrError
from training.checkpoint import atomic_torch_save, torch_load_safe

log = logging.getLogger(__name__)


EXPECTED = "expected an official CrosSCLR/SkeletonCLR or MAMP .pt/.pth file as its release links give it"

# what a file that is no torch checkpoint usually is, by its first bytes, and what to do
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer, not the weights: fetch the file itself (git lfs pull)"),
    (b"<", "an HTML or XML page (a download link that returned a web page?)"),
    (b"\x1f\x8b", "gzip-compressed (a .tar.gz?): extract the .pt/.pth inside first"),
    (b"\x89HDF", "an HDF5 file (a data cache?), not a checkpoint"),
    (b"{", "JSON text, not a checkpoint"),
)


def check_torch_file(path: Path) -> None:
    """Refuse, in words, a file that is neither a zip archive (``torch.save`` since 1.6) nor a pickle (older
    ``.pt``/``.pth``): torch's own error for it is the bare number of its first byte, e.g. "(105)"."""
    if not path.is_file():
        return  # torch_load_safe says "no such file"
    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return
    what = next((text for sig, text in SIGNATURES if head.startswith(sig)), None)
    if what is None:
        what = (f"neither a zip archive (torch.save since 1.6) nor a pickle (older torch); it starts with "
                f"{head[:8]!r}" if head else "empty")
    raise CrossclrError(f"{path}: not a torch checkpoint: {what}; {EXPECTED}")


def read_official(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official file (``torch.load(weights_only=True)``): a ``state_dict``/``model``
    wrapper is unwrapped and ``module.`` prefixes removed; this project's own checkpoints are refused."""
    check_torch_file(path)
    try:
        obj = torch_load_safe(path, missing="no such file",
                              unreadable="not a readable torch state dict ({reason}); expected an official "
                                         "CrosSCLR/SkeletonCLR .pt file")
    except CrossclrError as e:
        # pickle's error on an unknown opcode byte: "(105)" or "(Unsupported operand 105)"
        opcode = re.search(r"\((?:Unsupported operand )?(\d{1,3})\); expected", str(e))
        if opcode is None:
            raise
        raise CrossclrError(f"{path}: damaged or not a torch file: its pickle data holds byte "
                            f"{int(opcode.group(1))} where an instruction should be (a truncated or altered "
                            f"download?); {EXPECTED}") from None
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
