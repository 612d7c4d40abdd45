"""Every notebook in colabs/ runs top to bottom on the CPU (nbclient, a real ipykernel) from a
directory outside the repository, as in Colab after installing jaxlab, and draws its figures.

Figures are real: the kernel's own inline backend renders each one on an Agg canvas into an
image/png output, which must decode to a non-blank image; and every figure a cell shows passes
tests/plot_checks.py (tick labels present, no line hidden under another, no overlapping text).
"""

import base64
import json
import os
import pathlib

import nbclient
import nbformat
import pytest

from tests.conftest import REPO
from tests.plot_checks import png_problems

NOTEBOOKS = sorted(pathlib.Path(REPO, "colabs").glob("*.ipynb"))
FIGURES = {"depth.ipynb": 1, "mlp_quickstart.ipynb": 1, "parameterization.ipynb": 2,
           "quantization.ipynb": 2,
           "weight_space.ipynb": 2}  # figures each notebook displays
PLOT_CHECKS = pathlib.Path(REPO, "tests", "plot_checks.py")
MARKER = "plot problems: "

# Loaded by path (the kernel's sys.path has no repository). The check wraps the kernel's PNG
# printer for matplotlib figures, so it sees every figure the notebook displays: those plt.show()
# renders and closes, and Figures (e.g. from jaxlab.analysis.plots) shown by display().
_CHECK_FIGURES = f"""
import importlib.util as _util
import matplotlib.pyplot as _plt
from matplotlib.figure import Figure as _Figure
_spec = _util.spec_from_file_location('_plot_checks', {str(PLOT_CHECKS)!r})
_checks = _util.module_from_spec(_spec)
_spec.loader.exec_module(_checks)
_plt.close(_plt.figure())  # loads the inline backend, which registers its PNG printer
_png = get_ipython().display_formatter.formatters['image/png']
_plot_problems, _shown, _print_png = [], [], _png.lookup_by_type(_Figure)
def _checked_print_png(fig, *args, **kwargs):
  _shown.append(fig)
  _plot_problems.extend(f'figure {{len(_shown)}}: {{p}}' for p in _checks.figure_problems(fig))
  return _print_png(fig, *args, **kwargs)
_png.for_type(_Figure, _checked_print_png)
"""
_REPORT = f"import json as _json\nprint({MARKER!r} + _json.dumps(_plot_problems))"


def test_every_notebook_has_its_figure_count():
  assert NOTEBOOKS and sorted(FIGURES) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_an_install_cell(path):
  nb = nbformat.read(path, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  assert "pip" in first.source and "install" in first.source
  assert "find_spec('jaxlab')" in first.source  # a no-op where jaxlab is installed already


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_outside_the_repo_and_draws_its_figures(path, tfds_data_dir, tmp_path,
                                                              monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_data_dir)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Colab
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths
                                                   if p and os.path.abspath(p) != REPO))
  nb = nbformat.read(path, as_version=4)
  own_cells = len(nb.cells)
  nb.cells.insert(0, nbformat.v4.new_code_cell(_CHECK_FIGURES))
  nb.cells.append(nbformat.v4.new_code_cell(_REPORT))
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  code = [c for c in nb.cells[1:own_cells + 1] if c.cell_type == "code"]
  assert all(c.execution_count for c in code)  # every cell ran (a failing one raises above)
  assert code[-1].outputs  # and the last one printed its result
  pngs = [out.data["image/png"] for c in code for out in c.outputs
          if "data" in out and "image/png" in out.data]
  assert len(pngs) == FIGURES[path.name]
  for png in pngs:
    assert png_problems(base64.b64decode(png)) == []
  report = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
  assert report.startswith(MARKER), report
  problems = json.loads(report[len(MARKER):])
  assert not problems, "\n".join(problems)
