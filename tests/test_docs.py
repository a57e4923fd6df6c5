"""`make docs` builds: Sphinx with warnings as errors, offline, API and every tutorial with its figures."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("myst_nb")
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert "sphinx.ext.intersphinx" not in conf and 'nb_execution_mode = "off"' in conf  # nothing fetched, nothing run
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "api.html").read_text()
    for name in ("log_likelihood", "elbo_report", "FitResult", "GenerativeModel", "check_model"):
        assert name in api
    for notebook in TUTORIALS:
        page = (tmp_path / "_generated" / "tutorials" / f"{notebook.stem}.html").read_text()
        has_figures = '"image/png"' in notebook.read_text()  # tests/test_notebooks.py checks that they have
        assert ("<img" in page) == has_figures, f"{notebook.name}: its page shows no figure"
