r"""Flows inside a VAE: a learned flow prior p(z), and an inverse autoregressive flow guide q(z | x).

Both keep the VAE's story and change one distribution in it, so ``fit`` (trace ELBO),
``log_likelihood`` (IWAE) and ``elbo_report`` run them unchanged; the KL term has no closed
form any more and is estimated from the guide's samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, at_least_float32, num_rows
from ppgen.models.flows.base import FlowDistribution
from ppgen.models.flows.vector import MAF, _widths
from ppgen.models.latent.vae import VAE

__all__ = ["FlowPriorVAE", "IAFVAE"]


class FlowPriorVAE(VAE):
    r"""A VAE whose prior p(z) is a masked autoregressive flow, learned with the rest.

    Generative story, for each row n:

    .. math::
        u_n \sim \mathcal{N}(0, I_{d_z}), \qquad z_n = g_\psi^{-1}(u_n), \qquad
        x_n \mid z_n \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_n))),

    with :math:`g_\psi` a MAF (:class:`ppgen.models.flows.MAF`, ``num_levels=None``) so that
    :math:`\log p_\psi(z) = \log \mathcal{N}(g_\psi(z); 0, I) + \log|\det \partial g_\psi / \partial z|`
    exactly. The guide is the VAE's diagonal Gaussian, unchanged. A flexible prior lets the
    aggregate posterior :math:`\frac1N \sum_n q(z \mid x_n)` and the prior meet, which cuts the
    KL term of the ELBO (Chen et al. 2017; Tomczak and Welling 2018).

    References: X. Chen et al., "Variational Lossy Autoencoder", ICLR 2017 (an autoregressive
    flow prior); G. Papamakarios, T. Pavlakou and I. Murray, "Masked Autoregressive Flow for
    Density Estimation", NeurIPS 2017.

    Parameters
    ----------
    x_dim, z_dim, hidden, likelihood, architecture, channels
        As :class:`~ppgen.models.latent.vae.VAE`.
    prior_transforms : int
        Autoregressive layers of the prior's MAF.
    prior_hidden : int or sequence of int
        Hidden widths of each MADE in the prior.

    Examples
    --------
    >>> vae = FlowPriorVAE(784, z_dim=2, hidden=16, prior_transforms=2, prior_hidden=8)
    >>> vae.sample(3).shape
    torch.Size([3, 784])
    """

    def __init__(self, x_dim: int, z_dim: int = 50, hidden: int | Sequence[int] = 400,
                 likelihood: str = "bernoulli", architecture: str = "mlp", channels: Sequence[int] = (32, 64),
                 prior_transforms: int = 2, prior_hidden: int | Sequence[int] = 64):
        super().__init__(x_dim, z_dim, hidden, likelihood, architecture, channels)
        self.prior = MAF(z_dim, transforms=prior_transforms, hidden=_widths(prior_hidden), num_levels=None)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            z = pyro.sample("z", FlowDistribution(self.prior))  # batch shape broadcast by the plate(s)
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    def observation_log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Refused: AIS over a decoder's latents anneals from a N(0, I) prior, and this one is a flow."""
        raise NotImplementedError("FlowPriorVAE's prior p(z) is a flow, not the N(0, I) that AIS over the "
                                  "latents starts from; score it with method='iwae'")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prior=MAF(transforms={self.prior.transforms}, hidden={self.prior.hidden})"


class IAFVAE(VAE):
    r"""A VAE whose guide is a diagonal Gaussian followed by inverse autoregressive flow steps.

    Guide, for each row n (Kingma et al. 2016, Sec. 4): the encoder gives
    :math:`\mu(x_n), \sigma(x_n)` and a context :math:`h(x_n)`; then

    .. math::
        z^{(0)} = \mu + \sigma \odot \epsilon, \quad \epsilon \sim \mathcal{N}(0, I), \qquad
        z^{(t)} = \mu_t(z^{(t-1)}, h) + \sigma_t(z^{(t-1)}, h) \odot z^{(t-1)}, \quad t = 1..T,

    where :math:`(\mu_t, \log \sigma_t)` come from a MADE over :math:`z^{(t-1)}` that also sees
    :math:`h` (``ConditionalAutoRegressiveNN``), so each step's Jacobian is triangular and
    :math:`\log q(z^{(T)} \mid x) = \log \mathcal{N}(\epsilon) - \sum_d \log \sigma_d - \sum_{t,d} \log \sigma_{t,d}`.
    The flow's parameters are global (shared by all rows); it is conditioned on x through
    the context h. The ordering reverses between steps. The model is the VAE's, unchanged.

    The guide site ``"z"`` is a Pyro ``TransformedDistribution``: scoring the value it just
    sampled reads the cached inverse (one pass); scoring any other value inverts the flow in
    ``z_dim`` passes.

    References: D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever and M. Welling,
    "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.

    Parameters
    ----------
    x_dim, z_dim, hidden, likelihood, architecture, channels
        As :class:`~ppgen.models.latent.vae.VAE`.
    iaf_steps : int
        Flow steps T after the Gaussian.
    iaf_hidden : int or sequence of int
        Hidden widths of each step's MADE (each at least ``z_dim``).
    context_dim : int
        Size of the context h(x) that the encoder adds to its output.

    Examples
    --------
    >>> vae = IAFVAE(784, z_dim=2, hidden=16, iaf_steps=2, iaf_hidden=8, context_dim=4)
    >>> vae.sample(3).shape
    torch.Size([3, 784])
    """

    def __init__(self, x_dim: int, z_dim: int = 50, hidden: int | Sequence[int] = 400,
                 likelihood: str = "bernoulli", architecture: str = "mlp", channels: Sequence[int] = (32, 64),
                 iaf_steps: int = 2, iaf_hidden: int | Sequence[int] = 64, context_dim: int = 16):
        super().__init__(x_dim, z_dim, hidden, likelihood, architecture, channels)
        widths = _widths(iaf_hidden)
        if min(widths) < z_dim:
            raise ValueError(f"iaf_hidden widths must be at least z_dim={z_dim}, got {widths}")
        positive_int(iaf_steps, "iaf_steps")
        self.iaf_steps, self.iaf_hidden, self.context_dim = iaf_steps, widths, context_dim
        self.context = nn.Sequential(nn.ReLU(), nn.Linear(2 * z_dim, context_dim))  # h(x) from the encoder's output
        order = torch.arange(z_dim)
        self.iaf = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(
                z_dim, context_dim, list(widths), permutation=order if t % 2 == 0 else order.flip(0)))
            for t in range(iaf_steps))
        for t in self.iaf:  # start near the identity: the guide begins as the plain VAE's Gaussian
            with torch.no_grad():
                t.nn.layers[-1].weight.mul_(0.01)

    def posterior(self, x: torch.Tensor) -> dist.TransformedDistribution:
        """q(z | x) as a Pyro distribution with batch shape (N,) and event shape (z_dim,)."""
        out = at_least_float32(self.encoder(x))                   # (N, 2 z_dim)
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = torch.nn.functional.softplus(raw_scale) + 1e-5
        h = self.context(out)                                     # (N, context_dim)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [t.condition(h) for t in self.iaf])

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            raise ValueError("the guide q(z | x) needs x")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, num_samples: int = 32) -> torch.Tensor:
        """Posterior mean E_q[z | x] (Monte Carlo, ``num_samples`` draws), shape (N, z_dim)."""
        return self.posterior(self.check_data(x)).sample((num_samples,)).mean(0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iaf_steps={self.iaf_steps}, iaf_hidden={self.iaf_hidden}"
