"""calibkit: INT8/FP16 post-training quantization workbench for ONNX vision models aimed at TensorRT."""

__version__ = "0.1.0"
