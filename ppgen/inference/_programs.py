"""How the inference layer sees a model: a (model, guide) pair of Pyro programs and its parameters.

Internal. ``fit``, ``log_likelihood`` and the diagnostics accept the same things, and this module
turns each of them into one :class:`Program`:

- a :class:`~ppgen.models.base.GenerativeModel` (its ``model``/``guide`` methods),
- a plain Pyro model function with ``guide=`` a function, a module, or an autoguide name,
- either of those with an autoguide name in place of the model's own guide.
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
from ppgen.models.base import GenerativeModel, check_data, local_params

AUTOGUIDES = {
    "auto_normal": autoguide.AutoNormal,
    "auto_delta": autoguide.AutoDelta,
    "auto_diagonal_normal": autoguide.AutoDiagonalNormal,
    "auto_multivariate_normal": autoguide.AutoMultivariateNormal,
    "auto_lowrank_multivariate_normal": autoguide.AutoLowRankMultivariateNormal,
    "auto_iaf_normal": autoguide.AutoIAFNormal,
}


@dataclasses.dataclass
class Program:
    """The model and guide callables, and the modules that own their parameters."""

    model: Callable
    guide: Callable
    generative_model: GenerativeModel | None
    guide_module: torch.nn.Module | None

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.generative_model, self.guide_module) if m is not None]

    @property
    def exact(self) -> bool:
        """Whether log p(x) is available in closed form (and the guide is the model's own)."""
        gm = self.generative_model
        return gm is not None and gm.has_exact_likelihood and self.guide_module is None

    def param_scope(self):
        """Keep a ppgen model's parameters local to it; plain Pyro functions keep Pyro's usual
        global param store (their ``pyro.param`` sites live there, and Pyro does not support
        global params inside module-local PyroModules such as an autoguide tracing them)."""
        if self.generative_model is None:
            return contextlib.nullcontext()
        return local_params(*self.modules)

    def check_data(self, x, name: str) -> torch.Tensor:
        if self.generative_model is not None:
            return self.generative_model.check_data(x, name=name)
        return check_data(x, name=name)

    def to(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)


def as_program(model, guide=None) -> Program:
    """Resolve what the user passed as ``model`` and ``guide``; raise naming what is wrong."""
    generative_model = model if isinstance(model, GenerativeModel) else None
    if generative_model is None and not callable(model):
        raise TypeError(f"model must be a GenerativeModel or a Pyro model function, got {type(model).__name__}")
    model_fn = model.model if generative_model is not None else model

    guide_module = None
    if guide is None:
        if generative_model is None:
            raise ValueError(
                "a plain model function needs guide=: a guide function, or an autoguide name "
                f"such as 'auto_normal' (choices: {', '.join(AUTOGUIDES)})"
            )
        guide_fn = generative_model.guide
    elif isinstance(guide, str):
        if guide not in AUTOGUIDES:
            raise ValueError(f"unknown autoguide {guide!r}; choices: {', '.join(AUTOGUIDES)}")
        guide_module = AUTOGUIDES[guide](model_fn)
        _forget_stale_params(guide_module._pyro_name)
        guide_fn = guide_module
    elif callable(guide):
        guide_fn = guide
        guide_module = guide if isinstance(guide, torch.nn.Module) else None
    else:
        raise TypeError(f"guide must be a function, a module or an autoguide name, got {type(guide).__name__}")
    return Program(model_fn, guide_fn, generative_model, guide_module)


def _forget_stale_params(prefix: str) -> None:
    """Drop global param-store entries named like a new autoguide's parameters.

    An autoguide of a plain model function keeps its parameters in Pyro's global store under
    ``"<ClassName>.<site>"``; a store entry left by an earlier guide of the same class would be
    taken over by the new one, with the wrong shape or value. The earlier guide object keeps its
    own parameters; only the stale store entries go.
    """
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith(prefix + ".")]:
        del store[name]


def as_xy(data, program: Program, name: str):
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
        x.check_rows(program.generative_model.x_dim if program.generative_model else None, name)
    else:
        x = program.check_data(x, name)
    if y is not None:
        y = torch.as_tensor(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    return x, y


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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available here")
    return device


def batch_rows(x, y, idx: torch.Tensor, device: torch.device):
    """Rows ``idx`` of ``x`` (and ``y``), moved to ``device`` (asynchronously from pinned memory)."""
    return x[idx].to(device, non_blocking=True), (y[idx].to(device, non_blocking=True) if y is not None else None)


def call_args(x: torch.Tensor, y: torch.Tensor | None) -> tuple:
    """Arguments for a model or guide call: ``(x,)`` or ``(x, y)``."""
    return (x,) if y is None else (x, y)


class ScaleDataPlate(Messenger):
    """Multiply log-densities of sites inside the ``"data"`` plate by ``factor`` (N / batch size).

    Only those sites: latent variables outside the plate (global parameters) keep scale 1, so
    the minibatch ELBO is an unbiased estimate of the full-data ELBO. A plate that already
    subsamples (``pyro.plate("data", N, subsample=...)``) scales itself and is left alone.
    """

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == "data" and frame.size == frame.full_size:
                msg["scale"] = msg["scale"] * self.factor
                return


def max_plate_nesting(program: Program, x, y) -> int:
    """How many batch dimensions the model and guide use (traced once)."""
    with poutine.block():
        guide_trace = poutine.trace(program.guide).get_trace(*call_args(x, y))
        model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*call_args(x, y))
    dims = [-f.dim for tr in (guide_trace, model_trace) for site in tr.nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def _per_example(log_p: torch.Tensor, site: dict[str, Any], nesting: int, num_rows: int) -> torch.Tensor:
    """Reduce a site's log-density to shape (K, N): sum every batch dim but particles and data."""
    data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == "data"]
    if not data_dims:
        raise ValueError(
            f"site {site['name']!r} is a latent variable outside the 'data' plate; importance "
            "weights per example need every latent inside it (use elbo='trace' for global latents)"
        )
    log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
    log_p = log_p.movedim((0, nesting + 1 + data_dims[0]), (0, 1))  # (K, N, ...)
    return log_p.flatten(2).sum(-1).expand(-1, num_rows) if log_p.dim() > 2 else log_p.expand(-1, num_rows)


def log_weights(program: Program, x, y, num_particles: int, nesting: int) -> torch.Tensor:
    """log p(x_n, z_k) - log q(z_k | x_n) for K particles drawn from the guide, shape (K, N).

    Vectorised over particles with an outer plate. Latent sites that the guide does not
    sample are drawn from the prior in the model, so they cancel from the weights.
    """
    args = call_args(x, y)
    with pyro.plate("particles", num_particles, dim=-(nesting + 1)):
        guide_trace = poutine.trace(program.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*args)
    n = x.shape[0]
    total = x.new_zeros(num_particles, n)
    for site in sample_sites(model_trace):
        if site["is_observed"] or site["name"] in guide_trace.nodes:
            total = total + _per_example(_site_log_prob(site), site, nesting, n)
    for site in sample_sites(guide_trace):
        if not site["is_observed"]:
            total = total - _per_example(_site_log_prob(site), site, nesting, n)
    return total


def sample_sites(trace):
    """The sample sites of a trace, without the plates' own subsample sites."""
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


def _site_log_prob(site) -> torch.Tensor:
    log_p = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_p = log_p * site["mask"]
    return log_p


def logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
