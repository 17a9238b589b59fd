"""torch -> ONNX: one model per stream and one fused ensemble, with metadata, checker and parity checks.

Model contract (docs/design.md §4, crossclr_infer.session): input ``skeleton`` float32 (batch, C, T, V, M),
dynamic batch axis only. Stream models output ``logits`` (batch, classes) and ``embedding`` (batch, hidden) =
the encoder's pooled features of that stream. The ensemble computes every stream's view inside the graph and
outputs ``logits`` = Σ_v w_v·logits_v, ``probabilities`` = softmax(logits), ``logits_<view>`` per stream and
``embedding`` = the mean of the streams' features (batch, hidden).

Every model is written into a temporary folder beside the output folder, checked with ``onnx.checker``, run in
onnxruntime against torch on random and real inputs (max |Δ| on logits ≤ ``tolerance``), and the folder is
renamed into place only when every check passed.

This module is the export driver (``export_models``, ``export_checkpoint``, metadata, parity, int8 from the
serving sources); what each encoder becomes in the graph is ``export.serving`` (chosen by the encoder's
``kind``), what one export is asked to do is ``export.config.ExportConfig``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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

from .config import (
    DYNAMO_MIN_OPSET,
    ExportConfig,
    check_attention,
    check_opset,
)
from .serving import (
    CONTRIB_DOMAIN,
    DEFAULT_ATTENTION,
    DEFAULT_GRAPH_FORM,
    EnsembleNet,
    StreamNet,
    attention_form,
    half_encoder,
    serving_encoder,
    serving_spec,
)

log = logging.getLogger(__name__)

# samples per torch / onnxruntime call of the parity check (and of a transformer's int8 accuracy check): the
# official-size transformer (750 tokens, 2 bodies) holds its attention maps per call (a plain graph: 36 MB per
# sample and block), so memory stays bounded whatever the number of inputs
PARITY_CHUNK = 4
INT8_EVAL_BATCH = 64  # samples per onnxruntime call of the int8 accuracy check (encoders without attention)
SUMMARY_NAME = "export.json"


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
    fusion: str = ""  # how the linear heads were trained: "joint" (on the fused logits) or "separate"

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
                          config=dict(meta.get("config") or {}), fusion=str(meta.get("fusion") or ""))

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
        if self.fusion:
            out["fusion"] = self.fusion
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
                                     output_names=list(names), opset_version=max(opset, DYNAMO_MIN_OPSET),
                                     dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            prog.save(str(path))
        else:
            contrib = attention_form(module) in ("mha", "contrib-attention")
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=list(names),
                              dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                              opset_version=opset, custom_opsets={CONTRIB_DOMAIN: 1} if contrib else None,
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


def compare(module: nn.Module, path: Path, names: Sequence[str], inputs: Mapping[str, np.ndarray], *,
            optimize: bool = True, chunk: int = PARITY_CHUNK) -> dict[str, dict[str, float]]:
    """Max |ORT − torch| per output, for each named input batch, and the output's scale max(1, max|torch|)
    under ``"<output>:scale"``. ``optimize=False`` runs onnxruntime without graph optimizations: a float16
    model then keeps every cast that onnxruntime's CPU provider inserts around the float16 nodes it runs in
    float32, so activations are rounded to float16 between operations as float16 storage on a GPU does.
    Both run ``chunk`` samples at a time, so that memory does not grow with the size of an input batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    out: dict[str, dict[str, float]] = {}
    module.eval()
    for label, x in inputs.items():
        per = out[label] = {n: 0.0 for n in names} | {f"{n}:scale": 1.0 for n in names}
        for s in range(0, len(x), chunk):
            xs = x[s:s + chunk]
            got = sess.run(list(names), {INPUT_NAME: xs})
            with torch.no_grad():
                want = module(torch.from_numpy(xs))
            for n, g, w in zip(names, got, want, strict=True):
                if g.size:
                    per[n] = max(per[n], float(np.max(np.abs(g - w.numpy()))))
                    per[f"{n}:scale"] = max(per[f"{n}:scale"], float(np.max(np.abs(w.numpy()))))
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
                  out_dir: str | Path, config: ExportConfig | None = None, **options: Any) -> ExportResult:
    """Export stream models (and the ensemble) of ``encoders``/``heads`` into ``out_dir`` as ``config`` says
    (``options``: ExportConfig fields that replace the config's, e.g. ``ensemble=False``).

    ``meta``: the linear checkpoint's fields (layout TOML, class_names, frames, num_person, fusion_weights,
    preprocess, config). ``config.data``: a cache whose samples are the real inputs of the parity check (and,
    with ``quantize="int8"``, the calibration and accuracy data unless ``calibration`` is given).
    ``graph_form``: ``matmul`` exports each encoder's registered serving form (export.serving; ST-GCN:
    BatchNorm folded, graph product as MatMul), ``einsum`` the training modules as they are.
    ``precision="fp16"`` also writes ``NAME.fp16.onnx`` (float16 inside, float32 inputs and outputs), checked
    against torch float32 within ``fp16_tolerance``. Parity is always measured against the training modules
    in float32. ``int8_config``: an export.quantize.Int8Config (default: its DEFAULT_INT8); int8 models are
    quantized from the serving form without the DFT block, statically or dynamically as the encoder kind's
    serving form says. ``attention``: how a transformer's attention is written (ATTENTION_FORMS; default one
    fused MultiHeadAttention node per block for onnxruntime's kernel; the dynamo exporter keeps ``plain``;
    the float16 models keep ``plain``); recorded in the metadata key ``attention``.
    """
    cfg = replace(config or ExportConfig(), **options) if options else config or ExportConfig()
    streams = stream_names(encoders, heads, cfg)
    opset = check_opset(cfg.opset, cfg.dynamo)
    attention = check_attention(cfg.attention, opset, cfg.dynamo)
    em = ExportMeta.from_checkpoint_meta(meta, streams, cfg.source)
    out_dir = free_output_dir(out_dir, cfg.overwrite)
    refs = {v: StreamNet(v, em.layout, encoders[v], heads[v]).eval() for v in streams}
    serving = {v: serving_encoder(encoders[v], em.frames, cfg.graph_form, attention=attention)
               for v in streams}
    nets = {v: StreamNet(v, em.layout, serving[v], heads[v]).eval() for v in streams}
    rng = np.random.default_rng(cfg.seed)
    inputs = parity_inputs(rng, em, cfg.real_inputs)
    example = torch.from_numpy(random_skeletons(rng, em.input_shape(2)))
    models = model_plan(refs, nets, em.fusion_weights, streams, cfg.ensemble, cfg.precision, em.frames,
                        cfg.graph_form, attention)
    with atomic_output_dir(out_dir) as tmp:  # the folder appears complete or not at all
        files, parity = write_models(tmp, models, em, example, inputs, cfg, opset)
        quant: dict[str, Any] = {}
        if cfg.quantize:
            fp32 = {n: plan for n, plan in models.items() if plan.precision == "fp32"}
            specs = [serving_spec(encoders[v]) for v in streams]
            quant = quantize_from_sources(tmp, fp32, em, example, cfg.calibration_cache, parity, opset=opset,
                                          dynamo=cfg.dynamo, config=cfg.int8_config,
                                          dynamic=any(s.int8 == "dynamic" for s in specs),
                                          attention_maps=any(s.has_attention for s in specs))
            files.update({f"{n}.int8": q["file"] for n, q in quant.items()})
        summary = export_summary(cfg, streams, files, parity, quant, opset, attention)
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return ExportResult(out_dir, files, parity, quant)


