"""Semi-supervised and full fine-tuning: encoders + heads trained end to end on a labelled subset.

``stratified_subset`` draws a seeded, class-stratified fraction of the training samples (at least one per
class present), the semi-supervised protocol of the 1 % / 10 % label settings; fraction 1.0 is full
fine-tuning. Encoders train in train mode (BN statistics update, dropout on), optionally with the
pretraining augmentation; the result is written in the linear checkpoint format (``finetune.pt``), so
``crossclr export`` takes it like a ``linear.pt``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.metrics import FUSED, fusion_weights_for
from training.protocols.context import open_protocol
from training.protocols.io import stream_inputs as _stream_inputs
from training.protocols.linear import (
    LinearResult,
    SGDSchedule,
    head_loss,
    init_heads,
    save_result,
    sgd_with_steps,
    step_schedule,
    with_fused,
)

log = logging.getLogger(__name__)


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
        raise CrossclrError(f"--label-fraction must be in (0, 1] (e.g. 0.01, 0.1, 1.0), got {fraction}")
    return float(fraction)


def stratified_subset(labels: np.ndarray | Sequence[int], fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset: round(fraction · n_c) per class, at least 1.

    Each class present in ``labels`` contributes max(1, round(fraction · n_c)) of its n_c samples, drawn
    without replacement by ``numpy.random.default_rng(seed)`` class by class in label order, so the same
    (labels, fraction, seed) always gives the same subset.
    """
    fraction = check_fraction(fraction)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        m = min(len(idx), max(1, int(np.floor(fraction * len(idx) + 0.5))))
        chosen.append(rng.permutation(idx)[:m])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


