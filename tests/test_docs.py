"""`make docs` builds: Sphinx with warnings as errors, offline, API and every tutorial with its figures."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
COURSE = ["what_is_a_generative_model", "bayesian_networks", "autoregressive_models", "language_models",
          "variational_autoencoders", "svi_by_hand", "mixtures_and_discrete_latents", "conditional_generation",
          "normalizing_flows", "energy_models_and_gans", "sample_quality", "diffusion", "compression",
          "posterior_diagnostics", "write_your_own_model"]


def test_the_course_lists_every_tutorial_once_in_its_order():
    toctree = (ROOT / "docs" / "tutorials.md").read_text().split("```{toctree}")[1]
    listed = re.findall(r"_generated/tutorials/(\w+)", toctree)
    assert listed == COURSE
    assert sorted(listed) == sorted(p.stem for p in TUTORIALS)


def test_every_name_a_tutorial_imports_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto(?:class|function|module):: ([\w.]+)", api, re.M))
    missing = []
    for notebook in TUTORIALS:
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
            for module, names in re.findall(r"^\s*from (ppgen[\w.]*) import (\([^)]*\)|[^\n]*)", source, re.M):
                for name in names.strip("()").replace("\n", " ").split(","):
                    name = name.split(" as ")[0].strip()
                    if name and not any(d.endswith(f".{name}") for d in documented):
                        missing.append(f"{notebook.stem}: {module}.{name}")
    assert not missing, f"imported by a tutorial, absent from docs/api.md: {sorted(set(missing))}"


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
    # "a, b : int" stays one entry (napoleon_use_param = False), not two that repeat one description
    assert api.count("Chains, kept draws per chain") == 1
    # maths renders offline: MathJax is served from the site, never from a CDN
    assert (tmp_path / "_static" / "mathjax" / "tex-chtml.js").is_file()
    maths = (tmp_path / "_generated" / "tutorials" / "diffusion.html").read_text()  # a page with formulas
    assert "cdn.jsdelivr" not in maths and 'src="../../_static/mathjax/tex-chtml.js"' in maths
    course = (tmp_path / "tutorials.html").read_text()
    order = [m for m in re.findall(r'href="_generated/tutorials/(\w+)\.html"', course)]
    assert list(dict.fromkeys(order)) == COURSE
    for notebook in TUTORIALS:
        page = (tmp_path / "_generated" / "tutorials" / f"{notebook.stem}.html").read_text()
        has_figures = '"image/png"' in notebook.read_text()  # tests/test_notebooks.py checks that they have
        assert ("<img" in page) == has_figures, f"{notebook.name}: its page shows no figure"
