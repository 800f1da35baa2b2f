import numpy as np
import pytest

from calibkit.data.images import discover_images
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess, decode_image
from calibkit.errors import CalibkitError

SPEC = Preprocess(size=(16, 16))


def test_batches_keep_order_and_values(image_folder):
    items = discover_images(image_folder)
    batches = list(iter_batches(items, SPEC, batch_size=5, workers=3))
    assert [len(b.items) for b in batches] == [5, 5, 2]
    flat = [item for b in batches for item in b.items]
    assert flat == items
    np.testing.assert_array_equal(batches[1].array[0], SPEC(decode_image(items[5].path)))


def test_bad_image_stops_without_skip_and_is_counted_with_it(image_folder):
    (image_folder / "img_005.jpg").write_bytes(b"broken")
    items = discover_images(image_folder)
    with pytest.raises(CalibkitError, match="img_005.jpg"):
        list(iter_batches(items, SPEC, batch_size=4))
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        batches = list(iter_batches(items, SPEC, batch_size=4, skip_bad=True, report=report))
    assert sum(len(b.items) for b in batches) == len(items) - 1
    assert [item.path.name for item, _ in report.skipped] == ["img_005.jpg"]


def test_labels_are_exposed_only_when_all_present(tmp_path, image_folder):
    items = discover_images(image_folder)
    assert next(iter_batches(items, SPEC, 4)).labels is None