@dataclass(frozen=True)
class FinetuneConfig(SGDSchedule):
    label_fraction: float = 1.0  # fraction of labelled training samples (stratified)
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] | None = None  # None = (round(0.8 · epochs),)
    gamma: float = 0.1
    batch_size: int = 128
    fusion: str = "joint"  # "joint": CE of the mean of the logits; "separate": each stream its own CE
    augment: bool = False  # temporal crop + shear (training.augment) on the joint input
    seed: int = 0  # subset, head init, batch order, augmentation
    eval_every: int = 5  # score the evaluation split every N epochs (and at the last)
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw" (transformers: MAMP fine-tunes with AdamW)

    def __post_init__(self) -> None:
        check_fraction(self.label_fraction)
        if self.optimizer not in OPTIMIZERS:
            raise CrossclrError(f"finetune: optimizer {self.optimizer!r}: use one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise CrossclrError("finetune: --epochs, --batch-size and --eval-every must be ≥ 1")
        self.check_sgd()


Reader = Callable[[np.ndarray], np.ndarray]
OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params: Sequence[nn.Parameter], cfg: FinetuneConfig) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with momentum (``sgd_with_steps``) or AdamW (cfg.lr, cfg.weight_decay), both with the lr × gamma
    drops at cfg's milestones."""
    if cfg.optimizer == "sgd":
        return sgd_with_steps(params, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, step_schedule(opt, cfg)


@torch.no_grad()
def predict(
    encoders: Mapping[str, nn.Module],
    heads: Mapping[str, nn.Module],
    read: Reader,
    n: int,
    layout: Layout,
    weights: Mapping[str, float],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Eval-mode logits per stream and fused for n samples read by ``read``: {key: (n, classes)} on CPU."""
    for m in (*encoders.values(), *heads.values()):
        m.eval()
    out: dict[str, list[Tensor]] = {v: [] for v in encoders}
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        x = torch.as_tensor(np.asarray(read(idx), np.float32), device=device)  # (B, C, T, V, M)
        inputs = _stream_inputs(x, list(encoders), layout)
        for v, enc in encoders.items():
            out[v].append(heads[v](enc.forward_features(inputs[v])).float().cpu())
    return with_fused({v: torch.cat(c) for v, c in out.items()}, weights)


def finetune(
    encoders: Mapping[str, nn.Module],
    heads: Mapping[str, nn.Linear] | None,
    read_train: Reader,
    train_labels: np.ndarray,
    subset: np.ndarray,
    read_eval: Reader | None,
    eval_labels: np.ndarray | None,
    layout: Layout,
    num_classes: int,
    cfg: FinetuneConfig,
    fusion_weights: Mapping[str, float],
    device: torch.device | str = "cpu",
) -> LinearResult:
    """Fine-tune encoders (in place) and heads on the training samples ``subset``; score on the eval set."""
    device = torch.device(device)
    streams = list(encoders)
    hidden = int(encoders[streams[0]].hidden_dim)
    heads = dict(heads) if heads is not None else init_heads(streams, hidden, num_classes, cfg.seed, device)
    params = [p for m in (*encoders.values(), *heads.values()) for p in m.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, cfg)
    step = _Stepper(encoders, heads, layout, cfg, opt, device, read_train,
                    torch.as_tensor(np.asarray(train_labels), dtype=torch.long))
    g = torch.Generator().manual_seed(cfg.seed)
    subset = np.asarray(subset, np.int64)
    result = LinearResult(heads=heads, fusion=cfg.fusion, fusion_weights=dict(fusion_weights))
    for epoch in tqdm(
        range(1, cfg.epochs + 1), desc="finetune", leave=False, disable=None if cfg.epochs >= 5 else True
    ):
        lr = opt.param_groups[0]["lr"]
        loss = step.epoch(subset[perm.numpy()] for perm in torch.randperm(len(subset), generator=g)
                          .split(cfg.batch_size))
        sched.step()
        row: dict[str, float] = {"epoch": epoch, "lr": lr, "loss": loss}
        if (
            read_eval is not None
            and eval_labels is not None
            and len(eval_labels)
            and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        ):
            logits = predict(
                encoders, heads, read_eval, len(eval_labels), layout, result.fusion_weights, device=device
            )
            result.record(row, logits, np.asarray(eval_labels), epoch)
        result.history.append(row)
        log.info("finetune epoch %d: %s", epoch, row)
    for m in (*encoders.values(), *heads.values()):
        m.eval()
    return result


@dataclass
class _Stepper:
    """One fine-tuning epoch: train mode, (optional) augmentation, head loss, SGD step per batch."""

    encoders: Mapping[str, nn.Module]
    heads: Mapping[str, nn.Module]
    layout: Layout
    cfg: FinetuneConfig
    opt: torch.optim.Optimizer
    device: torch.device
    read: Reader
    labels: Tensor  # (N,) int64 labels of the whole training split
    aug_gen: torch.Generator | None = field(init=False, default=None)  # seeded cfg.seed + 1 with cfg.augment

    def __post_init__(self) -> None:
        self.aug_gen = (torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1)
                        if self.cfg.augment else None)

    def epoch(self, batches: Iterable[np.ndarray]) -> float:
        """Train on each batch of training-split indices; the mean loss per sample."""
        from training.augment import augment

        for m in (*self.encoders.values(), *self.heads.values()):
            m.train()
        total, count = 0.0, 0
        for idx in batches:
            x = torch.as_tensor(np.asarray(self.read(idx), np.float32), device=self.device)  # (B, C, T, V, M)
            if self.aug_gen is not None:
                x = augment(x, self.aug_gen)
            inputs = _stream_inputs(x, list(self.encoders), self.layout)
            logits = {v: self.heads[v](enc.forward_features(inputs[v])) for v, enc in self.encoders.items()}
            loss = head_loss(logits, self.labels[idx].to(self.device), self.cfg.fusion)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        return total / max(count, 1)


def run_finetune(data: str | Path, checkpoint: str | Path, out: str | Path, *, streams: Sequence[str] | None,
                 cfg: FinetuneConfig, weights: Mapping[str, float] | None = None, device: str | None = None,
                 train_split: str = "train", eval_split: str = "val", plots: bool = False) -> dict[str, Any]:
    """``crossclr finetune``: writes OUT/finetune.pt (linear format) and finetune_metrics.json."""
    from training.protocols.io import write_json

    out = Path(out)
    # the run is determined by cfg.seed: the global generator (dropout, any layer drawing from it) is seeded
    # here and restored afterwards, so the caller's random state is untouched
    with torch.random.fork_rng(devices=[]), open_protocol(
            data, checkpoint, streams=streams, splits=(train_split, eval_split), device=device,
            need_classes=None) as ctx:
        torch.manual_seed(cfg.seed)
        fweights = fusion_weights_for(cfg.fusion, ctx.streams, weights)
        tr, ev = ctx.split(train_split), ctx.split(eval_split)
        y_tr, y_ev = np.asarray(tr.labels), np.asarray(ev.labels)
        subset = stratified_subset(y_tr, cfg.label_fraction, cfg.seed)
        missing = sorted(set(range(ctx.num_class)) - set(np.unique(y_tr).tolist()))
        if missing:
            log.warning("%s: classes %s have no %s samples", data, missing[:10], train_split)
        result = finetune(ctx.encoders, ctx.heads, tr.read, y_tr, subset, ev.read, y_ev, ctx.layout,
                          ctx.num_class, cfg, fweights, ctx.device)
    cfg_dict = {**asdict(cfg), "milestones": list(cfg.resolved_milestones())}
    extra = {"finetune_config": cfg_dict, "data": str(data), "label_indices": subset.tolist()}
    ckpt_path = save_result(out / "finetune.pt", ctx, result, extra=extra)
    report = {
        **ctx.header("finetune"),
        "streams": ctx.streams,
        "label_fraction": cfg.label_fraction,
        "num_labelled": int(len(subset)),
        "num_train": int(len(y_tr)),
        "num_eval": int(len(y_ev)),
        "config": cfg_dict,
        **result.summary(),
        "output": str(ckpt_path),
    }
    write_json(report, out / "finetune_metrics.json")
    if plots and result.eval_logits:
        from training.plots import plot_predictions

        report["plots"] = [
            plot_predictions(y_ev, result.eval_logits[FUSED].argmax(1).numpy(), ctx.class_names,
                             out / "finetune_confusion.png",
                             title=f"fine-tuned {cfg.label_fraction:g} labels, last eval")
        ]
    return report
