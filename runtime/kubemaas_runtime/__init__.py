"""kubemaas inference runtime: an Open Inference Protocol v2 server for ONNX and torch models."""

__version__ = "0.1.0"
