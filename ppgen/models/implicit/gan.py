r"""Generative adversarial networks: an implicit story with a sampler and no density.

.. math::
    z \sim \mathcal{N}(0, I_k), \qquad x = G_\theta(z),

written as a Pyro program (``z`` a sample site in the data plate, ``x`` a deterministic site), so
``poutine.trace`` and ``Predictive`` work on it. There is no p(x) to observe: the generator is
trained against a discriminator (critic) D_phi by :class:`AdversarialObjective`, two parameter
groups with one optimiser each in the unchanged :func:`ppgen.fit` loop:

- ``"nonsaturating"`` (Goodfellow et al. 2014): D minimises
  :math:`\mathrm{softplus}(-D(x)) + \mathrm{softplus}(D(G(z)))`, G minimises :math:`\mathrm{softplus}(-D(G(z)))`;
- ``"wgan-gp"`` (Gulrajani et al. 2017): the critic minimises :math:`D(G(z)) - D(x) + \lambda
  (\lVert \nabla D(\hat x) \rVert - 1)^2` at random interpolates :math:`\hat x`, G minimises :math:`-D(G(z))`.

References: I. Goodfellow et al., "Generative adversarial nets", NeurIPS 2014; I. Gulrajani et
al., "Improved training of Wasserstein GANs", NeurIPS 2017; A. Radford, L. Metz and S. Chintala,
"Unsupervised representation learning with deep convolutional GANs" (DCGAN), ICLR 2016.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.objective import Objective
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, LikelihoodEstimate, num_rows
from ppgen.models.latent.networks import hidden_widths

__all__ = ["GAN", "AdversarialObjective", "LOSSES"]

LOSSES = ("nonsaturating", "wgan-gp")


def _mlp(sizes, activation: type[nn.Module]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _dcgan(z_dim: int, channels: int) -> tuple[nn.Module, nn.Module]:
    """DCGAN-style networks for 28x28 images (Radford et al. 2016), sized for a CPU: a generator
    z -> (2c, 7, 7) -> (c, 14, 14) -> (1, 28, 28) by strided transposed convolutions with batch
    norm, and the mirror-image discriminator with leaky ReLUs."""
    c = channels
    generator = nn.Sequential(
        nn.Linear(z_dim, 2 * c * 49), nn.Unflatten(-1, (2 * c, 7, 7)), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Flatten())
    discriminator = nn.Sequential(
        nn.Unflatten(-1, (1, 28, 28)), nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * c * 49, 1))
    return generator, discriminator


class _Batched(nn.Module):
    """Run a network over any leading batch shape (particles, chains) by flattening it."""

    def __init__(self, net: nn.Module, in_dim: int):
        super().__init__()
        self.net, self.in_dim = net, in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.reshape(-1, self.in_dim))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class GAN(GenerativeModel):
    r"""A GAN with MLP networks, or DCGAN-style convolutional ones for 28x28 digits.

    Parameters: generator ``(k -> hidden... -> D)`` and discriminator ``(D -> hidden... -> 1)``
    weights and biases (``architecture="mlp"``), or the convolutional pair of
    ``architecture="dcgan"`` with ``channels`` filters (D = 784). ``output`` is ``"sigmoid"`` for
    pixels in [0, 1] (digits) or ``"identity"`` for unbounded data (the 2-D toy mixtures).

    Examples
    --------
    >>> gan = GAN(2, z_dim=2, hidden=8, output="identity")
    >>> gan.sample(5).shape
    torch.Size([5, 2])
    """

    data_support = "real"
    likelihood_method = "ais"  # estimate_log_likelihood: AIS over z under an observation model

    def __init__(self, x_dim: int, z_dim: int = 64, hidden=256, output: str = "sigmoid", architecture: str = "mlp",
                 channels: int = 32):
        super().__init__(x_dim)
        self.z_dim = positive_int(z_dim, "z_dim")
        widths = hidden_widths(hidden)
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"output must be 'sigmoid' or 'identity', got {output!r}")
        if architecture not in ("mlp", "dcgan"):
            raise ValueError(f"architecture must be 'mlp' or 'dcgan', got {architecture!r}")
        if architecture == "dcgan" and x_dim != 784:
            raise ValueError(f"the DCGAN networks are for 28x28 images (x_dim=784), got x_dim={x_dim}")
        self.output, self.architecture = output, architecture
        if architecture == "mlp":
            self.generator = _mlp([z_dim, *widths, x_dim], nn.ReLU)
            self.discriminator = _mlp([x_dim, *reversed(widths), 1], lambda: nn.LeakyReLU(0.2))
        else:
            generator, discriminator = _dcgan(z_dim, positive_int(channels, "channels"))
            self.generator, self.discriminator = _Batched(generator, z_dim), _Batched(discriminator, x_dim)
        self.register_buffer("prior_loc", torch.zeros(z_dim), persistent=False)

    def latents(self, n: int) -> torch.Tensor:
        """n draws z ~ N(0, I) in the model's dtype and device, shape (n, k)."""
        return torch.randn(n, self.z_dim, device=self.prior_loc.device, dtype=self.prior_loc.dtype)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """x = G(z), shape (..., D)."""
        out = self.generator(z)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            return pyro.deterministic(OBSERVED_SITE, self.generate(z), event_dim=1)

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        return self.generate(self.latents(positive_int(n, "n")))

    def log_prob(self, x, y=None):
        raise NotImplementedError("a GAN has no density: x = G(z) is only a sampler. Use its samples "
                                  "(ppgen.inference.sample_quality) to judge it, or ppgen.log_likelihood, which "
                                  "estimates log p(x) under an observation model by AIS over z")

    def observation_log_prob(self, z: torch.Tensor, x: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
        """log p(x | z) of the observation model that gives the generator a density (Wu et al. 2017):
        Bernoulli(G(z)) for sigmoid outputs (binary pixels), N(G(z), scale^2 I) otherwise."""
        mean = self.generate(z)
        if self.output == "sigmoid":
            return dist.Bernoulli(probs=mean.clamp(1e-6, 1 - 1e-6)).log_prob(x).sum(-1)
        return dist.Normal(mean, scale).log_prob(x).sum(-1)

    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int = 16, seed: int = 0,
                                num_temperatures: int = 500, scale: float = 0.1) -> LikelihoodEstimate:
        """log p(x) under :meth:`observation_log_prob` by AIS over z with HMC (``num_samples``
        chains per row; :func:`ppgen.models.decoder_ais.decoder_log_likelihood`): a stochastic
        lower bound, what :func:`ppgen.log_likelihood` reports for a GAN."""
        from ppgen.models.decoder_ais import decoder_log_likelihood

        x = self.check_data(x)
        values, stderr = decoder_log_likelihood(lambda z, rows: self.observation_log_prob(z, rows, scale), x,
                                                self.z_dim, num_chains=num_samples,
                                                num_temperatures=num_temperatures, seed=seed)
        return LikelihoodEstimate(values, (stderr.pow(2).sum().sqrt() / len(values)).item(), method="ais",
                                  num_samples=num_samples)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        return AdversarialObjective(program, "nonsaturating", precision=precision)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, z_dim={self.z_dim}, output={self.output!r}, architecture={self.architecture!r}"


