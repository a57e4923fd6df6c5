"""The discretised Gaussian decoder of a diffusion model: p(x_0 | x_1) over the pixel levels (Ho et al. 2020, Sec. 3.3)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

__all__ = ["DiscretisedGaussian", "quantise"]


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a < 0, accurate at both ends (Maechler 2012). Each branch sees only
    inputs where it is finite, so that the gradient of the branch not taken is not NaN."""
    a = a.clamp(max=-torch.finfo(a.dtype).tiny)
    near = a > -math.log(2)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, a, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near, -1.0, a))))


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, from the lower tail: an interval right of 0 is
    mirrored to [-hi, -lo] first (the same mass), so the difference of CDFs is never near 1 - 1."""
    mirror = lo + hi > 0
    a, b = torch.where(mirror, -hi, lo), torch.where(mirror, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + _log1mexp(torch.special.log_ndtr(a) - log_b)


class DiscretisedGaussian(dist.TorchDistribution):
    r"""Ho et al.'s discretised decoder (Sec. 3.3, Eq. 13) on the grid {0, 1/(K-1), ..., 1}.

    ``loc`` and ``scale`` are in the model's [-1, 1] units; a value v of the grid, at u = 2v - 1,
    has the mass of :math:`\mathcal{N}(\mathrm{loc}, \mathrm{scale}^2)` on its bin
    :math:`[u - 1/(K-1), u + 1/(K-1)]`, the end bins reaching to -inf and +inf; the K masses sum to 1.
    Sampling draws from the Gaussian and rounds to the nearest level.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc, scale, num_levels: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale, dtype=loc.dtype))
        self.num_levels = num_levels
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return DiscretisedGaussian(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.num_levels)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        u = 2 * value - 1
        half = 1.0 / (self.num_levels - 1)
        big = torch.full_like(self.loc, 1e4)  # an open end, in standard units
        lo = torch.where(u <= -1 + half / 2, -big, (u - half - self.loc) / self.scale)
        hi = torch.where(u >= 1 - half / 2, big, (u + half - self.loc) / self.scale)
        return _log_normal_mass(lo, hi)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            u = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, dtype=self.loc.dtype,
                                                                                 device=self.loc.device)
            return quantise((u + 1) / 2, self.num_levels)


def quantise(v: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
    """``v`` clipped to [0, 1] and rounded to the nearest of ``num_levels`` levels."""
    return (v.clamp(0, 1) * (num_levels - 1)).round() / (num_levels - 1)
