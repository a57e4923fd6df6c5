r"""Objectives: what :func:`ppgen.fit` minimises, batch by batch.

An :class:`Objective` is an ``nn.Module`` that owns a program's parameters and returns, for a
minibatch, a scalar loss per parameter group. ``fit`` runs one optimiser per group, stepping
the groups in the order of :attr:`Objective.groups`; nothing else in the loop knows which
objective it runs. A new family (adversarial, contrastive divergence, denoising) plugs in by
subclassing :class:`Objective`:

.. code-block:: python

    class MyObjective(Objective):
        groups = ("generator", "critic")          # one optimiser each, stepped in this order
        def loss(self, x, y, scale, group): ...   # a scalar tensor to minimise
        def group_parameters(self): ...          # {"generator": [...], "critic": [...]}

Built in:

- :class:`ELBO`: the evidence lower bound, with Pyro's estimators (``trace``, ``meanfield``,
  ``enum``, ``graph``) or the importance-weighted bound (``iwae``, Burda et al. 2016);
- :class:`MaximumLikelihood`: exact -log p(x) through the model's ``log_prob`` (no sampling).

Minibatch losses are scaled by N / B inside the data plate only, so they are unbiased
estimates of the full-data objective even with global latent variables.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from ppgen.inference.program import Program, call_args, logmeanexp
from ppgen.models.base import at_least_float32

__all__ = ["Objective", "ELBO", "MaximumLikelihood", "make_objective", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16")


class Objective(nn.Module):
    """Base class: a loss per minibatch and parameter group, for one :class:`Program`.

    Subclasses implement :meth:`loss`, and :meth:`group_parameters` when they have more than
    one group. :meth:`score` (per-example figure of merit, higher is better, used for
    validation) defaults to minus the loss of the first group.

    Attributes
    ----------
    groups : tuple of str
        Parameter groups, each with its own optimiser, stepped in this order every batch.
    estimator : str
        What :meth:`Program.validate` checks the story for (``"custom"``: the structure only).
    monotone : bool
        Whether the loss should fall steadily (``fit`` warns when it is still falling at the end);
        False for games such as a GAN's.
    num_particles : int
    """

    groups: tuple[str, ...] = ("params",)
    estimator: str = "custom"
    monotone: bool = True
    adam_betas: tuple[float, float] = (0.9, 0.999)  # GANs use (0.5, 0.9) (Radford et al.; Gulrajani et al.)

    def __init__(self, program: Program, *, precision: str = "fp32"):
        super().__init__()
        if not isinstance(program, Program):
            raise TypeError(f"an Objective needs a ppgen.Program, got {type(program).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.program = program
        self.owners = nn.ModuleList(program.modules)
        self.precision = precision
        self.num_particles = 1

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, scale: float = 1.0,
                group: str | None = None) -> torch.Tensor:
        # bf16: the networks' matrix products run in bfloat16 (autocast); ppgen's models hand
        # float32 outputs to their distributions, so log-densities and losses stay float32
        device = x.device.type if isinstance(x, torch.Tensor) else "cpu"
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return at_least_float32(self.loss(x, y, scale, group or self.groups[0]))

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        """The scalar to minimise for ``group`` on this batch, with the data plate scaled by ``scale``."""
        raise NotImplementedError

    def group_parameters(self) -> dict[str, list[torch.Tensor]]:
        """The tensors each group's optimiser updates (default: every parameter, one group).

        Called after one forward pass, so parameters created lazily (``pyro.param``, autoguides)
        exist; :func:`fit` adds those of plain ``pyro.param`` sites to the first group."""
        return {self.groups[0]: [p for p in self.parameters() if p.requires_grad]}

    @torch.no_grad()
    def score(self, x, y=None) -> torch.Tensor:
        """Sum over the rows of the per-example objective (higher is better), for validation."""
        return -self(x, y, scale=1.0)

    def collect_parameters(self, x, y=None) -> dict[str, list[torch.Tensor]]:
        """:meth:`group_parameters` after one pass of every group's loss on a batch, so that
        parameters created lazily (autoguides, ``pyro.param``) exist; plain ``pyro.param`` sites
        (their unconstrained tensors) join the first group."""
        with poutine.trace(param_only=True) as capture:
            for group in self.groups:
                self(x, y, group=group)
        groups = {name: list(params) for name, params in self.group_parameters().items()}
        if list(groups) != list(self.groups):
            raise ValueError(f"{type(self).__name__}.group_parameters() gave groups {list(groups)}, "
                             f"its groups are {list(self.groups)}")
        known = {id(p) for group in groups.values() for p in group}
        first = groups[self.groups[0]]
        for site in capture.trace.nodes.values():
            value = site["value"]
            unconstrained = value.unconstrained() if hasattr(value, "unconstrained") else value
            if id(unconstrained) not in known and unconstrained.requires_grad:
                known.add(id(unconstrained))
                first.append(unconstrained)
        return groups


class ELBO(Objective):
    """Negative ELBO of a minibatch, scaled to the full data set.

    Parameters
    ----------
    program : Program
    estimator : {"trace", "meanfield", "enum", "graph", "iwae"}
        ``Trace_ELBO``, ``TraceMeanField_ELBO`` (analytic KL where known), ``TraceEnum_ELBO``
        (discrete latents summed out), ``TraceGraph_ELBO`` (score-function terms with
        Rao-Blackwellisation), or the importance-weighted bound per example.
    num_particles : int
        Samples per example, vectorised.
    precision : {"fp32", "bf16"}
    """

    ESTIMATORS = ("trace", "meanfield", "enum", "graph", "iwae")

    def __init__(self, program: Program, estimator: str = "trace", num_particles: int = 1, *,
                 precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"estimator must be one of {self.ESTIMATORS}, got {estimator!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        self.estimator = estimator
        self.num_particles = num_particles
        vectorize = num_particles > 1 and estimator != "iwae"
        self._pyro_elbo = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "enum": TraceEnum_ELBO,
                           "graph": TraceGraph_ELBO}.get(estimator, Trace_ELBO)(
            num_particles=num_particles, vectorize_particles=vectorize)
        self._ready = False

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        program = self.program
        if not self._ready:
            nesting = program.nesting(x, y)
            # Pyro counts the vectorised particle plate in max_plate_nesting
            self._pyro_elbo.max_plate_nesting = nesting + int(self._pyro_elbo.vectorize_particles)
            self._ready = True
        if self.estimator == "iwae":
            log_w = program.log_weights(x, y, self.num_particles)  # (K, B)
            return -scale * logmeanexp(log_w).sum()
        model, guide = program.scaled(program.model, scale), program.scaled(program.guide, scale)
        if self.estimator == "graph":
            # TraceGraph_ELBO has no differentiable_loss: take the loss value from the ELBO and
            # the gradient from its surrogate (which includes the score-function terms).
            elbo, surrogate = self._pyro_elbo._loss_and_surrogate_loss(model, guide, call_args(x, y), {})
            surrogate = torch.as_tensor(surrogate)
            return surrogate - surrogate.detach() - torch.as_tensor(elbo).detach()
        return self._pyro_elbo.differentiable_loss(model, guide, *call_args(x, y))


class MaximumLikelihood(Objective):
    """Exact negative log-likelihood, -sum_n log p(x_n) scaled to the full data, through the
    model's ``log_prob``: no sampling, no guide. For models with ``has_exact_likelihood``."""

    estimator = "mle"

    def __init__(self, program: Program, *, precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if not program.exact:
            raise ValueError(f"maximum likelihood needs an exact log_prob; {program.name} has none (use an ELBO)")

    def loss(self, x, y, scale: float, group: str) -> torch.Tensor:
        return -scale * self.program.generative_model.log_prob(*call_args(x, y)).sum()


def make_objective(program: Program, estimator: str, num_particles: int = 1, *, precision: str = "fp32") -> Objective:
    """The built-in objective for an estimator name (already resolved from ``"auto"``)."""
    if estimator == "mle":
        return MaximumLikelihood(program, precision=precision)
    return ELBO(program, estimator, num_particles, precision=precision)
