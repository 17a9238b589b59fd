"""Helpers of the protocol tests (test_linear, test_finetune, test_protocol_context): one module-scoped cache
plus pretrain checkpoint, and the protocol commands run on it through the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import protocol_args, run_cli, write_cache, write_pretrain


def protocol_setup(folder: Path, streams: Sequence[str] | None = None, **cache: int) -> dict[str, Path]:
    """{"dir", "cache", "ckpt"}: a hand-made cache (``write_cache(**cache)``) and a random pretrain.pt of
    ``streams`` (default: the three official ones) beside it."""
    data = write_cache(folder / "c.h5", **cache)
    kw = {} if streams is None else {"streams": list(streams)}
    return {"dir": folder, "cache": data, "ckpt": write_pretrain(folder / "pretrain.pt", data, **kw)}


def run_protocol(capsys: pytest.CaptureFixture[str], command: str, setup: dict[str, Path], *rest: str,
                 checkpoint: Path | None = None) -> tuple[int, str, str]:
    """``crossclr COMMAND --data CACHE --checkpoint CKPT *REST`` on a ``protocol_setup``: (code, stdout,
    stderr)."""
    return run_cli(protocol_args(command, setup["cache"], checkpoint or setup["ckpt"], *rest), capsys)
