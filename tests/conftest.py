"""Shared fixtures: the real data folder (never copied into the project) and a tiny synthetic cache."""

from __future__ import annotations

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
