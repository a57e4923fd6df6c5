r"""What every energy-based model shares: the story, one sampler loop and one training objective.

.. math::
    p_\theta(x) = \frac{e^{-E_\theta(x)}}{Z_\theta}, \qquad
    \nabla_\theta \log p_\theta(x) = -\nabla_\theta E_\theta(x)
        + \mathbb{E}_{\tilde x \sim p_\theta}\big[\nabla_\theta E_\theta(\tilde x)\big].

Neither Z nor the expectation has a closed form. :class:`ContrastiveDivergence` estimates the
expectation with negatives :math:`\tilde x` from a short MCMC run under the model, started at the
data (CD-k, Hinton 2002), at persistent chains carried across steps (PCD, Tieleman 2008), at noise
(short-run MCMC, Nijkamp et al. 2019), or at a replay buffer of past negatives, a fraction restarted
from noise (Du & Mordatch 2019). A model of the family writes

- :meth:`EnergyModel.energy`: E(x) per row (an RBM's free energy F(v));
- optionally :meth:`EnergyModel.mcmc_step`: one transition that leaves p (nearly) invariant. The
  default is a Langevin step :math:`x' = \mathrm{clip}(x - \lambda \nabla_x E(x) + \sigma \xi)`,
  :math:`\xi \sim \mathcal{N}(0, I)`; the RBM's is a block Gibbs sweep;
- optionally :meth:`EnergyModel.noise`: where chains from noise start;

and :meth:`EnergyModel.run_chains`, the one sampler loop, serves both ``sample`` and training.

Examples
--------
A model of one's own is its energy; ``fit`` trains it by persistent contrastive divergence:

>>> from torch import nn
>>> class Quadratic(EnergyModel):
...     '''E(x) = |x - mu|^2 / 2: p = N(mu, I).'''
...     def __init__(self, x_dim):
...         super().__init__(x_dim, steps=20, step_size=0.01)
...         self.mu = nn.Parameter(torch.zeros(x_dim))
...     def energy(self, x):
...         return (x - self.mu).pow(2).sum(-1) / 2
>>> Quadratic(3).sample(5).shape
torch.Size([5, 3])

References: G. E. Hinton, "Training products of experts by minimizing contrastive divergence",
Neural Computation 2002; T. Tieleman, ICML 2008; Y. Du and I. Mordatch, "Implicit generation and
modeling with energy-based models", NeurIPS 2019; E. Nijkamp, M. Hill, S.-C. Zhu and Y. N. Wu,
"Learning non-convergent non-persistent short-run MCMC toward energy-based model", NeurIPS 2019.
"""

from __future__ import annotations

import math

import pyro
import torch

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, num_rows, progress_bar
from ppgen.models.objective import Objective

__all__ = ["EnergyModel", "ContrastiveDivergence", "STARTS"]

# where ContrastiveDivergence starts the negatives' chains, and the estimator's label for each
STARTS = {"data": "cd", "chains": "pcd", "noise": "short-run-cd", "buffer": "replay-cd"}


