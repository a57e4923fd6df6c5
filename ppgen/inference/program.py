r"""Program: a generative story as the inference core sees it, checked before it is trained.

A :class:`Program` wraps what a user writes, and is the one place that traces it:

- a :class:`~ppgen.models.base.GenerativeModel` (its ``model`` and ``guide`` methods),
- a plain Pyro model function with ``guide=`` a function, a module or an autoguide name,
- either of those with an autoguide name in place of the model's own guide.

It vectorises particles, computes log importance weights per example, keeps a ppgen model's
parameters local to it, finds the plate that ranges over the data rows (whatever its name)
and scales it under minibatching. :meth:`Program.validate` checks a story on its first batch
and refuses, naming the site, what the core could not fit correctly; :func:`check_model` is the
same check as a public function.

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

__all__ = ["Program", "ModelCheck", "ModelCheckError", "check_model", "AUTOGUIDES", "DATA_PLATE",
           "OBSERVED_SITE", "PARTICLE_PLATE", "ESTIMATORS", "sample_sites", "site_log_prob", "logmeanexp",
           "resolve_device", "batch_rows", "call_args"]

PARTICLE_PLATE = "particles"  # the plate ppgen adds to draw several samples per example at once
ESTIMATORS = ("auto", "trace", "meanfield", "enum", "graph", "iwae", "mle")
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


class Program:
    """A model and its guide, with the modules that own their parameters.

    Parameters
    ----------
    model : GenerativeModel or callable
        A ppgen model, or a plain Pyro model function ``model(x[, y])``.
    guide : None, callable or str
        The model's own guide (default, for a ``GenerativeModel``), a guide function or module,
        or an autoguide name (``"auto_normal"``, ...; see :data:`AUTOGUIDES`).
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
        self.model: Callable = model.model if self.generative_model is not None else model
        self.guide_module: torch.nn.Module | None = None
        if guide is None:
            if self.generative_model is None:
                raise ValueError(
                    "a plain model function needs guide=: a guide function, or an autoguide name "
                    f"such as 'auto_normal' (choices: {', '.join(AUTOGUIDES)})")
            self.guide: Callable = self.generative_model.guide
        elif isinstance(guide, str):
            if guide not in AUTOGUIDES:
                raise ValueError(f"unknown autoguide {guide!r}; choices: {', '.join(AUTOGUIDES)}")
            self.guide_module = AUTOGUIDES[guide](self.model)
            _forget_stale_params(self.guide_module._pyro_name)
            self.guide = self.guide_module
        elif callable(guide):
            self.guide = guide
            self.guide_module = guide if isinstance(guide, torch.nn.Module) else None
        else:
            raise TypeError(f"guide must be a function, a module or an autoguide name, got {type(guide).__name__}")
        self.data_plate = data_plate
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
                guide_trace, model_trace = self._trace_pair(self.model, self.guide, _strip(args))
            dims = [-f.dim for tr in (guide_trace, model_trace) for site in tr.nodes.values()
                    if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
            self._nesting = max(dims, default=0)
        return self._nesting

    def scaled(self, fn: Callable, factor: float) -> Callable:
        """``fn`` with the log-densities inside the data plate multiplied by ``factor``."""
        if factor == 1.0:
            return fn
        return ScaleDataPlate(self.data_plate or DATA_PLATE, factor)(fn)

    def trace(self, *args, num_particles: int | None = None):
        """(guide trace, model trace replayed on it) for the arguments ``args`` (``x`` or
        ``(x, y)``; a trailing None is dropped), with ``num_particles`` draws per example
        vectorised in an outer :data:`PARTICLE_PLATE` (none when None)."""
        args = _strip(args)
        if num_particles is None:
            return self._trace_pair(self.model, self.guide, args)
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(self.nesting(*args) + 1)):
            return self._trace_pair(self.model, self.guide, args)

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

    # --- checks -------------------------------------------------------------------------------

    def validate(self, x, y=None, *, num_rows: int | None = None, estimator: str = "auto",
                 num_particles: int = 1, thorough: bool = True) -> ModelCheck:
        """Check the story on a batch of rows; refuse what the core cannot fit correctly.

        Finds the data plate and sets :attr:`data_plate`. Raises :class:`ModelCheckError`,
        naming the site, for: an observed site outside the data plate under minibatching
        (``num_rows`` > rows given); a latent that ``estimator="iwae"`` needs per example outside
        it; a model or guide that does not broadcast over a particle dimension when
        ``num_particles > 1``; a latent of the model that the guide does not sample and that is
        not enumerated. For a ``GenerativeModel`` it also checks that ``sample`` has the data's
        shape (``thorough`` only), that the trace's log density of x equals ``log_prob(x)`` for
        exact models, and that ``log_prob`` sums to 1 over all 2^D binary vectors for D <= 12.

        Returns
        -------
        ModelCheck
        """
        if estimator not in ESTIMATORS and estimator != "custom":
            raise ValueError(f"elbo must be one of {ESTIMATORS}, got {estimator!r}")
        batch = x.shape[0]
        num_rows = batch if num_rows is None else num_rows
        minibatch = num_rows > batch
        passed: list[str] = []
        with self.param_scope(), torch.no_grad(), poutine.block(), torch.random.fork_rng(_cuda(x)):
            guide_trace, model_trace = self.trace(x, y)
            observed = [s["name"] for s in sample_sites(model_trace) if s["is_observed"]]
            latent = [s["name"] for s in sample_sites(guide_trace) if not s["is_observed"]
                      and s["name"] in model_trace.nodes]  # auxiliary guide sites (AutoNormal's) left out
            enumerated = [s["name"] for s in sample_sites(model_trace) if not s["is_observed"]
                          and s["name"] not in guide_trace.nodes and s["infer"].get("enumerate")]
            estimator = self._resolve_estimator(estimator, latent, enumerated)
            if not observed and estimator != "custom":  # an implicit model (a GAN) observes nothing, by design
                raise ModelCheckError(f"{self.name} observes nothing: no sample site has obs= set on the data")
            if self.generative_model is not None and not getattr(self.generative_model, "is_normalised", True) \
                    and estimator in ESTIMATORS:
                raise ModelCheckError(
                    f"{self.name}'s density is unnormalised (its factor lacks -log Z): elbo={estimator!r} would "
                    "lower its energy everywhere without bound. Train it with its own objective (elbo='auto')")
            self.data_plate = self._find_data_plate(x, y, model_trace, batch)
            plate = self.data_plate
            passed.append(f"data plate {plate!r} ranges over the {batch} rows" if plate
                          else "no data plate (full batch)")
            outside = [s["name"] for s in sample_sites(model_trace) if s["is_observed"]
                       and not _in_plate(s, plate)]
            if outside and minibatch:
                where = f"the data plate {plate!r}" if plate else "a plate over the data rows"
                raise ModelCheckError(
                    f"observed site {outside[0]!r} is outside {where}: a minibatch of {batch} of {num_rows} rows "
                    f"cannot be scaled to the full data. Observe it inside pyro.plate(name, len(x)), or use "
                    f"batch_size >= {num_rows}")
            missing = [s["name"] for s in sample_sites(model_trace) if not s["is_observed"]
                       and s["name"] not in guide_trace.nodes and not s["infer"].get("enumerate")]
            if missing and estimator not in ("mle", "custom"):
                raise ModelCheckError(
                    f"latent site {missing[0]!r} of the model is not sampled by the guide and not enumerated: "
                    "its term would be missing from the ELBO. Sample it in the guide, or mark a discrete site "
                    "with infer={'enumerate': 'parallel'} (and use elbo='auto' or 'enum')")
            if enumerated and estimator not in ("enum", "mle", "custom"):
                raise ModelCheckError(
                    f"site {enumerated[0]!r} is marked for enumeration, which only elbo='enum' (or 'auto') "
                    f"sums out; elbo={estimator!r} would sample it from the prior")
            passed.append("every latent of the model is sampled by the guide or enumerated")
            if estimator == "iwae" or (estimator == "mle" and plate is None and minibatch):
                local = [s["name"] for s in sample_sites(guide_trace) if not s["is_observed"]
                         and not _in_plate(s, plate)]
                if local:
                    raise ModelCheckError(
                        f"latent site {local[0]!r} is outside the data plate {plate!r}: the importance-weighted "
                        "bound (iwae) weighs each example with its own latents, so every latent must sit in it")
            if num_particles > 1 and estimator in ("trace", "meanfield", "graph", "enum", "iwae"):
                self._check_particles(x, y, latent)
                passed.append(f"model and guide broadcast over a particle dimension ({PARTICLE_PLATE!r})")
            if self.generative_model is not None:
                passed += self._check_generative_model(x, y, estimator, latent, enumerated, thorough)
        return ModelCheck(estimator, self.data_plate, observed, latent, enumerated, passed)

    def _resolve_estimator(self, estimator: str, latent: list[str], enumerated: list[str]) -> str:
        if estimator == "custom":  # an Objective of its own: only the story's structure is checked
            return estimator
        if estimator != "auto":
            if estimator == "mle" and not self.exact:
                raise ValueError(f"elbo='mle' needs a model with an exact log_prob and its own guide; "
                                 f"{self.name} has none (use an ELBO)")
            return estimator
        if enumerated:
            return "enum"
        if self.exact and not latent:
            return "mle"
        return "trace"

    def _find_data_plate(self, x, y, model_trace, batch: int) -> str | None:
        """The plate whose size follows the number of rows: traced on ``batch`` rows, and on
        one row fewer to tell it from another plate of the same size."""
        plates = {f.name: f for s in sample_sites(model_trace) for f in s["cond_indep_stack"]}
        if self.data_plate is not None:
            if self.data_plate not in plates:
                raise ModelCheckError(f"data_plate={self.data_plate!r} is not a plate of {self.name}; "
                                      f"its plates are {sorted(plates)}")
            return self.data_plate
        candidates = [name for name, f in plates.items() if f.size == batch]
        if len(candidates) > 1 and batch > 1:
            fewer = y[: batch - 1] if y is not None else None
            _, smaller = self.trace(x[: batch - 1], fewer)
            shrunk = {f.name for s in sample_sites(smaller) for f in s["cond_indep_stack"] if f.size == batch - 1}
            candidates = [c for c in candidates if c in shrunk]
        if len(candidates) > 1:
            if DATA_PLATE in candidates:
                return DATA_PLATE
            raise ModelCheckError(f"plates {candidates} all range over the {batch} rows; name the data plate "
                                  "with data_plate=")
        return candidates[0] if candidates else None

    def _check_particles(self, x, y, latent: list[str]) -> None:
        k = 2
        self._nesting = None
        try:
            guide_trace, model_trace = self.trace(x, y, num_particles=k)
            for site in sample_sites(model_trace):
                site_log_prob(site)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ModelCheckError(
                f"{self.name} does not broadcast over a particle dimension (num_particles > 1 draws the "
                f"samples of all particles at once, in a plate at dim {-(self.nesting(x, y) + 1)}): "
                f"{str(err).splitlines()[0]}. Keep the leading batch dimensions of z (e.g. z.shape[:-1], "
                "not len(x)), or use num_particles=1") from None
        if not latent:
            return
        dim = -(self.nesting(x, y) + 1)
        for site in sample_sites(model_trace):
            if site["is_observed"]:
                shape = site_log_prob(site).shape
                if len(shape) < -dim or shape[dim] != k:
                    raise ModelCheckError(
                        f"observed site {site['name']!r} does not vary over the particle dimension (its "
                        f"log-density has shape {tuple(shape)} with {k} particles): the model drops the "
                        "particle dimension of its latents. Keep the leading batch dimensions of z, or use "
                        "num_particles=1")

    def _check_generative_model(self, x, y, estimator, latent, enumerated, thorough: bool) -> list[str]:
        gm, passed = self.generative_model, []
        if thorough:
            n = min(2, x.shape[0])
            cheap = getattr(gm, "check_sample_kwargs", {})  # e.g. a diffusion model's 2-step DDIM
            drawn = gm.sample(n, y[:n], **cheap) if y is not None else gm.sample(n, **cheap)
            if tuple(drawn.shape) != (n, *x.shape[1:]):
                raise ModelCheckError(f"{self.name}.sample({n}) returned shape {tuple(drawn.shape)}; the data rows "
                                      f"have shape {tuple(x.shape[1:])}, so it should be {(n, *x.shape[1:])}")
            passed.append(f"sample(n) has shape (n, {', '.join(map(str, x.shape[1:]))})")
        if not self.exact:
            return passed
        if gm.data_support == "binary" and x.dim() == 2 and x.shape[1] <= NORMALISATION_MAX_DIM and y is None:
            d = x.shape[1]
            grid = ((torch.arange(2**d, device=x.device).unsqueeze(-1) >> torch.arange(d, device=x.device)) & 1)
            total = torch.logsumexp(gm.log_prob(grid.to(x.dtype)).double(), 0).exp().item()
            if abs(total - 1) > 1e-3:
                raise ModelCheckError(f"{self.name}.log_prob does not normalise: exp(log_prob) sums to {total:.6g} "
                                      f"over all 2^{d} binary vectors, not 1")
            passed.append(f"log_prob sums to 1 over all 2^{d} binary vectors")
        if latent:
            return passed
        rows = x[:16]
        labels = y[:16] if y is not None else None
        args = call_args(rows, labels)
        if enumerated:
            elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=max(1, self.nesting(x, y)))
            traced = -torch.tensor(elbo.loss(self.model, self.guide, *args), dtype=torch.float64)
        else:
            _, model_trace = self.trace(rows, labels)
            traced = sum(site_log_prob(s).double().sum() for s in sample_sites(model_trace))
        exact = gm.log_prob(*args).double().sum()
        if not torch.isclose(torch.as_tensor(traced), exact, rtol=1e-4, atol=1e-3 * len(rows)):
            raise ModelCheckError(f"{self.name}.log_prob disagrees with its Pyro model: on {len(rows)} rows the "
                                  f"model's trace gives log p(x) = {float(traced):.6g}, log_prob gives "
                                  f"{exact.item():.6g}")
        passed.append("the model's trace and log_prob agree on log p(x)")
        return passed


