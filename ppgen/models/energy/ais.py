r"""The partition function of an RBM by annealed importance sampling, and a bracket around log p(x).

The annealing path (Salakhutdinov & Murray 2008) runs from a base RBM with no weights,
p_0(v) = prod_i Bernoulli(v_i; sigmoid(b^A_i)), to the target, through the unnormalised densities

.. math::
    \log f_\beta(v) = (1 - \beta)\, b_A^\top v + \beta\, b^\top v
        + \sum_j \mathrm{softplus}\big(\beta (c_j + v^\top W_{:j})\big),
    \qquad \log Z_0 = H \log 2 + \sum_i \mathrm{softplus}(b^A_i),

each the visible marginal of an RBM with weights beta W, so one block-Gibbs sweep T_beta leaves it
invariant and is reversible.

- :func:`ais_log_partition` (Neal 2001): M chains from p_0, weights
  :math:`\log w = \sum_k \log f_{\beta_k}(v_{k-1}) - \log f_{\beta_{k-1}}(v_{k-1})`; then
  :math:`\hat Z = Z_0 \cdot \mathrm{mean}(w)` is unbiased, so :math:`\log \hat Z` errs low and the
  log-likelihood :math:`-F(x) - \log \hat Z` errs **high** (optimistic).
- :func:`raise_log_likelihood` (RAISE, Burda, Grosse & Salakhutdinov 2015): chains run backwards
  from each row x to the base; :math:`\log w = \log f_1(x) - \log Z_0 + \sum_{k<K} [\log f_{\beta_k}(v_k)
  - \log f_{\beta_{k+1}}(v_k)]` estimates the likelihood of the annealed model without bias, so its log
  errs **low** (conservative). The two bracket log p(x).

References: R. M. Neal, "Annealed importance sampling", Statistics and Computing 2001;
R. Salakhutdinov and I. Murray, ICML 2008; Y. Burda, R. Grosse and R. Salakhutdinov, "Accurate
and conservative estimates of MRF log-likelihood using reverse annealing", AISTATS 2015.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from ppgen.checks import positive_int
from ppgen.models.base import check_data

__all__ = ["PartitionEstimate", "RBMParameters", "ais_log_partition", "raise_log_likelihood", "base_visible_bias"]


class RBMParameters(Protocol):
    """What annealing needs of a Bernoulli-Bernoulli RBM (:class:`~ppgen.models.energy.rbm.RBM` has
    them): weights W (D, H), visible biases b (D,) and hidden biases c (H,)."""

    weight: torch.Tensor
    visible_bias: torch.Tensor
    hidden_bias: torch.Tensor


@dataclasses.dataclass
class PartitionEstimate:
    """log Z by AIS: the estimate, its Monte Carlo standard error (delta method) and the settings."""

    log_z: float
    stderr: float
    num_chains: int
    num_temperatures: int

    def __str__(self) -> str:
        return (f"log Z = {self.log_z:.3f} ± {self.stderr:.3f} (AIS, {self.num_chains} chains, "
                f"{self.num_temperatures} temperatures)")


def base_visible_bias(x: torch.Tensor | None, dim: int) -> torch.Tensor:
    """The base model's visible biases: the logits of the data's pixel frequencies (smoothed),
    as Salakhutdinov & Murray advise, or zeros without data."""
    if x is None:
        return torch.zeros(dim)
    return torch.logit((x.sum(0) + 1.0) / (x.shape[0] + 2.0))


# Salakhutdinov & Murray's (2008) spacing of 14,500 temperatures: 500 on [0, 0.5], 4,000 on [0.5, 0.9] and
# 10,000 on [0.9, 1]; the log-ratios of successive temperatures are largest near the model (beta = 1).
ANNEALING_PIECES = ((0.5, 500 / 14_500), (0.9, 4_000 / 14_500), (1.0, 10_000 / 14_500))


def _betas(num_temperatures) -> torch.Tensor:
    """The annealing schedule 0 = beta_0 < ... < beta_K = 1, spaced as Salakhutdinov & Murray's (linear
    for K < 3): each piece of :data:`ANNEALING_PIECES` gets its share of the K steps, at least one."""
    positive_int(num_temperatures, "num_temperatures")  # at least one step from the base to the model
    if num_temperatures < len(ANNEALING_PIECES):
        return torch.linspace(0.0, 1.0, num_temperatures + 1, dtype=torch.float64)
    steps = [max(1, round(num_temperatures * share)) for _, share in ANNEALING_PIECES[:-1]]
    steps.append(num_temperatures - sum(steps))
    pieces, start = [], 0.0
    for (end, _), count in zip(ANNEALING_PIECES, steps):
        pieces.append(torch.linspace(start, end, count + 1, dtype=torch.float64)[:-1])
        start = end
    return torch.cat([*pieces, torch.ones(1, dtype=torch.float64)])


def _params(rbm: RBMParameters) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W, b, c in float64 on the CPU (annealing sums thousands of log-ratios)."""
    return tuple(t.detach().double().cpu() for t in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))


