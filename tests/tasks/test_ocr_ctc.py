import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.tasks.ocr_ctc import CtcScorer, ctc_greedy, edit_distance


def one_hot(path, symbols=4):
    return np.eye(symbols)[path]


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    # blank, a, a, blank, a, b, b, blank -> "a a b": a blank separates the two a's
    assert ctc_greedy(one_hot([[0, 1, 1, 0, 1, 2, 2, 0]])) == [(1, 1, 2)]
    assert ctc_greedy(one_hot([[0, 0, 0]])) == [()]


@pytest.mark.parametrize("a,b,expected", [((1, 1, 2), (1, 2), 1), ((), (3, 3), 2), ((1, 2, 3), (3, 2, 1), 2),
                                          ((1, 2, 3, 4), (1, 3, 4), 1), ((5,), (5,), 0)])
def test_edit_distance(a, b, expected):
    assert edit_distance(a, b) == expected


def test_scorer_exact_agreement_and_character_error_rate():
    scorer = CtcScorer()
    batch = Batch(np.zeros((2, 1)), [ImageItem("a"), ImageItem("b")], [(1, 1)] * 2)
    scorer.add([(1, 1, 2), (3, 3)], [(1, 2), (3, 3)], batch)
    result = scorer.result()
    assert result["exact"] == pytest.approx(50.0)
    assert result["cer"] == pytest.approx(100 * 1 / 5)


def test_each_model_row_shows_its_own_empty_readings():
    scorer = CtcScorer()
    batch = Batch(np.zeros((2, 1)), [ImageItem("a"), ImageItem("b")], [(1, 1)] * 2)
    scorer.add([(1, 2), (3,)], [(), (3,)], batch)
    assert scorer.result()["empty"] == pytest.approx(50.0), "the candidate read one of two lines as nothing"


def test_two_empty_readings_are_no_exact_agreement():
    """A recogniser that reads every line as empty reads none exactly, whatever share FP32 reads as empty."""
    scorer = CtcScorer()
    lines = [(4, 5), (), (6,), ()]
    batch = Batch(np.zeros((4, 1)), [ImageItem(str(i)) for i in range(4)], [(1, 1)] * 4)
    scorer.add(lines, [()] * 4, batch)
    assert scorer.result()["exact"] == 0.0 and scorer.result()["empty"] == 100.0
    same = CtcScorer()
    same.add(lines, lines, batch)
    assert same.result()["exact"] == 100.0
    blank = CtcScorer()
    blank.add([()], [()], Batch(np.zeros((1, 1)), [ImageItem("a")], [(1, 1)]))
    assert blank.result()["exact"] is None, "no line to read: no exact share at all"
