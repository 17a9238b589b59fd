"""Cases found by the hostile-user re-probe (benchmarks/probe_hostile.py, docs/reliability.md) in the
finished areas: each builds its bad input here and asserts exit status 1, one ``error:`` line naming the file
or option, and that nothing was written or overwritten (device nodes and FIFOs stay what they were)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import atomic_output, atomic_output_dir
from tests.helpers import run_cli, write_cache, write_pretrain

CATCH_ALL = "this is a bug or an input it does not expect"


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``folder``: its file type and, for regular files, its content."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), p.read_bytes() if stat.S_ISREG(st.st_mode)
                                           else b"")
    return out


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], named: str) -> str:
    """``crossclr ARGV`` exits 1 with one ``error:`` line naming ``named`` that is not the catch-all."""
    code, out, err = run_cli(argv, capsys)
    assert code == 1, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0], lines[0]
    assert CATCH_ALL not in lines[0], lines[0]
    return lines[0]


def char_device(path: Path) -> Path:
    """A character device node like /dev/full made at ``path`` (needs root or CAP_MKNOD, else skipped)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here ({e}); the FIFO tests cover the same rule")
    return path


# -- outputs that are special files: a rename would replace a device node by a regular file ------------------


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_atomic_output_refuses_a_special_file_and_leaves_it(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        char_device(target)
    before = snapshot(tmp_path)
    with pytest.raises(CrossclrError, match="special files are never replaced"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"x")
    with pytest.raises(CrossclrError, match="special files are never replaced"):
        with atomic_output_dir(target):
            pass
    assert snapshot(tmp_path) == before


def test_synth_out_a_device_node_keeps_the_device(tmp_path: Path, capsys) -> None:
    """Run as root, `synth --out /dev/full` once replaced the machine's /dev/full by a regular file."""
    dev = char_device(tmp_path / "full")
    before = snapshot(tmp_path)
    refused(["synth", "--out", str(dev), "--classes", "2", "--per-class", "2", "--frames", "4"], capsys,
            str(dev))
    assert stat.S_ISCHR(dev.lstat().st_mode)
    assert snapshot(tmp_path) == before


def test_synth_out_a_fifo_is_refused_unopened(tmp_path: Path, capsys) -> None:
    cache = write_cache(tmp_path / "c.h5")
    fifo = tmp_path / "s.h5"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    line = refused(["synth", "--out", str(fifo), "--classes", "2", "--per-class", "2", "--frames", "4"],
                   capsys, str(fifo))
    assert "FIFO" in line
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and cache.is_file()
    assert snapshot(tmp_path) == before


# -- prepare ntu --workers beyond the machine ----------------------------------------------------------------


def test_prepare_ntu_refuses_more_workers_than_the_machine_runs(tmp_path: Path, capsys) -> None:
    """``--workers 100000`` forked until the probe killed it after 45 s."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text("1\n0\n")
    before = snapshot(tmp_path)
    line = refused(["prepare", "ntu", str(raw), "--benchmark", "ntu60-xsub", "--out", str(tmp_path / "o.h5"),
                    "--workers", "100000", "--no-progress"], capsys, "--workers 100000")
    assert "usable cores" in line
    assert snapshot(tmp_path) == before


# -- non-finite rates of the torch commands ------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache and a random pretrain.pt beside it (folder returned)."""
    pytest.importorskip("torch", reason="the training commands need torch (extra 'train')")
    folder = tmp_path_factory.mktemp("toy")
    write_cache(folder / "c.h5")
    write_pretrain(folder / "pretrain.pt", folder / "c.h5")
    return folder


@pytest.mark.parametrize("argv, named", [
    (["linear", "--lr", "nan"], "--lr nan"),
    (["linear", "--lr", "0"], "--lr 0"),
    (["linear", "--momentum", "inf"], "--momentum inf"),
    (["knn", "-t", "nan"], "-t/--temperature nan"),
    (["knn", "-t", "0"], "-t/--temperature 0"),
])
def test_protocols_refuse_non_finite_rates_before_any_work(argv: list[str], named: str, toy: Path,
                                                           tmp_path: Path, capsys) -> None:
    cmd, *rest = argv
    args = [cmd, "--data", str(toy / "c.h5"), "--checkpoint", str(toy / "pretrain.pt"), *rest]
    if cmd == "linear":
        args += ["--out", str(tmp_path / "lin"), "--epochs", "1"]
    args += ["--json", str(tmp_path / "r.json")]
    before = snapshot(toy)
    refused(args, capsys, named)
    assert snapshot(toy) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, config, named", [
    (["--lr", "nan"], None, "lr = nan"),
    (["--lr", "-1"], None, "--lr"),
    ([], "lr = nan\n", "lr = nan"),
    ([], "x = " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
])
def test_train_refuses_a_non_finite_lr_or_a_deep_config_before_making_the_run(
        argv: list[str], config: str | None, named: str, toy: Path, tmp_path: Path, capsys) -> None:
    """``train --lr nan`` once made the run folder (config.json, metrics.jsonl) and failed at step 2; a deeply
    nested config TOML reached the entry point's catch-all."""
    extra = []
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        extra = ["--config", str(tmp_path / "c.toml")]
    else:
        extra = ["--config", "tiny"]
    before = snapshot(tmp_path)
    refused(["train", "--data", str(toy / "c.h5"), "--out", str(tmp_path / "run"), "--epochs", "1",
             "--batch-size", "4", "--streams", "joint", "--no-progress", *extra, *argv], capsys, named)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists()


