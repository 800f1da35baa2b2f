import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.tasks.classification import ClassificationScorer
from calibkit.tasks.logits import mean_kl, top_k


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


def test_kl_of_a_model_ending_in_softmax_is_taken_on_its_probabilities(tmp_path):
    """Through the CLI: KL on the softmax of probabilities shows about 0 for any drift; on the probabilities
    themselves it is the KL one computes by hand from both models' outputs. The preprocessing record names
    the preset with what the flags changed."""
    import json

    import onnx
    import onnxruntime as ort
    from onnx import helper

    from calibkit.data.images import discover_images
    from calibkit.data.loader import iter_batches
    from calibkit.data.preprocess import Preprocess
    from tests.conftest import build_small_cnn, write_images
    from tests.test_cli import run_cli

    model = onnx.load(build_small_cnn(tmp_path / "logits.onnx", seed=3))
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1))
    model.graph.output[0].name = "probabilities"
    onnx.save(model, tmp_path / "softmax.onnx")
    write_images(tmp_path / "images", 16, seed=5)
    run = tmp_path / "run"
    done = run_cli("calibrate", "--model", str(tmp_path / "softmax.onnx"), "--images", str(tmp_path / "images"),
                   "--out", str(run), "--samples", "0", "--method", "minmax", "--compare", "--no-bench",
                   "--no-engine-check", "--weight-rounding", "nearest", "--mean", "0,0,0", "--std", "255,255,255")
    assert done.returncode == 0, done.stderr
    document = json.loads((run / "report.json").read_text())
    reported = next(c for c in document["comparison"]["candidates"] if c["name"] == "int8 minmax")["metrics"]["kl"]
    assert json.loads(document["provenance"]["preprocess"])["name"] == "imagenet-tf with mean, std changed"

    spec = Preprocess(size=(32, 32), mean=(0, 0, 0), std=(255, 255, 255))
    fp32 = ort.InferenceSession(str(tmp_path / "softmax.onnx"))
    int8 = ort.InferenceSession(str(run / "minmax.qdq.onnx"))
    p, q = [], []
    for b in iter_batches(discover_images(tmp_path / "images"), spec, 8):
        p.append(fp32.run(None, {"input": b.array})[0])
        q.append(int8.run(None, {"input": b.array})[0])
    p, q = np.concatenate(p).astype(np.float64), np.concatenate(q).astype(np.float64)
    by_hand = float(np.mean(np.sum(p * np.log(p / (q / q.sum(axis=1, keepdims=True))), axis=1)))
    from calibkit.tasks.logits import log_softmax

    log_p, log_q = log_softmax(p), log_softmax(q)
    flattened = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))  # the softmax of probabilities
    assert by_hand > 20 * flattened and reported == pytest.approx(by_hand, rel=0.05), (reported, by_hand, flattened)
    assert mean_kl(np.log(p), np.log(q)) == pytest.approx(by_hand, rel=0.05), "logits give the same KL"
