"""What the Gaussian and the binary diffusion models share: the lazily built reverse steps, the
full-sum test bound, the ELBO objective and the progress bar."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from ppgen.inference.likelihood import LikelihoodResult
from ppgen.models.objective import Objective
from ppgen.models.base import _check_count, bits_per_dim

__all__ = ["Lazy", "BoundResult", "FullBound", "DiffusionELBO"]


class Lazy(dist.TorchDistribution):
    """A distribution built only when it is sampled or scored: ``make()`` returns it, and
    ``batch_shape``/``event_shape``/``support`` are known beforehand.

    The reverse steps of a diffusion model each need a network pass; tracing the model on data
    (``ppgen.check_model``, ``fit``'s first-batch check, ``poutine.replay``) then costs nothing until a
    log-density is asked for, which keeps those checks cheap for T = 1000.
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
        return self if torch.Size(batch_shape) == self.batch_shape else self.base.expand(batch_shape)

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


class _Progress:
    """A tqdm bar over ``total`` steps when ``show``, else nothing."""

    def __init__(self, total: int, show: bool, desc: str):
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(self):
        if self.bar is not None:
            self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class BoundResult(LikelihoodResult):
    """A :class:`~ppgen.inference.likelihood.LikelihoodResult` holding a diffusion model's ELBO
    (``exact=False``, ``method="elbo"``, ``num_samples`` the draws of the chain per row)."""

    def __str__(self) -> str:
        return (f"ELBO {self.mean:.3f} nats/example (a lower bound on log p(x), all T terms summed, "
                f"± {self.stderr:.3f} over {len(self.values)} rows); {self.bits_per_dim:.4f} bits/dim")


class FullBound:
    """The test-time bound of a diffusion model from its ``nll_bound`` (all T terms summed)."""

    likelihood_method = "elbo"  # how ppgen.log_likelihood labels the figure

    @torch.no_grad()
    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int | None = None, seed: int = 0,
                                batch_size: int = 500, repeats: int = 1, progress: bool = False):
        """The ELBO per row (a lower bound on log p(x), nats) with all T terms summed, each from one
        draw of x_t, averaged over ``repeats`` draws; the hook ``ppgen.log_likelihood`` calls.

        Returns ``(values (N,), stderr, None)``; the stderr is over rows (the spread of the values,
        which includes the noise of the draws): the standard error of the mean bound.
        ``num_samples`` is not used: ``ppgen.log_likelihood`` passes its importance-sampling K
        (default 1000), which has no role in this bound; ``repeats`` sets the draws (each costs T
        network passes per row).
        """
        repeats = _check_count(repeats, "repeats")
        batch_size = _check_count(batch_size, "batch_size")
        x = self.check_data(x)
        values = torch.zeros(len(x), dtype=torch.float64)
        for k in range(repeats):
            for i, rows in enumerate(x.split(batch_size)):
                start = i * batch_size
                values[start:start + len(rows)] -= self.nll_bound(rows, seed=seed + 1000 * k + i,
                                                                  progress=progress).cpu()
        values /= repeats
        stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("inf")
        return values, stderr, None

    def log_likelihood_bound(self, x: torch.Tensor, *, seed: int = 0, batch_size: int = 500, repeats: int = 1,
                             progress: bool = False) -> BoundResult:
        """:meth:`estimate_log_likelihood` as a :class:`BoundResult` (its ``bits_per_dim`` is the
        bound in bits per dimension; for 8-bit images, per pixel of the discrete image)."""
        values, stderr, _ = self.estimate_log_likelihood(x, seed=seed, batch_size=batch_size, repeats=repeats,
                                                         progress=progress)
        mean = values.mean().item()
        return BoundResult(values.float(), mean, stderr, bits_per_dim(mean, self.x_dim), False, repeats,
                           elbo=mean, method="elbo")


class DiffusionELBO(Objective):
    """The negative ELBO of a diffusion model, one uniformly drawn step per row (unbiased), scaled
    to the full data: what ``loss="elbo"`` trains. Validation scores are ELBO estimates (nats)."""

    estimator = "diffusion-elbo"

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        return scale * self.program.generative_model.elbo_loss(x).sum()
