"""Importers of official checkpoints: CrosSCLR/SkeletonCLR (``crossclr``) and MAMP (``mamp``).

``convert_official_file`` reads a stranger's file safely (``common.read_official``), picks the importer by
the tensors it holds, and writes this project's format atomically: ``crossclr-pretrain-v1`` for pretraining
checkpoints, ``crossclr-linear-v1`` for official linear-evaluation ones.
"""

from __future__ import annotations

from pathlib import Path

from crossclr_infer.layouts import get_layout
from training.importers.common import read_official
from training.importers.crossclr import convert_crossclr_file
from training.importers.mamp import convert_mamp_file, is_mamp_state


def convert_official_file(path: str | Path, out: str | Path, *, layout: str = "ntu-rgb+d", frames: int = 50,
                          num_person: int = 2, single_view: str = "joint") -> Path:
    """Convert the official checkpoint ``path`` to ``out`` (``layout``: the skeleton it was trained on;
    ``frames``: the clip length of CrosSCLR inputs, MAMP files fix their own; ``single_view``: the view of a
    one-encoder SkeletonCLR file). Everything is loaded strictly into this project's modules first."""
    path, out = Path(path), Path(out)
    lay = get_layout(layout)
    state = read_official(path)
    if is_mamp_state(state):
        return convert_mamp_file(path, out, state, lay, num_person)
    return convert_crossclr_file(path, out, state, lay, frames=frames, num_person=num_person,
                                 single_view=single_view)


__all__ = ["convert_official_file"]
