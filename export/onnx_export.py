"""torch -> ONNX: one model per stream and one fused ensemble, with metadata, checker and parity checks.

Model contract (DESIGN §4, crossclr_infer.session): input ``skeleton`` float32 (batch, C, T, V, M), dynamic
batch axis only. Stream models output ``logits`` (batch, classes) and ``embedding`` (batch, hidden) = the
encoder's pooled features of that stream. The ensemble computes every stream's view inside the graph and
outputs ``logits`` = Σ_v w_v·logits_v, ``probabilities`` = softmax(logits), ``logits_<view>`` per stream and
``embedding`` = the mean of the streams' features (batch, hidden).

Every model is written into a temporary folder beside the output folder, checked with ``onnx.checker``, run in
onnxruntime against torch on random and real inputs (max |Δ| on logits ≤ ``tolerance``), and the folder is
renamed into place only when every check passed.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossclr_infer import __version__
from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import atomic_output_dir
from crossclr_infer.layouts import Layout, layout_from_toml_text
from crossclr_infer.session import INPUT_NAME, ONNX_FORMAT
from training.views import compute_view

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
TOLERANCE = 1e-4
SUMMARY_NAME = "export.json"


class StreamNet(nn.Module):
    """skeleton (N, C, T, V, M) -> (logits (N, classes), embedding (N, hidden)) of one view."""

    def __init__(self, view: str, layout: Layout, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.view = view
        self.layout = layout
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder.forward_features(compute_view(x, self.view, self.layout))  # (N, hidden)
        return self.head(f), f


class EnsembleNet(nn.Module):
    """All streams in one graph: (logits, probabilities, logits_<view>…, embedding)."""

    def __init__(self, streams: Mapping[str, StreamNet], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.views = tuple(streams)
        self.streams = nn.ModuleDict(dict(streams))
        self.weights = tuple(float(weights[v]) for v in self.views)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, feats = [], []
        for v in self.views:
            lo, f = self.streams[v](x)
            logits.append(lo)
            feats.append(f)
        fused = logits[0] * self.weights[0]
        for w, lo in zip(self.weights[1:], logits[1:], strict=True):
            fused = fused + lo * w
        emb = torch.stack(feats, dim=0).mean(dim=0)  # (S, N, hidden) -> (N, hidden)
        return (fused, torch.softmax(fused, dim=1), *logits, emb)


def output_names(kind: str, streams: Sequence[str]) -> list[str]:
    if kind == "stream":
        return ["logits", "embedding"]
    return ["logits", "probabilities", *[f"logits_{v}" for v in streams], "embedding"]


@dataclass(frozen=True)
class ExportMeta:
    """What the ONNX metadata needs, from a linear checkpoint's meta dict."""

    layout: Layout
    layout_toml: str
    class_names: tuple[str, ...]
    frames: int
    num_person: int
    in_channels: int
    fusion_weights: dict[str, float] = field(hash=False)
    preprocess: dict = field(hash=False)
    config: dict = field(hash=False)

    @staticmethod
    def from_checkpoint_meta(meta: Mapping[str, Any], streams: Sequence[str], source: str) -> ExportMeta:
        for key in ("layout", "class_names"):
            if not meta.get(key):
                raise CrossclrError(f"{source}: checkpoint has no {key!r}; expected a linear checkpoint "
                                    "(crossclr linear)")
        frames = int(meta.get("frames") or 0)
        if frames < 1:
            raise CrossclrError(f"{source}: checkpoint has no 'frames'; expected the cache's frame count")
        weights = dict(meta.get("fusion_weights") or {})
        missing = [v for v in streams if v not in weights]
        if missing:
            log.warning("%s: no fusion weight for %s; using 1.0", source, missing)
        text = meta["layout"]
        return ExportMeta(layout=layout_from_toml_text(text, f"{source} (layout)"), layout_toml=text,
                          class_names=tuple(meta["class_names"]), frames=frames,
                          num_person=int(meta.get("num_person") or 2),
                          in_channels=int(meta.get("in_channels") or 3),
                          fusion_weights={v: float(weights.get(v, 1.0)) for v in streams},
                          preprocess=dict(meta.get("preprocess") or {}),
                          config=dict(meta.get("config") or {}))

    def input_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        return (batch, self.in_channels, self.frames, self.layout.num_joints, self.num_person)

    def props(self, kind: str, streams: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str,
                                                                                                       str]:
        out = {"crossclr_format": ONNX_FORMAT, "kind": kind, "layout": self.layout_toml,
               "frames": str(self.frames), "num_person": str(self.num_person),
               "streams": json.dumps(list(streams)),
               "class_names": json.dumps(list(self.class_names)),
               "fusion_weights": json.dumps({v: self.fusion_weights[v] for v in streams}),
               "preprocess": json.dumps(self.preprocess), "config": json.dumps(self.config, default=str),
               "version": __version__}
        out.update(extra or {})
        return out


