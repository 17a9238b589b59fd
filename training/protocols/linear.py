"""Linear evaluation: frozen encoders, one linear head per stream, trained on features encoded once.

Nothing before the heads changes (encoders in eval mode, no augmentation), so the train and evaluation splits
are encoded once and the heads train on those cached features. ``ReencodingFeatures`` re-runs the encoders
for every batch instead (the official way); with the same seed both give the same heads (tested), and
``benchmarks/bench_linear.py`` measures the speed-up.

Official schedule (docs/design.md §3): SGD lr 3.0, momentum 0.9, no weight decay, lr × 0.1 at epoch 80 of 100
(the milestone scales with ``epochs``), batch 128. ``fusion="joint"`` trains all heads on the mean of their
logits (official 3-stream); ``"separate"`` trains each head on its own loss and fuses with weights.

A probe whose loss diverges (``divergence``: not finite, or far above chance for several epochs) stops with
one line naming ``--standardize`` and a lower ``--lr`` (the rule and its measurement: docs/protocols.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.metrics import (
    FUSED,
    FUSIONS,
    check_fusion_weights,
    fuse_logits,
    fusion_weights_for,
    topk_percent,
)
from training.protocols.context import ProtocolContext, open_protocol
from training.protocols.io import check_rate, encode_batch, to_numpy

log = logging.getLogger(__name__)


class SGDSchedule:
    """What LinearConfig and FinetuneConfig share: SGD settings (lr, momentum, weight_decay), lr drops at
    milestones scaled with ``epochs``, and the fusion of the heads' losses."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...] | None
    fusion: str

    def check_sgd(self) -> None:
        """Finite rates (NaN-safe: ``--lr nan`` is refused, not trained on) and a known fusion."""
        check_rate(self.lr, "--lr")
        check_rate(self.momentum, "--momentum", positive=False)
        check_rate(self.weight_decay, "--weight-decay", positive=False)
        if self.fusion not in FUSIONS:
            raise CrossclrError(f"--fusion {self.fusion!r}: use one of {FUSIONS}")

    def resolved_milestones(self) -> tuple[int, ...]:
        return resolve_milestones(self.milestones, self.epochs)


