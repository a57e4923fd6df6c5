r"""A deep energy-based model trained with short-run Langevin dynamics.

.. math::
    p_\theta(x) = \frac{e^{-E_\theta(x)}}{Z_\theta}, \qquad x \in [0, 1]^D, \qquad
    x_{t+1} = \mathrm{clip}\big(x_t - \lambda \nabla_x E_\theta(x_t) + \sigma\, \xi_t\big),
    \quad \xi_t \sim \mathcal{N}(0, I),

with :math:`E_\theta` an MLP. With :math:`\sigma = \sqrt{2\lambda}` this is the unadjusted Langevin
algorithm, whose chain samples :math:`p_\theta` as :math:`\lambda \to 0`; short-run samplers for images
decouple the two (Du & Mordatch use :math:`\lambda = 10`, :math:`\sigma = 0.005` for 60 steps on
[0, 1] pixels, the defaults here): far too little noise for a faithful sampler, but a chain that
reaches the modes within its few steps, and the energy is learned for that sampler (Nijkamp et al.). The log-likelihood gradient is
:math:`-\nabla E(x) + \mathbb{E}_{p_\theta}[\nabla E]`; :class:`LangevinContrastiveDivergence`
(the family's :class:`~ppgen.models.energy.base.ContrastiveDivergence` with Du & Mordatch's settings)
estimates the expectation with negatives from a short Langevin run, started from uniform noise or
(``persistent=True``) from a replay buffer refreshed with 5% noise (Du & Mordatch 2019), and adds
their L2 penalty :math:`\alpha (E(x)^2 + E(\tilde x)^2)` that keeps energies bounded. Pixels are
intensities in [0, 1] (greyscale digits divided by 255).

References: Y. Du and I. Mordatch, "Implicit generation and modeling with energy-based models",
NeurIPS 2019; E. Nijkamp, M. Hill, S.-C. Zhu and Y. N. Wu, "Learning non-convergent non-persistent
short-run MCMC toward energy-based model", NeurIPS 2019.
"""

from __future__ import annotations

import torch
from torch import nn

from ppgen.models.energy.base import ContrastiveDivergence, EnergyModel
from ppgen.models.latent.networks import hidden_widths
from ppgen.models.objective import Objective

__all__ = ["EBM", "LangevinContrastiveDivergence"]


class EBM(EnergyModel):
    r"""An MLP energy over [0, 1]^D (``bounds=None`` for unbounded data), sampled by Langevin dynamics.

    Parameters
    ----------
    x_dim : int
    hidden : int or list of int
        Widths of the energy network (SiLU activations, which keep input gradients smooth).
    steps, step_size, noise : int, float, float or None
        Langevin steps, the gradient step :math:`\lambda` and the noise :math:`\sigma` of
        :meth:`~ppgen.models.energy.base.EnergyModel.mcmc_step` (``noise=None``: :math:`\sqrt{2\lambda}`,
        the unadjusted Langevin algorithm).
    bounds : (float, float) or None
        The box the samples are clipped to.

    Examples
    --------
    >>> ebm = EBM(4, hidden=8, steps=5)
    >>> ebm.sample(3).shape
    torch.Size([3, 4])
    """

    def __init__(self, x_dim: int, hidden=256, steps: int = 60, step_size: float = 10.0, noise: float | None = 0.005,
                 bounds: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__(x_dim, steps=steps, step_size=step_size, noise=noise, bounds=bounds)
        widths = hidden_widths(hidden)
        layers, sizes = [], [x_dim, *widths]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), shape (...,)."""
        return self.net(x).squeeze(-1)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        return LangevinContrastiveDivergence(program, persistent=True, precision=precision)

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, steps={self.steps}, step_size={self.step_size}, noise={self.noise_scale:g}, "
                f"bounds={self.bounds}")


class LangevinContrastiveDivergence(ContrastiveDivergence):
    r"""Contrastive divergence with Du & Mordatch's settings, for an :class:`EBM`: the model's
    ``steps`` Langevin steps per update from a replay buffer of ``buffer_size`` rows, a fraction
    ``reinit`` restarted from noise (``persistent=False``: from noise every time), and the penalty
    :math:`\alpha (E(x)^2 + E(\tilde x)^2)`. The loss is
    :math:`s\,[\sum_n E(x_n) - \sum_n E(\tilde x_n)] + \alpha\, s \sum_n (E(x_n)^2 + E(\tilde x_n)^2)`;
    its :meth:`score` (validation) is -E(x), an unnormalised log-density. The replay buffer is not
    in the checkpoint: a resumed run refills it."""

    def __init__(self, program, *, persistent: bool = True, buffer_size: int = 10_000, reinit: float = 0.05,
                 alpha: float = 1.0, precision: str = "fp32"):
        super().__init__(program, k=None, start="buffer" if persistent else "noise", buffer_size=buffer_size,
                         reinit=reinit, alpha=alpha, precision=precision)
        self.estimator = "langevin-cd"
