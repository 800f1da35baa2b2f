"""`--ray auto` against a real two-node Ray cluster on this machine: a head and a second raylet (Ray's own
``cluster_utils``, the processes `ray start` runs), reached by a separate calibkit process as a user's
command would reach it, with one process's bytes and numbers."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'calibkit[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster on this machine: no token written to ~/.ray
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()
    if previous is None:
        del os.environ["RAY_AUTH_MODE"]
    else:
        os.environ["RAY_AUTH_MODE"] = previous


def _cli(*args, address=None):
    env = {**os.environ, "CALIBKIT_QUIET": "1", **({"RAY_ADDRESS": address} if address else {})}
    if not address:
        env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "calibkit.cli", *map(str, args)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_calibrate_and_compare_on_a_two_node_cluster_give_one_process_s_bytes(two_node_cluster, small_model,
                                                                              tmp_path):
    from tests.conftest import write_images

    import ray

    images = tmp_path / "images"
    write_images(images, 60, seed=7)
    common = ["calibrate", "--model", small_model, "--images", images, "--method", "minmax,percentile", "--samples",
              0, "--size", "32,32"]
    _cli(*common, "--out", tmp_path / "one")
    _cli(*common, "--out", tmp_path / "cluster", "--ray", "auto", address=two_node_cluster)
    for path in sorted((tmp_path / "one").iterdir()):
        if path.name != "timings.json":
            assert path.read_bytes() == (tmp_path / "cluster" / path.name).read_bytes(), path.name

    compare = ["compare", "--model", small_model, "--images", images, "--size", "32,32", "--task", "classification",
               "--candidates", f"int8:{tmp_path / 'one'},fp16", "--no-bench", "--layer-images", 8]
    _cli(*compare, "--out", tmp_path / "report-one")
    _cli(*compare, "--out", tmp_path / "report-cluster", "--ray", "auto", address=two_node_cluster)
    one, there = (json.loads((tmp_path / name / "report.json").read_text())["comparison"]
                  for name in ("report-one", "report-cluster"))
    assert (there["images"], there["layer_images"]) == (one["images"], one["layer_images"]) == (60, 8)
    # one process takes the per-layer drift inline, one image at a time, the tasks in a separate pass: other
    # batches and kernels, so the predictions agree exactly and SQNRs to the reference's own float rounding,
    # which FP16's 71 dB lets show at about 0.1 dB
    for a, b in zip(one["candidates"], there["candidates"]):
        assert a["metrics"]["agreement"] == b["metrics"]["agreement"]
        assert a["metrics"]["output_sqnr"] == pytest.approx(b["metrics"]["output_sqnr"], abs=0.25)
        assert [x["tensor"] for x in a["layers"]] == [x["tensor"] for x in b["layers"]] and a["layers"]
        assert [x["sqnr_db"] for x in a["layers"]] == pytest.approx([x["sqnr_db"] for x in b["layers"]], abs=0.25)

    ray.init(address=two_node_cluster, log_to_driver=False)
    try:
        alive = [node for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()
    assert len(alive) == 2, "the commands ran against a head and a second raylet"
