"""Two-process DDP on CPU (gloo): it trains, both ranks hold identical queues, and it resumes exactly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.test_trainer import TINY_OVERRIDES, make_toy_cache

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cache: str, out: str, dump: str, stop: int | None, resume: bool) -> None:
    """One rank: environment as torchrun sets it, then the ordinary training entry point."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from training.config import load_config
    from training.trainer import train

    cfg = load_config("tiny", {**TINY_OVERRIDES, "deterministic": True})
    res = train(cfg, cache, out, resume=resume, progress=False, stop_after_epochs=stop)
    state = {k: v.detach().clone() for k, v in res.model.state_dict().items()}
    torch.save({"state": state, "epochs_done": res.epochs_done}, Path(dump) / f"rank{rank}.pt")


def _run(cache: Path, out: Path, dump: Path, *, stop: int | None = None, resume: bool = False) -> list[dict]:
    dump.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(_free_port(), str(cache), str(out), str(dump), stop, resume), nprocs=WORLD,
             join=True)
    return [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_two_process_ddp_trains_syncs_queues_and_resumes(tmp_path: Path) -> None:
    cache = make_toy_cache(tmp_path / "toy.h5", per_class=12)  # 36 samples: 18 per rank, 2 steps of 8
    full = _run(cache, tmp_path / "full", tmp_path / "d_full")
    r0, r1 = full[0]["state"], full[1]["state"]
    assert full[0]["epochs_done"] == full[1]["epochs_done"] == 2
    # all-gathered keys: the queues and their pointer are identical on both ranks ...
    queue_keys = [k for k in r0 if k.startswith("queue.")]
    assert len(queue_keys) == 5  # keys_joint/motion/bone, labels, ptr
    for k in queue_keys:
        assert torch.equal(r0[k], r1[k]), k
    # ... and hold 2 ranks x 8 keys per step x 2 steps x 2 epochs = 64 entries written into a queue of 24
    assert int(r0["queue.ptr"]) == 64 % 24
    assert (r0["queue.labels"] >= 0).all()
    # DDP averaged the gradients and the epoch end averaged BN statistics: both ranks hold the same model
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=1e-6, msg=k)
    # only rank 0 wrote the run folder, with the checkpoint and the metrics
    ckpt = torch.load(tmp_path / "full" / "pretrain.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == WORLD
    for k in ckpt["model"]:
        assert torch.equal(ckpt["model"][k], r0[k]), k

    # a run stopped after epoch 1 and resumed ends with the same weights as the unbroken run
    _run(cache, tmp_path / "cut", tmp_path / "d_cut", stop=1)
    resumed = _run(cache, tmp_path / "cut", tmp_path / "d_res", resume=True)
    assert resumed[0]["epochs_done"] == 2
    for k in r0:
        assert torch.equal(resumed[0]["state"][k], r0[k]), k
        assert torch.equal(resumed[1]["state"][k], r1[k]), k
