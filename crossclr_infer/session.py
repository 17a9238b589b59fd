"""onnxruntime sessions for crossclr models: provider choice, metadata, checked and batched runs.

A crossclr ONNX model (docs/design.md §4) takes ``skeleton`` float32 (batch, C, T, V, M) and carries
everything needed to run it in ``metadata_props`` (format ``crossclr-onnx-v1``). onnxruntime is imported
lazily so that the rest of the runtime works without it; the message names the extra to install.

Threads on CPU (``plan_threads``, measured with ``benchmarks/bench_infer.py``): onnxruntime's threads never
spin (``session.intra_op.allow_spinning`` = 0): spinning pools of several sessions, of other processes or of a
loaded machine take the cores from the threads doing the work (on a shared 2-core Xeon: one model at batch 1
1.6–1.9× faster without spinning; three stream sessions ran 2.3× slower than the fused ensemble with
onnxruntime's defaults and as fast as it without spinning). ``latency`` use (default; ``predict``): one call
at a time with an intra-op pool of all cores. ``throughput`` use (``evaluate``, large batches): no intra-op
pool; a batch runs as single-sample slices on one worker thread per core, which keeps each sample's
activations in cache (1.5–1.6× one call per batch of 64 on the same cores). Several models in one process
(three stream models) take the same plan, share one worker pool and run one after the other; shards run in
parallel processes each get their share of the cores (``processes``, or pin each process with ``taskset``: the
plan counts the cores the process may run on). Not used: onnxruntime's global thread pool (in onnxruntime 1.32
``set_global_thread_pool_sizes`` forces every later session of the process onto it, its spinning cannot be
turned off from Python, and three sessions on it were no faster) and ``ORT_PARALLEL`` execution of the
ensemble's three streams (0.44× sequential).

On CUDA (and TensorRT) a run binds its input and outputs (I/O binding): the batch is copied to the device
once and only the requested outputs are copied back.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError
from .layouts import Layout, layout_from_toml_text
from .metrics import check_fusion_weights
from .views import check_name, check_view_name

log = logging.getLogger(__name__)

ONNX_FORMAT = "crossclr-onnx-v1"
INPUT_NAME = "skeleton"
MODEL_KINDS = ("stream", "ensemble")
METADATA_KEYS = ("crossclr_format", "kind", "layout", "frames", "num_person", "streams", "class_names",
                 "fusion_weights", "preprocess", "config", "version")
CPU = "CPUExecutionProvider"
# Short names accepted on the command line.
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# The default order: the first of these that onnxruntime offers, then CPU.
DEFAULT_ACCELERATORS = ("CUDAExecutionProvider",)


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a CrossclrError that says which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise CrossclrError("onnxruntime is not installed: install it with pip install 'crossclr[cpu]' "
                            "(or 'crossclr[gpu]' for onnxruntime-gpu)") from None
    return onnxruntime


def available_providers() -> list[str]:
    """What the installed onnxruntime offers (looked up at call time so tests can fake it)."""
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The providers to ask for, in order.

    ``requested`` (full names or the short names of PROVIDER_ALIASES, case-insensitive) must all be available,
    else a CrossclrError lists what is; ``None`` or empty means CUDA when available, then CPU.
    """
    available = list(available)
    if not requested:
        chosen = [p for p in DEFAULT_ACCELERATORS if p in available]
        return chosen + [CPU] if CPU in available or not chosen else chosen
    by_lower = {p.lower(): p for p in available}
    out: list[str] = []
    for name in requested:
        key = name.strip()
        full = PROVIDER_ALIASES.get(key.lower(), key)
        full = by_lower.get(full.lower(), full)
        if full not in available:
            raise CrossclrError(f"execution provider {name!r} is not available in this onnxruntime; "
                                f"available: {', '.join(available)} (install 'crossclr[gpu]' for CUDA)")
        if full not in out:
            out.append(full)
    return out


