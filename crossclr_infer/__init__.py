"""crossclr runtime: skeleton layouts, preprocessing, views, caches and ONNX inference (no torch).

The Python API (docs/api.md)::

    from crossclr_infer import Predictor

    result = Predictor("models/ensemble.onnx").predict("clip.npy")
    print(result.name, result.probability)

The public names below are loaded on first use (``import crossclr_infer`` stays light: no onnxruntime, no
numpy); the submodules (``crossclr_infer.predictor``, ``crossclr_infer.stream`` ...) stay importable. Type
checkers read the names' real types from ``__init__.pyi`` (a stub rather than a ``TYPE_CHECKING`` block here,
so that this package imports none of its submodules, not even for type checking: no import circle).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "Predictor": "predictor",
    "StreamPredictor": "stream",
    "StreamPrediction": "stream",
    "Frame": "stream",
    "Prediction": "results",
    "ClassScore": "results",
    "CrossclrError": "errors",
    "ModelInfo": "session",
}

__all__ = ["ClassScore", "CrossclrError", "Frame", "ModelInfo", "Prediction", "Predictor", "StreamPrediction",
           "StreamPredictor", "__version__"]  # = _EXPORTS and __version__ (tests/infer/test_api.py checks it)


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access (PEP 562) and cache the name in this module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
