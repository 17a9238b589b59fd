"""Shared fixtures: the real data folder (never copied into the project) and a tiny synthetic cache."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped with the reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (tests read ../shared/data, never a copy)")
    return p


@pytest.fixture(scope="session")
def ntu_samples() -> Path:
    return shared_path("ntu_skeleton_samples")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic NTU-layout cache (4 classes × 12 samples), shared by the whole session."""
    from crossclr_infer.synth import generate_synthetic

    out = tmp_path_factory.mktemp("synth") / "tiny.h5"
    generate_synthetic(out, classes=4, per_class=12, seed=0)
    return out


# A runtime-only install (`pip install crossclr[cpu,dev]`, no torch) must run the torch-free tests and skip
# the others with a reason instead of failing to import them: a module that imports torch, the training or
# the export package at its top level is replaced by one that reports itself skipped.
_TORCH_IMPORT = re.compile(r"^(import|from) (torch|training|export)\b", re.MULTILINE)
HAS_TORCH = importlib.util.find_spec("torch") is not None


class _NeedsTorch(pytest.Module):
    def collect(self):  # type: ignore[override]
        pytest.skip("torch is not installed (runtime-only install): the train extra runs these tests")


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if HAS_TORCH or not _TORCH_IMPORT.search(module_path.read_text(encoding="utf-8")):
        return None
    return _NeedsTorch.from_parent(parent, path=module_path)
