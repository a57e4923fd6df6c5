"""The graph of a model's program (ppgen.plots.model_graph), checked against the program's own trace."""

import re
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppgen.models import VAE
from ppgen.models.diffusion import BinaryDiffusion
from ppgen.plots import GraphSource, model_graph


def parse(source: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, set[str]], dict[str, str]]:
    """(fill colour per node, edges, nodes per plate, distribution per site) read from DOT text."""
    nodes = dict(re.findall(r"^\s*(\w+) \[label=\w+ fillcolor=(\w+)", source, re.M))
    edges = set(re.findall(r"^\s*(\w+) -> (\w+)$", source, re.M))
    plates = {name: set(re.findall(r"^\s*(\w+) \[label=", body, re.M))
              for name, body in re.findall(r"subgraph cluster_(\w+) \{(.*?)\}", source, re.S)}
    legend = re.search(r'distribution_description_node \[label="(.*?)"', source).group(1)
    dists = dict(line.split(" ~ ") for line in legend.split(r"\l") if line)
    return nodes, edges, plates, dists


def sites(fn, *args):
    """The sample sites of one run of ``fn``: name -> (observed, plate names, distribution under its wrappers)."""
    trace = poutine.trace(fn).get_trace(*args)
    found = {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):  # a plate records a subsample site
            d = site["fn"]
            while isinstance(d, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
                d = d.base_dist
            found[name] = (site["is_observed"], {f.name for f in site["cond_indep_stack"]}, type(d).__name__)
    return found


def test_vae_graph_names_the_traces_sites_plate_and_distributions():
    vae = VAE(16, z_dim=2, hidden=8)
    x = (torch.rand(5, 16) < 0.5).float()
    nodes, edges, plates, dists = parse(model_graph(vae, x).source)
    expected = sites(vae.model, x)  # {"z": (False, {"data"}, "Normal"), "x": (True, {"data"}, "Bernoulli")}
    assert set(nodes) == set(expected) == {"z", "x"}
    assert {n: c == "gray" for n, c in nodes.items()} == {n: s[0] for n, s in expected.items()}
    assert plates == {"data": set(expected)} and all(s[1] == {"data"} for s in expected.values())
    assert dists == {n: s[2] for n, s in expected.items()}
    assert edges == {("z", "x")}  # x's Bernoulli logits are a function of z
    nodes, edges, plates, dists = parse(model_graph(vae, x, guide=True).source)
    assert set(nodes) == {"z"} and plates == {"data": {"z"}} and not edges and dists == {"z": "Normal"}


def test_diffusion_graph_is_the_chain_with_its_steps_distributions_not_lazy():
    model = BinaryDiffusion(16, num_steps=3, hidden=(8,))
    x = (torch.rand(2, 16) < 0.5).float()
    source = model_graph(model, x).source
    nodes, edges, plates, dists = parse(source)
    order = list(sites(model.model, x))  # the order the story samples in: x_3, x_2, x_1, x
    assert order == ["x_3", "x_2", "x_1", "x"]
    assert edges == set(zip(order, order[1:])) and plates == {"data": set(order)}
    assert "Lazy" not in source and set(dists.values()) == {"Bernoulli"}
    _, edges, _, _ = parse(model_graph(model, x, guide=True).source)
    assert edges == {("x_1", "x_2"), ("x_2", "x_3")}  # the forward process, from x (an argument) upwards


def test_without_dot_the_graph_is_its_source_with_the_reason(monkeypatch):
    def story(x):
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("obs", dist.Normal(c, 1.0), obs=x)

    x = torch.randn(4)
    drawn = model_graph(story, x)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    shown = model_graph(story, x)
    assert isinstance(shown, GraphSource) and shown.source == drawn.source
    reason, *dot = repr(shown).splitlines()
    assert "`dot`" in reason and "\n".join(dot) == shown.source.rstrip("\n")
    assert parse(shown.source)[1] == {("c", "obs")}


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot executable is not installed")
def test_with_dot_the_graph_renders_as_svg_naming_its_sites():
    svg = model_graph(VAE(16, z_dim=2, hidden=8), torch.zeros(3, 16))._repr_mimebundle_()["image/svg+xml"]
    assert svg.lstrip().startswith("<?xml") and all(f">{name}</text>" in svg for name in ("z", "x", "data"))


def test_model_graph_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="guide=True needs a GenerativeModel"):
        model_graph(lambda x: None, torch.zeros(2), guide=True)
    with pytest.raises(TypeError, match="model must be a GenerativeModel or a Pyro function, got int"):
        model_graph(3)