@dataclass(frozen=True)
class ModelInfo:
    """What a crossclr model's metadata and input signature say about it."""

    path: str
    kind: str                        # "stream" | "ensemble"
    layout: Layout
    frames: int
    num_person: int
    num_channels: int
    streams: tuple[str, ...]
    class_names: tuple[str, ...]
    fusion_weights: dict[str, float] = field(hash=False)
    preprocess: dict = field(hash=False)
    config: dict = field(hash=False)
    version: str
    output_names: tuple[str, ...]
    precision: str = "fp32"  # "fp32", "fp16" (float16 inside, float32 inputs/outputs) or "int8"

    @property
    def num_class(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, V, M) of one sample."""
        return (self.num_channels, self.frames, self.layout.num_joints, self.num_person)


def _json_field(path: str, props: dict[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(props[key])
    except json.JSONDecodeError as e:
        raise CrossclrError(f"{path}: model metadata {key!r} is not valid JSON ({e.msg}); re-export the "
                            "model with `crossclr export`") from None
    if not isinstance(value, kind):
        raise CrossclrError(f"{path}: model metadata {key!r} should be a JSON {kind.__name__}, got "
                            f"{type(value).__name__}; re-export the model with `crossclr export`")
    return value


def parse_metadata(path: str, props: dict[str, str], input_shape: Sequence[Any],
                   output_names: Sequence[str]) -> ModelInfo:
    """ModelInfo from metadata_props and the ``skeleton`` input's shape (batch, C, T, V, M)."""
    if props.get("crossclr_format") != ONNX_FORMAT:
        found = props.get("crossclr_format")
        what = "has no crossclr metadata" if found is None else f"has metadata format {found!r}"
        raise CrossclrError(f"{path}: model {what}; expected an ONNX model exported by `crossclr export` "
                            f"(format {ONNX_FORMAT})")
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise CrossclrError(f"{path}: model metadata lacks {missing}; re-export the model with `crossclr "
                            f"export`")
    kind = props["kind"]
    if kind not in MODEL_KINDS:
        raise CrossclrError(f"{path}: model metadata kind {kind!r}, expected one of {MODEL_KINDS}")
    try:
        layout = layout_from_toml_text(props["layout"], f"{path} (metadata 'layout')")
        frames, num_person = int(props["frames"]), int(props["num_person"])
    except ValueError as e:
        msg = str(e) if str(e).startswith(path) else f"{path}: bad model metadata ({e})"
        raise CrossclrError(msg) from None
    check_name(layout.name, f"{path}: model metadata 'layout'", "layout name")
    streams = _check_streams(path, kind, _json_field(path, props, "streams", list), output_names)
    class_names = _json_field(path, props, "class_names", list)
    if not class_names:
        raise CrossclrError(f"{path}: model metadata 'class_names' is empty; expected one name per class")
    for name in class_names:
        check_name(name, f"{path}: model metadata 'class_names'", "class name")
    weights = check_fusion_weights(_json_field(path, props, "fusion_weights", dict),
                                   f"{path}: model metadata 'fusion_weights'", partial=True)
    if kind == "ensemble" and all(v in weights for v in streams):
        check_fusion_weights({v: weights[v] for v in streams}, f"{path}: model metadata 'fusion_weights'")
    preprocess = _json_field(path, props, "preprocess", dict)
    config = _json_field(path, props, "config", dict)
    if len(input_shape) != 5:
        raise CrossclrError(f"{path}: model input has {len(input_shape)} dimensions, expected 5 "
                            "(batch, C, T, V, M)")
    _, c, t, v, m = input_shape
    if not isinstance(c, int) or (t, v, m) != (frames, layout.num_joints, num_person):
        raise CrossclrError(f"{path}: model input shape {list(input_shape)} disagrees with its metadata "
                            f"(frames {frames}, {layout.num_joints} joints, {num_person} persons)")
    return ModelInfo(path=path, kind=kind, layout=layout, frames=frames, num_person=num_person,
                     num_channels=c, streams=streams, class_names=tuple(class_names),
                     fusion_weights=weights, preprocess=preprocess,
                     config=config, version=str(props["version"]), output_names=tuple(output_names),
                     precision=model_precision(props))


