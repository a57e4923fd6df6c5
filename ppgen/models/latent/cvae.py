"""The conditional VAE of Sohn, Lee & Yan (2015): a VAE whose decoder and encoder see a label."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, at_least_float32
from ppgen.models.latent.networks import hidden_widths, mlp
from ppgen.models.latent.vae import LIKELIHOODS

__all__ = ["ConditionalVAE"]


class ConditionalVAE(GenerativeModel):
    r"""Conditional variational autoencoder: p(x | y) = ∫ p(x | y, z) p(z) dz.

    Generative story, for each row n with class label :math:`y_n \in \{0, \dots, C-1\}`
    (one-hot :math:`e_{y_n}`):

    .. math::
        z_n \sim \mathcal{N}(0, I_{d_z}), \qquad
        x_n \mid y_n, z_n \sim \mathrm{Bernoulli}(\sigma(f_\theta([z_n, e_{y_n}])))
        \quad\text{or}\quad \mathcal{N}(f_\theta([z_n, e_{y_n}]), \mathrm{diag}(s^2)),

    with the guide :math:`q_\phi(z_n \mid x_n, y_n) = \mathcal{N}(\mu_\phi([x_n, e_{y_n}]),
    \mathrm{diag}\,\sigma_\phi([x_n, e_{y_n}])^2)`. The label is observed, not modelled: the
    likelihood is that of x given y, and sampling needs y.

    Parameters: encoder ``(x_dim + y_dim -> hidden... -> 2 z_dim)`` and decoder
    ``(z_dim + y_dim -> hidden... -> x_dim)`` MLPs (``num_parameters`` counts them).

    References: K. Sohn, H. Lee and X. Yan, "Learning Structured Output Representation using
    Deep Conditional Generative Models", NeurIPS 2015; D. P. Kingma, D. J. Rezende, S. Mohamed
    and M. Welling, "Semi-Supervised Learning with Deep Generative Models" (M2), NeurIPS 2014.

    Parameters
    ----------
    x_dim : int
    y_dim : int
        Number of classes C; labels are ints in [0, C).
    z_dim : int
    hidden : int or sequence of int
    likelihood : {"bernoulli", "gaussian"}

    Examples
    --------
    >>> cvae = ConditionalVAE(784, 10, z_dim=2, hidden=16)
    >>> cvae.sample(4, y=7).shape
    torch.Size([4, 784])
    >>> cvae.encode(torch.zeros(3, 784), torch.tensor([0, 1, 2])).shape
    torch.Size([3, 2])
    """

    def __init__(self, x_dim: int, y_dim: int, z_dim: int = 20, hidden: int | Sequence[int] = 400,
                 likelihood: str = "bernoulli"):
        super().__init__(x_dim)
        hidden = hidden_widths(hidden)
        for value, name in ((y_dim, "y_dim"), (z_dim, "z_dim")):
            positive_int(value, name)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.y_dim, self.z_dim, self.hidden, self.likelihood = y_dim, z_dim, tuple(hidden), likelihood
        self.data_support = "binary" if likelihood == "bernoulli" else "real"
        self.encoder = mlp([x_dim + y_dim, *hidden, 2 * z_dim])
        self.decoder = mlp([z_dim + y_dim, *reversed(hidden), x_dim])
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(x_dim))
        self.register_buffer("prior_loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(z_dim), persistent=False)

    def model(self, x=None, y=None, *, size=None):
        y = self._one_hot(y)
        with pyro.plate(DATA_PLATE, y.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            return pyro.sample("x", self.likelihood_dist(z, y), obs=x)

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            raise ValueError("the guide q(z | x, y) needs x")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            loc, scale = self._posterior_params(x, self._one_hot(y))
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def likelihood_dist(self, z: torch.Tensor, y_one_hot: torch.Tensor) -> dist.TorchDistribution:
        """p(x | y, z) with event shape (x_dim,); ``y_one_hot`` (N, y_dim) broadcasts over z's particles."""
        out = at_least_float32(self.decoder(torch.cat([z, y_one_hot.expand(*z.shape[:-1], -1)], -1)))  # (..., x_dim)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.log_scale.exp()).to_event(1)

    def _posterior_params(self, x: torch.Tensor, y_one_hot: torch.Tensor):
        loc, raw_scale = at_least_float32(self.encoder(torch.cat([x, y_one_hot], -1))).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-5

    def _one_hot(self, y) -> torch.Tensor:
        if y is None:
            raise ValueError("ConditionalVAE needs the labels y (ints in [0, y_dim))")
        y = torch.as_tensor(y)
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must be a 1-D tensor of int labels, got dtype {y.dtype} and shape {tuple(y.shape)}")
        if len(y) and (y.min() < 0 or y.max() >= self.y_dim):
            raise ValueError(f"y must hold labels in [0, {self.y_dim}), found {int(y.min())}..{int(y.max())}")
        return F.one_hot(y, self.y_dim).to(self.prior_loc.dtype)

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """``n`` observations of class ``y`` (an int, or a tensor of ``n`` labels), shape (n, x_dim)."""
        return super().sample(positive_int(n, "n"), self._labels(n, y))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y) -> torch.Tensor:
        """Mean of p(x | y, z) for codes z (N, z_dim) and labels y (an int or N labels)."""
        return self.likelihood_dist(z, self._one_hot(self._labels(z.shape[0], y))).mean

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y) -> torch.Tensor:
        """Posterior mean E_q[z | x, y], shape (N, z_dim)."""
        x = self.check_data(x)
        return self._posterior_params(x, self._one_hot(self._labels(x.shape[0], y)))[0]

    def _labels(self, n: int, y) -> torch.Tensor:
        if isinstance(y, int) and not isinstance(y, bool):
            return torch.full((n,), y, dtype=torch.long, device=self.prior_loc.device)
        if y is None:
            raise ValueError("ConditionalVAE needs the labels y: an int class or a tensor of labels")
        y = torch.as_tensor(y, device=self.prior_loc.device)
        if y.shape != (n,):
            raise ValueError(f"y must hold {n} labels, got shape {tuple(y.shape)}")
        return y

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, y_dim={self.y_dim}, z_dim={self.z_dim}, hidden={self.hidden}, "
                f"likelihood={self.likelihood!r}")
