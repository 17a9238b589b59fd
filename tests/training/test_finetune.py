"""Semi-supervised subsets (stratified, seeded) and fine-tuning of encoder + head."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from tests.training.protocol_helpers import protocol_setup, run_protocol  # noqa: E402


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_stratified_subset_counts_per_class(fraction):
    from training.protocols.finetune import stratified_subset

    counts = np.array([200, 55, 7, 1, 120])
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))
    idx = stratified_subset(y, fraction, seed=3)
    assert len(np.unique(idx)) == len(idx) and (np.diff(idx) > 0).all()
    got = np.bincount(y[idx], minlength=5)
    want = np.maximum(1, np.floor(fraction * counts + 0.5)).astype(int)
    np.testing.assert_array_equal(got, want)  # every class present, in proportion
    if fraction == 1.0:
        np.testing.assert_array_equal(idx, np.arange(len(y)))


def test_stratified_subset_is_reproducible_and_seed_dependent():
    from training.protocols.finetune import stratified_subset

    y = np.repeat(np.arange(10), 50)
    a, b = stratified_subset(y, 0.1, seed=7), stratified_subset(y, 0.1, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stratified_subset(y, 0.1, seed=8))
    # classes that are absent are skipped, not invented
    z = y[y != 3]
    assert set(z[stratified_subset(z, 0.1, 0)].tolist()) == set(range(10)) - {3}


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range_is_an_error(fraction):
    from crossclr_infer.errors import CrossclrError
    from training.protocols.finetune import stratified_subset

    with pytest.raises(CrossclrError, match=r"\(0, 1\]"):
        stratified_subset(np.arange(10), fraction)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return protocol_setup(tmp_path_factory.mktemp("ft"), ["joint", "bone"], train=6, val=3)


@pytest.mark.parametrize("fraction", ["0", "1.01", "-1"])
def test_cli_fraction_out_of_range_is_a_one_line_error(setup, capsys, fraction):
    code, _, err = run_protocol(capsys, "finetune", setup, "--out", str(setup["dir"] / "bad"),
                                "--label-fraction", fraction)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "label-fraction" in err, err


def test_cli_finetune_trains_encoders_and_writes_a_linear_format_checkpoint(setup, capsys):
    from crossclr_infer.cache import open_cache
    from training.protocols.finetune import stratified_subset
    from training.protocols.io import load_linear

    out = setup["dir"] / "ft"
    code, stdout, err = run_protocol(capsys, "finetune", setup, "--out", str(out), "--label-fraction", "0.5",
                                     "--epochs", "2", "--batch-size", "4", "--eval-every", "1", "--augment",
                                     "--json", str(out / "r.json"))
    assert code == 0, err
    assert "fused" in stdout
    rep = json.loads((out / "r.json").read_text())
    with open_cache(setup["cache"]) as c:
        with_labels = np.asarray(c.split("train").labels)
    assert rep["num_labelled"] == len(stratified_subset(with_labels, 0.5, 0)) == 12
    assert len(rep["history"]) == 2 and "fused_top1" in rep["history"][-1]
    encoders, heads, meta = load_linear(out / "finetune.pt")
    assert meta["streams"] == ["joint", "bone"] and meta["label_indices"] == rep_indices(with_labels)
    pre = torch.load(setup["ckpt"], weights_only=True)["model"]
    changed = [
        k
        for k, t in encoders["joint"].state_dict().items()
        if not torch.equal(t, pre[f"encoders_q.joint.{k}"])
    ]
    assert any(k.endswith("weight") for k in changed) and any("running_mean" in k for k in changed)


def rep_indices(labels):
    from training.protocols.finetune import stratified_subset

    return stratified_subset(labels, 0.5, 0).tolist()


def test_finetune_same_seed_same_result(setup):
    from crossclr_infer.cache import open_cache
    from training.protocols.finetune import FinetuneConfig, finetune, stratified_subset
    from training.protocols.io import load_any_encoders

    heads = []
    with open_cache(setup["cache"]) as c:
        tr = c.split("train")
        for _ in range(2):
            enc, _, _ = load_any_encoders(setup["ckpt"], ["joint"])
            cfg = FinetuneConfig(label_fraction=0.5, epochs=1, batch_size=4, augment=True, seed=5)
            torch.manual_seed(0)  # dropout draws from the global generator
            res = finetune(
                enc,
                None,
                tr.read,
                tr.labels,
                stratified_subset(tr.labels, 0.5, 5),
                None,
                None,
                c.layout,
                c.num_class,
                cfg,
                {"joint": 1.0},
            )
            heads.append(res.heads["joint"].weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1])


def _cli_finetune(setup, capsys, out, seed):
    code, _, err = run_protocol(capsys, "finetune", setup, "--out", str(out), "--label-fraction", "0.5",
                                "--epochs", "2", "--batch-size", "4", "--eval-every", "1",
                                "--seed", str(seed), "--json", str(out / "r.json"))
    assert code == 0, err
    rep = json.loads((out / "r.json").read_text())
    return rep["history"], torch.load(out / "finetune.pt", weights_only=True)


def test_cli_finetune_is_determined_by_its_seed(setup, capsys):
    """Dropout (on in the tiny encoder's blocks) draws from the global generator: ``run_finetune`` seeds
    it, so whatever state the process is in, the same --seed gives the same run; the caller's state is
    kept."""
    runs = []
    for k, seed in enumerate((3, 3, 4)):
        torch.manual_seed(1000 + k)  # a different global state before each run
        before = torch.random.get_rng_state()
        runs.append(_cli_finetune(setup, capsys, setup["dir"] / f"seeded{k}", seed))
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is restored
    (h0, c0), (h1, c1), (h2, c2) = runs
    assert h0 == h1
    for view, state in c0["encoders"].items():
        for key, t in state.items():
            assert torch.equal(t, c1["encoders"][view][key]), (view, key)
    assert h0 != h2
    assert any(not torch.equal(t, c2["encoders"]["joint"][k]) for k, t in c0["encoders"]["joint"].items())


def test_finetune_with_adamw_trains_and_a_bad_optimizer_is_refused(setup):
    from crossclr_infer.errors import CrossclrError
    from training.protocols.finetune import FinetuneConfig, run_finetune

    with pytest.raises(CrossclrError, match="optimizer 'adam'"):
        FinetuneConfig(optimizer="adam")
    reps = {}
    for opt in ("sgd", "adamw"):
        cfg = FinetuneConfig(label_fraction=1.0, epochs=2, batch_size=4, lr=1e-3, optimizer=opt, seed=2)
        reps[opt] = run_finetune(setup["cache"], setup["ckpt"], setup["dir"] / f"opt-{opt}",
                                 streams=["joint"], cfg=cfg)
        assert reps[opt]["config"]["optimizer"] == opt
    assert reps["sgd"]["history"][-1]["loss"] != reps["adamw"]["history"][-1]["loss"]
    state = torch.load(setup["dir"] / "opt-adamw" / "finetune.pt", weights_only=True)["encoders"]["joint"]
    pre = torch.load(setup["ckpt"], weights_only=True)["model"]
    weights = [k for k in state if k.endswith("weight")]
    assert any(not torch.equal(state[k], pre[f"encoders_q.joint.{k}"]) for k in weights)


def test_cli_finetune_optimizer_flag_reaches_the_run_and_a_bad_one_is_a_usage_error(setup, capsys):
    out = setup["dir"] / "cli-adamw"
    code, _, err = run_protocol(capsys, "finetune", setup, "--out", str(out), "--epochs", "1", "--batch-size",
                                "4", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05",
                                "--json", str(out / "r.json"))
    assert code == 0, err
    config = json.loads((out / "r.json").read_text())["config"]
    assert config["optimizer"] == "adamw" and config["weight_decay"] == 0.05
    code, _, err = run_protocol(capsys, "finetune", setup, "--out", str(setup["dir"] / "cli-adam"),
                                "--optimizer", "adam")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--optimizer" in err, err
