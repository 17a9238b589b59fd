"""What one export writes and checks (``ExportConfig``), validated in one place, and the opset and attention
rules it follows. ``crossclr export`` builds it from its flags; ``export_models`` and ``export_checkpoint``
take it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from crossclr_infer.errors import CrossclrError

from .quantize import Int8Config
from .serving import ATTENTION_FORMS, DEFAULT_ATTENTION, DEFAULT_GRAPH_FORM, GRAPH_FORMS, ONNX_ATTENTION_OPSET

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# Opsets measured to export, pass onnx.checker and match torch in onnxruntime for every encoder (spatial,
# flow, adaptive, transformer), both graph forms, fp16 and int8, with torch 2.13 / onnxruntime 1.32:
# Einsum (adaptive graphs, the einsum form) needs 12, the per-channel int8 QDQ nodes 13; below 9 even the
# serving form fails. Above 23 the TorchScript exporter has no symbolic functions.
MIN_OPSET = 13
MAX_OPSET = 23
DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes at least this opset (lower requests are raised to it)
TOLERANCE = 1e-4
# float16 models against torch float32: relative to max(1, |logits|), like TOLERANCE (docs/figures.md)
FP16_TOLERANCE = 2e-2
PRECISIONS = ("fp32", "fp16")
QUANTIZE_MODES = ("int8",)


def written_opset(opset: int, dynamo: bool) -> int:
    """The opset the models are written with: ``opset`` (or ``DYNAMO_MIN_OPSET`` for the dynamo exporter
    when lower); one-line CrossclrError naming --opset outside ``MIN_OPSET``..``MAX_OPSET``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        why = ("Einsum needs 12 and per-channel int8 13" if opset < MIN_OPSET
               else "the exporter knows no later one")
        raise CrossclrError(f"--opset {opset}: outside the opsets our models export at ({why}); expected an "
                            f"opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    return max(opset, DYNAMO_MIN_OPSET) if dynamo else opset


def check_opset(opset: int, dynamo: bool) -> int:
    """``written_opset``, logging when the dynamo exporter raises the opset."""
    out = written_opset(opset, dynamo)
    if out != opset:
        log.info("--opset %d with --dynamo: the dynamo exporter writes opset %d", opset, out)
    return out


def written_attention(attention: str, opset: int, dynamo: bool) -> str:
    """The attention form the transformers are written with: ``attention`` (one of ATTENTION_FORMS), or
    ``plain`` with the dynamo exporter (the fused forms are TorchScript symbolic functions); one-line
    CrossclrError for an unknown form or ``onnx-attention`` below opset 23."""
    if attention not in ATTENTION_FORMS:
        raise CrossclrError(f"attention {attention!r}: expected one of {list(ATTENTION_FORMS)}")
    if dynamo:
        return "plain"
    if attention == "onnx-attention" and opset < ONNX_ATTENTION_OPSET:
        raise CrossclrError(f"attention onnx-attention needs --opset {ONNX_ATTENTION_OPSET} (the first opset "
                            f"with the ONNX Attention op); got --opset {opset}")
    return attention


def check_attention(attention: str, opset: int, dynamo: bool) -> str:
    """``written_attention``, logging when the dynamo exporter keeps the plain attention graph."""
    out = written_attention(attention, opset, dynamo)
    if out != attention:
        log.info("attention %s with --dynamo: the dynamo exporter writes the plain attention graph",
                 attention)
    return out


@dataclass(frozen=True)
class ExportConfig:
    """One export's settings (the ``crossclr export`` flags); every field is checked when it is built, so a
    bad value fails before a checkpoint is loaded or a file written."""

    streams: tuple[str, ...] | None = None    # streams to export (None: every stream of the checkpoint)
    ensemble: bool = True                     # also write ensemble.onnx (every stream fused in one graph)
    opset: int = DEFAULT_OPSET                # requested ONNX opset (MIN_OPSET..MAX_OPSET; dynamo: >= 18)
    dynamo: bool = False                      # torch's dynamo exporter instead of TorchScript
    data: str | Path | None = None            # cache whose samples are the parity check's real inputs
    quantize: str | None = None               # "int8": also write NAME.int8.onnx and its accuracy change
    calibration: str | Path | None = None     # cache to calibrate int8 on (default: data)
    tolerance: float = TOLERANCE              # largest |ORT − torch| on fp32 logits, × max(1, |logits|)
    overwrite: bool = False                   # replace a non-empty output folder
    seed: int = 0                             # seed of the random parity inputs and the example input
    graph_form: str = DEFAULT_GRAPH_FORM      # GRAPH_FORMS: matmul (serving form) or einsum (as trained)
    precision: str = "fp32"                   # PRECISIONS: fp16 also writes NAME.fp16.onnx
    fp16_tolerance: float = FP16_TOLERANCE    # ... its largest |ORT fp16 − torch fp32| on logits, relative
    int8_config: Int8Config | None = None     # how int8 quantizes (None: export.quantize.DEFAULT_INT8)
    source: str = "checkpoint"                # what is exported, named in messages and export.json
    attention: str = DEFAULT_ATTENTION        # ATTENTION_FORMS: how transformers' attention is written

    def __post_init__(self) -> None:
        if self.streams is not None:
            object.__setattr__(self, "streams", tuple(self.streams) or None)
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise CrossclrError(f"--quantize {self.quantize!r}: only 'int8' is supported")
        if self.quantize and not (self.calibration or self.data):
            raise CrossclrError("--quantize int8 needs --calibration CACHE.h5 (samples to calibrate on)")
        if self.precision not in PRECISIONS:
            raise CrossclrError(f"--precision {self.precision!r}: expected one of {list(PRECISIONS)}")
        if self.graph_form not in GRAPH_FORMS:
            raise CrossclrError(f"graph form {self.graph_form!r}: expected one of {GRAPH_FORMS}")
        written_attention(self.attention, written_opset(self.opset, self.dynamo), self.dynamo)

    @property
    def real_inputs(self) -> str | Path | None:
        """The cache of the parity check's real inputs: --data, else --calibration."""
        return self.data or self.calibration

    @property
    def calibration_cache(self) -> str | Path | None:
        """The cache int8 calibrates on and measures its accuracy change on: --calibration, else --data."""
        return self.calibration or self.data
