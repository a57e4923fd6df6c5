"""The variational autoencoder of Kingma & Welling (2014), as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, at_least_float32, num_rows
from ppgen.models.latent.networks import IMAGE_SIDE, ConvDecoder, ConvEncoder, hidden_widths, mlp

__all__ = ["VAE", "mlp"]

LIKELIHOODS = ("bernoulli", "gaussian")
ARCHITECTURES = ("mlp", "conv")


class VAE(GenerativeModel):
    r"""Variational autoencoder with MLP or convolutional encoder and decoder.

    Generative story, for each row n:

    .. math::
        z_n \sim \mathcal{N}(0, I_{d_z}), \qquad
        x_n \mid z_n \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_n)))
        \quad\text{or}\quad \mathcal{N}(f_\theta(z_n), \mathrm{diag}(s^2)),

    with the amortised guide :math:`q_\phi(z_n \mid x_n) = \mathcal{N}(\mu_\phi(x_n),
    \mathrm{diag}\,\sigma_\phi(x_n)^2)`. :math:`f_\theta`, :math:`\mu_\phi`, :math:`\sigma_\phi`
    are MLPs with ReLU hidden layers (``architecture="mlp"``) or, for 28x28 images, two stride-2
    convolutions and their transposes (``"conv"``, DCGAN-style); :math:`\sigma_\phi` goes
    through a softplus. The Gaussian likelihood learns one scale :math:`s_d` per dimension.

    Parameters: MLP encoder ``(x_dim -> hidden... -> 2 z_dim)`` plus decoder
    ``(z_dim -> hidden... -> x_dim)`` weights and biases; conv encoder
    ``16 c1 + c1 + 16 c1 c2 + c2 + 49 c2 (2 z_dim) + 2 z_dim`` and a mirrored decoder
    (``num_parameters`` counts them).

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
    architecture : {"mlp", "conv"}
        MLP networks of widths ``hidden``, or convolutional networks with ``channels``
        (28x28 images only, ``x_dim = 784``).
    channels : pair of int
        Channels of the two convolutional layers (``architecture="conv"``).
    activation : {"relu", "tanh"}
        Between the MLP layers (Burda et al. 2016 use tanh).

    Examples
    --------
    >>> vae = VAE(784, z_dim=2, hidden=16)
    >>> vae.sample(3).shape
    torch.Size([3, 784])
    >>> vae.encode(torch.zeros(5, 784)).shape
    torch.Size([5, 2])
    >>> VAE(784, z_dim=2, architecture="conv", channels=(4, 8)).sample(3).shape
    torch.Size([3, 784])
    """

    def __init__(self, x_dim: int, z_dim: int = 50, hidden: int | Sequence[int] = 400,
                 likelihood: str = "bernoulli", architecture: str = "mlp",
                 channels: Sequence[int] = (32, 64), activation: str = "relu"):
        super().__init__(x_dim)
        hidden = hidden_widths(hidden)
        positive_int(z_dim, "z_dim")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if architecture == "conv":
            if x_dim != IMAGE_SIDE**2:
                raise ValueError(f"architecture='conv' is for 28x28 images (x_dim=784), got x_dim={x_dim}")
            channels = tuple(channels)
            if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
                raise ValueError(f"channels must be two positive ints, got {channels!r}")
        self.z_dim = z_dim
        self.hidden = tuple(hidden)
        self.likelihood = likelihood
        self.architecture = architecture
        self.activation = activation
        self.channels = tuple(channels)
        self.data_support = "binary" if likelihood == "bernoulli" else "real"
        if architecture == "conv":
            self.encoder = ConvEncoder(2 * z_dim, self.channels)
            self.decoder = ConvDecoder(z_dim, self.channels)
        else:
            self.encoder = mlp([x_dim, *hidden, 2 * z_dim], activation)
            self.decoder = mlp([z_dim, *reversed(hidden), x_dim], activation)
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(x_dim))
        self.register_buffer("prior_loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(z_dim), persistent=False)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            raise ValueError("the guide q(z | x) needs x")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            loc, scale = self.posterior_params(x)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def likelihood_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) as a distribution with event shape (x_dim,)."""
        out = at_least_float32(self.decoder(z))  # (..., x_dim)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.log_scale.exp()).to_event(1)

    def observation_log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) (...,) for latents z (..., z_dim) and rows x broadcast against them: what
        ``log_likelihood(vae, x, method="ais")`` anneals over, as for a GAN's generator."""
        return self.likelihood_dist(z).log_prob(x)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of q(z | x), each (N, z_dim)."""
        loc, raw_scale = at_least_float32(self.encoder(x)).chunk(2, dim=-1)
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

    @torch.no_grad()
    def latent_traversal(self, z: torch.Tensor, dim: int, values) -> torch.Tensor:
        """Decode ``z`` with coordinate ``dim`` set to each of ``values`` in turn.

        Parameters
        ----------
        z : Tensor (z_dim,) or (N, z_dim)
            The code(s) to start from, e.g. ``encode(x)``.
        dim : int
            Latent coordinate to vary.
        values : sequence of float or Tensor (V,)

        Returns
        -------
        Tensor (V, x_dim) for one code, (N, V, x_dim) for N codes: decoder means.
        """
        z = torch.as_tensor(z, dtype=torch.get_default_dtype())
        if z.dim() not in (1, 2) or z.shape[-1] != self.z_dim:
            raise ValueError(f"z must have shape (z_dim,) or (N, z_dim) with z_dim={self.z_dim}, "
                             f"got {tuple(z.shape)}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < self.z_dim:
            raise ValueError(f"dim must be an int in [0, {self.z_dim}), got {dim!r}")
        values = torch.as_tensor(values, dtype=z.dtype, device=z.device).reshape(-1)
        codes = z.unsqueeze(-2).repeat_interleave(len(values), dim=-2).clone()  # (..., V, z_dim)
        codes[..., dim] = values
        return self.decode(codes)

    def extra_repr(self) -> str:
        net = f"hidden={self.hidden}" + (f", activation={self.activation!r}" if self.activation != "relu" else "") \
            if self.architecture == "mlp" else f"architecture='conv', channels={self.channels}"
        return f"x_dim={self.x_dim}, z_dim={self.z_dim}, {net}, likelihood={self.likelihood!r}"
