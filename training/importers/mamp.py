"""Import official MAMP checkpoints (maoyunyao/MAMP) into ``SkeletonTransformer`` and ``MAMPDecoder``.

Official files are ``{"model": state_dict, ...}``. Pretraining states hold the encoder
(``joints_embed.proj.*``, ``temp_embed`` (1, T/p, 1, D), ``pos_embed`` (1, 1, V, D), ``blocks.{i}.*``,
``norm.*``) and the decoder (``decoder_embed.*``, ``mask_token``, ``decoder_blocks.{i}.*``,
``decoder_norm.*``, ``decoder_temp_embed``, ``decoder_pos_embed``, ``decoder_pred.*``); linear-probe and
fine-tuning states add ``head.*`` (dropped here). Both name sets are this project's own, so tensors map
without renaming. The head count cannot be read from shapes (qkv is (3·D, D) for any H): it is a parameter,
8 by default as in every official config. ``convert_mamp_file`` writes the converted encoder as a
``crossclr-pretrain-v1`` checkpoint (``training.importers.convert_official_file`` dispatches here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout, layout_to_toml
from training.checkpoint import load_model_state, make_checkpoint
from training.config import TrainConfig, config_to_dict
from training.encoders import build_encoder
from training.encoders.config import EncoderConfig
from training.importers.common import save_imported
from training.objectives.mamp import MAMPConfig

log = logging.getLogger(__name__)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DECODER_BLOCK_RE = re.compile(r"^decoder_blocks\.(\d+)\.")
_DECODER_TOP = ("decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_norm.weight",
                "decoder_norm.bias", "decoder_temp_embed", "decoder_pos_embed", "decoder_pred.weight",
                "decoder_pred.bias")


class TokenGrid(NamedTuple):
    """Input geometry fixed by an encoder state: build ``SkeletonTransformer(layout, cfg, in_channels=…,
    frames=…)`` with a layout of ``joints`` joints."""

    frames: int
    joints: int
    in_channels: int


def _fail(source: str, msg: str) -> CrossclrError:
    return CrossclrError(f"{source}: {msg}")


def _unwrap(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The plain state dict: ``{"model": state}`` unwrapped, ``module.`` prefixes removed, tensors only."""
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        if not isinstance(val, torch.Tensor):
            raise _fail(source, f"entry {key!r} is a {type(val).__name__}, not a tensor; expected a MAMP "
                                "state dict or {'model': state_dict}")
        out[key[len("module."):] if key.startswith("module.") else key] = val
    return out


def _block_shapes(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
              "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
              "norm2.weight": (dim,), "norm2.bias": (dim,), "mlp.fc1.weight": (hidden, dim),
              "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,)}
    return {prefix + k: s for k, s in shapes.items()}


def _check_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str,
                  what: str) -> None:
    missing = sorted(k for k in expected if k not in state)
    if missing:
        more = " …" if len(missing) > 6 else ""
        raise _fail(source, f"{what} lacks {missing[:6]}{more}; expected a complete official MAMP state")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise _fail(source, f"{what} tensor {k!r} has shape {tuple(state[k].shape)}, expected {shape}")


def _depth(keys: list[str] | Mapping[str, Any], pattern: re.Pattern[str]) -> int:
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)


def token_grid(encoder_state: Mapping[str, torch.Tensor]) -> TokenGrid:
    """Frames, joints and input channels of a (converted) encoder state."""
    w = encoder_state["joints_embed.proj.weight"]  # (D, C, p, 1)
    return TokenGrid(frames=int(encoder_state["temp_embed"].shape[1]) * int(w.shape[2]),
                     joints=int(encoder_state["pos_embed"].shape[2]), in_channels=int(w.shape[1]))


