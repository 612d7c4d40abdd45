"""Every notebook in colabs/ runs top to bottom on the CPU (nbclient, a real ipykernel)."""

import os
import pathlib

import nbclient
import nbformat
import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted(pathlib.Path(REPO, "colabs").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tfds_data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code)  # every cell ran (a failing one raises above)
  assert code[-1].outputs  # and the last one printed its result
