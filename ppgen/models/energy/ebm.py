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
estimates the expectation with negatives from a short Langevin run, started from uniform noise or
(``persistent=True``) from a replay buffer refreshed with 5% noise (Du & Mordatch 2019), and adds
their L2 penalty :math:`\alpha (E(x)^2 + E(\tilde x)^2)` that keeps energies bounded. Pixels are
intensities in [0, 1] (greyscale digits divided by 255).

References: Y. Du and I. Mordatch, "Implicit generation and modeling with energy-based models",
NeurIPS 2019; E. Nijkamp, M. Hill, S.-C. Zhu and Y. N. Wu, "Learning non-convergent non-persistent
short-run MCMC toward energy-based model", NeurIPS 2019.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ppgen.models.objective import Objective
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, _check_count, num_rows
from ppgen.models.latent.networks import hidden_widths

__all__ = ["EBM", "LangevinContrastiveDivergence"]


class EBM(GenerativeModel):
    r"""An MLP energy over [0, 1]^D (``bounds=None`` for unbounded data), sampled by Langevin dynamics.

    Parameters
    ----------
    x_dim : int
    hidden : int or list of int
        Widths of the energy network (SiLU activations, which keep input gradients smooth).
    steps, step_size, noise : int, float, float or None
        Langevin steps, the gradient step :math:`\lambda` and the noise :math:`\sigma` of :meth:`langevin`
        (``noise=None``: :math:`\sqrt{2\lambda}`, the unadjusted Langevin algorithm).
    bounds : (float, float) or None
        The box the samples are clipped to.

    Examples
    --------
    >>> ebm = EBM(4, hidden=8, steps=5)
    >>> ebm.sample(3).shape
    torch.Size([3, 4])
    """

    data_support = "real"
    is_normalised = False  # its factor is -E(x): Z is unknown

    def __init__(self, x_dim: int, hidden=256, steps: int = 60, step_size: float = 10.0, noise: float | None = 0.005,
                 bounds: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__(x_dim)
        widths = hidden_widths(hidden)
        self.steps, self.step_size, self.bounds = _check_count(steps, "steps"), float(step_size), bounds
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.noise_scale = (2 * self.step_size) ** 0.5 if noise is None else float(noise)
        if not self.noise_scale >= 0:
            raise ValueError(f"noise must be non-negative or None, got {noise!r}")
        layers, sizes = [], [x_dim, *widths]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), shape (...,)."""
        return self.net(x).squeeze(-1)

    def model(self, x=None, y=None, *, size=None):
        n = num_rows(x, y, size)
        with pyro.plate(DATA_PLATE, n):
            if x is None:
                return self.sample(n)
            pyro.factor(OBSERVED_SITE, -self.energy(x))  # unnormalised: fit trains it by contrastive divergence
            return x

    def noise(self, n: int) -> torch.Tensor:
        """Starting points: uniform in the box (standard normal without bounds)."""
        like = next(self.parameters())
        if self.bounds is None:
            return torch.randn(n, self.x_dim, device=like.device, dtype=like.dtype)
        low, high = self.bounds
        return low + (high - low) * torch.rand(n, self.x_dim, device=like.device, dtype=like.dtype)

    def langevin(self, x: torch.Tensor, steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """Run Langevin dynamics from ``x`` (no gradient flows to the parameters)."""
        steps = self.steps if steps is None else _check_count(steps, "steps")
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="Langevin", unit="step", leave=False)
        x = x.detach()
        with torch.enable_grad():
            for _ in iterator:
                x.requires_grad_(True)
                grad, = torch.autograd.grad(self.energy(x).sum(), x)
                x = (x - self.step_size * grad + self.noise_scale * torch.randn_like(x)).detach()
                if self.bounds is not None:
                    x = x.clamp(*self.bounds)
        return x

    def sample(self, n: int, y=None, *, steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """``n`` rows by Langevin dynamics from noise (``progress`` shows a bar)."""
        return self.langevin(self.noise(_check_count(n, "n")), steps, progress)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        return LangevinContrastiveDivergence(program, persistent=True)

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, steps={self.steps}, step_size={self.step_size}, noise={self.noise_scale:g}, "
                f"bounds={self.bounds}")


class LangevinContrastiveDivergence(Objective):
    r"""Contrastive divergence with Langevin negatives for an :class:`EBM`:
    :math:`s\,[\sum_n E(x_n) - \sum_n E(\tilde x_n)] + \alpha\, s \sum_n (E(x_n)^2 + E(\tilde x_n)^2)`.
    Its :meth:`score` (validation) is -E(x), an unnormalised log-density. The replay buffer is not
    in the checkpoint: a resumed run refills it."""

    estimator = "langevin-cd"

    def __init__(self, program, *, persistent: bool = True, buffer_size: int = 10_000, reinit: float = 0.05,
                 alpha: float = 1.0, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if not isinstance(program.generative_model, EBM):
            raise TypeError(f"Langevin contrastive divergence trains an EBM, got {program.name}")
        self.persistent, self.buffer_size, self.reinit, self.alpha = persistent, buffer_size, reinit, alpha
        self.buffer: torch.Tensor | None = None

    def negatives(self, n: int) -> torch.Tensor:
        ebm = self.program.generative_model
        if not self.persistent:
            return ebm.langevin(ebm.noise(n))
        if self.buffer is None:
            self.buffer = ebm.noise(self.buffer_size)
        idx = torch.randint(len(self.buffer), (n,), device=self.buffer.device)
        start = self.buffer[idx]
        fresh = torch.rand(n, device=start.device) < self.reinit
        start[fresh] = ebm.noise(int(fresh.sum()))
        samples = ebm.langevin(start)
        self.buffer[idx] = samples
        return samples

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        ebm = self.program.generative_model
        real, fake = ebm.energy(x), ebm.energy(self.negatives(len(x)))
        return scale * ((real - fake).sum() + self.alpha * (real.pow(2) + fake.pow(2)).sum())

    @torch.no_grad()
    def score(self, x, y=None) -> torch.Tensor:
        return -self.program.generative_model.energy(x).sum()
