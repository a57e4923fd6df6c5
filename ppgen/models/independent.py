"""The fully factorised baseline: every pixel its own coin."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppgen.models.base import DATA_PLATE, GenerativeModel, check_data, num_rows

__all__ = ["IndependentBernoulli"]


class IndependentBernoulli(GenerativeModel):
    r"""Fully factorised Bernoulli model over D binary variables.

    Generative story, for each row n and dimension d:

    .. math::
        x_{nd} \sim \mathrm{Bernoulli}(\sigma(\ell_d)), \qquad
        \log p(x) = \sum_d x_d \log \sigma(\ell_d) + (1 - x_d) \log(1 - \sigma(\ell_d)).

    D parameters (the logits :math:`\ell`), no latent variables, so the ELBO is the exact
    log-likelihood and the guide is empty. It is the baseline that ignores every dependence
    between pixels; the maximum-likelihood estimate is the per-pixel frequency.

    Parameters
    ----------
    x_dim : int
        Number of binary variables D.

    Examples
    --------
    >>> model = IndependentBernoulli.from_frequencies(torch.tensor([[0., 1.], [1., 1.]]))
    >>> model.probs
    tensor([0.5000, 1.0000])
    >>> round(model.log_prob(torch.tensor([[1., 1.]])).item(), 4)  # log 0.5 + log 1
    -0.6931
    """

    has_exact_likelihood = True

    def __init__(self, x_dim: int):
        super().__init__(x_dim)
        self.logits = nn.Parameter(torch.zeros(x_dim))

    @classmethod
    def from_frequencies(cls, x: torch.Tensor, pseudo_count: float = 0.0) -> "IndependentBernoulli":
        """The maximum-likelihood model: P(x_d = 1) is the frequency of ones in column d.

        ``pseudo_count`` is added to both outcomes (a Beta(c + 1, c + 1) prior's MAP estimate).
        Frequencies of exactly 0 or 1 are clipped to [1e-6, 1 - 1e-6] so that log-likelihoods
        of new data stay finite.
        """
        x = check_data(x, support="binary")
        if pseudo_count < 0:
            raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
        model = cls(x.shape[1])
        probs = (x.sum(0) + pseudo_count) / (x.shape[0] + 2 * pseudo_count)
        with torch.no_grad():
            model.logits.copy_(torch.logit(probs.to(model.logits.dtype), eps=1e-6))
        return model

    @property
    def probs(self) -> torch.Tensor:
        """P(x_d = 1) for every dimension, shape (D,)."""
        return torch.sigmoid(self.logits).detach()

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            return pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_data(x)
        return dist.Bernoulli(logits=self.logits).to_event(1).log_prob(x)
