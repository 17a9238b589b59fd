"""Plots (viz extra): t-SNE, training curves from metrics.jsonl, confusion matrices; PNGs are real images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from tests.helpers import protocol_args, run_cli, write_cache, write_pretrain  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _metrics(path, epochs=3, steps=4):
    with path.open("w") as f:
        for e in range(epochs):
            for s in range(steps):
                step = e * steps + s
                f.write(
                    json.dumps(
                        {
                            "epoch": e,
                            "step": step,
                            "loss": 10 - step,
                            "loss_joint": 5 - step / 2,
                            "loss_motion": 5 - step / 2,
                            "lr": 0.1 if e < 2 else 0.01,
                        }
                    )
                    + "\n"
                )
        f.write("\n")
    return path


def test_confusion_matrix_counts():
    from crossclr_infer.metrics import confusion_matrix

    labels, predictions = np.array([0, 1, 2, 2, 2, 0]), np.array([0, 1, 1, 2, 2, 2])
    cm = confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 1, 0], [0, 1, 2]])


def test_summarize_metrics_means_per_epoch(tmp_path):
    from training.plots import read_metrics, summarize_metrics

    rows = summarize_metrics(read_metrics(_metrics(tmp_path / "metrics.jsonl")))
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["step"] == 7 and rows[1]["loss"] == pytest.approx(10 - np.mean([4, 5, 6, 7]))
    assert rows[2]["loss_joint"] == pytest.approx(5 - np.mean([8, 9, 10, 11]) / 2) and rows[2]["lr"] == 0.01


def test_cli_plot_metrics_writes_a_png_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _metrics(run / "metrics.jsonl")
    code, out, err = run_cli(["plot-metrics", str(run), "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert "loss_motion" in out
    w, h = _png_size(run / "curves.png")
    assert w > 200 and h > 100
    assert len(json.loads((tmp_path / "m.json").read_text())["epochs"]) == 3
    (run / "bad.jsonl").write_text('{"epoch": 0}\nnot json\n')
    code, _, err = run_cli(["plot-metrics", str(run / "bad.jsonl")], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "line 2" in err


def test_cli_tsne_and_linear_plots(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5", train=4, val=5)
    ck = write_pretrain(tmp_path / "p.pt", cache, streams=["joint", "motion"])
    code, out, err = run_cli(
        [
            "tsne",
            "--data",
            str(cache),
            "--checkpoint",
            str(ck),
            "--out",
            str(tmp_path / "t"),
            "--streams",
            "motion",
            "--perplexity",
            "5",
        ],
        capsys,
    )
    assert code == 0, err
    assert "motion" in out
    _png_size(tmp_path / "t" / "tsne_motion.png")
    assert not (tmp_path / "t" / "tsne_joint.png").exists()
    code, _, err = run_cli(
        protocol_args("linear", cache, ck, "--out", str(tmp_path / "l"), "--epochs", "2", "--plots"),
        capsys,
    )
    assert code == 0, err
    for name in ("confusion.png", "linear_curves.png"):
        _png_size(tmp_path / "l" / name)
    code, _, err = run_cli(protocol_args("knn", cache, ck, "--plots", str(tmp_path / "k")), capsys)
    assert code == 0, err
    _png_size(tmp_path / "k" / "knn_confusion.png")
    assert not [p for d in ("t", "l", "k") for p in (tmp_path / d).iterdir() if p.name.startswith(".")]


def test_tsne_embedding_separates_separable_clusters():
    from training.plots import tsne_embed

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(20, 16)) * 0.05 + c for c in np.eye(16)[:3] * 3])
    pts = tsne_embed(x, perplexity=5)
    y = np.repeat(np.arange(3), 20)
    cent = np.stack([pts[y == c].mean(0) for c in range(3)])
    nearest = np.argmin(((pts[:, None] - cent[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y).mean() == 1.0


def test_summarize_prefers_the_trainers_epoch_records(tmp_path):
    from training.plots import plot_metrics, read_metrics, summarize_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"kind": "step", "epoch": 1, "step": 1, "loss": 4.0, "lr": 0.1, "mining_precision": None},
                {"kind": "step", "epoch": 1, "step": 2, "loss": 2.0, "lr": 0.1, "mining_precision": 0.5},
                {"kind": "epoch", "epoch": 1, "step": 2, "loss": 2.5, "lr": 0.1, "mining_precision": 0.4},
            ]
        )
    )
    rows = read_metrics(p)
    (row,) = summarize_metrics(rows)
    assert row["loss"] == 2.5 and row["mining_precision"] == 0.4 and row["step"] == 2
    _png_size(plot_metrics(rows, tmp_path / "c.png"))
