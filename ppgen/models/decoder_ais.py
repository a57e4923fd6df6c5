r"""Log-likelihood of decoder-based models by annealed importance sampling over the latent space.

For a story z ~ N(0, I_k), x | z ~ p(x | z) (a VAE's decoder, or a GAN's generator given an
observation model), :func:`decoder_log_likelihood` estimates :math:`\log p(x) = \log \int p(z)
p(x \mid z)\, dz` per row, as Wu et al. (2017) do: chains start from the prior and anneal through
:math:`f_\beta(z) = p(z)\, p(x \mid z)^\beta`, with Hamiltonian Monte Carlo transitions (a few
leapfrog steps and a Metropolis correction, the step size adapted toward 65% acceptance) and
weights :math:`\log w = \sum_k (\beta_k - \beta_{k-1}) \log p(x \mid z_{k-1})`. The mean of the weights
is unbiased for p(x), so the log of it errs low (a stochastic lower bound), like IWAE's.

Reference: Y. Wu, Y. Burda, R. Salakhutdinov and R. Grosse, "On the quantitative analysis of
decoder-based generative models", ICLR 2017.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ppgen.checks import positive_int

__all__ = ["decoder_log_likelihood"]


def decoder_log_likelihood(log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                           z_dim: int, *, num_chains: int = 16, num_temperatures: int = 500, leapfrog: int = 10,
                           step_size: float = 0.05, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) per row by AIS with HMC, and its standard error per row.

    ``log_likelihood(z, x)`` returns log p(x | z) for latents z (..., k) and rows x broadcast
    against them, shape (...,). Returns (estimates (N,), standard errors (N,)). ``progress(k,
    num_temperatures)`` is called after each temperature, when given.
    """
    for value, name in ((num_chains, "num_chains"), (num_temperatures, "num_temperatures"), (leapfrog, "leapfrog")):
        positive_int(value, name)
    n = x.shape[0]
    rows = x.repeat_interleave(num_chains, 0)  # (N M, D)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    z = torch.randn(n * num_chains, z_dim, generator=generator, device=x.device, dtype=x.dtype)
    eps = torch.full((n * num_chains, 1), step_size, device=x.device, dtype=x.dtype)
    betas = torch.linspace(0, 1, num_temperatures + 1).tolist()
    log_w = torch.zeros(n * num_chains, device=x.device, dtype=torch.float64)

    def energy_and_grad(z, beta):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            energy = 0.5 * z.pow(2).sum(-1) - beta * log_likelihood(z, rows)
            grad, = torch.autograd.grad(energy.sum(), z)
        return energy.detach(), grad

    for k, (previous, beta) in enumerate(zip(betas[:-1], betas[1:]), 1):
        with torch.no_grad():
            log_w += (beta - previous) * log_likelihood(z, rows).double()
        energy, grad = energy_and_grad(z, beta)
        momentum = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        start_h = energy + 0.5 * momentum.pow(2).sum(-1)
        z_new, p = z, momentum - 0.5 * eps * grad
        for step in range(leapfrog):
            z_new = z_new + eps * p
            new_energy, new_grad = energy_and_grad(z_new, beta)
            p = p - (eps if step < leapfrog - 1 else 0.5 * eps) * new_grad
        new_h = new_energy + 0.5 * p.pow(2).sum(-1)
        accept = torch.rand(z.shape[0], generator=generator, device=z.device) < torch.exp(start_h - new_h).clamp(max=1)
        accept &= torch.isfinite(new_h)
        z = torch.where(accept.unsqueeze(-1), z_new.detach(), z)
        eps = eps * torch.where(accept, 1.02, 0.98).unsqueeze(-1).to(eps.dtype)  # toward ~65% acceptance
        if progress is not None:
            progress(k, num_temperatures)
    log_w = log_w.view(n, num_chains)
    estimate = torch.logsumexp(log_w, 1) - math.log(num_chains)
    ratio = torch.exp(log_w - estimate.unsqueeze(1))
    stderr = ratio.std(1) / math.sqrt(num_chains) if num_chains > 1 else torch.full_like(estimate, math.inf)
    return estimate, stderr
