"""Issue 20 (reliability, round two): hostile caches, layouts and special files. Every bad file is built here,
in tmp_path; each refusal is exit status 1 with one line naming the file and the object, nothing read from
outside the cache (a "secret" file's content never appears), nothing written or overwritten."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomli_w

from crossclr_infer.cache import (
    MAX_CHUNK_BYTES,
    MAX_OBJECTS,
    MAX_SAMPLES_PER_CHUNK,
    MAX_SAMPLES_PER_SPLIT,
    CacheWriter,
    open_cache,
)
from crossclr_infer.errors import CrossclrError, check_name, printable
from crossclr_infer.layouts import (
    BUILTIN_LAYOUTS,
    MAX_JOINTS,
    Layout,
    get_layout,
    layout_from_toml_text,
    layout_to_toml,
)
from crossclr_infer.skeleton import MAX_ABS_COORDINATE
from tests.helpers import run_cli, write_cache

SECRET = "TOPSECRET-4242"
NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` with its content (to prove nothing was written or overwritten)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_fifo()}


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``crossclr ARGV``: exit status 1, one line on stderr (returned), no escape character anywhere."""
    code, out, err = run_cli(argv, capsys)
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert SECRET not in out + err
    assert not any(c in out + err for c in "\x1b\x07\x9b\u202e"), repr(out + err)
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid cache (NTU layout, 4 classes, train 32 / val 16 samples)."""
    return write_cache(tmp_path_factory.mktemp("good") / "good.h5")


def hostile(good: Path, folder: Path, name: str, edit: Callable[[h5py.File], None]) -> Path:
    """A copy of ``good`` in ``folder`` changed by ``edit`` (given the file opened for writing)."""
    path = folder / name
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _secret_file(folder: Path) -> Path:
    secret = folder / "secret.txt"
    secret.write_text((SECRET + "\n") * 20)
    return secret


# -- 1. self-contained caches -----------------------------------------------------------------------------
def _external_storage(folder: Path) -> Callable[[h5py.File], None]:
    secret = _secret_file(folder)

    def edit(f: h5py.File) -> None:  # the sample names read from the secret file
        del f["val/name"]
        f["val"].create_dataset("name", shape=(16,), dtype="S15", external=[(str(secret), 0, 16 * 15)])
    return edit


def _external_link(folder: Path) -> Callable[[h5py.File], None]:
    other = write_cache(folder / "other.h5", seed=3)

    def edit(f: h5py.File) -> None:  # the val split supplied by another file
        del f["val"]
        f["val"] = h5py.ExternalLink(os.path.relpath(other, folder), "/val")
    return edit


def _soft_link(folder: Path) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f["val/label"]
        f["val/label"] = h5py.SoftLink("/train/length")
    return edit


def _virtual(folder: Path) -> Callable[[h5py.File], None]:
    other = write_cache(folder / "other.h5", seed=3)

    def edit(f: h5py.File) -> None:
        del f["val/label"]
        layout = h5py.VirtualLayout(shape=(16,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(other), "val/label", shape=(16,))
        f["val"].create_virtual_dataset("label", layout)
    return edit


SELF_CONTAINED = {
    "external storage": (_external_storage, "/val/name", "external files"),
    "external link": (_external_link, "/val", "external link"),
    "soft link": (_soft_link, "/val/label", "soft link"),
    "virtual dataset": (_virtual, "/val/label", "virtual dataset"),
}


@pytest.mark.parametrize("kind", sorted(SELF_CONTAINED))
def test_cache_must_be_self_contained(kind: str, good: Path, tmp_path: Path, capsys) -> None:
    build, obj, words = SELF_CONTAINED[kind]
    path = hostile(good, tmp_path, "hostile.h5", build(tmp_path))
    before = files_under(tmp_path)
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and f"object {obj} " in err and words in err and "self-contained" in err
    with pytest.raises(CrossclrError, match=f"object {obj} "):  # what evaluate, train, linear... open
        open_cache(path)
    assert files_under(tmp_path) == before


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A one-stream model fitting the ``good`` cache (4 classes, 16 frames)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.infer.test_session import build_model

    path = tmp_path_factory.mktemp("model") / "m.onnx"
    build_model(path, streams=("joint",), kind="stream", class_names=[f"class {i}" for i in range(4)],
                frames=16)
    return path


@pytest.mark.parametrize("kind", sorted(SELF_CONTAINED))
def test_evaluate_refuses_a_cache_that_is_not_self_contained(kind: str, good: Path, model: Path,
                                                              tmp_path: Path, capsys) -> None:
    build, obj, words = SELF_CONTAINED[kind]
    path = hostile(good, tmp_path, "hostile.h5", build(tmp_path))
    before = files_under(tmp_path)
    err = refused(["evaluate", "--data", str(path), "--model", str(model), "--no-progress",
                   "--report", str(tmp_path / "r.json")], capsys)
    assert str(path) in err and f"object {obj} " in err and words in err
    assert files_under(tmp_path) == before


def test_external_storage_never_reaches_the_output_even_as_names(good: Path, tmp_path: Path, capsys) -> None:
    """The same external-storage file read through h5py directly does deliver the secret: the refusal is
    what keeps it out."""
    path = hostile(good, tmp_path, "hostile.h5", _external_storage(tmp_path))
    with h5py.File(path, "r") as f:
        assert SECRET.encode() in bytes(f["val/name"][0])
    refused(["info", str(path)], capsys)


def test_too_many_objects_and_unknown_filters_are_refused(good: Path, tmp_path: Path, capsys) -> None:
    def many(f: h5py.File) -> None:
        for i in range(MAX_OBJECTS + 1):
            f["train"].create_group(f"g{i}")
    err = refused(["info", str(hostile(good, tmp_path, "many.h5", many))], capsys)
    assert f"more than {MAX_OBJECTS} objects" in err

    def unknown_filter(f: h5py.File) -> None:
        labels = f["val/label"][()]
        del f["val/label"]
        f["val"].create_dataset("label", data=labels, chunks=(16,), compression=32001,
                                allow_unknown_filter=True)
    err = refused(["info", str(hostile(good, tmp_path, "filter.h5", unknown_filter))], capsys)
    assert "object /val/label uses HDF5 filter 32001" in err


# -- 2. terminal escape injection ---------------------------------------------------------------------------
def test_printable_escapes_control_c1_and_bidi_characters() -> None:
    assert printable("class é 1 / ok") == "class é 1 / ok"
    assert printable("a\x1b]0;title\x07b") == "a\\x1b]0;title\\x07b"
    assert printable("x\x9by\u202ez\n") == "x\\x9by\\u202ez\\n"
    assert printable("é" * 10, limit=3) == "ééé…"
    assert printable(Path("a\x1bb")) == "a\\x1bb"
    for text in ("\x1b[2J", "\u2066", "\x00", "\x7f"):
        assert printable(text).isprintable() and printable(text).isascii()


ESC = "x\x1b]0;pwned\x07"


def _layout_attr(f: h5py.File) -> None:  # joint thumb_right renamed (in joints and parents), TOML-escaped
    f.attrs["layout"] = layout_to_toml(NTU).replace('"thumb_right"', '"x\\u001b]0;pwned\\u0007"')


ATTRIBUTES = {
    "benchmark": (lambda f: f.attrs.__setitem__("benchmark", ESC), "'benchmark'"),
    "crossclr_version": (lambda f: f.attrs.__setitem__("crossclr_version", ESC), "'crossclr_version'"),
    "class name": (lambda f: f.attrs.__setitem__("class_names", json.dumps(["a", "b", ESC, "d"])),
                   "'class_names'"),
    "split name": (lambda f: (f.move("val", ESC), f.attrs.__setitem__("splits", json.dumps(["train", ESC]))),
                   "'splits'"),
    "layout name": (lambda f: f.attrs.__setitem__("layout", layout_to_toml(NTU).replace(
        'name = "ntu-rgb+d"', 'name = "x\\u001b]0;pwned\\u0007"')), "layout"),
    "joint name": (_layout_attr, "joint name"),
}


@pytest.mark.parametrize("attr", sorted(ATTRIBUTES))
def test_every_printed_attribute_is_a_checked_name(attr: str, good: Path, tmp_path: Path, capsys) -> None:
    edit, where = ATTRIBUTES[attr]
    path = hostile(good, tmp_path, "esc.h5", edit)
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and where in err and "not a valid name" in err and "\\x1b" in err


def test_info_prints_unicode_names_unchanged(tmp_path: Path, capsys) -> None:
    names = ["drink water", "boire de l'eau", "喝水", 'say "hi" \\o/']
    path = tmp_path / "u.h5"
    with CacheWriter(path, layout=NTU, class_names=names, benchmark="bench é", frames=4, num_person=1,
                     preprocess={"mode": "none"}) as w:
        for c in range(4):
            w.add("train", np.zeros((3, 4, 25, 1), np.float32), c, f"s{c}", 4)
    code, out, _ = run_cli(["info", str(path)], capsys)
    assert code == 0 and "bench é" in out and all(n in out for n in names)


def test_writer_refuses_unprintable_names(tmp_path: Path) -> None:
    kw = {"layout": NTU, "frames": 4, "num_person": 1, "preprocess": {"mode": "none"}}
    with pytest.raises(CrossclrError, match="benchmark name"):
        CacheWriter(tmp_path / "a.h5", class_names=["a"], benchmark=ESC, **kw)
    with pytest.raises(CrossclrError, match="class name"):
        CacheWriter(tmp_path / "a.h5", class_names=["a\u202eb"], benchmark="b", **kw)
    with pytest.raises(CrossclrError, match="sample name"):
        with CacheWriter(tmp_path / "a.h5", class_names=["a"], benchmark="b", **kw) as w:
            w.add("train", np.zeros((3, 4, 25, 1), np.float32), 0, "s\x1b[2J", 4)
    assert list(tmp_path.iterdir()) == []


# -- 3. custom layout names: TOML written by tomli-w, checked at prepare ------------------------------------
def _layout_doc(joints: list[str], name: str) -> dict:
    return {"name": name, "joints": joints, "parents": [joints[0]] * len(joints), "center": joints[0],
            "shoulders": joints[1:3]}


def test_layout_names_with_quotes_backslashes_and_unicode_round_trip(tmp_path: Path, capsys) -> None:
    joints = ['pel"vis', "back\\slash", "épaule 'g'", "肩", "tab\\t literal", 'end\\"', "p" * 200]
    lay = layout_from_toml_text(tomli_w.dumps(_layout_doc(joints, 'my "sk\\eleton" é')), "x.toml")
    again = layout_from_toml_text(layout_to_toml(lay), "again")
    assert again == lay and again.joint_names == tuple(joints) and again.name == 'my "sk\\eleton" é'
    # through prepare arrays into a cache, then info
    toml_path = tmp_path / "odd.toml"
    toml_path.write_text(tomli_w.dumps(_layout_doc(joints, 'my "sk\\eleton" é')), encoding="utf-8")
    npz = tmp_path / "a.npz"
    np.savez(npz, data=np.zeros((2, 3, 4, len(joints), 1), np.float32), label=np.array([0, 1]))
    code, out, err = run_cli(["prepare", "arrays", str(npz), "--layout", str(toml_path), "--out",
                              str(tmp_path / "c.h5"), "--benchmark", 'b"\\é'], capsys)
    assert code == 0, err
    with open_cache(tmp_path / "c.h5") as c:
        assert c.layout == lay and c.benchmark == 'b"\\é'
    code, out, _ = run_cli(["info", str(tmp_path / "c.h5")], capsys)
    assert code == 0
    assert 'my "sk\\eleton" é (7 joints, tree root pel"vis, shoulders back\\slash, épaule' in out


@pytest.mark.parametrize("bad", ["a\x07", "a\nb", "a\x1b[31m", "a\u202eb", "", "x" * 201])
def test_prepare_refuses_a_layout_with_an_unprintable_joint_name(bad: str, tmp_path: Path, capsys) -> None:
    joints = ["pelvis", "l", "r", bad]
    toml_path = tmp_path / "bad.toml"
    toml_path.write_text(tomli_w.dumps(_layout_doc(joints, "bad")), encoding="utf-8")
    npz = tmp_path / "a.npz"
    np.savez(npz, data=np.zeros((2, 3, 4, 4, 1), np.float32), label=np.array([0, 1]))
    before = files_under(tmp_path)
    err = refused(["prepare", "arrays", str(npz), "--layout", str(toml_path), "--out",
                   str(tmp_path / "c.h5")], capsys)
    assert str(toml_path) in err and "joint name" in err and "not a valid name" in err
    assert files_under(tmp_path) == before


def test_prepare_refuses_an_unprintable_benchmark_or_layout_name(tmp_path: Path, capsys) -> None:
    npz = tmp_path / "a.npz"
    np.savez(npz, data=np.zeros((2, 3, 4, 25, 1), np.float32), label=np.array([0, 1]))
    before = files_under(tmp_path)
    err = refused(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(tmp_path / "c.h5"),
                   "--benchmark", ESC], capsys)
    assert "benchmark name" in err and str(tmp_path / "c.h5") in err
    toml_path = tmp_path / "n.toml"
    toml_path.write_text(tomli_w.dumps(_layout_doc([f"j{i}" for i in range(25)], "x\x9by")), encoding="utf-8")
    before = files_under(tmp_path)
    err = refused(["prepare", "arrays", str(npz), "--layout", str(toml_path), "--out",
                   str(tmp_path / "c.h5")], capsys)
    assert str(toml_path) in err and "layout name" in err
    assert files_under(tmp_path) == before


# -- 4. layout size and cycles ------------------------------------------------------------------------------
def _chain(v: int, cycle: bool = False) -> str:
    """TOML of a chain of ``v`` joints j0 <- j1 <- ... (center j0); ``cycle``: j1's parent is the last."""
    joints = [f"j{i}" for i in range(v)]
    parents = [joints[max(i - 1, 0)] for i in range(v)]
    if cycle:
        parents[1] = joints[-1]
    return tomli_w.dumps({"name": "chain", "joints": joints, "parents": parents, "center": "j0"})


