from calibkit.backends import load
from calibkit.bench.speed import SpeedResult, measure_interleaved, with_ratios
from calibkit.bench.table import format_table


def test_measure_reports_ordered_percentiles_per_batch(small_model):
    session = load(small_model, "fp32", "ort-cpu")
    results = measure_interleaved([("fp32", "fp32", session)], (3, 32, 32), batch_sizes=(1, 4), rounds=3, runs=2)
    assert [r.batch for r in results] == [1, 4]
    for r in results:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms and r.runs == 6 and r.images_per_s > 0
        assert len(r.round_ms) == 3


def test_identical_models_timed_side_by_side_come_out_alike(small_model):
    # the same model twice: its ratio must be about 1 and inside the reported range of rounds
    sessions = [(name, precision, load(small_model, "fp32", "ort-cpu", arena=False))
                for name, precision in (("fp32", "fp32"), ("copy", "int8"))]
    rows = with_ratios(measure_interleaved(sessions, (3, 32, 32), [4], rounds=5, runs=5))
    copy = next(r for r in rows if r["candidate"] == "copy")
    assert copy["speedup_low"] <= copy["speedup"] <= copy["speedup_high"]
    assert copy["noisy"] or 0.5 < copy["speedup"] < 2.0


def test_speedup_is_the_median_round_ratio_of_the_same_backend_and_batch():
    rows = with_ratios([
        SpeedResult("fp32", "fp32", "ort-cpu", 8, 20.0, 21, 22, 400, 10, (20.0, 22.0, 20.0)),
        SpeedResult("int8 x", "int8", "ort-cpu", 8, 10.0, 11, 12, 800, 10, (10.0, 10.0, 8.0)),
        SpeedResult("int8 x", "int8", "ort-cpu", 1, 3.0, 3, 3, 300, 10, (3.0, 3.0, 3.0)),
    ])
    assert [r["speedup"] for r in rows] == [1.0, 2.2, None]
    assert rows[1]["speedup_low"] == 2.0 and rows[1]["speedup_high"] == 2.5 and not rows[1]["noisy"]
    table = format_table(rows, ["candidate", "batch", "p50_ms", "speedup"])
    assert table.splitlines()[2].split() == ["fp32", "8", "20.00", "1.00"]


def test_rounds_that_disagree_are_flagged_noisy():
    rows = with_ratios([
        SpeedResult("fp32", "fp32", "ort-cpu", 1, 20.0, 21, 22, 50, 6, (20.0, 40.0)),
        SpeedResult("int8 x", "int8", "ort-cpu", 1, 10.0, 11, 12, 100, 6, (10.0, 10.0)),
    ])
    assert rows[0]["noisy"] and rows[1]["noisy"] and rows[1]["speedup_high"] == 4.0


def test_a_ratio_that_contradicts_the_p50_columns_beside_it_is_noisy():
    """Rounds say 1.11x while the pooled p50s say 0.91x (the load moved between rounds): never a headline."""
    rows = with_ratios([
        SpeedResult("fp32", "fp32", "ort-cpu", 8, 10.0, 11, 12, 800, 9, (10.0, 10.0, 10.0)),
        SpeedResult("int8 x", "int8", "ort-cpu", 8, 11.0, 12, 13, 700, 9, (9.0, 9.0, 9.6)),
    ])
    assert rows[1]["speedup"] > 1.1 and rows[0]["p50_ms"] / rows[1]["p50_ms"] < 0.92
    assert rows[1]["noisy"] and rows[1]["speedup_high"] / rows[1]["speedup_low"] < 1.25
