r"""Generative adversarial networks: an implicit story with a sampler and no density.

.. math::
    z \sim \mathcal{N}(0, I_k), \qquad x = G_\theta(z),

written as a Pyro program (``z`` a sample site in the data plate, ``x`` a deterministic site), so
``poutine.trace`` and ``Predictive`` work on it. There is no p(x) to observe: the generator is
trained against a discriminator (critic) D_phi by :class:`AdversarialObjective`, two parameter
groups with one optimiser each in the unchanged :func:`ppgen.fit` loop:

- ``"nonsaturating"`` (Goodfellow et al. 2014): D minimises
  :math:`\mathrm{softplus}(-D(x)) + \mathrm{softplus}(D(G(z)))`, G minimises :math:`\mathrm{softplus}(-D(G(z)))`;
  optionally with the R1 penalty :math:`\frac{\gamma}{2} \lVert \nabla_x D(x) \rVert^2` at the data
  (Mescheder et al. 2018);
- ``"wgan-gp"`` (Gulrajani et al. 2017): the critic minimises :math:`D(G(z)) - D(x) + \lambda
  (\lVert \nabla D(\hat x) \rVert - 1)^2` at random interpolates :math:`\hat x`, G minimises :math:`-D(G(z))`;
  the critic takes ``n_critic`` = 5 steps per generator step, with Adam at :math:`\beta = (0, 0.9)`.

The networks are MLPs, or the DCGAN pair for 28x28 digits (Radford et al. 2016), whose
discriminator is batch-normalised (Radford's) or spectrally normalised (Miyato et al. 2018).

References: I. Goodfellow et al., "Generative adversarial nets", NeurIPS 2014; I. Gulrajani et
al., "Improved training of Wasserstein GANs", NeurIPS 2017; A. Radford, L. Metz and S. Chintala,
"Unsupervised representation learning with deep convolutional GANs" (DCGAN), ICLR 2016; T. Miyato,
T. Kataoka, M. Koyama and Y. Yoshida, "Spectral normalization for generative adversarial networks",
ICLR 2018; L. Mescheder, A. Geiger and S. Nowozin, "Which training methods for GANs do actually
converge?", ICML 2018.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import non_negative_number, positive_int
from ppgen.models.objective import Objective
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, LikelihoodEstimate, num_rows
from ppgen.models.latent.networks import hidden_widths

__all__ = ["GAN", "AdversarialObjective", "LOSSES", "DISCRIMINATOR_NORMS"]

LOSSES = ("nonsaturating", "wgan-gp")
# each loss's critic steps per generator step and Adam's (beta1, beta2): Radford et al.'s beta1 = 0.5 for the
# nonsaturating game; Gulrajani et al.'s Algorithm 1 for WGAN-GP
LOSS_DEFAULTS = {"nonsaturating": {"n_critic": 1, "betas": (0.5, 0.9)},
                 "wgan-gp": {"n_critic": 5, "betas": (0.0, 0.9)}}
DISCRIMINATOR_NORMS = ("batch", "spectral", "none")


def _mlp(sizes, activation: type[nn.Module]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _dcgan(z_dim: int, channels: int, batch_norm: bool) -> tuple[nn.Module, nn.Module]:
    """The DCGAN pair for 28x28 images (Radford et al. 2016), sized for a CPU: a generator
    z -> (2c, 7, 7) -> (c, 14, 14) -> (1, 28, 28) by a projection and strided transposed convolutions,
    each hidden layer batch-normalised with a ReLU; the mirror-image discriminator of strided
    convolutions with leaky ReLUs (slope 0.2), batch-normalised (``batch_norm``) on its hidden layer but
    not its input layer. Weights start from N(0, 0.02^2), batch-norm scales from N(1, 0.02^2)."""
    c = channels
    generator = nn.Sequential(
        nn.Linear(z_dim, 2 * c * 49), nn.Unflatten(-1, (2 * c, 7, 7)), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Flatten())
    discriminator = nn.Sequential(
        nn.Unflatten(-1, (1, 28, 28)), nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(c, 2 * c, 4, 2, 1), *([nn.BatchNorm2d(2 * c)] if batch_norm else []), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(2 * c * 49, 1))
    for module in [*generator.modules(), *discriminator.modules()]:
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    return generator, discriminator


def _spectral_norm(net: nn.Module) -> nn.Module:
    """Every linear and convolutional layer of ``net`` with its weight (a convolution's as a matrix, out x
    in k k) divided by its largest singular value, estimated by one power iteration per forward pass (Miyato
    et al. 2018): an MLP with leaky ReLUs is then 1-Lipschitz, a convolutional network nearly so."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.utils.parametrizations.spectral_norm(module)
    return net


