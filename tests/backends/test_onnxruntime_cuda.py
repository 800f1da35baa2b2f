"""ONNX Runtime's CUDA provider: same outputs as the CPU, device outputs without copies, and a comparison
that runs and times every model on the GPU. Skipped without onnxruntime-gpu and a GPU."""

import json

import numpy as np
import pytest

from calibkit.backends.onnxruntime import cuda_available

pytestmark = pytest.mark.skipif(not cuda_available(), reason="onnxruntime-gpu (CUDA provider) is not installed")


@pytest.fixture(scope="module")
def cuda_session(small_model):
    from calibkit.backends import load

    try:
        return load(small_model, "fp32", "ort-cuda", expose=["c1"])
    except Exception as exc:  # noqa: BLE001 - the provider is built in but no GPU or driver is usable
        pytest.skip(f"the CUDA provider cannot start here: {exc}")


def test_cuda_outputs_match_the_cpu_and_stay_on_the_device(small_model, cuda_session):
    from calibkit.backends import load

    cupy = pytest.importorskip("cupy")
    batch = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert cuda_session.on_gpu
    cpu = load(small_model, "fp32", "ort-cpu").run(batch)
    gpu = cuda_session.run(batch)
    np.testing.assert_allclose(gpu["logits"], cpu["logits"], rtol=1e-4, atol=1e-4)
    on_device = cuda_session.run_device(batch, ["logits", "c1"])
    assert isinstance(on_device["c1"], cupy.ndarray)
    np.testing.assert_allclose(on_device["logits"].get(), gpu["logits"], rtol=1e-6)
    cuda_session.timer(batch)()


def test_compare_on_the_gpu_names_it_and_times_every_model_there(small_model, image_folder, tmp_path, capsys):
    from calibkit.cli import main

    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "mse", "--samples", "0", "--backend", "ort-cuda"]) == 0
    assert main(["compare", "--model", str(small_model), "--images", str(image_folder), "--candidates",
                 f"int8:{run},fp16", "--out", str(tmp_path / "cmp"), "--backend", "ort-cuda",
                 "--bench-batch-sizes", "1,8"]) == 0
    document = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert document["comparison"]["backend"] == "ort-cuda"
    assert {row["backend"] for row in document["speed"]} == {"ort-cuda"}
    assert set(document["comparison"]["placement"]) == {"fp32", "int8 mse", "fp16"}
    assert "ONNX Runtime CUDA on" in (tmp_path / "cmp" / "report.html").read_text()