class AdversarialObjective(Objective):
    """The two-player objective of a :class:`GAN`: discriminator (critic) then generator, each with
    its own Adam optimiser, every batch. Losses are means over the batch times the data size (so
    ``fit``'s per-example history shows the mean loss); :meth:`score` is minus the discriminator's loss.
    The game has no monotone objective, so ``fit`` does not warn about convergence."""

    groups = ("discriminator", "generator")
    monotone = False
    adam_betas = (0.5, 0.9)

    def __init__(self, program, loss: str = "nonsaturating", *, gradient_penalty: float = 10.0,
                 precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if not isinstance(program.generative_model, GAN):
            raise TypeError(f"an adversarial objective trains a GAN, got {program.name}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.kind, self.gradient_penalty = loss, gradient_penalty
        self.estimator = loss

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        gan = self.program.generative_model
        fake = gan.generate(gan.latents(len(x)))
        critic = gan.discriminator
        if group == "discriminator":
            fake = fake.detach()
            real_score, fake_score = critic(x).squeeze(-1), critic(fake).squeeze(-1)
            if self.kind == "nonsaturating":
                value = F.softplus(-real_score).mean() + F.softplus(fake_score).mean()
            else:
                value = fake_score.mean() - real_score.mean() + self.gradient_penalty * self._penalty(x, fake)
        else:
            fake_score = critic(fake).squeeze(-1)
            value = F.softplus(-fake_score).mean() if self.kind == "nonsaturating" else -fake_score.mean()
        return scale * len(x) * value

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        mix = torch.rand(len(real), 1, device=real.device, dtype=real.dtype)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.program.generative_model.discriminator(between).sum(), between,
                                    create_graph=True)
        return (grad.norm(dim=-1) - 1).pow(2).mean()

    def group_parameters(self) -> dict[str, list[torch.Tensor]]:
        gan = self.program.generative_model
        return {"discriminator": list(gan.discriminator.parameters()), "generator": list(gan.generator.parameters())}

    def score(self, x, y=None) -> torch.Tensor:
        with torch.enable_grad():  # the gradient penalty differentiates the critic
            return -self(x, y, scale=1.0, group="discriminator").detach()