def class_outputs(kind: str, streams: Sequence[str]) -> tuple[str, ...]:
    """The outputs of a crossclr model that hold one score per class (batch, K)."""
    if kind == "ensemble":
        return ("logits", "probabilities", *(f"logits_{v}" for v in streams))
    return ("logits",)


def _check_streams(path: str, kind: str, streams: list[Any], output_names: Sequence[str]) -> tuple[str, ...]:
    """The metadata's stream names, checked against what can be checked (docs: ``ModelSession``).

    Each must be a known view (``views.VIEWS``), named once; a stream model has exactly one, an ensemble at
    least one and an output ``logits_<view>`` per stream. Whether a stream model's graph really computes
    the view it is named after cannot be read from the file: the name is trusted once it passes these
    checks.
    """
    where = f"{path}: model metadata 'streams'"
    names = tuple(check_view_name(v, where) for v in streams)
    if not names or len(set(names)) != len(names):
        raise CrossclrError(f"{where} is {list(names)}; expected distinct stream names, at least one")
    if kind == "stream" and len(names) != 1:
        raise CrossclrError(f"{where} names {len(names)} streams {list(names)}; a stream model has exactly "
                            "one")
    missing = [o for o in class_outputs(kind, names) if o not in output_names]
    if missing:
        raise CrossclrError(f"{path}: model outputs {list(output_names)} lack {missing} for its {kind} "
                            f"metadata (streams {list(names)}); re-export the model with `crossclr export`")
    return names


def check_output_shapes(info: ModelInfo, shapes: Mapping[str, Sequence[Any]]) -> None:
    """The class-score outputs must be (batch, K) with K = the metadata's class count (when the graph fixes
    K; otherwise ``ModelSession.run`` checks each result)."""
    for name in class_outputs(info.kind, info.streams):
        shape = list(shapes.get(name, []))
        if len(shape) != 2:
            raise CrossclrError(f"{info.path}: model output {name!r} has shape {shape}, expected (batch, "
                                f"{info.num_class})")
        if isinstance(shape[1], int) and shape[1] != info.num_class:
            raise CrossclrError(f"{info.path}: model output {name!r} gives {shape[1]} class scores but the "
                                f"metadata 'class_names' names {info.num_class} classes; re-export the model")


def model_precision(props: dict[str, str]) -> str:
    """``int8`` for quantized models, else the ``precision`` metadata (``fp32`` for models without it)."""
    if "quantization" in props:
        return "int8"
    return str(props.get("precision", "fp32"))


def _is_gpu(provider: str) -> bool:
    return provider != CPU and provider != "AzureExecutionProvider"


# providers whose sessions take device buffers through I/O binding, and onnxruntime's device name for them
BINDING_DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
USES = ("latency", "throughput")
THROUGHPUT_SLICE = 1  # samples per onnxruntime call in throughput use (measured best of 1, 2, 4, 8)


@dataclass(frozen=True)
class ThreadPlan:
    """How a CPU session uses the cores: onnxruntime's thread pools and this module's batch slicing."""

    intra_op_threads: int  # onnxruntime intra-op pool (1 = the calling thread only; 0 = its default)
    inter_op_threads: int = 0
    allow_spinning: bool = False  # idle pool threads busy-wait for work (onnxruntime's default: yes)
    workers: int = 1  # threads that run slices of one batch at the same time
    slice_size: int = 0  # samples per onnxruntime call when workers > 1

    def describe(self) -> str:
        spin = "spinning" if self.allow_spinning else "no spinning"
        if self.workers > 1:
            return (f"{self.workers} workers × {self.intra_op_threads} intra-op thread, slices of "
                    f"{self.slice_size}, {spin}")
        return f"{self.intra_op_threads or 'default'} intra-op threads, {spin}"


