"""CalibrationConfig: every option checked once, before any work, with one line naming the fix."""

import pytest

from calibkit.errors import CalibkitError
from calibkit.workflow.config import CalibrationConfig


@pytest.mark.parametrize("options, message", [
    ({"samples": -1}, "samples must be a whole number of at least 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number"),
    ({"memory_budget": 0}, "memory_budget must be a whole number of at least 1"),
    ({"sampler": "nearest"}, "unknown sampler 'nearest'; available: all, kmeans, random, stratified"),
    ({"weight_rounding": "banker"}, "unknown weight rounding 'banker'"),
    ({"methods": "entropy3"}, "entropy3"),
    ({"backend": "no-such-backend"}, "unknown backend 'no-such-backend'"),
])
def test_a_bad_option_is_refused_before_anything_is_written(options, message, small_model, image_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CalibkitError, match=message):
        CalibrationConfig(small_model, image_folder, out, **options)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_a_good_config_parses_its_methods_and_normalises_its_paths(small_model, image_folder, tmp_path):
    config = CalibrationConfig(str(small_model), image_folder, str(tmp_path / "run"), "minmax,percentile:99.9",
                               exclude=["/head/*"], samples=0)
    assert list(config.calibrators) == ["minmax", "percentile-99.9"], "labels as the run files name them"
    assert config.model == small_model and config.out == tmp_path / "run" and config.exclude == ("/head/*",)
    assert not (tmp_path / "run").exists(), "checking writes nothing"


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
    ({"batch_sizes": [1, 0]}, "batch_sizes must be whole numbers of at least 1"),
    ({"accuracy_budget": -1.0}, "accuracy_budget must be at least 0"),
    ({"layer_seconds": 0}, "layer_seconds must be positive"),
    ({"backend": "no-such-backend"}, "unknown backend 'no-such-backend'"),
])
def test_comparison_options_are_refused_before_any_inference(options, message):
    from calibkit.workflow.config import ComparisonOptions

    with pytest.raises(CalibkitError, match=message):
        ComparisonOptions(**options)


def test_comparison_rules_are_checked_against_the_task(small_model, image_folder):
    from calibkit.data.images import discover_images
    from calibkit.data.preprocess import Preprocess
    from calibkit.workflow import model_task
    from calibkit.workflow.config import ComparisonOptions

    task = model_task(small_model, Preprocess(size=(32, 32)), "classification", items=discover_images(image_folder))
    assert ComparisonOptions(fail_on=["top1_drop>1"]).rules(task)
    with pytest.raises(CalibkitError, match="recall"):
        ComparisonOptions(fail_on=["recall<0.9"]).rules(task)
    with pytest.raises(CalibkitError, match="unknown budget metric 'map'"):
        ComparisonOptions(accuracy_budget=1.0, budget_metric="map").rules(task)
