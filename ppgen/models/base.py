"""The protocol every ppgen model follows.

A model is a :class:`pyro.nn.PyroModule` with a ``model`` method telling the generative story
p(x, z [| y]) and a ``guide`` method for q(z | x [, y]). Both are plain Pyro programs: they run
under ``poutine.trace``, condition with ``pyro.condition`` and train with any ``pyro.infer``
algorithm. ppgen's own inference keeps every model's parameters local to the model
(:func:`local_params`), so two models never share parameters through Pyro's global store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import math
import threading
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from ppgen.checks import positive_int
from ppgen.checks import seed as check_seed

# The conventions of ppgen's own models, named once (ppgen.inference.program re-exports them):
DATA_PLATE = "data"   # the plate over data rows
OBSERVED_SITE = "x"   # the observed site

__all__ = ["DATA_PLATE", "OBSERVED_SITE", "GenerativeModel", "LikelihoodEstimate", "local_params", "check_data", "num_rows",
           "at_least_float32", "progress_bar"]


@dataclasses.dataclass(frozen=True)
class LikelihoodEstimate:
    """What a model's own :meth:`GenerativeModel.estimate_log_likelihood` returns; the inference
    layer (:func:`ppgen.log_likelihood`) turns it into a labelled ``LikelihoodResult``.

    Attributes
    ----------
    values : Tensor
        log p(x) per row in nats, shape (N,): an estimate or a bound, as ``kind`` says.
    stderr : float
        The Monte Carlo standard error of the mean of ``values`` (0 where it is exact).
    method : str
        How the figure was made: ``"ais"`` (annealed importance sampling), ``"elbo"`` (a
        variational bound), ...
    bracket : (float, float), optional
        A (lower, upper) bracket on the mean log-likelihood of some rows, where the estimator has
        one (an RBM's RAISE and AIS figures).
    num_samples : int
        The chains or draws behind each row's figure.
    kind : str, default "bound"
        What the figure is (``ppgen.inference.likelihood.KINDS``): ``"bound"``, a lower bound on
        log p(x) or one in expectation (an ELBO; AIS over a decoder's latents, whose estimate of
        p(x) is unbiased), or ``"estimate"``, whose error has a sign only on average (AIS of log Z).
    errs : str, default "low"
        On which side of log p(x) the figure falls (on average): ``"low"`` for a bound; an energy
        model's AIS of log Z errs low, so its log-likelihood says ``"high"``.
    stderr_over_rows : bool, default False
        True where each row's value is one draw (or a mean of a few) and ``stderr`` is their standard
        deviation over the rows / sqrt(N): the draws' noise and the rows' spread together.
    """

    values: torch.Tensor
    stderr: float
    method: str
    bracket: tuple[float, float] | None = None
    num_samples: int = 1
    kind: str = "bound"
    errs: str = "low"
    stderr_over_rows: bool = False


class GenerativeModel(PyroModule):
    """Base class: a generative story ``model`` and its amortised posterior ``guide``.

    Subclasses define ``model(x=None, y=None, *, size=None)`` and, when they have latent
    variables, ``guide(x=None, y=None, *, size=None)``. Observations sit inside
    ``pyro.plate("data", n)`` in a site named ``"x"``. When ``x`` is None the model generates
    ``size`` new rows (or one per label in ``y``).

    Every model takes a keyword ``seed=`` (default 0): its initial parameters are drawn from a
    generator seeded with it, never from (and without disturbing) the global random state, so the
    same seed gives the same model in any process.

    Class attributes
    ----------------
    has_exact_likelihood : bool
        True when :meth:`log_prob` computes log p(x) exactly.
    data_support : str
        ``"binary"`` (values in {0, 1}) or ``"real"``; checked by :meth:`check_data`. ``"categorical"``:
        state indices (a Bayesian network's, a sequence model's ids), checked by the model's own ``check_data``.

    Hooks
    -----
    Everything ``fit``, ``log_likelihood``, ``restore`` and ``compress`` ask of a model beyond
    ``model``, ``guide``, ``log_prob`` and ``sample`` is declared here with its default; a model
    overrides what applies to it (a class attribute, an attribute set in ``__init__``, a property).

    is_normalised : bool, default True
        Whether the Pyro model's factor for x includes -log Z, so that the traced log density of x is
        log p(x). An energy model whose Z is unknown says False (its factor is -E(x)); ``fit`` then
        refuses the ELBO estimators, which would lower the energy everywhere without bound.
    guide_is_proposal : bool, default True
        Whether ``log_likelihood(method="iwae")`` may weigh samples of the guide as its importance
        proposal. A diffusion model says False: its guide, the fixed forward process, is a correct
        proposal, but each particle costs T network passes and the weights' variance grows with T,
        so no affordable K improves on the model's own bound.
    likelihood_method : str or None, default None
        What the model's own :meth:`estimate_log_likelihood` gives: ``"ais"`` (annealed importance
        sampling: an estimate, a stochastic lower bound), ``"elbo"`` (a variational lower bound), or
        None: no estimator of its own. ``ppgen.log_likelihood`` calls the estimator only when set.
    check_sample_kwargs : Mapping[str, Any], default empty
        Keyword arguments that make :meth:`sample` cheap when ``check_model``/``fit`` check the
        shape of two samples (a diffusion model's 2-step DDIM); read-only.
    z_dim : int or None, default None
        The width of the latent code z ~ N(0, I_{z_dim}) of a decoder model (a VAE's, a GAN's), with
        :meth:`observation_log_prob`: what annealed importance sampling over the latents needs.
    num_levels : int or None, default None
        The number of discrete levels of the data (256 for 8-bit pixels), or None for data taken as
        they are. A dequantized model (a flow) takes rows of levels 0..num_levels-1 and scores them
        as values in [0, num_levels] (figures divide by it); a diffusion model takes the levels
        divided by num_levels - 1.
    y_dim : int or None, default None
        The labels a conditional model takes (``model(x, y)``, ``sample(n, y)``): their number of
        classes; None for an unconditional model.
    init_arguments : dict, set by the constructor
        The arguments the model was built with, by name, defaults applied and ``seed`` included:
        those with a JSON form (a network passed in is left out). ``fit`` refuses to resume a
        checkpoint written by a model built with other arguments (``seed`` aside: it sets only the
        initial parameters and seeded buffers, which the checkpoint replaces).
    legacy_arguments : Mapping[str, Any], default empty
        Constructor arguments added after checkpoints of the class were written, each with the value
        a model built before it behaved as: a checkpoint that does not record one is compared as if
        written with it, so ``fit`` and ``load_fitted`` refuse to put its parameters into a model built
        with the new default (read-only).
    ``default_objective(program, num_particles, precision)``
        The objective ``fit(elbo="auto")`` trains with, or None for the one the core picks.
    ``estimate_log_likelihood(x, *, num_samples, seed, **options) -> LikelihoodEstimate``
        The model's own estimate of log p(x) per row (``likelihood_method`` names it).
    ``observation_log_prob(z, x) -> Tensor``
        log p(x | z) of a decoder model (with ``z_dim``).
    ``restore(y, operator, num_samples, **options) -> (Tensor, str) or None``
        The model's own answer to an inverse problem, or None for ``ppgen.inverse``'s generic routes.
    ``set_guide_to_exact_posterior() -> bool``
        Set the guide to p(z | x) where it has a closed form (True), or do nothing (False).
    """

    has_exact_likelihood: ClassVar[bool] = False
    data_support: ClassVar[str] = "binary"
    is_normalised: ClassVar[bool] = True
    guide_is_proposal: ClassVar[bool] = True
    likelihood_method: ClassVar[str | None] = None
    check_sample_kwargs: ClassVar[Mapping[str, Any]] = types.MappingProxyType({})
    z_dim: int | None = None
    num_levels: int | None = None
    y_dim: int | None = None
    init_arguments: Mapping[str, Any] = types.MappingProxyType({})  # a model built by GenerativeModel.__init__ alone
    legacy_arguments: ClassVar[Mapping[str, Any]] = types.MappingProxyType({})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _seeded_init(cls.__dict__["__init__"])
        # pyro_method makes parameters of submodules visible to Pyro's own optimisers
        # (pyro.infer.SVI) when a user hands model/guide to plain Pyro.
        for name in ("model", "guide"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_ppgen_pyro_method", False):
                wrapped = pyro_method(method)
                wrapped._ppgen_pyro_method = True
                setattr(cls, name, wrapped)

    def __init__(self, x_dim: int):
        super().__init__()
        self.x_dim = positive_int(x_dim, "x_dim")

    def model(self, x=None, y=None, *, size=None):
        raise NotImplementedError

    def guide(self, x=None, y=None, *, size=None):
        """q(z | x): empty for fully observed models."""

    def default_objective(self, program, num_particles: int = 1, precision: str = "fp32"):
        """The :class:`ppgen.Objective` that ``fit(elbo="auto")`` trains this model with, or None
        (the default) for the estimator the core picks from the story (an unnormalised model returns
        its own). ``program`` is the :class:`ppgen.Program` being fitted; ``num_particles`` and
        ``precision`` are ``fit``'s."""
        return None

    def estimate_log_likelihood(self, x: torch.Tensor, *, num_samples: int, seed: int = 0,
                                **options) -> LikelihoodEstimate:
        """The model's own estimate of log p(x) for rows ``x`` (N, D): a :class:`LikelihoodEstimate`
        with ``values`` (N,) in nats, labelled with :attr:`likelihood_method`.

        ``num_samples`` is the number of chains or draws per row (where the estimator has them),
        ``seed`` fixes its randomness, ``options`` are the estimator's own settings. The default
        raises: ``ppgen.log_likelihood`` calls this only when ``likelihood_method`` is set.
        """
        raise NotImplementedError(f"{type(self).__name__} has no likelihood estimator of its own "
                                  "(its likelihood_method is None)")

    def observation_log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) of a decoder model whose prior is z ~ N(0, I_{z_dim}): latents z (..., z_dim)
        and rows x (..., D) broadcast against each other, result shape (...,). What annealed
        importance sampling over the latents (``log_likelihood(..., method="ais")``) anneals
        toward. The default raises: the model is not such a decoder model."""
        raise NotImplementedError(f"{type(self).__name__} is not a decoder model with a N(0, I) prior: it has no "
                                  "observation_log_prob(z, x)")

    def restore(self, y: torch.Tensor, operator, num_samples: int,
                **options) -> tuple[torch.Tensor, str] | None:
        """The model's own answer to the inverse problem y = A x + noise (``operator`` a
        :class:`ppgen.inverse.Operator`, ``y`` (N, operator.out_dim)): ``(samples, method)`` with
        ``num_samples`` restorations (S, N, D) of each row and the method's name (``"DDNM"``), or
        None for an operator it has no method for. The default returns None: :func:`ppgen.restore`
        then uses its generic routes (exact Gaussian posteriors, autoregressive conditionals, SMC
        over a VAE's code). ``options`` are the method's keywords; ``restore`` seeds the call."""
        return None

    def set_guide_to_exact_posterior(self) -> bool:
        """Set the guide's parameters to the exact posterior p(z | x) of the model's, where it has a
        closed form, and return True; the default does nothing and returns False. ``fit`` calls it
        after maximising an exact marginal likelihood directly (``"auto"`` on a classical full-batch
        fit: PPCA, factor analysis), which leaves the guide untrained."""
        return False

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per row, shape (N,). Raises where it is intractable."""
        raise NotImplementedError(
            f"{type(self).__name__} has no exact likelihood; "
            "use ppgen.inference.log_likelihood for an importance-sampled estimate"
        )

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` new observations drawn from the generative story, shape (n, x_dim)."""
        n = positive_int(n, "n")
        with local_params(self):
            trace = poutine.trace(self.model).get_trace(None, y, size=n)
        if OBSERVED_SITE not in trace.nodes:
            raise ValueError(f"{type(self).__name__}.model has no site {OBSERVED_SITE!r}: ppgen's models observe their "
                             f"rows in a site named {OBSERVED_SITE!r} (or override sample())")
        return trace.nodes[OBSERVED_SITE]["value"]

    @property
    def num_parameters(self) -> int:
        """Number of free scalar parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters and buffers (what ``.double()`` changes):
        the dtype a model builds its noise and constants in. The default dtype when it has none."""
        return next((t.dtype for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point()),
                    torch.get_default_dtype())

    def check_data(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate ``x`` for this model (see :func:`check_data`) and convert it to the model's
        floating dtype: exactly for 0/1 data, with a warning (once per model) where precision is lost."""
        x = check_data(x, dim=self.x_dim, support=self.data_support, name=name)
        dtype = next((t.dtype for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point()),
                     torch.get_default_dtype())
        if x.dtype == dtype:
            return x
        converted = x.to(dtype)
        lost = int((converted.to(x.dtype) != x).sum())
        if lost and not getattr(self, "_warned_precision", False):
            self._warned_precision = True
            warnings.warn(f"{name} was converted from {x.dtype} to the model's {dtype}, which rounds {lost} of its "
                          f"values; convert the data yourself, or move the model to {x.dtype} (model.to({x.dtype}))",
                          UserWarning, stacklevel=3)
        return converted

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}"


def check_data(x, *, dim: int | None = None, support: str = "real", name: str = "x",
               any_shape: bool = False) -> torch.Tensor:
    """Return ``x`` as a 2-D floating tensor, or raise naming what is wrong with it.

    Nothing is coerced silently: integer or boolean data is refused (convert with
    ``.float()``), NumPy arrays of floats are accepted as they are. With ``any_shape`` (the data
    of a plain Pyro program) any shape with rows first is accepted, and integer data too.
    """
    if hasattr(x, "__array__") and not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not (x.is_floating_point() or any_shape):
        raise TypeError(f"{name} must hold floats, got dtype {x.dtype}; convert it with .float()")
    if any_shape:
        if x.dim() == 0:
            raise ValueError(f"{name} must have rows along its first dimension, got a scalar")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: it has shape {tuple(x.shape)}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf (first at index "
                             f"{tuple(int(i) for i in (~torch.isfinite(x)).nonzero()[0])}). Where they mark missing "
                             "values, fill those with any number and pass where values are observed as a second "
                             "tensor, fit(model, (x, observed)), to a story that observes "
                             "dist.Normal(...).mask(observed)")
        return x
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has {x.shape[1]} columns, but the model expects {dim}")
    bad = ~torch.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains NaN or inf (first at row {row}, column {col})")
    if support == "binary":
        off = (x != 0) & (x != 1)
        if off.any():
            row, col = (int(i) for i in off.nonzero()[0])
            raise ValueError(
                f"{name} must hold only 0 and 1 for a Bernoulli likelihood; "
                f"found {x[row, col].item():g} at row {row}, column {col}"
            )
    return x


def num_rows(x=None, y=None, size=None) -> int:
    """How many rows a model call covers: those of ``x``, else of ``y``, else ``size`` (default 1)."""
    if x is not None:
        return x.shape[0]
    if y is not None:
        return y.shape[0]
    return 1 if size is None else size


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is in a half-precision type (bf16 autocast output), else unchanged:
    networks may run in bfloat16, but densities are computed in float32 or float64."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


_building = threading.local()


def _seeded_init(init):
    """Run a model's constructor with the global RNG seeded by its ``seed=`` keyword and restored
    afterwards (only the outermost constructor of a ``super().__init__`` chain does this). A
    constructor that takes ``seed`` itself (for orderings or masks) receives it too. The outermost
    constructor records its arguments in ``init_arguments`` (see :class:`GenerativeModel`)."""
    signature = inspect.signature(init)
    takes_seed = "seed" in signature.parameters

    @functools.wraps(init)
    def wrapper(self, *args, seed: int = 0, **kwargs):
        if takes_seed:
            kwargs["seed"] = seed
        if getattr(_building, "depth", 0):
            return init(self, *args, **kwargs)
        check_seed(seed)
        _building.depth = 1
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                init(self, *args, **kwargs)
        finally:
            _building.depth = 0
        self.seed = seed
        self.init_arguments = _plain_arguments(signature, self, args, kwargs, seed)

    return wrapper


def _plain_arguments(signature: inspect.Signature, self, args, kwargs, seed: int) -> dict[str, Any]:
    """The constructor's arguments by name, defaults applied (``**kwargs`` by their own names) and
    ``seed`` included: those with a JSON form (numbers, strings, None, and lists and dicts of them;
    tuples as lists). Others (a network passed in) are left out."""
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    arguments = {"seed": seed}
    for name, value in list(bound.arguments.items())[1:]:
        kind = signature.parameters[name].kind
        items = value.items() if kind is inspect.Parameter.VAR_KEYWORD else \
            [] if kind is inspect.Parameter.VAR_POSITIONAL else [(name, value)]
        for key, item in items:
            as_data = plain(item)
            if as_data is not NO_PLAIN_FORM:
                arguments[key] = as_data
    return arguments


NO_PLAIN_FORM = object()


def plain(value):
    """``value`` as JSON data, or ``NO_PLAIN_FORM``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        return NO_PLAIN_FORM if any(v is NO_PLAIN_FORM for v in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: plain(v) for k, v in value.items()}
        return NO_PLAIN_FORM if any(v is NO_PLAIN_FORM for v in items.values()) else items
    return NO_PLAIN_FORM


@contextlib.contextmanager
def local_params(*modules: torch.nn.Module) -> Iterator[None]:
    """Run with PyroModule parameters kept local to their modules.

    Inside, PyroModules never read from or write to Pyro's global parameter store
    (``pyro.settings`` ``module_local_params``), so same-named parameters of two models stay
    apart. Modules built while the setting was off lack the local state Pyro expects; it is
    added here.
    """
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        for sub in module.modules():
            context = getattr(sub, "_pyro_context", None)
            if context is not None and not hasattr(context, "param_state"):
                context.param_state = {"params": {}, "constraints": {}}
    with pyro.settings.context(module_local_params=True):
        yield


def bits_per_dim(log_likelihood_nats: float, dim: int) -> float:
    """Negative log-likelihood in bits per dimension (lower is better)."""
    return -log_likelihood_nats / (dim * math.log(2.0))


def progress_bar(total: int, progress, desc: str):
    """What a long loop of ``total`` steps (a sampler's) reports to: a tqdm bar when ``progress`` is
    True, calls of ``progress(done, total)`` when it is a callable (the protocol of
    :class:`ppgen.inference.progress.Progress`, which the inference layer passes), nothing when
    False. Either way it has ``update()`` and ``close()``."""
    if callable(progress):
        return _CallbackBar(total, progress)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=not progress)


class _CallbackBar:
    def __init__(self, total: int, callback):
        self.total, self.callback, self.done = total, callback, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        self.callback(self.done, self.total)

    def close(self) -> None:
        pass