class EnergyModel(GenerativeModel):
    r"""Base class of the energy-based models: :math:`p(x) = e^{-E(x)} / Z`, sampled by MCMC.

    The Pyro ``model`` scores rows with ``pyro.factor`` on -E(x) (minus log Z where
    :meth:`log_partition` is exact) and generates them with :meth:`sample`.

    Parameters
    ----------
    x_dim : int
    steps : int
        The MCMC steps :meth:`sample` runs by default.
    step_size, noise, bounds : float, float or None, (float, float) or None
        The default :meth:`mcmc_step`'s Langevin settings: the gradient step :math:`\lambda`, the
        noise :math:`\sigma` (None: :math:`\sqrt{2\lambda}`, the unadjusted Langevin algorithm)
        and the box the chains are clipped to (None: unbounded). A model with its own
        ``mcmc_step`` (the RBM) does not use them.
    """

    data_support = "real"

    def __init__(self, x_dim: int, *, steps: int = 100, step_size: float = 0.01, noise: float | None = None,
                 bounds: tuple[float, float] | None = None):
        super().__init__(x_dim)
        self.steps, self.step_size, self.bounds = positive_int(steps, "steps"), float(step_size), bounds
        if bounds is not None and not (isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                and -math.inf < bounds[0] < bounds[1] < math.inf):
            raise ValueError(f"bounds must be None or (low, high) with finite low < high, got {bounds!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.noise_scale = (2 * self.step_size) ** 0.5 if noise is None else float(noise)
        if not self.noise_scale >= 0:
            raise ValueError(f"noise must be non-negative or None, got {noise!r}")

    # --- what subclasses write ----------------------------------------------------------------

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) per row, shape (N,): minus the unnormalised log-density (for a model with latent
        units, the free energy: minus the log of the unnormalised marginal)."""
        raise NotImplementedError(f"{type(self).__name__} must define energy(x)")

    def mcmc_step(self, x: torch.Tensor) -> torch.Tensor:
        r"""One MCMC transition from the rows ``x`` (N, D), leaving p (nearly) invariant; no gradient
        reaches the parameters. The default: one Langevin step
        :math:`x' = \mathrm{clip}(x - \lambda \nabla_x E(x) + \sigma \xi)`."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(self.energy(x).sum(), x)
        x = (x - self.step_size * grad + self.noise_scale * torch.randn_like(x)).detach()
        return x if self.bounds is None else x.clamp(*self.bounds)

    def noise(self, n: int) -> torch.Tensor:
        """Where chains from noise start, (n, D): uniform in ``bounds``, standard normal without."""
        if self.bounds is None:
            return torch.randn(n, self.x_dim, device=self.device, dtype=self.dtype)
        low, high = self.bounds
        return low + (high - low) * torch.rand(n, self.x_dim, device=self.device, dtype=self.dtype)

    def log_partition(self) -> torch.Tensor:
        """log Z, where it is tractable (a model with ``has_exact_likelihood`` writes it)."""
        raise NotImplementedError(f"{type(self).__name__}'s normaliser Z is intractable: its density is known only "
                                  f"up to Z, so it has no exact log p(x)")

    # --- the protocol -------------------------------------------------------------------------

    @property
    def is_normalised(self) -> bool:
        """Whether the Pyro model's factor includes -log Z: where log Z is exact."""
        return self.has_exact_likelihood

    def model(self, x=None, y=None, *, size=None):
        n = num_rows(x, y, size)
        with pyro.plate(DATA_PLATE, n):
            if x is None:  # generating: MCMC (the density has no Pyro sampler of its own)
                return self.sample(n)
            log_density = -self.energy(x)
            if self.is_normalised:
                log_density = log_density - self.log_partition()
            pyro.factor(OBSERVED_SITE, log_density)  # unnormalised: fit trains it by contrastive divergence
            return x

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) = -E(x) - log Z per row, shape (N,), where log Z is tractable."""
        log_z = self.log_partition()
        return -self.energy(self.check_data(x)) - log_z

    @torch.no_grad()
    def run_chains(self, start: torch.Tensor, steps: int, progress=False) -> torch.Tensor:
        """The state after ``steps`` MCMC steps (:meth:`mcmc_step`) from the rows ``start`` (N, D):
        the one sampler loop, behind :meth:`sample` and :class:`ContrastiveDivergence`. ``progress``:
        True for a bar, or a callback ``progress(done, total)`` (:func:`~ppgen.models.base.progress_bar`)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        bar = progress_bar(steps, progress, "MCMC")
        x = start.detach()
        for _ in range(steps):
            x = self.mcmc_step(x)
            bar.update()
        bar.close()
        return x

    @torch.no_grad()
    def sample(self, n: int, y=None, *, steps: int | None = None, progress=False) -> torch.Tensor:
        """``n`` rows after ``steps`` MCMC steps (default :attr:`steps`) from :meth:`noise`; a longer
        chain mixes better (``progress``: True shows a bar; a callable gets ``(done, total)``)."""
        n = positive_int(n, "n")
        steps = self.steps if steps is None else positive_int(steps, "steps")
        return self.run_chains(self.noise(n), steps, progress)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective | None:
        """Exact maximum likelihood (None) where log Z is exact, else persistent contrastive
        divergence with :attr:`steps` MCMC steps per update."""
        if self.has_exact_likelihood:
            return None
        return ContrastiveDivergence(program, k=self.steps, persistent=True, precision=precision)