# -- plot-metrics: refused before the PNG is written ---------------------------------------------------------


GOOD_ROW = '{"kind": "step", "epoch": 1, "step": 1, "lr": 0.1, "loss": 2.0}\n'


@pytest.mark.parametrize("text, extra, named", [
    ('{"kind": "step", "epoch": 1' + "0" * 400 + ', "step": 1, "lr": 0.1, "loss": 2.0}\n', [], "line 1"),
    ('{"kind": "step", "epoch": "one", "step": 1, "lr": 0.1, "loss": 2.0}\n', [], "'epoch'"),
    (GOOD_ROW, ["--rows", "-1"], "--rows"),
    (GOOD_ROW, ["--rows", "0"], "--rows"),
])
def test_plot_metrics_refuses_bad_rows_with_nothing_written(text: str, extra: list[str], named: str,
                                                            tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(text)
    before = snapshot(tmp_path)
    refused(["plot-metrics", str(metrics), "--out", str(tmp_path / "c.png"), *extra], capsys, named)
    assert snapshot(tmp_path) == before


def test_plot_metrics_names_the_file_of_binary_garbage(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(GOOD_ROW.encode() + b"\xd5oR\xff\x00\x1b]0;x\x07\n")
    before = snapshot(tmp_path)
    line = refused(["plot-metrics", str(metrics), "--out", str(tmp_path / "c.png")], capsys, str(metrics))
    assert "not UTF-8 text" in line
    assert snapshot(tmp_path) == before


# -- paths and numbers that named nothing --------------------------------------------------------------------


def test_an_empty_out_is_refused_not_renamed_onto_the_current_folder(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``synth --out ''`` once ended with ``[Errno 16] Device or resource busy: '.' -> '.'``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    before = snapshot(tmp_path)
    refused(["synth", "--out", "", "--classes", "2", "--per-class", "2", "--frames", "4"], capsys,
            "not a file or folder name")
    assert snapshot(tmp_path) == before
    with pytest.raises(CrossclrError, match="not a file or folder name"):
        with atomic_output(Path("")):
            pass


def test_a_cache_name_too_long_is_one_short_line(tmp_path: Path, capsys) -> None:
    """A 100,000-character cache name printed the whole name inside ``[Errno 36]``."""
    line = refused(["info", str(tmp_path / ("x" * 100_000))], capsys, "File name too long")
    assert len(line) < 500 and "[Errno" not in line


def test_synth_refuses_a_negative_seed_naming_the_option(tmp_path: Path, capsys) -> None:
    """numpy's own "expected non-negative integer" named no option."""
    refused(["synth", "--out", str(tmp_path / "s.h5"), "--seed", "-1"], capsys, "--seed")
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_a_huge_per_class_naming_the_option(tmp_path: Path, capsys) -> None:
    """``--per-class 2**63`` was refused with a wrapped-around count ("asked for 5534023222112865280")."""
    refused(["synth", "--out", str(tmp_path / "s.h5"), "--per-class", str(2**63)], capsys, "--per-class")
    assert list(tmp_path.iterdir()) == []
