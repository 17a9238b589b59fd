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
    """The pretrained query encoders (eval mode, CPU) of ``streams`` (default: all).

    Returns ``(encoders, meta)``; ``meta`` holds the checkpoint's ``config`` (dict), ``train_config``
    (``TrainConfig``), ``encoder_config``, ``streams``, ``layout`` (TOML text), ``layout_obj`` (Layout),
    ``num_person``, ``frames``, ``class_names``, ``preprocess``, ``epoch``, ``format``.
    ``which="k"`` loads the momentum (key) encoders instead. The state-dict prefix of each group is the
    objective's (``Objective.encoder_groups``): the checkpoint's own objective says where its encoders are.
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
    wanted = _wanted_streams(path, list(ckpt["streams"]), streams)
    group = _encoder_group(path, cfg.objective, which)
    encoders: dict[str, torch.nn.Module] = {}
    for view in wanted:
        enc = build_encoder(layout, cfg.model, num_person=int(ckpt["num_person"]),
                            frames=int(ckpt.get("frames") or 50))
        load_model_state(enc, _substate(path, ckpt["model"], f"{group}.{view}."), path)
        encoders[view] = enc.eval()
    meta = {k: ckpt.get(k) for k in ("format", "epoch", "config", "streams", "layout", "num_person", "frames",
                                      "class_names", "preprocess", "version")}
    meta.update(train_config=cfg, encoder_config=cfg.model, layout_obj=layout)
    return encoders, meta


def _wanted_streams(path: Path, have: list[str], streams: list[str] | tuple[str, ...] | None) -> list[str]:
    """``streams`` (default: all of ``have``), refused in one line when the checkpoint lacks one."""
    wanted = list(streams) if streams is not None else have
    absent = [s for s in wanted if s not in have]
    if absent:
        raise CrossclrError(f"{path}: streams {absent} are not in this checkpoint; it has {have}")
    return wanted


def _encoder_group(path: Path, objective: str, which: str) -> str:
    """The state-dict prefix of the query (``which="q"``) or key (``"k"``) encoders of ``objective``."""
    from training.objectives.base import objective_class

    index = {"q": 0, "k": 1}.get(which)
    if index is None:
        raise ValueError(f"which must be 'q' (query encoders) or 'k' (key encoders), got {which!r}")
    groups = objective_class(objective).encoder_groups
    if index >= len(groups):
        raise CrossclrError(f"{path}: objective {objective!r} keeps no key encoders (its encoders are under "
                            f"{groups[0]!r}); expected which='q'")
    return groups[index]


def _substate(path: Path, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed; one line when there are none."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CrossclrError(f"{path}: no weights under {prefix!r}; expected its objective's "
                            f"{prefix.split('.')[0]}.<view>.* keys")
    return sub
