r"""A deep energy-based model over images or vectors, trained with short-run Langevin dynamics.

.. math::
    p_\theta(x) = \frac{e^{-E_\theta(x)}}{Z_\theta}, \qquad x \in [0, 1]^D, \qquad
    x_{t+1} = \mathrm{clip}\big(x_t - \lambda \nabla_x E_\theta(x_t) + \sigma\, \xi_t\big),
    \quad \xi_t \sim \mathcal{N}(0, I),

with :math:`E_\theta` an MLP or a convolutional network. With :math:`\sigma = \sqrt{2\lambda}` this is
the unadjusted Langevin algorithm, whose chain samples :math:`p_\theta` as :math:`\lambda \to 0`;
short-run samplers for images decouple the two, and the energy is learned for that sampler.

The log-likelihood gradient is :math:`-\nabla E(x) + \mathbb{E}_{p_\theta}[\nabla E]`;
:class:`LangevinContrastiveDivergence` (the family's
:class:`~ppgen.models.energy.base.ContrastiveDivergence`) estimates the expectation with negatives from
a short Langevin run, by one of two recipes:

- short-run MCMC (Nijkamp et al. 2019; the default): every update starts K = 100 chains from uniform
  noise and runs them with a fixed step and noise, no replay buffer and no energy penalty; the data
  get a little Gaussian noise. Their code has :math:`x \in [-1, 1]^D`,
  :math:`x_{k+1} = x_k - \nabla E(x_k) + 0.01\, \xi_k` and data noise 0.03; on [0, 1] pixels
  (:math:`x' = (x + 1) / 2`, the same energy) that is :math:`\lambda = 1/4`, :math:`\sigma = 0.005`
  and data noise 0.015, the defaults here. The K-step sampler, not a long chain, is the model's
  sampler: :meth:`sample` runs the same K steps from noise.
- a replay buffer (Du & Mordatch 2019; ``persistent=True``): chains continue from past negatives,
  5% restarted from noise, with the penalty :math:`\alpha (E(x)^2 + E(\tilde x)^2)` (:math:`\alpha = 1`)
  that keeps energies bounded; Du & Mordatch use :math:`\lambda = 10`, :math:`\sigma = 0.005` and 60 steps.

Pixels are intensities in [0, 1] (greyscale digits divided by 255; for a likelihood in bits/dim,
dequantized: (k + u) / 256 with u ~ U(0, 1)).

log Z, and with it log p(x), is estimated by annealed importance sampling from the uniform density on
the box with MALA transitions (:func:`~ppgen.models.energy.continuous_ais.ais_log_partition_continuous`):
:meth:`EBM.estimate_log_likelihood`, what ``ppgen.log_likelihood`` reports.

References: E. Nijkamp, M. Hill, S.-C. Zhu and Y. N. Wu, "Learning non-convergent non-persistent
short-run MCMC toward energy-based model", NeurIPS 2019; Y. Du and I. Mordatch, "Implicit generation
and modeling with energy-based models", NeurIPS 2019.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ppgen.checks import image_shape_of, non_negative_number, positive_int
from ppgen.models.base import LikelihoodEstimate
from ppgen.models.energy.base import ContrastiveDivergence, EnergyModel
from ppgen.models.energy.continuous_ais import ais_log_partition_continuous
from ppgen.models.latent.networks import hidden_widths
from ppgen.models.objective import Objective

__all__ = ["EBM", "LangevinContrastiveDivergence", "ARCHITECTURES"]

ARCHITECTURES = ("mlp", "conv")


def _conv_energy(shape: tuple[int, int, int], channels: int) -> nn.Sequential:
    """(C, H, W) -> a scalar: a 3x3 convolution to c channels, two stride-2 4x4 convolutions to 2c and 4c
    at H/4 x W/4, then one convolution over all of it (Nijkamp et al.'s energy, sized for 28x28), SiLU
    activations."""
    c, (colours, height, width) = channels, shape
    return nn.Sequential(
        nn.Unflatten(-1, shape), nn.Conv2d(colours, c, 3, 1, 1), nn.SiLU(),
        nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(), nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.SiLU(),
        nn.Conv2d(4 * c, 1, (height // 4, width // 4)), nn.Flatten())


class EBM(EnergyModel):
    r"""A neural energy over [0, 1]^D (``bounds=None`` for unbounded data), sampled by Langevin dynamics.

    Parameters
    ----------
    x_dim : int
    hidden : int or list of int
        Widths of the MLP energy (``architecture="mlp"``; SiLU activations, which keep input gradients smooth).
    steps, step_size, noise : int, float, float or None
        Langevin steps K, the gradient step :math:`\lambda` and the noise :math:`\sigma` of
        :meth:`~ppgen.models.energy.base.EnergyModel.mcmc_step` (``noise=None``: :math:`\sqrt{2\lambda}`,
        the unadjusted Langevin algorithm). The defaults are Nijkamp et al.'s short-run sampler on [0, 1].
    bounds : (float, float) or None
        The box the samples are clipped to, and the support of the density.
    architecture : {"mlp", "conv"}
        An MLP, or a convolutional energy for square grey or colour images (side divisible by 4).
    channels : int
        The convolutional energy's first width c (then 2c and 4c).

    Examples
    --------
    >>> ebm = EBM(4, hidden=8, steps=5)
    >>> ebm.sample(3).shape
    torch.Size([3, 4])
    >>> EBM(784, architecture="conv", channels=4, steps=2).sample(2).shape
    torch.Size([2, 784])
    """

    likelihood_method = "ais"  # estimate_log_likelihood: log Z by AIS with MALA from the uniform base

    def __init__(self, x_dim: int, hidden=256, steps: int = 100, step_size: float = 0.25, noise: float | None = 0.005,
                 bounds: tuple[float, float] | None = (0.0, 1.0), architecture: str = "mlp", channels: int = 32):
        super().__init__(x_dim, steps=steps, step_size=step_size, noise=noise, bounds=bounds)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.architecture = architecture
        channels = positive_int(channels, "channels")  # checked with the MLP too, which does not use it
        if architecture == "conv":
            shape = image_shape_of(x_dim)
            if shape[1] % 4:
                raise ValueError(f"the convolutional energy needs images whose side is divisible by 4, got "
                                 f"x_dim={x_dim} ({shape[0]}x{shape[1]}x{shape[2]})")
            self.net = _conv_energy(shape, channels)
            return
        layers, sizes = [], [x_dim, *hidden_widths(hidden)]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), shape (...,)."""
        return self.net(x.reshape(-1, self.x_dim)).reshape(x.shape[:-1])

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        """Short-run contrastive divergence (Nijkamp et al.): :attr:`steps` Langevin steps from noise."""
        return LangevinContrastiveDivergence(program, precision=precision)

    @torch.no_grad()
    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int = 100, seed: int = 0,
                                num_temperatures: int = 1000, mala_steps: int = 1,
                                progress: Callable[[int, int], None] | None = None) -> LikelihoodEstimate:
        r"""log p(x) = -E(x) - log Z per row, with log Z by annealed importance sampling
        (:func:`~ppgen.models.energy.continuous_ais.ais_log_partition_continuous`: ``num_samples``
        chains from the uniform density on :attr:`bounds`, or without bounds from a Gaussian with the
        rows' mean and twice their standard deviation; ``num_temperatures`` steps along the geometric path,
        ``mala_steps`` MALA steps at each; ``progress(k, num_temperatures)`` after each). The
        standard error is log Z's. :math:`\log \hat Z` errs low, so these log-likelihoods err **high**.

        In nats for the density on the box. For pixels dequantized as (k + u) / 256 on [0, 1], the
        log-likelihood of the 8-bit levels is at least (in expectation over u) this minus D log 256:
        bits/dim = 8 - log p(x) / (D log 2).
        """
        x = self.check_data(x)
        base = None
        if self.bounds is None:  # N(mean, (2 sd)^2) of the rows, per column: broader than the data
            base = (x.mean(0), 2 * x.std(0).clamp_min(0.05) if len(x) > 1 else torch.ones_like(x[0]))
        estimate = ais_log_partition_continuous(
            self.energy, self.x_dim, bounds=self.bounds, base=base, num_chains=num_samples,
            num_temperatures=num_temperatures, mala_steps=mala_steps, seed=seed, dtype=self.dtype, device=self.device,
            progress=progress)
        values = -self.energy(x).double() - estimate.log_z
        return LikelihoodEstimate(values, estimate.stderr, method="ais", num_samples=num_samples, kind="estimate",
                                  errs="high")  # log Z errs low

    def extra_repr(self) -> str:
        net = "architecture='conv', " if self.architecture == "conv" else ""
        return (f"x_dim={self.x_dim}, {net}steps={self.steps}, step_size={self.step_size}, noise={self.noise_scale:g}, "
                f"bounds={self.bounds}")


