"""The pretraining loop. What trains is the objective's (``training.objectives``: the registered class that
``cfg.objective`` names builds the model, makes the views of a batch, computes a step's loss and names the
stage of an epoch; e.g. SkeletonCLR then CrosSCLR, docs/design.md §3, or MAMP, §6); this module runs the
loop around it: devices, DDP, bf16, the optimiser and its schedule (per epoch, or a per-step warm-up +
half-cycle cosine), resume, metrics and checkpoints.

One process, or one process per device under torch DDP (``torchrun --nproc_per_node N -m cli train ...``):
NCCL on GPU, gloo on CPU, initialised from the environment when ``WORLD_SIZE > 1``. Keys are all-gathered
into the queue by ``MemoryQueue``; the sampler is a ``DistributedSampler``; only rank 0 logs, shows
progress and saves.

Official-code schedule details kept or changed (``cfg`` documents each): SGD without Nesterov, weight decay
on every parameter; the official loop uses 0-based epochs with ``epoch <= cross_epoch`` single-view and lr
decay when ``epoch > step`` (one extra epoch each); here epoch ``e`` (0-based) is cross-view when
``e >= cross_epoch`` and the lr drops from epoch ``lr_steps[i]`` on, as docs/design.md §3 states them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import inspect
import itertools
import json
import logging
import math
import os
import platform
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import write_text_atomic
from crossclr_infer.hardware import CpuCaps, cpu_caps
from crossclr_infer.layouts import layout_to_toml
from training.augment import AUGMENTATIONS
from training.checkpoint import (
    CHECKPOINT_NAME,
    atomic_torch_save,
    capture_rng,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    restore_rng,
)
from training.config import TrainConfig, config_from_dict, config_to_dict
from training.data import (
    TrainData,
    batch_is_finite,
    check_batch,
    data_identity,
    make_loader,
    open_train_data,
)
from training.objectives import Augment, Objective, objective_class, objective_for
from training.threads import ThreadGovernor, training_threads

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MALLOPT_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
MALLOPT_TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap instead of returning it


def apply_mallopt(mmap_threshold: int = MALLOPT_MMAP_THRESHOLD,
                  trim_threshold: int = MALLOPT_TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds so the large, short-lived activation buffers of CPU training
    are reused from the heap instead of being mmap'ed, zero-filled and unmapped at every step.

    Returns True when applied (Linux with glibc), False elsewhere (no-op).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok1 = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
        ok2 = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return False
    return bool(ok1) and bool(ok2)


# ---------------------------------------------------------------------------------------------------------
# process setup


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA (this process's local rank) when available, else CPU; checks CUDA is there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CrossclrError(f"device {name!r} requested but CUDA is not available; "
                                "use --device cpu or auto")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        idx = int(name.split(":")[1])
        if idx >= torch.cuda.device_count():
            raise CrossclrError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices visible")
        return torch.device(name)
    return torch.device("cpu")


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Initialise torch.distributed from the environment when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    owns = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
        owns = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns), device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# ---------------------------------------------------------------------------------------------------------
# model and optimiser


def build_model(cfg: TrainConfig, data: TrainData, objective: Objective | None = None) -> nn.Module:
    """The model ``cfg``'s objective trains, for the skeletons of ``data``."""
    cache = data.cache
    objective = objective or objective_for(cfg)
    return objective.build_model(data.layout, num_person=cache.num_person, in_channels=cache.num_channels,
                                 frames=cache.frames)