def test_a_40k_joint_chain_is_refused_by_the_joint_bound() -> None:
    with pytest.raises(ValueError, match=f"40000 joints, more than the maximum of {MAX_JOINTS}"):
        layout_from_toml_text(_chain(40_000), "chain.toml")
    with pytest.raises(ValueError, match="MAX_JOINTS"):
        Layout("big", tuple(f"j{i}" for i in range(MAX_JOINTS + 1)), (0,) * (MAX_JOINTS + 1), 0)


def test_the_longest_chain_allowed_passes_and_its_cycle_is_found() -> None:
    lay = layout_from_toml_text(_chain(MAX_JOINTS), "chain.toml")
    assert lay.num_joints == MAX_JOINTS and lay.parents[-1] == MAX_JOINTS - 2
    with pytest.raises(ValueError, match="does not reach the center joint through its parents"):
        layout_from_toml_text(_chain(MAX_JOINTS, cycle=True), "chain.toml")


def _reaches_center_naive(parents: list[int], center: int) -> bool:
    """Independent reference: follow the parents of each joint at most V steps."""
    for j in range(len(parents)):
        k = j
        for _ in range(len(parents)):
            if k == center:
                break
            k = parents[k]
        if k != center:
            return False
    return True


def test_cycle_check_agrees_with_a_naive_reference_on_random_parent_arrays() -> None:
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(400):
        v = int(rng.integers(1, 12))
        center = int(rng.integers(0, v))
        parents = [int(p) for p in rng.integers(0, v, v)]
        for j in range(v):
            if parents[j] == j and j != center:
                parents[j] = center
        parents[center] = center
        if rng.random() < 0.5:  # make trees common: point each joint at a lower-ranked one
            order = rng.permutation(v).tolist()
            order.remove(center)
            order.insert(0, center)
            for r, j in enumerate(order[1:], 1):
                parents[j] = order[int(rng.integers(0, r))]
        expected = _reaches_center_naive(parents, center)
        try:
            Layout("r", tuple(f"j{i}" for i in range(v)), tuple(parents), center)
            ok = True
        except ValueError:
            ok = False
        assert ok == expected, (parents, center)
        outcomes.add(ok)
    assert outcomes == {True, False}


