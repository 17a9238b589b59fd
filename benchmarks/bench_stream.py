"""Live-stream latency: a recorded skeleton stream through ``StreamPredictor``, on one core.

    python benchmarks/bench_stream.py [--seconds 8] [--hop 5] [--width official|tiny]

Models: the ST-GCN 3-stream ensemble (joint, motion, bone; ``--width official`` = the official CrosSCLR
encoder, ``EncoderConfig`` defaults; ``tiny`` = the tiny preset's encoder) with **random weights** (random
init, BN statistics randomized, random linear heads: latency does not depend on the weights), exported by
``export.onnx_export.export_models`` as fp32 and int8 (calibrated on a small synthetic cache).

Stream: synthetic NTU-25 performances (``crossclr_infer.synth``) one after another at 30 fps, written as the
JSON lines of ``crossclr predict --stream`` and read back by ``stream.read_frames`` as the CLI does, so every
figure includes parsing, windowing, the model's preprocessing and the model. The process is pinned to one
core (``sched_setaffinity``) and onnxruntime runs with ``threads=1``.

Rows per model: (1) paced at 30 fps (real time), late windows dropped: latency p50/p99 from the arrival of a
window's last frame to its prediction, and p50 as a share of the hop interval (hop / 30 s: below 1 the model
keeps up); (2) as fast as possible, every window predicted (lossless): frames/s sustained with a prediction
every frame (hop 1) and every ``--hop`` frames, and each as a multiple of 30 fps (real-time factor). Then
int8 / fp32 ratios. The first line is the CPU probe; other processes share the cores, so figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STREAMS = ("joint", "motion", "bone")
FPS = 30.0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def pin_one_core() -> str:
    """Pin this process to the first core it may run on; returns a description."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[0]})
        return f"pinned to core {cores[0]} (of {len(cores)} allowed)"
    except (AttributeError, OSError) as e:
        return f"not pinned ({e})"


def build_models(work: Path, width: str) -> tuple[Path, Path, str]:
    """Random-init ST-GCN encoders + heads exported as the fp32 and the int8 ensemble."""
    import torch

    from benchmarks.bench_infer import export_meta, random_encoder
    from crossclr_infer.cache import open_cache
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.config import load_config
    from training.encoders.config import EncoderConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cache = generate_synthetic(work / "synth.h5", classes=4, per_class=10, seed=0)
    cfg = EncoderConfig() if width == "official" else load_config("tiny").model
    with open_cache(cache) as c:
        layout, names = c.layout, list(c.class_names)
    encoders, heads = {}, {}
    for v in STREAMS:
        encoders[v] = random_encoder(layout, cfg)
        heads[v] = torch.nn.Linear(cfg.hidden_dim, len(names)).eval()
    res = export_models(encoders, heads, export_meta(layout, names, cfg), work / "models", streams=STREAMS,
                        data=cache, quantize="int8")
    desc = (f"{width}-width ST-GCN (base {cfg.base_channels}, hidden {cfg.hidden_dim}, blocks "
            f"{list(cfg.stage_blocks)}), random init, 3 streams fused in one graph")
    return res.out_dir / res.files["ensemble"], res.out_dir / res.files["ensemble.int8"], desc


def recorded_stream(seconds: float) -> list[str]:
    """JSON lines of synthetic performances played one after another at 30 fps."""
    from crossclr_infer.layouts import BUILTIN_LAYOUTS
    from crossclr_infer.stream import FrameSpec, clip_frames
    from crossclr_infer.synth import synthesize_raw

    seqs, _ = synthesize_raw(12, 1, seed=0)
    clip = np.concatenate(seqs, axis=1)  # (3, ΣT, V, 2) one after another
    need = int(seconds * FPS)
    while clip.shape[1] < need:
        clip = np.concatenate([clip, clip], axis=1)
    spec = FrameSpec(BUILTIN_LAYOUTS["ntu-rgb+d"], scored=False)
    return [json.dumps(f) for f in clip_frames(clip[:, :need], spec, FPS)]


