r"""Program: a generative story as the inference core sees it, checked before it is trained.

A :class:`Program` wraps what a user writes, and is the one place that traces it:

- a :class:`~ppgen.models.base.GenerativeModel` (its ``model`` and ``guide`` methods),
- a plain Pyro model function with ``guide=`` a function, a module or an autoguide name,
- either of those with an autoguide name in place of the model's own guide.

It vectorises particles, computes log importance weights per example, keeps a ppgen model's
parameters local to it, finds the plate that ranges over the data rows (whatever its name)
and scales it under minibatching. :meth:`Program.inspect` traces a story once on a batch and
returns what it is made of (an :class:`Inspection`: the data plate, the observed, latent and
enumerated sites); each ``Program.check_*`` method refuses one thing the core could not fit
correctly, naming the site; :meth:`Program.validate` runs them all on a first batch, and
:func:`check_model` is the same check as a public function.

Conventions (named once here, checked by :meth:`Program.validate`):

- rows of the data are the first dimension of ``x`` (and of ``y``);
- observations sit inside one plate over the rows (ppgen's models call it :data:`DATA_PLATE`);
- with ``num_particles > 1`` the model and guide broadcast over a particle dimension to the
  left of their plates (the :data:`PARTICLE_PLATE`).

Longer than 500 lines on purpose: every check a story gets before training lives here, next to the
tracing it checks; splitting them would put the conventions in two places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import numpy as np
import pyro
import pyro.infer.autoguide as autoguide
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppgen.data import NpyRows
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, check_data, local_params

__all__ = ["Program", "Inspection", "ModelCheck", "ModelCheckError", "check_model", "AUTOGUIDES", "DATA_PLATE",
           "OBSERVED_SITE", "PARTICLE_PLATE", "ESTIMATORS", "ELBO_ESTIMATORS", "sample_sites", "site_log_prob",
           "logmeanexp", "resolve_device", "batch_rows", "call_args"]

PARTICLE_PLATE = "particles"  # the plate ppgen adds to draw several samples per example at once
# The estimators of fit(elbo=...), named once: the ELBO's (ppgen.inference.objectives.ELBO), then "auto"
# (picked from the story: "enum", "mle" or "trace") and "mle" (exact -log p(x), MaximumLikelihood).
ELBO_ESTIMATORS = {
    "trace": "Trace_ELBO: the ELBO from samples of the guide",
    "meanfield": "TraceMeanField_ELBO: analytic KL terms where Pyro knows them",
    "enum": "TraceEnum_ELBO: discrete latents marked for enumeration summed out",
    "graph": "TraceGraph_ELBO: score-function terms with Rao-Blackwellisation",
    "iwae": "the importance-weighted bound per example (Burda et al. 2016)",
}
ESTIMATORS = ("auto", *ELBO_ESTIMATORS, "mle")
NORMALISATION_MAX_DIM = 12   # check that log_prob sums to 1 over all 2^D binary vectors up to this D

AUTOGUIDES = {
    "auto_normal": autoguide.AutoNormal,
    "auto_delta": autoguide.AutoDelta,
    "auto_diagonal_normal": autoguide.AutoDiagonalNormal,
    "auto_multivariate_normal": autoguide.AutoMultivariateNormal,
    "auto_lowrank_multivariate_normal": autoguide.AutoLowRankMultivariateNormal,
    "auto_iaf_normal": autoguide.AutoIAFNormal,
}


class ModelCheckError(ValueError):
    """A story that the inference core cannot fit correctly; the message names the site."""


@dataclasses.dataclass
class ModelCheck:
    """What :meth:`Program.validate` found on a batch, and which checks passed.

    Attributes
    ----------
    estimator : str
        The estimator the checks were made for (``"auto"`` resolved: ``"enum"`` when the model
        marks sites for enumeration, ``"mle"`` for an exact model without guide latents, else
        ``"trace"``).
    data_plate : str or None
        The plate over the data rows (None when no plate ranges over them).
    observed, latent, enumerated : list of str
        Observed sites, latent sites the guide samples, and sites summed out by enumeration.
    passed : list of str
        The checks that passed, in words.
    """

    estimator: str
    data_plate: str | None
    observed: list[str]
    latent: list[str]
    enumerated: list[str]
    passed: list[str]

    def __str__(self) -> str:
        lines = [f"estimator {self.estimator!r}; data plate {self.data_plate!r}; observed {_names(self.observed)}; "
                 f"guide latents {_names(self.latent)}; enumerated {_names(self.enumerated)}"]
        return "\n".join(lines + [f"  ok: {p}" for p in self.passed])

    def __repr__(self) -> str:
        return (f"ModelCheck({self.estimator!r}, data_plate={self.data_plate!r}, observed {_names(self.observed)}, "
                f"latent {_names(self.latent)}, enumerated {_names(self.enumerated)}, {len(self.passed)} checks passed)")

    def to_dict(self) -> dict:
        """The findings as plain lists and strings (for ``json.dumps``)."""
        return dataclasses.asdict(self)


def _names(sites: list[str], limit: int = 8) -> str:
    """``[a, b, ...]`` with at most ``limit`` names, and how many more (short reprs for big networks)."""
    more = f", ... {len(sites) - limit} more" if len(sites) > limit else ""
    return "[" + ", ".join(sites[:limit]) + more + "]"


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What one trace of a model and its guide on a batch is made of (:meth:`Program.inspect`).

    Attributes
    ----------
    rows : int
        Rows of the batch traced.
    data_plate : str or None
        The plate over the data rows (None when no plate ranges over them).
    nesting : int
        Batch dimensions the model and guide use (the most plates any site sits in, by ``dim``).
    observed : tuple of str
        Observed sites of the model.
    latent : tuple of str
        Latent sites of the model that the guide samples (auxiliary guide sites, AutoNormal's, left out).
    enumerated : tuple of str
        Latent sites of the model that the guide does not sample and that are marked for enumeration.
    guide_enumerated : tuple of str
        Sites of the guide marked for enumeration (``config_enumerate(guide)``): only ``elbo="enum"``
        sums them out.
    unguided : tuple of str
        Latent sites of the model that the guide does not sample and that are not marked for
        enumeration: an ELBO would draw them from the prior and miss their term.
    observed_outside : tuple of str
        Observed sites outside the data plate (all of them when there is none), but for the ``pyro.factor``
        terms of ``global_factors``.
    guide_outside : tuple of str
        Sites the guide samples outside the data plate (auxiliary ones too): one value for all rows.
    subsampling : tuple of str
        Plates of the model that draw their own subsample of the rows (``pyro.plate(name, N,
        subsample_size=...)``, or ``subsample=``): each step scores a minibatch that the model picks.
    guide_only : tuple of str
        Sites the guide samples that the model does not have and that are not marked auxiliary
        (``infer={"is_auxiliary": True}``): each adds its entropy, and no density, to the ELBO.
    guide_unbounded : tuple of str
        Latent sites whose guide distribution ranges over all real numbers where the model's is
        bounded (a Normal guide for a Beta, Gamma or HalfNormal site): draws outside the model's
        support have no density.
    scaled_in_plate : tuple of (str, float)
        Sites of the model or guide inside the data plate whose log-density the story scales itself
        (``poutine.scale``, or a plate with ``subsample=``) by a single number, with that number.
    factors : tuple of str
        The model's ``pyro.factor`` terms (observed sites marked auxiliary), wherever they are.
    global_factors : tuple of str
        ``pyro.factor`` terms outside the data plate that stay the same on one row fewer, the latents outside
        the plate held: terms of the global latents (a penalty on a prior), counted once however many rows a
        step scores, as a latent's prior is. One that changes with the rows is among ``observed_outside``.
    """

    rows: int
    data_plate: str | None
    nesting: int
    observed: tuple[str, ...]
    latent: tuple[str, ...]
    enumerated: tuple[str, ...]
    unguided: tuple[str, ...]
    observed_outside: tuple[str, ...]
    guide_outside: tuple[str, ...]
    guide_enumerated: tuple[str, ...] = ()
    subsampling: tuple[str, ...] = ()
    guide_only: tuple[str, ...] = ()
    guide_unbounded: tuple[str, ...] = ()
    scaled_in_plate: tuple[tuple[str, float], ...] = ()
    factors: tuple[str, ...] = ()
    global_factors: tuple[str, ...] = ()