def plan_threads(use: str = "latency", *, cores: int = 0, processes: int = 1) -> ThreadPlan:
    """The thread plan for one session (see the module docstring).

    ``cores``: cores this process may use (0 = every CPU it may run on); ``processes``: processes sharing
    them (shards evaluated in parallel). Several sessions in one process take the same plan: they run one
    after the other and nothing spins between runs.
    """
    if use not in USES:
        raise CrossclrError(f"session use {use!r}: expected one of {USES}")
    if cores < 0 or processes < 1:
        raise CrossclrError(f"thread plan: cores must be >= 0 and processes >= 1, got {cores}, {processes}")
    if not cores:
        from .hardware import cpu_caps

        cores = cpu_caps().cores
    share = max(1, cores // processes)
    if use == "throughput" and share > 1:
        return ThreadPlan(intra_op_threads=1, workers=share, slice_size=THROUGHPUT_SLICE)
    return ThreadPlan(intra_op_threads=share)


@functools.cache
def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """One pool per worker count, shared by every session of the process (stream models run in turn)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crossclr-ort")


def session_options(ort: Any, plan: ThreadPlan) -> Any:
    """onnxruntime SessionOptions for ``plan``: every graph optimization, sequential execution."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = plan.intra_op_threads
    opts.inter_op_num_threads = plan.inter_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if plan.allow_spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if plan.allow_spinning else "0")
    opts.log_severity_level = 3
    return opts


