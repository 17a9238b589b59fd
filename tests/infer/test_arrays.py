"""Generic .npz import: fixed-size, concatenated and per-sample layouts, custom layouts, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.arrays import import_arrays
from crossclr_infer.cache import open_cache
from crossclr_infer.layouts import get_layout
from crossclr_infer.preprocess import normalize_sequence

NTU = get_layout("ntu-rgb+d")
LENGTHS = [7, 12, 9, 15]


def _sequences(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (3, t, 25, 2)).astype(np.float32) + 0.5 for t in LENGTHS]


def _meta() -> dict[str, np.ndarray]:
    return {"label": np.array([0, 2, 1, 2]), "name": np.array(["a", "b", "c", "d"]),
            "split": np.array(["train", "val", "train", "val"]), "class_names": np.array(["x", "y", "z"])}


def test_fixed_size_as_is(tmp_path: Path) -> None:
    data = np.random.default_rng(1).standard_normal((4, 3, 10, 25, 2)).astype(np.float32)
    data[1, :, 6:] = 0  # zero padded
    np.savez(tmp_path / "a.npz", data=data, **_meta())
    counts = import_arrays(tmp_path / "a.npz", tmp_path / "c.h5", layout="ntu-rgb+d", progress=False)
    assert counts == {"train": 2, "val": 2}
    with open_cache(tmp_path / "c.h5") as c:
        assert c.frames == 10 and c.preprocess == {"mode": "as-is", "frames": 10}
        assert c.class_names == ["x", "y", "z"] and c.benchmark == "custom"
        np.testing.assert_array_equal(c.split("train").read_all(), data[[0, 2]])
        np.testing.assert_array_equal(c.split("val").read_all(), data[[1, 3]])
        assert c.split("val").names == ["b", "d"] and c.split("val").labels.tolist() == [2, 2]
        assert c.split("val").lengths.tolist() == [6, 10]


@pytest.mark.parametrize("layout_kind", ["lengths", "offsets", "per-sample"])
def test_variable_length_layouts_go_through_the_one_preprocessing(tmp_path: Path, layout_kind: str) -> None:
    seqs = _sequences()
    meta = _meta()
    meta["split"] = np.array([0, 1, 0, 1])  # integer split form
    if layout_kind == "per-sample":
        arrays = {f"data_{i}": x for i, x in enumerate(seqs)}
    else:
        arrays = {"data": np.concatenate(seqs, axis=1)}  # (C, F, V, M)
        if layout_kind == "lengths":
            arrays["lengths"] = np.array(LENGTHS)
        else:
            arrays["offsets"] = np.concatenate([[0], np.cumsum(LENGTHS)])
    np.savez_compressed(tmp_path / "v.npz", **arrays, **meta)
    import_arrays(tmp_path / "v.npz", tmp_path / "c.h5", layout="ntu-rgb+d", frames=20, progress=False)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.frames == 20 and c.preprocess == {"mode": "official", "frames": 20}
        train = c.split("train")
        for k, i in enumerate([0, 2]):
            np.testing.assert_array_equal(train[k][0], normalize_sequence(seqs[i], NTU, mode="official",
                                                                          frames=20))
        assert train.lengths.tolist() == [7, 9]


def test_preprocess_none_pads_and_defaults(tmp_path: Path) -> None:
    seqs = _sequences()
    np.savez(tmp_path / "v.npz", data=np.concatenate(seqs, axis=1), lengths=np.array(LENGTHS),
             label=np.array([0, 1, 0, 1]))
    import_arrays(tmp_path / "v.npz", tmp_path / "c.h5", layout="ntu-rgb+d", preprocess="none", frames=12,
                  progress=False)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.splits == ["train"] and c.class_names == ["class 0", "class 1"]
        s = c.split("train")
        assert s.names == ["sample000000", "sample000001", "sample000002", "sample000003"]
        x0 = s[0][0]
        np.testing.assert_array_equal(x0[:, :7], seqs[0])
        assert not x0[:, 7:].any()  # zero padded to 12
        np.testing.assert_array_equal(s[3][0], seqs[3][:, :12])  # cropped


def test_custom_toml_layout_two_channels_as_is(tmp_path: Path) -> None:
    toml = tmp_path / "stick.toml"
    toml.write_text('name = "stick"\njoints = ["hip", "chest", "head", "hand"]\n'
                    'parents = ["chest", "chest", "chest", "chest"]\ncenter = "chest"\n')
    data = np.random.default_rng(2).standard_normal((3, 2, 8, 4, 1)).astype(np.float32)  # 2-D keypoints
    np.savez(tmp_path / "s.npz", data=data, label=np.array([0, 1, 1]),
             split=np.array(["train", "val", "val"]))
    import_arrays(tmp_path / "s.npz", tmp_path / "c.h5", layout=str(toml), progress=False)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.layout == get_layout(toml) and c.num_channels == 2 and c.num_person == 1
        np.testing.assert_array_equal(c.split("val").read_all(), data[1:])


def _bad(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    p = tmp_path / "in.npz"
    seqs = _sequences()
    good = {"data": np.concatenate(seqs, axis=1), "lengths": np.array(LENGTHS), **_meta()}
    args: list[str] = []
    if kind == "not_zip":
        p.write_text("garbage")
        return p, args
    if kind == "truncated":
        np.savez(p, **good)
        p.write_bytes(p.read_bytes()[:300])
        return p, args
    if kind == "object":
        good["name"] = np.array([{"x": 1}] * 4, dtype=object)
        np.savez(p, **good, allow_pickle=True)
        return p, args
    if kind == "no_label":
        del good["label"]
    elif kind == "joints":
        good["data"] = good["data"][:, :, :20]
    elif kind == "lengths_sum":
        good["lengths"] = np.array([7, 12, 9, 14])
    elif kind == "both_lengths_offsets":
        good["offsets"] = np.array([0, 7, 19, 28, 43])
    elif kind == "split_values":
        good["split"] = np.array(["train", "test", "val", "val"])
    elif kind == "class_names":
        good["class_names"] = np.array(["x", "y"])
    elif kind == "label_count":
        good["data"] = np.zeros((3, 3, 10, 25, 2), np.float32)
        del good["lengths"]
    elif kind == "unknown_key":
        good["extra"] = np.zeros(2)
    elif kind == "nan":
        good["data"][0, 0, 0, 0] = np.nan
    elif kind == "two_channels_official":
        good["data"] = good["data"][:2]
    elif kind == "as_is_unequal":
        args = ["--preprocess", "as-is"]
    elif kind == "empty_sample":
        good["data"][:, :7, 0, 0] = 0  # sample 'a': body 0 joint 1 zero everywhere
    elif kind == "unknown_layout":
        args = ["--layout", "nope"]
    np.savez(p, **good)
    return p, args


BAD = {
    "not_zip": "not a readable .npz archive", "truncated": "not a readable|damaged",
    "object": "cannot be read",
    "no_label": "no 'label' key", "joints": "20 joints in the data, layout 'ntu-rgb\\+d' has 25",
    "lengths_sum": "sum to the 43 frames", "both_lengths_offsets": "exactly one of 'lengths'",
    "split_values": "'split' values \\['test'\\]", "class_names": "label 2 but only 2 class names",
    "label_count": "'data' holds 3 samples but 'label' 4", "unknown_key": "unknown keys \\['extra'\\]",
    "nan": "NaN or infinite", "two_channels_official": "needs 3 \\(x, y, z\\)",
    "as_is_unequal": "sample 'a' has 7 frames; --preprocess as-is needs all samples to have 50",
    "empty_sample": "sample 'a': no skeleton", "unknown_layout": "unknown layout 'nope'",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_npz_exits_nonzero_with_one_line_and_no_output(tmp_path: Path, capsys, kind: str) -> None:
    import cli

    src, extra = _bad(tmp_path, kind)
    out = tmp_path / "out" / "c.h5"
    out.parent.mkdir()
    argv = ["prepare", "arrays", str(src), "--layout", "ntu-rgb+d", "--out", str(out), *extra]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(BAD[kind], err), err
    assert list(out.parent.iterdir()) == []


def test_prepare_arrays_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    seqs = _sequences()
    np.savez(tmp_path / "v.npz", **{f"data_{i}": x for i, x in enumerate(seqs)}, **_meta())
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(crossclr, ["prepare", "arrays", str(tmp_path / "v.npz"), "--layout",
                                           "ntu-rgb+d", "--out", str(out), "--frames", "16"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: train 2, val 2" in result.output
    info = CliRunner().invoke(crossclr, ["info", str(out)])
    assert info.exit_code == 0 and '"mode": "official"' in info.output and "(3, 16, 25, 2)" in info.output


@pytest.mark.parametrize(("layout", "mode"), [("coco-17", "pose2d"), ("openpose-body25", "pose2d"),
                                              ("ntu-rgb+d", "official"), ("mediapipe-pose-33", "official")])
def test_default_preprocessing_follows_the_layouts_scored_field(tmp_path: Path, layout: str, mode: str
                                                                ) -> None:
    """Sequences default to pose2d for scored layouts, official for the others; a layout read back from a
    cache (its TOML text has no ``scored`` key) is as scored as the built-in."""
    lay = get_layout(layout)
    rng = np.random.default_rng(3)
    seqs = [rng.uniform(0.1, 1, (3, t, lay.num_joints, 1)).astype(np.float32) for t in (6, 9)]
    np.savez(tmp_path / "s.npz", data_0=seqs[0], data_1=seqs[1], label=np.array([0, 1]))
    import_arrays(tmp_path / "s.npz", tmp_path / "a.h5", layout=layout, frames=8, progress=False)
    with open_cache(tmp_path / "a.h5") as c:
        assert c.preprocess["mode"] == mode and c.layout == lay and c.layout.scored is lay.scored
        again = c.layout
    import_arrays(tmp_path / "s.npz", tmp_path / "b.h5", layout=again, frames=8, progress=False)
    with open_cache(tmp_path / "b.h5") as c:
        assert c.preprocess["mode"] == mode


# ------------------------------------------------------------------------------------- --bodies M
def _one_body_npz(path: Path) -> list[np.ndarray]:
    seqs = [x[..., :1] for x in _sequences(3)]  # (3, T, 25, 1) a one-body data set
    np.savez(path, **{f"data_{i}": x for i, x in enumerate(seqs)}, **_meta())
    return seqs


@pytest.mark.parametrize("mode", ["official", "pose2d", "as-is"])
def test_bodies_pads_a_one_body_data_set_with_a_zero_second_body(tmp_path: Path, mode: str) -> None:
    seqs = _one_body_npz(tmp_path / "one.npz")
    frames = None if mode != "as-is" else 7
    if mode == "as-is":  # as-is needs equal lengths
        np.savez(tmp_path / "one.npz", data=np.stack([x[:, :7] for x in seqs]), **_meta())
    kept, padded = tmp_path / "m1.h5", tmp_path / "m2.h5"
    kw = {"layout": "ntu-rgb+d", "preprocess": mode, "progress": False, "frames": frames or 20}
    import_arrays(tmp_path / "one.npz", kept, **kw)  # default: the data's M = 1
    import_arrays(tmp_path / "one.npz", padded, bodies=2, **kw)
    with open_cache(kept) as c1, open_cache(padded) as c2:
        assert c1.num_person == 1 and c1.sample_shape[3] == 1
        assert c2.num_person == 2 and c2.sample_shape == c1.sample_shape[:3] + (2,)
        for split in ("train", "val"):
            one, two = c1.split(split).read_all(), c2.split(split).read_all()  # (N, C, T, V, M)
            np.testing.assert_array_equal(two[..., :1], one)
            assert not two[..., 1].any()
            assert c2.split(split).lengths.tolist() == c1.split(split).lengths.tolist()
        if mode != "as-is":  # the zero body changes nothing: preprocessing the padded data by hand agrees
            x = np.concatenate([seqs[0], np.zeros_like(seqs[0])], axis=3)
            np.testing.assert_array_equal(c2.split("train").read_all()[0],
                                          normalize_sequence(x, NTU, mode=mode, frames=20))


def test_bodies_keeps_the_first_bodies_and_the_cli_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    seqs = _sequences(4)
    np.savez(tmp_path / "two.npz", **{f"data_{i}": x for i, x in enumerate(seqs)}, **_meta())
    out = tmp_path / "m1.h5"
    result = CliRunner().invoke(crossclr, ["prepare", "arrays", str(tmp_path / "two.npz"), "--layout",
                                           "ntu-rgb+d", "--out", str(out), "--frames", "20", "--bodies", "1"])
    assert result.exit_code == 0, result.output
    with open_cache(out) as c:
        assert c.num_person == 1
        np.testing.assert_array_equal(c.split("train").read_all()[0],
                                      normalize_sequence(seqs[0][..., :1], NTU, mode="official", frames=20))
    bad = CliRunner().invoke(crossclr, ["prepare", "arrays", str(tmp_path / "two.npz"), "--layout",
                                        "ntu-rgb+d", "--out", str(tmp_path / "x.h5"), "--bodies", "0"])
    assert bad.exit_code != 0 and "--bodies" in bad.output and not (tmp_path / "x.h5").exists()