def init_encoders_from(model: nn.Module, cfg: TrainConfig, layout_text: str) -> None:
    """Start every query (and key) encoder from the encoders of ``cfg.init_from`` (same streams, layout and
    encoder architecture; MAMP decoders and contrastive projectors of that run are not carried over when
    the projector differs)."""
    from training.checkpoint import load_encoders

    path = Path(cfg.init_from)
    encoders, meta = load_encoders(path, list(cfg.streams))
    if meta["layout"] != layout_text:
        raise CrossclrError(f"{path}: init_from checkpoint has another skeleton layout than the training "
                            "cache; expected the same layout")
    old = meta["encoder_config"]
    free = {"projector", "feature_dim", "drop_path"}  # may change between the stages
    diffs = [f"{f.name} {getattr(old, f.name)!r} there vs {getattr(cfg.model, f.name)!r} here"
             for f in dataclasses.fields(old) if f.name not in free
             and getattr(old, f.name) != getattr(cfg.model, f.name)]
    if diffs:
        raise CrossclrError(f"{path}: init_from encoders have another architecture ({'; '.join(diffs[:4])}); "
                            "expected the same [model] settings")
    objective = objective_for(cfg)
    targets = [objective.encoders(model, g) for g in range(len(objective.encoder_groups))]
    for v, enc in encoders.items():
        state = enc.state_dict()
        if old.projector != cfg.model.projector or old.feature_dim != cfg.model.feature_dim:
            state = {k: t for k, t in state.items() if not k.startswith("fc.")}
        for group in targets:
            group[v].load_state_dict(state, strict=False)
    log.info("initialised %s encoders from %s (epoch %s)", ", ".join(encoders), path, meta.get("epoch"))


def resolve_bf16(setting: bool | str, device: torch.device, caps: CpuCaps | None = None) -> bool:
    """Whether to autocast to bf16: ``auto`` = CUDA with bf16 support, or a CPU with native bf16; an explicit
    ``True`` on a CPU that would only emulate bf16 (about 10× slower than fp32) is refused."""
    if device.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported())
        if setting is True and not ok:
            raise CrossclrError(f"bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                                "train with --no-bf16")
        return ok if setting == "auto" else bool(setting)
    if device.type != "cpu":
        return setting is True
    caps = caps or cpu_caps()
    if setting is True and not caps.native_bf16:
        raise CrossclrError(f"bf16: this CPU ({caps.model}) has no native bf16 (AVX512-BF16 or AMX), so bf16 "
                            "would be emulated and run about 10x slower than fp32; train with --no-bf16 "
                            "(or leave bf16 = \"auto\")")
    return caps.native_bf16 if setting == "auto" else bool(setting)


def augmentation_for(cfg: TrainConfig) -> str:
    """The augmentation a run uses: its own setting, or its objective's (auto)."""
    if cfg.augment != "auto":
        return cfg.augment
    return objective_class(cfg.objective).augmentation


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters; weight decay on all (official) or only on tensors of rank >= 2."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay_on == "all":
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def cosine_factor(epoch: float, cfg: TrainConfig) -> float:
    """lr / base lr at a fractional epoch: linear warm-up from 0, then half-cycle cosine to min_lr (MAMP's
    per-iteration rule)."""
    if epoch < cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return lr / cfg.lr


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """``step``: ×lr_gamma at every epoch in lr_steps, stepped once per epoch. ``cosine``: stepped once per
    training step (``steps_per_epoch`` steps make an epoch)."""
    if cfg.schedule == "cosine":
        spe = max(int(steps_per_epoch), 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_factor(it / spe, cfg))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_steps), gamma=cfg.lr_gamma)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without per-step buffer broadcasts (the queue is kept identical by the key all-gather; BN
    statistics are averaged across ranks at the end of every epoch by ``average_bn_stats``)."""
    ddp = nn.parallel.DistributedDataParallel
    kwargs: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # torch < 2.13
        kwargs["broadcast_buffers"] = False
    return ddp(model, **kwargs)


@torch.no_grad()
def average_bn_stats(model: nn.Module, info: DistInfo) -> None:
    """Average BatchNorm running statistics over ranks so every rank (and the checkpoint) holds the same."""
    if not info.distributed:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(info.world_size)


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# metrics


class MetricsLog:
    """Append-only JSONL (one record per line) plus optional TensorBoard scalars; rank 0 only."""

    def __init__(self, path: Path, *, enabled: bool, tensorboard: bool,
                 keep_before_epoch: int | None) -> None:
        self.path = path
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if keep_before_epoch is not None and path.exists():  # resume: drop records of epochs to be redone
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("epoch", 0) <= keep_before_epoch:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            write_text_atomic(path, "".join(k + "\n" for k in kept))
        elif keep_before_epoch is None and path.exists():
            path.unlink()
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:
                log.info("tensorboard not installed: metrics go to %s only", path)

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            prefix = record.get("kind", "step")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step") and math.isfinite(v):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()


# ---------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: the unwrapped model and the last epoch records."""

    model: nn.Module  # what the objective built (e.g. CrosSCLR, MAMP)
    epochs_done: int
    checkpoint: Path | None
    epoch_records: list[dict[str, Any]] = field(default_factory=list)