@dataclass(frozen=True)
class LinearConfig(SGDSchedule):
    epochs: int = 100  # training epochs of the heads
    lr: float = 3.0  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # none in the official protocol
    milestones: tuple[int, ...] | None = None  # lr × gamma at these epochs; None = (round(0.8 · epochs),)
    gamma: float = 0.1
    batch_size: int = 128
    fusion: str = "joint"  # "joint" (mean of logits, official) | "separate" (each head alone)
    seed: int = 0  # head initialization and batch order
    standardize: bool | None = False  # MAMP's probe: features standardised (BatchNorm without affine, eps
    # 1e-6) by the training features' statistics before the head, folded into the saved head afterwards;
    # None (the CLI's default): what the encoders ask for (``probe_standardize``, see ``resolve_standardize``)
    stop_on_divergence: bool = True  # an error when the loss is not finite, or still blown up at the end

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise CrossclrError(f"--epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size < 1:
            raise CrossclrError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        self.check_sgd()


def resolve_milestones(milestones: Sequence[int] | None, epochs: int) -> tuple[int, ...]:
    """The lr-drop epochs: the given ones, else (round(0.8 · epochs),) (none for a single epoch)."""
    if milestones is not None:
        return tuple(milestones)
    return (max(1, round(0.8 * epochs)),) if epochs > 1 else ()


def sgd_with_steps(
    params: Sequence[nn.Parameter], cfg: Any
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD (cfg.lr, cfg.momentum, cfg.weight_decay) and its lr × cfg.gamma drops at cfg's milestones
    (``LinearConfig`` or ``FinetuneConfig``)."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, step_schedule(opt, cfg)


def step_schedule(opt: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.MultiStepLR:
    """The lr × cfg.gamma drops at cfg's milestones, for any optimizer."""
    milestones = list(cfg.resolved_milestones())
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)


class FeatureSource(Protocol):
    """Per-stream features of a labelled sample set, by index."""

    labels: Tensor  # (N,) int64, CPU
    in_features: int

    def __len__(self) -> int: ...

    def features(self, idx: Tensor) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class CachedFeatures:
    """Features computed once: {view: (N, hidden)}; ``features(idx)`` is a lookup."""

    feats: Mapping[str, Tensor]
    labels: Tensor
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_features(self) -> int:
        return int(next(iter(self.feats.values())).shape[1])

    def features(self, idx: Tensor) -> dict[str, Tensor]:
        return {v: f[idx].to(self.device) for v, f in self.feats.items()}


@dataclass(frozen=True)
class ReencodingFeatures:
    """Features recomputed by the frozen encoders (eval mode, no grad) for every batch requested."""

    encoders: Mapping[str, nn.Module]
    x: Tensor  # (N, C, T, V, M) joint input
    labels: Tensor
    layout: Layout
    in_features: int = 256
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def features(self, idx: Tensor) -> dict[str, Tensor]:
        for enc in self.encoders.values():
            enc.eval()
        return encode_batch(self.encoders, self.x[idx].to(self.device), self.layout)


@dataclass
class LinearResult:
    heads: dict[str, nn.Linear]
    fusion: str
    fusion_weights: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> top1, top5, epoch
    last: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> top1, top5
    eval_logits: dict[str, Tensor] = field(default_factory=dict)  # last epoch, per stream and fused
    start_loss: float = float("nan")  # the loss of the first batch, before any step
    diverged_at: int | None = None  # the epoch ``divergence`` flagged (training went on: not stopping)

    def record(self, row: dict[str, float], logits: Mapping[str, Tensor], labels: Tensor | np.ndarray,
               epoch: int) -> None:
        """Score ``logits`` (per stream and fused): into ``row`` ({key}_top1/_top5), ``best``, ``last``."""
        for key, acc in score(logits, labels).items():
            row[f"{key}_top1"], row[f"{key}_top5"] = acc["top1"], acc["top5"]
            if key not in self.best or acc["top1"] > self.best[key]["top1"]:
                self.best[key] = {**acc, "epoch": epoch}
            self.last[key] = dict(acc)
        self.eval_logits = dict(logits)

    def summary(self) -> dict[str, Any]:
        return {
            "fusion": self.fusion,
            "fusion_weights": self.fusion_weights,
            "best": self.best,
            "last": self.last,
            "history": self.history,
        }


def init_heads(
    streams: Sequence[str], in_features: int, num_classes: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, nn.Linear]:
    """Linear(in, classes) per stream, initialized like nn.Linear (U(±1/√in)) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / in_features**0.5
    heads = {}
    for v in streams:
        head = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            head.weight.copy_(torch.rand(num_classes, in_features, generator=g) * 2 * bound - bound)
            head.bias.copy_(torch.rand(num_classes, generator=g) * 2 * bound - bound)
        heads[v] = head.to(device)
    return heads


def head_loss(logits: Mapping[str, Tensor], y: Tensor, fusion: str) -> Tensor:
    """joint: CE of the mean of the logits; separate: sum of each head's own CE (independent gradients)."""
    if fusion == "joint":
        mean = torch.stack(list(logits.values())).mean(dim=0)  # (S, B, C) -> (B, C)
        return F.cross_entropy(mean, y)
    return sum(F.cross_entropy(z, y) for z in logits.values())


@torch.no_grad()
def predict_logits(
    heads: Mapping[str, nn.Module],
    source: FeatureSource,
    fusion_weights: Mapping[str, float],
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Per-stream and fused logits of every sample of ``source``: {view|"fused": (N, classes)} on CPU."""
    for h in heads.values():
        h.eval()
    out: dict[str, list[Tensor]] = {v: [] for v in heads}
    n = len(source)
    for idx in torch.arange(n).split(batch_size):
        feats = source.features(idx)
        for v, h in heads.items():
            out[v].append(h(feats[v]).float().cpu())
    return with_fused({v: torch.cat(c) for v, c in out.items()}, fusion_weights)


def with_fused(logits: dict[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """Add ``logits[FUSED]`` = Σ_v w_v · logits_v (``crossclr_infer.metrics.fuse_logits``) to CPU logits."""
    logits[FUSED] = torch.from_numpy(fuse_logits({v: to_numpy(z) for v, z in logits.items()}, weights))
    return logits


def score(logits: Mapping[str, Tensor], labels: Tensor | np.ndarray) -> dict[str, dict[str, float]]:
    """Top-1/top-5 in percent per key ({view|"fused": {"top1", "top5"}})."""
    y = to_numpy(labels)
    return {k: topk_percent(to_numpy(z), y) for k, z in logits.items()}


STANDARDIZE_EPS = 1e-6  # MAMP's probe: BatchNorm1d(affine=False, eps=1e-6)


class Standardized(nn.Module):
    """``head((f − mean) / sqrt(var + eps))``: a linear head behind MAMP's affine-free BatchNorm, whose
    statistics are those of the training features."""

    def __init__(self, head: nn.Linear, mean: Tensor, var: Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean)
        self.register_buffer("std", torch.sqrt(var + STANDARDIZE_EPS))

    def forward(self, f: Tensor) -> Tensor:
        return self.head((f - self.mean) / self.std)

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """One Linear with the same map: W' = W / std, b' = b − W' · mean."""
        out = nn.Linear(self.head.in_features, self.head.out_features).to(self.head.weight.device)
        w = self.head.weight / self.std  # (classes, in) / (in,)
        out.weight.copy_(w)
        out.bias.copy_(self.head.bias - w @ self.mean)
        return out


@torch.no_grad()
def feature_stats(source: FeatureSource, streams: Sequence[str], batch_size: int = 1024
                  ) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-stream mean and (biased) variance of every training feature, in float64 then float32."""
    sums: dict[str, Tensor] = {}
    sqs: dict[str, Tensor] = {}
    for idx in torch.arange(len(source)).split(batch_size):
        for v, f in source.features(idx).items():
            if v in streams:
                f = f.double()
                sums[v] = sums.get(v, 0) + f.sum(0)
                sqs[v] = sqs.get(v, 0) + (f * f).sum(0)
    n = len(source)
    out = {}
    for v in streams:
        mean = sums[v] / n
        out[v] = (mean.float(), (sqs[v] / n - mean * mean).clamp(min=0).float())
    return out


DIVERGENCE_FACTOR = 10.0  # an epoch loss above this multiple of the reference counts as blown up ...
DIVERGENCE_WINDOW = 5  # ... when that lasts this many consecutive epochs


def divergence(losses: Sequence[float], start: float, num_classes: int, *, factor: float = DIVERGENCE_FACTOR,
               window: int = DIVERGENCE_WINDOW) -> int | None:
    """The 1-based epoch at which a probe counts as diverged, else None: the first epoch whose mean loss is
    not finite, or the last of the first ``window`` consecutive epochs whose loss exceeds ``factor`` × the
    reference max(``start`` (the first batch's loss, before any step), ln ``num_classes`` (chance)): worse
    than guessing by that much, for that long, is not SGD noise."""
    ref = max(start if math.isfinite(start) else 0.0, math.log(max(num_classes, 2)))
    run = 0
    for epoch, loss in enumerate(losses, 1):
        if not math.isfinite(loss):
            return epoch
        run = run + 1 if loss > factor * ref else 0
        if run >= window:
            return epoch
    return None


def divergence_message(result: LinearResult, cfg: LinearConfig, num_classes: int) -> str:
    """The one line that stops a diverged probe: where, how far, and what to try."""
    epoch = result.diverged_at or len(result.history)
    loss = result.history[epoch - 1]["loss"]
    fix = ("a lower --lr" if cfg.standardize
           else "--standardize (features scaled by the training split's statistics) or a lower --lr")
    return (f"linear probe diverged at epoch {epoch}: loss {loss:.3g}, from {result.start_loss:.3g} at the "
            f"start (chance ln({num_classes}) = {math.log(max(num_classes, 2)):.2f}) with --lr {cfg.lr:g}; "
            f"rerun with {fix}; nothing written")


def _train_epoch(heads: Mapping[str, nn.Module], opt: torch.optim.Optimizer, train: FeatureSource,
                 streams: Sequence[str], cfg: LinearConfig, g: torch.Generator, device: torch.device
                 ) -> tuple[float, float]:
    """One pass over ``train`` in a seeded order: (mean loss, loss of the first batch)."""
    for h in heads.values():
        h.train()
    total, count, first = 0.0, 0, float("nan")
    for idx in torch.randperm(len(train), generator=g).split(cfg.batch_size):
        feats = train.features(idx)
        y = train.labels[idx].to(device)
        loss = head_loss({v: heads[v](feats[v]) for v in streams}, y, cfg.fusion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        first = value if count == 0 else first
        total += value * len(idx)
        count += len(idx)
    return total / count, first


def _check_divergence(result: LinearResult, cfg: LinearConfig, num_classes: int) -> bool:
    """Record the epoch ``divergence`` flags (one warning); True when training must stop now, which only a
    non-finite loss does (``stop_on_divergence`` raises the one-line error then). A blow-up with a finite loss
    goes on: the lr schedule may still bring it back (the demo's probe at lr 3 does); ``_ended_diverged``
    judges the run at its end."""
    last = result.history[-1]["loss"]
    if result.diverged_at is None:
        at = divergence([r["loss"] for r in result.history], result.start_loss, num_classes)
        if at is None:
            return False
        result.diverged_at = at
        if math.isfinite(last):
            log.warning("%s", divergence_message(result, cfg, num_classes).replace("; nothing written",
                                                                                   "; training goes on"))
    if math.isfinite(last):
        return False
    if cfg.stop_on_divergence:
        raise CrossclrError(divergence_message(result, cfg, num_classes))
    return True


def _ended_diverged(result: LinearResult, num_classes: int) -> bool:
    """Whether the run ends blown up: its last ``DIVERGENCE_WINDOW`` epochs all above the threshold."""
    tail = [r["loss"] for r in result.history[-DIVERGENCE_WINDOW:]]
    return len(tail) == DIVERGENCE_WINDOW and divergence(tail, result.start_loss, num_classes) is not None


def _make_heads(train: FeatureSource, num_classes: int, streams: Sequence[str], cfg: LinearConfig,
                device: torch.device) -> dict[str, nn.Module]:
    """Seeded heads, behind ``Standardized`` (the training features' statistics) with ``cfg.standardize``."""
    heads: dict[str, nn.Module] = dict(init_heads(streams, train.in_features, num_classes, cfg.seed, device))
    if cfg.standardize:
        stats = feature_stats(train, streams)
        heads = {v: Standardized(h, *(t.to(device) for t in stats[v])) for v, h in heads.items()}
    return heads


def train_linear(
    train: FeatureSource,
    val: FeatureSource | None,
    num_classes: int,
    streams: Sequence[str],
    cfg: LinearConfig,
    fusion_weights: Mapping[str, float] | None = None,
    device: torch.device | str = "cpu",
) -> LinearResult:
    """Train one head per stream on ``train`` features; score per stream and fused on ``val`` every epoch.
    A probe whose loss diverges (``divergence``) stops with a CrossclrError naming the fix."""
    device = torch.device(device)
    weights = (check_fusion_weights(fusion_weights, "fusion weights") if fusion_weights
               else fusion_weights_for(cfg.fusion, streams))
    if len(train) == 0:
        raise CrossclrError("linear evaluation: the training split is empty")
    heads = _make_heads(train, num_classes, streams, cfg, device)
    opt, sched = sgd_with_steps([p for h in heads.values() for p in h.parameters()], cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    result = LinearResult(heads=heads, fusion=cfg.fusion, fusion_weights=weights)
    bar = tqdm(
        range(1, cfg.epochs + 1), desc="linear", leave=False, disable=None if cfg.epochs >= 5 else True
    )
    for epoch in bar:
        lr = opt.param_groups[0]["lr"]
        loss, first = _train_epoch(heads, opt, train, streams, cfg, g, device)
        result.start_loss = first if epoch == 1 else result.start_loss
        sched.step()
        row: dict[str, float] = {"epoch": epoch, "lr": lr, "loss": loss}
        if val is not None and len(val):
            result.record(row, predict_logits(heads, val, weights), val.labels, epoch)
            bar.set_postfix(loss=f"{row['loss']:.3f}", top1=f"{row[f'{FUSED}_top1']:.1f}")
        result.history.append(row)
        log.info("linear epoch %d: %s", epoch, row)
        if _check_divergence(result, cfg, num_classes):
            break
    if result.diverged_at is not None and cfg.stop_on_divergence and _ended_diverged(result, num_classes):
        raise CrossclrError(divergence_message(result, cfg, num_classes))
    if cfg.standardize:
        result.heads = {v: h.folded() for v, h in heads.items()}  # plain Linear heads, same logits
    return result


# ------------------------------------------------------------------------------------------ orchestrators
def save_result(path: Path, ctx: ProtocolContext, result: LinearResult, *, extra: Mapping[str, Any]) -> Path:
    """Write the context's encoders + trained heads in the linear checkpoint format (``save_linear``): the
    source checkpoint's encoder config, the cache ``info``, best/last metrics and ``extra`` fields. The fusion
    weights are checked (finite, >= 0, not all zero) before anything is written."""
    from training.protocols.io import save_linear

    check_fusion_weights(result.fusion_weights, f"{path}: fusion weights")
    save_meta = {
        **ctx.info,
        **{k: ctx.meta[k] for k in ("config", "in_channels") if k in ctx.meta},
        "source_checkpoint": str(ctx.checkpoint),
    }
    return save_linear(
        path,
        ctx.encoders,
        result.heads,
        fusion=result.fusion,
        fusion_weights=result.fusion_weights,
        class_names=ctx.class_names,
        layout=ctx.layout,
        meta=save_meta,
        metrics={"best": result.best, "last": result.last},
        extra=extra,
    )


def resolve_standardize(cfg: LinearConfig, encoders: Mapping[str, nn.Module]) -> LinearConfig:
    """``cfg`` with ``standardize`` decided when it is None: True when any encoder's class sets
    ``probe_standardize = True`` (a family whose features diverge under the plain probe at lr 3.0, measured
    by benchmarks/bench_linear_probe.py), else False."""
    if cfg.standardize is not None:
        return cfg
    wanted = sorted(v for v, e in encoders.items() if getattr(e, "probe_standardize", False))
    if wanted:
        log.info("linear: features standardised (the encoders of %s ask for it; --no-standardize to not)",
                 ", ".join(wanted))
    return replace(cfg, standardize=bool(wanted))


def cached_features(ctx: ProtocolContext, split: str, batch_size: int = 256, desc: str | None = None
                    ) -> CachedFeatures:
    """A split encoded once by the context's frozen encoders, with its labels."""
    return CachedFeatures(ctx.encode(split, batch_size=batch_size, desc=desc), ctx.labels(split), ctx.device)


def run_linear(data: str | Path, checkpoint: str | Path, out: str | Path, *, streams: Sequence[str] | None,
               cfg: LinearConfig, weights: Mapping[str, float] | None = None, device: str | None = None,
               train_split: str = "train", eval_split: str = "val", encode_batch_size: int = 256,
               plots: bool = False) -> dict[str, Any]:
    """``crossclr linear``: load encoders, encode both splits once, train heads, write linear.pt."""
    from training.protocols.io import write_json

    out = Path(out)
    with open_protocol(data, checkpoint, streams=streams, splits=(train_split, eval_split),
                       device=device) as ctx:
        fweights = fusion_weights_for(cfg.fusion, ctx.streams, weights)
        cfg = resolve_standardize(cfg, ctx.encoders)
        train_src = cached_features(ctx, train_split, encode_batch_size, "encode train")
        val_src = cached_features(ctx, eval_split, encode_batch_size, "encode eval")
    result = train_linear(train_src, val_src, ctx.num_class, ctx.streams, cfg, fweights, ctx.device)
    ckpt_path = save_result(out / "linear.pt", ctx, result,
                            extra={"linear_config": _cfg_dict(cfg), "data": str(data)})
    report = {
        **ctx.header("linear"),
        "streams": ctx.streams,
        "train_split": train_split,
        "eval_split": eval_split,
        "num_train": len(train_src),
        "num_eval": len(val_src),
        "config": _cfg_dict(cfg),
        **result.summary(),
        "per_stream_trained_alone": cfg.fusion != "joint" or len(ctx.streams) == 1,
        "output": str(ckpt_path),
    }
    write_json(report, out / "linear_metrics.json")
    if plots:
        from training.plots import plot_linear_curves, plot_predictions

        title = f"linear ({'+'.join(ctx.streams)}, {FUSED}), last epoch"
        report["plots"] = [
            plot_predictions(val_src.labels.numpy(), result.eval_logits[FUSED].argmax(1).numpy(),
                             ctx.class_names, out / "confusion.png", title=title, split=eval_split),
            str(plot_linear_curves(result.history, ctx.streams, out / "linear_curves.png")),
        ]
    return report


def evaluate_linear(
    data: str | Path,
    checkpoint: str | Path,
    *,
    split: str = "val",
    device: str | None = None,
    batch_size: int = 256,
    streams: Sequence[str] | None = None,
    plots_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score an existing linear.pt on a cache split (no training): top-1/top-5 per stream and fused."""
    with open_protocol(data, checkpoint, streams=streams, splits=(split,), device=device,
                       need_classes=None) as ctx:
        if ctx.heads is None:
            raise CrossclrError(
                f"{checkpoint}: a pretrain checkpoint has no heads; --eval-only needs a linear.pt "
                "written by crossclr linear"
            )
        src = cached_features(ctx, split, batch_size)
    weights = check_fusion_weights({v: ctx.meta["fusion_weights"][v] for v in ctx.encoders},
                                   f"{checkpoint}: fusion weights")
    logits = predict_logits(ctx.heads, src, weights)
    report: dict[str, Any] = {
        **ctx.header("linear-eval"),
        "split": split,
        "streams": ctx.streams,
        "num_eval": len(src),
        "fusion": ctx.meta.get("fusion"),
        "fusion_weights": weights,
        "last": score(logits, src.labels),
    }
    if plots_dir is not None:
        from training.plots import plot_predictions

        title = f"linear ({'+'.join(ctx.streams)}, {FUSED})"
        report["plots"] = [
            plot_predictions(src.labels.numpy(), logits[FUSED].argmax(1).numpy(), ctx.class_names,
                             Path(plots_dir) / "confusion.png", title=title, split=split)
        ]
    return report


def _cfg_dict(cfg: LinearConfig) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(cfg)
    d["milestones"] = list(cfg.resolved_milestones())
    return d
