"""Pretraining checkpoints (``crossclr-pretrain-v1``): atomic save, safe load, RNG capture, encoder loading.

The file is a plain ``torch.save`` dict that ``torch.load(weights_only=True)`` reads: tensors, numbers,
strings, lists and dicts only (RNG states are stored as tensors and lists, never numpy pickles).

Keys: ``format``, ``model`` (CrosSCLR state_dict, queues included), ``optimizer``, ``scheduler``,
``epoch`` (epochs completed), ``rng`` (list, one dict per rank), ``config`` (plain dict), ``streams``,
``layout`` (TOML text), ``num_person``, ``frames``, ``class_names``, ``preprocess``, ``version``, and for
runs of ``crossclr train`` ``data`` (the training cache's path, split, sample count and a digest of its
sample names, checked on ``--resume``).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossclr_infer import __version__
from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import WriteFailed, atomic_output
from crossclr_infer.layouts import layout_from_toml_text

log = logging.getLogger(__name__)

PRETRAIN_FORMAT = "crossclr-pretrain-v1"
CHECKPOINT_NAME = "pretrain.pt"


# ---------------------------------------------------------------------------------------------------------
# RNG states in weights_only-safe forms


def capture_rng(augment_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) and the augmentation generator, as tensors/lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "augment": augment_generator.get_state() if augment_generator is not None else None,
    }
    return state


def restore_rng(state: dict[str, Any], augment_generator: torch.Generator | None = None) -> None:
    """Inverse of ``capture_rng``."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint holds CUDA RNG states for %d devices, %d visible: not restored",
                        len(cuda), torch.cuda.device_count())
    if augment_generator is not None and state.get("augment") is not None:
        augment_generator.set_state(state["augment"])


# ---------------------------------------------------------------------------------------------------------
# save / load


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``. A write that
    fails (disk full, ``ulimit -f``: torch then reports only "unexpected pos ...") is one line naming
    ``path``; the temp file is removed and a previous ``path`` is kept."""
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            torch.save(obj, tmp)
    except WriteFailed:
        raise
    except (OSError, RuntimeError) as e:
        raise CrossclrError(f"{path}: could not be written ({_reason(e)}); check the free space and the file "
                            "size limit (ulimit -f); any previous file is kept") from e
    return path


def torch_load_safe(path: Path, *, missing: str, unreadable: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU. CrossclrError ``"{path}: {missing}"`` when there is no such
    file, ``"{path}: {unreadable}"`` (``{reason}`` replaced by the first line of the error) when it cannot
    be read."""
    if not path.is_file():
        raise CrossclrError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused is None:
            raise CrossclrError(f"{path}: " + unreadable.format(reason=_reason(e))) from None
        expected = unreadable[unreadable.index("expected"):] if "expected" in unreadable else (
            "expected a checkpoint this project wrote (crossclr train, linear or import-official)")
        raise CrossclrError(f"{path}: not a trusted checkpoint: it refers to {refused.group(1)}, not only to "
                            "tensors and plain data, so it was refused unread (nothing in it ran); "
                            f"{expected}") from None


def _reason(error: BaseException) -> str:
    """The first line of ``error`` that is not torch's advice to load with ``weights_only=False`` (which
    would run whatever the file holds) or its pointer to the documentation."""
    advice = ("weights_only", "weights only load failed", "documentation of torch.load")
    for line in str(error).splitlines():
        line = line.strip()
        if line and not any(a in line.lower() for a in advice):
            return line[:200]
    return type(error).__name__


def load_checkpoint(path: str | Path, *, expected_format: str = PRETRAIN_FORMAT) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU, with one-line errors for missing/foreign/damaged files."""
    path = Path(path)
    ckpt = torch_load_safe(path, missing="no such checkpoint file",
                           unreadable="not a readable checkpoint ({reason}); expected a "
                                      f"{expected_format} file written by `crossclr train`")
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = " (an official checkpoint? convert it with `crossclr import-official`)" if (
            isinstance(ckpt, dict) and "format" not in ckpt) else ""
        raise CrossclrError(f"{path}: format {got!r}, expected {expected_format!r}{hint}")
    missing = [k for k in ("model", "config", "streams", "layout", "num_person", "frames") if k not in ckpt]
    if missing:
        raise CrossclrError(f"{path}: damaged checkpoint, missing entries {missing}")
    return ckpt


def load_model_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict(strict=True)`` turning a mismatch into one line naming the differing keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(own[k].shape)} expected)")
        raise CrossclrError(f"{path}: checkpoint does not match the model architecture: {'; '.join(parts)}; "
                            "expected a checkpoint of the same encoder config")
    module.load_state_dict(state, strict=True)


def make_checkpoint(*, model_state: dict, optimizer_state: dict | None, scheduler_state: dict | None,
                    epoch: int, rng: list[dict[str, Any]], config: dict[str, Any], streams: list[str],
                    layout_toml: str, num_person: int, frames: int, class_names: list[str],
                    preprocess: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict; ``data`` (optional): the training cache's identity (``training.data.
    data_identity``), which a resume checks."""
    extra = {} if data is None else {"data": dict(data)}
    return {
        "format": PRETRAIN_FORMAT,
        "version": __version__,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "epoch": int(epoch),
        "rng": rng,
        "config": config,
        "streams": list(streams),
        "layout": layout_toml,
        "num_person": int(num_person),
        "frames": int(frames),
        "class_names": list(class_names),
        "preprocess": dict(preprocess),
        **extra,
    }


