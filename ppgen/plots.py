"""Figures: sample grids, ELBO curves and latent maps, and the graph of a model's program.

Built on ``matplotlib.figure.Figure`` directly (not pyplot), so drawing never changes
matplotlib's global backend or state. Each function returns the figure and, given ``path``,
writes it as PNG. ``model_graph`` draws with graphviz instead (Pyro's ``render_model``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["image_grid", "elbo_curves", "latent_map", "temperature_grid", "interpolation_grid", "model_graph",
           "GraphSource"]


def image_grid(images: torch.Tensor, path: str | os.PathLike | None = None, *, ncols: int = 8,
               shape: Sequence[int] = (28, 28), title: str | None = None) -> Figure:
    """Tile rows of ``images`` (N, C*H*W) with values in [0, 1] into one grid: grey levels for ``shape``
    (H, W) or (1, H, W), colour for (3, H, W)."""
    *channels, h, w = shape
    colour = channels == [3]
    images = torch.as_tensor(images).detach().cpu().float().reshape(-1, *shape)
    images = (images.permute(0, 2, 3, 1).clamp(0, 1) if colour else images.reshape(-1, h, w)).numpy()
    n = len(images)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    canvas = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, *images.shape[3:]))
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = image
    fig = Figure(figsize=(ncols * 0.6, nrows * 0.6 + (0.3 if title else 0)))
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap=None if colour else "gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def elbo_curves(histories: Mapping[str, Mapping[str, Sequence[float]]],
                path: str | os.PathLike | None = None,
                reference: Mapping[str, float] | None = None) -> Figure:
    """Training and validation ELBO per epoch, one colour per model.

    ``histories`` maps a model name to ``{"train_elbo": [...], "valid_elbo": [...]}``;
    ``reference`` optionally maps names to a test log-likelihood drawn as a dotted line.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = np.arange(1, len(history["train_elbo"]) + 1)
        ax.plot(epochs, history["train_elbo"], color=color, label=f"{name} train")
        if history.get("valid_elbo"):
            ax.plot(epochs, history["valid_elbo"], color=color, linestyle="--", label=f"{name} valid")
        if reference and name in reference:
            ax.axhline(reference[name], color=color, linestyle=":", label=f"{name} test log-lik")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def latent_map(z: torch.Tensor, labels: torch.Tensor | None = None, path: str | os.PathLike | None = None, *,
               dims: tuple[int, int] = (0, 1), title: str | None = None) -> Figure:
    """Scatter two coordinates of codes ``z`` (N, d), e.g. ``model.encode(x)``, coloured by label."""
    z = torch.as_tensor(z).detach().cpu().float()
    if z.dim() != 2 or z.shape[1] <= max(dims):
        raise ValueError(f"z must have shape (N, d) with d > {max(dims)}, got {tuple(z.shape)}")
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(z[:, dims[0]], z[:, dims[1]], s=4, alpha=0.6)
    else:
        labels = torch.as_tensor(labels).cpu()
        for i, value in enumerate(torch.unique(labels).tolist()):
            keep = labels == value
            ax.scatter(z[keep, dims[0]], z[keep, dims[1]], s=4, alpha=0.6, color=f"C{i % 10}", label=str(value))
        ax.legend(fontsize=7, markerscale=3, ncols=2, loc="best")
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _pixels01(model, images: torch.Tensor) -> torch.Tensor:
    """A flow's rows in [0, 1] for display: pixel flows' levels are divided by ``num_levels``."""
    levels = model.num_levels
    return (images / levels if levels else images).clamp(0, 1)


