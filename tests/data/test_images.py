from pathlib import Path

import pytest

from calibkit.data.images import discover_images, image_list_hash
from calibkit.errors import CalibkitError
from tests.conftest import write_images


def test_flat_folder_sorted_without_labels(image_folder):
    items = discover_images(image_folder)
    assert [i.path.name for i in items] == sorted(p.name for p in image_folder.iterdir())
    assert all(i.label is None for i in items)


def test_image_folder_layout_numbers_classes_in_sorted_order(tmp_path):
    write_images(tmp_path / "zebra", 2, seed=1)
    write_images(tmp_path / "ant", 3, seed=2)
    (tmp_path / "notes.txt").write_text("ignored")
    items = discover_images(tmp_path)
    assert [(i.path.parent.name, i.label) for i in items] == [("ant", 0)] * 3 + [("zebra", 1)] * 2


def test_labels_csv_is_used_and_checked(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "labels.csv").write_text("file,class_index\nimg_001.jpg,7\nimg_000.jpg,3\n")
    items = discover_images(tmp_path)
    assert [(i.path.name, i.label) for i in items] == [("img_000.jpg", 3), ("img_001.jpg", 7)]


def test_labels_csv_naming_missing_file_fails_with_line(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "labels.csv").write_text("file,class_index\nnope.jpg,1\n")
    with pytest.raises(CalibkitError, match=r"labels.csv:2: listed image .*nope.jpg does not exist"):
        discover_images(tmp_path)


def test_labels_csv_with_bad_class_index(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "labels.csv").write_text("file,class_index\nimg_000.jpg,cat\n")
    with pytest.raises(CalibkitError, match="labels.csv:2: class_index .cat. is not a class number"):
        discover_images(tmp_path)


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(CalibkitError, match=r"nowhere: image folder does not exist"):
        discover_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibkitError, match=r"empty: no images found"):
        discover_images(tmp_path / "empty")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(CalibkitError, match="must be a folder"):
        discover_images(tmp_path / "a.jpg")


def test_image_list_hash_depends_on_names_and_labels(image_folder):
    items = discover_images(image_folder)
    assert image_list_hash(items) == image_list_hash(list(items))
    assert image_list_hash(items) != image_list_hash(items[:-1])
    assert isinstance(Path(items[0].path), Path)


def test_links_that_point_nowhere_are_counted(tmp_path):
    import warnings

    from tests.conftest import write_images

    write_images(tmp_path, 3)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = discover_images(tmp_path)
    assert len(items) == 3
    assert any("1 image link(s) point nowhere" in str(w.message) for w in caught)


def test_image_list_hash_depends_on_the_pixels_not_only_the_names(tmp_path):
    from tests.conftest import write_images

    write_images(tmp_path / "a", 3, seed=1)
    write_images(tmp_path / "b", 3, seed=2)
    first, second = discover_images(tmp_path / "a"), discover_images(tmp_path / "b")
    assert [i.path.name for i in first] == [i.path.name for i in second]
    assert image_list_hash(first) != image_list_hash(second)


def _labelled(folder: Path, rows: str, bom: bool = False) -> Path:
    write_images(folder, 3)
    text = "file,class_index\n" + rows
    (folder / "labels.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return folder


@pytest.mark.parametrize("rows, fragments", [
    ("img_000.jpg,1\nimg_001.jpg,5000\nimg_002.jpg,2\n", ["labels.csv:3 names class 5000", "10 classes (0-9)"]),
    ("img_000.jpg,1\nimg_001.jpg,-3\n", ["labels.csv:3", "'-3' is not a class number"]),
    ("img_000.jpg,1\nimg_001.jpg,2\nimg_000.jpg,1\n", ["labels.csv:4", "listed again (first at line 2)"]),
])
def test_eval_refuses_bad_label_rows_naming_them(small_model, tmp_path, rows, fragments):
    from tests.test_cli import assert_one_line_error, run_cli

    folder = _labelled(tmp_path / "images", rows)
    assert_one_line_error(run_cli("eval", "--model", str(small_model), "--images", str(folder)), *fragments)


def test_eval_reads_a_labels_csv_saved_with_a_byte_order_mark(small_model, tmp_path):
    import json

    from tests.test_cli import run_cli

    folder = _labelled(tmp_path / "images", "img_000.jpg,1\nimg_001.jpg,2\nimg_002.jpg,3\n", bom=True)
    done = run_cli("eval", "--model", str(small_model), "--images", str(folder))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top1"] is not None
