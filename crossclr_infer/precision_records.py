"""The records of precision checks (``crossclr_infer.precision``): a sidecar JSON beside each model.

``<model>.checks.json`` (format ``crossclr-precision-checks-v1``) holds one record per model file SHA-256,
backend, backend version, precision and CPU (``cpu_key``: model name and the flags that change numerics);
``ModelSession`` looks a record up before it runs bf16, ``precision.run_check`` saves one. Records of this
process are also kept in memory (a read-only folder only warns). A sidecar that is not a well-formed record
file is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CrossclrError
from .fileio import file_sha256, write_json_atomic
from .hardware import cpu_caps

log = logging.getLogger(__name__)

CHECKS_FORMAT = "crossclr-precision-checks-v1"
MAX_SIDECAR_BYTES = 1 << 20  # a record is < 1 KB; a bigger sidecar is not ours
_NUMERIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "bf16")

_MEMORY: dict[str, dict[str, Any]] = {}  # records of this process (also those that could not be saved)
_LOCK = threading.Lock()


def sidecar_path(model: str | Path) -> Path:
    """``<model>.checks.json`` beside the model."""
    p = Path(model)
    return p.with_name(p.name + ".checks.json")


def cpu_key() -> str:
    """The CPU as far as numerics go: model name, the relevant flags, any oneDNN ISA cap."""
    caps = cpu_caps()
    flags = ",".join(f for f in _NUMERIC_FLAGS if f in caps.flags)
    cap = f";ONEDNN_MAX_CPU_ISA={caps.onednn_cap}" if caps.onednn_cap else ""
    return f"{caps.model};{caps.arch};{flags}{cap}"


def check_key(model_sha256: str, backend: str, precision: str, backend_version: str) -> str:
    return "|".join((model_sha256, backend, precision, backend_version, cpu_key()))


def _read_sidecar(model: str | Path) -> dict[str, Any]:
    """The records of the sidecar (key -> record), {} when there is none or it is not well formed."""
    path = sidecar_path(model)
    try:
        if not path.is_file():
            return {}
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        obj = json.loads(path.read_text(encoding="utf-8"))
        if (not isinstance(obj, dict) or obj.get("format") != CHECKS_FORMAT
                or not isinstance(obj.get("checks"), dict)):
            raise ValueError(f"not a {CHECKS_FORMAT} file")
        return {k: v for k, v in obj["checks"].items() if isinstance(k, str) and _valid_record(v)}
    except (OSError, ValueError, RecursionError, UnicodeDecodeError) as e:
        log.warning("%s: ignoring the precision check record (%s); the model runs in float32 until a check "
                    "passes", path, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return {}


def _valid_record(rec: Any) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("passed"), bool)
            and all(isinstance(rec.get(k), str) for k in ("model_sha256", "backend", "precision",
                                                           "backend_version", "cpu")))


def lookup(model: str | Path, model_sha256: str, backend: str, precision: str,
           backend_version: str) -> dict[str, Any] | None:
    """The recorded check for this model file, backend (version), precision and CPU, or None."""
    key = check_key(model_sha256, backend, precision, backend_version)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    rec = _read_sidecar(model).get(key)
    if rec is not None and (rec["model_sha256"], rec["backend"], rec["precision"], rec["backend_version"],
                            rec["cpu"]) != tuple(key.split("|")):
        return None  # a record filed under a key it does not match
    return rec


def save(model: str | Path, record: Mapping[str, Any]) -> None:
    """Add ``record`` to the model's sidecar (atomic rewrite); a folder that cannot be written only warns."""

    key = check_key(record["model_sha256"], record["backend"], record["precision"], record["backend_version"])
    with _LOCK:
        _MEMORY[key] = dict(record)
    checks = _read_sidecar(model)
    checks[key] = dict(record)
    try:
        write_json_atomic(sidecar_path(model), {"format": CHECKS_FORMAT, "checks": checks})
    except (OSError, CrossclrError) as e:
        log.warning("%s: could not save the precision check (%s); it holds for this run only",
                    sidecar_path(model), str(e).splitlines()[0][:200] if str(e) else type(e).__name__)


def describe(rec: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    verdict = "passed" if rec["passed"] else "FAILED"
    few = rec["samples"] < rec.get("min_samples", 0)
    return (f"{rec['precision']} check {verdict} on {rec['samples']} samples"
            f"{' (too few: at least ' + str(rec['min_samples']) + ')' if few else ''}: top-1 agreement "
            f"{rec['agreement_pct']:.2f}% (>= {rec['min_agreement_pct']:g}%), top-1 "
            f"{rec['top1_reduced']:.2f}% vs fp32 {rec['top1_fp32']:.2f}% (drop {rec['drop_pt']:+.2f} pt, "
            f"<= {rec['max_drop_pt']:g})")


def model_sha256(path: str | Path) -> str:
    """SHA-256 of the model file (the record's key: a re-exported model is checked again)."""
    return file_sha256(path)