def _rows_figure(rows: Sequence[torch.Tensor], labels: Sequence[str], shape: tuple[int, int], title: str | None):
    from matplotlib.figure import Figure  # imported here: drawing is optional

    h, w = shape
    ncols = max(len(r) for r in rows)
    fig = Figure(figsize=(ncols * 0.6 + 0.9, len(rows) * 0.62 + (0.3 if title else 0)))
    for i, (row, label) in enumerate(zip(rows, labels)):
        canvas = np.ones((h + 2, ncols * (w + 1) + 1))
        for j, image in enumerate(torch.as_tensor(row).detach().cpu().float().reshape(-1, h, w).numpy()):
            canvas[1:1 + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = image
        ax = fig.add_subplot(len(rows), 1, i + 1)
        ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return fig


@torch.no_grad()
def temperature_grid(model, temperatures: Sequence[float] = (0.5, 0.7, 0.85, 1.0),
                     path: str | os.PathLike | None = None, *, n: int = 8, shape: tuple[int, int] = (28, 28),
                     seed: int = 0, title: str | None = None):
    """One row of ``n`` samples per temperature T: a flow decodes z ~ N(0, T^2 I) (``model.sample(n,
    temperature=T)``); a VAE decodes the mean of p(x | z) at z ~ N(0, T^2 I). The same base noise is
    used at every T (seeded), so a column shows one draw cooled down. Returns the figure."""
    from ppgen.models.flows import Flow

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in temperatures:
        if isinstance(model, Flow):
            z = torch.randn(n, model.x_dim, generator=generator)
            rows.append(_pixels01(model, model.decode(t * z.to(model.device))))
        else:  # a VAE: means of p(x | T z)
            z = torch.randn(n, model.z_dim, generator=generator)
            rows.append(model.decode(t * z.to(model.device)))
        generator.manual_seed(seed)
    fig = _rows_figure(rows, [f"T = {t:g}" for t in temperatures], shape, title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


@torch.no_grad()
def interpolation_grid(model, x0: torch.Tensor, x1: torch.Tensor, path: str | os.PathLike | None = None, *,
                       steps: int = 8, shape: tuple[int, int] = (28, 28), title: str | None = None):
    """Straight lines in z between the rows of ``x0`` and ``x1`` (each (P, D)), one grid row per pair.

    A flow decodes (1 - t) f(x0) + t f(x1) (``model.interpolate``, dequantize pixel rows first); a
    VAE decodes the means of p(x | z) along the line between its posterior means ``encode(x)``."""
    x0, x1 = torch.atleast_2d(torch.as_tensor(x0)), torch.atleast_2d(torch.as_tensor(x1))
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    from ppgen.models.flows import Flow

    rows = []
    for a, b in zip(x0, x1):
        if isinstance(model, Flow):
            rows.append(_pixels01(model, model.interpolate(a, b, steps)))
        else:
            z = model.encode(torch.stack([a, b]))
            t = torch.linspace(0, 1, steps, dtype=z.dtype, device=z.device)[:, None]
            rows.append(model.decode((1 - t) * z[0] + t * z[1]))
    fig = _rows_figure(rows, [f"pair {i}" for i in range(len(rows))], shape, title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


@dataclass(frozen=True)
class GraphSource:
    """A model graph that could not be drawn: its DOT ``source`` and the ``reason``, shown as text."""

    source: str
    reason: str

    def __repr__(self) -> str:
        return f"{self.reason}\n{self.source}"


def model_graph(model, *args, guide: bool = False, params: bool = False, **kwargs):
    """The graph of a model's Pyro program (or its guide's), as Pyro's ``render_model`` draws it.

    Each sample site is a node (grey when observed), an edge runs from every site a site's distribution
    depends on, a box is a plate (the data plate holds one copy per row), and a legend names each site's
    distribution, ``z ~ Normal``. The program is run once on ``args`` and ``kwargs`` (``model(x)``,
    ``model(x, y)``, ``model(size=n)``), without gradients and with the model's parameters kept local.

    Parameters
    ----------
    model : GenerativeModel or callable
        A ppgen model, whose ``model`` (or ``guide``) is drawn, or a plain Pyro function.
    *args, **kwargs
        What the program is called with; a few rows are enough, the graph does not depend on how many.
    guide : bool
        Draw the model's guide q(z | x) instead of its story p(x, z); the data it conditions on are
        arguments, not sites, so they do not appear.
    params : bool
        Also draw the ``pyro.param`` sites and their constraints (a model's networks are not drawn).

    Returns
    -------
    graphviz.Digraph or GraphSource
        The graph, which a notebook shows as SVG (``.render(path)`` writes a file). Without graphviz's
        ``dot`` executable (Debian's ``graphviz`` package; ``scripts/install-graphviz``) it is a
        ``GraphSource``, shown as the DOT source with a line saying why, so a notebook still runs.
    """
    import pyro
    from pyro.infer.inspect import generate_graph_specification, get_model_relations, render_graph

    from ppgen.models.base import GenerativeModel, local_params
    from ppgen.models.diffusion.base import Lazy

    if isinstance(model, GenerativeModel):
        program, scope = (model.guide if guide else model.model), local_params(model)
    elif callable(model) and not guide:
        program, scope = model, contextlib.nullcontext()
    elif callable(model):
        raise ValueError("guide=True needs a GenerativeModel; for a plain Pyro function, pass the guide itself")
    else:
        raise TypeError(f"model must be a GenerativeModel or a Pyro function, got {type(model).__name__}")
    with scope, torch.no_grad():
        relations = get_model_relations(program, args, kwargs)
        # a diffusion model's reverse steps are Lazy (built when scored): name the distribution they build
        with torch.random.fork_rng(), pyro.validation_enabled(False):
            trace = pyro.poutine.trace(program).get_trace(*args, **kwargs)
        for name in relations["sample_dist"]:
            fn = _unwrapped(trace.nodes[name]["fn"])
            if isinstance(fn, Lazy):
                relations["sample_dist"][name] = type(_unwrapped(fn.base)).__name__
    graph = render_graph(generate_graph_specification(relations, render_params=params), render_distributions=True)
    if shutil.which("dot") is None:
        return GraphSource(graph.source, "graphviz's `dot` executable is not on PATH (install the Debian package "
                                         "graphviz, e.g. scripts/install-graphviz), so here is the graph's DOT source:")
    return graph


def _unwrapped(fn):
    """A distribution under its Independent, Expanded and Masked wrappers, as ``render_model`` names it."""
    import pyro.distributions as dist

    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn
