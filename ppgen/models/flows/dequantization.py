r"""Continuous densities for discrete pixels: uniform dequantization and the logit pre-processing.

A density p on :math:`[0, K)^D` (K levels per pixel, 256 for 8-bit images) gives the integer
image x the probability mass :math:`P(x) = \int_{[0,1)^D} p(x + u)\, du`, and by Jensen

.. math::
    \log P(x) \;\ge\; \mathbb{E}_{u \sim U[0,1)^D} \log p(x + u)

(Theis, van den Oord and Bethge 2016). ppgen's flows on pixels therefore model :math:`y = x + u`
in *pixel units*: their ``log_prob`` is a density on :math:`[0, K)^D` with unit-width bins, so
``log_prob(dequantize(x))`` is (a one-sample estimate of) that lower bound in nats, and
``-log_prob / (D log 2)`` is the bits per dimension the literature reports for 8-bit data,
the same as :math:`-\log p_{[0,1]}((x+u)/256) / (D \log 2) + 8` with the density of the data
scaled to [0, 1] (Dinh et al. 2017; Papamakarios et al. 2017; Grathwohl et al. 2019).

The flow first maps y to logit space, with its Jacobian counted:

.. math::
    s = \alpha + (1 - 2\alpha)\, y / K, \qquad h = \log s - \log(1 - s), \qquad
    \log\left|\frac{dh}{dy}\right| = \log(1 - 2\alpha) - \log K - \log s - \log(1 - s).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LogitPixels", "dequantize", "Dequantized", "check_pixels", "pixel_bits_per_dim"]


def check_pixels(x: torch.Tensor, num_levels: int, name: str = "x", *, dequantized: bool = True) -> torch.Tensor:
    """Raise, naming the first offending row and column, unless every value of ``x`` is finite and
    in [0, num_levels] (``dequantized``: levels 0..num_levels-1 plus noise in [0, 1)), or in
    [0, num_levels - 1] (the levels before dequantization)."""
    bad = ~torch.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0][:2])
        raise ValueError(f"{name} contains NaN or inf (first at row {row}, column {col})")
    top = num_levels if dequantized else num_levels - 1
    off = (x < 0) | (x > top)
    if off.any():
        where = off.nonzero()[0]
        row, col = int(where[0]), int(where[1]) if len(where) > 1 else 0
        what = (f"dequantized pixel values in [0, {top}] (levels 0..{top - 1} plus noise in [0, 1))" if dequantized
                else f"pixel values in [0, {top}] (integer levels, before dequantization)")
        raise ValueError(f"{name} must hold {what}; found {x[tuple(where)].item():g} at row {row}, column {col}")
    return x


def dequantize(x: torch.Tensor, num_levels: int = 256, *, seed: int | None = 0) -> torch.Tensor:
    """``x + u`` with u ~ Uniform[0, 1) per pixel, drawn with ``seed`` (None: the global RNG).

    ``x`` holds integer levels 0..num_levels-1 as floats (``load_dataset("digits_grey")``, or
    0/1 binary digits with ``num_levels=2``).

    Examples
    --------
    >>> y = dequantize(torch.tensor([[0.0, 255.0]]))
    >>> bool(((y >= torch.tensor([0.0, 255.0])) & (y < torch.tensor([1.0, 256.0]))).all())
    True
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor of pixel levels, got {type(x).__name__}"
                        f"{' of ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")
    check_pixels(x, num_levels, dequantized=False)
    if not torch.equal(x, x.round()):
        raise ValueError("x must hold integer pixel levels before dequantization (it is dequantized already?)")
    generator = None if seed is None else torch.Generator(x.device).manual_seed(seed)
    return x + torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class Dequantized:
    """Integer pixel rows that come back with fresh uniform noise whenever they are indexed:
    every epoch of :func:`ppgen.fit` sees a new dequantization (as ``DynamicBinarization``)."""

    def __init__(self, x: torch.Tensor, num_levels: int = 256):
        dequantize(x[:1], num_levels)  # checks type, range and integrality of one row cheaply
        check_pixels(x, num_levels, dequantized=False)
        if not torch.equal(x, x.round()):
            raise ValueError("x must hold integer pixel levels (0..num_levels-1)")
        self.x, self.num_levels, self.shape = x, num_levels, x.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        rows = self.x[idx]
        return rows + torch.rand_like(rows)

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and self.shape[1] != dim:
            raise ValueError(f"{name} has {self.shape[1]} columns, but the model expects {dim}")


class LogitPixels(nn.Module):
    """y in [0, K] (pixel units) -> logit space, and back; ``forward`` returns (h, log|dh/dy| per row)."""

    def __init__(self, num_levels: int = 256, alpha: float = 1e-6):
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha!r}")
        self.num_levels, self.alpha = num_levels, alpha

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * y / self.num_levels
        h = torch.log(s) - torch.log1p(-s)
        log_det = math.log(1 - 2 * self.alpha) - math.log(self.num_levels) - torch.log(s) - torch.log1p(-s)
        return h, log_det.flatten(1).sum(1)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha) * self.num_levels

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, alpha={self.alpha}"


def pixel_bits_per_dim(log_prob_pixel_units: float, dim: int) -> float:
    """Bits per dimension of a density in pixel units (= the literature's figure for 8-bit data)."""
    return -log_prob_pixel_units / (dim * math.log(2.0))
