"""Pretraining configuration: one typed, frozen dataclass loaded from TOML, flags override the file.

A TOML file holds the top-level ``TrainConfig`` fields and the tables ``[model]`` (``EncoderConfig``) and
``[ssl]`` (``SSLConfig``). Unknown keys and values of the wrong type are refused with one line naming the
key and the expected type. ``PRESETS`` maps preset names to the files in ``training/presets/``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from crossclr_infer.errors import CrossclrError
from crossclr_infer.views import check_streams
from training.encoders.config import EncoderConfig
from training.objectives import objective_class
from training.objectives.crossclr import SSLConfig
from training.objectives.mamp import MAMPConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Presets are package data (training/presets/*.toml), found through importlib.resources so that they
# resolve the same way from a checkout, an editable install and a wheel.
CONFIG_DIR = Path(str(resources.files("training").joinpath("presets")))

# Preset name -> TOML file in training/presets/ (plain data, no registry).
PRESETS: dict[str, Path] = {
    "crossclr-ntu60-xsub": CONFIG_DIR / "crossclr_ntu60_xsub.toml",
    "crossclr-ntu60-xview": CONFIG_DIR / "crossclr_ntu60_xview.toml",
    "crossclr-ntu120-xsub": CONFIG_DIR / "crossclr_ntu120_xsub.toml",
    "crossclr-ntu120-xset": CONFIG_DIR / "crossclr_ntu120_xset.toml",
    "skeletonclr-joint": CONFIG_DIR / "skeletonclr_joint.toml",
    "crossclr-2s": CONFIG_DIR / "crossclr_2s.toml",
    "tiny": CONFIG_DIR / "tiny.toml",
    "crossclr-small": CONFIG_DIR / "crossclr_small.toml",
    "mamp-ntu60-xsub": CONFIG_DIR / "mamp_ntu60_xsub.toml",
    "mamp-ntu60-xview": CONFIG_DIR / "mamp_ntu60_xview.toml",
    "mamp-ntu120-xsub": CONFIG_DIR / "mamp_ntu120_xsub.toml",
    "mamp-ntu120-xset": CONFIG_DIR / "mamp_ntu120_xset.toml",
    "mamp-crossview": CONFIG_DIR / "mamp_crossview.toml",
    "tiny-transformer": CONFIG_DIR / "tiny_transformer.toml",
    "tiny-transformer-crossview": CONFIG_DIR / "tiny_transformer_crossview.toml",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a pretraining run (defaults = official 3s-CrosSCLR, docs/design.md §3)."""

    model: EncoderConfig = field(default_factory=EncoderConfig)  # encoder architecture (every view alike)
    ssl: SSLConfig = field(default_factory=SSLConfig)  # queue, momentum, temperature, mining, cross loss
    mamp: MAMPConfig = field(default_factory=MAMPConfig)  # masking, decoder (objective = "mamp")
    objective: str = "crossclr"  # a registered objective (training.objectives): crossclr (SkeletonCLR with
    # one stream) or mamp
    init_from: str = ""  # pretrain.pt whose encoders start this run (e.g. MAMP before a cross-view stage)
    augment: Literal["auto", "crossclr", "mamp", "none"] = "auto"  # auto: the objective's own augmentation
    streams: tuple[str, ...] = ("joint", "motion", "bone")  # views trained, one encoder each
    layout: str = ""  # skeleton layout the graph is built for (name or TOML path); "" = the cache's own
    split: str = "train"  # cache split to pretrain on
    epochs: int = 300  # total epochs
    cross_epoch: int = 150  # first 0-based cross-view epoch (>= epochs, or one stream: single-view only)
    batch_size: int = 128  # samples per step per process (DDP: per rank)
    lr: float = 0.1  # base learning rate of SGD
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (official config: false)
    weight_decay: float = 1e-4  # L2 weight decay
    weight_decay_on: Literal["all", "matrices"] = "all"  # "all" params (official) or rank >= 2 tensors only
    lr_steps: tuple[int, ...] = (250,)  # epochs (0-based) from which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # lr factor at every step in lr_steps
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD (CrosSCLR) or AdamW (MAMP)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (MAMP's)
    schedule: Literal["step", "cosine"] = "step"  # step: lr_steps/lr_gamma per epoch; cosine: per step
    warmup_epochs: int = 0  # cosine: linear warm-up from 0 over these epochs (MAMP: 20)
    min_lr: float = 0.0  # cosine: the lr at the end of the half cycle (MAMP: 5e-4)
    seed: int = 0  # seed of model init, sampler order and augmentation
    deterministic: bool = False  # torch deterministic algorithms and a fixed thread count (slower); a
    # bit-identical --resume on CPU needs the same thread count in both runs: this, or CROSSCLR_THREADS
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    bf16: bool | Literal["auto"] = "auto"  # bfloat16 autocast of the encoders; auto: on for CUDA with bf16
    # and CPUs with native bf16 (AVX512-BF16 / AMX), off elsewhere; true on a CPU without it is refused
    mallopt: bool = True  # raise glibc malloc mmap/trim thresholds (Linux glibc; faster CPU training)
    num_workers: int = 2  # DataLoader worker processes (0 = read in the main process)
    preload: bool = False  # read the whole split into memory once instead of per-sample reads
    drop_last: bool = True  # drop the last incomplete batch of every epoch (official: true)
    track_mining: bool = True  # log how often mined positives share the class (labels never train)
    save_every: int = 5  # write the checkpoint every N epochs (and always at the end)
    log_every: int = 1  # write a step record to metrics.jsonl every N steps
    tensorboard: bool = True  # also write TensorBoard scalars when tensorboard is installed

    def __post_init__(self) -> None:
        def bad(key: str, problem: str) -> CrossclrError:
            return CrossclrError(f"{key} {problem}")

        check_streams(self.streams, "streams")
        for key in ("epochs", "batch_size", "save_every", "log_every"):
            if getattr(self, key) < 1:
                raise bad(key, f"= {getattr(self, key)}; expected an integer >= 1")
        if self.cross_epoch < 0:
            raise bad("cross_epoch", f"= {self.cross_epoch}; expected an integer >= 0")
        if self.num_workers < 0:
            raise bad("num_workers", f"= {self.num_workers}; expected an integer >= 0")
        for key, ok, expected in (("lr", self.lr > 0, "> 0"),
                                  ("weight_decay", self.weight_decay >= 0, ">= 0"),
                                  ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                                  ("lr_gamma", self.lr_gamma > 0, "> 0")):
            if not ok or not math.isfinite(getattr(self, key)):  # comparisons with NaN are False
                raise bad(key, f"= {getattr(self, key)}; expected a finite number {expected}")
        if not (self.warmup_epochs >= 0 and self.min_lr >= 0 and all(0 <= b < 1 for b in self.betas)):
            raise bad("warmup_epochs/min_lr/betas", "out of range; expected warmup_epochs >= 0, min_lr >= 0 "
                      "and betas in [0, 1)")
        objective_class(self.objective).check_config(self)  # a known objective that can train this config
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s < 0 for s in self.lr_steps):
            raise bad("lr_steps", f"= {list(self.lr_steps)}; expected increasing epochs >= 0")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise bad("device", f"= {dev!r}; expected auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "list [" + ", ".join(_type_name(a) for a in args) + "]"
    if tp is type(None):
        return "none"
    if dataclasses.is_dataclass(tp):
        return f"table ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


# scalar annotation -> whether a TOML value is one (a bool is no int; an int is a float)
_SCALARS: dict[Any, Callable[[Any], bool]] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert TOML forms (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return _from_dict(tp, value, key + ".", source)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key, source)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key, source) for v in value)
        if len(args) != len(value):
            raise _Mismatch
        return tuple(_convert(v, a, key, source) for v, a in zip(value, args, strict=True))
    if tp in _SCALARS:
        if not _SCALARS[tp](value):
            raise _Mismatch
        return float(value) if tp is float else value
    if tp is Any:
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _blamed(source: str, sources: Mapping[str, str] | None, *keys: str) -> str:
    """Where a bad value came from: the flag that set one of ``keys`` (dotted), else the file ``source``."""
    for key in keys:
        if sources and key in sources:
            return sources[key]
    return source


