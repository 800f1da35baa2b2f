"""Every registered calibrator keeps the plug-in contract, and the check catches one that does not."""

import pytest

from calibkit.calib import available_calibrators, register_calibrator
from calibkit.calib.contract import check_calibrator_contract
from calibkit.calib.registry import _REGISTRY, get_calibrator


@pytest.mark.parametrize("name", available_calibrators())
def test_every_registered_calibrator_keeps_the_contract(name):
    check_calibrator_contract(get_calibrator(name).info)


def test_the_check_refuses_a_range_beyond_the_largest_value(monkeypatch):
    monkeypatch.setattr("calibkit.calib.registry._REGISTRY", dict(_REGISTRY))
    register_calibrator("twice", trt_algorithm="MinMaxCalibration", cost=0)(lambda stats, **_: 2 * stats.absmax)
    with pytest.raises(AssertionError, match="beyond the largest"):
        check_calibrator_contract(get_calibrator("twice").info)


def test_the_check_refuses_an_algorithm_tensorrt_does_not_know(monkeypatch):
    monkeypatch.setattr("calibkit.calib.registry._REGISTRY", dict(_REGISTRY))
    register_calibrator("odd", trt_algorithm="KLCalibration")(lambda stats, **_: stats.absmax)
    with pytest.raises(AssertionError, match="TensorRT algorithm"):
        check_calibrator_contract(get_calibrator("odd").info)
