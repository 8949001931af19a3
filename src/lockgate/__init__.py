"""lockgate: serve ONNX models over the Open Inference Protocol, split traffic, watch drift."""

__version__ = "0.1.0"
