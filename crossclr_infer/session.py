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

from . import backends, hardware, int8
from . import precision_records as checks
from .errors import CrossclrError, check_name
from .fileio import require_regular_file
from .layouts import Layout, layout_from_toml_text
from .metrics import check_fusion_weights
from .views import check_view_name

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
    # onnxruntime's own log lines go to stderr raw (they may quote tensor names of a hostile model, escape
    # sequences included); every failure reaches the user as crossclr's one escaped line instead
    onnxruntime.set_default_logger_severity(4)
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
    fusion: str | None = None  # optional metadata 'fusion': how the heads were trained (joint / separate)

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
    except RecursionError:
        raise CrossclrError(f"{path}: model metadata {key!r} is nested too deeply to be read; re-export the "
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
                     precision=model_precision(props),
                     fusion=props.get("fusion") if props.get("fusion") in ("joint", "separate") else None)


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
        cores = hardware.cpu_caps().cores
    share = max(1, cores // processes)
    if use == "throughput" and share > 1:
        return ThreadPlan(intra_op_threads=1, workers=share, slice_size=THROUGHPUT_SLICE)
    return ThreadPlan(intra_op_threads=share)


def bound_threads(threads: int, option: str = "--threads") -> int:
    """``threads`` clamped to the CPUs this process may run on (``hardware.cpu_caps().cores``), with a
    warning: more threads than cores only add memory and contention (``--threads 100000`` grew to 6.4 GB)."""
    cores = hardware.cpu_caps().cores
    if threads > cores:
        log.warning("%s %d: this process may run on %d CPUs; using %d threads", option, threads, cores, cores)
        return cores
    return threads


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
    opts.log_severity_level = 4  # fatal only: see import_onnxruntime
    return opts


def _session_plan(use: str, plan: ThreadPlan | None, intra_op_threads: int, inter_op_threads: int
                  ) -> ThreadPlan:
    """The thread plan of a session: ``plan``, else ``plan_threads(use)`` on at most ``intra_op_threads``
    cores; thread counts checked (>= 0) and bounded by the usable cores."""
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise CrossclrError(f"thread counts must be >= 0 (0 = onnxruntime's default), got "
                            f"intra {intra_op_threads}, inter {inter_op_threads}")
    intra_op_threads = bound_threads(intra_op_threads, "--threads")
    inter_op_threads = bound_threads(inter_op_threads, "inter-op threads")
    if plan is None:
        plan = plan_threads(use, cores=intra_op_threads)
    if inter_op_threads:
        plan = ThreadPlan(plan.intra_op_threads, inter_op_threads, plan.allow_spinning, plan.workers,
                          plan.slice_size)
    return plan


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

    ``backend`` (``auto`` / ``onnxruntime`` / ``openvino``) and ``precision`` (``auto`` / ``fp32`` / ``bf16``)
    choose the runtime (``crossclr_infer.backends``, docs/backends.md); every check above runs on both.
    ``trust_precision`` skips the recorded-check requirement for bf16 (the check itself uses it). After
    opening, ``backend``, ``precision`` and ``backend_version`` say what runs; ``describe_backend()`` gives
    them for reports. ``run`` refuses non-finite class scores (NaN weights) naming the model.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, *, intra_op_threads: int = 0,
                 inter_op_threads: int = 0, use: str = "latency", plan: ThreadPlan | None = None,
                 backend: str = "auto", precision: str = "auto", trust_precision: bool = False) -> None:
        self.path = str(path)
        p = require_regular_file(path, "model file (an .onnx file written by `crossclr export`)",
                                 missing_ok=True)
        if not p.is_file():
            raise CrossclrError(f"{p}: model file not found (expected an .onnx file written by `crossclr "
                                f"export`)")
        requested = backends.check_choice(backend, backends.BACKENDS, "--backend")
        precision = backends.check_choice(precision, backends.PRECISIONS, "--precision")
        if requested == "openvino" and providers:
            raise CrossclrError(f"--providers {','.join(providers)}: execution providers are onnxruntime's; "
                                "they do not apply to --backend openvino (give one of them)")
        plan = _session_plan(use, plan, intra_op_threads, inter_op_threads)
        self._ov: Any = None
        self.backend_version = ""
        self.precision_check: dict[str, Any] | None = None
        ov_model = self._read_openvino(p, requested, providers)
        self.backend, ov_precision = self._pick_backend(ov_model, requested, providers, precision,
                                                        trust_precision)
        if self.backend == "onnxruntime":
            self._start_onnxruntime(p, providers, plan)
            if precision == "bf16" and ov_model is None:
                log.warning("%s: onnxruntime offers no bf16 on CPU; running %s (bf16 needs --backend "
                            "openvino, pip install 'crossclr[openvino]')", p, self.precision)
        else:
            try:
                self._open_openvino(ov_model, ov_precision, plan)
            except CrossclrError as e:
                if requested != "auto":
                    raise
                log.warning("%s; running it with onnxruntime", e)
                self.backend, self._ov = "onnxruntime", None
                self._start_onnxruntime(p, providers, plan)
        int8.warn_int8_target_mismatch(str(p), self._props)

    def _pick_backend(self, ov_model: Any, requested: str, providers: Sequence[str] | None, precision: str,
                      trust_precision: bool) -> tuple[str, str]:
        """(backend, OpenVINO precision) for the model ``_read_openvino`` gave (None: onnxruntime). Sets
        ``backend_version`` (and ``precision_check``) when OpenVINO is kept."""
        if ov_model is None:
            return "onnxruntime", "fp32"
        transformer = backends.is_transformer(self.info.config)
        backend = backends.choose_backend(requested, transformer=transformer,
                                          model_precision=self.info.precision,
                                          providers_given=bool(providers), precision=precision,
                                          openvino_ok=True)
        if backend != "openvino":
            return backend, "fp32"
        self.backend_version = backends.openvino_version()
        ov_precision = self._choose_precision(precision, trust_precision)
        unfused = transformer and not ov_model.fused_attention
        if requested == "auto" and ov_precision != "bf16" and not unfused:
            return "onnxruntime", ov_precision  # fp32, fused attention: onnxruntime is as fast (backends.md)
        return backend, ov_precision

    def _start_onnxruntime(self, p: Path, providers: Sequence[str] | None, plan: ThreadPlan) -> None:
        """Open the model in onnxruntime; it runs at the model's own precision."""
        self._open_onnxruntime(p, providers, plan)
        self.precision = self.info.precision
        self.backend_version = backends.onnxruntime_version()

    def _read_openvino(self, p: Path, backend: str, providers: Sequence[str] | None) -> Any:
        """The model read by OpenVINO (its metadata checked into ``self.info``) when OpenVINO may run it:
        ``--backend openvino``, or ``auto`` with OpenVINO installed and no onnxruntime providers asked for.
        Under ``auto`` a model OpenVINO cannot read goes to onnxruntime, which gives its own message."""
        openvino_wanted = backend == "openvino" or (backend == "auto" and not providers
                                                    and backends.openvino_installed())
        if not openvino_wanted:
            return None
        if backend == "openvino":
            backends.import_openvino()
        try:
            model = backends.OpenVINOModel(str(p), p.read_bytes())
            self._check_signature(p, model.props, model.input_names, model.input_shape, model.output_names,
                                  model.output_shapes)
        except CrossclrError:
            if backend == "openvino":
                raise
            log.debug("%s: OpenVINO could not read the model; trying onnxruntime", p)
            return None
        except OSError as e:
            raise CrossclrError(f"{p}: cannot read the model ({e.strerror or e})") from None
        return model

    def _check_signature(self, p: Path, props: dict[str, str], input_names: Sequence[str],
                         input_shape: Sequence[Any], output_names: Sequence[str],
                         output_shapes: Mapping[str, Sequence[Any]]) -> None:
        """The checks of every backend: one ``skeleton`` input, metadata against the graph (``self.info``)."""
        if len(input_names) != 1 or input_names[0] != INPUT_NAME:
            raise CrossclrError(f"{p}: model inputs {list(input_names)}, expected one input "
                                f"{INPUT_NAME!r}; expected a model exported by `crossclr export`")
        self._props = props
        self.info = parse_metadata(str(p), props, list(input_shape), list(output_names))
        check_output_shapes(self.info, output_shapes)

    def _open_onnxruntime(self, p: Path, providers: Sequence[str] | None, plan: ThreadPlan) -> None:
        ort = import_onnxruntime()
        chosen = resolve_providers(providers, available_providers())
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
        outputs = self._sess.get_outputs()
        props = dict(self._sess.get_modelmeta().custom_metadata_map)
        self._check_signature(p, props, [i.name for i in inputs], list(inputs[0].shape) if inputs else [],
                              [o.name for o in outputs], {o.name: list(o.shape) for o in outputs})

    def _open_openvino(self, model: Any, want: str, plan: ThreadPlan) -> None:
        threads = plan.intra_op_threads * max(1, plan.workers)  # every core of the plan, OpenVINO's threads
        self._ov = model.compile(want, threads)
        self.precision = self._ov.precision if self.info.precision == "fp32" else self.info.precision
        if want == "bf16" and self.precision != "bf16":
            log.warning("%s: OpenVINO compiled the model in %s, not bf16", self.path, self.precision)
        self.providers = [f"OpenVINO:{','.join(self._ov.devices)}"]
        self.fell_back = []
        self.device = None
        self.plan = ThreadPlan(intra_op_threads=self._ov.threads)

    def _choose_precision(self, requested: str, trust: bool) -> str:
        """fp32 or bf16 for OpenVINO (rule: ``docs/backends.md``). bf16 only for float32 models, on a CPU
        where OpenVINO has native bf16, and with a recorded passing check (``crossclr_infer.precision``)
        unless ``trust`` (the check itself). An explicit ``bf16`` that cannot be honoured warns and runs
        fp32."""

        if requested == "fp32" or self.info.precision != "fp32":
            if requested == "bf16":
                log.warning("%s: a %s model runs as it is; --precision bf16 applies to float32 models",
                            self.path, self.info.precision)
            return "fp32"
        explicit = requested == "bf16"
        if not backends.openvino_native_bf16():
            if explicit:
                log.warning("%s: this CPU has no native bf16 for OpenVINO (AVX512-BF16 or AMX); running fp32",
                            self.path)
            return "fp32"
        if trust:
            return "bf16"
        rec = checks.lookup(self.path, checks.model_sha256(self.path), "openvino", "bf16",
                            self.backend_version)
        self.precision_check = rec
        if rec is not None and rec["passed"]:
            return "bf16"
        if rec is not None:
            (log.warning if explicit else log.info)(
                "%s: bf16 refused, its recorded check failed (%s); running fp32", self.path,
                checks.describe(rec))
        elif explicit:
            log.warning("%s: bf16 has not been checked for this model, OpenVINO version and CPU; running "
                        "fp32 (check it with `crossclr evaluate --precision bf16 --data CACHE` or `crossclr "
                        "export --data CACHE`)", self.path)
        return "fp32"

    def describe_backend(self) -> dict[str, Any]:
        """What runs the model, for reports, ``--json`` output and logs."""
        out: dict[str, Any] = {"backend": self.backend, "precision": self.precision,
                               "backend_version": self.backend_version, "providers": list(self.providers),
                               "threads": self.plan.describe()}
        if self.precision_check is not None:
            out["precision_check"] = {k: self.precision_check.get(k) for k in (
                "passed", "samples", "agreement_pct", "top1_fp32", "top1_reduced", "drop_pt", "checked_at")}
        return out

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
        if self._ov is not None:
            values = self._ov.run(x, names)
        elif self.device is not None:
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
            if not np.isfinite(out[name]).all():
                raise CrossclrError(f"{self.path}: model output {name!r} holds NaN or Inf for {source} (the "
                                    "input is finite): the model's weights or graph are broken; re-export it "
                                    "from a good checkpoint")
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



def bf16_candidate(model: str | Path, *, backend: str = "auto", precision: str = "auto") -> str | None:
    """The backend that would run ``model`` in bf16 here once a check passes, when no check is recorded
    for it yet (so one should run); None when bf16 is not in question (fp32 asked for, onnxruntime chosen,
    no native bf16, a non-float32 model) or a check is already recorded."""

    if precision == "fp32" or backend == "onnxruntime" or not backends.openvino_installed():
        return None
    sess = ModelSession(model, use="latency", backend=backend, precision="fp32", intra_op_threads=1)
    if backend == "auto" and not (backends.is_transformer(sess.info.config) or precision == "bf16"):
        return None  # auto never serves it with OpenVINO
    if sess.info.precision != "fp32" or not backends.openvino_native_bf16():
        return None
    rec = checks.lookup(model, checks.model_sha256(model), "openvino", "bf16", backends.openvino_version())
    if rec is not None and (rec["passed"] or rec.get("samples", 0) >= rec.get("min_samples", 0)):
        return None  # checked already (a check that failed only for too few samples runs again)
    return "openvino"