class LangevinContrastiveDivergence(ContrastiveDivergence):
    r"""Contrastive divergence for an :class:`EBM` with the model's ``steps`` Langevin steps per update,
    by short-run chains from noise (Nijkamp et al. 2019; ``persistent=False``, the default) or from a
    replay buffer of ``buffer_size`` rows, a fraction ``reinit`` restarted from noise (Du & Mordatch
    2019; ``persistent=True``).

    The loss is :math:`s\,[\sum_n E(x_n + \epsilon_n) - \sum_n E(\tilde x_n)] + \alpha\, s \sum_n
    (E(x_n + \epsilon_n)^2 + E(\tilde x_n)^2)` with :math:`\epsilon_n \sim \mathcal{N}(0, \sigma_d^2 I)`,
    ``data_noise`` :math:`\sigma_d` (None: 0.015 for short-run chains, Nijkamp et al.'s 0.03 on [-1, 1];
    0 with the buffer) and ``alpha`` (None: 0 for short-run chains, 1 with the buffer, Du & Mordatch's).
    Its :meth:`score` is None (log Z is unknown: no best epoch, no early stopping). The replay buffer is in
    the checkpoint: a resumed run continues it.
    """

    def __init__(self, program, *, persistent: bool = False, buffer_size: int = 10_000, reinit: float = 0.05,
                 alpha: float | None = None, data_noise: float | None = None, precision: str = "fp32"):
        alpha = (1.0 if persistent else 0.0) if alpha is None else non_negative_number(alpha, "alpha")
        super().__init__(program, k=None, start="buffer" if persistent else "noise", buffer_size=buffer_size,
                         reinit=reinit, alpha=alpha, precision=precision)
        self.data_noise = (0.0 if persistent else 0.015) if data_noise is None else \
            non_negative_number(data_noise, "data_noise")
        self.estimator = "langevin-cd"

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        if self.data_noise:
            x = x + self.data_noise * torch.randn_like(x)
        return super().loss(x, y, scale, group)
