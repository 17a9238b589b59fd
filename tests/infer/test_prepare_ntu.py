"""prepare ntu: real files (copied into tmp_path, never into the repo) plus broken ones -> a cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import crossclr_infer.prepare_ntu as prepare_module
from crossclr_infer.cache import open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.ntu import NTU_ACTION_NAMES, parse_ntu_name, read_skeleton, split_of
from crossclr_infer.prepare_ntu import prepare_ntu
from crossclr_infer.preprocess import preprocess_raw
from tests.conftest import shared_path

NTU = get_layout("ntu-rgb+d")


@pytest.fixture()
def raw_dir(tmp_path: Path) -> Path:
    """The 12 distinct real samples plus: a truncated file, a file without bodies, an NTU-120-only action,
    a sample to ignore and a file with a foreign name."""
    src = shared_path("ntu_skeleton_samples")
    out = tmp_path / "raw"
    out.mkdir()
    for p in sorted(src.glob("*/*.skeleton")):
        if not (out / p.name).exists():
            shutil.copy(p, out / p.name)
    a001 = (out / "S001C001P001R001A001.skeleton").read_text()
    (out / "S001C002P001R001A002.skeleton").write_text(a001[: len(a001) // 3])  # truncated
    (out / "S001C002P002R001A003.skeleton").write_text("5\n0\n0\n0\n0\n0\n")  # missing skeleton
    (out / "S018C001P001R001A061.skeleton").write_text(a001)  # NTU-120 only
    (out / "S001C003P002R001A004.skeleton").write_text(a001)  # listed in the ignore list
    (out / "notes.skeleton").write_text(a001)
    return out


@pytest.fixture()
def ignore_list(tmp_path: Path) -> Path:
    p = tmp_path / "ignore.txt"
    p.write_text("# missing skeletons\nS001C003P002R001A004\n")
    return p


REAL = ["S001C001P001R001A001", "S001C001P001R001A011", "S001C001P001R001A050", "S001C003P008R002A058",
        "S002C001P003R001A003", "S003C001P015R001A034", "S004C002P003R001A017", "S017C003P020R002A054",
        "S017C003P020R002A055", "S017C003P020R002A056", "S017C003P020R002A057", "S017C003P020R002A058"]


def test_prepare_official_writes_benchmark_and_reports_skips(raw_dir: Path, ignore_list: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "ntu60-xsub.h5"
    summary = prepare_ntu(raw_dir, "ntu60-xsub", out, ignore_list=ignore_list, progress=False)
    expected = {s: [n for n in REAL if split_of(n, "ntu60-xsub") == s] for s in ("train", "val")}
    assert summary.written == {s: len(v) for s, v in expected.items()}
    assert summary.skipped == {"parse error": ["S001C002P001R001A002", "notes"],
                               "no skeleton": ["S001C002P002R001A003"],
                               "not in benchmark": ["S018C001P001R001A061"],
                               "ignored": ["S001C003P002R001A004"]}
    assert "line" in summary.errors["S001C002P001R001A002"]
    text = "\n".join(summary.lines())
    assert "skipped (parse error): 2" in text and "train: " in text
    with open_cache(out) as cache:
        assert cache.class_names == list(NTU_ACTION_NAMES[:60]) and cache.num_class == 60
        assert cache.benchmark == "ntu60-xsub" and cache.frames == 50 and cache.num_person == 2
        assert cache.preprocess["mode"] == "official"
        for split, names in expected.items():
            part = cache.split(split)
            assert part.names == names
            assert part.labels.tolist() == [parse_ntu_name(n).label for n in names]
            data = part.read_all()
            for i, name in enumerate(names):
                raw = read_skeleton(raw_dir / f"{name}.skeleton")
                np.testing.assert_array_equal(data[i], preprocess_raw(raw, NTU, "official", 50))
                assert part.lengths[i] == int(np.count_nonzero(raw.bodies_per_frame))  # body 0 in every frame


def test_prepare_none_300_is_the_ntu_gendata_layout(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw300.h5"
    prepare_ntu(raw_dir, "ntu120-xset", out, preprocess="none", frames=300, progress=False)
    with open_cache(out) as cache:
        assert cache.num_class == 120 and cache.sample_shape == (3, 300, 25, 2)
        part = cache.split("val")
        for i, name in enumerate(part.names):
            raw = read_skeleton(raw_dir / f"{name}.skeleton")
            ref = np.zeros((3, 300, 25, 2), np.float32)  # first two bodies per frame, in file order
            k = 0
            for f, n in enumerate(raw.bodies_per_frame):
                for m in range(n):
                    if m < 2:
                        ref[:, f, :, m] = raw.xyz[k].T
                    k += 1
            np.testing.assert_array_equal(part[i][0], ref)
            assert part.lengths[i] == raw.num_frames


def test_workers_give_the_same_cache(raw_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    sa = prepare_ntu(raw_dir, "ntu120-xsub", a, preprocess="energy", progress=False)
    sb = prepare_ntu(raw_dir, "ntu120-xsub", b, preprocess="energy", workers=2, progress=False)
    assert sa.written == sb.written and sa.skipped == sb.skipped
    with open_cache(a) as ca, open_cache(b) as cb:
        for split in ca.splits:
            assert ca.split(split).names == cb.split(split).names
            np.testing.assert_array_equal(ca.split(split).read_all(), cb.split(split).read_all())


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_prepare_killed_midway_leaves_no_file(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              exc: BaseException) -> None:
    real = prepare_module.normalize_sequence
    calls = {"n": 0}

    def dying(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "normalize_sequence", dying)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "cache.h5"
    with pytest.raises(type(exc)):
        prepare_ntu(raw_dir, "ntu120-xsub", out, progress=False)
    assert calls["n"] == 4
    assert list(out_dir.iterdir()) == []  # neither the cache nor a temporary file
    # an existing cache at the output path is left as it was
    out.write_bytes(b"old")
    calls["n"] = 0
    with pytest.raises(type(exc)):
        prepare_ntu(raw_dir, "ntu120-xsub", out, progress=False)
    assert out.read_bytes() == b"old" and list(out_dir.iterdir()) == [out]


def test_prepare_errors(tmp_path: Path, raw_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrossclrError, match="no .skeleton files"):
        prepare_ntu(tmp_path / "empty", "ntu60-xsub", tmp_path / "x.h5", progress=False)
    with pytest.raises(CrossclrError, match="not a folder"):
        prepare_ntu(tmp_path / "nope", "ntu60-xsub", tmp_path / "x.h5", progress=False)
    with pytest.raises(CrossclrError, match="unknown benchmark"):
        prepare_ntu(raw_dir, "ntu61", tmp_path / "x.h5", progress=False)
    only = tmp_path / "only120"
    only.mkdir()
    shutil.copy(raw_dir / "S018C001P001R001A061.skeleton", only)
    with pytest.raises(CrossclrError, match="belongs to ntu60-xview"):
        prepare_ntu(only, "ntu60-xview", tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_cli_prepare_ntu(raw_dir: Path, ignore_list: Path, tmp_path: Path) -> None:
    from cli import crossclr

    out = tmp_path / "c.h5"
    args = ["prepare", "ntu", str(raw_dir), "--benchmark", "ntu60-xview", "--out", str(out),
            "--ignore-list", str(ignore_list), "--no-progress"]
    result = CliRunner().invoke(crossclr, args)
    assert result.exit_code == 0, result.output
    assert "skipped (ignored): 1" in result.output and "skipped (no skeleton): 1" in result.output
    with open_cache(out) as cache:
        assert cache.benchmark == "ntu60-xview"
        assert sum(len(cache.split(s)) for s in cache.splits) == 12


def test_cli_prepare_ntu_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["prepare", "ntu", str(tmp_path / "empty"), "--benchmark", "ntu60-xsub", "--out",
              str(tmp_path / "x.h5")])
    assert info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no .skeleton files" in err
