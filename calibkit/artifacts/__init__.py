"""Artefacts written from calibrated ranges: TensorRT caches, JSON, Q/DQ and FP16 ONNX models."""