def stream_names(encoders: Mapping[str, nn.Module], heads: Mapping[str, nn.Module], cfg: ExportConfig
                 ) -> list[str]:
    """The streams to export (``cfg.streams``, else every head's); one-line error for one without both an
    encoder and a head."""
    streams = list(cfg.streams) if cfg.streams else list(heads)
    absent = [v for v in streams if v not in encoders or v not in heads]
    if absent:
        raise CrossclrError(f"{cfg.source}: no encoder/head for stream {absent[0]!r}; it holds {list(heads)}")
    return streams


def free_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` as a Path; one-line error when it exists, is not empty and ``overwrite`` is off."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CrossclrError(f"{out_dir}: output folder exists and is not empty; pass --overwrite or another "
                            f"--out")
    return out_dir


def parity_inputs(rng: np.random.Generator, em: ExportMeta, cache: str | Path | None
                  ) -> dict[str, np.ndarray]:
    """The parity check's inputs: 3 random skeletons, and up to 8 samples of ``cache`` when given."""
    inputs: dict[str, np.ndarray] = {"random": random_skeletons(rng, em.input_shape(3))}
    real = read_real_inputs(cache, em)
    if real is not None:
        inputs["real"] = real
    else:
        log.warning("no --data cache given: parity checked on random inputs only")
    return inputs


def write_models(folder: Path, models: Mapping[str, ModelPlan], em: ExportMeta, example: torch.Tensor,
                 inputs: Mapping[str, np.ndarray], cfg: ExportConfig, opset: int
                 ) -> tuple[dict[str, str], dict[str, Any]]:
    """Export, annotate and parity-check every planned model into ``folder``: (files, parity) by name."""
    files: dict[str, str] = {}
    parity: dict[str, Any] = {}
    for name, plan in models.items():
        path = folder / f"{name}.onnx"
        names = output_names(plan.kind, plan.streams)
        export_graph(plan.module, path, names, example, opset=opset, dynamo=cfg.dynamo)
        extra = {"opset": str(opset), "precision": plan.precision, "graph_form": cfg.graph_form,
                 "attention": attention_form(plan.module)}
        set_metadata(path, em.props(plan.kind, plan.streams, extra))
        tol = cfg.fp16_tolerance if plan.precision == "fp16" else cfg.tolerance
        parity[name] = check_parity(plan.reference, path, names, inputs, tol, f"{cfg.source}: {name}.onnx",
                                    optimize=plan.precision == "fp32")
        files[name] = path.name
    return files, parity


def export_summary(cfg: ExportConfig, streams: Sequence[str], files: Mapping[str, str],
                   parity: Mapping[str, Any], quant: Mapping[str, Any], opset: int, attention: str
                   ) -> dict[str, Any]:
    """The contents of ``export.json``."""
    return {"source": cfg.source, "streams": list(streams), "files": dict(files), "parity": dict(parity),
            "tolerance": cfg.tolerance,
            "fp16_tolerance": cfg.fp16_tolerance if cfg.precision == "fp16" else None,
            "graph_form": cfg.graph_form, "precision": cfg.precision, "attention": attention,
            "quantization": dict(quant), "opset": opset,
            "exporter": "dynamo" if cfg.dynamo else "torchscript", "version": __version__}


def quantize_from_sources(folder: Path, plans: Mapping[str, ModelPlan], em: ExportMeta, example: torch.Tensor,
                          cache: str | Path, parity: Mapping[str, Any], *, opset: int, dynamo: bool,
                          config: Any = None, dynamic: bool = False, attention_maps: bool = False
                          ) -> dict[str, Any]:
    """``NAME.int8.onnx`` for every plan, quantized from its ``int8_source``: the serving form with the
    direct temporal convolution (export.quantize quantizes convolutions; the DFT form's MatMuls would stay
    float32). With ``dynamic`` (an encoder kind registered with dynamic int8, e.g. transformers) dynamic int8
    of the MatMul/Gemm weights instead (``quantize.dynamic_int8``); with ``attention_maps`` the accuracy
    check runs ``PARITY_CHUNK`` samples a call. The source files are removed afterwards."""
    from .quantize import DEFAULT_INT8, dynamic_int8, quantize_models

    config = config or DEFAULT_INT8
    if dynamic:
        config = dynamic_int8(config)

    sources: dict[str, str] = {}
    for name, plan in plans.items():
        src = folder / f"{name}.int8-source.onnx"
        export_graph(plan.int8_source, src, output_names(plan.kind, plan.streams), example, opset=opset,
                     dynamo=dynamo)
        set_metadata(src, em.props(plan.kind, plan.streams, {"opset": str(opset), "precision": "fp32",
                                                             "attention": attention_form(plan.int8_source)}))
        sources[name] = src.name
    try:
        return quantize_models(folder, sources, cache, em, float_parity={n: parity[n] for n in plans},
                               config=config, eval_batch=PARITY_CHUNK if attention_maps else INT8_EVAL_BATCH)
    finally:
        for fname in sources.values():
            (folder / fname).unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelPlan:
    """One ONNX file to write: the module to export, the float32 training module it must equal, and the
    module whose export int8 quantizes (the same map)."""

    module: nn.Module
    reference: nn.Module
    kind: str
    streams: list[str]
    precision: str
    int8_source: nn.Module | None = None


def model_plan(refs: Mapping[str, StreamNet], nets: Mapping[str, StreamNet], weights: Mapping[str, float],
               streams: Sequence[str], ensemble: bool, precision: str, frames: int,
               graph_form: str = DEFAULT_GRAPH_FORM, attention: str = DEFAULT_ATTENTION
               ) -> dict[str, ModelPlan]:
    """File stem -> ModelPlan: the stream models, the ensemble, and their ``.fp16`` twins when asked (the
    direct temporal convolution in float16: the DFT form is for CPUs)."""
    direct = {v: StreamNet(v, nets[v].layout, serving_encoder(refs[v].encoder, frames, graph_form, dft=False,
                                                              attention=attention),
                           nets[v].head).eval() for v in streams}  # no DFT: for int8 and float16
    plans = {v: ModelPlan(nets[v], refs[v], "stream", [v], "fp32", direct[v]) for v in streams}
    if ensemble:
        plans["ensemble"] = ModelPlan(EnsembleNet(nets, weights).eval(), EnsembleNet(refs, weights).eval(),
                                      "ensemble", list(streams), "fp32", EnsembleNet(direct, weights).eval())
    if precision == "fp16":
        half = {v: StreamNet(v, nets[v].layout, half_encoder(direct[v].encoder), nets[v].head).eval()
                for v in streams}
        for name, plan in list(plans.items()):
            module = EnsembleNet(half, weights).eval() if plan.kind == "ensemble" else half[name]
            plans[f"{name}.fp16"] = ModelPlan(module, plan.reference, plan.kind, plan.streams, "fp16")
    return plans


def check_parity(reference: nn.Module, path: Path, names: Sequence[str], inputs: Mapping[str, np.ndarray],
                 tolerance: float, what: str, *, optimize: bool = True) -> dict[str, Any]:
    """Compare onnxruntime with the torch reference; raise when beyond ``tolerance``, else the summary."""
    diffs = compare(reference, path, names, inputs, optimize=optimize)
    bad = parity_failures(diffs, tolerance)
    if bad:
        raise CrossclrError(f"{what} differs from torch beyond {tolerance:g} × max(1, |logits|) "
                            f"({'; '.join(bad)}); export aborted, nothing written")
    worst = max(d for per in diffs.values() for n, d in per.items()
                if n.startswith("logits") and ":" not in n)
    log.info("%s: max |ORT - torch| on logits %.2e (%s)", what, worst, ", ".join(inputs))
    return {"max_abs_diff_logits": worst, "tolerance": tolerance, "per_input": diffs}



def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, config: ExportConfig | None = None
                      ) -> ExportResult:
    """Export a linear checkpoint (EVAL's ``training.protocols.io.load_linear``) as ``config`` says (its
    ``source`` becomes the checkpoint's path). The config was checked when built, before this slow part."""
    from training.protocols.io import load_linear

    encoders, heads, meta = load_linear(checkpoint)
    cfg = replace(config or ExportConfig(), source=str(checkpoint))
    return export_models(encoders, heads, meta, out_dir, cfg)