def check_model(model, x, *, guide=None, data_plate: str | None = None, elbo: str = "auto",
                num_particles: int = 1, num_rows: int | None = None) -> ModelCheck:
    """Check a generative story on rows ``x`` before training it (what ``fit`` does on its first batch).

    Parameters
    ----------
    model, guide, data_plate
        As in :class:`Program`.
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
    program = Program(model, guide, data_plate=data_plate)
    x, y = program.rows(x, "x")
    if hasattr(x, "check_rows"):
        x = x[torch.arange(min(len(x), 256))]
    return program.validate(x, y, num_rows=num_rows, estimator=elbo, num_particles=num_particles)


def _forget_stale_params(prefix: str) -> None:
    """Drop global param-store entries named like a new autoguide's parameters.

    An autoguide of a plain model function keeps its parameters in Pyro's global store under
    ``"<ClassName>.<site>"``; a store entry left by an earlier guide of the same class would be
    taken over by the new one, with the wrong shape or value.
    """
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith(prefix + ".")]:
        del store[name]


def _strip(args: tuple) -> tuple:
    """Model arguments without trailing Nones: ``(x, None)`` calls ``model(x)``."""
    args = tuple(args)
    while args and args[-1] is None:
        args = args[:-1]
    return args


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
    """The sample sites of a trace, without the plates' own subsample sites."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


def site_log_prob(site) -> torch.Tensor:
    """A site's log-density at its value, masked as the site says (unscaled)."""
    log_p = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_p = log_p * site["mask"]
    return log_p


def logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
