"""The example notebooks run top to bottom on the offline preset.

Marked `notebooks`; they run on one backend only (jax: the notebooks pick
their backend themselves, so the other backends' runs would repeat the
same work). Needs nbclient, nbformat and ipykernel (the `test` extra).
"""

import os

import pytest

from tests.cli.helpers import BACKEND
from tests.cli.helpers import REPO

NOTEBOOKS = ["generate.ipynb", "finetune_lora.ipynb", "convert_to_transformers.ipynb"]

pytestmark = [
    pytest.mark.notebooks,
    pytest.mark.skipif(BACKEND != "jax", reason="the notebooks run once, on the jax test run"),
]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    with open(os.path.join(REPO, "examples", name), encoding="utf-8") as f:
        notebook = nbformat.read(f, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert errors == []
