"""HDF5 cache: streaming writer (temp + rename), validating reader, per-sample reads, worker safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from crossclr_infer.cache import FORMAT_NAME, FORMAT_VERSION, CacheWriter, open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout, layout_from_toml_text

NTU = get_layout("ntu-rgb+d")
SHAPE = (3, 6, 25, 2)  # (C, T, V, M): small T keeps the files tiny
CLASSES = ["drink", "eat", "wave"]


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def _write(path: Path, xs: np.ndarray, *, block: int = 64, split_of=lambda i: "train" if i % 3 else "val",
           **kw) -> Path:
    args = {"layout": NTU, "class_names": CLASSES, "benchmark": "bench", "frames": SHAPE[1], "num_person": 2,
            "preprocess": {"mode": "official", "frames": SHAPE[1]}, "block": block, **kw}
    with CacheWriter(path, **args) as w:
        for i, x in enumerate(xs):
            w.add(split_of(i), x, i % 3, f"s{i:03d}", 10 + i)
    return path


def _expected(xs: np.ndarray, split: str) -> list[int]:
    return [i for i in range(len(xs)) if ("train" if i % 3 else "val") == split]


@pytest.mark.parametrize("block", [1, 4, 64])
def test_roundtrip_samples_labels_names_lengths(tmp_path: Path, block: int) -> None:
    xs = _samples(11)
    path = _write(tmp_path / "c.h5", xs, block=block)
    with open_cache(path) as c:
        assert c.splits == ["train", "val"]
        assert c.layout == NTU and c.class_names == CLASSES and c.num_class == 3
        assert (c.frames, c.num_person, c.num_channels, c.benchmark) == (6, 2, 3, "bench")
        assert c.preprocess == {"mode": "official", "frames": 6}
        assert c.sample_shape == SHAPE
        for split in ("train", "val"):
            idx = _expected(xs, split)
            s = c.split(split)
            assert len(s) == len(idx)
            for k, i in enumerate(idx):
                x, y = s[k]
                assert x.dtype == np.float32 and x.shape == SHAPE
                np.testing.assert_array_equal(x, xs[i])
                assert y == i % 3
            assert s.labels.dtype == np.int64
            np.testing.assert_array_equal(s.labels, [i % 3 for i in idx])
            assert s.names == [f"s{i:03d}" for i in idx]
            np.testing.assert_array_equal(s.lengths, [10 + i for i in idx])
            np.testing.assert_array_equal(s.read_all(), xs[idx])
            batches = list(s.iter_batches(batch_size=2))
            np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), xs[idx])
            np.testing.assert_array_equal(np.concatenate([lab for _, lab in batches]), s.labels)


def test_file_layout_chunks_dtypes_and_attrs(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.h5", _samples(7))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and int(f.attrs["format_version"]) == FORMAT_VERSION
        assert layout_from_toml_text(f.attrs["layout"]) == NTU
        assert json.loads(f.attrs["class_names"]) == CLASSES
        assert int(f.attrs["num_class"]) == 3 and int(f.attrs["frames"]) == 6
        d = f["train/data"]
        assert d.dtype == np.float32 and d.chunks == (1, *SHAPE) and d.maxshape[0] is None
        assert f["train/label"].dtype == np.int64
        assert f["train/name"].dtype.kind == "O"


def test_read_uses_per_sample_order_and_negative_index(tmp_path: Path) -> None:
    xs = _samples(9)
    with open_cache(_write(tmp_path / "c.h5", xs)) as c:
        s = c.split("train")
        idx = np.array(_expected(xs, "train"))
        order = [4, 0, 5, 0, 2]
        np.testing.assert_array_equal(s.read(order), xs[idx[order]])
        np.testing.assert_array_equal(s[-1][0], xs[idx[-1]])
        with pytest.raises(IndexError):
            s[len(s)]
        with pytest.raises(CrossclrError, match="no split 'test'; available: train, val"):
            c.split("test")


def test_split_reopens_after_the_cache_was_closed(tmp_path: Path) -> None:
    xs = _samples(6)
    c = open_cache(_write(tmp_path / "c.h5", xs))
    s = c.split("train")
    first = s[0][0]
    c.close()
    np.testing.assert_array_equal(s[0][0], first)
    c.close()


def _read_in_child(split, q) -> None:  # pragma: no cover - runs in a forked process
    q.put((split.read([0, 1]), list(split.labels)))


def test_split_is_picklable_and_reads_in_a_forked_worker(tmp_path: Path) -> None:
    xs = _samples(6)
    with open_cache(_write(tmp_path / "c.h5", xs)) as c:
        s = c.split("train")
        _ = s[0]  # the parent has an open handle before the fork
        clone = pickle.loads(pickle.dumps(s))
        np.testing.assert_array_equal(clone[1][0], s[1][0])
        if "fork" not in mp.get_all_start_methods():
            pytest.skip("no fork on this platform")
        q = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=_read_in_child, args=(s, q))
        p.start()
        data, labels = q.get(timeout=30)
        p.join(30)
        assert p.exitcode == 0
        np.testing.assert_array_equal(data, xs[_expected(xs, "train")[:2]])
        assert labels == list(s.labels)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_exception_removes_temp_and_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with CacheWriter(out, layout=NTU, class_names=CLASSES, benchmark="b", frames=6, num_person=2,
                         preprocess={}) as w:
            w.add("train", _samples(1)[0], 0, "a", 6)
            assert len(_leftovers(tmp_path)) == 1  # the temp file, in the same folder
            assert not out.exists()
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path: Path) -> None:
    out = _write(tmp_path / "c.h5", _samples(4))
    before = out.read_bytes()
    with pytest.raises(CrossclrError):
        _write(out, _samples(4, seed=1) * np.nan)
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == ["c.h5"]


def test_success_leaves_only_the_output(tmp_path: Path) -> None:
    _write(tmp_path / "c.h5", _samples(3))
    assert _leftovers(tmp_path) == ["c.h5"]


@pytest.mark.parametrize("data, label, match", [
    (np.zeros((3, 5, 25, 2), np.float32), 0,
     r"shape \(3, 5, 25, 2\), expected \(C, T, V, M\) = \(3, 6, 25, 2\)"),
    (np.zeros(SHAPE, np.float32), 3, "label 3, expected 0..2"),
    (np.full(SHAPE, np.inf, np.float32), 0, "NaN or infinite"),
])
def test_writer_rejects_bad_samples(tmp_path: Path, data: np.ndarray, label: int, match: str) -> None:
    out = tmp_path / "c.h5"
    with pytest.raises(CrossclrError, match=match):
        with CacheWriter(out, layout=NTU, class_names=CLASSES, benchmark="b", frames=6, num_person=2,
                         preprocess={}) as w:
            w.add("train", data, label, "x", 6)
    assert _leftovers(tmp_path) == []


def test_writer_without_samples_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CrossclrError, match="no samples"):
        with CacheWriter(tmp_path / "c.h5", layout=NTU, class_names=CLASSES, benchmark="b", frames=6,
                         num_person=2, preprocess={}):
            pass
    assert _leftovers(tmp_path) == []


# -- validation of foreign and damaged files --------------------------------------------------------------


def _damage(path: Path, edit) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _resize_val(f: h5py.File) -> None:
    del f["val/label"]
    f["val/label"] = np.zeros(1, np.int64)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__delitem__("num_class"), r"missing attributes \['num_class'\]"),
    (lambda f: f.attrs.__setitem__("format_version", 7), "format version 7, this crossclr reads version 1"),
    (lambda f: f.attrs.__setitem__("frames", 50),
     r"data has shape \(\d+, 3, 6, 25, 2\), expected .*\(3, 50, 25, 2\)"),
    (lambda f: f.attrs.__setitem__("class_names", "[1, 2]"), "class_names"),
    (lambda f: f.attrs.__setitem__("num_class", 2), "3 class names for num_class 2"),
    (lambda f: f.attrs.__setitem__("layout", "joints = 3"), "layout"),
    (_resize_val, r"split 'val' label has shape \(1,\)"),
    (lambda f: f["train"].__delitem__("name"), r"lacks datasets \['name'\]"),
])
def test_damaged_cache_is_named_and_explained(tmp_path: Path, edit, match: str) -> None:
    path = _damage(_write(tmp_path / "c.h5", _samples(6)), edit)
    with pytest.raises(CrossclrError, match=match) as e:
        open_cache(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_foreign_hdf5_and_non_hdf5(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CrossclrError, match="not a crossclr cache \\(no 'format' attribute\\)"):
        open_cache(foreign)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(CrossclrError, match="format 'something-else'"):
        open_cache(other)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(CrossclrError, match="not a readable HDF5 file"):
        open_cache(text)
    with pytest.raises(CrossclrError, match="no such cache file"):
        open_cache(tmp_path / "missing.h5")
    with pytest.raises(CrossclrError, match="is a folder"):
        open_cache(tmp_path)


@pytest.mark.parametrize("kind", ["text", "foreign", "truncated"])
def test_info_on_bad_files_exits_nonzero_with_one_line(tmp_path: Path, capsys, kind: str) -> None:
    import cli

    path = tmp_path / "bad.h5"
    if kind == "text":
        path.write_text("not hdf5")
    elif kind == "foreign":
        with h5py.File(path, "w") as f:
            f["x"] = 1
    else:
        good = _write(tmp_path / "good.h5", _samples(6))
        path.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(SystemExit) as e:
        cli.main(["info", str(path)])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "Traceback" not in err


def test_info_prints_layout_classes_and_splits(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    path = _write(tmp_path / "c.h5", _samples(9), split_of=lambda i: "train" if i < 6 else "val")
    result = CliRunner().invoke(crossclr, ["info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ntu-rgb+d (25 joints, tree root spine_shoulder" in out
    assert "centred on:  spine_shoulder (the center joint), per frame and body" in out
    assert "splits:      train 6, val 3" in out
    assert "(C, T, V, M) = (3, 6, 25, 2)" in out and '"mode": "official"' in out
    # labels i % 3: samples 0..5 (train) hold each class twice, 6..8 (val) once
    for name in CLASSES:
        line = next(ln for ln in out.splitlines() if ln.rstrip().endswith(name))
        assert line.split()[1:5] == ["train", "2", "val", "1"]


def test_keyboard_interrupt_removes_temp(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        with CacheWriter(out, layout=NTU, class_names=CLASSES, benchmark="b", frames=6, num_person=2,
                         preprocess={}) as w:
            w.add("train", _samples(1)[0], 0, "a", 6)
            raise KeyboardInterrupt
    assert _leftovers(tmp_path) == []


def test_process_killed_midway_leaves_nothing_at_the_output_path(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "killed.h5"
    code = ("import os, signal, numpy as np\n"
            "from crossclr_infer.cache import CacheWriter\n"
            "from crossclr_infer.layouts import get_layout\n"
            f"with CacheWriter({str(out)!r}, layout=get_layout('ntu-rgb+d'), class_names=['a'],\n"
            "                 benchmark='b', frames=6, num_person=2, preprocess={}, block=2) as w:\n"
            "    for i in range(5):\n"
            "        w.add('train', np.zeros((3, 6, 25, 2), np.float32), 0, str(i), 6)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode != 0
    assert not out.exists()  # only a hidden temp file (".killed.h5.*.tmp") may remain after SIGKILL
    assert all(p.name.startswith(".killed.h5.") and p.name.endswith(".tmp") for p in tmp_path.iterdir())