def _timed_batches(loader: Any, device: torch.device, check: Callable[[int, torch.Tensor], None] | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Yield (x, y, seconds spent waiting for the loader and the host-to-device copy); ``check(i, x)`` sees
    batch i on the host first."""
    it = iter(loader)
    for i in itertools.count():
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            return
        if check is not None:
            check(i, x)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        yield x, y, time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather_rng(info: DistInfo, state: dict[str, Any]) -> list[dict[str, Any]]:
    if not info.distributed:
        return [state]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, state)
    return out


def _architecture_keys(cfg: TrainConfig) -> list[str]:
    """The settings a resumed run must share with its checkpoint: every table (``[model]`` and each
    objective's own), the objective and the streams."""
    tables = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    return [*tables, "objective", "streams"]


def _check_resume_config(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    old = config_from_dict(ckpt["config"], f"{path} (config)")
    diffs = [key for key in _architecture_keys(cfg) if getattr(old, key) != getattr(cfg, key)]
    if diffs:
        a, b = config_to_dict(old), config_to_dict(cfg)
        detail = "; ".join(f"{k}: {a[k]} in the checkpoint vs {b[k]} now" for k in diffs)
        raise CrossclrError(f"{path}: cannot resume, the checkpoint has a different architecture "
                            f"({detail[:300]}); expected the same model/ssl/streams settings")


# ---------------------------------------------------------------------------------------------------------
# the run: resume state, model and optimiser, one epoch, logging, checkpointing


@dataclass
class _Run:
    """One run's state between steps: what trains, on what, and how far it got."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    data: TrainData
    objective: Objective  # what trains: the model, the views of a batch, a step's loss, the stages
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: Any
    sampler: Any  # DistributedSampler: the order of an epoch depends only on the seed and the epoch
    aug_gen: torch.Generator
    augment: Augment  # the run's augmentation (training.augment.AUGMENTATIONS[augmentation_for(cfg)])
    bf16: bool
    ckpt_path: Path
    net: nn.Module  # the model, DDP-wrapped when distributed
    start_epoch: int = 0
    global_step: int = 0
    threads: ThreadGovernor | None = None  # CPU intra-op threads measured under load (training.threads)


def _setup_process(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Process group and device, glibc malloc thresholds, deterministic algorithms."""
    info, device = setup_distributed(cfg.device)
    if cfg.mallopt and device.type == "cpu":
        applied = apply_mallopt()
        log.debug("glibc mallopt thresholds %s", "applied" if applied else "not available")
    set_deterministic(cfg.deterministic)
    return info, device


def _read_resume_checkpoint(ckpt_path: Path, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint ``resume`` continues (same architecture as ``cfg``), or None for a new run. Refused:
    ``--resume`` with no checkpoint, and a new run over an existing one."""
    if not resume:
        if ckpt_path.exists():
            raise CrossclrError(f"{ckpt_path}: a checkpoint already exists; pass --resume to continue it or "
                                "choose another --out")
        return None
    if not ckpt_path.is_file():
        raise CrossclrError(f"--resume: there is no checkpoint {ckpt_path} to continue; expected the --out "
                            "folder of an earlier `crossclr train` run (leave out --resume to start a new "
                            "run)")
    ckpt = load_checkpoint(ckpt_path)
    _check_resume_config(ckpt, cfg, ckpt_path)
    return ckpt


def _check_resume_data(ckpt: dict[str, Any], data: TrainData, ckpt_path: Path) -> None:
    """A resume continues on the data the run was trained on: the same layout and the same samples."""
    if get_layout_text(data) != ckpt["layout"]:
        raise CrossclrError(f"{data.path}: its layout differs from the one {ckpt_path} was trained on; "
                            "expected a cache of the same skeleton layout to resume")
    old = ckpt.get("data")
    if not isinstance(old, dict):
        return  # imported, or written before checkpoints named their data: the layout is what is known
    new = data_identity(data)
    same = all(old.get(k) == new[k] for k in ("split", "samples", "names_sha1"))
    if not same:
        have = (f"{new['samples']} samples" if old.get("samples") != new["samples"]
                else "as many samples, named differently")
        was = f"{old.get('path')}: {old.get('samples')} samples in split {old.get('split')!r}"
        raise CrossclrError(f"--data {data.path}: not the cache {ckpt_path} was trained on ({was}; this one: "
                            f"{have} in split {new['split']!r}); expected that cache to resume (or another "
                            "--out for a new run on this one)")
    if old.get("path") != new["path"]:
        log.warning("--data %s holds the samples %s was trained on (from %s, moved or copied): resuming",
                    data.path, ckpt_path, old.get("path"))


def _init_model(cfg: TrainConfig, objective: Objective, data: TrainData, info: DistInfo,
                device: torch.device, from_scratch: bool) -> tuple[nn.Module, torch.Generator]:
    """The model (identical initialisation on every rank) and the augmentation generator (one stream of
    dropout and augmentation noise per rank); ``init_from`` encoders for a run started from scratch."""
    seed_everything(cfg.seed)
    try:
        model = build_model(cfg, data, objective).to(device)
    except CrossclrError as e:
        raise CrossclrError(f"{data.path}: {e}") from None
    seed_everything(cfg.seed + 1000 * info.rank + 1)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(cfg.seed * 7919 + info.rank + 17)
    if cfg.init_from and from_scratch:
        init_encoders_from(model, cfg, get_layout_text(data))
    return model, aug_gen


def _build_run(cfg: TrainConfig, data: TrainData, info: DistInfo, device: torch.device,
               ckpt: dict[str, Any] | None, ckpt_path: Path) -> _Run:
    """Model, loader, optimiser and schedule of a new run, or of the checkpoint's run at its epoch."""
    objective = objective_for(cfg)
    model, aug_gen = _init_model(cfg, objective, data, info, device, from_scratch=ckpt is None)
    use_bf16 = resolve_bf16(cfg.bf16, device)
    aug_kind = augmentation_for(cfg)
    if info.is_main:
        log.info("%s on %s; bf16 %s (%s); augmentation %s", objective.name, device,
                 "on" if use_bf16 else "off", cfg.bf16, aug_kind)
    loader, sampler = make_loader(data.dataset, batch_size=cfg.batch_size, seed=cfg.seed,
                                  num_workers=cfg.num_workers, device=device, rank=info.rank,
                                  world_size=info.world_size, drop_last=cfg.drop_last)
    optimizer = build_optimizer(model, cfg)
    run = _Run(cfg=cfg, info=info, device=device, data=data, objective=objective, model=model,
               optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, len(loader)), loader=loader,
               sampler=sampler, aug_gen=aug_gen, augment=AUGMENTATIONS[aug_kind], bf16=use_bf16,
               ckpt_path=ckpt_path, net=model)
    if ckpt is not None:
        _restore(run, ckpt)
    if info.distributed:
        run.net = wrap_ddp(model, device)
    run.threads = training_threads(deterministic=cfg.deterministic, distributed=info.distributed,
                                   cpu=device.type == "cpu")
    return run


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Weights, optimiser, schedule and RNG streams of ``ckpt``: the run continues where it stopped."""
    info, cfg = run.info, run.cfg
    load_model_state(run.model, ckpt["model"], run.ckpt_path)
    run.model.to(run.device)
    if ckpt.get("optimizer") is not None:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    run.start_epoch = int(ckpt["epoch"])
    run.global_step = run.start_epoch * len(run.loader)
    rngs = ckpt.get("rng") or []
    if len(rngs) == info.world_size:
        restore_rng(rngs[info.rank], run.aug_gen)
    else:
        log.warning("checkpoint RNG states are for %d processes, now %d: reseeding", len(rngs),
                    info.world_size)
        seed_everything(cfg.seed + 1000 * info.rank + 1 + run.start_epoch)
        run.aug_gen.manual_seed(cfg.seed * 7919 + info.rank + 17 + run.start_epoch)
    if info.is_main:
        log.info("resuming %s at epoch %d of %d", run.ckpt_path, run.start_epoch, cfg.epochs)


class _EpochMeans:
    """Per-output sums over every step of an epoch, kept as detached float64 tensors on their devices (no
    host sync per step) and reduced once at the end; non-finite values are left out, as in the step log."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        for k, v in outputs.items():
            v = v.detach().double()
            finite = torch.isfinite(v)
            value = torch.where(finite, v, torch.zeros_like(v))
            if k in self.sums:
                self.sums[k].add_(value)
                self.counts[k].add_(finite)
            else:
                self.sums[k], self.counts[k] = value, finite.double()

    def reduce(self, info: DistInfo, device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
        """(mean over finite values, number of finite values) per output, over every rank's steps."""
        keys = sorted(self.sums)
        if not keys:
            return {}, {}
        flat = torch.stack([self.sums[k].to(device).reshape(()) for k in keys]
                           + [self.counts[k].to(device).reshape(()) for k in keys])  # (2K,)
        if info.distributed:
            dist.all_reduce(flat)
        values = flat.cpu().tolist()
        sums, counts = values[:len(keys)], [int(c) for c in values[len(keys):]]
        means = {k: s / c for k, s, c in zip(keys, sums, counts, strict=True) if c > 0}
        return means, dict(zip(keys, counts, strict=True))


class _Throughput:
    """Samples per second between two log steps."""

    def __init__(self, step: int) -> None:
        self.time, self.step = time.perf_counter(), step

    def rate(self, step: int, samples_per_step: int) -> float:
        now = time.perf_counter()
        rate = samples_per_step * (step - self.step) / max(now - self.time, 1e-9)
        self.time, self.step = now, step
        return rate


def _nonfinite_loss(value: float, epoch: int, step: int | None = None) -> CrossclrError:
    where = f"at epoch {epoch + 1} step {step}" if step is not None else f"in epoch {epoch + 1}"
    return CrossclrError(f"loss is {value} {where} although the training samples are finite (checked as they "
                         "load), so training diverged; expected a finite loss (lower the learning rate or "
                         "disable bf16)")


def _batch_check(run: _Run) -> Callable[[int, torch.Tensor], None] | None:
    """``check(i, x)`` raising a one-line error naming the cache and sample when batch ``i`` holds NaN or
    inf; None for a preloaded split (checked whole when it was read)."""
    if run.data.dataset.preloaded:
        return None
    bs = run.cfg.batch_size

    def check(i: int, x: torch.Tensor) -> None:
        if not batch_is_finite(x):
            order = list(run.sampler)  # this epoch's order (set_epoch): batch i is its i-th slice
            check_batch(x, run.data, order[i * bs:i * bs + len(x)])

    return check


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
    """The objective's step (bf16 autocast when on), backward, optimiser step; a cosine schedule steps every
    step."""
    with autocast_context(run.device, run.bf16):
        outputs = run.objective.step(run.net, x, y, stage=stage, augment=run.augment, generator=run.aug_gen)
    run.optimizer.zero_grad(set_to_none=True)
    outputs["loss"].backward()
    run.optimizer.step()
    if run.cfg.schedule == "cosine":
        run.scheduler.step()
    return outputs


def _log_step(run: _Run, metrics: MetricsLog, outputs: dict[str, torch.Tensor], epoch: int, stage: str,
              lr: float, wait: float, throughput: _Throughput, bar: Any) -> None:
    """A log step: every output as a number (one host sync), checked finite, into metrics.jsonl and the
    progress bar."""
    vals = {k: float(v.detach()) for k, v in outputs.items()}
    if not math.isfinite(vals["loss"]):
        raise _nonfinite_loss(vals["loss"], epoch, run.global_step)
    rate = throughput.rate(run.global_step, run.cfg.batch_size * run.info.world_size)
    metrics.write({"kind": "step", "epoch": epoch + 1, "step": run.global_step, "stage": stage, "lr": lr,
                   **vals, "samples_per_s": rate, "data_wait_s": wait}, run.global_step)
    if bar is not None:
        bar.set_postfix(loss=f"{vals['loss']:.3f}", refresh=False)


class TrainingStopped(CrossclrError):
    """SIGTERM stopped the run between two steps; the last checkpoint is kept (exit status 143)."""

    exit_code = 143


class _Sigterm:
    """SIGTERM during ``train``: the first one asks the loop to stop once the current step (or checkpoint
    write) is done; a second one stops at once. Either way ``TrainingStopped`` says how to continue. Only
    in the main thread (Python runs signal handlers there); elsewhere SIGTERM keeps its usual action."""

    requested = False

    def __init__(self, ckpt_path: Path) -> None:
        self.ckpt_path = ckpt_path
        self._previous: Any = None

    def __enter__(self) -> _Sigterm:
        _Sigterm.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        _Sigterm.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if _Sigterm.requested:
            raise self.stopped("a second SIGTERM")
        _Sigterm.requested = True
        log.info("SIGTERM: stopping after the current step")

    def stopped(self, when: str) -> TrainingStopped:
        if self.ckpt_path.is_file():
            kept = f"{self.ckpt_path} holds the last saved epoch; resume with --resume"
        else:
            kept = f"no checkpoint was saved yet ({self.ckpt_path}); start the run again"
        return TrainingStopped(f"{self.ckpt_path.parent}: stopped by SIGTERM ({when}); {kept}")


def _stop_if_asked(run: _Run, epoch: int) -> None:
    """Raise ``TrainingStopped`` at a step boundary once SIGTERM asked for it (see ``_Sigterm``)."""
    if _Sigterm.requested:
        raise _Sigterm(run.ckpt_path).stopped(f"epoch {epoch + 1}, after step {run.global_step}")


def _progress_bar(run: _Run, epoch: int, stage: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=len(run.loader), desc=f"epoch {epoch + 1}/{run.cfg.epochs} [{stage}]", leave=False,
                dynamic_ncols=True)


def _train_epoch(run: _Run, epoch: int, metrics: MetricsLog, *, progress: bool,
                 stop_after_steps: int | None) -> dict[str, Any] | None:
    """One epoch: its steps, the BN statistics averaged over ranks, the per-epoch schedule step; returns
    the epoch record (means of every step's outputs), or None when ``stop_after_steps`` cut it short."""
    cfg, info = run.cfg, run.info
    stage = run.objective.stage(epoch)
    run.sampler.set_epoch(epoch)
    run.net.train()
    lr = run.optimizer.param_groups[0]["lr"]
    means, throughput = _EpochMeans(), _Throughput(run.global_step)
    wait_total = 0.0
    t_epoch = time.perf_counter()
    bar = _progress_bar(run, epoch, stage) if info.is_main and progress else None
    if run.threads is not None:
        run.threads.restart()
    try:
        for x, y, wait in _timed_batches(run.loader, run.device, _batch_check(run)):
            lr = run.optimizer.param_groups[0]["lr"]
            outputs = _train_step(run, x, y, stage)
            if run.threads is not None:
                run.threads.lap()
            run.global_step += 1
            wait_total += wait
            means.add(outputs)
            if run.global_step % cfg.log_every == 0:
                _log_step(run, metrics, outputs, epoch, stage, lr, wait, throughput, bar)
            if bar is not None:
                bar.update(1)
            _stop_if_asked(run, epoch)
            if stop_after_steps is not None and run.global_step >= stop_after_steps:
                return None
    finally:
        if bar is not None:
            bar.close()
    average_bn_stats(run.model, info)
    _sync(run.device)
    elapsed = time.perf_counter() - t_epoch
    if cfg.schedule != "cosine":
        run.scheduler.step()
    mean, counts = means.reduce(info, run.device)
    if counts.get("loss", 0) < means.steps * info.world_size:
        raise _nonfinite_loss(float("nan"), epoch)  # at a step that was not logged
    samples = len(run.loader) * cfg.batch_size * info.world_size
    return {"kind": "epoch", "epoch": epoch + 1, "step": run.global_step, "stage": stage, "lr": lr, **mean,
            "samples_per_s": samples / max(elapsed, 1e-9), "data_wait_share": wait_total / max(elapsed, 1e-9),
            "epoch_time_s": elapsed}


def _log_epoch(run: _Run, metrics: MetricsLog, record: dict[str, Any]) -> None:
    metrics.write(record, record["epoch"])
    if run.info.is_main:
        log.info("epoch %d/%d [%s] loss %.4f  %.1f samples/s", record["epoch"], run.cfg.epochs,
                 record["stage"], record.get("loss", float("nan")), record["samples_per_s"])


def _save_checkpoint(run: _Run, epochs_done: int) -> Path | None:
    """Every rank's RNG streams gathered, then rank 0 writes the checkpoint atomically (others: None)."""
    rng = _gather_rng(run.info, capture_rng(run.aug_gen))
    if not run.info.is_main:
        return None
    cache = run.data.cache
    state = make_checkpoint(
        model_state={k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        optimizer_state=run.optimizer.state_dict(), scheduler_state=run.scheduler.state_dict(),
        epoch=epochs_done, rng=rng, config=config_to_dict(run.cfg), streams=list(run.cfg.streams),
        layout_toml=get_layout_text(run.data), num_person=cache.num_person, frames=cache.frames,
        class_names=list(cache.class_names), preprocess=dict(cache.preprocess), data=data_identity(run.data))
    path = atomic_torch_save(state, run.ckpt_path)
    log.info("saved %s (epoch %d)", path, epochs_done)
    return path


def _train_epochs(run: _Run, out: Path, *, resume: bool, progress: bool, stop_after_epochs: int | None,
                  stop_after_steps: int | None) -> TrainResult:
    """The epochs from ``run.start_epoch`` on, logged to metrics.jsonl, with a checkpoint every
    ``save_every`` epochs and at the last one."""
    cfg, info = run.cfg, run.info
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    metrics = MetricsLog(out / "metrics.jsonl", enabled=info.is_main, tensorboard=cfg.tensorboard,
                         keep_before_epoch=run.start_epoch if resume else None)
    last = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, stop_after_epochs)
    records: list[dict[str, Any]] = []
    saved: Path | None = None
    try:
        for epoch in range(run.start_epoch, last):
            record = _train_epoch(run, epoch, metrics, progress=progress, stop_after_steps=stop_after_steps)
            if record is None:
                break
            records.append(record)
            _log_epoch(run, metrics, record)
            done = epoch + 1
            if done % cfg.save_every == 0 or done == last:
                saved = _save_checkpoint(run, done) or saved
    finally:
        metrics.close()
    return TrainResult(model=run.model, epochs_done=run.start_epoch + len(records), checkpoint=saved,
                       epoch_records=records)


def train(cfg: TrainConfig, data_path: str | Path, out: str | Path, *, resume: bool = False,
          progress: bool = True, stop_after_epochs: int | None = None,
          stop_after_steps: int | None = None) -> TrainResult:
    """Pretrain with ``cfg`` on ``data_path`` (an HDF5 cache), writing ``out/pretrain.pt`` and metrics.

    ``resume``: continue from ``out/pretrain.pt`` (exactly, on CPU in deterministic mode) on the same cache;
    a finished run trains nothing (``checkpoint`` None, ``epochs_done`` the checkpoint's).
    ``stop_after_epochs``: stop (after saving) once this many epochs are done, as if the run were killed.
    ``stop_after_steps``: stop mid-epoch after this many steps in total, without saving (benchmarks).
    """
    out = Path(out)
    info, device = _setup_process(cfg)
    try:
        ckpt_path = out / CHECKPOINT_NAME
        ckpt = _read_resume_checkpoint(ckpt_path, cfg, resume)
        data = open_train_data(data_path, split=cfg.split, layout=cfg.layout or None,
                               batch_size=cfg.batch_size, world_size=info.world_size, drop_last=cfg.drop_last,
                               preload=cfg.preload, in_channels=3)
        try:
            if ckpt is not None:
                _check_resume_data(ckpt, data, ckpt_path)
            run = _build_run(cfg, data, info, device, ckpt, ckpt_path)
            del ckpt  # the weights live in the model now
            if info.is_main:
                for warning in run.objective.warnings():
                    log.warning("%s", warning)
            if run.start_epoch >= cfg.epochs:
                log.info("%s: the run has %d epochs, epochs = %d: nothing to train", ckpt_path,
                         run.start_epoch, cfg.epochs)
                return TrainResult(model=run.model, epochs_done=run.start_epoch, checkpoint=None)
            with _Sigterm(ckpt_path):
                return _train_epochs(run, out, resume=resume, progress=progress,
                                     stop_after_epochs=stop_after_epochs, stop_after_steps=stop_after_steps)
        finally:
            data.cache.close()
    finally:
        if info.owns_group:
            dist.destroy_process_group()


def get_layout_text(data: TrainData) -> str:
    return layout_to_toml(data.layout)


__all__ = ["train", "TrainResult", "TrainingStopped", "apply_mallopt", "setup_distributed", "resolve_device",
           "build_model", "build_optimizer", "build_scheduler", "param_groups"]