class ContrastiveDivergence(Objective):
    r"""Contrastive divergence for an :class:`EnergyModel`: CD-k (Hinton 2002), persistent CD
    (Tieleman 2008), short-run chains from noise (Nijkamp et al. 2019) or a replay buffer (Du &
    Mordatch 2019).

    The log-likelihood gradient is :math:`-\nabla E(x) + \mathbb{E}_p[\nabla E(v)]`; the model
    expectation is replaced by negatives :math:`\tilde x`, ``k`` steps of :meth:`EnergyModel.run_chains`
    from ``start``. The loss per batch of B rows, scaled to the full data, is

    .. math::
        s \Big[\sum_n \big(E(x_n) - E(\tilde x_n)\big) + \alpha \sum_n \big(E(x_n)^2 + E(\tilde x_n)^2\big)\Big]

    with the negatives held fixed, so its gradient is that estimate (plus Du & Mordatch's penalty
    that keeps energies bounded, for ``alpha`` > 0). It is not a log-likelihood, and neither is
    -E(x), which any shift of the energy changes: :meth:`score` (what ``fit`` validates and picks its
    best epoch by) is the exact log p(x) where log Z is exact (an RBM of up to 20 hidden units), and
    None otherwise (no best epoch, no early stopping).

    Parameters
    ----------
    program : Program
        A program of an :class:`EnergyModel`.
    k : int or None
        MCMC steps per update (None: the model's ``steps``).
    persistent : bool
        Shorthand for ``start="chains"`` (PCD).
    start : {"data", "chains", "noise", "buffer"} or None
        Where the chains start: at the batch (CD-k; the default), at the last update's negatives
        (PCD; at the batch when its size changes), at :meth:`EnergyModel.noise`, or at rows drawn
        from a buffer of ``buffer_size`` past negatives, each restarted from noise with probability
        ``reinit``.
    alpha : float
        The weight of the energy penalty.

    The persistent chains and the buffer are its :meth:`checkpoint_state`: a resumed run continues
    them. The estimator is labelled ``"cd-k"``, ``"pcd-k"``, ``"short-run-cd-k"`` or ``"replay-cd-k"``.
    """

    # the loss E(x) - E(x~) hovers about 0 at a fit instead of falling steadily: no convergence slope to
    # read from it, and fit judges divergence by the model's samples (FitConfig's divergence_factor)
    monotone = likelihood = False

    def __init__(self, program, k: int | None = 1, persistent: bool = False, *, start: str | None = None,
                 buffer_size: int = 10_000, reinit: float = 0.05, alpha: float = 0.0, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        model = program.generative_model
        if not isinstance(model, EnergyModel):
            raise TypeError(f"contrastive divergence trains an EnergyModel (an energy(x) and an mcmc_step), "
                            f"got {program.name}")
        if start is None:
            start = "chains" if persistent else "data"
        elif persistent:
            raise ValueError(f"give persistent=True (start='chains') or start, not both; got start={start!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {tuple(STARTS)}, got {start!r}")
        if not 0 <= reinit <= 1:
            raise ValueError(f"reinit must be a probability in [0, 1], got {reinit!r}")
        self.k = model.steps if k is None else positive_int(k, "k")
        self.start, self.buffer_size = start, positive_int(buffer_size, "buffer_size")
        self.reinit, self.alpha = reinit, alpha
        self.chains: torch.Tensor | None = None  # start="chains": the last negatives
        self.buffer: torch.Tensor | None = None  # start="buffer": (buffer_size, D) past negatives
        self.estimator = f"{STARTS[start]}-{self.k}"

    def negatives(self, x: torch.Tensor) -> torch.Tensor:
        """The negatives for the batch ``x`` (B, D): B rows after ``k`` MCMC steps from ``start``."""
        model, n = self.program.generative_model, len(x)
        if self.start == "data":
            start = x
        elif self.start == "chains":
            start = self.chains if self.chains is not None and self.chains.shape == x.shape else x
        elif self.start == "noise":
            start = model.noise(n)
        else:
            if self.buffer is None:
                self.buffer = model.noise(self.buffer_size)
            idx = torch.randint(len(self.buffer), (n,), device=self.buffer.device)
            start = self.buffer[idx]
            fresh = torch.rand(n, device=start.device) < self.reinit
            start[fresh] = model.noise(int(fresh.sum()))
        negatives = model.run_chains(start, self.k)
        if self.start == "chains":
            self.chains = negatives
        elif self.start == "buffer":
            self.buffer[idx] = negatives
        return negatives

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The persistent chains (``"chains"``) and the replay buffer (``"buffer"``), where they exist."""
        return {name: value for name, value in (("chains", self.chains), ("buffer", self.buffer)) if value is not None}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        model = self.program.generative_model
        buffer = state.get("buffer")
        if buffer is not None and buffer.shape != (self.buffer_size, model.x_dim):
            raise ValueError(f"the checkpoint's replay buffer has shape {tuple(buffer.shape)}, this objective's has "
                             f"({self.buffer_size}, {model.x_dim}) (buffer_size={self.buffer_size})")
        self.chains, self.buffer = (None if state.get(name) is None else state[name].to(model.device, model.dtype)
                                    for name in ("chains", "buffer"))

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        model = self.program.generative_model
        real, fake = model.energy(x), model.energy(self.negatives(x))
        value = (real - fake).sum()
        if self.alpha:
            value = value + self.alpha * (real.pow(2) + fake.pow(2)).sum()
        return scale * value

    @torch.no_grad()
    def score(self, x, y=None) -> torch.Tensor | None:
        """Sum over the rows of the exact log p(x), where log Z is exact; else None."""
        model = self.program.generative_model
        return model.log_prob(x).sum() if model.has_exact_likelihood else None
