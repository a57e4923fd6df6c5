"""Dirichlet priors on the CPT rows of a Bayesian network, learned by SVI (:class:`BayesianCPTs`)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppgen.models.base import GenerativeModel, num_rows
from ppgen.models.bayesnet.learning import complete_counts
from ppgen.models.bayesnet.network import BayesNet, bayesnet_program

__all__ = ["BayesianCPTs"]


class BayesianCPTs(GenerativeModel):
    r"""A Bayesian network whose CPT rows have Dirichlet priors, learned by SVI.

    Generative story, with the structure of ``net`` and concentrations :math:`\alpha`:

    .. math::
        \theta_i[u, :] \sim \mathrm{Dirichlet}(\alpha_i[u, :]) \ \text{for every parent assignment } u,
        \qquad x_n \mid \theta \sim \prod_i \theta_i[\mathrm{pa}(x_{n,i}), x_{n,i}].

    The CPTs are global latent variables (outside the ``"data"`` plate, sites ``"cpt_<variable>"``);
    the guide is a Dirichlet per CPT row with free concentrations :math:`\beta` (the
    :attr:`num_parameters` counted are these). Dirichlet-categorical is conjugate: for complete
    data the exact posterior is :math:`\mathrm{Dirichlet}(\alpha + N)` with family counts N
    (:meth:`conjugate_posterior`), which the guide family contains, so SVI can reach it. Missing
    entries (-1) are enumerated: train with ``ppgen.fit(model, x, elbo="enum")``.

    References: D. Heckerman, "A Tutorial on Learning with Bayesian Networks", 1995;
    Koller & Friedman (2009), chapter 17.

    Parameters
    ----------
    net : BayesNet
        Supplies the variables, states and parents (its CPT values are not used).
    concentration : float
        Symmetric prior concentration :math:`\alpha` of every CPT row.
    """

    has_exact_likelihood = False
    data_support = "categorical"

    def __init__(self, net: BayesNet, concentration: float = 1.0):
        if not isinstance(net, BayesNet):
            raise TypeError(f"net must be a BayesNet, got {type(net).__name__}")
        if isinstance(concentration, bool) or not isinstance(concentration, (int, float)) or \
                not math.isfinite(concentration) or concentration <= 0:
            raise ValueError(f"concentration must be a positive number, got {concentration!r}")
        super().__init__(net.x_dim)
        self.net = BayesNet(net.states, net.parents)
        self.concentration = float(concentration)
        shapes = [self.net.structure.cpt_shape(i) for i in range(self.x_dim)]
        self.log_beta = nn.ParameterList([nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes])

    def _prior(self, i: int) -> dist.Distribution:
        alpha = torch.full(self.net.structure.cpt_shape(i), self.concentration, dtype=torch.float64,
                           device=self.device)
        return dist.Dirichlet(alpha).to_event(alpha.dim() - 1)

    def model(self, x=None, y=None, *, size=None):
        cpts = [pyro.sample(f"cpt_{v}", self._prior(i)) for i, v in enumerate(self.net.variables)]
        return bayesnet_program(self.net.structure, cpts, x, num_rows(x, y, size))

    def guide(self, x=None, y=None, *, size=None):
        for i, v in enumerate(self.net.variables):
            beta = self.log_beta[i].exp()
            pyro.sample(f"cpt_{v}", dist.Dirichlet(beta).to_event(beta.dim() - 1))

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        return self.net.check_data(x, name)

    def posterior_concentration(self) -> dict[str, torch.Tensor]:
        r"""The guide's Dirichlet concentrations :math:`\beta_v` (CPT shape)."""
        return {v: b.detach().exp() for v, b in zip(self.net.variables, self.log_beta)}

    def posterior_mean(self) -> BayesNet:
        r"""The network whose CPTs are the guide's means :math:`\beta / \sum \beta`."""
        return BayesNet(self.net.states, self.net.parents,
                        {v: b / b.sum(-1, keepdim=True) for v, b in self.posterior_concentration().items()})

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` rows of the posterior predictive (each row's, Dirichlet-categorical): the network at the guide's means."""
        return self.posterior_mean().sample(n)

    def conjugate_posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Exact posterior concentrations :math:`\alpha + N_v` given complete rows ``x``."""
        rows = self.net.check_data(x).long().to(self.net.device)
        if (rows < 0).any():
            raise ValueError("conjugate_posterior needs complete rows: with missing entries the exact "
                             "posterior is a mixture of Dirichlets; fit this model with elbo='enum'")
        return {v: self.concentration + c for v, c in complete_counts(self.net.structure, rows).items()}