def test_deeply_nested_layout_toml_and_cache_json_are_refused(good: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        layout_from_toml_text("joints = " + "[" * 100_000, "deep.toml")
    path = hostile(good, tmp_path, "deep.h5", lambda f: f.attrs.__setitem__("preprocess", "[" * 100_000))
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and "'preprocess'" in err


# -- 5. chunk layouts that make reads pathological -----------------------------------------------------------
def _rechunk(key: str, chunks: tuple[int, ...], gzip: bool = False) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        x = f[f"val/{key}"][()]
        del f[f"val/{key}"]
        f["val"].create_dataset(key, data=x, chunks=chunks, maxshape=(None,) * x.ndim,
                                compression="gzip" if gzip else None)
    return edit


CHUNKS = {
    "many samples per chunk": (_rechunk("data", (MAX_SAMPLES_PER_CHUNK + 1, 3, 16, 25, 2), gzip=True),
                               "dataset /val/data", "MAX_SAMPLES_PER_CHUNK"),
    "many chunks per sample": (_rechunk("data", (1, 1, 1, 1, 2)), "dataset /val/data",
                               "MAX_CHUNKS_PER_SAMPLE"),
    "huge chunk": (_rechunk("label", (MAX_CHUNK_BYTES // 8 + 1,), gzip=True), "object /val/label",
                   "MAX_CHUNK_BYTES"),
}


@pytest.mark.parametrize("kind", sorted(CHUNKS))
def test_pathological_chunks_are_refused(kind: str, good: Path, tmp_path: Path, capsys) -> None:
    edit, obj, limit = CHUNKS[kind]
    path = hostile(good, tmp_path, "chunks.h5", edit)
    assert path.stat().st_size < 4 * 2**20  # small files that would be slow to read
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and obj in err and limit in err


def test_a_compression_bomb_in_a_small_chunk_is_refused(good: Path, tmp_path: Path, capsys) -> None:
    """HDF5 inflates a stored chunk whole whatever its declared size: 16 MiB of zeros in one 9,600-byte chunk
    (measured: a 512 MiB bomb took 580 MB and 3.4 s for one sample read)."""
    import zlib

    def edit(f: h5py.File) -> None:
        x = f["val/data"][()]
        del f["val/data"]
        d = f["val"].create_dataset("data", data=x, chunks=(1, 3, 16, 25, 2), compression="gzip")
        d.id.write_direct_chunk((3, 0, 0, 0, 0), zlib.compress(bytes(16 * 2**20), 9))
    path = hostile(good, tmp_path, "bomb.h5", edit)
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and "object /val/data stores a chunk in" in err and "compression bomb" in err


def test_gzip_caches_of_incompressible_samples_still_open(tmp_path: Path) -> None:
    """Random floats compress to slightly more than their size: within the bound of the bomb check."""
    rng = np.random.default_rng(0)
    path = tmp_path / "g.h5"
    with CacheWriter(path, layout=NTU, class_names=["a"], benchmark="b", frames=2, num_person=1,
                     preprocess={"mode": "none"}, compression="gzip") as w:
        for i in range(4):
            w.add("val", rng.uniform(-1e5, 1e5, (3, 2, 25, 1)).astype(np.float32), 0, f"s{i}", 2)
    with h5py.File(path, "r") as f:
        sizes = [f["val/data"].id.get_chunk_info(i).size for i in range(4)]
    assert max(sizes) > 3 * 2 * 25 * 4  # stored larger than raw
    with open_cache(path) as c:
        assert c.split("val").read([0, 1, 2, 3]).shape == (4, 3, 2, 25, 1)


def test_the_writer_chunks_within_the_bounds(good: Path) -> None:
    with h5py.File(good, "r") as f:
        data = f["val/data"]
        assert data.chunks[0] == 1 and np.prod(data.chunks) * 4 <= MAX_CHUNK_BYTES


# -- 6. FIFOs and other special files are refused unread -----------------------------------------------------
@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``fifo(name)`` makes a FIFO in tmp_path. Should a reader ever block on one, a watchdog opens every FIFO
    made for writing after 20 s and closes it (the reader then sees end of file), so that the test fails
    instead of hanging."""
    made: list[Path] = []
    done = threading.Event()

    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        made.append(path)
        return path

    def watchdog() -> None:
        if done.wait(20):
            return
        while not done.is_set():
            for path in list(made):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader is waiting
                except OSError:
                    continue
                os.close(fd)
            done.wait(0.1)

    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    yield make
    done.set()
    t.join(5)


def test_fifo_as_cache_is_refused(fifo: Callable[[str], Path], capsys) -> None:
    cache = fifo("fifo.h5")
    err = refused(["info", str(cache)], capsys)
    assert str(cache) in err and "FIFO" in err and "cache file" in err
    with pytest.raises(CrossclrError, match="FIFO"):
        open_cache(cache)


def test_fifo_as_layout_or_npz_is_refused(fifo: Callable[[str], Path], tmp_path: Path, capsys) -> None:
    layout = fifo("fifo.toml")
    with pytest.raises(ValueError, match="FIFO"):
        get_layout(str(layout))
    npz = tmp_path / "a.npz"
    np.savez(npz, data=np.zeros((2, 3, 4, 25, 1), np.float32), label=np.array([0, 1]))
    err = refused(["prepare", "arrays", str(npz), "--layout", str(layout), "--out", str(tmp_path / "c.h5")],
                  capsys)
    assert str(layout) in err and "FIFO" in err
    fifo_npz = fifo("f.npz")
    err = refused(["prepare", "arrays", str(fifo_npz), "--layout", "ntu-rgb+d", "--out",
                   str(tmp_path / "c.h5")], capsys)
    assert str(fifo_npz) in err and "FIFO" in err
    assert not (tmp_path / "c.h5").exists()


def test_fifo_as_model_skeleton_or_label_file_is_refused(fifo: Callable[[str], Path]) -> None:
    from crossclr_infer.ntu import read_skeleton
    from crossclr_infer.official import read_label_pickle

    with pytest.raises(CrossclrError, match="FIFO"):
        read_skeleton(fifo("S001C001P001R001A001.skeleton"))
    with pytest.raises(CrossclrError, match="FIFO"):
        read_label_pickle(fifo("train_label.pkl"))
    pytest.importorskip("onnxruntime")
    from crossclr_infer.session import ModelSession

    with pytest.raises(CrossclrError, match="FIFO"):
        ModelSession(fifo("m.onnx"))


def test_require_regular_file_names_the_kind(tmp_path: Path) -> None:
    from crossclr_infer.fileio import require_regular_file

    with pytest.raises(CrossclrError, match="is a folder, expected a cache file"):
        require_regular_file(tmp_path, "cache file")
    with pytest.raises(CrossclrError, match="cache file not found"):
        require_regular_file(tmp_path / "nope", "cache file")
    assert require_regular_file(tmp_path / "nope", "cache file", missing_ok=True) == tmp_path / "nope"
    if Path("/dev/null").exists():
        with pytest.raises(CrossclrError, match="character device"):
            require_regular_file("/dev/null", "cache file")


# -- 7. coordinates of a cache checked as samples are read ---------------------------------------------------
def _poke(index: int, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        x = f["val/data"][index]
        x[1, 2, 3, 0] = value
        f["val/data"][index] = x
    return edit


@pytest.mark.parametrize("value", [1e30, -2 * MAX_ABS_COORDINATE, np.nan, np.inf])
def test_out_of_range_coordinates_are_refused_when_read(value: float, good: Path, tmp_path: Path) -> None:
    path = hostile(good, tmp_path, "coords.h5", _poke(5, value))
    with open_cache(path) as c:
        sp = c.split("val")
        name = sp.names[5]
        assert sp[4][0].shape == (3, 16, 25, 2)  # the others read fine
        reads = (lambda: sp[5], lambda: sp.read([3, 5, 7]), sp.read_all, lambda: list(sp.iter_batches(4)))
        for read in reads:
            with pytest.raises(CrossclrError) as e:
                read()
            msg = str(e.value)
            assert str(path) in msg and repr(name) in msg and "split 'val', index 5" in msg
            assert f"±{MAX_ABS_COORDINATE:g}" in msg


def test_evaluate_names_the_sample_with_a_coordinate_beyond_the_bound(good: Path, model: Path, tmp_path: Path,
                                                                      capsys) -> None:
    path = hostile(good, tmp_path, "coords.h5", _poke(2, 1e30))
    with open_cache(path) as c:
        name = c.split("val").names[2]
    before = files_under(tmp_path)
    err = refused(["evaluate", "--data", str(path), "--model", str(model), "--no-progress",
                   "--report", str(tmp_path / "r.json")], capsys)
    assert str(path) in err and repr(name) in err and "1e+30" in err
    assert files_under(tmp_path) == before


def test_train_side_reads_refuse_the_sample(good: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from training.data import open_train_data

    path = hostile(good, tmp_path, "coords.h5", _train_poke)
    data = open_train_data(path)
    try:
        with pytest.raises(CrossclrError, match=r"index 3\).*3e\+38"):
            data.dataset[3]
    finally:
        data.cache.close()
    with pytest.raises(CrossclrError, match=r"index 3\)"):
        open_train_data(path, preload=True)


def _train_poke(f: h5py.File) -> None:
    x = f["train/data"][3]
    x[0, 0, 0, 0] = 3e38
    f["train/data"][3] = x


# -- 8. h5py errors name the cache and the object; declared sizes checked before reading ---------------------
def test_a_label_dataset_declaring_7e9_entries_is_refused_unread(good: Path, tmp_path: Path, capsys) -> None:
    n = 7_000_000_000

    def edit(f: h5py.File) -> None:
        del f["val"]
        g = f.create_group("val")
        g.create_dataset("data", shape=(n, 3, 16, 25, 2), chunks=(1, 3, 16, 25, 2), dtype="f4")
        for key, dtype in (("label", "i8"), ("length", "i8"), ("name", h5py.string_dtype())):
            g.create_dataset(key, shape=(n,), chunks=(4096,), dtype=dtype)
    path = hostile(good, tmp_path, "huge.h5", edit)
    assert path.stat().st_size < 2**20
    err = refused(["info", str(path)], capsys)
    assert str(path) in err and f"declares {n} samples" in err and str(MAX_SAMPLES_PER_SPLIT) in err


def test_an_object_gone_after_opening_is_named(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    shutil.copy(good, path)
    with open_cache(path) as c:
        sp = c.split("val")
        with h5py.File(path, "a") as f:  # the cache's own handle opens lazily, at the first read
            del f["val/name"]
        with pytest.raises(CrossclrError, match=r"c\.h5: dataset /val/name cannot be opened, damaged cache"):
            _ = sp.names


def test_a_damaged_chunk_is_named_with_the_cache_and_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "z.h5"
    with CacheWriter(path, layout=NTU, class_names=["a"], benchmark="b", frames=8, num_person=1,
                     preprocess={"mode": "none"}, compression="gzip") as w:
        for i in range(3):
            w.add("val", np.full((3, 8, 25, 1), i, np.float32), 0, f"s{i}", 8)
    with h5py.File(path, "r") as f:
        info = f["val/data"].id.get_chunk_info(1)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)
    with open_cache(path) as c:
        sp = c.split("val")
        assert float(sp[0][0].max()) == 0.0
        with pytest.raises(CrossclrError, match=r"z\.h5: cannot read sample 1 of split 'val', damaged cache"):
            sp[1]


def test_check_name_is_defined_only_in_errors_and_used_from_there() -> None:
    import ast
    import pathlib

    from crossclr_infer import cache, errors, layouts, report, session, views

    root = pathlib.Path(errors.__file__).parent
    defined = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name == "check_name"]
    assert defined == ["errors.py"]
    assert errors.MAX_NAME_CHARS == 200
    for module in (cache, layouts, report, session):
        assert module.check_name is check_name is errors.check_name, module.__name__
    assert not hasattr(views, "check_name")  # no second import path


_WRITE_UNDER_LIMIT = """
import resource, signal, sys
import numpy as np
limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from crossclr_infer.cache import CacheWriter
from crossclr_infer.fileio import WriteFailed
from crossclr_infer.layouts import get_layout
try:
    with CacheWriter(sys.argv[1], layout=get_layout("ntu-rgb+d"), class_names=["a", "b"], benchmark="x",
                     frames=50, num_person=2, preprocess={}) as w:
        for i in range(100):
            w.add("train", np.zeros((3, 50, 25, 2), np.float32), i % 2, f"s{i}", 50)
except WriteFailed as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("limit", [1_000, 50_000, 1_000_000, 3_000_000])
def test_a_cache_write_over_the_size_limit_fails_cleanly_in_library_use(tmp_path: Path, limit: int) -> None:
    """``ulimit -f`` hit anywhere in a cache write (first bytes, mid-way, near the end) raises WriteFailed and
    the process then ends normally: no crash when h5py frees its objects (it was exit 139 with HDF5 2.0 when a
    dirty chunk could not be flushed), and nothing under the cache's name."""
    import subprocess
    import sys

    out = tmp_path / "c.h5"
    r = subprocess.run([sys.executable, "-c", _WRITE_UNDER_LIMIT, str(out), str(limit)], capture_output=True,
                       text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    assert r.stdout.startswith(f"refused: {out}: could not be written"), r.stdout
    assert list(tmp_path.iterdir()) == []
