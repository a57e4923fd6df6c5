r"""The restricted Boltzmann machine (Bernoulli-Bernoulli): an energy-based story.

.. math::
    E(v, h) = -b^\top v - c^\top h - v^\top W h, \qquad
    p(v) = \frac{1}{Z} \sum_h e^{-E(v, h)} = \frac{e^{-F(v)}}{Z}, \qquad
    F(v) = -b^\top v - \sum_j \mathrm{softplus}(c_j + v^\top W_{:j}),

with v in {0,1}^D and h in {0,1}^H. The normaliser Z sums over 2^D visible (or 2^H hidden)
states: exact for H <= 20 (enumerating h), otherwise estimated by annealed importance sampling
(:mod:`ppgen.models.energy.ais`). Training: contrastive divergence (CD-k, Hinton 2002) or
persistent CD (Tieleman 2008), :class:`ContrastiveDivergence`; for H <= 20 the exact
log-likelihood gradient through ``log_prob`` (``elbo="mle"``).

References: P. Smolensky 1986; G. E. Hinton, "Training products of experts by minimizing
contrastive divergence", Neural Computation 2002; T. Tieleman, "Training restricted Boltzmann
machines using approximations to the likelihood gradient", ICML 2008; R. Salakhutdinov and
I. Murray, "On the quantitative analysis of deep belief networks", ICML 2008.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.models.objective import Objective
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, _check_count, num_rows

__all__ = ["RBM", "ContrastiveDivergence", "EXACT_MAX_HIDDEN"]

EXACT_MAX_HIDDEN = 20  # log Z by enumerating 2^H hidden states up to this H


class RBM(GenerativeModel):
    r"""Bernoulli-Bernoulli restricted Boltzmann machine with D visible and H hidden units.

    Parameters: ``D H`` weights W, ``D`` visible biases b and ``H`` hidden biases c. The Pyro
    ``model`` scores rows with ``pyro.factor`` on -F(x) (minus log Z when it is exact); new rows
    come from block Gibbs sampling (:meth:`sample`).

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

    def __init__(self, x_dim: int, hidden: int = 500):
        super().__init__(x_dim)
        self.hidden = _check_count(hidden, "hidden")
        self.weight = nn.Parameter(0.01 * torch.randn(x_dim, hidden))  # W (D, H), as Hinton's guide advises
        self.visible_bias = nn.Parameter(torch.zeros(x_dim))  # b
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))  # c

    ais_temperatures: int = 10_000  # annealing steps for log Z (Salakhutdinov & Murray used 14,500)

    @property
    def has_exact_likelihood(self) -> bool:
        return self.hidden <= EXACT_MAX_HIDDEN

    @property
    def is_normalised(self) -> bool:
        """Whether the Pyro model's factor includes -log Z (it does when Z is exact)."""
        return self.has_exact_likelihood

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b^T v - sum_j softplus(c_j + v^T W_j), shape (...,)."""
        return -(v @ self.visible_bias) - F.softplus(v @ self.weight + self.hidden_bias).sum(-1)

    def log_partition(self) -> torch.Tensor:
        """Exact log Z, enumerating the 2^H hidden states (H <= 20):
        log Z = logsumexp_h [c^T h + sum_i softplus(b_i + W_i h)]."""
        if not self.has_exact_likelihood:
            raise ValueError(f"log Z of an RBM with {self.hidden} hidden units is not enumerable (H > "
                             f"{EXACT_MAX_HIDDEN}); estimate it with ppgen.models.energy.ais_log_partition")
        h = ((torch.arange(2**self.hidden, device=self.weight.device).unsqueeze(-1)
              >> torch.arange(self.hidden, device=self.weight.device)) & 1).to(self.weight.dtype)  # (2^H, H)
        return torch.logsumexp(h @ self.hidden_bias + F.softplus(h @ self.weight.T + self.visible_bias).sum(-1), 0)

    def model(self, x=None, y=None, *, size=None):
        n = num_rows(x, y, size)
        with pyro.plate(DATA_PLATE, n):
            if x is None:  # generating: block Gibbs sampling (the density has no Pyro sampler of its own)
                return self.sample(n)
            log_density = -self.free_energy(x)
            if self.is_normalised:
                log_density = log_density - self.log_partition()
            pyro.factor(OBSERVED_SITE, log_density)
            return x

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) = -F(x) - log Z for H <= 20, shape (N,)."""
        x = self.check_data(x)
        return -self.free_energy(x) - self.log_partition()

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.weight + self.hidden_bias)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.weight.T + self.visible_bias)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``steps`` sweeps of block Gibbs sampling v -> h -> v from the rows ``v``."""
        for _ in range(steps):
            h = torch.bernoulli(self.hidden_probs(v))
            v = torch.bernoulli(self.visible_probs(h))
        return v

    @torch.no_grad()
    def sample(self, n: int, y=None, *, steps: int = 1000, progress: bool = False) -> torch.Tensor:
        """``n`` rows from ``steps`` Gibbs sweeps started at uniform noise (a longer chain mixes better)."""
        n, steps = _check_count(n, "n"), _check_count(steps, "steps")
        v = torch.bernoulli(torch.full((n, self.x_dim), 0.5, device=self.weight.device, dtype=self.weight.dtype))
        if not progress:
            return self.gibbs(v, steps)
        from tqdm.auto import tqdm

        for _ in tqdm(range(steps), desc="Gibbs", unit="sweep", leave=False):
            v = self.gibbs(v)
        return v

    @torch.no_grad()
    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int = 100, seed: int = 0,
                                num_temperatures: int | None = None, raise_chains: int = 5, raise_rows: int = 100):
        """log p(x) per row with log Z by AIS (``num_samples`` chains, ``num_temperatures`` defaulting
        to :attr:`ais_temperatures`) and its standard error, and a bracket (RAISE mean, AIS mean) on
        the first ``raise_rows`` rows (reverse annealing costs a chain per row); what
        :func:`ppgen.log_likelihood` reports for an RBM."""
        from ppgen.models.energy.ais import ais_log_partition, base_visible_bias, raise_log_likelihood

        num_temperatures = num_temperatures or self.ais_temperatures
        x = self.check_data(x)
        base = base_visible_bias(x.cpu(), self.x_dim)
        log_z = ais_log_partition(self, num_chains=num_samples, num_temperatures=num_temperatures,
                                  base_bias=base, seed=seed)
        values = -self.free_energy(x).double() - log_z.log_z
        lower, _ = raise_log_likelihood(self, x[:raise_rows], num_chains=raise_chains,
                                        num_temperatures=num_temperatures, base_bias=base, seed=seed + 1)
        return values, log_z.stderr, (lower.mean().item(), values[:raise_rows].mean().item())

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective | None:
        """What ``fit(elbo="auto")`` trains with: the exact likelihood when Z is enumerable,
        else persistent contrastive divergence with one Gibbs sweep per step."""
        return None if self.has_exact_likelihood else ContrastiveDivergence(program, k=1, persistent=True)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, hidden={self.hidden}"


class ContrastiveDivergence(Objective):
    r"""CD-k (Hinton 2002) or persistent CD (Tieleman 2008) for an :class:`RBM`.

    The log-likelihood gradient is :math:`-\nabla F(x) + \mathbb{E}_{p}[\nabla F(v)]`; CD replaces the
    model expectation by samples after ``k`` Gibbs sweeps started at the data (CD-k) or at
    persistent chains carried across steps (PCD). The loss per batch, scaled to the full data,
    is :math:`s\,[\sum_n F(x_n) - \frac{B}{M}\sum_m F(\tilde v_m)]` with the negatives
    :math:`\tilde v` held fixed, so its gradient is that estimate. It is not a log-likelihood;
    :meth:`score` (for validation) is -F(x), the unnormalised log-density.

    The persistent chains are not in the checkpoint: a resumed PCD run restarts them from data.
    """

    estimator = "cd"

    def __init__(self, program, k: int = 1, persistent: bool = False, *, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if not isinstance(program.generative_model, RBM):
            raise TypeError(f"contrastive divergence here trains an RBM, got {program.name}")
        self.k, self.persistent = _check_count(k, "k"), persistent
        self.chains: torch.Tensor | None = None
        self.estimator = f"{'pcd' if persistent else 'cd'}-{k}"

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        rbm = self.program.generative_model
        if self.persistent and self.chains is not None and self.chains.shape == x.shape:
            start = self.chains
        else:
            start = x
        negatives = rbm.gibbs(start.detach(), self.k)
        if self.persistent:
            self.chains = negatives
        return scale * (rbm.free_energy(x).sum() - rbm.free_energy(negatives).sum() * x.shape[0] / len(negatives))

    @torch.no_grad()
    def score(self, x, y=None) -> torch.Tensor:
        return -self.program.generative_model.free_energy(x).sum()


def exact_log_likelihood_gradient(rbm: RBM, x: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean exact log-likelihood, by autograd through log Z (H <= 20)."""
    log_lik = rbm.log_prob(x).mean()
    return list(torch.autograd.grad(log_lik, [rbm.weight, rbm.visible_bias, rbm.hidden_bias]))
