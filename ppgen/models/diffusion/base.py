r"""What every diffusion model shares, written once: :class:`DiffusionModel`.

A diffusion model is a hierarchical latent-variable model whose guide is fixed. Over T steps,

.. math::
    p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^T p_\theta(x_{t-1} \mid x_t), \qquad
    q(x_{1:T} \mid x_0) = \prod_{t=1}^T q(x_t \mid x_{t-1}),

and the ELBO :math:`\mathbb{E}_q[\log p_\theta(x_{0:T}) - \log q(x_{1:T} \mid x_0)]` is
:math:`-L_T - \sum_{t=2}^T L_{t-1} - L_0` with :math:`L_T = \mathrm{KL}(q(x_T|x_0)\,\|\,p(x_T))`,
:math:`L_{t-1} = \mathbb{E}_q\,\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta(x_{t-1}|x_t))` and
:math:`L_0 = -\mathbb{E}_q \log p_\theta(x_0|x_1)` (Ho et al. 2020, Eq. 5). The base class owns the
Pyro program (the reverse chain as ``model``, the forward chain as ``guide``, so that Pyro's ELBO of
the pair is this bound), the training loss (one uniformly drawn step per row), the full test-time
bound, ancestral sampling and progress bars. A subclass writes only its math, named after the paper
as lucidrains' ``denoising-diffusion-pytorch`` does:

- :meth:`~DiffusionModel.prior`: :math:`p(x_T)`;
- :meth:`~DiffusionModel.q_step`: one forward step :math:`q(x_t \mid x_{t-1})` (the guide);
- :meth:`~DiffusionModel.step_draw`: a draw of :math:`q(x_t \mid x_0)` in the form ``step_term`` takes;
- :meth:`~DiffusionModel.reverse_step`: :math:`p_\theta(x_{t-1} \mid x_t)`, the decoder at t = 1;
- :meth:`~DiffusionModel.prior_term` and :meth:`~DiffusionModel.step_term`: :math:`L_T` and
  :math:`L_{t-1}` (:math:`L_0` at t = 1), in closed form.

References: J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020;
J. Sohl-Dickstein et al., "Deep Unsupervised Learning using Nonequilibrium Thermodynamics", ICML 2015.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import ExpandedDistribution

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, LikelihoodEstimate, num_rows, progress_bar
from ppgen.models.objective import Objective

__all__ = ["DiffusionModel", "DiffusionELBO", "Lazy"]

HISTORY = 10  # values of L_{t-1} kept per step for importance-sampled steps (Nichol & Dhariwal, Section 3.3)
UNIFORM_SHARE = 0.001  # the uniform's weight in their importance distribution: every p_t > 0


class DiffusionModel(GenerativeModel):
    r"""Base class of diffusion models: T steps of a fixed forward (noising) process, learned
    reverse steps, trained and scored by the ELBO (see the module docstring for the bound).

    A subclass passes ``num_steps`` to ``super().__init__(x_dim, num_steps)``, registers its
    schedule with :meth:`register_schedule` and writes its math: :meth:`prior`, :meth:`q_step`,
    :meth:`reverse_step`, :meth:`prior_term`, :meth:`step_draw` and :meth:`step_term` (and
    :meth:`to_chain` where the chain's units are not the data's). They take rows (B, D) in the chain's
    units and steps t in 1..T: an int in the Pyro program's steps (``q_step``, ``reverse_step``),
    a (B,) tensor in the bound's (``step_draw``, ``step_term``).
    :class:`~ppgen.models.diffusion.BinaryDiffusion` is the example to copy: its math is about 70
    lines of code.

    Attributes
    ----------
    chain_support, observed_support : Constraint
        The supports of the latent sites :math:`x_1..x_T` and of the observed :math:`x_0`, known
        before the reverse step at a site is built (:class:`Lazy`).
    """

    has_exact_likelihood = False
    likelihood_method = "elbo"
    guide_is_proposal = False  # log_likelihood's iwae would weigh whole forward chains: T passes per particle
    chain_support: ClassVar[constraints.Constraint] = constraints.real
    observed_support: ClassVar[constraints.Constraint] = constraints.real

    def __init__(self, x_dim: int, num_steps: int):
        super().__init__(x_dim)
        self.num_steps = positive_int(num_steps, "num_steps")

    def register_schedule(self, name: str, values: torch.Tensor) -> None:
        """Register a schedule (computed in float64) as a buffer in the default dtype: it follows
        the model through ``.to(device)`` and ``.double()``; it is not saved in the state dict."""
        self.register_buffer(name, values.to(torch.get_default_dtype()), persistent=False)

    # --- the math, written by a subclass ------------------------------------------------------------

    def to_chain(self, x: torch.Tensor) -> torch.Tensor:
        """Data rows to the chain's units x_0 (the identity by default)."""
        return x

    def prior(self, n: int) -> dist.TorchDistribution:
        """p(x_T) for ``n`` rows: batch shape (n,), event shape (D,)."""
        raise NotImplementedError

    def q_step(self, x_prev: torch.Tensor, t: int) -> dist.TorchDistribution:
        """The forward step q(x_t | x_{t-1} = ``x_prev``), event shape (D,)."""
        raise NotImplementedError

    def reverse_step(self, x_t: torch.Tensor, t: int) -> dist.TorchDistribution:
        """p_theta(x_{t-1} | x_t), event shape (D,); at t = 1 the decoder p_theta(x_0 | x_1), on the
        data's scale (it scores the observed rows)."""
        raise NotImplementedError

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || p(x_T)) per row, nats, (B,)."""
        raise NotImplementedError

    def step_draw(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of q(x_t | x_0) in the form :meth:`step_term` takes it: the Gaussian model's noise
        epsilon (x_t = q_sample(x_0, t, epsilon), Ho et al.'s parameterisation), the binary model's
        x_t itself. ``generator`` fixes it (the global RNG when None)."""
        raise NotImplementedError

    def step_term(self, x0: torch.Tensor, t: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        r"""Per row, at the x_t that ``draw`` (from :meth:`step_draw`) gives:
        :math:`\mathrm{KL}(q(x_{t-1}|x_t,x_0)\,\|\,p_\theta(x_{t-1}|x_t))` for t >= 2 and
        :math:`-\log p_\theta(x_0|x_1)` for t = 1, nats, (B,)."""
        raise NotImplementedError

    # --- the Pyro program --------------------------------------------------------------------------

    def model(self, x=None, y=None, *, size=None):
        """The reverse chain x_T -> ... -> x_1 -> x (observed); each step built only when it is
        sampled or scored (:class:`Lazy`)."""
        n = num_rows(x, y, size)
        with pyro.plate(DATA_PLATE, n):
            h = pyro.sample(f"x_{self.num_steps}", self.prior(n))
            for t in range(self.num_steps, 1, -1):
                h = pyro.sample(f"x_{t - 1}", self._lazy_step(h, t, self.chain_support))
            return pyro.sample(OBSERVED_SITE, self._lazy_step(h, 1, self.observed_support), obs=x)

    def _lazy_step(self, h: torch.Tensor, t: int, support) -> Lazy:
        # h is (n, D), or (..., n, D) under an outer plate (vectorised particles): the step sees rows
        return Lazy(lambda: self.reverse_step(h.reshape(-1, self.x_dim), t), h.shape[:-1], (self.x_dim,), support)

    def guide(self, x=None, y=None, *, size=None):
        """The forward (noising) process q(x_{1:T} | x_0), one step at a time; it has no parameters."""
        if x is None:
            return None
        h = self.to_chain(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for t in range(1, self.num_steps + 1):
                h = pyro.sample(f"x_{t}", self.q_step(h, t))
        return h

    # --- the bound -----------------------------------------------------------------------------------

    def _steps(self, t: int | torch.Tensor, rows: int, device) -> torch.Tensor:
        return torch.full((rows,), t, dtype=torch.long, device=device) if isinstance(t, int) else t

    def elbo_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Unbiased estimate of the negative ELBO per row, nats: L_T + T L_{t-1}, one t ~ U{1..T}
        per row (Ho et al. Eq. 5 with the sum over t replaced by T times a uniform draw)."""
        x0 = self.to_chain(x)
        t = torch.randint(1, self.num_steps + 1, (x.shape[0],), device=x.device)
        return self.prior_term(x0) + self.num_steps * self.step_term(x0, t, self.step_draw(x0, t))

    @torch.no_grad()
    def nll_bound(self, x: torch.Tensor, *, seed: int | torch.Generator | None = 0, strata: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The negative ELBO per row in nats, L_T + L_{T-1} + ... + L_0, each term from one draw of x_t: an
        upper bound on -log p(x) in expectation, shape (N,), float64.

        With ``strata=K`` (K must divide T) it costs T / K times less: the steps 1..T are cut into K equal
        strata, one step t_k is drawn uniformly from each (per row) and its term weighted by the stratum's
        width T / K. The estimate stays unbiased for the sum of all T terms, at the price of the noise of
        the draws of t. ``seed`` seeds the draws (an int), continues a generator's stream (a
        ``torch.Generator`` on the rows' device, as when scoring rows in batches), or takes the global RNG
        (None). ``progress(t, T)`` is called after each term, t counting the steps covered so far.
        """
        x0 = self.to_chain(self.check_data(x))
        T = self.num_steps
        if strata is not None and (positive_int(strata, "strata") > T or T % strata):
            raise ValueError(f"strata={strata} must divide the number of steps T={T}")
        width = 1 if strata is None else T // strata
        if isinstance(seed, torch.Generator):
            generator = seed
        else:
            generator = None if seed is None else torch.Generator(x0.device).manual_seed(seed)
        total = self.prior_term(x0).double()
        for k in range(T // width):
            if strata is None:
                steps = self._steps(k + 1, len(x0), x0.device)
            else:
                steps = k * width + 1 + torch.randint(width, (len(x0),), generator=generator, device=x0.device)
            total += width * self.step_term(x0, steps, self.step_draw(x0, steps, generator)).double()
            if progress is not None:
                progress((k + 1) * width, T)
        return total

    @torch.no_grad()
    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int | None = None, seed: int = 0,
                                batch_size: int = 500, repeats: int = 1, strata: int | None = None,
                                progress: Callable[[int, int], None] | None = None) -> LikelihoodEstimate:
        """The ELBO per row (a lower bound on log p(x), nats) with all T terms summed, each from one
        draw of x_t, averaged over ``repeats`` draws: what ``ppgen.log_likelihood`` reports
        (``method="elbo"``). ``strata=K`` estimates the sum from K drawn steps per row instead of all T,
        without bias and T / K times faster (see :meth:`nll_bound`).

        ``stderr`` is the standard error of the mean of ``values`` over the rows: their standard
        deviation over rows divided by sqrt(N) (``stderr_over_rows``). Each value is one independent draw of its row's
        bound (or the mean of ``repeats`` draws), so this is the standard error of a mean of
        independent draws; it counts the noise of the draws and the spread between the rows
        (inf for one row).
        ``num_samples`` is not used: ``ppgen.log_likelihood`` passes its importance-sampling K
        (default 1000), which has no role in this bound; ``repeats`` sets the draws (each costs T
        network passes per row). ``progress(done, total)`` counts the T steps of each batch of
        ``batch_size`` rows, each repeat: T * repeats * ceil(N / batch_size) in all.
        """
        repeats = positive_int(repeats, "repeats")
        batch_size = positive_int(batch_size, "batch_size")
        x = self.check_data(x)
        values = torch.zeros(len(x), dtype=torch.float64)
        batches = x.split(batch_size)
        total = self.num_steps * repeats * len(batches)
        for k in range(repeats):
            for i, rows in enumerate(batches):
                done = self.num_steps * (k * len(batches) + i)  # the steps before this batch's
                step = None if progress is None else lambda t, _: progress(done + t, total)
                start = i * batch_size
                values[start:start + len(rows)] -= self.nll_bound(rows, seed=seed + 1000 * k + i, strata=strata,
                                                                  progress=step).cpu()
        values /= repeats
        stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("inf")
        return LikelihoodEstimate(values, stderr, method="elbo", num_samples=repeats, stderr_over_rows=True)

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32") -> Objective:
        """:class:`DiffusionELBO`."""
        return DiffusionELBO(program, precision=precision)

    # --- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, y=None, *, seed: int | None = None, progress=False) -> torch.Tensor:
        """``n`` rows by the reverse chain (ancestral sampling: T network passes), x_T ~ p(x_T)
        then x_{t-1} ~ p_theta(x_{t-1} | x_t). ``seed`` fixes the draws (default: the global RNG,
        which is left as it was when a seed is given); ``progress``: True shows a bar, a callable gets
        ``(done, total)``."""
        n = positive_int(n, "n")
        with self._seeded(seed):
            return self.reverse_chain(self.prior(n).sample(), progress=progress)

    def reverse_chain(self, h: torch.Tensor, *, progress=False, replace=None) -> torch.Tensor:
        """x_0 drawn from x_T = ``h`` by the T reverse steps. ``replace(h, t)``, when given, returns
        the x_t the step starts from (replacement inpainting sets the known dimensions there)."""
        bar = progress_bar(self.num_steps, progress, "sampling")
        for t in range(self.num_steps, 0, -1):
            if replace is not None:
                h = replace(h, t)
            h = self.reverse_step(h, t).sample()
            bar.update()
        bar.close()
        return h

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """Inside, the global RNG seeded with ``seed`` (and restored afterwards); as it is when None."""
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, num_steps={self.num_steps}"


class DiffusionELBO(Objective):
    r"""The negative ELBO of a diffusion model, one drawn step per row (unbiased), scaled to the full
    data: what ``loss="elbo"`` trains. Validation scores are ELBO estimates (nats).

    By default t ~ U{1..T} (:meth:`DiffusionModel.elbo_loss`). With ``importance_sampling=True`` the
    step is drawn by importance (Nichol & Dhariwal 2021, Section 3.3): the objective keeps the last
    ``HISTORY`` = 10 values of :math:`L_{t-1}` for each t from its training passes; until every t has
    10, t is uniform; then :math:`p_t \propto \sqrt{\mathbb{E}[L_{t-1}^2]}` over that history, mixed with
    the uniform at weight ``UNIFORM_SHARE`` = 0.001 as in their code (every :math:`p_t > 0`), and the
    term is weighted by :math:`1/(T p_t)`: the row's loss is :math:`L_T + L_{t-1}/p_t`, unbiased for
    the full sum. The history is the objective's :meth:`checkpoint_state`, so a resumed ``fit``
    continues bit for bit. It is kept per process (not shared between the ranks of a DDP run).

    >>> from functools import partial
    >>> objective = partial(DiffusionELBO, importance_sampling=True)  # ppgen.fit(model, x, objective=objective)
    """

    estimator = "diffusion-elbo"

    def __init__(self, program, *, importance_sampling: bool = False, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if not isinstance(importance_sampling, bool):
            raise ValueError(f"importance_sampling must be True or False, got {importance_sampling!r}")
        self.importance_sampling = importance_sampling
        steps = program.generative_model.num_steps
        self.history = torch.zeros(steps, HISTORY, dtype=torch.float64)  # row t - 1: L_{t-1}, oldest first
        self.counts = torch.zeros(steps, dtype=torch.long)  # values held per step, up to HISTORY

    def step_probabilities(self) -> torch.Tensor | None:
        """The importance distribution p_t over t = 1..T, (T,), float64; None while some t has fewer
        than ``HISTORY`` values (t is then uniform)."""
        if bool((self.counts < HISTORY).any()):
            return None
        p = self.history.pow(2).mean(-1).sqrt()
        return (1 - UNIFORM_SHARE) * p / p.sum() + UNIFORM_SHARE / len(p)

    def record(self, t: torch.Tensor, terms: torch.Tensor) -> None:
        """Add the values ``terms`` (B,) of :math:`L_{t-1}` at steps ``t`` (B,) to the history, each step
        keeping its last ``HISTORY``."""
        for step, value in zip(t.tolist(), terms.tolist()):
            row, held = self.history[step - 1], int(self.counts[step - 1])
            if held == HISTORY:
                row[:-1] = row[1:].clone()
                row[-1] = value
            else:
                row[held] = value
                self.counts[step - 1] += 1

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        model = self.program.generative_model
        if not self.importance_sampling:
            return scale * model.elbo_loss(x).sum()
        x0, steps = model.to_chain(x), model.num_steps
        p = self.step_probabilities()
        if p is None:
            t = torch.randint(1, steps + 1, (x.shape[0],))
            weight = torch.full((x.shape[0],), float(steps), dtype=torch.float64)
        else:
            t = torch.multinomial(p, x.shape[0], replacement=True) + 1
            weight = 1 / p[t - 1]  # T / (T p_t)
        t = t.to(x.device)
        terms = model.step_term(x0, t, model.step_draw(x0, t))
        if self.training:
            self.record(t, terms.detach())
        return scale * (model.prior_term(x0) + weight.to(terms) * terms).sum()

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The history of :math:`L_{t-1}` (``"history"``, (T, HISTORY), and ``"counts"``, (T,)), with
        importance sampling; else none."""
        return {"history": self.history, "counts": self.counts} if self.importance_sampling else {}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        history, counts = state["history"], state["counts"]
        if history.shape != self.history.shape or counts.shape != self.counts.shape:
            raise ValueError(f"the checkpoint's step history has shape {tuple(history.shape)}, this objective's has "
                             f"{tuple(self.history.shape)} (num_steps={len(self.counts)})")
        self.history, self.counts = history.to(torch.float64).clone(), counts.to(torch.long).clone()


class Lazy(dist.TorchDistribution):
    """A distribution built only when it is sampled or scored: ``make()`` returns it over the
    batch flattened into rows, batch shape (prod(batch_shape),); ``batch_shape``, ``event_shape``
    and ``support`` are known beforehand.

    The reverse steps of a diffusion model each need a network pass; tracing the model on data
    (``ppgen.check_model``, ``fit``'s first-batch check, ``poutine.replay``) then costs nothing until a
    log-density is asked for, which keeps those checks cheap for T = 1000. The flattening lets the
    steps take rows (B, D) while the program runs under outer plates (Pyro's vectorised particles).
    """

    arg_constraints: dict = {}

    def __init__(self, make, batch_shape, event_shape, support):
        self._make, self._base, self._support = make, None, support
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @property
    def base(self) -> dist.TorchDistribution:
        if self._base is None:
            self._base = self._make()
        return self._base

    @property
    def support(self):
        return self._support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return self if batch_shape == self.batch_shape else ExpandedDistribution(self, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        sample_shape = torch.Size(sample_shape)
        return self.base.sample(sample_shape).reshape(sample_shape + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        lead = shape[:len(shape) - len(self.batch_shape) - len(self.event_shape)]
        rows = value.expand(shape).reshape((lead.numel(), self.batch_shape.numel()) + self.event_shape)
        return self.base.log_prob(rows).reshape(lead + self.batch_shape)

