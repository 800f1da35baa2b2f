"""The TensorRT-RTX backend: refused in one line without a supported GPU, and every runtime name it calls
exists in the installed bindings (execution itself needs a supported GPU, which these machines lack)."""

import importlib

import pytest

from calibkit.backends import tensorrt_rtx
from calibkit.engine import builder, gpu
from calibkit.errors import CalibkitError
from tests.test_cli import assert_one_line_error, run_cli

# What the session code (calibkit.backends.tensorrt.TrtSession and the runtime-cache context) calls.
RUNTIME_NAMES = {
    None: ["Runtime", "Logger", "IProfiler", "TensorIOMode", "nptype"],
    "ICudaEngine": ["create_execution_context", "create_runtime_config", "get_tensor_name", "num_io_tensors",
                    "get_tensor_mode", "get_tensor_dtype"],
    "IRuntimeConfig": ["create_runtime_cache", "set_runtime_cache"],
    "IRuntimeCache": ["serialize", "deserialize"],
    "IExecutionContext": ["set_input_shape", "set_tensor_address", "get_tensor_shape", "execute_async_v3", "profiler"],
}


@pytest.mark.skipif(not builder.available(), reason="TensorRT-RTX not installed")
def test_the_runtime_api_the_backend_uses_exists():
    trt = importlib.import_module(builder.MODULE)
    for owner, names in RUNTIME_NAMES.items():
        where = getattr(trt, owner) if owner else trt
        missing = [name for name in names if not hasattr(where, name)]
        assert not missing, f"{owner or 'tensorrt_rtx_bindings'} lacks {missing}"
    assert hasattr(trt.Logger, "WARNING") and hasattr(trt.TensorIOMode, "INPUT")


def test_an_unsupported_gpu_is_named_with_its_compute_capability(monkeypatch):
    monkeypatch.setattr(tensorrt_rtx, "local_gpu", lambda: gpu.Gpu("NVIDIA H200", "9.0"))
    with pytest.raises(CalibkitError) as error:
        tensorrt_rtx.supported_gpu()
    message = str(error.value)
    assert "NVIDIA H200 has compute capability 9.0" in message and "8.9 (sm89)" in message and "12.0 (sm120)" in message
    monkeypatch.setattr(tensorrt_rtx, "local_gpu", lambda: gpu.Gpu("NVIDIA GeForce RTX 4090", "8.9"))
    assert tensorrt_rtx.supported_gpu() == "sm89"


@pytest.mark.skipif(gpu.local_gpu() is not None or not builder.available(),
                    reason="this machine has an NVIDIA GPU, or TensorRT-RTX is not installed")
def test_without_a_gpu_every_command_stops_before_any_work(small_model, image_folder, tmp_path):
    out = tmp_path / "report"
    for args in (["eval", "--images", str(image_folder)], ["bench"],
                 ["compare", "--images", str(image_folder), "--candidates", "fp16", "--out", str(out)]):
        done = run_cli(args[0], "--model", str(small_model), *args[1:], "--backend", "tensorrt-rtx", "--size", "32")
        assert_one_line_error(done, "backend tensorrt-rtx", "nvidia-smi finds none here", "8.9 (sm89)")
    assert not out.exists(), "nothing written before the refusal"
