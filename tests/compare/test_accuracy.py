import numpy as np
import pytest

from calibkit.compare.accuracy import mean_kl, top_k
from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.tasks.classification import ClassificationScorer


def test_top_k_orders_best_first():
    logits = np.array([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 6.0, 0.0]])
    np.testing.assert_array_equal(top_k(logits, 2), [[1, 2], [2, 0]])


def batch(labels):
    return Batch(np.zeros((len(labels), 1)), [ImageItem(f"{i}.jpg", label) for i, label in enumerate(labels)],
                 [(1, 1)] * len(labels))


def test_top1_against_labels_by_hand():
    logits = list(np.array([[0.1, 3.0, 2.0, 0, 0, 0], [5.0, 4.0, 6.0, 0, 0, 0], [1.0, 0.0, 0.5, 0, 0, 0]]))
    scorer = ClassificationScorer(use_labels=True, classes=6)
    scorer.add(logits, logits, batch([1, 0, 1]))
    assert scorer.result()["top1"] == pytest.approx(100 / 3) and scorer.result()["top1_drop"] == 0
    unlabelled = ClassificationScorer(use_labels=False, classes=6)
    unlabelled.add(logits, logits, batch([None] * 3))
    assert unlabelled.result()["top1"] is None and unlabelled.result()["top5"] is None


def test_agreement_identical_and_different():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 10))
    same = ClassificationScorer(use_labels=False, classes=10)
    same.add(list(a), list(a.copy()), batch([None] * 50))
    result = same.result()
    assert result["agreement"] == 100 and result["top5_overlap"] == 100 and result["kl"] == pytest.approx(0)
    shuffled = ClassificationScorer(use_labels=False, classes=10)
    shuffled.add(list(a), list(a[:, ::-1]), batch([None] * 50))
    assert shuffled.result()["agreement"] < 50 and shuffled.result()["kl"] > 0.1
    assert mean_kl(a, a[:, ::-1]) == pytest.approx(shuffled.result()["kl"])
