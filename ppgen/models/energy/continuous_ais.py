r"""log Z of a continuous energy by annealed importance sampling with Langevin (MALA) transitions.

For an unnormalised density :math:`f(x) = e^{-E(x)}` on a box :math:`B = [a, b]^D` (or on
:math:`\mathbb{R}^D`), :math:`Z = \int_B f(x)\, dx`. Annealed importance sampling (Neal 2001) starts
M chains from a normalised base :math:`p_0`, uniform on the box (or :math:`\mathcal{N}(\mu,
\mathrm{diag}\, s^2)` without one, :math:`Z_0 = 1`), and anneals along the geometric path

.. math::
    \log f_\beta(x) = (1 - \beta) \log p_0(x) - \beta E(x), \qquad 0 = \beta_0 < \dots < \beta_K = 1.

At each :math:`\beta_k` a chain first adds :math:`(\beta_k - \beta_{k-1}) (-E(x) - \log p_0(x))` to its
log weight, then takes ``mala_steps`` steps of the Metropolis-adjusted Langevin algorithm (Roberts
& Tweedie 1996), each leaving :math:`f_{\beta_k}` invariant: the proposal
:math:`x' = x + h \nabla \log f_\beta(x) + \sqrt{2h}\, \xi`, :math:`\xi \sim \mathcal{N}(0, I)`, is
accepted with probability :math:`\min\{1, f_\beta(x') q(x \mid x') / (f_\beta(x) q(x' \mid x))\}`
(outside the box :math:`f_\beta = 0`: rejected). The mean of the weights is unbiased for Z, so
:math:`\log \hat Z` errs low; its standard error is the delta method's, :math:`\mathrm{sd}(w / \bar w) / \sqrt{M}`.

The step size h is one for all chains, adapted after every step toward MALA's optimal acceptance
rate 0.574 (Roberts & Rosenthal 1998) from the share of chains that accepted. The temperatures follow
the sigmoid schedule of Grosse et al. (2013): :math:`\beta_k \propto \sigma(4 (2k/K - 1))`, rescaled to [0, 1].

References: R. M. Neal, "Annealed importance sampling", Statistics and Computing 2001; G. O. Roberts
and R. L. Tweedie, Bernoulli 1996; G. O. Roberts and J. S. Rosenthal, JRSS B 1998; R. Grosse,
C. Maddison and R. Salakhutdinov, "Annealing between distributions by averaging moments", NeurIPS 2013.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ppgen.checks import positive_int
from ppgen.models.energy.ais import PartitionEstimate

__all__ = ["ais_log_partition_continuous", "sigmoid_schedule", "TARGET_ACCEPTANCE"]

TARGET_ACCEPTANCE = 0.574  # MALA's optimal acceptance rate (Roberts & Rosenthal 1998)


def sigmoid_schedule(num_temperatures: int, sharpness: float = 4.0) -> list[float]:
    """0 = beta_0 < ... < beta_K = 1, denser at both ends: sigmoid(sharpness (2k/K - 1)) rescaled to [0, 1]."""
    positive_int(num_temperatures, "num_temperatures")
    s = torch.sigmoid(sharpness * (2 * torch.arange(num_temperatures + 1, dtype=torch.float64) / num_temperatures - 1))
    return ((s - s[0]) / (s[-1] - s[0])).tolist()


def _energy_and_grad(energy: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = energy(x)
        grad, = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@torch.no_grad()
def ais_log_partition_continuous(energy: Callable[[torch.Tensor], torch.Tensor], dim: int, *,
                                 bounds: tuple[float, float] | None = None,
                                 base: tuple[torch.Tensor, torch.Tensor] | None = None, num_chains: int = 100,
                                 num_temperatures: int = 1000, mala_steps: int = 1, seed: int = 0,
                                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                                 progress: Callable[[int, int], None] | None = None) -> PartitionEstimate:
    """log Z of ``energy`` (rows (M, dim) -> (M,)) by AIS with MALA, and its standard error.

    ``bounds`` (a, b): Z over the box, from the uniform base; None: Z over R^dim, from the Gaussian
    base ``base`` = (mean, standard deviation), each a number or a (dim,) tensor (default (0, 1)).
    The chains run in ``dtype`` on ``device``; the weights are summed in float64. ``progress(k,
    num_temperatures)`` is called after each temperature, when given.
    """
    dim, num_chains, mala_steps = (positive_int(v, n) for v, n in ((dim, "dim"), (num_chains, "num_chains"),
                                                                   (mala_steps, "mala_steps")))
    betas = sigmoid_schedule(num_temperatures)
    generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    like = dict(dtype=dtype, device=device)
    if bounds is not None:
        low, high = bounds
        if not high > low:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        x = low + (high - low) * torch.rand(num_chains, dim, generator=generator, **like)
        log_p0_const = -dim * math.log(high - low)

        def log_p0(x):
            return torch.full(x.shape[:-1], log_p0_const, **like)

        def grad_log_p0(x):
            return torch.zeros_like(x)

        spread = (high - low) / math.sqrt(12)
    else:
        loc, scale = (0.0, 1.0) if base is None else base
        loc, scale = (torch.as_tensor(v, **like).expand(dim) for v in (loc, scale))
        if not (scale > 0).all():
            raise ValueError("base's standard deviations must be positive")
        x = loc + scale * torch.randn(num_chains, dim, generator=generator, **like)
        log_norm = -0.5 * dim * math.log(2 * math.pi) - scale.log().sum()

        def log_p0(x):
            return log_norm - 0.5 * ((x - loc) / scale).pow(2).sum(-1)

        def grad_log_p0(x):
            return -(x - loc) / scale.pow(2)

        spread = scale.mean().item()

    def inside(x):
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if bounds is None else \
            ((x >= bounds[0]) & (x <= bounds[1])).all(-1)

    h = 0.5 * spread ** 2 * dim ** (-1 / 3)
    e, g = _energy_and_grad(energy, x)
    log_w = torch.zeros(num_chains, dtype=torch.float64, device=x.device)
    for k, (previous, beta) in enumerate(zip(betas[:-1], betas[1:]), 1):
        log_w += (beta - previous) * (-e - log_p0(x)).double()
        for _ in range(mala_steps):
            grad = (1 - beta) * grad_log_p0(x) - beta * g
            noise = torch.randn(x.shape, generator=generator, **like)
            proposal = x + h * grad + math.sqrt(2 * h) * noise
            e_new, g_new = _energy_and_grad(energy, proposal)
            grad_new = (1 - beta) * grad_log_p0(proposal) - beta * g_new
            log_q_forward = -noise.pow(2).sum(-1) / 2
            log_q_back = -(x - proposal - h * grad_new).pow(2).sum(-1) / (4 * h)
            log_ratio = ((1 - beta) * (log_p0(proposal) - log_p0(x)) - beta * (e_new - e)
                         + log_q_back - log_q_forward)
            u = torch.rand(num_chains, generator=generator, **like)
            accept = inside(proposal) & torch.isfinite(log_ratio) & (u.log() < log_ratio)
            x = torch.where(accept.unsqueeze(-1), proposal, x)
            e, g = torch.where(accept, e_new, e), torch.where(accept.unsqueeze(-1), g_new, g)
            h *= math.exp(accept.double().mean().item() - TARGET_ACCEPTANCE)
        if progress is not None:
            progress(k, num_temperatures)
    log_mean = torch.logsumexp(log_w, 0) - math.log(num_chains)
    ratio = torch.exp(log_w - log_mean)
    stderr = (ratio.std() / math.sqrt(num_chains)).item() if num_chains > 1 else math.inf
    return PartitionEstimate(log_mean.item(), stderr, num_chains, num_temperatures)
