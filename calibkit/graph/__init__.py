"""The ONNX graph toolkit: structure queries (:mod:`.onnx_model`), one producer/consumer index
(:mod:`.index`), attribute helpers (:mod:`.attributes`), the normalising passes (:mod:`.normalize`) and
depthwise equalisation (:mod:`.equalize`)."""
