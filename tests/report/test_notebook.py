"""notebooks/investigate.ipynb runs top to bottom on a small real run (so it cannot rot)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from calibkit.cli import main

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "investigate.ipynb"


def test_notebook_executes_on_a_small_run(small_model, image_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["calibrate", "--model", str(small_model), "--images", str(image_folder), "--out", str(run),
                 "--method", "minmax,percentile", "--samples", "0", "--compare", "--no-bench",
                 "--accuracy-budget", "100"]) == 0
    monkeypatch.setenv("CALIBKIT_REPORT", str(run / "report.json"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "int8 minmax" in outputs and "focus:" in outputs and "budget met: True" in outputs
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors
