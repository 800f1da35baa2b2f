from calibkit.backends import load
from calibkit.bench.speed import SpeedResult, measure, with_ratios
from calibkit.bench.table import format_table


def test_measure_reports_ordered_percentiles_per_batch(small_model):
    session = load(small_model, "fp32", "ort-cpu")
    results = measure(session, (3, 32, 32), "fp32", "fp32", batch_sizes=(1, 4), min_runs=5, min_seconds=0.05)
    assert [r.batch for r in results] == [1, 4]
    for r in results:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms and r.runs >= 5 and r.images_per_s > 0


def test_speedup_is_relative_to_fp32_of_same_backend_and_batch():
    rows = with_ratios([
        SpeedResult("fp32", "fp32", "ort-cpu", 8, 20.0, 21, 22, 400, 10),
        SpeedResult("int8 x", "int8", "ort-cpu", 8, 10.0, 11, 12, 800, 10),
        SpeedResult("int8 x", "int8", "ort-cpu", 1, 3.0, 3, 3, 300, 10),
    ])
    assert [r["speedup"] for r in rows] == [1.0, 2.0, None]
    table = format_table(rows, ["candidate", "batch", "p50_ms", "speedup"])
    assert table.splitlines()[2].split() == ["fp32", "8", "20.00", "1.00"]
