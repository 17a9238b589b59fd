"""One MAMP pretraining step (official sizes) with fused attention vs the written-out attention of before.

    python benchmarks/bench_mamp_step.py [--threads 2] [--batch 8] [--rounds 4] [--decoder-depth 3]

One view (joint), batch 8, 120 frames, 25 joints, 2 bodies, width 256, 8 encoder blocks, 3 decoder blocks
(NTU-60 preset; ``--decoder-depth 5`` for NTU-120/PKU), AdamW step included. Rows: attention ``exact`` (the
official written-out form, the code before fused attention: ``set_fused_attention(model, False)`` runs it
verbatim, nothing else in the step changed) and ``fused`` (``scaled_dot_product_attention``), each in fp32 and
under bf16 autocast. Prints:

- samples/s per row, timed in interleaved rounds (order rotated each round, so load from other processes hits
  every row), as the median over rounds of wall time and of process CPU time (user + system of all threads;
  steadier than wall time on a shared machine), and every row's ratio to ``exact bf16`` and ``exact fp32``;
- peak resident memory of each row: a fresh subprocess runs two steps and reports its VmHWM (peak RSS);
- the difference between the forms: loss and gradients, max relative difference, fp32 and float64, batch 2.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = (("exact", False), ("exact", True), ("fused", False), ("fused", True))


def build(batch: int, decoder_depth: int, seed: int = 0, dtype: str = "float32"):  # noqa: ANN201
    """(model, optimizer, input) at the official sizes, the same weights for every row."""
    import torch

    from crossclr_infer.layouts import BUILTIN_LAYOUTS
    from training.encoders.config import EncoderConfig
    from training.objectives.mamp import MAMP, MAMPConfig

    torch.manual_seed(seed)
    model = MAMP(BUILTIN_LAYOUTS["ntu-rgb+d"], EncoderConfig(graph="transformer", projector="none"),
                 MAMPConfig(decoder_depth=decoder_depth), views=("joint",), frames=120)
    model = model.to(getattr(torch, dtype))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = (torch.randn(batch, 3, 120, 25, 2, dtype=getattr(torch, dtype)) * 0.1).cumsum(2)  # random walks
    return model, opt, x


def make_step(model, opt, x, fused: bool, bf16: bool):  # noqa: ANN001, ANN201
    import torch

    from training.encoders.transformer import set_fused_attention

    g = torch.Generator().manual_seed(1)

    def step() -> float:
        set_fused_attention(model, fused)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, generator=g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_child(args: argparse.Namespace, fused: bool, bf16: bool) -> float:
    """Peak RSS (MiB) of a fresh process that builds the model and runs two steps of one row: its VmHWM
    (its own address space's high-water mark; a child's ``ru_maxrss`` counts the parent's RSS at fork)."""
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys; sys.path.insert(0, {root!r}); import torch; torch.set_num_threads({args.threads}); "
            "from benchmarks.bench_mamp_step import build, make_step, peak_rss_mib; "
            f"m, o, x = build({args.batch}, {args.decoder_depth}); s = make_step(m, o, x, {fused}, {bf16}); "
            "s(); s(); print(peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM on Linux, else ru_maxrss)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parity(decoder_depth: int) -> dict[str, dict[str, float]]:
    """Max relative difference fused vs exact: loss and every gradient (the worst), fp32 and float64."""
    import torch

    from training.encoders.transformer import set_fused_attention

    out = {}
    for dtype in ("float32", "float64"):
        model, _, x = build(2, decoder_depth, dtype=dtype)
        res = []
        for fused in (True, False):
            set_fused_attention(model, fused)
            model.zero_grad()
            loss = model(x, generator=torch.Generator().manual_seed(1))["loss"]
            loss.backward()
            res.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
        (lf, gf), (le, ge) = res

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

        out[dtype] = {"loss": rel(lf, le), "grad": max(rel(gf[k], ge[k]) for k in gf)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--decoder-depth", type=int, default=3)
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    args = p.parse_args()

    import torch

    from crossclr_infer.hardware import cpu_caps

    torch.set_num_threads(args.threads)
    print(f"# {cpu_caps().line()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{args.threads} threads; batch {args.batch}, decoder depth {args.decoder_depth}")
    model, opt, x = build(args.batch, args.decoder_depth)
    steps = {(a, bf): make_step(model, opt, x, a == "fused", bf) for a, bf in ROWS}
    for s in steps.values():  # warm-up (and the optimizer state)
        s()
    wall: dict = {k: [] for k in steps}
    cpu: dict = {k: [] for k in steps}
    keys = list(steps)
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t, c = time.perf_counter(), cpu_seconds()
            steps[k]()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(cpu_seconds() - c)
    rate = {k: args.batch / statistics.median(v) for k, v in wall.items()}
    crate = {k: args.batch / statistics.median(v) for k, v in cpu.items()}
    rss = {} if args.no_rss else {k: peak_rss_child(args, k[0] == "fused", k[1]) for k in ROWS}
    print("\n## one MAMP step (samples/s: wall | per CPU-second; ratios of wall | CPU rates)")
    print(f"{'attention':9s} {'precision':9s} {'wall':>7s} {'cpu':>7s} {'vs exact bf16':>16s} "
          f"{'vs exact fp32':>16s} {'peak RSS MiB':>13s}")
    for k in ROWS:
        print(f"{k[0]:9s} {'bf16' if k[1] else 'fp32':9s} {rate[k]:7.3f} {crate[k]:7.3f} "
              f"{rate[k] / rate[('exact', True)]:7.2f}x |{crate[k] / crate[('exact', True)]:5.2f}x "
              f"{rate[k] / rate[('exact', False)]:7.2f}x |{crate[k] / crate[('exact', False)]:5.2f}x "
              f"{rss.get(k, float('nan')):13.0f}")
    print("\n## fused vs exact attention, max relative difference (batch 2, one step's loss and gradients)")
    for dtype, d in parity(args.decoder_depth).items():
        print(f"{dtype}: loss {d['loss']:.1e}, gradients (worst tensor) {d['grad']:.1e}")


if __name__ == "__main__":
    main()