def paced(lines: list[str]) -> Iterator[str]:
    start = time.perf_counter()
    for i, line in enumerate(lines):
        delay = start + i / FPS - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield line


def run_stream(model: Path, lines: list[str], hop: int, *, pace: bool) -> tuple[list[float], float, int, int]:
    """(latencies ms, wall seconds, predictions, dropped windows) of one pass over the stream."""
    from crossclr_infer.predictor import Predictor
    from crossclr_infer.stream import FrameSpec, StreamPredictor, read_frames

    pred = Predictor(model, ["cpu"], threads=1)
    sp = StreamPredictor(pred, hop=hop, top_k=5)
    pred.predict(np.zeros((3, 50, 25, 2), np.float32) + 0.1, axes="CTVM")  # warm-up
    frames = read_frames(paced(lines) if pace else iter(lines), FrameSpec.for_model(pred.info), "recording")
    t0 = time.perf_counter()
    lat = [p.latency_ms for p in sp.run(frames, lossless=not pace)]
    return lat, time.perf_counter() - t0, sp.stats.predicted, sp.stats.dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the recorded stream")
    ap.add_argument("--hop", type=int, default=5, help="frames between predictions (paced rows, fast rows)")
    ap.add_argument("--width", choices=["official", "tiny"], default="official")
    args = ap.parse_args()

    import logging

    from crossclr_infer.hardware import cpu_caps

    logging.basicConfig(level=logging.ERROR)  # dropped-window warnings are counted in the table instead
    caps = cpu_caps()
    print(f"CPU: {caps.line()}")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_stream."))
    fp32, int8, desc = build_models(work, args.width)
    pin = pin_one_core()
    lines = recorded_stream(args.seconds)
    print(f"# bench_stream: {desc}; exported in {time.perf_counter() - t0:.0f} s; stream {len(lines)} frames "
          f"({args.seconds:g} s at {FPS:g} fps, NTU-25, 1-2 bodies), window 50 frames; one core: {pin}, "
          f"onnxruntime threads=1; load average {load_average()} (shared machine: noisy)")
    rows: dict[str, dict[str, float]] = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        lat, _, n, dropped = run_stream(path, lines, args.hop, pace=True)
        _, wall1, n1, _ = run_stream(path, lines, 1, pace=False)
        _, wall_h, _, _ = run_stream(path, lines, args.hop, pace=False)
        p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99)) if lat else (float("nan"),) * 2
        budget = 1000 * args.hop / FPS
        rows[name] = {"p50": p50, "p99": p99, "fps1": len(lines) / wall1, "fps_h": len(lines) / wall_h}
        print(f"{name}: paced 30 fps, hop {args.hop}: {n} predictions, {dropped} dropped; latency p50 "
              f"{p50:.1f} ms, p99 {p99:.1f} ms; p50 / hop interval ({budget:.0f} ms) = {p50 / budget:.2f}")
        print(f"{name}: as fast as possible: hop 1 ({n1} predictions) {rows[name]['fps1']:.0f} frames/s = "
              f"{rows[name]['fps1'] / FPS:.2f}× real time; hop {args.hop} {rows[name]['fps_h']:.0f} frames/s "
              f"= {rows[name]['fps_h'] / FPS:.2f}× real time")
    f, q = rows["fp32"], rows["int8"]
    print(f"int8 / fp32: latency p50 {q['p50'] / f['p50']:.2f}×, p99 {q['p99'] / f['p99']:.2f}×; frames/s "
          f"hop 1 {q['fps1'] / f['fps1']:.2f}×, hop {args.hop} {q['fps_h'] / f['fps_h']:.2f}×")
    print(f"# total {time.perf_counter() - t0:.0f} s; load average at the end {load_average()}")


if __name__ == "__main__":
    main()
