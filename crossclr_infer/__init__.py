"""crossclr runtime: skeleton layouts, preprocessing, views, caches and ONNX inference (no torch)."""

__version__ = "0.1.0"
