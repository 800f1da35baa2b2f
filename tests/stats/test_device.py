"""GPU statistics: the same counts as the CPU for the same values, and a GPU statistics pass whose ranges
match the CPU's. Skipped where there is no CUDA GPU (CuPy) or no onnxruntime-gpu."""

import math

import numpy as np
import pytest

from calibkit.stats.histogram import TensorStats

cupy = pytest.importorskip("cupy", reason="GPU statistics need CuPy and a CUDA GPU (pip install 'calibkit[gpu]')")
try:
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 - CuPy without a driver raises its own CUDA errors
    HAS_GPU = False
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU here")


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    yield np.zeros((2, 3), np.float32)  # all-zero batch before any value
    yield (rng.standard_normal((4, 8, 16, 16)) * 0.3).astype(np.float32)
    edges = np.float32(2.0) * np.arange(-64, 65, dtype=np.float32) / 64  # values exactly on bin edges
    yield edges
    yield np.array([1.0, np.nan, -np.inf, 7.5], np.float32)  # non-finite values, then a wider range
    yield (rng.standard_normal(100_000) * 40).astype(np.float32)


def test_gpu_binning_counts_exactly_what_the_cpu_counts():
    cpu, gpu = TensorStats("t", 1024), TensorStats("t", 1024)
    for batch in _batches():
        cpu.update(batch)
        gpu.update(cupy.asarray(batch))
    gpu.on_host()
    assert (cpu.count, cpu.nonfinite, cpu.zeros, cpu.upper) == (gpu.count, gpu.nonfinite, gpu.zeros, gpu.upper)
    assert math.isclose(cpu.min, gpu.min) and math.isclose(cpu.max, gpu.max)
    np.testing.assert_array_equal(cpu.signed, gpu.signed)


def test_gpu_and_cpu_statistics_merge_exactly():
    batches = list(_batches(1))
    whole = TensorStats("t", 512)
    for batch in batches:
        whole.update(batch)
    first, second = TensorStats("t", 512), TensorStats("t", 512)
    for batch in batches[:3]:
        first.update(cupy.asarray(batch))
    for batch in batches[3:]:
        second.update(batch)
    merged = first.on_host().merge(second)
    np.testing.assert_array_equal(merged.signed, whole.signed)
    assert merged.count == whole.count


def test_moments_of_device_tensors_equal_host_ones():
    from onnx import TensorProto, helper, numpy_helper

    from calibkit.stats.moments import MomentCollector, weighted_layers

    w = np.ones((4, 3, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    layers = weighted_layers(helper.make_model(graph, ir_version=8))
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
    on_host, on_device = (MomentCollector(layers, images=1, min_samples_per_column=0, seed=0) for _ in range(2))
    on_host.update({"x": x})
    on_device.update({"x": cupy.asarray(x)})
    np.testing.assert_allclose(on_device.moments["conv"].second, on_host.moments["conv"].second, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_device.moments["conv"].mean, on_host.moments["conv"].mean, rtol=1e-5, atol=1e-6)


def test_a_gpu_statistics_pass_gives_the_cpu_pass_s_ranges(small_model, image_folder):
    from calibkit.backends.onnxruntime import cuda_available
    from calibkit.calib.registry import compute_ranges, get_calibrator
    from calibkit.data.images import discover_images
    from calibkit.data.preprocess import Preprocess
    from calibkit.stats.collect import collect_statistics

    if not cuda_available():
        pytest.skip("onnxruntime-gpu is not installed")
    items, spec = discover_images(image_folder), Preprocess(size=(32, 32))
    cpu = collect_statistics(small_model, items, spec, batch_size=4)
    gpu = collect_statistics(small_model, items, spec, batch_size=4, backend="ort-cuda")
    for method in ("minmax", "percentile:99.99", "mse", "entropy2"):
        a, b = (compute_ranges(s.tensors, get_calibrator(method)) for s in (cpu, gpu))
        worst = max(abs(a[n].amax - b[n].amax) / a[n].amax for n in a)
        assert worst < 1e-3, (method, worst)
