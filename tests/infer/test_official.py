"""Import of the official processed files; the restricted unpickler never runs code from a pickle."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.cache import open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.ntu import NTU_ACTION_NAMES
from crossclr_infer.official import prepare_official, read_label_pickle, restricted_load


def _official_folder(folder: Path, *, kind: str = "position", frames: int = 50, n=(5, 3), labels="pkl",
                     seed: int = 0) -> dict[str, tuple[np.ndarray, list[str], list[int]]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in zip(("train", "val"), n, strict=True):
        data = rng.standard_normal((count, 3, frames, 25, 2)).astype(np.float32)
        data[0, :, frames - 4:] = 0  # one padded sample: 4 frames short
        names = [f"S001C00{1 + i % 3}P00{1 + i}R001A0{10 + i:02d}" for i in range(count)]
        labs = [9 + i for i in range(count)]
        np.save(folder / f"{split}_{kind}.npy", data)
        if labels == "pkl":
            with open(folder / f"{split}_label.pkl", "wb") as f:
                pickle.dump((names, labs), f)  # as the official ntu_gendata writes it
        else:
            np.save(folder / f"{split}_label.npy", np.array(labs, np.int64))
        out[split] = (data, names, labs)
    return out


def test_import_position_files(tmp_path: Path) -> None:
    ref = _official_folder(tmp_path / "xsub")
    counts = prepare_official(tmp_path / "xsub", tmp_path / "c.h5", progress=False)
    assert counts == {"train": 5, "val": 3}
    with open_cache(tmp_path / "c.h5") as c:
        assert c.benchmark == "xsub" and c.frames == 50 and c.num_person == 2
        assert c.preprocess["mode"] == "official"
        assert c.class_names == list(NTU_ACTION_NAMES[:60])
        for split, (data, names, labs) in ref.items():
            s = c.split(split)
            np.testing.assert_array_equal(s.read_all(), data)
            assert s.names == names and s.labels.tolist() == labs
            assert s.lengths[0] == 46 and (s.lengths[1:] == 50).all()


def test_import_data_files_with_npy_labels(tmp_path: Path) -> None:
    ref = _official_folder(tmp_path / "d", kind="data", frames=30, labels="npy")
    prepare_official(tmp_path / "d", tmp_path / "c.h5", benchmark="ntu60-xview", progress=False)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.preprocess["mode"] == "none" and c.frames == 30 and c.benchmark == "ntu60-xview"
        np.testing.assert_array_equal(c.split("val").read_all(), ref["val"][0])
        assert c.split("val").labels.tolist() == ref["val"][2]


def test_numpy_scalars_in_label_pickles_are_accepted(tmp_path: Path) -> None:
    p = tmp_path / "val_label.pkl"
    for protocol in (2, 4):
        p.write_bytes(pickle.dumps((["a", "b"], [np.int64(3), np.int32(0)]), protocol=protocol))
        names, labels = read_label_pickle(p)
        assert names == ["a", "b"] and labels.tolist() == [3, 0] and labels.dtype == np.int64


class _Touch:
    """Pickles as a call that would create a file if the unpickler ever ran it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("make, match", [
    (lambda t: (["n"], [_Touch(t)]), r"refusing to load global (posix|nt|os)\.system"),
    (lambda t: _Eval(), "refusing to load global builtins.eval"),
    (lambda t: (["n"], np.array([1])), r"refusing to load global numpy\._?core\.multiarray\._reconstruct"),
    (lambda t: (["n"], [np.str_("x")]), "only numbers are allowed"),
])
def test_restricted_unpickler_refuses_globals_without_running_them(tmp_path: Path, make, match) -> None:
    target = tmp_path / "pwned"
    data = pickle.dumps(make(target))
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in pickletools.genops(io.BytesIO(data)))
    with pytest.raises(CrossclrError, match=match):
        restricted_load(data, "x.pkl")
    assert not target.exists()


@pytest.mark.parametrize("payload, match", [
    (b"\x80\x04garbage", "not a valid label pickle|x.pkl"),
    (pickle.dumps({"names": []}), r"expected a pickled \(names, labels\) pair, got dict"),
    (pickle.dumps((["a", "b"], [1])), "2 names but 1 labels"),
    (pickle.dumps(([1, 2], [1, 2])), "list of sample names"),
    (pickle.dumps((["a"], [1.5])), "integer labels"),
])
def test_malformed_label_pickles(tmp_path: Path, payload: bytes, match: str) -> None:
    p = tmp_path / "x.pkl"
    p.write_bytes(payload)
    with pytest.raises(CrossclrError, match=match) as e:
        read_label_pickle(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("damage, match", [
    ("evil_pickle", "refusing to load global"),
    ("wrong_joints", r"expected \(N, 3, T, 25, M\)"),
    ("label_count", "2 labels for 3 samples"),
    ("no_labels", "has no labels"),
    ("not_npy", "not a readable .npy array"),
    ("object_npy", "not a readable .npy array"),
    ("empty", "no train/val data found"),
])
def test_prepare_official_bad_input_exits_nonzero_and_writes_nothing(tmp_path: Path, capsys, damage: str,
                                                                     match: str) -> None:
    import cli

    folder = tmp_path / "xsub"
    _official_folder(folder)
    target = tmp_path / "pwned"
    if damage == "evil_pickle":
        (folder / "val_label.pkl").write_bytes(pickle.dumps(([], [_Touch(target)])))
    elif damage == "wrong_joints":
        np.save(folder / "val_position.npy", np.zeros((3, 3, 50, 20, 2), np.float32))
    elif damage == "label_count":
        (folder / "val_label.pkl").write_bytes(pickle.dumps((["a", "b"], [1, 2])))
    elif damage == "no_labels":
        (folder / "val_label.pkl").unlink()
    elif damage == "not_npy":
        (folder / "val_position.npy").write_text("hello")
    elif damage == "object_npy":
        np.save(folder / "val_position.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        for p in folder.iterdir():
            p.unlink()
    out = tmp_path / "out" / "c.h5"
    out.parent.mkdir()
    with pytest.raises(SystemExit) as e:
        cli.main(["prepare", "official", str(folder), "--out", str(out)])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert list(out.parent.iterdir()) == [] and not target.exists()


def test_prepare_official_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    _official_folder(tmp_path / "xview")
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(crossclr, ["prepare", "official", str(tmp_path / "xview"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: train 5, val 3" in result.output