class _Batched(nn.Module):
    """Run a network over any leading batch shape (particles, chains) by flattening it."""

    def __init__(self, net: nn.Module, in_dim: int):
        super().__init__()
        self.net, self.in_dim = net, in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.reshape(-1, self.in_dim))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class GAN(GenerativeModel):
    r"""A GAN with MLP networks, or the DCGAN pair for 28x28 digits (Radford et al. 2016).

    Learned: generator ``(k -> hidden... -> D)`` and discriminator ``(D -> hidden... -> 1)``
    weights and biases (``architecture="mlp"``), or the convolutional pair of
    ``architecture="dcgan"`` with ``channels`` filters (D = 784). ``output`` is ``"sigmoid"`` for
    pixels in [0, 1] (digits) or ``"identity"`` for unbounded data (the 2-D toy mixtures).

    Parameters
    ----------
    x_dim, z_dim : int
    hidden : int or list of int
        The MLPs' widths (``architecture="mlp"``).
    output : {"sigmoid", "identity"}
    architecture : {"mlp", "dcgan"}
    channels : int
        The DCGAN's filters c: (2c, 7, 7) -> (c, 14, 14) -> (1, 28, 28) and back.
    discriminator_norm : {"batch", "spectral", "none"} or None
        How the discriminator is normalised: batch norm on its hidden convolution (Radford et al.;
        the DCGAN's default), spectral norm on every layer (Miyato et al.; each layer's weight matrix
        then has norm 1), or none (the MLP's default). A gradient penalty (WGAN-GP, R1) needs a
        discriminator without batch norm, whose per-batch statistics tie the rows together.

    Examples
    --------
    >>> gan = GAN(2, z_dim=2, hidden=8, output="identity")
    >>> gan.sample(5).shape
    torch.Size([5, 2])
    >>> GAN(784, z_dim=16, architecture="dcgan", channels=4, discriminator_norm="spectral").sample(2).shape
    torch.Size([2, 784])
    """

    data_support = "real"
    likelihood_method = "ais"  # estimate_log_likelihood: AIS over z under an observation model

    def __init__(self, x_dim: int, z_dim: int = 64, hidden=256, output: str = "sigmoid", architecture: str = "mlp",
                 channels: int = 32, discriminator_norm: str | None = None):
        super().__init__(x_dim)
        self.z_dim = positive_int(z_dim, "z_dim")
        channels = positive_int(channels, "channels")  # checked with the MLP too, which does not use it
        widths = hidden_widths(hidden)
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"output must be 'sigmoid' or 'identity', got {output!r}")
        if architecture not in ("mlp", "dcgan"):
            raise ValueError(f"architecture must be 'mlp' or 'dcgan', got {architecture!r}")
        if architecture == "dcgan" and x_dim != 784:
            raise ValueError(f"the DCGAN networks are for 28x28 images (x_dim=784), got x_dim={x_dim}")
        if discriminator_norm is None:
            discriminator_norm = "batch" if architecture == "dcgan" else "none"
        if discriminator_norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"discriminator_norm must be one of {DISCRIMINATOR_NORMS} or None, "
                             f"got {discriminator_norm!r}")
        if discriminator_norm == "batch" and architecture == "mlp":
            raise ValueError("discriminator_norm='batch' is the DCGAN's (architecture='dcgan'); an MLP discriminator "
                             "takes 'spectral' or 'none'")
        self.output, self.architecture, self.discriminator_norm = output, architecture, discriminator_norm
        if architecture == "mlp":
            self.generator = _mlp([z_dim, *widths, x_dim], nn.ReLU)
            discriminator = _mlp([x_dim, *reversed(widths), 1], lambda: nn.LeakyReLU(0.2))
        else:
            generator, discriminator = _dcgan(z_dim, channels, discriminator_norm == "batch")
            self.generator, discriminator = _Batched(generator, z_dim), _Batched(discriminator, x_dim)
        self.discriminator = _spectral_norm(discriminator) if discriminator_norm == "spectral" else discriminator
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
                                num_temperatures: int = 500, scale: float = 0.1,
                                progress: Callable[[int, int], None] | None = None) -> LikelihoodEstimate:
        """log p(x) under :meth:`observation_log_prob` by AIS over z with HMC (``num_samples``
        chains per row; :func:`ppgen.models.decoder_ais.decoder_log_likelihood`, ``progress(k,
        num_temperatures)`` after each temperature): a stochastic lower bound, what
        :func:`ppgen.log_likelihood` reports for a GAN."""
        from ppgen.models.decoder_ais import decoder_log_likelihood

        x = self.check_data(x)
        values, stderr = decoder_log_likelihood(lambda z, rows: self.observation_log_prob(z, rows, scale), x,
                                                self.z_dim, num_chains=num_samples,
                                                num_temperatures=num_temperatures, seed=seed, progress=progress)
        return LikelihoodEstimate(values, (stderr.pow(2).sum().sqrt() / len(values)).item(), method="ais",
                                  num_samples=num_samples)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        return AdversarialObjective(program, "nonsaturating", precision=precision)

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, z_dim={self.z_dim}, output={self.output!r}, architecture={self.architecture!r}, "
                f"discriminator_norm={self.discriminator_norm!r}")


