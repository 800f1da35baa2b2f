import math

import pytest

from calibkit.errors import CalibkitError
from calibkit.tasks.verdict import judge, parse_rule, verdict_line

KEYS = ["recall", "top1_drop", "agreement", "output_sqnr"]


def test_rules_parse_with_dashes_and_aliases():
    assert str(parse_rule("top1-drop>1", KEYS)) == "top1-drop>1"
    assert parse_rule("top1_agreement < 99.5", KEYS).metric == "agreement"
    with pytest.raises(CalibkitError, match="no metric 'map'"):
        parse_rule("map<0.5", KEYS)
    with pytest.raises(CalibkitError, match="not understood"):
        parse_rule("recall is low", KEYS)


def test_a_candidate_that_finds_nothing_is_called_unusable():
    verdict = judge({"recall": 0.0, "output_sqnr": 3.0}, [parse_rule("recall<0.5", KEYS)], [])
    assert verdict["status"] == "unusable"
    assert verdict_line("int8 entropy2", verdict) == "int8 entropy2: UNUSABLE (recall 0 < 0.5)"


def test_gates_fail_and_unmeasured_gates_fail_too():
    gate = [parse_rule("top1-drop>1", KEYS)]
    assert judge({"top1_drop": 0.5}, [], gate)["status"] == "usable"
    assert judge({"top1_drop": 1.5}, [], gate)["status"] == "fails gate"
    assert judge({"top1_drop": None}, [], gate)["failed_gates"] == ["top1-drop>1 not checked: top1-drop was not measured (it may need labels)"]


def test_nan_outputs_make_a_candidate_unusable():
    verdict = judge({"recall": math.nan, "nonfinite_outputs": 12.0}, [parse_rule("recall<0.5", KEYS)], [])
    assert verdict["status"] == "unusable" and "NaN or infinite" in verdict["reasons"][0]


def test_outputs_drowned_in_noise_are_unusable_whatever_the_task_metric_says():
    from calibkit.data.preprocess import Preprocess
    from calibkit.tasks import OutputInfo, TaskContext, make_task
    from calibkit.tasks.verdict import rules_for

    dense = make_task("dense", TaskContext([OutputInfo("map", (None, 1, None, None))], (4, 4), Preprocess(size=(4, 4))))
    unusable, _ = rules_for(dense)
    # PP-OCRv4 det in FP16: text IoU 0.51 passes the task's own rules, but its map's SQNR is 0.19 dB
    verdict = judge({"miou": 0.685, "foreground_iou": 0.514, "output_sqnr": 0.19}, unusable, [])
    assert verdict["status"] == "unusable" and verdict["reasons"] == ["output-sqnr 0.19 < 1"]
    generic = make_task("generic", TaskContext([OutputInfo("y", (None, 4))], (4, 4), Preprocess(size=(4, 4))))
    assert [str(r) for r in rules_for(generic)[0]] == ["output-sqnr<10"], "a task's own output rule stands alone"
