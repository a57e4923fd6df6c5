r"""Gaussian diffusion (Ho et al. 2020): its math on :class:`DiffusionModel`, Ho et al.'s simple loss,
Nichol & Dhariwal's learned variances and hybrid loss, DDIM sampling and DDNM restoration."""

from __future__ import annotations

import types
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppgen.checks import image_shape_of, positive_int
from ppgen.models.base import at_least_float32, progress_bar
from ppgen.models.diffusion.base import DiffusionELBO, DiffusionModel
from ppgen.models.diffusion.discretised import DiscretisedGaussian, quantise
from ppgen.models.diffusion.schedules import gaussian_betas
from ppgen.models.diffusion.unet import UNet
from ppgen.models.objective import Objective

__all__ = ["GaussianDiffusion", "SimpleLoss", "HybridLoss", "LOSSES", "VARIANCES", "HYBRID_WEIGHT"]

LOSSES = ("elbo", "simple", "hybrid")
VARIANCES = ("beta", "posterior", "learned")
HYBRID_WEIGHT = 0.001  # lambda of Nichol & Dhariwal's L_hybrid = L_simple + lambda L_vlb (their Eq. 16)


def _gaussian_kl(mean_q, var_q, mean_p, var_p) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over the last dim; variances broadcast."""
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)
    return kl.sum(-1)


class GaussianDiffusion(DiffusionModel):
    r"""Denoising diffusion probabilistic model (DDPM) on images with 256 levels per pixel.

    Data rows hold pixel values in [0, 1] on the grid {0, 1/255, ..., 1} (``load_dataset("digits_grey")``
    divided by 255), flattened from (C, H, W); the model works on :math:`u = 2x - 1 \in [-1, 1]`.
    Generative story, for each row (T steps, :math:`\beta_t` the schedule,
    :math:`\alpha_t = 1 - \beta_t`, :math:`\bar\alpha_t = \prod_{s \le t}\alpha_s`):

    .. math::
        x_T \sim \mathcal{N}(0, I), \qquad
        x_{t-1} \mid x_t \sim \mathcal{N}\big(\mu_\theta(x_t, t), \sigma_t^2 I\big)\ (t = T, \dots, 2),
        \qquad x_0 \mid x_1 \sim \text{discretised } \mathcal{N}\big(\mu_\theta(x_1, 1), \sigma_1^2 I\big),

    :math:`\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}
    \epsilon_\theta(x_t, t)\big)` with the noise predicted by a U-Net, and fixed variances
    :math:`\sigma_t^2 = \beta_t` (``variance="beta"``) or :math:`\tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}
    {1 - \bar\alpha_t}\beta_t` (``"posterior"``; :math:`\tilde\beta_2` at t = 1, where :math:`\tilde\beta_1 = 0`),
    or variances learned per pixel (``"learned"``, Nichol & Dhariwal's Eq. 15): the network returns, beside
    :math:`\epsilon_\theta`, a raw :math:`r_\theta(x_t, t)` per pixel, mapped as in their code by
    :math:`v = (r + 1)/2` (unconstrained: :math:`r = 1` gives :math:`\beta_t`, :math:`r = -1` gives
    :math:`\tilde\beta_t`), and :math:`\sigma_t^2 = \exp(v\log\beta_t + (1 - v)\log\tilde\beta_t)`, with the
    same :math:`\tilde\beta_1 := \tilde\beta_2`. The decoder gives each of the 256 levels the Gaussian mass of
    its bin (Ho et al. Eq. 13), so the bound is on the probability of the discrete image. The guide is the
    fixed forward process :math:`q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)`: no parameters.

    The ELBO (in nats, per row) is :math:`-L_T - \sum_{t=2}^T L_{t-1} - L_0` with
    :math:`L_T = \mathrm{KL}(q(x_T|x_0)\,\|\,p(x_T))`, :math:`L_{t-1} = \mathbb{E}_q\,\mathrm{KL}(q(x_{t-1}|x_t,x_0)
    \,\|\,p_\theta(x_{t-1}|x_t))` (analytic Gaussian KLs) and :math:`L_0 = -\mathbb{E}_q \log p_\theta(x_0|x_1)`.
    Training (``loss="elbo"``, :class:`DiffusionELBO`) estimates it without bias from one step
    :math:`t \sim U\{1..T\}` per row, :math:`L_T + T\,L_{t-1}` (Ho et al. Eq. 5);
    ``loss="simple"`` (:class:`SimpleLoss`) is Ho et al.'s Eq. 14,
    :math:`\mathbb{E}_{t,\epsilon}\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 +
    \sqrt{1-\bar\alpha_t}\epsilon, t)\|^2`,
    a reweighted objective that is **not** a bound; it trains the mean only, so learned variances need
    ``loss="hybrid"`` (:class:`HybridLoss`, Nichol & Dhariwal's Eq. 16),
    :math:`L_\text{simple} + \lambda L_\text{vlb}` with :math:`\lambda = 0.001` and the ELBO's :math:`T L_{t-1}`
    at the same t and noise, its mean seen through a stop-gradient: :math:`L_\text{simple}` trains the mean,
    :math:`L_\text{vlb}` only the variances. It is not a bound either. (Their code averages both terms over
    the pixels and counts :math:`L_\text{vlb}` in bits; here both are sums over the pixels and
    :math:`L_\text{vlb}` is in nats, so their weight is :math:`\lambda/\ln 2` of ours.) ``loss="elbo"`` can
    draw t by importance (their Section 3.3): ``DiffusionELBO(program, importance_sampling=True)``.
    :meth:`estimate_log_likelihood` sums all T terms (one draw of :math:`x_t` per term): a lower bound on
    log p(x) whatever the loss trained (``ppgen.log_likelihood(model, x)`` reports it, with bits/dim).

    The Pyro program, the ELBO loss and the bound are :class:`~ppgen.models.diffusion.base.DiffusionModel`'s;
    this class writes the Gaussian math, Ho et al.'s simple loss, the hybrid loss, DDIM sampling and DDNM
    restoration. Learned variances enter every place :math:`\sigma_t^2` does (the reverse step, the step
    terms, the decoder, ancestral sampling, restoration); DDIM uses its own :math:`\sigma` (set by ``eta``).

    Parameters: those of the U-Net (:class:`~ppgen.models.diffusion.unet.UNet`); ``num_parameters``
    counts them.

    References: J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS
    2020; A. Nichol and P. Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021
    (cosine schedule, learned variances, the hybrid loss, importance-sampled steps); J. Song, C. Meng and
    S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (DDIM sampling); Y. Wang, J. Yu and J. Zhang,
    "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model", ICLR 2023 (DDNM, :meth:`restore`).

    Parameters
    ----------
    x_dim : int
        C*H*W.
    shape : (C, H, W), optional
        Default (1, 28, 28) for x_dim = 784 and (3, 28, 28) for x_dim = 2352 (``digits_colour``).
    num_steps : int
        T. The default 1000 is Ho et al.'s; training costs the same for any T, but sampling and
        the full bound cost T network passes per row (DDIM samples in fewer).
    schedule : {"linear", "cosine", "log-snr"} or sequence of float
        Ho et al.'s linear betas (scaled by 1000/T), Nichol & Dhariwal's cosine schedule, Kingma et
        al.'s log SNR linear in t (:func:`~ppgen.models.diffusion.schedules.log_snr_betas`: with
        ``variance="posterior"`` and ``loss="simple"`` it trains the ELBO, t uniform), or the T betas
        themselves, each in (0, 1).
    variance : {"beta", "posterior", "learned"}
        The fixed reverse variances :math:`\sigma_t^2`, or variances learned per pixel.
    loss : {"elbo", "simple", "hybrid"}
        What ``fit(elbo="auto")`` trains (:meth:`default_objective`): ``"hybrid"`` only with
        ``variance="learned"``, ``"simple"`` only with fixed variances.
    num_levels : int
        Levels per pixel of the data (256 for 8-bit images).
    network : nn.Module, optional
        :math:`\epsilon_\theta`, called as ``network(x_t, t)`` on rows (B, D) and steps (B,) in 1..T,
        returning (B, D), or (B, 2 D) with ``variance="learned"`` (the noise, then :math:`r`); default a
        :class:`UNet` of the image ``shape`` (with 2 C output channels for learned variances).
    **unet
        The default U-Net's keywords (without ``network``): ``channels`` (32), ``multipliers``
        ((1, 2, 2)), ``num_blocks`` (1), ``attention`` (True), ``dropout`` (0.0), ``fourier`` (()); see
        :class:`UNet`.

    Examples
    --------
    >>> model = GaussianDiffusion(784, num_steps=10, channels=8)
    >>> x = torch.rand(3, 784).mul(255).round() / 255
    >>> model.sample(2, method="ddim", steps=5).shape
    torch.Size([2, 784])
    >>> bound = model.nll_bound(x)  # nats per row, an upper bound on -log p(x)
    >>> bound.shape, bool((bound > 0).all())
    (torch.Size([3]), True)
    """

    data_support = "real"
    chain_support, observed_support = constraints.real, constraints.unit_interval
    check_sample_kwargs = types.MappingProxyType({"method": "ddim", "steps": 2})  # a cheap shape check

    def __init__(self, x_dim: int = 784, shape: Sequence[int] | None = None, num_steps: int = 1000,
                 schedule: str | Sequence[float] = "linear", variance: str = "beta", loss: str = "elbo",
                 num_levels: int = 256, network: nn.Module | None = None, **unet):
        super().__init__(x_dim, num_steps)
        self.shape = image_shape_of(x_dim, shape)
        if network is not None and unet:
            raise ValueError(f"give either network= or the default U-Net's keywords, not both; got network= and "
                             f"{', '.join(sorted(unet))}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if loss == "hybrid" and variance != "learned":
            raise ValueError(f"loss='hybrid' trains learned variances: it needs variance='learned', got "
                             f"variance={variance!r} (use loss='simple' or 'elbo' with fixed variances)")
        if loss == "simple" and variance == "learned":
            raise ValueError("loss='simple' leaves learned variances untrained (it scores the noise only): use "
                             "loss='hybrid' or 'elbo' with variance='learned'")
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
        self.variance, self.loss, self.num_levels = variance, loss, num_levels
        self.schedule = schedule if isinstance(schedule, str) else "custom"
        betas = gaussian_betas(schedule, num_steps)  # float64, (T,)
        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([betas.new_ones(1), alpha_bar[:-1]])
        posterior = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        clipped = betas.clone() if num_steps == 1 else torch.cat([posterior[1:2], posterior[1:]])  # beta~_1 := beta~_2
        # index t - 1 holds step t; index 0 of the *_prev buffers is alpha_bar_0 = 1. The complements 1 - alpha_bar
        # are kept apart, from float64: near 1 a float32 alpha_bar keeps only 1e-2 of 1 - alpha_bar = 2e-6 (log-snr)
        schedules = {"betas": betas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev,
                     "one_minus_alpha_bar": 1 - alpha_bar, "one_minus_alpha_bar_prev": 1 - alpha_bar_prev,
                     "posterior_variance": posterior}
        if variance == "learned":  # log sigma_t^2 between these two, per pixel
            schedules.update(max_log_variance=betas.log(), min_log_variance=clipped.log())
        else:
            schedules["sigma2"] = betas.clone() if variance == "beta" else clipped
        for name, value in schedules.items():
            self.register_schedule(name, value)
        self.out_dim = 2 * x_dim if variance == "learned" else x_dim
        if network is None:  # the learned variances' v as C more channels (out_channels: the first C are the noise)
            network = UNet(self.shape, out_channels=2 * self.shape[0] if variance == "learned" else None, **unet)
        self.network = network

    # --- the pieces of the chain (in [-1, 1] units; t is a (B,) tensor of steps in 1..T) -------

    def _at(self, buffer: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return buffer[t - 1].unsqueeze(-1)  # (B, 1)

    def to_chain(self, x: torch.Tensor) -> torch.Tensor:
        """Data in [0, 1] to the model's [-1, 1]."""
        return 2 * x - 1

    def predict(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""One network pass: the noise :math:`\epsilon_\theta(x_t, t)`, (B, D), and the reverse variance
        :math:`\sigma_t^2`: (B, 1) when fixed; (B, D) when learned, from the network's other D outputs
        :math:`r` as :math:`\exp(v \log\beta_t + (1 - v)\log\tilde\beta_t)` with :math:`v = (r + 1)/2`
        (Nichol & Dhariwal's Eq. 15 and their code's mapping of the raw output)."""
        out = at_least_float32(self.network(x_t, t))
        if out.shape != (x_t.shape[0], self.out_dim):
            what = "the noise and v" if self.variance == "learned" else "the noise"
            raise ValueError(f"network must return {self.out_dim} values per row ({what}, with "
                             f"variance={self.variance!r} and x_dim={self.x_dim}), got shape {tuple(out.shape)} "
                             f"for {x_t.shape[0]} rows")
        if self.variance != "learned":
            return out, self._at(self.sigma2, t)
        eps, raw = out.split(self.x_dim, dim=-1)
        v = (raw + 1) / 2
        log_var = v * self._at(self.max_log_variance, t) + (1 - v) * self._at(self.min_log_variance, t)
        return eps, log_var.exp()

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\epsilon_\theta(x_t, t)`, (B, D)."""
        return self.predict(x_t, t)[0]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r""":math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon`, a draw of q(x_t | x_0)."""
        return self._at(self.alpha_bar, t).sqrt() * x0 + self._at(self.one_minus_alpha_bar, t).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at(self.one_minus_alpha_bar, t).sqrt() * eps) / self._at(self.alpha_bar, t).sqrt()

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""Mean of q(x_{t-1} | x_t, x_0): :math:`\frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0
        + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t` (x_0 itself at t = 1)."""
        ab_prev, beta = self._at(self.alpha_bar_prev, t), self._at(self.betas, t)
        return ((ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * self._at(self.one_minus_alpha_bar_prev, t) * x_t)
                / self._at(self.one_minus_alpha_bar, t))

    def reverse_params(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\mu_\theta(x_t, t)`, (B, D), the posterior mean at the predicted :math:`\hat x_0` (the
        same as Ho et al.'s Eq. 11), and :math:`\sigma_t^2`, (B, 1) or (B, D) (:meth:`predict`)."""
        eps, var = self.predict(x_t, t)
        return self.posterior_mean(self.predict_x0(x_t, t, eps), x_t, t), var

    def reverse_mean(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\mu_\theta(x_t, t)` (:meth:`reverse_params`)."""
        return self.reverse_params(x_t, t)[0]

    # --- what DiffusionModel asks for ----------------------------------------------------------------

    def prior(self, n: int) -> dist.TorchDistribution:
        """p(x_T) = N(0, I)."""
        return dist.Normal(torch.zeros(n, self.x_dim, dtype=self.betas.dtype, device=self.betas.device),
                           1.0).to_event(1)

    def q_step(self, x_prev: torch.Tensor, t: int) -> dist.TorchDistribution:
        r""":math:`q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1 - \beta_t}\,x_{t-1}, \beta_t I)`."""
        beta = self.betas[t - 1]
        return dist.Normal((1 - beta).sqrt() * x_prev, beta.sqrt()).to_event(1)

    def step_draw(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        r"""The noise :math:`\epsilon \sim \mathcal{N}(0, I)` of :math:`x_t` = ``q_sample(x0, t, noise)``."""
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    def reverse_step(self, x_t: torch.Tensor, t: int) -> dist.TorchDistribution:
        """p_theta(x_{t-1} | x_t): Gaussian, or the discretised decoder at t = 1."""
        mean, var = self.reverse_params(x_t, self._steps(t, len(x_t), x_t.device))
        scale = var.sqrt().expand_as(mean)
        if t == 1:
            return DiscretisedGaussian(mean, scale, self.num_levels).to_event(1)
        return dist.Normal(mean, scale).to_event(1)

    def check_data(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """As :meth:`GenerativeModel.check_data`, and the values must lie in [0, 1]."""
        x = super().check_data(x, name)
        off = (x < 0) | (x > 1)
        if off.any():
            row, col = (int(i) for i in off.nonzero()[0])
            hint = " (divide 8-bit pixels by 255)" if x.max() > 1 else ""
            raise ValueError(f"{name} must hold pixel values in [0, 1]{hint}; found {x[row, col].item():g} at row "
                             f"{row}, column {col}")
        return x

    # --- the bound, term by term ---------------------------------------------------------------------

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per row, nats; ``x0`` in [-1, 1] units."""
        ab = self.alpha_bar[-1]
        return _gaussian_kl(ab.sqrt() * x0, 1 - ab, torch.zeros_like(x0), torch.ones_like(ab))

    def step_term(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r"""Per row: :math:`\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta(x_{t-1}|x_t))` for t >= 2 and
        :math:`-\log p_\theta(x_0|x_1)` for t = 1, at :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,`
        ``noise`` (``x0`` in [-1, 1] units, ``t`` (B,) steps)."""
        x_t = self.q_sample(x0, t, noise)
        return self._terms(x0, x_t, t, *self.reverse_params(x_t, t))

    def _terms(self, x0, x_t, t, mean, var) -> torch.Tensor:
        """:meth:`step_term` with the reverse step's ``mean`` and ``var`` given."""
        var = var.expand_as(mean)
        out = x0.new_empty(x0.shape[0])
        first = t == 1
        if first.any():
            decoder = DiscretisedGaussian(mean[first], var[first].sqrt(), self.num_levels, validate_args=False)
            out[first] = -decoder.log_prob((x0[first] + 1) / 2).sum(-1)
        later = ~first
        if later.any():
            tl = t[later]
            out[later] = _gaussian_kl(self.posterior_mean(x0[later], x_t[later], tl),
                                      self._at(self.posterior_variance, tl), mean[later], var[later])
        return out

    def simple_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Ho et al.'s L_simple per row (squared error summed over dimensions): not a bound."""
        x0 = self.to_chain(x)
        t = torch.randint(1, self.num_steps + 1, (x.shape[0],), device=x.device)
        noise = torch.randn_like(x0)
        return (noise - self.predict_noise(self.q_sample(x0, t, noise), t)).pow(2).sum(-1)

    def hybrid_terms(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per row, from one network pass at :math:`x_t` = ``q_sample(x0, t, noise)``: L_simple's
        :math:`\|\epsilon - \epsilon_\theta\|^2` and :meth:`step_term`'s value with the mean
        :math:`\mu_\theta` seen through a stop-gradient, so that only the variances learn from it
        (Nichol & Dhariwal, Section 3.1). Needs ``variance="learned"``."""
        if self.variance != "learned":
            raise ValueError(f"the hybrid loss trains learned variances: it needs variance='learned', this model "
                             f"has variance={self.variance!r}")
        x_t = self.q_sample(x0, t, noise)
        eps, var = self.predict(x_t, t)
        frozen = self.posterior_mean(self.predict_x0(x_t, t, eps.detach()), x_t, t)
        return (noise - eps).pow(2).sum(-1), self._terms(x0, x_t, t, frozen, var)

    def hybrid_loss(self, x: torch.Tensor) -> torch.Tensor:
        r"""Nichol & Dhariwal's :math:`L_\text{hybrid} = L_\text{simple} + \lambda L_\text{vlb}` per row
        (their Eq. 16, :math:`\lambda` = ``HYBRID_WEIGHT`` = 0.001), one :math:`t \sim U\{1..T\}` and one
        noise for both terms, :math:`L_\text{vlb}` estimated by :math:`T L_{t-1}` (:meth:`hybrid_terms`):
        not a bound."""
        x0 = self.to_chain(x)
        t = torch.randint(1, self.num_steps + 1, (x.shape[0],), device=x.device)
        simple, vlb = self.hybrid_terms(x0, t, torch.randn_like(x0))
        return simple + HYBRID_WEIGHT * self.num_steps * vlb

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        """:class:`DiffusionELBO` (``loss="elbo"``), :class:`SimpleLoss` (``"simple"``) or :class:`HybridLoss`
        (``"hybrid"``)."""
        return {"elbo": DiffusionELBO, "simple": SimpleLoss, "hybrid": HybridLoss}[self.loss](program,
                                                                                         precision=precision)

    # --- sampling ----------------------------------------------------------------------------------

    def _noise(self, n: int, generator) -> torch.Tensor:
        return torch.randn(n, self.x_dim, generator=generator, dtype=self.betas.dtype, device=self.betas.device)

    def ddim_steps(self, steps: int) -> list[int]:
        """The ``steps`` steps of a DDIM pass, evenly spaced in 1..T, from T down."""
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps must be an int (how many network passes), got {steps!r}")
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be between 1 and num_steps={self.num_steps}, got {steps}")
        grid = torch.linspace(self.num_steps, 1, steps).round().long().tolist()
        return sorted(set(grid), reverse=True)

    @torch.no_grad()
    def sample(self, n: int, y=None, *, method: str = "ancestral", steps: int | None = None, eta: float = 0.0,
               start: torch.Tensor | None = None, seed: int | None = None, progress=False) -> torch.Tensor:
        r"""``n`` new rows in [0, 1] on the pixel grid.

        ``method="ancestral"`` runs the model's reverse chain, T network passes (Ho et al. Alg. 2,
        with the discretised decoder at the end). ``"ddim"`` runs Song et al.'s sampler on ``steps``
        evenly spaced steps (default T): with :math:`\hat x_0` the prediction at :math:`x_t`
        (clipped to [-1, 1]) and :math:`\hat\epsilon` the matching noise,
        :math:`x_s = \sqrt{\bar\alpha_s}\hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2}\,\hat\epsilon + \sigma z`,
        :math:`\sigma = \eta\sqrt{(1-\bar\alpha_s)/(1-\bar\alpha_t)}\sqrt{1 - \bar\alpha_t/\bar\alpha_s}`;
        ``eta=0`` is deterministic given :math:`x_T`. ``start`` gives :math:`x_T` (n, D); ``seed``
        fixes the noise (default: the global RNG); ``progress``: True shows a bar, a callable gets
        ``(done, total)``.
        """
        n = positive_int(n, "n")
        if method not in ("ancestral", "ddim"):
            raise ValueError(f"method must be 'ancestral' or 'ddim', got {method!r}")
        if method == "ancestral" and (steps not in (None, self.num_steps) or eta != 0.0):
            raise ValueError("steps= and eta= are for method='ddim'; ancestral sampling runs all T steps")
        generator = None if seed is None else torch.Generator(self.betas.device).manual_seed(seed)
        h = self._noise(n, generator) if start is None else start.to(self.betas)
        if h.shape != (n, self.x_dim):
            raise ValueError(f"start must have shape ({n}, {self.x_dim}), got {tuple(h.shape)}")
        if method == "ancestral":
            return self._ancestral(h, self.num_steps, generator, progress)
        return self._ddim(h, self.ddim_steps(self.num_steps if steps is None else steps), eta, generator, progress)

    def _ancestral(self, h, top: int, generator, progress, project=None, final_noise: bool = True):
        n, bar = len(h), progress_bar(top, progress, "sampling")
        for t in range(top, 0, -1):
            steps = self._steps(t, n, h.device)
            eps, var = self.predict(h, steps)
            x0 = self.predict_x0(h, steps, eps)
            if project is not None:
                x0 = project(x0)
            h = self.posterior_mean(x0, h, steps)
            if t > 1 or final_noise:
                h = h + var.sqrt() * self._noise(n, generator)
            bar.update()
        bar.close()
        return quantise((h + 1) / 2, self.num_levels)

    def _ddim(self, h, schedule: list[int], eta: float, generator, progress, project=None) -> torch.Tensor:
        n, bar = len(h), progress_bar(len(schedule), progress, "DDIM")
        for i, t in enumerate(schedule):
            s = schedule[i + 1] if i + 1 < len(schedule) else 0
            steps = self._steps(t, n, h.device)
            ab_t, ab_s = self.alpha_bar[t - 1], self.alpha_bar_prev[s]  # alpha_bar_prev[0] = alpha_bar_0 = 1
            rest_t, rest_s = self.one_minus_alpha_bar[t - 1], self.one_minus_alpha_bar_prev[s]
            x0 = self.predict_x0(h, steps, self.predict_noise(h, steps)).clamp(-1, 1)
            if project is not None:
                x0 = project(x0)
            eps = (h - ab_t.sqrt() * x0) / rest_t.sqrt()
            sigma = eta * (rest_s / rest_t * (rest_t - rest_s) / ab_s).clamp(min=0).sqrt()
            h = ab_s.sqrt() * x0 + (rest_s - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0 and s > 0:
                h = h + sigma * self._noise(n, generator)
            bar.update()
        bar.close()
        return quantise((h + 1) / 2, self.num_levels)

    # --- inverse problems ---------------------------------------------------------------------------

    def noise_level_step(self, sigma: float) -> int:
        r"""The step t* whose noise-to-signal ratio :math:`\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}` is closest
        to ``2 sigma`` (``sigma`` in the data's [0, 1] units, doubled in the model's [-1, 1] units)."""
        ratio = (self.one_minus_alpha_bar / self.alpha_bar).sqrt()
        return int((ratio - 2 * sigma).abs().argmin()) + 1

    @torch.no_grad()
    def restore(self, y: torch.Tensor, operator, num_samples: int = 1, *, method: str = "ancestral",
                steps: int | None = None, eta: float = 0.0,
                progress=False) -> tuple[torch.Tensor, str] | None:
        r"""``num_samples`` restorations of each measured row y = A x (+ noise), (S, N, D) in [0, 1],
        and the method's name (``"DDNM"`` or ``"diffusion from the noise level"``); None for a noisy
        operator other than denoising.

        ``operator`` follows :class:`ppgen.inverse.Operator` (``task``, ``sigma``, ``check_y``,
        ``project(x, y)`` = :math:`A^+y + (I - A^+A)x` on rows in [0, 1]).

        - Noiseless operators (``sigma == 0``): DDNM (Wang et al. 2023). At every reverse step the
          predicted :math:`\hat x_0` (clipped to [-1, 1]) is replaced by ``project`` of it, so the
          sample keeps the part of :math:`\hat x_0` that A does not see and takes the rest from y;
          then the step is taken as usual (``method="ancestral"``, T steps, or ``"ddim"`` with
          ``steps`` and ``eta``). The last step returns the projected :math:`\hat x_0` without the
          decoder's noise (as Ho et al. display samples). For inpainting, whose projection only copies
          the observed pixels, A x = y up to the 8-bit rounding; for super-resolution and colourisation the
          projection can leave [0, 1] and the sample is clipped back, so A x = y only approximately
          (``ppgen.inverse.restore_summary`` reports the largest deviation as ``consistency``).
        - Denoising (``task == "denoise"``), y = x + sigma * eps (A = I): in [-1, 1] units y is
          :math:`u_0 + 2\sigma\epsilon`, so :math:`x_{t^*} = \sqrt{\bar\alpha_{t^*}}\,(2y - 1)` is distributed
          as :math:`q(x_{t^*} \mid x_0)` exactly when :math:`\sqrt{(1-\bar\alpha_{t^*})/\bar\alpha_{t^*}} = 2\sigma`;
          the reverse chain runs from the closest t* (:meth:`noise_level_step`) down to 0 (its last
          step without the decoder's noise).

        Other noisy operators have no method here (None). Measurements off the data's [0, 1] scale (8-bit
        pixels not divided by 255) are refused (:meth:`_check_scale`). Randomness comes from the global RNG
        (``ppgen.inverse.restore`` seeds it).
        """
        num_samples = positive_int(num_samples, "num_samples")
        if method not in ("ancestral", "ddim"):
            raise ValueError(f"method must be 'ancestral' or 'ddim', got {method!r}")
        sigma = float(operator.sigma)
        denoise = sigma > 0 and operator.task == "denoise"
        if sigma > 0 and not denoise:
            return None
        if not denoise and (steps is not None or eta != 0.0) and method != "ddim":
            raise ValueError("steps= and eta= are for method='ddim'")
        y = operator.check_y(y).to(self.betas)
        self._check_scale(y, sigma)
        if denoise and y.shape[1] != self.x_dim:
            raise ValueError(f"y has {y.shape[1]} columns, but the model has x_dim={self.x_dim}")
        top = self.noise_level_step(sigma) if denoise else self.num_steps
        schedule = self.ddim_steps(self.num_steps if steps is None else steps) if method == "ddim" else None

        def project(x0):  # all N rows at once: an operator may hold one mask per row
            return self.to_chain(operator.project((x0.clamp(-1, 1) + 1) / 2, y))

        out = []
        for _ in range(num_samples):
            if denoise:
                h = self.alpha_bar[top - 1].sqrt() * self.to_chain(y)
                out.append(self._ancestral(h, top, None, progress, final_noise=False) if schedule is None else
                           self._ddim(h, [top, *(t for t in schedule if t < top)], eta, None, progress))
            else:
                h = self._noise(len(y), None)
                out.append(self._ancestral(h, top, None, progress, project, final_noise=False)
                           if schedule is None else self._ddim(h, schedule, eta, None, progress, project))
        return torch.stack(out), "diffusion from the noise level" if denoise else "DDNM"  # (S, N, D)

    @staticmethod
    def _check_scale(y: torch.Tensor, sigma: float) -> None:
        """Refuse measurements off the data's [0, 1] scale: an average of pixels in [0, 1] lies in it, and
        with noise of std ``sigma`` within 8 sigma of it (outside with probability 1.2e-15 per value)."""
        slack = 8 * sigma
        off = (y < -slack) | (y > 1 + slack)
        if off.any():
            row, col = (int(i) for i in off.nonzero()[0])
            noise = f" up to the operator's noise ([{-slack:g}, {1 + slack:g}] at sigma={sigma:g})" if sigma else ""
            hint = " (divide 8-bit pixels by 255)" if y.max() > 1 + slack else ""
            raise ValueError(f"y must hold measurements on the model's pixel scale [0, 1]{noise}{hint}; found "
                             f"{y[row, col].item():g} at row {row}, column {col}")

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, shape={self.shape}, num_steps={self.num_steps}, schedule={self.schedule!r}, "
                f"variance={self.variance!r}, loss={self.loss!r}")


class SimpleLoss(Objective):
    """Ho et al.'s L_simple (Eq. 14), the unweighted noise-prediction error, scaled to the full data.
    It is **not** a bound on log p(x): ``fit``'s history shows minus this loss, not an ELBO."""

    estimator = "simple"
    likelihood = False

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        return scale * self.program.generative_model.simple_loss(x).sum()


class HybridLoss(Objective):
    """Nichol & Dhariwal's L_hybrid (Eq. 16): L_simple trains the mean, 0.001 L_vlb (through a stop-gradient
    on the mean) the learned variances; scaled to the full data. It is **not** a bound on log p(x):
    ``fit``'s history shows minus this loss, not an ELBO."""

    estimator = "hybrid"
    likelihood = False

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        return scale * self.program.generative_model.hybrid_loss(x).sum()