class AdversarialObjective(Objective):
    r"""The two-player objective of a :class:`GAN`: the discriminator (critic) steps on every batch
    and the generator after every ``n_critic``-th critic step, each with its own Adam optimiser. One
    fake batch is drawn a step: the critic sees it detached, then the generator's turn scores the same
    batch through the updated critic (PyTorch's DCGAN example; drawing a second batch cost a tenth of
    the step).

    Losses are means over the batch times the data size (so ``fit``'s per-example history shows the
    mean loss); :meth:`score` is minus the discriminator's loss. The game has no monotone objective,
    so ``fit`` does not warn about convergence.

    Parameters
    ----------
    program : Program
        A program of a :class:`GAN`.
    loss : {"nonsaturating", "wgan-gp"}
    gradient_penalty : float
        WGAN-GP's :math:`\lambda` (10, Gulrajani et al.'s for images; their code for 2-D toys uses 0.1: at
        10 a critic of 2-D data learns too slowly for a few thousand steps).
    r1 : float
        The weight :math:`\gamma` of the R1 penalty :math:`\frac{\gamma}{2} \lVert \nabla_x D(x) \rVert^2`
        on the data, added to the discriminator's loss (Mescheder et al. 2018; 0: none).
    n_critic : int or None
        Critic steps per generator step (None: 5 for ``"wgan-gp"``, as Gulrajani et al.; 1 otherwise).
        ``fit`` steps every group on every batch: between its turns the generator's loss is a constant
        with no parameter in it, so Adam leaves the generator (and its moments) as they were. The count
        is the objective's :meth:`checkpoint_state`: a resumed run continues the cycle where it was.
    betas : (float, float) or None
        Adam's :math:`(\beta_1, \beta_2)` for both players (None: (0.5, 0.9) for ``"nonsaturating"``,
        Radford et al.'s :math:`\beta_1`; (0, 0.9) for ``"wgan-gp"``, Gulrajani et al.'s).

    A gradient penalty (``"wgan-gp"``, ``r1`` > 0) needs a discriminator without batch norm.
    """

    groups = ("discriminator", "generator")
    monotone = likelihood = False

    def __init__(self, program, loss: str = "nonsaturating", *, gradient_penalty: float = 10.0, r1: float = 0.0,
                 n_critic: int | None = None, betas: tuple[float, float] | None = None, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        gan = program.generative_model
        if not isinstance(gan, GAN):
            raise TypeError(f"an adversarial objective trains a GAN, got {program.name}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.kind, self.estimator = loss, loss
        self.gradient_penalty = non_negative_number(gradient_penalty, "gradient_penalty")
        self.r1 = non_negative_number(r1, "r1")
        if gan.discriminator_norm == "batch" and (loss == "wgan-gp" or self.r1):
            raise ValueError(f"a gradient penalty ({'wgan-gp' if loss == 'wgan-gp' else 'r1'}) needs a discriminator "
                             "without batch norm, whose per-batch statistics tie the rows together: build the GAN "
                             "with discriminator_norm='spectral' or 'none'")
        defaults = LOSS_DEFAULTS[loss]
        self.n_critic = defaults["n_critic"] if n_critic is None else positive_int(n_critic, "n_critic")
        betas = defaults["betas"] if betas is None else betas
        if not (len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.adam_betas = tuple(float(b) for b in betas)
        self.generator_calls = 0
        self._fake = None  # the discriminator's fake batch, kept for the generator's turn of the same step

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        gan = self.program.generative_model
        critic = gan.discriminator
        if group == "generator":
            turn = self.generator_calls % self.n_critic == 0  # calls 0 (fit's first pass), n, 2n, ...
            self.generator_calls += 1
            if not turn:  # no parameter in the loss, so no step
                self._fake = None
                return x.new_zeros((), requires_grad=True)
        fake, self._fake = self._fake, None
        if group == "discriminator" or fake is None or len(fake) != len(x):
            fake = gan.generate(gan.latents(len(x)))
        if group == "discriminator":
            # the generator's turn of the same step reuses this batch through the updated critic, as PyTorch's
            # DCGAN example does: one generator pass a step, not two
            self._fake = fake if torch.is_grad_enabled() else None
            fake = fake.detach()
            real_score, fake_score = critic(x).squeeze(-1), critic(fake).squeeze(-1)
            if self.kind == "nonsaturating":
                value = F.softplus(-real_score).mean() + F.softplus(fake_score).mean()
            else:
                value = fake_score.mean() - real_score.mean() + self.gradient_penalty * self._penalty(x, fake)
            if self.r1:
                value = value + self.r1 / 2 * self._input_gradient(x).pow(2).sum(-1).mean()
        else:
            fake_score = critic(fake).squeeze(-1)
            value = F.softplus(-fake_score).mean() if self.kind == "nonsaturating" else -fake_score.mean()
        return scale * len(x) * value

    def _input_gradient(self, rows: torch.Tensor) -> torch.Tensor:
        """The gradient of D at the rows (B, D), in the graph (a penalty on it trains D)."""
        rows = rows.detach().requires_grad_(True)
        grad, = torch.autograd.grad(self.program.generative_model.discriminator(rows).sum(), rows, create_graph=True)
        return grad

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        mix = torch.rand(len(real), 1, device=real.device, dtype=real.dtype)
        return (self._input_gradient(mix * real + (1 - mix) * fake).norm(dim=-1) - 1).pow(2).mean()

    def checkpoint_state(self) -> dict[str, int]:
        """The generator's calls so far (``"generator_calls"``): where it is in the ``n_critic`` cycle."""
        return {"generator_calls": self.generator_calls}

    def load_checkpoint_state(self, state: dict[str, int]) -> None:
        self.generator_calls = int(state.get("generator_calls", self.generator_calls))

    def group_parameters(self) -> dict[str, list[torch.Tensor]]:
        gan = self.program.generative_model
        return {"discriminator": list(gan.discriminator.parameters()), "generator": list(gan.generator.parameters())}

    def score(self, x, y=None) -> torch.Tensor:
        with torch.enable_grad():  # the gradient penalty differentiates the critic
            return -self(x, y, scale=1.0, group="discriminator").detach()
