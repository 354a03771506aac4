"""The notebooks: their .py sources and committed .ipynb agree, and each runs top to bottom at its
tiny size (JAXRAE_NOTEBOOK_TINY=1), offline.

notebooks/0*.py (jupytext percent format) are the sources; the .ipynb are made from them with
``jupytext --update --to ipynb notebooks/0*.py`` (``--update`` keeps the cell ids) and committed
without outputs. The kernel is the "python3" kernelspec, which ipykernel installs into the
environment it is installed in (``<venv>/share/jupyter/kernels/python3``); its command starts with
``python``, which jupyter_client replaces by the interpreter running these tests, so the notebooks
see the same environment as pytest, in CI's fresh venv as on a laptop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("0*.ipynb"))
TIMEOUT_S = 600  # per cell; the tiny sizes take seconds (compilation included) on a free CPU


def test_the_four_notebooks_exist_with_their_python_sources():
    assert NOTEBOOKS == [
        "01_quickstart.ipynb",
        "02_table_and_figures.ipynb",
        "03_discrete_relaxations.ipynb",
        "04_interpolations.ipynb",
    ]
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("0*.py")) == [n.replace(".ipynb", ".py") for n in NOTEBOOKS]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_matches_its_python_source_and_has_no_outputs(name):
    import jupytext  # a test dependency: without it a stale .ipynb would pass unnoticed
    import nbformat

    source = jupytext.read(NOTEBOOK_DIR / name.replace(".ipynb", ".py"))
    committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in source.cells], (
        f"notebooks/{name} differs from its source notebooks/{name[:-6]}.py; "
        "rerun `jupytext --update --to ipynb notebooks/0*.py` and commit both"
    )
    assert committed.metadata["kernelspec"]["name"] == "python3"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} is committed with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_tiny_size(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JAXRAE_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JAXRAE_NOTEBOOK_DATA", "digits")
    monkeypatch.delenv("JAXRAE_NOTEBOOK_RESULTS", raising=False)
    # The feature network of notebook 02 is cached here, shared across test runs like the
    # rest of the suite's (tests/conftest.py).
    monkeypatch.setenv("JAXRAE_CACHE", os.environ.get("JAXRAE_CACHE", str(ROOT / ".pytest_cache" / "jaxrae")))

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and traceback

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
    ]
    assert images, f"{name} displayed no figure"
    (tmp_path / "executed.json").write_text(json.dumps({"cells": len(nb.cells), "figures": len(images)}))