def convert_mamp_state(state: Mapping[str, Any], source: str, num_heads: int = 8,
                       ) -> tuple[EncoderConfig, dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Split an official MAMP state into (encoder config, encoder state, decoder state, dropped keys).

    The config (``graph="transformer"``, ``projector="none"``) takes width, depth, MLP ratio and t_patch
    from the tensors and ``num_heads`` from the caller; frames, joints and channels are in
    ``token_grid(encoder_state)``. The decoder state is empty for linear-probe / fine-tuning checkpoints.
    ``source`` names the file in errors.
    """
    sd = _unwrap(state, source)
    need = ("joints_embed.proj.weight", "temp_embed", "pos_embed", "blocks.0.attn.qkv.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        found = ", ".join(sorted(sd)[:4]) or "nothing"
        raise _fail(source, f"not a MAMP transformer checkpoint: lacks {missing}; expected "
                            f"joints_embed.proj.*, temp_embed, pos_embed, blocks.{{i}}.* (found {found} …)")
    w = sd["joints_embed.proj.weight"]
    if w.dim() != 4 or w.shape[3] != 1:
        raise _fail(source, f"joints_embed.proj.weight has shape {tuple(w.shape)}; expected "
                            "(D, C, t_patch, 1) (patches of one joint)")
    width, in_ch, t_patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    t_tokens, joints = int(sd["temp_embed"].shape[1]), int(sd["pos_embed"].shape[2])
    depth = _depth(sd, _BLOCK_RE)
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else 4 * width
    if width % num_heads:
        raise _fail(source, f"width {width} is not divisible by num_heads {num_heads}; pass the head count "
                            "the checkpoint was trained with")
    expected = {"joints_embed.proj.weight": (width, in_ch, t_patch, 1), "joints_embed.proj.bias": (width,),
                "temp_embed": (1, t_tokens, 1, width), "pos_embed": (1, 1, joints, width),
                "norm.weight": (width,), "norm.bias": (width,)}
    for i in range(depth):
        expected.update(_block_shapes(f"blocks.{i}.", width, hidden))
    _check_shapes(sd, expected, source, "encoder")
    cfg = EncoderConfig(graph="transformer", projector="none", hidden_dim=width, depth=depth,
                        num_heads=num_heads, mlp_ratio=hidden / width, t_patch=t_patch)
    encoder = {k: sd[k] for k in expected}

    dec_keys = [k for k in sd if k in _DECODER_TOP or _DECODER_BLOCK_RE.match(k)]
    decoder: dict[str, torch.Tensor] = {}
    if dec_keys:
        e = int(sd["decoder_embed.weight"].shape[0]) if "decoder_embed.weight" in sd else width
        fc1 = sd.get("decoder_blocks.0.mlp.fc1.weight")
        d_hidden = int(fc1.shape[0]) if fc1 is not None else hidden
        out_dim = int(sd["decoder_pred.weight"].shape[0]) if "decoder_pred.weight" in sd else t_patch * in_ch
        dec_expected = {"decoder_embed.weight": (e, width), "decoder_embed.bias": (e,),
                        "mask_token": (1, 1, e), "decoder_norm.weight": (e,), "decoder_norm.bias": (e,),
                        "decoder_temp_embed": (1, t_tokens, 1, e), "decoder_pos_embed": (1, 1, joints, e),
                        "decoder_pred.weight": (out_dim, e), "decoder_pred.bias": (out_dim,)}
        for i in range(_depth(dec_keys, _DECODER_BLOCK_RE)):
            dec_expected.update(_block_shapes(f"decoder_blocks.{i}.", e, d_hidden))
        _check_shapes(sd, dec_expected, source, "decoder")
        if d_hidden != int(e * cfg.mlp_ratio):
            raise _fail(source, f"decoder MLP width {d_hidden} is not mlp_ratio {cfg.mlp_ratio} × {e}; "
                                "expected the encoder's MLP ratio (official MAMP shares it)")
        decoder = {k: sd[k] for k in dec_expected}
    dropped = sorted(k for k in sd if k not in encoder and k not in decoder)
    return cfg, encoder, decoder, dropped


def decoder_config(decoder_state: Mapping[str, torch.Tensor], base: MAMPConfig | None = None,
                   num_heads: int = 8) -> MAMPConfig:
    """``base`` (default ``MAMPConfig()``) with the decoder depth and width of a converted decoder state."""
    base = base or MAMPConfig()
    return MAMPConfig(**{**base.to_dict(), "decoder_depth": _depth(decoder_state, _DECODER_BLOCK_RE),
                         "decoder_dim": int(decoder_state["decoder_embed.weight"].shape[0]),
                         "decoder_heads": num_heads})


def is_mamp_state(state: Mapping[str, Any]) -> bool:
    """Whether a (read) official state dict is a MAMP transformer's rather than an ST-GCN's."""
    return "joints_embed.proj.weight" in state


def _import_notes(decoder: Mapping[str, torch.Tensor], dropped: list[str]) -> list[str]:
    notes = []
    if decoder:
        notes.append(f"dropped the MAMP decoder ({len(decoder)} tensors: decoder_*, mask_token); "
                     "the encoder is what linear/kNN/fine-tuning and export use")
    if dropped:
        notes.append(f"dropped {len(dropped)} other keys: {', '.join(dropped[:6])}")
    return notes


def imported_train_config(cfg: EncoderConfig) -> TrainConfig:
    """The training configuration an imported MAMP encoder is recorded with (the official pretraining)."""
    return TrainConfig(model=cfg, objective="mamp", streams=("joint",), optimizer="adamw", schedule="cosine",
                       weight_decay=0.05, weight_decay_on="matrices", lr=1e-3, min_lr=5e-4, warmup_epochs=20,
                       epochs=400)


def convert_mamp_file(path: Path, out: Path, state: Mapping[str, torch.Tensor], layout: Layout,
                      num_person: int) -> Path:
    """An official MAMP state (read from ``path``) -> ``crossclr-pretrain-v1`` at ``out`` with one transformer
    (``encoders.joint``); the decoder (and a probe or fine-tuning head) is dropped with a note. The encoder
    is loaded strictly into ``SkeletonTransformer`` before anything is written."""
    cfg, enc_state, dec_state, dropped = convert_mamp_state(state, str(path))
    grid = token_grid(enc_state)
    if grid.joints != layout.num_joints:
        raise CrossclrError(f"{path}: the checkpoint has {grid.joints} joints but layout {layout.name!r} has "
                            f"{layout.num_joints}; pass the --layout it was trained on")
    enc = build_encoder(layout, cfg, num_person=num_person, in_channels=grid.in_channels, frames=grid.frames)
    load_model_state(enc, enc_state, path)
    notes = _import_notes(dec_state, dropped)
    tcfg = imported_train_config(cfg)
    ckpt = make_checkpoint(model_state={f"encoders.joint.{k}": v.detach().cpu()
                                        for k, v in enc.state_dict().items()},
                           optimizer_state=None, scheduler_state=None, epoch=tcfg.epochs, rng=[],
                           config=config_to_dict(tcfg), streams=["joint"], layout_toml=layout_to_toml(layout),
                           num_person=num_person, frames=grid.frames, class_names=[],
                           preprocess={"mode": "mamp", "frames": grid.frames})
    save_imported(ckpt, out, path, notes)
    for note in notes:
        log.warning("%s: %s", path, note)
    log.info("%s: imported MAMP transformer (%d blocks × %d, %d frames) -> %s", path, cfg.depth,
             cfg.hidden_dim, grid.frames, out)
    return out
