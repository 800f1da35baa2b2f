"""Streaming activation statistics: one ONNX Runtime pass, memory independent of the image count."""

# Where one batch's exposed activations pass this (--memory-budget), the graph runs in segments that
# expose at most half of it each (:mod:`calibkit.stats.segments`): a wide detector at 1024 px exposes GBs.
MEMORY_BUDGET = 3 << 29  # 1.5 GiB
