"""Shared pieces of the evaluation protocols (linear, kNN, fine-tuning, t-SNE) and the linear checkpoint.

``load_any_encoders`` and ``check_compatible`` are called once per run by ``context.open_protocol``.

Frozen encoders are run once over a cache split (``encode_split``); the protocols then work on those
features. ``save_linear`` / ``load_linear`` read and write ``linear.pt`` (format ``crossclr-linear-v1``),
the file ``crossclr export`` consumes. Scores, confusion matrices, fusion weights and fused logits come from
``crossclr_infer.metrics`` (numpy; tensors go through ``to_numpy``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import atomic_output, write_json_atomic
from crossclr_infer.layouts import Layout, layout_from_toml_text, layout_to_toml
from crossclr_infer.views import check_view_name
from training.checkpoint import PRETRAIN_FORMAT, load_encoders, torch_load_safe
from training.encoders import build_encoder

log = logging.getLogger(__name__)

LINEAR_FORMAT = "crossclr-linear-v1"  # PRETRAIN_FORMAT (training.checkpoint) is the other format read here


def check_rate(value: float, flag: str, *, positive: bool = True) -> None:
    """A finite number (> 0 with ``positive``, else >= 0), else one line naming ``flag``: NaN or inf would
    train or score silently on garbage (``not value >= 0`` is true for NaN)."""
    if not math.isfinite(value) or not value >= 0 or (positive and not value > 0):
        raise CrossclrError(f"{flag} {value}: expected a finite number {'>' if positive else '>='} 0")


def to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """A tensor (any device) or array as a numpy array, for scoring with ``crossclr_infer.metrics``."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------- encoding
def default_device(name: str | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if name:
        try:
            return torch.device(name)
        except RuntimeError as e:
            raise CrossclrError(f"--device {name!r}: {e}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_slices(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))


def stream_inputs(x: Tensor, streams: Sequence[str], layout: Layout) -> dict[str, Tensor]:
    """Per-stream inputs computed from the (un-augmented) joint input x (N, C, T, V, M)."""
    from training.views import compute_view

    return {v: compute_view(x, v, layout) for v in streams}


@torch.no_grad()
def encode_batch(encoders: Mapping[str, nn.Module], x: Tensor, layout: Layout) -> dict[str, Tensor]:
    """forward_features of each stream's encoder on its view of x: {view: (N, hidden)}.

    The encoders must already be in the mode the caller wants (eval for frozen evaluation)."""
    inputs = stream_inputs(x, list(encoders), layout)
    return {v: enc.forward_features(inputs[v]) for v, enc in encoders.items()}


def encode_source(
    encoders: Mapping[str, nn.Module],
    read: Callable[[np.ndarray], np.ndarray],
    n: int,
    layout: Layout,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "encode",
) -> dict[str, Tensor]:
    """Encode n samples, read in batches by ``read(indices) -> (B, C, T, V, M)``, with frozen encoders.

    Encoders are put in eval mode (BN running statistics used and left unchanged, dropout off).
    Returns {view: (n, hidden) float32 on CPU}.
    """
    device = torch.device(device)
    for enc in encoders.values():
        enc.eval()
    chunks: dict[str, list[Tensor]] = {v: [] for v in encoders}
    for idx in tqdm(
        list(batch_slices(n, batch_size)), desc=desc, leave=False, disable=None if n > batch_size else True
    ):
        x = torch.as_tensor(np.asarray(read(idx), dtype=np.float32), device=device)  # (B, C, T, V, M)
        for v, f in encode_batch(encoders, x, layout).items():
            chunks[v].append(f.float().cpu())
    return {v: torch.cat(c) if c else torch.zeros(0, int(encoders[v].hidden_dim)) for v, c in chunks.items()}


def encode_split(encoders: Mapping[str, nn.Module], split: Any, layout: Layout, **options: Any
                 ) -> dict[str, Tensor]:
    """encode_source over a cache split (``len(split)``, ``split.read(indices)``); ``options`` are those of
    encode_source (batch_size, device, desc)."""
    return encode_source(encoders, split.read, len(split), layout, **options)


# ------------------------------------------------------------------------------------------- checkpoints
def _torch_load(path: Path) -> dict:
    ckpt = torch_load_safe(path, missing="no such checkpoint file",
                           unreadable="not a readable torch checkpoint ({reason})")
    if not isinstance(ckpt, dict):
        raise CrossclrError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    return ckpt


def _format_of(ckpt: Mapping[str, Any], path: Path) -> str:
    """The ``format`` field of a checkpoint read from ``path`` (CrossclrError when it is not one of ours)."""
    fmt = ckpt.get("format")
    if fmt not in (LINEAR_FORMAT, PRETRAIN_FORMAT):
        raise CrossclrError(
            f"{path}: format {fmt!r}; expected {PRETRAIN_FORMAT!r} (crossclr train) or "
            f"{LINEAR_FORMAT!r} (crossclr linear)"
        )
    return fmt


def encoder_config_from(config: Mapping[str, Any], source: str) -> Any:
    """The EncoderConfig stored in a checkpoint's ``config`` dict (a TrainConfig dict or its 'model' part).

    Only the 'model' table is read (with the key and type checks of a TOML file), so a checkpoint whose other
    settings an older or newer version wrote still yields its encoder."""
    from training.config import config_from_dict

    model = config.get("model", config) if isinstance(config, Mapping) else None
    if not isinstance(model, Mapping):
        raise CrossclrError(f"{source}: checkpoint 'config' has no encoder settings ('model')")
    return config_from_dict({"model": dict(model)}, f"{source} (config)").model


def load_linear(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[dict[str, nn.Module], dict[str, nn.Linear], dict[str, Any]]:
    """Read ``linear.pt``: ({view: STGCN in eval mode}, {view: Linear(hidden, classes)}, meta).

    ``meta`` holds every other field of the file: format, streams, fusion, fusion_weights (fused logits =
    Σ w_v·logits_v), class_names, layout (TOML text), config, frames, num_person, preprocess, metrics.
    """
    path = Path(path)
    return _linear_from(_torch_load(path), path, device)


def _linear_from(ckpt: dict[str, Any], path: Path, device: torch.device | str
                 ) -> tuple[dict[str, nn.Module], dict[str, nn.Linear], dict[str, Any]]:
    """``load_linear`` of a checkpoint dict already read from ``path``."""
    if ckpt.get("format") != LINEAR_FORMAT:
        raise CrossclrError(
            f"{path}: format {ckpt.get('format')!r}; expected {LINEAR_FORMAT!r} "
            "(written by crossclr linear / finetune)"
        )
    missing = [
        k for k in ("encoders", "heads", "streams", "class_names", "layout", "config") if k not in ckpt
    ]
    if missing:
        raise CrossclrError(f"{path}: linear checkpoint lacks {missing}")
    layout = layout_from_toml_text(ckpt["layout"], f"{path} (layout)")
    enc_cfg = encoder_config_from(ckpt["config"], str(path))
    num_person = int(ckpt.get("num_person", 2))
    in_channels = int(ckpt.get("in_channels", 3))
    encoders: dict[str, nn.Module] = {}
    heads: dict[str, nn.Linear] = {}
    for v in ckpt["streams"]:
        if v not in ckpt["encoders"] or v not in ckpt["heads"]:
            raise CrossclrError(f"{path}: stream {v!r} listed but its encoder or head is missing")
        enc = build_encoder(layout, enc_cfg, num_person=num_person, in_channels=in_channels,
                            frames=int(ckpt.get("frames") or 50))
        try:
            enc.load_state_dict(ckpt["encoders"][v])
        except RuntimeError as e:
            raise CrossclrError(
                f"{path}: encoder {v!r} does not match its config ({str(e).splitlines()[0]})"
            ) from None
        w = ckpt["heads"][v]["weight"]
        head = nn.Linear(w.shape[1], w.shape[0])
        head.load_state_dict(ckpt["heads"][v])
        encoders[v] = enc.to(device).eval()
        heads[v] = head.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("encoders", "heads")}
    return encoders, heads, meta


def load_any_encoders(
    path: str | Path, streams: Sequence[str] | None, device: torch.device | str = "cpu"
) -> tuple[dict[str, nn.Module], dict[str, nn.Linear] | None, dict[str, Any]]:
    """Encoders from a pretrain checkpoint (TRAIN's load_encoders) or a linear one (with its heads).

    Returns (encoders in eval mode, heads or None, meta). CrossclrError when a requested stream is absent.
    """
    path = Path(path)
    ckpt = _torch_load(path)  # read once for a linear checkpoint
    if _format_of(ckpt, path) == LINEAR_FORMAT:
        encoders, heads, meta = _linear_from(ckpt, path, device)
    else:
        del ckpt  # load_encoders reads the file itself: do not hold two copies
        encoders, meta = load_encoders(path, streams)
        encoders = {v: e.to(device).eval() for v, e in encoders.items()}
        heads = None
        meta = dict(meta)
        meta.setdefault("streams", list(encoders))
    for v in encoders:  # names from the file reach reports and plot file names: known views only
        check_view_name(v, f"{path}: checkpoint stream")
    if streams:
        absent = [v for v in streams if v not in encoders]
        if absent:
            raise CrossclrError(f"{path}: checkpoint has no stream {absent[0]!r}; it holds {list(encoders)}")
        encoders = {v: encoders[v] for v in streams}
        heads = None if heads is None else {v: heads[v] for v in streams}
    return encoders, heads, meta


def check_compatible(
    meta: Mapping[str, Any], cache: Any, ckpt_path: str | Path, cache_path: str | Path, *, need_classes: bool
) -> Layout:
    """The cache must use the checkpoint's skeleton layout; with heads, also its classes.

    Returns the layout."""
    layout: Layout = cache.layout
    text = meta.get("layout")
    if text:
        ck_layout = layout_from_toml_text(text, f"{ckpt_path} (layout)")
        if ck_layout.num_joints != layout.num_joints or ck_layout.parents != layout.parents:
            raise CrossclrError(
                f"{cache_path}: layout {layout.name!r} ({layout.num_joints} joints) differs from "
                f"the checkpoint's {ck_layout.name!r} ({ck_layout.num_joints} joints); "
                "use a cache prepared with the checkpoint's layout"
            )
    if need_classes:
        names = list(meta.get("class_names") or [])
        if names != list(cache.class_names):
            raise CrossclrError(
                f"{cache_path}: {cache.num_class} classes differ from the {len(names)} classes of "
                f"the heads in {ckpt_path}; use a cache of the same benchmark/classes"
            )
    pre = meta.get("preprocess")
    if pre and dict(pre) != dict(cache.preprocess or {}):
        log.warning(
            "%s: preprocessing %s differs from the checkpoint's %s", cache_path, cache.preprocess, pre
        )
    return layout


def save_linear(
    path: str | Path,
    encoders: Mapping[str, nn.Module],
    heads: Mapping[str, nn.Linear],
    *,
    fusion: str,
    fusion_weights: Mapping[str, float],
    class_names: Sequence[str],
    layout: Layout,
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write linear.pt atomically (temp name in the same folder, then rename)."""
    streams = list(heads)
    ckpt = {
        "format": LINEAR_FORMAT,
        "streams": streams,
        "encoders": {v: {k: t.detach().cpu() for k, t in encoders[v].state_dict().items()} for v in streams},
        "heads": {v: {k: t.detach().cpu() for k, t in heads[v].state_dict().items()} for v in streams},
        "fusion": fusion,
        "fusion_weights": {v: float(fusion_weights[v]) for v in streams},
        "class_names": list(class_names),
        "layout": layout_to_toml(layout),
        "config": _plain(meta.get("config", {})),
        "frames": int(meta.get("frames") or 0),
        "num_person": int(meta.get("num_person") or 2),
        "in_channels": int(meta.get("in_channels") or 3),
        "preprocess": _plain(meta.get("preprocess") or {}),
        "metrics": _plain(metrics),
        "source_checkpoint": str(meta.get("source_checkpoint", "")),
        **_plain(dict(extra or {})),
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def _plain(obj: Any) -> Any:
    """JSON-like plain data (dicts, lists, str, int, float, bool, None) for weights_only loading."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def write_json(obj: Any, path: str | Path) -> Path:
    """``obj`` as plain JSON (tensors/numpy scalars converted), written atomically."""
    return write_json_atomic(path, _plain(obj), indent=2)


# ---------------------------------------------------------------------------------------------- tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A compact left/right aligned text table (numbers with 2 decimals)."""

    def cell(x: Any) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)

    cells = [[cell(x) for x in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in cells:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)