class ModelSession:
    """One crossclr ONNX model in onnxruntime.

    ``providers`` = None picks CUDA when available, then CPU. ``use`` (``latency`` / ``throughput``) chooses
    the CPU thread plan (``plan_threads``) unless ``plan`` is given; ``intra_op_threads`` > 0 sets the cores
    the plan may use (``--threads``), ``inter_op_threads`` onnxruntime's inter-op pool. ``run`` checks
    inputs against the metadata and the class-score outputs against the class count.

    Opening checks the metadata against the graph: input shape (C, T, V, M) against layout, frames and
    persons; stream names are known views, each named once, one for a stream model, and the outputs
    ``logits`` (and for an ensemble ``probabilities`` and ``logits_<view>`` per stream) exist with one score
    per metadata class name; class and layout names are printable text; fusion weights are finite and
    >= 0. Not checkable: that a stream model's graph computes the view its metadata names (a joint model
    relabelled ``motion`` passes every check above).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, *, intra_op_threads: int = 0,
                 inter_op_threads: int = 0, use: str = "latency", plan: ThreadPlan | None = None) -> None:
        ort = import_onnxruntime()
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise CrossclrError(f"{p}: model file not found (expected an .onnx file written by `crossclr "
                                f"export`)")
        chosen = resolve_providers(providers, available_providers())
        if intra_op_threads < 0 or inter_op_threads < 0:
            raise CrossclrError(f"thread counts must be >= 0 (0 = onnxruntime's default), got "
                                f"intra {intra_op_threads}, inter {inter_op_threads}")
        if plan is None:
            plan = plan_threads(use, cores=intra_op_threads)
        if inter_op_threads:
            plan = ThreadPlan(plan.intra_op_threads, inter_op_threads, plan.allow_spinning, plan.workers,
                              plan.slice_size)
        try:
            self._sess = ort.InferenceSession(str(p), sess_options=session_options(ort, plan),
                                              providers=chosen)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CrossclrError(f"{p}: not a loadable ONNX model ({first[:200]})") from None
        self.providers = list(self._sess.get_providers())
        fell_back = [q for q in chosen if _is_gpu(q) and q not in self.providers]
        if fell_back:
            log.warning("%s: requested %s but onnxruntime runs on %s (the GPU provider failed to load; check "
                        "the CUDA/cuDNN installation for onnxruntime-gpu)", p, ", ".join(fell_back),
                        ", ".join(self.providers))
        self.fell_back = fell_back
        self.device = BINDING_DEVICES.get(self.providers[0]) if self.providers else None
        self.plan = plan if self.device is None else ThreadPlan(plan.intra_op_threads, plan.inter_op_threads,
                                                                plan.allow_spinning)
        inputs = self._sess.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise CrossclrError(f"{p}: model inputs {[i.name for i in inputs]}, expected one input "
                                f"{INPUT_NAME!r}; expected a model exported by `crossclr export`")
        props = dict(self._sess.get_modelmeta().custom_metadata_map)
        outputs = self._sess.get_outputs()
        self.info = parse_metadata(str(p), props, list(inputs[0].shape), [o.name for o in outputs])
        check_output_shapes(self.info, {o.name: list(o.shape) for o in outputs})
        from .int8 import warn_int8_target_mismatch

        warn_int8_target_mismatch(str(p), props)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.info.output_names

    def check_input(self, x: np.ndarray, source: str = "input") -> np.ndarray:
        """x as float32 (N, C, T, V, M) matching the model, or a CrossclrError naming ``source``."""
        return check_skeleton_batch(x, self.info, source)

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None, source: str = "input"
            ) -> dict[str, np.ndarray]:
        """One forward pass on a checked batch; returns {output name: array}."""
        x = self.check_input(x, source)
        names = list(outputs) if outputs is not None else list(self.output_names)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise CrossclrError(f"{self.path}: model has no outputs {unknown}; it has "
                                f"{list(self.output_names)}")
        if self.device is not None:
            values = self._run_bound(x, names)
        elif self.plan.workers > 1 and len(x) > self.plan.slice_size:
            values = self._run_sliced(x, names)
        else:
            values = self._sess.run(names, {INPUT_NAME: x})
        out = dict(zip(names, values, strict=True))
        for name in [n for n in names if n in class_outputs(self.info.kind, self.info.streams)]:
            if out[name].shape != (len(x), self.info.num_class):
                raise CrossclrError(f"{self.path}: model output {name!r} has shape {out[name].shape}, "
                                    f"expected ({len(x)}, {self.info.num_class}) for the metadata's "
                                    f"{self.info.num_class} class names; re-export the model")
        return out

    def _run_sliced(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """The batch as slices of ``plan.slice_size`` samples on the shared worker threads, in order."""
        slices = list(iter_batches(len(x), self.plan.slice_size))
        parts = list(_worker_pool(self.plan.workers).map(
            lambda sl: self._sess.run(names, {INPUT_NAME: x[sl]}), slices))
        return [np.concatenate([part[i] for part in parts]) for i in range(len(names))]

    def _run_bound(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """One run with I/O binding on the session's device: one host-to-device copy of the batch, outputs
        left on the device by onnxruntime and copied back once, only those asked for."""
        binding = self._sess.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        for name in names:
            binding.bind_output(name, self.device)
        self._sess.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def run_batched(self, x: np.ndarray, batch_size: int = 64, outputs: Sequence[str] | None = None,
                    source: str = "input") -> dict[str, np.ndarray]:
        """``run`` over consecutive slices of at most ``batch_size`` samples, outputs concatenated."""
        parts: dict[str, list[np.ndarray]] = {}
        for chunk in iter_batches(len(x), batch_size):
            for k, v in self.run(x[chunk], outputs, source).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise CrossclrError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def check_skeleton_batch(x: np.ndarray, info: ModelInfo, source: str = "input") -> np.ndarray:
    """Validate a batch (N, C, T, V, M) against a model: dtype, layout, frames, persons, finite values."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise CrossclrError(f"{source}: skeleton dtype {x.dtype}, expected floating point (float32)")
    c, t, v, m = info.input_shape
    if x.ndim != 5:
        raise CrossclrError(f"{source}: skeleton batch has shape {tuple(x.shape)}, expected 5 dimensions "
                            f"(N, C, T, V, M) = (N, {c}, {t}, {v}, {m})")
    if x.shape[3] != v:
        raise CrossclrError(f"{source}: skeleton has {x.shape[3]} joints but the model's layout "
                            f"{info.layout.name!r} has {v}; use a model trained on this skeleton layout")
    if x.shape[1:] != (c, t, v, m):
        raise CrossclrError(f"{source}: skeleton batch has shape {tuple(x.shape)}, expected (N, {c}, {t}, "
                            f"{v}, {m}) (N, C, T, V, M) as the model's metadata fixes it")
    if not np.isfinite(x).all():
        raise CrossclrError(f"{source}: skeleton contains NaN or Inf values; expected finite coordinates")
    return np.ascontiguousarray(x, dtype=np.float32)

