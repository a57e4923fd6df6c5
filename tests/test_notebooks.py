"""Every tutorial runs top to bottom in its fast smoke mode (PPGEN_FAST=1) without drawing a blank figure,
and is committed with the outputs of a full run."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))

# Run before the notebook's own cells: after every cell, each open pyplot figure is checked for axes
# that show their frame but draw nothing (no line, collection, patch, image, text or table), then closed.
BLANK_FIGURE_HOOK = '''
import matplotlib.pyplot as _plt
from IPython import get_ipython as _get_ipython

_BLANK_AXES = []

def _find_blank_axes(result=None):
    for num in _plt.get_fignums():
        fig = _plt.figure(num)
        for ax in fig.axes:
            drawn = ax.lines or ax.collections or ax.patches or ax.images or ax.texts or ax.tables or ax.artists
            if ax.axison and not drawn:
                _BLANK_AXES.append(f"figure {num}, axes {ax.get_title()!r}")
        _plt.close(fig)

_get_ipython().events.register("post_run_cell", _find_blank_axes)
'''
# Notebooks still committed without the outputs of a full run (issue 12): to be executed and removed here.
NOT_YET_EXECUTED: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("PPGEN_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(BLANK_FIGURE_HOOK))
    notebook.cells.append(nbformat.v4.new_code_cell("import json; print(json.dumps(_BLANK_AXES))"))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell when any cell raises
    blank = json.loads("".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream"))
    assert blank == [], f"{path.name}: blank axes (nothing drawn): {blank}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path, request):
    if path.stem in NOT_YET_EXECUTED:
        request.applymarker(pytest.mark.xfail(strict=True, reason="committed without outputs (issue 12)"))
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code" and c.source.strip()]
    unexecuted = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} have no stored execution"
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored errors {errors}"
    # a figure cell (one that shows or returns a figure) stores its picture
    for c in code:
        if "plt.show()" in c.source or "image_grid(" in c.source:
            assert any("image/png" in o.get("data", {}) for o in c.outputs), f"{path.name}: no PNG for\n{c.source}"
    assert path.stat().st_size < 2_000_000  # keeps the repository light
