import numpy as np

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