def export_graph(module: nn.Module, path: Path, names: Sequence[str], example: torch.Tensor, *, opset: int,
                 dynamo: bool) -> None:
    """torch.onnx.export with the ``skeleton`` input and a dynamic batch axis only."""
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=list(names), opset_version=max(opset, 18),
                                     dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            prog.save(str(path))
        else:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=list(names),
                              dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                              opset_version=opset,
                              dynamo=False, do_constant_folding=True)


def set_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Replace the model's metadata_props and validate it with onnx.checker."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "crossclr"
    model.producer_version = __version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def compare(module: nn.Module, path: Path, names: Sequence[str], inputs: Mapping[str, np.ndarray]
            ) -> dict[str, dict[str, float]]:
    """Max |ORT − torch| per output, for each named input batch, and the output's scale max(1, max|torch|)
    under ``"<output>:scale"``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    out: dict[str, dict[str, float]] = {}
    module.eval()
    for label, x in inputs.items():
        got = sess.run(list(names), {INPUT_NAME: x})
        with torch.no_grad():
            want = module(torch.from_numpy(x))
        out[label] = {}
        for n, g, w in zip(names, got, want, strict=True):
            out[label][n] = float(np.max(np.abs(g - w.numpy()))) if g.size else 0.0
            out[label][f"{n}:scale"] = max(1.0, float(np.max(np.abs(w.numpy())))) if g.size else 1.0
    return out


def random_skeletons(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random inputs on the scale of preprocessed skeletons: a random pose per joint plus a slow random walk
    over frames, so motion and acceleration stay as small as real ones (independent noise per frame would
    give motion logits hundreds of times larger than any real input and test fp32 rounding, not the export).
    """
    n, c, t, v, m = shape
    pose = 0.3 * rng.standard_normal((n, c, 1, v, m))
    walk = np.cumsum(0.01 * rng.standard_normal((n, c, t, v, m)), axis=2)  # (N, C, T, V, M)
    return (pose + walk).astype(np.float32)


def parity_failures(diffs: Mapping[str, Mapping[str, float]], tolerance: float) -> list[str]:
    """Outputs whose |ORT − torch| exceeds ``tolerance`` × max(1, max|logits|): absolute for logits up to 1,
    relative beyond (fp32 rounding grows with the logits' magnitude; a wrong op differs by O(1))."""
    return [f"{label}/{n}: {d:.2e} (|logits| up to {per[n + ':scale']:.3g})"
            for label, per in diffs.items() for n, d in per.items()
            if n.startswith("logits") and ":" not in n and not d <= tolerance * per[f"{n}:scale"]]


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: dict[str,
                str] = field(hash=False)          # model name ("joint", "ensemble", "ensemble.int8") -> file
    parity: dict[str, Any] = field(hash=False)         # model name -> {inputs: {output: max abs diff}}
    quantization: dict[str, Any] = field(hash=False)   # model name -> accuracy change etc.


def read_real_inputs(cache_path: str | Path | None, meta: ExportMeta, n: int = 8, split: str | None = None
                     ) -> np.ndarray | None:
    """Up to ``n`` samples (N, C, T, V, M) of a cache (val split when present) for the parity check."""
    if cache_path is None:
        return None
    from crossclr_infer.cache import open_cache

    with open_cache(cache_path) as cache:
        if cache.layout.num_joints != meta.layout.num_joints:
            raise CrossclrError(f"{cache_path}: cache layout has {cache.layout.num_joints} joints, the "
                                f"checkpoint {meta.layout.num_joints}")
        name = split or ("val" if "val" in cache.splits else cache.splits[0])
        sp = cache.split(name)
        idx = np.linspace(0, len(sp) - 1, num=min(n, len(sp))).round().astype(np.int64)
        x = sp.read(np.unique(idx)).astype(np.float32)
    if x.shape[1:] != meta.input_shape(1)[1:]:
        raise CrossclrError(f"{cache_path}: samples {x.shape[1:]}, the checkpoint expects "
                            f"{meta.input_shape(1)[1:]}")
    return x