class Program:
    """A model and its guide, with the modules that own their parameters.

    Parameters
    ----------
    model : GenerativeModel or callable
        A ppgen model, or a plain Pyro model function ``model(x[, y])``.
    guide : None, callable or str
        The model's own guide (default, for a ``GenerativeModel``; for a plain story, none: every
        latent enumerated, or no latent), a guide function or module, or an autoguide name
        (``"auto_normal"``, ...; see :data:`AUTOGUIDES`). An autoguide guides the continuous latent
        sites; the discrete ones are hidden from it and summed out where the model marks them for
        enumeration (``infer={"enumerate": "parallel"}``), refused otherwise.
    data_plate : str, optional
        The name of the plate over the data rows. By default it is found on the first batch:
        the plate whose size follows the number of rows given.

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> def coin(x):
    ...     p = pyro.sample("p", dist.Beta(1.0, 1.0))
    ...     with pyro.plate("flips", len(x)):
    ...         pyro.sample("obs", dist.Bernoulli(p), obs=x)
    >>> program = Program(coin, "auto_normal")
    >>> check = program.validate(torch.ones(10), num_rows=100)
    >>> check.data_plate, check.latent, check.estimator
    ('flips', ['p'], 'trace')
    """

    def __init__(self, model, guide=None, *, data_plate: str | None = None):
        if isinstance(model, Program):
            raise TypeError("model is already a Program; pass it on as it is")
        self.generative_model = model if isinstance(model, GenerativeModel) else None
        if self.generative_model is None and not callable(model):
            raise TypeError(f"model must be a GenerativeModel or a Pyro model function, got {type(model).__name__}")
        if data_plate is not None and not isinstance(data_plate, str):
            raise TypeError(f"data_plate must be a plate name (str), got {type(data_plate).__name__}")
        self.source = model
        self.autoguide_name = guide if isinstance(guide, str) else None
        self.model: Callable = model.model if self.generative_model is not None else model
        self.guide_module: torch.nn.Module | None = None
        if guide is None:
            # a plain story without a guide has no latent to guide (all summed out, or none): as Pyro's empty
            # guide; check_guided refuses one whose latents would go unguided
            self.guide: Callable = self.generative_model.guide if self.generative_model is not None else no_guide
        elif isinstance(guide, str):
            if guide not in AUTOGUIDES:
                raise ValueError(f"unknown autoguide {guide!r}; choices: {', '.join(AUTOGUIDES)}")
            # an autoguide guides continuous sites only: it is built without the discrete latents,
            # which the model then sums out where they are marked for enumeration (check_guided
            # refuses the others), as Pyro's mixture tutorials block them by hand
            self.guide_module = AUTOGUIDES[guide](poutine.block(self.model, hide_fn=_discrete_latent))
            _forget_stale_params(self.guide_module._pyro_name)
            self.guide = self.guide_module
        elif callable(guide):
            self.guide = guide
            self.guide_module = guide if isinstance(guide, torch.nn.Module) else None
        else:
            raise TypeError(f"guide must be a function, a module or an autoguide name, got {type(guide).__name__}")
        self.data_plate = data_plate
        self.subsampling: tuple[str, ...] = ()  # set by validate: the plates that subsample the rows themselves
        self.global_latents: tuple[str, ...] = ()  # set by validate: latents the guide draws once for all rows
        self._nesting: int | None = None

    def __repr__(self) -> str:
        guide = "own guide" if self.guide_module is None and self.generative_model is not None else \
            type(self.guide_module).__name__ if self.guide_module is not None else getattr(self.guide, "__name__", "guide")
        return f"Program({self.name}, {guide}, data_plate={self.data_plate!r})"

    @property
    def name(self) -> str:
        if self.generative_model is not None:
            return type(self.generative_model).__name__
        return getattr(self.model, "__name__", "model")

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.generative_model, self.guide_module) if m is not None]

    @contextlib.contextmanager
    def mode(self, training: bool, *others: torch.nn.Module):
        """Run the body with the story's modules (and ``others``) in training (``True``) or evaluation
        mode, as ``nn.Module.train`` sets it: dropout on or off, batch norm on the batch's statistics or
        its running ones. Every submodule is put back in its own mode after."""
        roots = {id(m): m for m in (*self.modules, self.model, *others) if isinstance(m, torch.nn.Module)}
        saved = [(sub, sub.training) for m in roots.values() for sub in m.modules()]
        for module in roots.values():
            module.train(training)
        try:
            yield
        finally:
            for sub, was_training in saved:
                sub.training = was_training

    @property
    def exact(self) -> bool:
        """Whether log p(x) is available in closed form (and the guide is the model's own)."""
        gm = self.generative_model
        return gm is not None and gm.has_exact_likelihood and self.guide_module is None

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (CPU for parameter-free plain functions)."""
        for module in self.modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def param_scope(self):
        """Keep a ppgen model's parameters local to it; plain Pyro functions keep Pyro's usual
        global param store (their ``pyro.param`` sites live there, and Pyro does not support
        global params inside module-local PyroModules such as an autoguide tracing them)."""
        if self.generative_model is None:
            return contextlib.nullcontext()
        return local_params(*self.modules)

    def to(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)

    # --- data ---------------------------------------------------------------------------------

    def check_data(self, x, name: str) -> torch.Tensor:
        """A ppgen model's rows are (N, D) in its support; a plain program's any shape, rows first."""
        if self.generative_model is not None:
            return self.generative_model.check_data(x, name=name)
        return check_data(x, name=name, any_shape=True)

    def rows(self, data, name: str = "data"):
        """Split ``data`` into checked rows ``x`` and optional labels ``y`` with as many rows."""
        if isinstance(data, (tuple, list)):
            if len(data) != 2:
                raise ValueError(f"{name} must be x or a pair (x, y), got a sequence of {len(data)} items")
            x, y = data
        else:
            x, y = data, None
        if isinstance(x, np.memmap) and x.filename is not None and str(x.filename).endswith(".npy"):
            x = NpyRows(x.filename)  # read rows on demand instead of mapping the whole file
        elif isinstance(x, torch.utils.data.Dataset) and not hasattr(x, "check_rows"):
            x = DatasetRows(x)
        if hasattr(x, "check_rows"):  # rows read or drawn when indexed (on disk, dynamic binarization)
            x.check_rows(self.generative_model.x_dim if self.generative_model else None, name)
        else:
            x = self.check_data(x, name)
        if y is not None:
            y = torch.as_tensor(y)
            if y.dim() == 0 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{name}: x has {x.shape[0]} rows but y has shape {tuple(y.shape)}")
        return x, y

    # --- tracing ------------------------------------------------------------------------------

    def nesting(self, *args) -> int:
        """How many batch dimensions the model and guide use with arguments ``args`` (``x`` or
        ``(x, y)``; traced once, then cached)."""
        if self._nesting is None:
            with poutine.block():
                self._nesting = _nesting(*self._trace_pair(self.model, self.guide, _strip(args)))
        return self._nesting

    def scaled(self, fn: Callable, factor: float) -> Callable:
        """``fn`` with the log-densities inside the data plate multiplied by ``factor``."""
        if factor == 1.0:
            return fn
        return ScaleDataPlate(self.data_plate or DATA_PLATE, factor)(fn)

    def trace(self, *args, num_particles: int | None = None, scale: float = 1.0):
        """(guide trace, model trace replayed on it) for the arguments ``args`` (``x`` or
        ``(x, y)``; a trailing None is dropped), with ``num_particles`` draws per example
        vectorised in an outer :data:`PARTICLE_PLATE` (none when None), and the data plate's
        log-densities scaled by ``scale`` (see :meth:`scaled`)."""
        args = _strip(args)
        model, guide = self.scaled(self.model, scale), self.scaled(self.guide, scale)
        if num_particles is None:
            return self._trace_pair(model, guide, args)
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(self.nesting(*args) + 1)):
            return self._trace_pair(model, guide, args)

    def rowwise_guide_sites(self, x, y=None) -> list[str]:
        """The sites the guide samples once per row: inside the data plate, where it does not
        subsample (the guide traced once on ``x``, without gradients); auxiliary ones (AutoNormal's
        ``z_unconstrained``) left out."""
        with torch.no_grad(), poutine.block(), torch.random.fork_rng(_cuda(x)):  # training's draws as they were
            trace = poutine.trace(self.guide).get_trace(*_strip((x, y)))
        return [site["name"] for site in sample_sites(trace) if not site["infer"].get("is_auxiliary") and any(
            f.name == self.data_plate and f.size == f.full_size for f in site["cond_indep_stack"])]

    def _guide_fails(self, x, y) -> bool:
        """Whether the guide fails to trace on ``x`` with a shape mismatch inside a plate where the model alone
        does not (an autoguide runs the model, and fails with it)."""
        def mismatch(fn) -> bool:
            try:
                poutine.trace(fn).get_trace(*_strip((x, y)))
            except ValueError as err:
                return str(err).startswith("Shape mismatch inside plate")
            return False
        return mismatch(self.guide) and not mismatch(self.model)

    def positional_guide_sites(self, x, y=None) -> list[str]:
        """The guide's per-row sites (:meth:`rowwise_guide_sites`) whose parameters belong to row positions, not
        to the rows' values: an autoguide's local latents (a parameter per row of the data it first saw), or a
        hand-written guide's ``pyro.param`` of ``len(x)`` values, which keeps its size, and fails, on one row
        fewer. Such a guide has nothing for other rows (held-out ones, a chunk, a shuffled minibatch); an
        amortised one, a network of ``x``, has. Call after the guide has seen ``x`` (its parameters exist)."""
        local = self.rowwise_guide_sites(x, y)
        if not local or isinstance(self.guide_module, autoguide.AutoGuide):
            return local
        if x.shape[0] < 2:
            return []
        with torch.no_grad(), poutine.block(), torch.random.fork_rng(_cuda(x)):
            try:
                poutine.trace(self.guide).get_trace(*_strip((x[:-1], y[:-1] if y is not None else None)))
            except (ValueError, RuntimeError):
                return local
        return []

    @staticmethod
    def _trace_pair(model, guide, args):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
        return guide_trace, model_trace

    def per_example(self, t: torch.Tensor, site: dict[str, Any], trailing: int = 0) -> torch.Tensor:
        """Put the particle and data dims of a batch-shaped tensor first: (K, N, other..., trailing...),
        with at least one "other" dim so that callers can flatten uniformly."""
        plate = self.data_plate or DATA_PLATE
        data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == plate]
        if not data_dims:
            raise ModelCheckError(
                f"site {site['name']!r} is outside the data plate {plate!r}: values per example need every "
                "latent and observed site inside it (use elbo='trace' for global latents)")
        nesting = self._nesting if self._nesting is not None else 0
        n = site["cond_indep_stack"][[f.dim for f in site["cond_indep_stack"]].index(data_dims[0])].size
        batch = t.dim() - trailing
        t = t.reshape((1,) * (nesting + 1 - batch) + t.shape)
        t = t.movedim((0, nesting + 1 + data_dims[0]), (0, 1))
        if t.dim() == 2 + trailing:
            t = t.unsqueeze(2)
        return t.expand(-1, n, *t.shape[2:])

    def log_weights(self, x, y=None, num_particles: int = 1) -> torch.Tensor:
        """log p(x_n, z_k) - log q(z_k | x_n) for K particles drawn from the guide, shape (K, N).

        Latent sites that the guide does not sample are drawn from the prior in the model,
        so they cancel from the weights.
        """
        guide_trace, model_trace = self.trace(x, y, num_particles=num_particles)
        total = x.new_zeros(num_particles, x.shape[0], dtype=torch.get_default_dtype()
                            if not x.is_floating_point() else x.dtype)
        for site in sample_sites(model_trace):
            if site["is_observed"] or site["name"] in guide_trace.nodes:
                total = total + self.per_example(site_log_prob(site), site).flatten(2).sum(-1)
        for site in sample_sites(guide_trace):
            if not site["is_observed"]:
                total = total - self.per_example(site_log_prob(site), site).flatten(2).sum(-1)
        return total

    # --- inspection and checks ----------------------------------------------------------------

    @contextlib.contextmanager
    def _quietly(self, x):
        """Run the model and guide for a look only: parameters scoped, no gradients, outside any
        enclosing trace, and the random state left as it was."""
        with self.param_scope(), torch.no_grad(), poutine.block(), torch.random.fork_rng(_cuda(x)):
            yield

    def inspect(self, x, y=None) -> Inspection:
        """Trace the model and guide once on a batch of rows and say what the story is made of.

        Changes nothing, the random state included, and checks nothing but that the data plate can
        be told: it is :attr:`data_plate` when that is set, else the plate whose size follows the
        number of rows (traced again on one row fewer when several plates have that size; among
        several that still do, :data:`DATA_PLATE`). Raises :class:`ModelCheckError` when
        ``data_plate=`` names no plate of the model, or several plates range over the rows and none
        is :data:`DATA_PLATE`.

        Examples
        --------
        >>> import pyro.distributions as dist
        >>> def coin(x):
        ...     p = pyro.sample("p", dist.Beta(1.0, 1.0))
        ...     with pyro.plate("flips", len(x)):
        ...         pyro.sample("obs", dist.Bernoulli(p), obs=x)
        >>> story = Program(coin, "auto_normal").inspect(torch.ones(10))
        >>> story.data_plate, story.observed, story.latent, story.observed_outside
        ('flips', ('obs',), ('p',), ())
        """
        with self._quietly(x):
            try:
                guide_trace, model_trace = self.trace(x, y)
            except ValueError as err:
                if not str(err).startswith("Shape mismatch inside plate"):
                    raise
                if self._guide_fails(x, y):
                    raise ModelCheckError(
                        f"{str(err).splitlines()[0]} in the guide: its parameters do not follow the {x.shape[0]} rows "
                        "given. A parameter with a value per row of all the data (pyro.param('z_loc', "
                        "torch.zeros(N))) has none for a minibatch or held-out rows: fit all the rows at once "
                        "(batch_size >= N), or make the guide a function of x (amortised)") from None
                raise ModelCheckError(
                    f"{str(err).splitlines()[0]}: the site's batch shape does not line up with the plates around it. "
                    "Where the trailing values of a row are one observation (a row of pixels), declare them with "
                    ".to_event(k), as in dist.Bernoulli(p).to_event(1); where they are a plate of their own, nest "
                    "a pyro.plate over them") from None
            plate = self._find_data_plate(x, y, model_trace)
            global_factors = self._global_factors(x, y, model_trace, plate)
        model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
        prior = [s for s in model_sites if not s["is_observed"] and s["name"] not in guide_trace.nodes]
        return Inspection(
            rows=x.shape[0], data_plate=plate, nesting=_nesting(guide_trace, model_trace),
            observed=tuple(s["name"] for s in model_sites if s["is_observed"]),
            latent=tuple(s["name"] for s in guide_sites if not s["is_observed"] and s["name"] in model_trace.nodes),
            enumerated=tuple(s["name"] for s in prior if s["infer"].get("enumerate")),
            unguided=tuple(s["name"] for s in prior if not s["infer"].get("enumerate")),
            observed_outside=tuple(s["name"] for s in model_sites if s["is_observed"] and not _in_plate(s, plate)
                                   and s["name"] not in global_factors),
            guide_outside=tuple(s["name"] for s in guide_sites if not s["is_observed"] and not _in_plate(s, plate)),
            guide_enumerated=tuple(s["name"] for s in guide_sites if s["infer"].get("enumerate")),
            subsampling=tuple(sorted({f.name for s in model_sites for f in s["cond_indep_stack"]
                                      if f.vectorized and f.size < f.full_size})),
            guide_only=tuple(s["name"] for s in guide_sites if not s["is_observed"]
                             and s["name"] not in model_trace.nodes and not s["infer"].get("is_auxiliary")),
            guide_unbounded=tuple(s["name"] for s in guide_sites if not s["is_observed"]
                                  and s["name"] in model_trace.nodes and _unbounded(s["fn"])
                                  and _bounded(model_trace.nodes[s["name"]]["fn"])),
            scaled_in_plate=tuple((s["name"], float(s["scale"])) for s in model_sites + guide_sites
                                  if _in_plate(s, plate) and _one_number(s["scale"]) and float(s["scale"]) != 1.0),
            factors=tuple(s["name"] for s in model_sites if is_factor(s)), global_factors=global_factors)

    def validate(self, x, y=None, *, num_rows: int | None = None, estimator: str = "auto",
                 num_particles: int = 1, thorough: bool = True) -> ModelCheck:
        """Check the story on a batch of rows (as ``fit`` does on its first batch); refuse what the
        core cannot fit correctly.

        :meth:`inspect`, then the checks in this order, each raising :class:`ModelCheckError` that
        names the site: :meth:`check_observes`, :meth:`check_normalised`, :meth:`check_minibatch`
        (``num_rows`` > rows given), :meth:`check_own_scaling` (the same), :meth:`check_guided`,
        :meth:`check_enumerated`, :meth:`check_per_example`, :meth:`check_particles`
        (``num_particles > 1`` with an ELBO), and
        for a ``GenerativeModel`` :meth:`check_sample_shape` (``thorough`` only),
        :meth:`check_sums_to_one` and :meth:`check_log_prob`. Sets :attr:`data_plate` to the plate
        found (and caches the nesting that :meth:`trace` vectorises particles beside).

        Returns
        -------
        ModelCheck
        """
        if estimator not in ESTIMATORS and estimator != "custom":
            raise ValueError(f"elbo must be one of {ESTIMATORS}, got {estimator!r}")
        story = self.inspect(x, y)
        num_rows = story.rows if num_rows is None else num_rows
        estimator = self._resolve_estimator(estimator, story)
        self.check_observes(story, estimator)
        self.check_normalised(estimator)
        self.data_plate, self._nesting, self.subsampling = story.data_plate, story.nesting, story.subsampling
        self.global_latents = tuple(name for name in story.guide_outside if name in story.latent)
        passed = [f"data plate {story.data_plate!r} ranges over the {story.rows} rows" if story.data_plate
                  else f"plate {story.subsampling[0]!r} draws its own minibatch" if story.subsampling
                  else "no data plate (full batch)"]
        self.check_subsampling(story, num_rows)
        self.check_guide_sites(story)
        self.check_minibatch(story, num_rows)
        if story.global_factors:
            passed.append(f"pyro.factor {_names(list(story.global_factors))} outside the data plate: a term of the "
                          "global latents alone (the same on fewer rows), counted once a step")
        self.check_own_scaling(story, num_rows)
        self.check_guided(story, estimator)
        self.check_enumerated(story, estimator)
        passed.append("every latent of the model is sampled by the guide or enumerated")
        self.check_per_example(story, estimator, num_rows)
        if num_particles > 1 and estimator in ELBO_ESTIMATORS:
            passed.append(self.check_particles(x, y, story))
        found = (self.check_sample_shape(x, y) if thorough else None, self.check_sums_to_one(x, y),
                 self.check_log_prob(x, y, story))
        passed += [line for line in found if line is not None]
        return ModelCheck(estimator, story.data_plate, list(story.observed), list(story.latent),
                          list(story.enumerated), passed)

    def _resolve_estimator(self, estimator: str, story: Inspection) -> str:
        if estimator == "custom":  # an Objective of its own: only the story's structure is checked
            return estimator
        if estimator != "auto":
            if estimator == "mle" and not self.exact:
                raise ValueError(f"elbo='mle' needs a model with an exact log_prob and its own guide; "
                                 f"{self.name} has none (use an ELBO)")
            return estimator
        if story.enumerated or story.guide_enumerated:
            return "enum"
        if self.exact and not story.latent:
            return "mle"
        return "trace"

    def _global_factors(self, x, y, model_trace, plate: str | None) -> tuple[str, ...]:
        """The ``pyro.factor`` terms outside the data plate that are the same when the model runs again on one
        row fewer with the latents outside the plate held at their values: terms of those latents alone.
        Pyro counts a site outside a subsampled plate once, whatever it is; ppgen asks, so that a term of all
        the rows written as one factor is refused under minibatches rather than counted once for a few rows."""
        factors = [site for site in sample_sites(model_trace) if is_factor(site) and not _in_plate(site, plate)]
        if not factors or x.shape[0] < 2:
            return ()
        held = {site["name"]: site["value"] for site in sample_sites(model_trace)
                if not site["is_observed"] and not _in_plate(site, plate)}
        fewer = y[:-1] if y is not None else None
        try:
            smaller = poutine.trace(poutine.condition(self.model, data=held)).get_trace(*_strip((x[:-1], fewer)))
        except (ValueError, RuntimeError):
            return ()
        same = []
        for site in factors:
            again = smaller.nodes.get(site["name"])
            if again is not None and again["type"] == "sample":
                before, after = site_log_prob(site), site_log_prob(again)
                if before.shape == after.shape and torch.allclose(before, after):
                    same.append(site["name"])
        return tuple(same)

    def _find_data_plate(self, x, y, model_trace) -> str | None:
        """The plate whose size follows the number of rows: traced on ``len(x)`` rows, and on
        one row fewer to tell it from another plate of the same size, or (a plain Pyro story) from
        a plate whose size is fixed."""
        batch = x.shape[0]
        plates = {f.name: f for s in sample_sites(model_trace) for f in s["cond_indep_stack"]}
        if self.data_plate is not None:
            if self.data_plate not in plates:
                raise ModelCheckError(f"data_plate={self.data_plate!r} is not a plate of {self.name}; "
                                      f"its plates are {sorted(plates)}")
            return self.data_plate
        candidates = [name for name, f in plates.items() if f.size == batch]
        if batch > 1 and (len(candidates) > 1 or candidates and self.generative_model is None):
            # a story of the user's may also fix the plate's size, pyro.plate("data", 300): on one row fewer it
            # keeps it (or fails), and is no plate over the rows
            fewer = y[: batch - 1] if y is not None else None
            try:  # the model alone: an autoguide of local latents is sized for the rows it first saw
                smaller = poutine.trace(self.model).get_trace(*_strip((x[: batch - 1], fewer)))
            except (ValueError, RuntimeError):
                if len(candidates) > 1:
                    raise
                return None
            shrunk = {f.name for s in sample_sites(smaller) for f in s["cond_indep_stack"] if f.size == batch - 1}
            candidates = [c for c in candidates if c in shrunk]
        if len(candidates) > 1:
            if DATA_PLATE in candidates:
                return DATA_PLATE
            raise ModelCheckError(f"plates {candidates} all range over the {batch} rows; name the data plate "
                                  "with data_plate=")
        return candidates[0] if candidates else None

    def check_observes(self, story: Inspection, estimator: str) -> None:
        """Refuse a story that observes nothing, unless it is trained with an objective of its own
        (``estimator="custom"``: an implicit model, a GAN, observes nothing by design)."""
        if not story.observed and estimator != "custom":
            raise ModelCheckError(f"{self.name} observes nothing: no sample site has obs= set on the data")

    def check_normalised(self, estimator: str) -> None:
        """Refuse a built-in estimator for a model whose factor lacks -log Z
        (:attr:`~ppgen.models.base.GenerativeModel.is_normalised` False): it would lower the energy
        everywhere without bound."""
        if self.generative_model is not None and not self.generative_model.is_normalised \
                and estimator in ESTIMATORS:
            raise ModelCheckError(
                f"{self.name}'s density is unnormalised (its factor lacks -log Z): elbo={estimator!r} would "
                "lower its energy everywhere without bound. Train it with its own objective (elbo='auto')")

    def check_guide_sites(self, story: Inspection) -> None:
        """Refuse a guide site that the model lacks (a misspelt name), and a guide distribution over all
        reals for a latent that the model bounds: Pyro warns of the first and fails obscurely on the second."""
        if story.guide_only:
            unguided = f" (and the model's {story.unguided[0]!r} goes unguided: misspelt?)" if story.unguided else ""
            raise ModelCheckError(
                f"the guide samples {story.guide_only[0]!r}, which the model does not{unguided}: its entropy would "
                "enter the ELBO with no density to match. Name it as the model's site, drop it, or mark it "
                "infer={'is_auxiliary': True} if it only helps the guide")
        if story.guide_unbounded:
            raise ModelCheckError(
                f"the guide draws latent site {story.guide_unbounded[0]!r} over all real numbers, where the model "
                "bounds it (its support is narrower): draws outside have no density. Give the guide a "
                "distribution on the same support (e.g. a Beta for a Beta, a LogNormal for a Gamma, or "
                "dist.TransformedDistribution(base, biject_to(support))), or use an autoguide")

    def check_subsampling(self, story: Inspection, num_rows: int) -> None:
        """Refuse a model that subsamples the rows itself when it is given a minibatch of ``num_rows``
        rows: the two would subsample twice, and neither scale would be right."""
        if story.subsampling and num_rows > story.rows:
            raise ModelCheckError(
                f"plate {story.subsampling[0]!r} draws its own subsample of the rows (subsample_size= or "
                f"subsample=), and fit was drawing minibatches of {story.rows} of {num_rows} rows too: pass "
                f"batch_size >= {num_rows} to leave the minibatches to the plate, or write "
                f"pyro.plate({story.subsampling[0]!r}, len(x)) and let fit draw them")

    def check_minibatch(self, story: Inspection, num_rows: int) -> None:
        """Refuse an observed site outside the data plate when the batch is a minibatch of
        ``num_rows`` rows: its log-density could not be scaled to the full data."""
        if story.observed_outside and num_rows > story.rows:
            plate, name = story.data_plate, story.observed_outside[0]
            where = f"outside the data plate {plate!r}" if plate else "outside a plate over the data rows"
            if name in story.factors:
                raise ModelCheckError(
                    f"pyro.factor {name!r} is {where} and changes with the rows given: a term of the data, which on "
                    f"a minibatch of {story.rows} of {num_rows} rows cannot be scaled to the full data. Give it a "
                    f"value per row inside pyro.plate(name, len(x)), or use batch_size >= {num_rows}")
            raise ModelCheckError(
                f"observed site {name!r} is {where}: a minibatch of {story.rows} of {num_rows} rows cannot be scaled "
                f"to the full data. Observe it inside pyro.plate(name, len(x)), or use batch_size >= {num_rows}")

    def check_own_scaling(self, story: Inspection, num_rows: int) -> None:
        """Refuse a story that scales a site in the data plate by ``num_rows`` / rows itself (``poutine.scale``,
        the minibatch scaling written by hand) when it is given a minibatch: fit scales the data plate to the
        full data too, and the likelihood would count twice."""
        factor = num_rows / story.rows
        for name, scale in story.scaled_in_plate:
            if num_rows > story.rows and math.isclose(scale, factor, rel_tol=1e-6):
                raise ModelCheckError(
                    f"site {name!r} is scaled by {scale:g} = {num_rows} / {story.rows} in the story itself "
                    "(poutine.scale): the minibatch scaling, which fit applies to the data plate on its own, so the "
                    "likelihood would "
                    f"count {factor:g} times over and the posterior be too sure. Remove the poutine.scale (fit "
                    f"scales each minibatch to all {num_rows} rows), or use batch_size >= {num_rows}")

    def check_guided(self, story: Inspection, estimator: str) -> None:
        """Refuse, for an ELBO, a latent site of the model that the guide does not sample and that
        is not enumerated: its term would be missing from the ELBO."""
        if story.unguided and estimator in ELBO_ESTIMATORS and self.autoguide_name is not None:
            raise ModelCheckError(
                f"discrete latent site {story.unguided[0]!r} is not enumerated, and the autoguide "
                f"{self.autoguide_name!r} guides continuous sites only: its term would be missing from the ELBO. "
                "Mark it with infer={'enumerate': 'parallel'} (or pass pyro.infer.config_enumerate(model)) so "
                "that elbo='auto' sums it out, or pass a guide function that samples it")
        if story.unguided and estimator in ELBO_ESTIMATORS:
            raise ModelCheckError(
                f"latent site {story.unguided[0]!r} of the model is not sampled by the guide and not enumerated: "
                "its term would be missing from the ELBO. Sample it in the guide (or pass an autoguide, "
                "guide='auto_normal'), or mark a discrete site with infer={'enumerate': 'parallel'} (and use "
                "elbo='auto' or 'enum')")

    def check_enumerated(self, story: Inspection, estimator: str) -> None:
        """Refuse a site marked for enumeration under an ELBO that does not sum it out (all but "enum")."""
        if story.enumerated and estimator in ELBO_ESTIMATORS and estimator != "enum":
            raise ModelCheckError(
                f"site {story.enumerated[0]!r} is marked for enumeration, which only elbo='enum' (or 'auto') "
                f"sums out; elbo={estimator!r} would sample it from the prior")
        if story.guide_enumerated and estimator in ELBO_ESTIMATORS and estimator != "enum":
            raise ModelCheckError(
                f"guide site {story.guide_enumerated[0]!r} is marked for enumeration, which only elbo='enum' "
                f"(or 'auto') sums out; elbo={estimator!r} would sample it and weigh its score-function gradient")

    def check_per_example(self, story: Inspection, estimator: str, num_rows: int) -> None:
        """Refuse a guide latent outside the data plate where each example needs its own latents:
        for the importance-weighted bound, and for exact maximum likelihood on minibatches of a
        story without a data plate."""
        if estimator == "iwae" or (estimator == "mle" and story.data_plate is None and num_rows > story.rows):
            if story.guide_outside:  # named as the model names it, not as an autoguide's auxiliary site
                name = next((n for n in story.guide_outside if n in story.latent), story.guide_outside[0])
                raise ModelCheckError(
                    f"latent site {name!r} is outside the data plate {story.data_plate!r}: the "
                    "importance-weighted bound (iwae) weighs each example with its own latents, so every latent "
                    "must sit in it (a story with global latents has no likelihood per example; its posterior "
                    "predictive per example is ppgen.inference.posterior.loo's)")

    def check_particles(self, x, y, story: Inspection) -> str:
        """Refuse a model or guide that does not broadcast over a particle dimension (traced with
        2 particles in a plate left of the story's plates), or a model whose observations do not vary
        over it (it drops the particle dimension of its latents)."""
        k, dim = 2, -(story.nesting + 1)
        try:
            with self._quietly(x):
                _, model_trace = self.trace(x, y, num_particles=k)
                log_densities = [(site, site_log_prob(site)) for site in sample_sites(model_trace)]
        except (RuntimeError, ValueError, IndexError) as err:
            raise ModelCheckError(
                f"{self.name} does not broadcast over a particle dimension (num_particles > 1 draws the "
                f"samples of all particles at once, in a plate at dim {dim}): "
                f"{str(err).splitlines()[0].rstrip('.')}. Keep the leading batch dimensions of z (e.g. z.shape[:-1], "
                "not len(x)), or use num_particles=1") from None
        for site, log_p in log_densities:
            if log_p.dim() > -dim:
                raise ModelCheckError(
                    f"site {site['name']!r} has a log-density of shape {tuple(log_p.shape)} with {k} particles: more "
                    f"dims than the particles' and the {story.nesting} plates', so each particle is scored under the "
                    "others' latents. Broadcast the latents from the right, e.g. (x * w).sum(-1) rather than an "
                    "unsqueeze that moves their batch dims, or use num_particles=1")
            if story.latent and site["is_observed"] and (log_p.dim() < -dim or log_p.shape[dim] != k):
                raise ModelCheckError(
                    f"observed site {site['name']!r} does not vary over the particle dimension (its "
                    f"log-density has shape {tuple(log_p.shape)} with {k} particles): the model drops the "
                    "particle dimension of its latents. Keep the leading batch dimensions of z, or use "
                    "num_particles=1")
        return f"model and guide broadcast over a particle dimension ({PARTICLE_PLATE!r})"

    def check_sample_shape(self, x, y=None) -> str | None:
        """Refuse a ppgen model whose ``sample(n)`` rows do not have the shape of the data rows (two
        rows drawn with the model's ``check_sample_kwargs``). None for a plain Pyro program."""
        gm = self.generative_model
        if gm is None:
            return None
        n = min(2, x.shape[0])
        with self._quietly(x):
            cheap = gm.check_sample_kwargs  # e.g. a diffusion model's 2-step DDIM
            drawn = gm.sample(n, y[:n], **cheap) if y is not None else gm.sample(n, **cheap)
        if tuple(drawn.shape) != (n, *x.shape[1:]):
            raise ModelCheckError(f"{self.name}.sample({n}) returned shape {tuple(drawn.shape)}; the data rows "
                                  f"have shape {tuple(x.shape[1:])}, so it should be {(n, *x.shape[1:])}")
        return f"sample(n) has shape (n, {', '.join(map(str, x.shape[1:]))})"

    def check_sums_to_one(self, x, y=None) -> str | None:
        """Refuse an exact model of binary rows (D <= :data:`NORMALISATION_MAX_DIM` columns, no
        labels) whose exp(log_prob) does not sum to 1 over all 2^D binary vectors (within 1e-3).
        None where this does not apply."""
        gm = self.generative_model
        if not (self.exact and gm.data_support == "binary" and x.dim() == 2 and x.shape[1] <= NORMALISATION_MAX_DIM
                and y is None):
            return None
        d = x.shape[1]
        grid = ((torch.arange(2**d, device=x.device).unsqueeze(-1) >> torch.arange(d, device=x.device)) & 1)
        with self._quietly(x):
            total = torch.logsumexp(gm.log_prob(grid.to(x.dtype)).double(), 0).exp().item()
        if abs(total - 1) > 1e-3:
            raise ModelCheckError(f"{self.name}.log_prob does not normalise: exp(log_prob) sums to {total:.6g} "
                                  f"over all 2^{d} binary vectors, not 1")
        return f"log_prob sums to 1 over all 2^{d} binary vectors"

    def check_log_prob(self, x, y, story: Inspection) -> str | None:
        """Refuse an exact model without guide latents whose ``log_prob`` disagrees with its Pyro
        model on up to 16 rows: the traced log density of x (enumerated sites summed out by
        ``TraceEnum_ELBO``) against ``log_prob(x)``, within rtol 1e-4 and 1e-3 nats a row. None where
        this does not apply."""
        if not self.exact or story.latent:
            return None
        rows = x[:16]
        labels = y[:16] if y is not None else None
        args = call_args(rows, labels)
        with self._quietly(x):
            if story.enumerated:
                elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=max(1, story.nesting))
                traced = -torch.tensor(elbo.loss(self.model, self.guide, *args), dtype=torch.float64)
            else:
                _, model_trace = self.trace(rows, labels)
                traced = sum(site_log_prob(s).double().sum() for s in sample_sites(model_trace))
            exact = self.generative_model.log_prob(*args).double().sum()
        if not torch.isclose(torch.as_tensor(traced), exact, rtol=1e-4, atol=1e-3 * len(rows)):
            raise ModelCheckError(f"{self.name}.log_prob disagrees with its Pyro model: on {len(rows)} rows the "
                                  f"model's trace gives log p(x) = {float(traced):.6g}, log_prob gives "
                                  f"{exact.item():.6g}")
        return "the model's trace and log_prob agree on log p(x)"


def check_model(model, x, *, guide=None, data_plate: str | None = None, elbo: str = "auto",
                num_particles: int = 1, num_rows: int | None = None) -> ModelCheck:
    """Check a generative story on rows ``x`` before training it (what ``fit`` does on its first batch).

    Parameters
    ----------
    model, guide, data_plate
        As in :class:`Program`; ``model`` may be a :class:`Program` itself (then without the other two).
    x : Tensor or (x, y)
        A batch of rows (the first dimension indexes rows).
    elbo, num_particles
        The estimator to check for, as in :func:`ppgen.fit`.
    num_rows : int, optional
        Rows of the full data set; more than ``len(x)`` checks the story for minibatching.

    Returns
    -------
    ModelCheck
        Raises :class:`ModelCheckError` naming the site when a check fails.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> check_model(IndependentBernoulli(3), torch.ones(4, 3)).estimator
    'mle'
    """
    if isinstance(model, Program) and (guide is not None or data_plate is not None):
        raise ValueError("guide= and data_plate= belong to the Program; it already has them")
    program = model if isinstance(model, Program) else Program(model, guide, data_plate=data_plate)
    x, y = program.rows(x, "x")
    if hasattr(x, "check_rows"):
        x = x[torch.arange(min(len(x), 256))]
    return program.validate(x, y, num_rows=num_rows, estimator=elbo, num_particles=num_particles)


def _support(fn):
    """A distribution's support without its ``independent`` wrappers, or None where it depends on
    the parameters (a Delta's, ...)."""
    try:
        support = fn.support
    except NotImplementedError:
        return None
    while isinstance(support, torch.distributions.constraints.independent):
        support = support.base_constraint
    return None if torch.distributions.constraints.is_dependent(support) else support


def _unbounded(fn) -> bool:
    """Whether a distribution ranges over all reals (its support is ``real``); a Delta, an autoguide's
    point in the model's support, says ``real`` of any point, and is not counted."""
    return not isinstance(fn, pyro.distributions.Delta) and type(_support(fn)) is type(
        torch.distributions.constraints.real)


def _bounded(fn) -> bool:
    """Whether a continuous distribution's support is known and narrower than all reals."""
    support = _support(fn)
    return support is not None and not support.is_discrete and type(support) is not type(
        torch.distributions.constraints.real)


def _discrete_latent(msg: dict) -> bool:
    """Whether a Pyro message is a latent sample site with discrete support (what no autoguide guides)."""
    if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
        return False
    support = _support(msg["fn"])
    return support is not None and support.is_discrete


def _forget_stale_params(prefix: str) -> None:
    """Drop global param-store entries named like a new autoguide's parameters.

    An autoguide of a plain model function keeps its parameters in Pyro's global store under
    ``"<ClassName>.<site>"``; a store entry left by an earlier guide of the same class would be
    taken over by the new one, with the wrong shape or value. The store is rebuilt without them
    rather than emptied name by name: Pyro's ``AutoIAFNormal`` files one tensor under two names
    (``_prototype_tensor`` and its first layer's weight), and ``del store[name]`` fails on the second.
    """
    store = pyro.get_param_store()
    state = store.get_state()
    keep = {name: value for name, value in state["params"].items() if not name.startswith(prefix + ".")}
    if len(keep) < len(state["params"]):
        store.clear()
        store.set_state({"params": keep, "constraints": {n: c for n, c in state["constraints"].items() if n in keep}})


def _strip(args: tuple) -> tuple:
    """Model arguments without trailing Nones: ``(x, None)`` calls ``model(x)``."""
    args = tuple(args)
    while args and args[-1] is None:
        args = args[:-1]
    return args


def _nesting(*traces) -> int:
    """The most batch dimensions any sample site of ``traces`` uses (its plates' ``-dim``)."""
    return max((-f.dim for trace in traces for site in trace.nodes.values() if site["type"] == "sample"
                for f in site["cond_indep_stack"] if f.vectorized), default=0)


def no_guide(*args, **kwargs) -> None:
    """The guide of a story with nothing to guide: its latents summed out (enumerated), or none."""


def _one_number(scale) -> bool:
    """Whether a site's scale is one number (a float, or a tensor of one element)."""
    return not isinstance(scale, torch.Tensor) or scale.numel() == 1


def is_factor(site) -> bool:
    """Whether a site is a ``pyro.factor`` term: Pyro's own signature, an observed site marked auxiliary."""
    return site["is_observed"] and bool(site["infer"].get("is_auxiliary"))


def _in_plate(site, plate: str | None) -> bool:
    return plate is not None and any(f.name == plate for f in site["cond_indep_stack"])


def _cuda(x) -> list[int]:
    return [x.device.index or 0] if isinstance(x, torch.Tensor) and x.device.type == "cuda" else []


class ScaleDataPlate(Messenger):
    """Multiply log-densities of sites inside the plate ``plate`` by ``factor`` (N / batch size).

    Only those sites: latent variables outside the plate (global parameters) keep scale 1, so
    the minibatch ELBO is an unbiased estimate of the full-data ELBO. A plate that already
    subsamples (``pyro.plate(name, N, subsample=...)``) scales itself and is left alone.
    """

    def __init__(self, plate: str, factor: float):
        super().__init__()
        self.plate = plate
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate and frame.size == frame.full_size:
                msg["scale"] = msg["scale"] * self.factor
                return


class DatasetRows:
    """A ``torch.utils.data.Dataset`` of rows (tensors, or (x, y) pairs of which x is used)
    indexed by a tensor of row numbers, as ``fit`` draws its minibatches."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        first = self._x(dataset[0])
        self.shape = torch.Size((len(dataset), first.numel()))

    @staticmethod
    def _x(item) -> torch.Tensor:
        return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item).reshape(-1)

    def __getitem__(self, idx) -> torch.Tensor:
        return torch.stack([self._x(self.dataset[i]) for i in torch.as_tensor(idx).tolist()]).float()

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and self.shape[1] != dim:
            raise ValueError(f"{name} has {self.shape[1]} columns, but the model expects {dim}")


def resolve_device(device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else must name a usable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available here")
    return device


def batch_rows(x, y, idx: torch.Tensor, device: torch.device):
    """Rows ``idx`` of ``x`` (and ``y``), moved to ``device`` (asynchronously from pinned memory)."""
    return x[idx].to(device, non_blocking=True), (y[idx].to(device, non_blocking=True) if y is not None else None)


def call_args(x, y) -> tuple:
    """Arguments for a model or guide call: ``(x,)`` or ``(x, y)``."""
    return (x,) if y is None else (x, y)


def sample_sites(trace) -> list[dict]:
    """The sample sites of a trace, without the plates' own subsample sites and ``pyro.deterministic``'s
    records (observed in Pyro's terms, but no data: a function of the latents, of log-density 0)."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic")]


def deterministic_sites(trace) -> list[dict]:
    """The sites of a trace that ``pyro.deterministic`` recorded."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and site["infer"].get("_deterministic")]


def site_log_prob(site) -> torch.Tensor:
    """A site's log-density at its value, masked as the site says (unscaled)."""
    log_p = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_p = log_p * site["mask"]
    return log_p


def logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
