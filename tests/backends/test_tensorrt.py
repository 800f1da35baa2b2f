"""The TensorRT backend needs NVIDIA TensorRT and a GPU; without them these tests skip and the CLI explains."""

import importlib.util

import pytest

from calibkit.backends import available_backends, load
from calibkit.backends import tensorrt as trt_backend
from calibkit.errors import CalibkitError

HAVE_TRT = trt_backend.available()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_loading_says_how_to_install(small_model):
    assert "tensorrt" not in available_backends()
    with pytest.raises(CalibkitError, match=r"pip install 'calibkit\[tensorrt\]'"):
        load(small_model, "fp32", "tensorrt")


@pytest.mark.skipif(not HAVE_TRT, reason="tensorrt and cuda-python are not installed (pip install 'calibkit[tensorrt]')")
def test_engine_matches_onnxruntime(small_model):
    import numpy as np

    batch = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = load(small_model, "fp32", "ort-cpu").run(batch)["logits"]
    got = load(small_model, "fp32", "tensorrt").run(batch)["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_module_imports_without_tensorrt():
    assert importlib.util.find_spec("calibkit.backends.tensorrt") is not None
