import math
import warnings

import numpy as np
import pytest

from calibkit.calib import available_calibrators, compute_ranges, parse_methods, register_calibrator
from calibkit.calib.registry import FALLBACK_AMAX, _REGISTRY, get_calibrator
from calibkit.errors import CalibkitError
from calibkit.stats.histogram import TensorStats


def test_builtins_are_registered():
    assert {"entropy2", "minmax", "percentile", "mse"} <= set(available_calibrators())


def test_unknown_method_lists_available_ones():
    with pytest.raises(CalibkitError, match=r"unknown calibration method 'kl'; available: .*entropy2.*minmax"):
        parse_methods("entropy2,kl")


def test_method_parameters_and_labels():
    calibrators = parse_methods("percentile:99.9, entropy2, percentile:99.9")
    assert [c.label for c in calibrators] == ["percentile-99.9", "entropy2"]
    assert get_calibrator("percentile").params == {"percentile": 99.99}
    with pytest.raises(CalibkitError, match="takes no parameter"):
        get_calibrator("minmax:3")
    with pytest.raises(CalibkitError, match="not a valid percentile"):
        get_calibrator("percentile:high")


def test_all_expands_to_every_registered_method():
    assert sorted(c.info.name for c in parse_methods("all")) == available_calibrators()


def test_a_user_registers_a_calibrator_without_editing_core():
    @register_calibrator("half_max", trt_algorithm="MinMaxCalibration")
    def half_max(stats):
        return stats.absmax / 2

    try:
        stats = TensorStats("t")
        stats.update(np.array([-4.0, 1.0], np.float32))
        ranges = compute_ranges({"t": stats}, get_calibrator("half_max"))
        assert ranges["t"].amax == 2.0 and ranges["t"].scale == pytest.approx(2.0 / 127)
    finally:
        _REGISTRY.pop("half_max")


def test_degenerate_tensors_fall_back_without_nan_or_inf():
    never = TensorStats("never")
    zeros = TensorStats("zeros")
    zeros.update(np.zeros(100, np.float32))
    constant = TensorStats("constant")
    constant.update(np.full(100, -2.5, np.float32))
    tensors = {"never": never, "zeros": zeros, "constant": constant}
    for calibrator in parse_methods("all"):
        with pytest.warns(UserWarning, match="3 tensor"):
            ranges = compute_ranges(tensors, calibrator)
        assert ranges["never"].amax == FALLBACK_AMAX and ranges["never"].fallback == "never reached"
        assert ranges["zeros"].amax == FALLBACK_AMAX
        assert ranges["constant"].amax == 2.5
        assert all(math.isfinite(r.scale) and r.scale > 0 for r in ranges.values())


def test_no_warning_for_healthy_tensors():
    stats = TensorStats("t")
    stats.update(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_ranges({"t": stats}, get_calibrator("entropy2"))


def test_a_tensor_spanning_exactly_minus_c_to_c_is_calibrated_not_called_constant():
    # a [-1, 1]-normalised image input: min is exactly -max, yet its values spread over the range
    spread = TensorStats("image")
    spread.update(np.concatenate([[-1.0, 1.0], np.random.default_rng(0).uniform(-1, 1, 1000)]).astype(np.float32))
    plus_minus = TensorStats("sign")
    plus_minus.update(np.array([-3.0, 3.0] * 50, np.float32))
    with pytest.warns(UserWarning, match="1 tensor.*sign \\(constant\\)"):
        ranges = compute_ranges({"image": spread, "sign": plus_minus}, get_calibrator("percentile"))
    assert ranges["image"].fallback is None and ranges["image"].amax <= 1.0
    assert ranges["sign"].amax == 3.0


def test_the_file_label_is_accepted_as_a_method_name():
    assert get_calibrator("percentile-99.9").label == get_calibrator("percentile:99.9").label == "percentile-99.9"
    with pytest.raises(CalibkitError, match="must be in \\[50, 100\\]"):
        get_calibrator("percentile-150")