def load_encoders(path: str | Path, streams: list[str] | tuple[str, ...] | None = None,
                  *, which: str = "q") -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """The pretrained query encoders (``STGCN``, eval mode, CPU) of ``streams`` (default: all).

    Returns ``(encoders, meta)``; ``meta`` holds the checkpoint's ``config`` (dict), ``train_config``
    (``TrainConfig``), ``encoder_config``, ``streams``, ``layout`` (TOML text), ``layout_obj`` (Layout),
    ``num_person``, ``frames``, ``class_names``, ``preprocess``, ``epoch``, ``format``.
    ``which="k"`` loads the momentum (key) encoders instead.
    """
    from training.config import config_from_dict
    from training.encoders import build_encoder

    path = Path(path)
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], f"{path} (config)")
    try:
        layout = layout_from_toml_text(ckpt["layout"], f"{path} (layout)")
    except ValueError as e:
        raise CrossclrError(str(e)) from None
    have = list(ckpt["streams"])
    wanted = list(streams) if streams is not None else have
    absent = [s for s in wanted if s not in have]
    if absent:
        raise CrossclrError(f"{path}: streams {absent} are not in this checkpoint; it has {have}")
    state = ckpt["model"]
    prefix_root = "encoders_q." if which == "q" else "encoders_k."
    if not any(k.startswith(prefix_root) for k in state) and any(k.startswith("encoders.") for k in state):
        prefix_root = "encoders."  # a MAMP checkpoint: one encoder per view, no key encoders
    encoders: dict[str, torch.nn.Module] = {}
    for view in wanted:
        prefix = f"{prefix_root}{view}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise CrossclrError(f"{path}: no weights under {prefix!r}; expected a CrosSCLR state dict with "
                                f"{prefix_root}<view>.* keys")
        enc = build_encoder(layout, cfg.model, num_person=int(ckpt["num_person"]),
                            frames=int(ckpt.get("frames") or 50))
        load_model_state(enc, sub, path)
        enc.eval()
        encoders[view] = enc
    meta = {k: ckpt.get(k) for k in ("format", "epoch", "config", "streams", "layout", "num_person", "frames",
                                      "class_names", "preprocess", "version")}
    meta.update(train_config=cfg, encoder_config=cfg.model, layout_obj=layout)
    return encoders, meta


# ---------------------------------------------------------------------------------------------------------
# official checkpoints


def _read_official(path: Path) -> dict[str, torch.Tensor]:
    obj = torch_load_safe(path, missing="no such file",
                          unreadable="not a readable torch state dict ({reason}); expected an official "
                                     "CrosSCLR/SkeletonCLR .pt file")
    if isinstance(obj, dict) and "format" in obj:
        raise CrossclrError(f"{path}: already a {obj['format']!r} checkpoint of this project; expected an "
                            "official one")
    for key in ("state_dict", "model"):  # tolerate a wrapped state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CrossclrError(f"{path}: expected a state dict of tensors (official CrosSCLR/SkeletonCLR), got "
                            f"{type(obj).__name__}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _convert_mamp(path: Path, out: Path, state: dict[str, torch.Tensor], layout: Any,
                  num_person: int) -> Path:
    """An official MAMP checkpoint -> ``crossclr-pretrain-v1`` with one transformer (``encoders.joint``);
    the decoder (and a probe or fine-tuning head) is dropped with a note. The encoder is loaded strictly
    into ``SkeletonTransformer`` before anything is written."""
    from crossclr_infer.layouts import layout_to_toml
    from training.config import TrainConfig, config_to_dict
    from training.encoders.transformer import SkeletonTransformer
    from training.importers.mamp import convert_mamp_state, token_grid

    cfg, enc_state, dec_state, dropped = convert_mamp_state(state, str(path))
    grid = token_grid(enc_state)
    if grid.joints != layout.num_joints:
        raise CrossclrError(f"{path}: the checkpoint has {grid.joints} joints but layout {layout.name!r} has "
                            f"{layout.num_joints}; pass the --layout it was trained on")
    enc = SkeletonTransformer(layout, cfg, num_person=num_person, in_channels=grid.in_channels,
                              frames=grid.frames)
    load_model_state(enc, enc_state, path)
    notes = []
    if dec_state:
        notes.append(f"dropped the MAMP decoder ({len(dec_state)} tensors: decoder_*, mask_token); "
                     "the encoder is what linear/kNN/fine-tuning and export use")
    if dropped:
        notes.append(f"dropped {len(dropped)} other keys: {', '.join(dropped[:6])}")
    tcfg = TrainConfig(model=cfg, objective="mamp", streams=("joint",), optimizer="adamw", schedule="cosine",
                       weight_decay=0.05, weight_decay_on="matrices", lr=1e-3, min_lr=5e-4, warmup_epochs=20,
                       epochs=400)
    ckpt = make_checkpoint(model_state={f"encoders.joint.{k}": v.detach().cpu()
                                        for k, v in enc.state_dict().items()},
                           optimizer_state=None, scheduler_state=None, epoch=tcfg.epochs, rng=[],
                           config=config_to_dict(tcfg), streams=["joint"], layout_toml=layout_to_toml(layout),
                           num_person=num_person, frames=grid.frames, class_names=[],
                           preprocess={"mode": "mamp", "frames": grid.frames})
    ckpt["imported_from"] = str(path)
    ckpt["import_notes"] = notes
    atomic_torch_save(ckpt, out)
    for note in notes:
        log.warning("%s: %s", path, note)
    log.info("%s: imported MAMP transformer (%d blocks × %d, %d frames) -> %s", path, cfg.depth,
             cfg.hidden_dim, grid.frames, out)
    return out


