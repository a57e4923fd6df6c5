r"""The objective protocol: what :func:`ppgen.fit` minimises, batch by batch.

It sits in the models layer, beside :class:`~ppgen.models.base.GenerativeModel`, because a
family that trains by something other than an ELBO (contrastive divergence, an adversarial game,
a denoising loss) ships its objective beside its model. The inference layer builds on it
(:mod:`ppgen.inference.objectives`: the ELBO family and exact maximum likelihood) and never the
other way round.

An :class:`Objective` is an ``nn.Module`` that owns a program's parameters and returns, for a
minibatch, a scalar loss per parameter group. ``fit`` runs one optimiser per group, stepping
the groups in the order of :attr:`Objective.groups`; nothing else in the loop knows which
objective it runs. A new family plugs in by subclassing it:

.. code-block:: python

    class MyObjective(Objective):
        groups = ("generator", "critic")          # one optimiser each, stepped in this order
        def loss(self, x, y, scale, group): ...   # a scalar tensor to minimise
        def group_parameters(self): ...          # {"generator": [...], "critic": [...]}
        def checkpoint_state(self): ...          # state kept between steps, if any (and load_checkpoint_state)

Minibatch losses are scaled by N / B inside the data plate only, so they are unbiased
estimates of the full-data objective even with global latent variables.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from typing import Any

import torch
from pyro import poutine
from torch import nn

from ppgen.models.base import NO_PLAIN_FORM, at_least_float32, plain

__all__ = ["Objective", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16")


class Objective(nn.Module):
    """Base class: a loss per minibatch and parameter group, for one :class:`Program`.

    Subclasses implement :meth:`loss`, and :meth:`group_parameters` when they have more than
    one group. :meth:`score` (per-example figure of merit, higher is better, used for
    validation and the best epoch) defaults to minus the loss of the first group; an objective
    whose loss is no normalised figure returns None (``fit`` then selects no epoch). An objective
    that keeps state of its own between steps (persistent chains, a replay buffer, a counter)
    declares it with :meth:`checkpoint_state` and :meth:`load_checkpoint_state`, so that a resumed
    run continues exactly; the parameters, the optimisers, the random state and the modules'
    buffers (running statistics) are checkpointed without it.

    Attributes
    ----------
    groups : tuple of str
        Parameter groups, each with its own optimiser, stepped in this order every batch.
    estimator : str
        What :meth:`Program.validate` checks the story for (``"custom"``: the structure only).
    monotone : bool
        Whether the loss should fall steadily (``fit`` warns when it is still falling at the end);
        False for games such as a GAN's.
    likelihood : bool
        Whether minus the loss per example is log p(x) or a bound or estimate of it, in nats (the
        ELBO family, exact maximum likelihood): ``fit`` labels its figures "nats/example" then, and
        otherwise as this objective's (L_simple, contrastive divergence, a GAN's game).
    num_particles : int
    init_arguments : mapping, set by the constructor
        The constructor's arguments after the program, defaults applied (those with a JSON form):
        ``fit``'s checkpoint fingerprint holds them, so a run resumes only with the same settings.
    """

    groups: tuple[str, ...] = ("params",)
    estimator: str = "custom"
    monotone: bool = True
    likelihood: bool = True
    adam_betas: tuple[float, float] = (0.9, 0.999)  # GANs use (0.5, 0.9) (Radford et al.; Gulrajani et al.)
    init_arguments: types.MappingProxyType = types.MappingProxyType({})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_arguments(cls.__dict__["__init__"])

    def __init__(self, program, *, precision: str = "fp32"):
        super().__init__()
        if not all(hasattr(program, name) for name in ("modules", "generative_model", "name")):
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

    def checkpoint_state(self) -> dict[str, Any]:
        """The state this objective keeps between steps beyond the parameters, as it is now:
        tensors and plain values (numbers, strings, None, lists and dicts of them) by name. Default:
        none (``{}``).

        ``fit`` copies it after every step and epoch it commits and writes the copy into the
        checkpoint, digested with the rest; an interrupted step leaves the copy of the step before."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, what :meth:`checkpoint_state` returned when the checkpoint was
        written (its tensors on the CPU: move them to the model's device). Raises ``ValueError``
        when it does not fit this objective. Default: nothing to restore."""

    @torch.no_grad()
    def score(self, x, y=None) -> torch.Tensor | None:
        """Sum over the rows of the per-example objective (higher is better), for validation, or
        None when the objective has none worth selecting an epoch by."""
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


_constructing = threading.local()


def _recording_arguments(init):
    """An objective's constructor that records, in its outermost call of a ``super().__init__`` chain, the
    arguments after the program in ``init_arguments``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if getattr(_constructing, "depth", 0):
            return init(self, *args, **kwargs)
        _constructing.depth = 1
        try:
            init(self, *args, **kwargs)
        finally:
            _constructing.depth = 0
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {}
        for name, value in list(bound.arguments.items())[2:]:  # after self and the program
            items = value.items() if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD else \
                [] if signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL else [(name, value)]
            arguments.update((key, plain(item)) for key, item in items if plain(item) is not NO_PLAIN_FORM)
        self.init_arguments = types.MappingProxyType({"objective": type(self).__name__, **arguments})

    return wrapper
