import json

import pytest

from calibkit.artifacts.ranges_json import read_ranges, write_ranges
from calibkit.calib.registry import TensorRange, get_calibrator
from calibkit.errors import CalibkitError


def test_round_trip_with_provenance(tmp_path):
    ranges = {"x": TensorRange(2.0, -1.5, 2.0), "y": TensorRange(1.0, 0.0, 0.0, "all zero")}
    path = write_ranges(tmp_path / "r.json", ranges, get_calibrator("percentile:99.9"), {"model_sha256": "ab"})
    loaded, document = read_ranges(path)
    assert loaded == ranges
    assert document["method"] == "percentile" and document["params"] == {"percentile": 99.9}
    assert document["tensors"]["x"]["scale"] == pytest.approx(2.0 / 127)
    assert document["provenance"] == {"model_sha256": "ab"}


def test_foreign_json_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CalibkitError, match="not a calibkit ranges file"):
        read_ranges(path)