def _keys_named(message: str, prefix: str) -> list[str]:
    """The dotted keys a validation message starts with (``"lr/weight_decay out of range"``)."""
    head = message.split(" ", 1)[0].split("=", 1)[0].rstrip(":")
    return [prefix + k for k in head.split("/") if k]


def _from_dict(cls: type, data: dict[str, Any], prefix: str, source: str,
               sources: Mapping[str, str] | None = None) -> Any:
    """``cls(**data)`` with key and type checks; errors start with ``source``, or with the flag in
    ``sources`` (dotted key -> flag) that set the offending key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = _blamed(source, sources, prefix + key)
        if key not in names:
            raise CrossclrError(f"{where}: unknown key '{prefix}{key}'; expected one of: {', '.join(names)}")
        try:
            if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
                kwargs[key] = _from_dict(hints[key], value, prefix + key + ".", source, sources)
            else:
                kwargs[key] = _convert(value, hints[key], prefix + key, source)
        except _Mismatch:
            raise CrossclrError(f"{where}: {prefix}{key} = {value!r} has the wrong type; "
                                f"expected {_type_name(hints[key])}") from None
    try:
        return cls(**kwargs)
    except CrossclrError as e:
        raise CrossclrError(f"{_blamed(source, sources, *_keys_named(str(e), prefix))}: {e}") from None
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        table = prefix.rstrip(".")
        where = _blamed(source, sources, *[k for k in (sources or {}) if table and k.startswith(prefix)])
        raise CrossclrError(f"{where}: [{table or 'config'}] {msg}") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (lists for tuples) that TOML, JSON and ``torch.load(weights_only=True)`` accept."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Inverse of ``config_to_dict``, with the same key and type checks as a TOML file."""
    if not isinstance(data, dict):
        raise CrossclrError(f"{source}: expected a table of settings, got {type(data).__name__}")
    return _from_dict(TrainConfig, data, "", source)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name from ``PRESETS`` or a path to a TOML file."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    p = Path(name_or_path)
    if not p.is_file():
        raise CrossclrError(f"{p}: config file not found; expected a TOML file or a preset name "
                            f"({', '.join(PRESETS)})")
    return p


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, *,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Load a TOML config (preset name or path), then apply ``overrides``.

    ``overrides`` maps top-level field names or dotted keys (``"model.width"``) to values; ``None`` values
    are ignored (a flag that was not given). A bad override is blamed on its flag (``override_label``), not
    on the file. ``base`` (e.g. a checkpoint's config dict) is used instead of defaults when ``path`` is
    None.
    """
    data: dict[str, Any] = {}
    source = "config"
    sources: dict[str, str] = {}
    if path is not None:
        p = resolve_config_path(path)
        source = str(p)
        try:
            with open(p, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise CrossclrError(f"{p}: not valid TOML ({e}); expected key = value lines and [model]/[ssl] "
                                "tables") from None
    elif base is not None:
        import copy

        data = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
            sources[key] = override_label(key)
    return _from_dict(TrainConfig, data, "", source, sources)


def override_label(key: str) -> str:
    """How an error names an override: the command-line flag of a top-level key (``cross_epoch`` ->
    ``--cross-epoch``), ``override model.width`` for a dotted key (no flag sets those)."""
    return f"override {key}" if "." in key else "--" + key.replace("_", "-")
