"""Pooled pretraining data: several caches of one layout as one training set (``train --data a.h5,b.h5``),
and the pooled benchmark's caches holding training samples only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

import cli  # noqa: E402
from crossclr_infer.cache import CacheWriter  # noqa: E402
from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import get_layout  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def toy(path: Path, classes: list[str], *, per_class: int = 3, layout: str = "ntu-rgb+d", frames: int = 12,
        seed: int = 0, tag: str = "x") -> Path:
    lay = get_layout(layout)
    rng = np.random.default_rng(seed)
    with CacheWriter(path, layout=lay, class_names=classes, benchmark="toy", frames=frames, num_person=2,
                     preprocess={"mode": "none", "frames": frames}) as w:
        for split, n in (("train", per_class), ("val", 1)):
            for c in range(len(classes)):
                for i in range(n):
                    x = rng.normal(scale=0.3, size=(3, frames, lay.num_joints, 2)).astype(np.float32)
                    w.add(split, x, c, f"{tag}-{split}-{c}-{i}", frames)
    return path


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    return (toy(d / "a.h5", ["walk", "sit"], tag="a"),
            toy(d / "b.h5", ["sit", "wave", "run"], per_class=2, seed=1, tag="b"))


@pytest.mark.parametrize("preload", [False, True])
def test_pooled_caches_are_one_training_set(two, preload):
    from crossclr_infer.cache import open_cache
    from training.data import PooledDataset, data_identity, open_train_data

    a, b = two
    data = open_train_data(f"{a},{b}", batch_size=4, preload=preload)
    try:
        ds = data.dataset
        assert isinstance(ds, PooledDataset) and len(ds) == 6 + 6 and data.sources == (a, b)
        assert data.cache.class_names == ["walk", "sit", "wave", "run"]  # "sit" is one class
        assert ds.names[:6] == [f"a/a-train-{c}-{i}" for c in range(2) for i in range(3)]
        assert ds.names[6:] == [f"b/b-train-{c}-{i}" for c in range(3) for i in range(2)]
        want = [0, 0, 0, 1, 1, 1] + [1, 1, 2, 2, 3, 3]  # b's labels through the class names
        assert ds.labels.tolist() == want
        with open_cache(a) as ca, open_cache(b) as cb:
            ref = np.concatenate([ca.split("train").read_all(), cb.split("train").read_all()])
        for i in (0, 5, 6, 11):
            x, y = ds[i]
            np.testing.assert_array_equal(x.numpy(), ref[i])
            assert int(y) == want[i]
        ident = data_identity(data)
        assert ident["samples"] == 12 and [s["samples"] for s in ident["sources"]] == [6, 6]
        assert [Path(s["path"]) for s in ident["sources"]] == [a.resolve(), b.resolve()]
    finally:
        data.cache.close()


def test_pooling_refuses_other_layouts_frames_and_repeats(two, tmp_path):
    from training.data import open_train_data

    a, _ = two
    k = toy(tmp_path / "k.h5", ["walk"], layout="kinect-v1", tag="k")
    with pytest.raises(CrossclrError) as e:
        open_train_data([a, k], batch_size=2)
    msg = str(e.value)
    assert "\n" not in msg and str(k) in msg and "kinect-v1" in msg and "--to-layout" in msg
    f = toy(tmp_path / "f.h5", ["walk"], frames=10, tag="f")
    with pytest.raises(CrossclrError, match="frames 10 differs"):
        open_train_data([a, f], batch_size=2)
    with pytest.raises(CrossclrError, match="named twice"):
        open_train_data(f"{a},{a}", batch_size=2)


def test_train_on_a_comma_list_records_every_source(two, tmp_path, capsys):
    a, b = two
    out = tmp_path / "run"
    code = 0
    try:
        cli.main(["train", "--data", f"{a},{b}", "--config", "tiny", "--out", str(out), "--epochs", "1",
                  "--batch-size", "4", "--device", "cpu", "--no-progress", "--streams", "joint"])
    except SystemExit as e:
        code = e.code
    assert code in (0, None), capsys.readouterr().err
    ckpt = torch.load(out / "pretrain.pt", weights_only=True)
    sources = ckpt["data"]["sources"]
    assert [Path(s["path"]) for s in sources] == [a.resolve(), b.resolve()]
    assert ckpt["data"]["samples"] == 12 and ckpt["class_names"] == ["walk", "sit", "wave", "run"]


# ---------------------------------------------------------------------------- the pooled benchmark's caches


def _synthetic_set(name: str, layout: str | Path, subjects: int = 4, per: int = 3):
    from benchmarks import real_datasets as rd

    lay = get_layout(layout)
    rng = np.random.default_rng(0)
    samples = []
    for s in range(1, subjects + 1):
        for a in range(per):
            data = rng.normal(size=(3, 8 + a, lay.num_joints, 1)).astype(np.float32)
            samples.append(rd.Sample(f"{name}_a{a:02d}_s{s:02d}", a, f"s{s:02d}", data))
    return rd.RealDataset(name, lay, tuple(f"action {a}" for a in range(per)), tuple(samples))


def _check_no_test_sample(sets, work: Path):
    from benchmarks import pooled

    caches = [pooled.prepare_cache(ds, pooled.train_only(sp), work / f"{k}.h5", 8, to_layout="kinect-v1")
              for k, (ds, sp) in sets.items()]
    test_ids = pooled.test_names_of(sets)
    names = {n for c in caches for n in pooled.cache_names(c)}
    assert test_ids and not names & test_ids  # no test sample is pretrained on
    assert names == {ds.samples[i].name for ds, sp in sets.values() for i in sp.train}
    pooled.assert_no_test_ids(caches, test_ids)
    return caches


def test_pretraining_caches_hold_no_test_sample_synthetic(tmp_path):
    from benchmarks import pooled
    from benchmarks import real_datasets as rd
    from training.data import open_train_data

    sets = {}
    for name, layout in (("utkinect", "kinect-v1"), ("msr-action3d", rd.MSR_LAYOUT)):
        ds = _synthetic_set(name, layout)
        sets[name] = (ds, rd.cross_subject_odd_even(ds))
    caches = _check_no_test_sample(sets, tmp_path)
    data = open_train_data(caches, batch_size=2)  # MSR mapped to kinect-v1: the two pool
    try:
        assert data.layout == get_layout("kinect-v1") and len(data.dataset) == 12
    finally:
        data.cache.close()
    full = pooled.prepare_cache(*sets["msr-action3d"], tmp_path / "full.h5", 8, to_layout="kinect-v1")
    with pytest.raises(SystemExit, match="test samples"):  # a cache with the test split is refused
        pooled.assert_no_test_ids([full], pooled.test_names_of(sets))


@pytest.mark.skipif(not (SHARED / "msr_action3d").is_dir() or not (SHARED / "utkinect").is_dir(),
                    reason="../shared/data (MSR Action3D, UTKinect) is not on this machine")
def test_pretraining_caches_hold_no_test_sample_real(tmp_path):
    from benchmarks import real_datasets as rd

    sets = {}
    for name in ("msr", "utkinect"):
        ds = rd.load_dataset(name, SHARED)
        sets[name] = (ds, rd.standard_splits(ds)[0])
    _check_no_test_sample(sets, tmp_path)


def test_train_refuses_an_out_folder_holding_a_pooled_cache(two, tmp_path, capsys):
    a, _ = two
    (tmp_path / "inside").mkdir()
    other = toy(tmp_path / "inside" / "c.h5", ["walk", "sit"], tag="c")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", f"{a},{other}", "--config", "tiny", "--out", str(tmp_path / "inside"),
                  "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and "\n" not in err and "holding the input --data" in err and str(other) in err


def test_nan_in_a_pooled_cache_names_that_cache_and_sample(two, tmp_path):
    import h5py

    from training.data import check_batch, open_train_data

    a, _ = two
    bad = toy(tmp_path / "bad.h5", ["walk", "sit"], tag="bad")
    with h5py.File(bad, "a") as f:
        f["train"]["data"][4, 0, 0, 0, 0] = np.nan  # sample "bad-train-1-1": pooled index 6 + 4
    data = open_train_data([a, bad], batch_size=2)
    try:
        with pytest.raises(CrossclrError) as e:  # the reader names the source cache and its sample
            data.dataset[10]
        assert str(bad) in str(e.value) and "'bad-train-1-1'" in str(e.value)
        idx = [1, 9]  # and so does the batch check, for a batch that went bad after reading
        x = torch.stack([data.dataset[i][0] for i in idx])
        x[1, 0, 0, 0, 0] = float("nan")
        with pytest.raises(CrossclrError) as e:
            check_batch(x, data, idx)
        assert str(bad) in str(e.value) and "'bad-train-1-0'" in str(e.value) and "index 3" in str(e.value)
        with pytest.raises(CrossclrError, match="bad-train-1-1"):
            open_train_data([a, bad], batch_size=2, preload=True)
    finally:
        data.cache.close()
