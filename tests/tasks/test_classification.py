import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess
from calibkit.tasks import OutputInfo, TaskContext, make_task


def test_two_class_classifier_reports_no_trivial_top5():
    context = TaskContext([OutputInfo("p", (None, 2))], (48, 192), Preprocess(size=(48, 192)))
    task = make_task(None, context)
    batch = Batch(np.zeros((2, 3, 48, 192)), [ImageItem("a"), ImageItem("b")], [(1, 1)] * 2)
    scorer = task.scorer()
    scorer.add([np.array([0.9, 0.1]), np.array([0.2, 0.8])], [np.array([0.6, 0.4]), np.array([0.7, 0.3])], batch)
    result = scorer.result()
    assert task.name == "classification" and result["agreement"] == 50.0 and result["top5_overlap"] is None


def test_a_task_never_flattens_an_output_of_the_wrong_shape():
    import pytest

    from calibkit.errors import CalibkitError

    anchors = [OutputInfo("scores", (1, 7600, 10)), OutputInfo("boxes", (1, 7600, 32))]
    with pytest.raises(CalibkitError, match=r"needs an output \[N, classes\]; the model has scores \[1, 7600, 10\]"):
        make_task("classification", TaskContext(anchors, (800, 608), Preprocess(size=(800, 608))))
    with pytest.raises(CalibkitError, match="needs output 'logit' as"):
        make_task("ocr-ctc", TaskContext(anchors, (48, 320), Preprocess(size=(48, 320)), {"output": "logit"}))
    two = [OutputInfo("a", (1, 1, 8, 8)), OutputInfo("b", (1, 3, 8, 8))]
    chosen = make_task("dense", TaskContext(two, (8, 8), Preprocess(size=(8, 8)), {"output": "b"}))
    assert chosen.output == "b" and chosen.classes == 3


def test_drift_summed_over_batches_equals_the_drift_of_all_images():
    """Sensitivity adds drift_sums batch by batch instead of holding outputs; the total must not change."""
    rng = np.random.default_rng(0)
    classifier = make_task(None, TaskContext([OutputInfo("p", (None, 10))], (8, 8), Preprocess(size=(8, 8))))
    generic = make_task("generic", TaskContext([OutputInfo("a", (None, 4)), OutputInfo("b", (None, 3, 5))], (8, 8),
                                               Preprocess(size=(8, 8))))
    for task in (classifier, generic):
        reference = {o.name: rng.normal(size=(9, *o.shape[1:])) for o in task.context.outputs}
        candidate = {name: value + rng.normal(scale=0.1, size=value.shape) for name, value in reference.items()}
        parts = [slice(0, 4), slice(4, 5), slice(5, 9)]
        sums = sum(task.drift_sums({k: v[p] for k, v in reference.items()}, {k: v[p] for k, v in candidate.items()})
                   for p in parts)
        whole = task.drift_of(task.drift_sums(reference, candidate))
        assert task.drift_of(sums) == pytest.approx(whole, rel=1e-12)
        assert whole > 0 and task.drift_of(task.drift_sums(reference, reference)) == 0