def convert_official_file(path: str | Path, out: str | Path, *, layout: str = "ntu-rgb+d", frames: int = 50,
                          num_person: int = 2, single_view: str = "joint") -> Path:
    """Convert an official checkpoint: pretraining ones to ``crossclr-pretrain-v1``, linear-evaluation ones
    (``encoder_q*.fc`` = heads) to ``crossclr-linear-v1``. Written atomically to ``out``.

    Both are loaded strictly into this project's modules before writing (``build_imported``).
    """
    from crossclr_infer.layouts import get_layout, layout_to_toml
    from training.config import TrainConfig, config_to_dict
    from training.encoders.config import EncoderConfig
    from training.importers.crossclr import build_imported, convert_official_state
    from training.objectives.crossclr import SSLConfig

    path, out = Path(path), Path(out)
    lay = get_layout(layout)
    state = _read_official(path)
    if "joints_embed.proj.weight" in state:
        return _convert_mamp(path, out, state, lay, num_person)
    ours, meta = convert_official_state(state, layout=lay, single_view=single_view, source=str(path))
    built = build_imported(ours, meta, lay, num_person=num_person)
    enc_cfg = EncoderConfig.from_dict(dict(meta["encoder_config"]))
    preprocess = {"mode": "official", "frames": int(frames)}
    if meta["kind"] == "pretrain":
        views = list(meta["views"])
        base = TrainConfig()
        cfg = TrainConfig(model=enc_cfg, ssl=SSLConfig(queue_size=int(meta["queue_size"])),
                          streams=tuple(views),
                          cross_epoch=base.cross_epoch if len(views) > 1 else base.epochs)
        model = built["model"]
        ckpt = make_checkpoint(model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                               optimizer_state=None, scheduler_state=None, epoch=cfg.epochs, rng=[],
                               config=config_to_dict(cfg), streams=views, layout_toml=layout_to_toml(lay),
                               num_person=num_person, frames=frames, class_names=[], preprocess=preprocess)
        ckpt["imported_from"] = str(path)
        ckpt["import_notes"] = list(meta.get("notes", []))
        atomic_torch_save(ckpt, out)
        log.info("%s: imported pretraining checkpoint (%s) -> %s", path, ", ".join(views), out)
        return out

    from training.protocols.io import save_linear

    num_class = int(meta["num_class"])
    class_names = [f"class {i + 1}" for i in range(num_class)]
    if lay.name == "ntu-rgb+d" and num_class in (60, 120):
        from crossclr_infer.ntu import NTU_ACTION_NAMES

        class_names = list(NTU_ACTION_NAMES[:num_class])
    streams = list(meta["views"])
    save_linear(out, built["encoders"], built["heads"], fusion="joint",
                fusion_weights={v: 1.0 / len(streams) for v in streams}, class_names=class_names, layout=lay,
                meta={"config": {"model": enc_cfg.to_dict()}, "frames": frames, "num_person": num_person,
                      "in_channels": int(meta["in_channels"]), "preprocess": preprocess,
                      "source_checkpoint": str(path)},
                metrics={})
    log.info("%s: imported linear-evaluation checkpoint (%s, %d classes) -> %s", path, ", ".join(streams),
             num_class, out)
    return out
