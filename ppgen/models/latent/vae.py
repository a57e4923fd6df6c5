"""The variational autoencoder of Kingma & Welling (2014), as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.models.base import GenerativeModel, num_rows

__all__ = ["VAE", "mlp"]

LIKELIHOODS = ("bernoulli", "gaussian")


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class VAE(GenerativeModel):
    r"""Variational autoencoder with MLP encoder and decoder.

    Generative story, for each row n:

    .. math::
        z_n \sim \mathcal{N}(0, I_{d_z}), \qquad
        x_n \mid z_n \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_n)))
        \quad\text{or}\quad \mathcal{N}(f_\theta(z_n), \mathrm{diag}(s^2)),

    with the amortised guide :math:`q_\phi(z_n \mid x_n) = \mathcal{N}(\mu_\phi(x_n),
    \mathrm{diag}\,\sigma_\phi(x_n)^2)`. :math:`f_\theta`, :math:`\mu_\phi`, :math:`\sigma_\phi`
    are MLPs with ReLU hidden layers; :math:`\sigma_\phi` goes through a softplus. The Gaussian
    likelihood learns one scale :math:`s_d` per dimension.

    Parameters: encoder ``(x_dim -> hidden... -> 2 z_dim)`` plus decoder
    ``(z_dim -> hidden... -> x_dim)`` weights and biases (``num_parameters`` counts them).

    References: D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.

    Parameters
    ----------
    x_dim : int
        Dimension of an observation.
    z_dim : int
        Dimension of the latent code.
    hidden : int or sequence of int
        Widths of the hidden layers (mirrored in the decoder).
    likelihood : {"bernoulli", "gaussian"}
        p(x | z).

    Examples
    --------
    >>> vae = VAE(784, z_dim=2, hidden=16)
    >>> vae.sample(3).shape
    torch.Size([3, 784])
    >>> vae.encode(torch.zeros(5, 784)).shape
    torch.Size([5, 2])
    """

    def __init__(self, x_dim: int, z_dim: int = 50, hidden: int | Sequence[int] = 400,
                 likelihood: str = "bernoulli"):
        super().__init__(x_dim)
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"z_dim must be a positive int, got {z_dim!r}")
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be positive ints, got {hidden!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.z_dim = z_dim
        self.hidden = tuple(hidden)
        self.likelihood = likelihood
        self.data_support = "binary" if likelihood == "bernoulli" else "real"
        self.encoder = mlp([x_dim, *hidden, 2 * z_dim])
        self.decoder = mlp([z_dim, *reversed(hidden), x_dim])
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(x_dim))
        self.register_buffer("prior_loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(z_dim), persistent=False)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate("data", num_rows(x, y, size)):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            raise ValueError("the guide q(z | x) needs x")
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.posterior_params(x)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def likelihood_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) as a distribution with event shape (x_dim,)."""
        out = self.decoder(z)  # (..., x_dim)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.log_scale.exp()).to_event(1)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z | x), each (N, z_dim)."""
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-5

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean E_q[z | x], shape (N, z_dim)."""
        return self.posterior_params(self.check_data(x))[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z): pixel probabilities (Bernoulli) or locations (Gaussian)."""
        return self.likelihood_dist(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at z = E_q[z | x]."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, z_dim={self.z_dim}, hidden={self.hidden}, "
                f"likelihood={self.likelihood!r}")
