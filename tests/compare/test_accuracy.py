import numpy as np
import pytest

from calibkit.compare.accuracy import accuracy_summary, agreement, top_k, top_k_accuracy


def test_top_k_orders_best_first():
    logits = np.array([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 6.0, 0.0]])
    np.testing.assert_array_equal(top_k(logits, 2), [[1, 2], [2, 0]])


def test_top_k_accuracy_by_hand():
    logits = np.array([[0.1, 3.0, 2.0], [5.0, 4.0, 6.0], [1.0, 0.0, 0.5]])
    labels = np.array([1, 0, 1])
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert accuracy_summary(logits, None) == {"top1": None, "top5": None}


def test_agreement_identical_and_different():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 10))
    same = agreement(a, a.copy())
    assert same["top1_agreement"] == 100 and same["top5_overlap"] == 100 and same["mean_kl"] == pytest.approx(0)
    shuffled = agreement(a, a[:, ::-1])
    assert shuffled["top1_agreement"] < 50 and shuffled["mean_kl"] > 0.1


def test_format_points_never_prints_negative_zero():
    from calibkit.compare.accuracy import format_points

    assert [format_points(v) for v in (0.5, -0.1, -0.001, 0.0)] == ["+0.50", "-0.10", "0.00", "0.00"]
