"""Export refuses what cannot work in one line before any work, writes folders with the user's umask,
removes stale temp folders of killed exports, and names the output (not its temp folder) in errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.fileio import HOST_TAG  # noqa: E402
from export.config import DYNAMO_MIN_OPSET, MAX_OPSET, MIN_OPSET, check_opset  # noqa: E402
from export.onnx_export import export_models  # noqa: E402
from tests.export.test_export import CLASSES, NTU, tiny_parts  # noqa: E402
from tests.helpers import cli_error  # noqa: E402


@pytest.fixture(scope="module")
def linear_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.protocols.io import save_linear

    encoders, heads, meta = tiny_parts("spatial", ("joint",))
    path = tmp_path_factory.mktemp("ckpt") / "linear.pt"
    save_linear(path, encoders, heads, fusion="separate", fusion_weights={"joint": 1.0}, class_names=CLASSES,
                layout=NTU, meta=meta, metrics={})
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("opset", [5, MIN_OPSET - 1, MAX_OPSET + 1])
def test_unsupported_opsets_are_refused_up_front(linear_ckpt: Path, tmp_path: Path, opset: int,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "models"
    err = cli_error(["export", "--checkpoint", str(linear_ckpt), "--out", str(out), "--opset", str(opset)],
                    capsys)
    assert err.startswith(f"error: --opset {opset}: outside the opsets")
    assert f"from {MIN_OPSET} to {MAX_OPSET}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_opset_range_and_the_dynamo_minimum() -> None:
    assert check_opset(MIN_OPSET, dynamo=False) == MIN_OPSET
    assert check_opset(17, dynamo=True) == DYNAMO_MIN_OPSET  # what the file will say it is
    assert check_opset(MAX_OPSET, dynamo=True) == MAX_OPSET
    with pytest.raises(CrossclrError, match=r"^--opset 12: .*Einsum needs 12 and per-channel int8 13"):
        check_opset(12, dynamo=True)


def test_the_minimum_opset_exports_einsum_graphs_and_int8(tiny_cache: Path, tmp_path: Path) -> None:
    encoders, heads, meta = tiny_parts("adaptive", ("joint",))  # Einsum in the graph
    res = export_models(encoders, heads, meta, tmp_path / "m", opset=MIN_OPSET, ensemble=False,
                        data=tiny_cache, quantize="int8", graph_form="einsum")
    assert set(res.files) == {"joint", "joint.int8"} and res.parity["joint"]["max_abs_diff_logits"] <= 1e-4


def test_exported_folder_follows_the_umask(tmp_path: Path) -> None:
    encoders, heads, meta = tiny_parts("spatial", ("joint",))
    old = os.umask(0o022)
    try:
        export_models(encoders, heads, meta, tmp_path / "m", ensemble=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m" / "joint.onnx").stat().st_mode) == 0o644


def test_stale_temp_folders_of_a_killed_export_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.{dead.pid}-{HOST_TAG}.k2j3h4l5.tmp"  # what kill -9 during an export leaves
    stale.mkdir()
    (stale / "joint.onnx").write_bytes(b"\0" * 4096)
    running = tmp_path / f".m.{os.getpid()}-{HOST_TAG}.a1b2c3d4.tmp"  # an export still running
    running.mkdir()
    other = tmp_path / f".n.{dead.pid}-{HOST_TAG}.k2j3h4l5.tmp"  # another output's: not this run's business
    other.mkdir()
    encoders, heads, meta = tiny_parts("spatial", ("joint",))
    export_models(encoders, heads, meta, tmp_path / "m", ensemble=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", running.name, other.name])


def test_errors_inside_the_export_name_the_output_folder(linear_ckpt: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import export.onnx_export as ox

    def broken(path: Path, props: dict) -> None:
        raise ValueError(f"{path}: model check failed")

    monkeypatch.setattr(ox, "set_metadata", broken)
    out = tmp_path / "models"
    err = cli_error(["export", "--checkpoint", str(linear_ckpt), "--out", str(out)], capsys)
    assert err == f"error: {out / 'joint.onnx'}: model check failed"
    assert list(tmp_path.iterdir()) == []
