r"""Objectives: what :func:`ppgen.fit` minimises, batch by batch.

The objective protocol, :class:`~ppgen.models.objective.Objective`, lives in the models layer
(a family ships its own objective beside its model); this module builds the inference layer's
own on it.

Built in:

- :class:`ELBO`: the evidence lower bound, with Pyro's estimators (``trace``, ``meanfield``,
  ``enum``, ``graph``) or the importance-weighted bound (``iwae``, Burda et al. 2016);
- :class:`MaximumLikelihood`: exact -log p(x) through the model's ``log_prob`` (no sampling).

Minibatch losses are scaled by N / B inside the data plate only, so they are unbiased
estimates of the full-data objective even with global latent variables.
"""

from __future__ import annotations

import contextlib

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from ppgen.checks import positive_int
from ppgen.inference.program import ELBO_ESTIMATORS, Program, call_args, logmeanexp
from ppgen.models.objective import PRECISIONS, Objective

__all__ = ["Objective", "ELBO", "MaximumLikelihood", "make_objective", "PRECISIONS"]

# where TraceGraph_ELBO keeps a site's decaying-average baseline in Pyro's global param store
BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


class ELBO(Objective):
    """Negative ELBO of a minibatch, scaled to the full data set.

    Parameters
    ----------
    program : Program
    estimator : {"trace", "meanfield", "enum", "graph", "iwae"}
        ``Trace_ELBO``, ``TraceMeanField_ELBO`` (analytic KL where known), ``TraceEnum_ELBO``
        (discrete latents summed out), ``TraceGraph_ELBO`` (score-function terms with
        Rao-Blackwellisation, and the baselines a guide's sites ask for: a decaying average is kept
        here per batch size, and checkpointed), or the importance-weighted bound per example.
    num_particles : int
        Samples per example, vectorised.
    precision : {"fp32", "bf16"}
    """

    ESTIMATORS = tuple(ELBO_ESTIMATORS)

    def __init__(self, program: Program, estimator: str = "trace", num_particles: int = 1, *,
                 precision: str = "fp32"):
        super().__init__(program, precision=precision)
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"estimator must be one of {self.ESTIMATORS}, got {estimator!r}")
        positive_int(num_particles, "num_particles")
        self.estimator = estimator
        self.num_particles = num_particles
        vectorize = num_particles > 1 and estimator != "iwae"
        self._pyro_elbo = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "enum": TraceEnum_ELBO,
                           "graph": TraceGraph_ELBO}.get(estimator, Trace_ELBO)(
            num_particles=num_particles, vectorize_particles=vectorize)
        self._ready = False
        self._baselines: dict[int, dict[str, torch.Tensor]] = {}  # rows of a batch -> "graph"'s running averages

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
            with self._own_baselines(x.shape[0]):
                elbo, surrogate = self._pyro_elbo._loss_and_surrogate_loss(model, guide, call_args(x, y), {})
            surrogate = torch.as_tensor(surrogate)
            return surrogate - surrogate.detach() - torch.as_tensor(elbo).detach()
        return self._pyro_elbo.differentiable_loss(model, guide, *call_args(x, y))

    @contextlib.contextmanager
    def _own_baselines(self, rows: int):
        """Hold ``"graph"``'s decaying-average baselines (``infer={"baseline": {"use_decaying_avg_baseline":
        True}}``) here, one set per batch size, instead of in Pyro's global store: Pyro keeps one running
        average per position of the batch, which a smaller last minibatch or ``fit``'s checks on chunks of
        other sizes could not use, and which would leak into the next fit. The store's own are put back."""
        store = pyro.get_param_store()
        outside = {name: store[name] for name in list(store.keys()) if name.startswith(BASELINE_PREFIX)}
        for name in outside:
            del store[name]
        mine = self._baselines.setdefault(rows, {})
        for name, value in mine.items():
            store[name] = value
        try:
            yield
        finally:
            for name in [name for name in list(store.keys()) if name.startswith(BASELINE_PREFIX)]:
                mine[name] = store[name].detach()
                del store[name]
            for name, value in outside.items():
                store[name] = value

    def checkpoint_state(self) -> dict:
        """``"graph"``'s decaying-average baselines by batch size (:meth:`_own_baselines`), where it has any."""
        if not self._baselines:
            return {}
        return {"baselines": {str(rows): dict(mine) for rows, mine in self._baselines.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        device = self.program.device
        self._baselines = {int(rows): {name: value.to(device) for name, value in mine.items()}
                           for rows, mine in state.get("baselines", {}).items()}

    def score(self, x, y=None) -> torch.Tensor:
        """Minus the loss summed over the rows, for validation: Pyro's ``TraceEnum_ELBO`` runs only
        where gradients are recorded, so ``"enum"`` scores in grad mode (and detaches)."""
        if self.estimator != "enum":
            return super().score(x, y)
        with torch.enable_grad():
            return -self(x, y, scale=1.0).detach()


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
