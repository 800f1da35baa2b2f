import struct

import pytest

from calibkit.artifacts.trt_cache import format_cache, parse_cache, read_cache, write_cache
from calibkit.errors import CalibkitError

# Written by hand from the format: big-endian float32 bit patterns of the scales.
GOLDEN = """TRT-100800-EntropyCalibration2
input: 3c010204
conv1_out: 3f800000
relu: 3d23d70a
"""


def test_golden_cache_parses_to_known_scales():
    cache = parse_cache(GOLDEN)
    assert (cache.version, cache.algorithm) == (100800, "EntropyCalibration2")
    assert list(cache.scales) == ["input", "conv1_out", "relu"]
    assert cache.scales["conv1_out"] == 1.0
    assert cache.scales["relu"] == pytest.approx(0.04)
    assert cache.scales["input"] == pytest.approx(1 / 127, rel=1e-6)


def test_format_round_trip_is_exact_in_float32(tmp_path):
    scales = {"a": 0.0123, "b/with:colon": 1e-8, "c": 3.5}
    path = write_cache(tmp_path / "x.cache", scales, "MinMaxCalibration", 100300)
    cache = read_cache(path)
    assert cache.algorithm == "MinMaxCalibration" and cache.version == 100300
    for name, scale in scales.items():
        assert cache.scales[name] == struct.unpack(">f", struct.pack(">f", scale))[0]
    assert format_cache(scales, "MinMaxCalibration", 100300) == path.read_text()


def test_bad_caches_name_the_line():
    with pytest.raises(CalibkitError, match="not a TensorRT calibration cache"):
        parse_cache("hello\n", "x.cache")
    with pytest.raises(CalibkitError, match=r"x.cache:3: expected"):
        parse_cache("TRT-1-EntropyCalibration2\na: 3f800000\nb: zz\n", "x.cache")
    with pytest.raises(CalibkitError, match="unknown TensorRT calibration algorithm"):
        format_cache({"a": 1.0}, "Percentile")
