r"""The restricted Boltzmann machine (Bernoulli-Bernoulli): an energy-based story.

.. math::
    E(v, h) = -b^\top v - c^\top h - v^\top W h, \qquad
    p(v) = \frac{1}{Z} \sum_h e^{-E(v, h)} = \frac{e^{-F(v)}}{Z}, \qquad
    F(v) = -b^\top v - \sum_j \mathrm{softplus}(c_j + v^\top W_{:j}),

with v in {0,1}^D and h in {0,1}^H. The normaliser Z sums over 2^D visible (or 2^H hidden)
states: exact for H <= 20 (enumerating h), otherwise estimated by annealed importance sampling
(:mod:`ppgen.models.energy.ais`). Training: contrastive divergence (CD-k, Hinton 2002) or
persistent CD (Tieleman 2008), :class:`~ppgen.models.energy.base.ContrastiveDivergence` with
block Gibbs sweeps as the MCMC step; for H <= 20 the exact log-likelihood gradient through
``log_prob`` (``elbo="mle"``).

References: P. Smolensky 1986; G. E. Hinton, "Training products of experts by minimizing
contrastive divergence", Neural Computation 2002; T. Tieleman, "Training restricted Boltzmann
machines using approximations to the likelihood gradient", ICML 2008; R. Salakhutdinov and
I. Murray, "On the quantitative analysis of deep belief networks", ICML 2008.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import LikelihoodEstimate
from ppgen.models.energy.ais import ais_log_partition, base_visible_bias, raise_log_likelihood
from ppgen.models.energy.base import ContrastiveDivergence, EnergyModel
from ppgen.models.objective import Objective

__all__ = ["RBM", "EXACT_MAX_HIDDEN"]

EXACT_MAX_HIDDEN = 20  # log Z by enumerating 2^H hidden states up to this H


class RBM(EnergyModel):
    r"""Bernoulli-Bernoulli restricted Boltzmann machine with D visible and H hidden units.

    Parameters: ``D H`` weights W, ``D`` visible biases b and ``H`` hidden biases c. Its energy is
    the free energy F(v); its MCMC step a block Gibbs sweep v -> h -> v (:meth:`mcmc_step`); new
    rows come from 1,000 sweeps started at uniform noise (:meth:`sample`).

    Parameters
    ----------
    x_dim : int
        Visible units D.
    hidden : int
        Hidden units H.

    Examples
    --------
    >>> rbm = RBM(6, hidden=4)
    >>> rbm.has_exact_likelihood, rbm.num_parameters
    (True, 34)
    >>> every = ((torch.arange(64).unsqueeze(-1) >> torch.arange(6)) & 1).float()
    >>> round(rbm.log_prob(every).exp().sum().item(), 5)  # exact: sums to 1 over all 2^6 rows
    1.0
    """

    data_support = "binary"
    likelihood_method = "ais"  # estimate_log_likelihood: log Z by AIS, a RAISE/AIS bracket
    ais_temperatures: int = 10_000  # annealing steps for log Z (Salakhutdinov & Murray used 14,500)

    def __init__(self, x_dim: int, hidden: int = 500):
        super().__init__(x_dim, steps=1000)
        self.hidden = positive_int(hidden, "hidden")
        self.weight = nn.Parameter(0.01 * torch.randn(x_dim, hidden))  # W (D, H), as Hinton's guide advises
        self.visible_bias = nn.Parameter(torch.zeros(x_dim))  # b
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))  # c

    @property
    def has_exact_likelihood(self) -> bool:
        return self.hidden <= EXACT_MAX_HIDDEN

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b^T v - sum_j softplus(c_j + v^T W_j), shape (...,)."""
        return -(v @ self.visible_bias) - F.softplus(v @ self.weight + self.hidden_bias).sum(-1)

    def energy(self, v: torch.Tensor) -> torch.Tensor:
        """The energy of the visible units: the free energy F(v)."""
        return self.free_energy(v)

    def log_partition(self) -> torch.Tensor:
        """Exact log Z, enumerating the 2^H hidden states (H <= 20):
        log Z = logsumexp_h [c^T h + sum_i softplus(b_i + W_i h)]."""
        if not self.has_exact_likelihood:
            raise ValueError(f"log Z of an RBM with {self.hidden} hidden units is not enumerable (H > "
                             f"{EXACT_MAX_HIDDEN}); estimate it with ppgen.models.energy.ais_log_partition")
        h = ((torch.arange(2**self.hidden, device=self.weight.device).unsqueeze(-1)
              >> torch.arange(self.hidden, device=self.weight.device)) & 1).to(self.weight.dtype)  # (2^H, H)
        return torch.logsumexp(h @ self.hidden_bias + F.softplus(h @ self.weight.T + self.visible_bias).sum(-1), 0)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.weight + self.hidden_bias)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.weight.T + self.visible_bias)

    @torch.no_grad()
    def mcmc_step(self, v: torch.Tensor) -> torch.Tensor:
        """One block Gibbs sweep: h ~ p(h | v), then v ~ p(v | h)."""
        h = torch.bernoulli(self.hidden_probs(v))
        return torch.bernoulli(self.visible_probs(h))

    def noise(self, n: int) -> torch.Tensor:
        """Uniform binary rows, (n, D)."""
        return torch.bernoulli(torch.full((n, self.x_dim), 0.5, device=self.weight.device, dtype=self.weight.dtype))

    def gibbs(self, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``steps`` sweeps of block Gibbs sampling from the rows ``v`` (:meth:`run_chains`)."""
        return self.run_chains(v, steps)

    @torch.no_grad()
    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int = 100, seed: int = 0,
                                num_temperatures: int | None = None, raise_chains: int = 5,
                                raise_rows: int = 100, progress: Callable[[int, int], None] | None = None
                                ) -> LikelihoodEstimate:
        """log p(x) per row with log Z by AIS (``num_samples`` chains, ``num_temperatures`` defaulting
        to :attr:`ais_temperatures`; the standard error is log Z's), and a bracket (RAISE mean, AIS
        mean) on the first ``raise_rows`` rows (reverse annealing costs ``raise_chains`` chains per
        row); what :func:`ppgen.log_likelihood` reports for an RBM. ``progress(k, 2 K)`` counts the
        K temperatures of AIS, then those of RAISE."""
        num_temperatures = num_temperatures or self.ais_temperatures
        forward = backward = None
        if progress is not None:  # AIS's K temperatures, then RAISE's: 2 K in all
            def forward(k, total):
                progress(k, 2 * total)

            def backward(k, total):
                progress(total + k, 2 * total)
        x = self.check_data(x)
        base = base_visible_bias(x.cpu(), self.x_dim)
        log_z = ais_log_partition(self, num_chains=num_samples, num_temperatures=num_temperatures,
                                  base_bias=base, seed=seed, progress=forward)
        values = -self.free_energy(x).double() - log_z.log_z
        lower, _ = raise_log_likelihood(self, x[:raise_rows], num_chains=raise_chains,
                                        num_temperatures=num_temperatures, base_bias=base, seed=seed + 1,
                                        progress=backward)
        return LikelihoodEstimate(values, log_z.stderr, method="ais",
                                  bracket=(lower.mean().item(), values[:raise_rows].mean().item()),
                                  num_samples=num_samples, kind="estimate", errs="high")  # log Z errs low

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective | None:
        """What ``fit(elbo="auto")`` trains with: the exact likelihood when Z is enumerable,
        else persistent contrastive divergence with one Gibbs sweep per step."""
        if self.has_exact_likelihood:
            return None
        return ContrastiveDivergence(program, k=1, persistent=True, precision=precision)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, hidden={self.hidden}"
