"""Stages on a real local Ray instance: the same artefacts and numbers as one process, a dead worker's
task run again, and a task's error as one line naming its shard."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'calibkit[ray]')")

from calibkit import distributed  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.data.preprocess import Preprocess  # noqa: E402

SPEC = Preprocess(size=(32, 32))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    distributed.remove_local_copies()


@pytest.fixture(scope="module")
def thirty_images(tmp_path_factory):
    from tests.conftest import write_images

    folder = tmp_path_factory.mktemp("thirty")
    write_images(folder, 30, seed=4)
    return folder


@pytest.mark.parametrize("rounding,memory_budget", [("nearest", None), ("gptq", None), ("gptq", 1 << 15)])
def test_calibrate_on_ray_writes_the_same_bytes_as_one_process(small_model, thirty_images, tmp_path, monkeypatch,
                                                               rounding, memory_budget):
    from calibkit import workflow
    from calibkit.workflow import calibration

    monkeypatch.setattr(calibration, "MOMENT_IMAGES", 10)  # the first task takes 10 images, the rest go 5 by 5
    options = dict(methods="minmax,mse,entropy2", samples=0, preprocess=SPEC, shard_size=5, weight_rounding=rounding,
                   bias_correction=rounding == "gptq", **({"memory_budget": memory_budget} if memory_budget else {}))
    one = workflow.calibrate(small_model, thirty_images, tmp_path / "one", **options)
    split = workflow.calibrate(small_model, thirty_images, tmp_path / "ray", ray="local", **options)
    assert split.stats.shard_images == one.stats.shard_images == [5] * 6
    assert split.stats.segments == one.stats.segments, "each Ray task holds to the budget as one process does"
    assert (one.stats.segments > 1) == (memory_budget is not None)
    for path in sorted((tmp_path / "one").iterdir()):
        if path.name != "timings.json":
            assert path.read_bytes() == (tmp_path / "ray" / path.name).read_bytes(), path.name
    for a, b in zip(one.stats.shards, split.stats.shards):  # what the sufficiency check bootstraps
        assert all(np.array_equal(a[name].signed, b[name].signed) for name in a)


def test_compare_and_sensitivity_on_ray_give_one_process_s_numbers(small_model, thirty_images, tmp_path, monkeypatch):
    from calibkit import workflow
    from calibkit.artifacts.ranges_json import read_ranges
    from calibkit.compare.run import compare_models
    from calibkit.sensitivity.ranking import leave_one_out, quantizable_nodes

    run = tmp_path / "run"
    workflow.calibrate(small_model, thirty_images, run, methods="minmax", samples=0, preprocess=SPEC)
    candidates = workflow.int8_candidates(small_model, run) + [workflow.fp16_candidate(small_model, tmp_path)]
    items = discover_images(thirty_images)
    task = workflow.model_task(small_model, SPEC, "classification")
    monkeypatch.setattr(distributed, "COMPARE_SHARD", 8)
    monkeypatch.setattr(distributed, "LAYER_SHARD", 4)
    from calibkit.compare.layers import InlineLayerDrift

    # one process in separate passes, as the tasks run: the same batches, so only the order of sums differs
    monkeypatch.setattr(InlineLayerDrift, "fits", staticmethod(lambda plan: False))
    one = compare_models(small_model, candidates, items, SPEC, task, batch_size=4, layer_images=12)
    split = distributed.sharded_comparison(small_model, candidates, items, SPEC, task, batch_size=4, layer_images=12)
    assert (split["images"], split["layer_images"]) == (one["images"], one["layer_images"]) == (30, 12)
    for a, b in zip(one["candidates"], split["candidates"]):
        assert a["metrics"]["agreement"] == b["metrics"]["agreement"]
        for key in ("kl", "top5_overlap", "output_sqnr"):
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-9)
        assert [x["sqnr_db"] for x in a["layers"]] == pytest.approx([x["sqnr_db"] for x in b["layers"]], rel=1e-9)

    ranges, _ = read_ranges(run / "minmax.json")
    cache = workflow.image_cache(items[:8], SPEC)
    nodes = quantizable_nodes(small_model)
    monkeypatch.setattr(distributed, "SENSITIVITY_SHARD", 2)
    here = leave_one_out(small_model, ranges, cache, task, nodes)
    there = distributed.sharded_leave_one_out(small_model, ranges, cache, task, nodes)
    assert [r["node"] for r in there] == nodes
    assert [r["drift"] for r in there] == pytest.approx([r["drift"] for r in here], rel=1e-9)


def test_a_task_whose_worker_dies_is_run_again_with_the_same_result(small_model, thirty_images, tmp_path):
    from calibkit.stats.collect import collect_part

    marker = tmp_path / "died-once"
    items = discover_images(thirty_images)[:6]

    def dies_first_time(model, shard):
        if not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process is gone, as if its machine failed
        return collect_part(model.path(), shard, SPEC, 2, 512)

    model = distributed.ModelFile.of(small_model)
    parts = distributed.run_tasks(dies_first_time, [model], [items[:3], items[3:]], str, "test")
    assert marker.exists()
    direct = collect_part(small_model, items[:3], SPEC, 2, 512)
    for name, stats in direct.shards[0].items():
        np.testing.assert_array_equal(parts[0].shards[0][name].signed, stats.signed)


def test_a_bad_image_in_a_task_is_one_error_line_naming_its_shard(small_model, thirty_images, tmp_path):
    import shutil

    from tests.test_cli import assert_one_line_error, run_cli

    folder = tmp_path / "images"
    shutil.copytree(thirty_images, folder)
    (folder / "img_007.jpg").write_bytes(b"not a jpeg")
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("calibkit-ray-*"))
    result = run_cli("calibrate", "--model", str(small_model), "--images", str(folder), "--out", str(tmp_path / "run"),
                     "--method", "minmax", "--samples", "0", "--ray", "--weight-rounding", "nearest",
                     "--no-bias-correction")
    assert_one_line_error(result, "statistics shard 0", "img_007.jpg")
    assert set(temp.glob("calibkit-ray-*")) <= before, "the local workers' model copies are removed"


def test_ray_with_a_gpu_backend_is_refused_before_any_work(small_model, thirty_images, tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    for command in (["calibrate", "--out", str(tmp_path / "run")], ["compare", "--candidates", "fp16", "--out",
                                                                     str(tmp_path / "cmp")]):
        result = run_cli(command[0], "--model", str(small_model), "--images", str(thirty_images), *command[1:],
                         "--ray", "--backend", "ort-cuda")
        assert_one_line_error(result, "--ray runs its tasks on CPU workers", "drop --backend or --ray")
        assert not (tmp_path / "cmp").exists() and not list((tmp_path / "run").glob("*"))


def test_shards_are_spread_over_tasks_evenly_larger_first_with_the_moment_images_in_the_first():
    assert distributed.task_sizes(40, 16) == [3] * 8 + [2] * 8, "each of 8 workers gets a 3 and a 2"
    assert distributed.task_sizes(40, 16, first=10) == [10] + [2] * 15
    assert distributed.task_sizes(3, 16) == [1, 1, 1], "never more tasks than shards"
    assert distributed.task_sizes(5, 4, first=5) == [5]
    for shards, tasks, first in ((41, 16, 0), (7, 4, 3), (100, 6, 1)):
        sizes = distributed.task_sizes(shards, tasks, first)
        assert sum(sizes) == shards and len(sizes) <= tasks and sizes[0] >= first
        assert sizes[1:] == sorted(sizes[1:], reverse=True) and max(sizes[1:]) - min(sizes[1:]) <= 1
