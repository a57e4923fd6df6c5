"""Figures: sample grids, ELBO curves and latent maps.

Built on ``matplotlib.figure.Figure`` directly (not pyplot), so drawing never changes
matplotlib's global backend or state. Each function returns the figure and, given ``path``,
writes it as PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["image_grid", "elbo_curves", "latent_map"]


def image_grid(images: torch.Tensor, path: str | os.PathLike | None = None, *, ncols: int = 8,
               shape: tuple[int, int] = (28, 28), title: str | None = None) -> Figure:
    """Tile rows of ``images`` (N, H*W) with values in [0, 1] into one grey-level grid."""
    images = torch.as_tensor(images).detach().cpu().float().reshape(-1, *shape).numpy()
    n, (h, w) = len(images), shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    canvas = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1))
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = image
    fig = Figure(figsize=(ncols * 0.6, nrows * 0.6 + (0.3 if title else 0)))
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
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