def _log_f(params, base: torch.Tensor, v: torch.Tensor, beta: float) -> torch.Tensor:
    w, b, c = params
    return (1 - beta) * (v @ base) + beta * (v @ b) + F.softplus(beta * (v @ w + c)).sum(-1)


def _sweep(params, base: torch.Tensor, v: torch.Tensor, beta: float, generator) -> torch.Tensor:
    w, b, c = params
    h = torch.bernoulli(torch.sigmoid(beta * (v @ w + c)), generator=generator)
    return torch.bernoulli(torch.sigmoid((1 - beta) * base + beta * (h @ w.T + b)), generator=generator)


def _log_z0(params, base: torch.Tensor) -> float:
    return params[0].shape[1] * math.log(2.0) + F.softplus(base).sum().item()  # H log 2 + sum softplus(b_A)


@torch.no_grad()
def ais_log_partition(rbm: RBMParameters, *, num_chains: int = 100, num_temperatures: int = 10_000,
                      base_bias: torch.Tensor | None = None, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> PartitionEstimate:
    """log Z of ``rbm`` by annealed importance sampling, with its standard error.

    ``num_temperatures`` equally spaced inverse temperatures (Salakhutdinov & Murray use 14,500,
    denser near 1); ``base_bias`` the base model's visible logits (:func:`base_visible_bias`);
    ``progress(k, num_temperatures)`` is called after each temperature, when given.
    """
    betas = _betas(num_temperatures)
    params = _params(rbm)
    base = (base_bias if base_bias is not None else torch.zeros(params[0].shape[0])).double()
    generator = torch.Generator().manual_seed(seed)
    v = torch.bernoulli(torch.sigmoid(base).expand(num_chains, -1), generator=generator)
    log_w = torch.zeros(num_chains, dtype=torch.float64)
    for k, (previous, beta) in enumerate(zip(betas[:-1].tolist(), betas[1:].tolist()), 1):
        log_w += _log_f(params, base, v, beta) - _log_f(params, base, v, previous)
        v = _sweep(params, base, v, beta, generator)
        if progress is not None:
            progress(k, num_temperatures)
    log_mean = torch.logsumexp(log_w, 0) - math.log(num_chains)
    ratio = torch.exp(log_w - log_mean)
    stderr = (ratio.std() / math.sqrt(num_chains)).item() if num_chains > 1 else math.inf
    return PartitionEstimate(_log_z0(params, base) + log_mean.item(), stderr, num_chains, num_temperatures)


@torch.no_grad()
def raise_log_likelihood(rbm: RBMParameters, x: torch.Tensor, *, num_chains: int = 10, num_temperatures: int = 10_000,
                         base_bias: torch.Tensor | None = None, seed: int = 0,
                         progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A conservative estimate of log p(x) per row by reverse annealing (RAISE), and its
    standard error per row (delta method over ``num_chains`` chains per row); ``progress(k,
    num_temperatures)`` is called after each of the K temperatures, when given."""
    params = _params(rbm)
    x = check_data(x, dim=params[0].shape[0], support="binary").detach().double().cpu()
    betas = _betas(num_temperatures).tolist()
    base = (base_bias if base_bias is not None else torch.zeros(params[0].shape[0])).double()
    generator = torch.Generator().manual_seed(seed)
    v = x.repeat_interleave(num_chains, 0)  # (N M, D): the chains of row n are rows n M ... n M + M - 1
    log_w = _log_f(params, base, v, 1.0) - _log_z0(params, base)
    for k in range(len(betas) - 1, 0, -1):  # v_{k-1} ~ T_k(. | v_k), then the terms of v_{k-1}
        v = _sweep(params, base, v, betas[k], generator)
        log_w += _log_f(params, base, v, betas[k - 1]) - _log_f(params, base, v, betas[k])
        if progress is not None:
            progress(num_temperatures - k + 1, num_temperatures)
    log_w = log_w.view(x.shape[0], num_chains)
    estimate = torch.logsumexp(log_w, 1) - math.log(num_chains)
    ratio = torch.exp(log_w - estimate.unsqueeze(1))
    stderr = ratio.std(1) / math.sqrt(num_chains) if num_chains > 1 else torch.full_like(estimate, math.inf)
    return estimate, stderr
