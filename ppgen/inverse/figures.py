"""Before/after figures of restorations (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ppgen.checks import image_shape
from ppgen.inverse.operators import Inpaint
from ppgen.inverse.restoration import RestoreResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["restore_grid"]


def restore_grid(y: torch.Tensor | None, result: RestoreResult, truth: torch.Tensor | None = None,
                 shape: Sequence[int] = (1, 28, 28), *, max_rows: int = 4, max_samples: int = 4,
                 path: str | os.PathLike | None = None) -> Figure:
    """Before/after grid, one row per measurement: truth | measurement | samples | mean | variance.

    The measurement is drawn as A^+ y (upsampled, or grey in every channel; missing pixels of an
    inpainting mid-grey); the variance, summed over channels, is scaled to its maximum and drawn
    dark where high. ``y`` None uses ``result.y``;
    ``shape`` is the (C, H, W) of a restored row (C = 1 grey, 3 colour). Returns a
    ``matplotlib.figure.Figure`` (saved to ``path`` if given); pyplot's state is untouched.
    """
    from matplotlib.figure import Figure  # imported here: drawing is optional

    shape = image_shape(shape)
    if shape[0] not in (1, 3):
        raise ValueError(f"shape must have 1 (grey) or 3 (colour) channels, got {shape}")
    operator = result.operator
    y = result.y if y is None else operator.check_y(y)
    shown = min(max_rows, y.shape[0])
    measured = operator.pseudo_inverse(y[:shown])
    if isinstance(operator, Inpaint):
        measured = torch.where(operator.mask_for(y)[:shown], measured, torch.full_like(measured, 0.5))
    variance = result.variance[:shown].reshape(shown, shape[0], -1).sum(1)  # summed over channels
    variance = (variance / variance.max().clamp_min(1e-12)).repeat(1, shape[0])
    columns = ([("truth", truth[:shown])] if truth is not None else []) + [("measurement", measured)]
    columns += [(f"sample {i + 1}", result.samples[i, :shown]) for i in range(min(max_samples, len(result.samples)))]
    columns += [("mean", result.mean[:shown]), ("variance", variance)]

    def image(row, grey):
        img = row.detach().cpu().float().clamp(0, 1).reshape(shape).permute(1, 2, 0).numpy()
        return img[..., 0] if grey else img

    fig = Figure(figsize=(1.1 * len(columns), 1.1 * shown + 0.6))
    axes = fig.subplots(shown, len(columns), squeeze=False)
    for c, (label, rows) in enumerate(columns):
        for r in range(shown):
            ax = axes[r, c]
            grey = shape[0] == 1 or label == "variance"  # the variance map: summed over channels, in grey
            ax.imshow(image(rows[r], grey), cmap="gray_r" if grey else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(label, fontsize=7)
    fig.suptitle(f"{operator!r}: {result.method}", fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
