r"""Binary (bit-flip) diffusion: the Bernoulli case of D3PM (Austin et al. 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import at_least_float32
from ppgen.models.diffusion.base import DiffusionModel
from ppgen.models.diffusion.schedules import binary_betas
from ppgen.models.diffusion.unet import TimeMLP

__all__ = ["BinaryDiffusion"]


def _bernoulli_kl(log_q1, log_q0, log_p1, log_p0) -> torch.Tensor:
    """KL(Bern(q) || Bern(p)) from log-probabilities, summed over the last dim."""
    return (log_q1.exp() * (log_q1 - log_p1) + log_q0.exp() * (log_q0 - log_p0)).sum(-1)


class BinaryDiffusion(DiffusionModel):
    r"""Diffusion on binary rows by bit flips, with an x_0-parameterised reverse model.

    Forward process (the guide, no parameters): each bit flips with probability :math:`\beta_t`,
    :math:`q(x_t \mid x_{t-1}) = \mathrm{Bern}(x_t;\, x_{t-1}(1-\beta_t) + (1-x_{t-1})\beta_t)`, so that
    :math:`q(x_t \mid x_0)` flips with probability :math:`\gamma_t = (1 - \bar\alpha_t)/2`,
    :math:`\bar\alpha_t = \prod_{s\le t}(1 - 2\beta_s)`. Generative story, per row and bit d:

    .. math::
        x_T \sim \mathrm{Bern}(1/2), \qquad
        p_\theta(x_{t-1} \mid x_t) = \sum_{\tilde x_0 \in \{0,1\}} q(x_{t-1} \mid x_t, \tilde x_0)\,
        \tilde p_\theta(\tilde x_0 \mid x_t)\ (t = T..2), \qquad
        p_\theta(x_0 \mid x_1) = \tilde p_\theta(x_0 \mid x_1),

    with :math:`\tilde p_\theta(\tilde x_{0,d} = 1 \mid x_t) = \sigma\big(f_\theta(x_t, t)_d +
    (2x_{t,d} - 1)\log\frac{1-\gamma_t}{\gamma_t}\big)` factorised over bits, :math:`f_\theta` an MLP
    (:class:`~ppgen.models.diffusion.unet.TimeMLP`) on :math:`2x_t - 1` and the step; the second term is
    the posterior logit of :math:`x_0` given :math:`x_t` under a uniform :math:`x_0` (near-certain
    for small t), so the network learns only a correction to it (without it, a 60-second run on the
    embedded digits ends near -430 nats, with it near -115). The ELBO in nats,
    :math:`-L_T - \sum_{t=2}^T L_{t-1} - L_0`, has closed-form Bernoulli KLs for :math:`L_T` and
    :math:`L_{t-1} = \mathbb{E}_q\,\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta(x_{t-1}|x_t))`, and
    :math:`L_0 = -\mathbb{E}_q\log p_\theta(x_0|x_1)`; it is comparable
    with the log-likelihoods of FVSBN, NADE, MADE and the VAE's ELBO on the same rows. Training
    (:class:`~ppgen.models.diffusion.DiffusionELBO`) draws one step per row, :math:`L_T + T\,L_{t-1}`;
    :meth:`nll_bound` sums all T terms (``ppgen.log_likelihood`` reports it).

    The Pyro program, the losses, the bound and ancestral sampling are
    :class:`~ppgen.models.diffusion.base.DiffusionModel`'s; this class writes the math above.

    Parameters: those of the MLP, ``num_parameters`` counts them.

    References: J. Austin, D. D. Johnson, J. Ho, D. Tarlow and R. van den Berg, "Structured
    Denoising Diffusion Models in Discrete State-Spaces", NeurIPS 2021; J. Sohl-Dickstein et al.,
    "Deep Unsupervised Learning using Nonequilibrium Thermodynamics", ICML 2015 (binomial diffusion).

    Parameters
    ----------
    x_dim : int
    num_steps : int
        T (default 1000); the full bound and ancestral sampling cost T network passes per row.
    schedule : {"cosine", "linear"} or sequence of float
        Flip probabilities (:func:`~ppgen.models.diffusion.schedules.binary_betas`), each in (0, 1/2].
    hidden : sequence of int
        Widths of the MLP's hidden layers.
    network : nn.Module, optional
        :math:`f_\theta`, called as ``network(2 x_t - 1, t)`` on rows (B, D) and steps (B,) in 1..T,
        returning logits (B, D).

    Examples
    --------
    >>> model = BinaryDiffusion(6, num_steps=4, hidden=(16,))
    >>> model.sample(3).shape
    torch.Size([3, 6])
    >>> model.nll_bound(torch.ones(2, 6)).shape
    torch.Size([2])
    """

    data_support = "binary"
    chain_support = observed_support = constraints.boolean

    def __init__(self, x_dim: int, num_steps: int = 1000, schedule: str | Sequence[float] = "cosine",
                 hidden: Sequence[int] = (512, 512), network: nn.Module | None = None):
        super().__init__(x_dim, num_steps)
        self.schedule = schedule if isinstance(schedule, str) else "custom"
        self.register_schedule("betas", binary_betas(schedule, self.num_steps))
        self.network = network if network is not None else TimeMLP(x_dim, x_dim, hidden=tuple(hidden))

    @property
    def flip(self) -> torch.Tensor:
        """gamma_0 = 0, gamma_1, ..., gamma_T: the flip probabilities of q(x_t | x_0), computed from
        ``betas`` in float64 (so that they agree with the step-by-step chain in any dtype)."""
        alpha_bar = torch.cumprod(1 - 2 * self.betas.double(), 0)
        return torch.cat([alpha_bar.new_zeros(1), (1 - alpha_bar) / 2]).to(self.betas.dtype)

    def x0_logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""Logits of :math:`\tilde p_\theta(\tilde x_0 = 1 \mid x_t)`, (B, D): the network's output plus
        :math:`(2x_t - 1)\log\frac{1-\gamma_t}{\gamma_t}`, the logit of x_0 given x_t alone when x_0 is
        uniform, so the network learns a correction to "x_0 is x_t up to the flips so far"."""
        flip = self.flip[t].unsqueeze(-1)
        prior = torch.log1p(-flip) - torch.log(flip.clamp(min=torch.finfo(flip.dtype).tiny))
        return at_least_float32(self.network(2 * x_t - 1, t)) + (2 * x_t - 1) * prior

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t = 1 | x_0), (B, D); t may be 0."""
        g = self.flip[t].unsqueeze(-1)
        return x0 * (1 - g) + (1 - x0) * g

    def _log_posterior(self, x_t, x0, t):
        """log q(x_{t-1} = 1 | x_t, x_0) and log q(x_{t-1} = 0 | x_t, x_0), for t >= 2."""
        beta = self.betas[t - 1].unsqueeze(-1)
        g1 = self.q_probs(x0, t - 1)  # q(x_{t-1} = 1 | x_0)
        log_f1 = torch.log(x_t * (1 - beta) + (1 - x_t) * beta)  # q(x_t | x_{t-1} = 1)
        log_f0 = torch.log(x_t * beta + (1 - x_t) * (1 - beta))
        a1, a0 = log_f1 + torch.log(g1), log_f0 + torch.log1p(-g1)
        norm = torch.logaddexp(a1, a0)
        return a1 - norm, a0 - norm

    def _log_reverse(self, x_t, t, logits):
        """log p_theta(x_{t-1} = 1 | x_t) and log p_theta(x_{t-1} = 0 | x_t), for t >= 2."""
        one, zero = torch.ones_like(x_t), torch.zeros_like(x_t)
        post1_if1, post0_if1 = self._log_posterior(x_t, one, t)
        post1_if0, post0_if0 = self._log_posterior(x_t, zero, t)
        log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
        return (torch.logaddexp(log_p1 + post1_if1, log_p0 + post1_if0),
                torch.logaddexp(log_p1 + post0_if1, log_p0 + post0_if0))

    # --- what DiffusionModel asks for ----------------------------------------------------------------

    def prior(self, n: int) -> dist.TorchDistribution:
        """p(x_T): fair coins."""
        return dist.Bernoulli(torch.full((n, self.x_dim), 0.5, dtype=self.betas.dtype,
                                         device=self.betas.device)).to_event(1)

    def q_step(self, x_prev: torch.Tensor, t: int) -> dist.TorchDistribution:
        """q(x_t | x_{t-1}): each bit flips with probability beta_t."""
        beta = self.betas[t - 1]
        return dist.Bernoulli(probs=x_prev * (1 - beta) + (1 - x_prev) * beta).to_event(1)

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, generator=None) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0)."""
        probs = self.q_probs(x0, self._steps(t, len(x0), x0.device))
        return (torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
                < probs).to(probs.dtype)

    step_draw = q_sample  # step_term takes x_t itself

    def reverse_step(self, x_t: torch.Tensor, t: int) -> dist.TorchDistribution:
        """p_theta(x_{t-1} | x_t): the forward posteriors mixed by the predicted x_0; at t = 1 the
        predicted x_0 itself."""
        steps = self._steps(t, len(x_t), x_t.device)
        logits = self.x0_logits(x_t, steps)
        if t == 1:
            return dist.Bernoulli(logits=logits).to_event(1)
        return dist.Bernoulli(probs=self._log_reverse(x_t, steps, logits)[0].exp()).to_event(1)

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || Bern(1/2)) per row, nats."""
        q1 = self.q_probs(x0, self._steps(self.num_steps, len(x0), x0.device))
        half = torch.full_like(q1, -math.log(2))
        return _bernoulli_kl(torch.log(q1), torch.log1p(-q1), half, half)

    def step_term(self, x0: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        r"""Per row, at a given :math:`x_t`: :math:`\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta(x_{t-1}|x_t))`
        for t >= 2 and :math:`-\log p_\theta(x_0|x_1)` for t = 1."""
        logits = self.x0_logits(x_t, t)
        out = x0.new_empty(x0.shape[0])
        first = t == 1
        if first.any():
            out[first] = F.binary_cross_entropy_with_logits(logits[first], x0[first], reduction="none").sum(-1)
        later = ~first
        if later.any():
            tl = t[later]
            q1, q0 = self._log_posterior(x_t[later], x0[later], tl)
            p1, p0 = self._log_reverse(x_t[later], tl, logits[later])
            out[later] = _bernoulli_kl(q1, q0, p1, p0)
        return out

    # --- inpainting ------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, y=None, *, seed: int | None = None, progress=False,
               known: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` rows by the reverse chain (T network passes). With ``known`` (n, D) and a boolean
        ``mask`` (D,) or (n, D), the masked bits are inpainted by replacement: before every step the
        known bits of x_t are set to a draw of q(x_t | x_0 = known) (Lugmayr et al. 2022 without
        resampling), and x_0 keeps them."""
        if (known is None) != (mask is None):
            raise ValueError("inpainting needs both known= (rows) and mask= (True where a bit is known)")
        if known is None:
            return super().sample(n, seed=seed, progress=progress)
        n = positive_int(n, "n")
        known = self.check_data(known, "known")
        if len(known) != n:
            raise ValueError(f"known has {len(known)} rows, but n is {n}")
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.betas.device).expand(n, self.x_dim)
        with self._seeded(seed):
            h = self.reverse_chain(self.prior(n).sample(), progress=progress,
                                   replace=lambda h, t: torch.where(mask, self.q_sample(known, t), h))
        return torch.where(mask, known, h)

    @torch.no_grad()
    def restore(self, y: torch.Tensor, operator, num_samples: int = 1, *,
                progress=False) -> tuple[torch.Tensor, str] | None:
        """Inpainting by replacement for a noiseless ``ppgen.inverse.Inpaint`` (``operator.task ==
        "inpaint"``, ``operator.sigma == 0``): ``num_samples`` draws per row (S, N, D) of :meth:`sample`
        with the observed bits as ``known``, and the name ``"replacement"``; None for other operators.
        The draws follow the reverse chain with the known bits forced to their forward-process
        marginals; they are not exact draws of p(x_missing | x_observed) (Lugmayr et al. 2022 resample
        to get closer)."""
        num_samples = positive_int(num_samples, "num_samples")
        if operator.task != "inpaint" or operator.sigma:
            return None
        y = operator.check_y(y).to(self.betas)
        mask = operator.mask_for(y)
        known = self.check_data(torch.where(mask, y, torch.zeros_like(y)), "y").repeat(num_samples, 1)
        drawn = self.sample(len(known), known=known, mask=mask.repeat(num_samples, 1), progress=progress)
        return drawn.reshape(num_samples, len(y), self.x_dim), "replacement"

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, num_steps={self.num_steps}, schedule={self.schedule!r}"
