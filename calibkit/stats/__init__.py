"""Streaming activation statistics: one ONNX Runtime pass, memory independent of the image count."""
