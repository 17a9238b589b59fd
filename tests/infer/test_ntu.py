"""Raw NTU reader against the two golden references, fixtures built from real files, fuzzing; names."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossclr_infer.errors import CrossclrError
from crossclr_infer.ntu import (
    BENCHMARKS,
    NTU_ACTION_NAMES,
    _parse_fast,
    class_names,
    parse_ntu_name,
    parse_skeleton_bytes,
    parse_skeleton_lines,
    read_name_list,
    read_skeleton,
    split_of,
)
from tests.conftest import shared_path

SAMPLES = "ntu_skeleton_samples"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reference files are pickles: allow only what numpy arrays and plain containers need."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path):  # noqa: ANN202
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def _load_object_npy(path: Path):  # noqa: ANN202
    """An object .npy (a pickled dict) read without np.load(allow_pickle=True)."""
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        fmt = np.lib.format
        read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        _shape, _fortran, dtype = read_header(f)
        assert dtype.hasobject
        return _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()


def _real_files() -> list[Path]:
    return sorted(shared_path(SAMPLES).rglob("*.skeleton"))


# ---------------------------------------------------------------------------------------- golden files
def test_matches_photonictree_raw_skes_data() -> None:
    root = shared_path(SAMPLES, "PhotonicTree")
    ref = _load_pickle(root / "raw_skes_data.pkl")
    assert len(ref) == 5
    for entry in ref:
        raw = read_skeleton(root / f"{entry['name']}.skeleton")
        assert raw.num_frames == entry["num_frames"]
        # the reference numbers frames among those with at least one body
        valid = np.flatnonzero(raw.bodies_per_frame > 0)
        assert set(entry["data"]) == {str(b) for b in np.unique(raw.body_ids)}
        for body_id, body in entry["data"].items():
            sel = raw.body_ids == int(body_id)
            assert np.searchsorted(valid, raw.frame_index[sel]).tolist() == list(body["interval"])
            np.testing.assert_array_equal(raw.xyz[sel].reshape(-1, 3), body["joints"])  # exact


def test_matches_gardiens_npy() -> None:
    root = shared_path(SAMPLES, "gardiens")
    ref = _load_object_npy(root / "S001C001P001R001A001.skeleton.npy")
    ref = ref.item() if isinstance(ref, np.ndarray) else ref
    raw = read_skeleton(root / "S001C001P001R001A001.skeleton")
    assert raw.bodies_per_frame.tolist() == list(ref["nbodys"])
    np.testing.assert_array_equal(raw.xyz, ref["skel_body0"].astype(np.float32))


def test_crlf_and_lf_copies_parse_identically(tmp_path: Path) -> None:
    crlf = shared_path(SAMPLES, "gardiens", "S001C001P001R001A001.skeleton")
    lf = shared_path(SAMPLES, "PhotonicTree", "S001C001P001R001A001.skeleton")
    assert b"\r\n" in crlf.read_bytes() and b"\r" not in lf.read_bytes()
    a, b = read_skeleton(crlf), read_skeleton(lf)
    for field in ("bodies_per_frame", "body_ids", "xyz"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # and the reverse conversion of an LF file
    conv = tmp_path / "crlf.skeleton"
    conv.write_bytes(lf.read_bytes().replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(read_skeleton(conv).xyz, b.xyz)


def test_fast_path_taken_and_equal_to_line_reader() -> None:
    files = _real_files()
    assert len(files) == 13
    for path in files:
        data = path.read_bytes()
        fast = _parse_fast(data, 25)
        assert fast is not None, f"{path.name}: the vectorized path should accept the Kinect format"
        slow = parse_skeleton_lines(data, str(path))
        assert fast.num_frames == slow.num_frames
        np.testing.assert_array_equal(fast.bodies_per_frame, slow.bodies_per_frame)
        np.testing.assert_array_equal(fast.body_ids, slow.body_ids)
        np.testing.assert_array_equal(fast.xyz, slow.xyz)
        assert fast.xyz.dtype == np.float32 and fast.body_ids.dtype == np.int64
        assert fast.xyz.shape == (int(fast.bodies_per_frame.sum()), 25, 3)


def test_body_ids_exact_int64() -> None:
    raw = read_skeleton(shared_path(SAMPLES, "PhotonicTree", "S001C001P001R001A001.skeleton"))
    assert set(raw.body_ids.tolist()) == {72057594037931101}  # > 2**53: must not go through float


# ---------------------------------------------------------------------------------------- fixtures
def _frame_blocks(path: Path) -> list[list[str]]:
    """Independent plain walk of the file structure: the lines of each frame."""
    lines = path.read_text().replace("\r\n", "\n").rstrip("\n").split("\n")
    pos, blocks = 1, []
    for _ in range(int(lines[0])):
        n = int(lines[pos])
        size = 1 + n * 27
        blocks.append(lines[pos:pos + size])
        pos += size
    return blocks


def _write(path: Path, blocks: list[list[str]], frames: int | None = None) -> Path:
    text = "\n".join([str(len(blocks) if frames is None else frames)] + [ln for b in blocks for ln in b])
    path.write_text(text + "\n")
    return path


@pytest.fixture()
def two_body_blocks() -> list[list[str]]:
    return _frame_blocks(shared_path(SAMPLES, "PhotonicTree", "S017C003P020R002A054.skeleton"))


def test_zero_body_frames(tmp_path: Path, two_body_blocks: list[list[str]]) -> None:
    blocks = [["0"]] + two_body_blocks[:3] + [["0"], ["0"]] + two_body_blocks[3:5] + [["0"]]
    raw = read_skeleton(_write(tmp_path / "z.skeleton", blocks))
    assert raw.num_frames == 9
    assert raw.bodies_per_frame.tolist() == [0, 2, 2, 2, 0, 0, 2, 2, 0]
    full = read_skeleton(shared_path(SAMPLES, "PhotonicTree", "S017C003P020R002A054.skeleton"))
    np.testing.assert_array_equal(raw.xyz, full.xyz[:10])
    assert raw.frame_index.tolist() == [1, 1, 2, 2, 3, 3, 6, 6, 7, 7]
    assert _parse_fast((tmp_path / "z.skeleton").read_bytes(), 25) is not None


def test_only_zero_body_frames(tmp_path: Path) -> None:
    raw = read_skeleton(_write(tmp_path / "e.skeleton", [["0"]] * 4))
    assert raw.num_frames == 4 and raw.body_ids.size == 0 and raw.xyz.shape == (0, 25, 3)


def test_three_bodies(tmp_path: Path, two_body_blocks: list[list[str]]) -> None:
    blocks = []
    for block in two_body_blocks[:4]:
        third = list(block[1:28])
        third[0] = "123 " + third[0].split(" ", 1)[1]  # a new body ID
        blocks.append(["3"] + block[1:] + third)
    raw = read_skeleton(_write(tmp_path / "three.skeleton", blocks))
    assert raw.bodies_per_frame.tolist() == [3, 3, 3, 3]
    assert raw.body_ids.tolist()[:3] == [72057594037937917, 72057594037937959, 123]
    assert raw.rank_in_frame.tolist() == [0, 1, 2] * 4
    np.testing.assert_array_equal(raw.xyz[2], raw.xyz[0])


def test_noncanonical_whitespace_gives_same_values(tmp_path: Path, two_body_blocks: list[list[str]]) -> None:
    path = _write(tmp_path / "a.skeleton", two_body_blocks[:3])
    ref = read_skeleton(path)
    text = path.read_text()
    variants = [text.replace(" ", "\t"), text.replace(" ", "  "), text.replace("\n", " \n"),
                text + "\n\n  \n", text.replace("\n", "\r\n")]
    for i, v in enumerate(variants):
        p = tmp_path / f"v{i}.skeleton"
        p.write_text(v, newline="")
        got = read_skeleton(p)
        np.testing.assert_array_equal(got.xyz, ref.xyz)
        np.testing.assert_array_equal(got.body_ids, ref.body_ids)


def _error(path: Path) -> str:
    with pytest.raises(CrossclrError) as info:
        read_skeleton(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_errors_name_file_line_and_expectation(tmp_path: Path, two_body_blocks: list[list[str]]) -> None:
    good = _write(tmp_path / "good.skeleton", two_body_blocks[:2])
    lines = good.read_text().split("\n")
    # truncated in the middle of a joint line / before the end
    trunc = tmp_path / "trunc.skeleton"
    trunc.write_text("\n".join(lines[:40]) + "\n")
    msg = _error(trunc)
    # lines 5-29 hold body 1's joints, 32-56 body 2's
    assert "line 41" in msg and "truncated" in msg and "joint 10 of body 2 of frame 1" in msg
    # wrong joint count (line 4 holds the joint count of body 1 of frame 1)
    bad = list(lines)
    bad[3] = "24"
    (tmp_path / "joints.skeleton").write_text("\n".join(bad))
    msg = _error(tmp_path / "joints.skeleton")
    assert "line 4" in msg and "expected 25 joints" in msg and "got 24" in msg
    # non-numeric coordinate on line 5 (joint 1)
    bad = list(lines)
    bad[4] = "abc " + bad[4].split(" ", 1)[1]
    (tmp_path / "nan.skeleton").write_text("\n".join(bad))
    msg = _error(tmp_path / "nan.skeleton")
    assert "line 5" in msg and "finite number for x of joint 1" in msg and "'abc'" in msg
    # a joint line with missing values
    bad = list(lines)
    bad[6] = " ".join(bad[6].split()[:7])
    (tmp_path / "short.skeleton").write_text("\n".join(bad))
    msg = _error(tmp_path / "short.skeleton")
    assert "line 7" in msg and "12 values for joint 3" in msg and "got 7 values" in msg
    # empty and whitespace-only files
    (tmp_path / "empty.skeleton").write_bytes(b"")
    assert "line 1: expected the number of frames, got an empty file" in _error(tmp_path / "empty.skeleton")
    (tmp_path / "blank.skeleton").write_bytes(b" \r\n\n")
    assert "empty file" in _error(tmp_path / "blank.skeleton")
    # frame count larger than the content, and extra content
    more = _write(tmp_path / "more.skeleton", two_body_blocks[:2], frames=3)
    assert "number of bodies in frame 3" in _error(more)
    extra = tmp_path / "extra.skeleton"
    extra.write_text(good.read_text() + "5\n")
    assert "expected the end of the file after 2 frames" in _error(extra)
    # a frame count the file cannot hold is refused before anything is allocated
    (tmp_path / "huge.skeleton").write_text("594037937\n0\n")
    assert "line 1: expected the number of frames (at most 1" in _error(tmp_path / "huge.skeleton")
    # negative and non-integer counts
    (tmp_path / "neg.skeleton").write_text("-1\n")
    assert "one integer >= 0" in _error(tmp_path / "neg.skeleton")
    assert "No such file" in _error(tmp_path / "missing.skeleton") or "cannot read" in _error(
        tmp_path / "missing.skeleton")


# ---------------------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def small_file_bytes() -> bytes:
    blocks = _frame_blocks(shared_path(SAMPLES, "PhotonicTree", "S017C003P020R002A054.skeleton"))[:2]
    return ("\n".join(["2"] + [ln for b in blocks for ln in b]) + "\n").encode()


_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(b"")),
    st.tuples(st.just("replace"), st.integers(0, 10**6), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from([b" ", b"\n", b"\r", b"-", b".", b"e",
                                                                          b"0", b"9", b"x", b"\t", b"\x00"])),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 30).map(lambda n: b"?" * n)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_fuzz_mutated_files_raise_only_crossclr_error(small_file_bytes: bytes, mutations: list) -> None:
    data = small_file_bytes
    for kind, pos, payload in mutations:
        pos = pos % (len(data) + 1)
        if kind == "truncate":
            data = data[:pos]
        elif kind == "replace":
            data = data[:pos] + payload + data[pos + len(payload):]
        elif kind == "insert":
            data = data[:pos] + payload + data[pos:]
        else:
            data = data[:pos] + data[pos + len(payload):]
    try:
        got = parse_skeleton_bytes(data, "fuzz.skeleton")
    except CrossclrError as e:
        assert str(e).startswith("fuzz.skeleton: ")
        with pytest.raises(CrossclrError):  # the two paths agree on rejecting
            parse_skeleton_lines(data, "fuzz.skeleton")
        return
    ref = parse_skeleton_lines(data, "fuzz.skeleton")  # the two paths agree on the values
    np.testing.assert_array_equal(got.xyz, ref.xyz)
    np.testing.assert_array_equal(got.body_ids, ref.body_ids)
    np.testing.assert_array_equal(got.bodies_per_frame, ref.bodies_per_frame)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse_skeleton_bytes(data, "r.skeleton")
    except CrossclrError:
        pass


# ---------------------------------------------------------------------------------------- names
def test_parse_ntu_name() -> None:
    n = parse_ntu_name("/x/y/S017C003P020R002A054.skeleton")
    assert (n.setup, n.camera, n.performer, n.replication, n.action, n.label) == (17, 3, 20, 2, 54, 53)
    assert str(n) == "S017C003P020R002A054"
    for bad in ("S17C003P020R002A054", "S001C001P001R001A001x", "foo.skeleton", ""):
        with pytest.raises(CrossclrError, match="SsssCcccPpppRrrrAaaa"):
            parse_ntu_name(bad)


@pytest.mark.parametrize(("name", "bench", "split"), [
    ("S001C001P001R001A001", "ntu60-xsub", "train"),  # subject 1 trains
    ("S001C001P003R001A001", "ntu60-xsub", "val"),  # subject 3 tests
    ("S001C001P038R001A060", "ntu60-xsub", "train"),
    ("S001C001P001R001A061", "ntu60-xsub", None),  # action > 60
    ("S018C001P001R001A001", "ntu60-xsub", None),  # setup > 17
    ("S001C001P045R001A001", "ntu60-xsub", "val"),  # 45 trains only in NTU-120
    ("S018C001P045R001A100", "ntu120-xsub", "train"),
    ("S001C001P103R001A001", "ntu120-xsub", "train"),
    ("S001C001P104R001A001", "ntu120-xsub", "val"),
    ("S001C001P001R001A001", "ntu60-xview", "val"),  # camera 1 tests
    ("S001C002P001R001A001", "ntu60-xview", "train"),
    ("S001C003P001R001A001", "ntu60-xview", "train"),
    ("S002C001P001R001A120", "ntu120-xset", "train"),  # even setup
    ("S001C001P001R001A120", "ntu120-xset", "val"),
    ("S032C001P001R001A001", "ntu120-xset", "train"),
])
def test_split_of(name: str, bench: str, split: str | None) -> None:
    assert split_of(name, bench) == split


def test_benchmark_subject_lists() -> None:
    s60 = [s for s in range(1, 41) if split_of(f"S001C001P{s:03d}R001A001", "ntu60-xsub") == "train"]
    assert s60 == [1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38]
    s120 = [s for s in range(1, 107) if split_of(f"S001C001P{s:03d}R001A001", "ntu120-xsub") == "train"]
    assert len(s120) == 53 and s120[20:] == [45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78,
                                             80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100,
                                             103]
    assert sorted(BENCHMARKS) == ["ntu120-xset", "ntu120-xsub", "ntu60-xsub", "ntu60-xview"]
    with pytest.raises(CrossclrError, match="unknown benchmark"):
        split_of("S001C001P001R001A001", "ntu61")


def test_action_names() -> None:
    assert len(NTU_ACTION_NAMES) == 120 and len(set(NTU_ACTION_NAMES)) == 120
    assert NTU_ACTION_NAMES[0] == "drink water"
    assert NTU_ACTION_NAMES[59] == "walking apart from each other"
    assert NTU_ACTION_NAMES[60] == "put on headphone"
    assert NTU_ACTION_NAMES[119].startswith("finger-guessing game")
    assert len(class_names("ntu60-xview")) == 60 and len(class_names("ntu120-xset")) == 120


def test_missing_skeleton_lists_read_as_ignore_lists(tmp_path: Path) -> None:
    root = shared_path("ntu_missing_skeletons")
    assert len(read_name_list(root / "NTU_RGBD60_samples_with_missing_skeletons.txt")) == 302
    assert len(read_name_list(root / "NTU_RGBD120_samples_with_missing_skeletons.txt")) == 535
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nS001C001P001R001A001\nnot-a-name\n")
    with pytest.raises(CrossclrError, match="line 3"):
        read_name_list(bad)