def export_models(encoders: Mapping[str, nn.Module], heads: Mapping[str, nn.Module], meta: Mapping[str, Any],
                  out_dir: str | Path, *, streams: Sequence[str] | None = None, ensemble: bool = True,
                  opset: int = DEFAULT_OPSET, dynamo: bool = False, data: str | Path | None = None,
                  quantize: str | None = None, calibration: str | Path | None = None,
                  tolerance: float = TOLERANCE, overwrite: bool = False, seed: int = 0,
                  source: str = "checkpoint") -> ExportResult:
    """Export stream models (and the ensemble) of ``encoders``/``heads`` into ``out_dir``.

    ``meta``: the linear checkpoint's fields (layout TOML, class_names, frames, num_person, fusion_weights,
    preprocess, config). ``data``: a cache whose samples are the real inputs of the parity check (and, with
    ``quantize="int8"``, the calibration and accuracy data unless ``calibration`` is given).
    """
    streams = list(streams) if streams else list(heads)
    absent = [v for v in streams if v not in encoders or v not in heads]
    if absent:
        raise CrossclrError(f"{source}: no encoder/head for stream {absent[0]!r}; it holds {list(heads)}")
    if quantize not in (None, "int8"):
        raise CrossclrError(f"--quantize {quantize!r}: only 'int8' is supported")
    if quantize and not (calibration or data):
        raise CrossclrError("--quantize int8 needs --calibration CACHE.h5 (samples to calibrate on)")
    em = ExportMeta.from_checkpoint_meta(meta, streams, source)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CrossclrError(f"{out_dir}: output folder exists and is not empty; pass --overwrite or another "
                            f"--out")
    nets = {v: StreamNet(v, em.layout, encoders[v], heads[v]).eval() for v in streams}
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {"random": random_skeletons(rng, em.input_shape(3))}
    real = read_real_inputs(data or calibration, em)
    if real is not None:
        inputs["real"] = real
    else:
        log.warning("no --data cache given: parity checked on random inputs only")
    example = torch.from_numpy(random_skeletons(rng, em.input_shape(2)))
    with atomic_output_dir(out_dir) as tmp:  # the folder appears complete or not at all
        models: dict[str, tuple[nn.Module, str, list[str]]] = {v: (nets[v], "stream", [v]) for v in streams}
        if ensemble:
            models["ensemble"] = (EnsembleNet(nets, em.fusion_weights).eval(), "ensemble", streams)
        files, parity = {}, {}
        for name, (module, kind, st) in models.items():
            path = tmp / f"{name}.onnx"
            names = output_names(kind, st)
            export_graph(module, path, names, example, opset=opset, dynamo=dynamo)
            set_metadata(path, em.props(kind, st, {"opset": str(opset)}))
            diffs = compare(module, path, names, inputs)
            bad = parity_failures(diffs, tolerance)
            if bad:
                raise CrossclrError(f"{source}: {name}.onnx differs from torch beyond {tolerance:g} "
                                    "× max(1, |logits|) "
                                    f"({'; '.join(bad)}); export aborted, nothing written")
            worst = max(d for per in diffs.values() for n, d in per.items()
                        if n.startswith("logits") and ":" not in n)
            log.info("%s.onnx: max |ORT - torch| on logits %.2e (%s)", name, worst, ", ".join(inputs))
            files[name] = path.name
            parity[name] = {"max_abs_diff_logits": worst, "per_input": diffs}
        quant: dict[str, Any] = {}
        if quantize:
            from .quantize import quantize_models

            quant = quantize_models(tmp, {n: files[n] for n in models}, calibration or data, em,
                                    float_parity=parity)
            files.update({f"{n}.int8": q["file"] for n, q in quant.items()})
        summary = {"source": source, "streams": streams, "files": files, "parity": parity,
                   "tolerance": tolerance,
                   "quantization": quant, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
                   "version": __version__}
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return ExportResult(out_dir, files, parity, quant)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, **kwargs: Any) -> ExportResult:
    """Export a linear checkpoint (EVAL's ``training.evaluate.load_linear``)."""
    from training.evaluate import load_linear

    encoders, heads, meta = load_linear(checkpoint)
    return export_models(encoders, heads, meta, out_dir, source=str(checkpoint), **kwargs)
