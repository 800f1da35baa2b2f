"""notebooks/investigate.ipynb runs top to bottom, from another directory, on a small real run (so it
cannot rot): the Python API (calibrate, load stats, compare) and the analysis of its report."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "investigate.ipynb"


def test_notebook_executes_on_a_small_run_from_any_directory(small_model, image_folder, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, value in {"CALIBKIT_MODEL": small_model, "CALIBKIT_IMAGES": image_folder, "CALIBKIT_OUT": tmp_path / "out",
                        "CALIBKIT_SAMPLES": 6, "CALIBKIT_EVAL_IMAGES": 6}.items():
        monkeypatch.setenv(name, str(value))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(elsewhere)}}).execute()
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, errors
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "6 of 12 images calibrated" in outputs and "percentile-99.99" in outputs
    assert "tensors from 6 images" in outputs and "|x| max" in outputs
    assert "6 calibration images left out" in outputs and "6 images, labelled" in outputs
    assert "int8 minmax" in outputs and "fp16" in outputs and "focus:" in outputs and "budget met:" in outputs
    assert (tmp_path / "out" / "report.html").is_file() and not list(elsewhere.iterdir())
