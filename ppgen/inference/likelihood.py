"""log_likelihood(): exact log p(x) where the model has it, an estimate or a bound otherwise.

The methods are named once, in :data:`METHODS`; ``log_likelihood``'s docstring, its errors and the
CLI read them there. Each one either scores a model or is refused in one line that names the
model, the method and the methods that work for it.

Every result says what its figure is (:data:`KINDS`, named once): ``"exact"``, a lower
``"bound"`` (errs low) or an ``"estimate"`` that errs high on average, with one label
(:func:`describe`) that ``__str__``, ``to_dict``, ``metrics.json`` and the tables print, and a
``stderr`` that is always the Monte Carlo standard error of the mean (the spread over rows is
``row_std``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from collections import OrderedDict

import pyro
import torch
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor

from ppgen.checks import positive_int
from ppgen.inference.program import (PARTICLE_PLATE, ModelCheckError, Program, batch_rows, call_args, logmeanexp,
                                     resolve_device, sample_sites, site_log_prob)
from ppgen.inference.progress import Progress
from ppgen.inference.training import FitResult, refuse_other_rows
from ppgen.models.base import GenerativeModel, LikelihoodEstimate, bits_per_dim
from ppgen.models.decoder_ais import decoder_log_likelihood

__all__ = ["log_likelihood", "LikelihoodResult", "METHODS", "KINDS", "PROGRESS", "describe"]

#: The methods of ``log_likelihood(method=...)``, named once (log_likelihood's docstring lists them from here):
#: a result's ``method`` is one of them, never "auto".
METHODS = {
    "auto": '"exact" where the model has it, else the model\'s own estimator (its likelihood_method: an RBM\'s or '
            'a GAN\'s "ais", a diffusion model\'s "elbo"), else "iwae"',
    "exact": "log p(x) in closed form, the model's log_prob (has_exact_likelihood)",
    "iwae": "the guide is the proposal of an importance sampler with K = num_samples particles per example (Burda "
            "et al. 2016): a stochastic lower bound on log p(x) whose bias shrinks as K grows (on an exact model, "
            "it measures how far the bound is from the exact value). A model without latent variables has every weight "
            "equal to p(x): its figure is exact (or, for a dequantized density, its bound) and K is irrelevant",
    "ais": "annealed importance sampling with K = num_samples chains per row: the model's own (an RBM's log Z, a "
           "GAN's), or over the latents with HMC (Wu et al. 2017) for a decoder-based model with z_dim and "
           "observation_log_prob(z, x) (a VAE): it needs no guide, so a VAE and a GAN are measured the same way",
    "elbo": "the model's own variational bound (a diffusion model's, all T terms summed)",
}

#: What each method's progress line counts (``log_likelihood(progress=True)``): its label and unit.
PROGRESS = {"exact": ("log p(x)", "rows"), "iwae": ("IWAE", "rows"), "ais": ("AIS", "temperatures"),
            "elbo": ("ELBO", "steps")}


#: What a figure is (a result's ``kind``), named once; ``errs`` says on which side of log p(x) it falls.
KINDS = {
    "exact": "log p(x) of the data as given, up to floating point (errs: None)",
    "bound": "a lower bound on log p(x), or one in expectation over its randomness: the log-likelihood errs low and "
             "the NLL high (an ELBO, IWAE, AIS over a decoder's latents, RAISE, a dequantized density of discrete "
             "data: E_u log p(x + u) <= log P(x) by Jensen)",
    "estimate": "an estimate whose error has a sign only on average: AIS of an energy model's log Z errs low on "
                "average, so its log-likelihood errs high and its NLL low (errs: 'high')",
}


def describe(method: str, kind: str, errs: str | None = None, num_samples: int = 0) -> str:
    """A figure's label, as results, ``metrics.json`` and the tables print it: how it was made
    (``method``, one of :data:`METHODS`, with ``num_samples`` draws per row) and what it is
    (``kind``, one of :data:`KINDS`). A bound that ``log_likelihood`` drew nothing for is a
    dequantized density's (its noise u was drawn by the caller).

    Examples
    --------
    >>> describe("iwae", "bound", "low", 1000)
    'IWAE K=1000: a lower bound on log p(x)'
    >>> describe("ais", "estimate", "high", 100)
    'AIS, 100 chains: an estimate of log p(x) that errs high on average (the NLL low)'
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if kind == "exact":
        return "exact" if method == "exact" else "exact, no latent variables: every importance weight is p(x)"
    if num_samples == 0 and method in ("exact", "iwae"):  # a bound with nothing drawn: the caller drew u
        how = "dequantized density E_u log p(x + u)" + ("" if method == "exact" else ", no latent variables")
    else:
        how = {"iwae": f"IWAE K={num_samples}", "ais": f"AIS, {num_samples} chains", "elbo": "ELBO"}.get(method, method)
    if kind == "bound":
        return f"{how}: a lower bound on log p(x)"
    return f"{how}: an estimate of log p(x) that errs {errs} on average (the NLL {'low' if errs == 'high' else 'high'})"


@dataclasses.dataclass
class LikelihoodResult:
    """Log-likelihood of a data set, in nats per example (higher is better), labelled for what it is.

    Attributes
    ----------
    values : Tensor (N,)
        log p(x_n), or its bound or estimate, per example.
    mean : float
        Mean of ``values``.
    stderr : float
        The Monte Carlo standard error of ``mean`` as a figure of its ``kind`` for these rows: 0 when
        nothing random enters it (``kind == "exact"``); from the spread of the draws where each row
        has several (IWAE's K particles, by the delta method; AIS chains; log Z's chains for an energy
        model). Where each row has one draw (a dequantized density's noise u, a diffusion bound's
        x_t), the draws' noise and the rows' spread cannot be told apart, and it is
        ``row_std / sqrt(N)``, which over-states it (inf for one row); ``stderr_over_rows`` says so.
    row_std : float
        The standard deviation of ``values`` over the rows (0 for one row): how much the examples
        differ, not an error of ``mean``.
    bits_per_dim : float
        Negative log-likelihood in bits per dimension (lower is better).
    exact : bool
        True only when ``kind == "exact"``: the figure is log p(x) of the data as given.
    num_samples : int
        The draws ``log_likelihood`` made behind each value: K particles (``"iwae"``), chains
        (``"ais"``), repeats (a diffusion ELBO); 0 when it drew nothing (an exact figure, or a
        dequantized density, whose noise u the caller drew).
    elbo : float or None
        The ELBO per example from the same samples (mean of the log weights), for latent models.
    method : str
        The method of :data:`METHODS` that made the figure (``"auto"`` resolved): ``"exact"`` (the
        model's log_prob), ``"iwae"``, ``"ais"``: annealed importance sampling, of log Z for an
        energy model (RBM) or over the latents for a decoder-based model (GAN, VAE; Wu et al. 2017),
        or ``"elbo"``: a diffusion model's bound with all T terms summed.
    bracket : (float, float) or None
        For an energy model's ``"ais"``: a conservative (RAISE, errs low) and an optimistic (AIS,
        errs high) mean log-likelihood, between which the true value lies up to Monte Carlo error.
    kind : str
        What the figure is, one of :data:`KINDS`: ``"exact"``, ``"bound"`` (a lower bound, or one in
        expectation: ELBO, IWAE, AIS over a decoder's latents, a dequantized density on discrete data)
        or ``"estimate"`` (AIS of log Z: errs high on average).
    errs : str or None
        On which side of the true log p(x) the figure falls (on average): ``"low"`` for a bound,
        ``"high"`` for AIS of log Z, None when exact.
    stderr_over_rows : bool
        True where each row had one draw and ``stderr`` is ``row_std / sqrt(N)``: the standard error of
        the mean over these rows, the draws' noise and the rows' spread together.
    """

    values: torch.Tensor
    mean: float
    stderr: float
    bits_per_dim: float
    exact: bool
    num_samples: int
    elbo: float | None = None
    method: str = "exact"
    bracket: tuple[float, float] | None = None
    kind: str = "exact"
    errs: str | None = None
    row_std: float = 0.0
    stderr_over_rows: bool = False

    def __post_init__(self):
        if self.kind not in KINDS or self.exact != (self.kind == "exact") or (self.errs is None) != self.exact \
                or self.errs not in (None, "low", "high"):
            raise ValueError(f"a LikelihoodResult is exact (kind 'exact', errs None) or not (kind 'bound' or "
                             f"'estimate', errs 'low' or 'high'), got exact={self.exact}, kind={self.kind!r}, "
                             f"errs={self.errs!r}")

    @property
    def label(self) -> str:
        """What the figure is, in words (:func:`describe`)."""
        return describe(self.method, self.kind, self.errs, self.num_samples)

    def __str__(self) -> str:
        if self.exact:
            how = self.label
        elif self.stderr_over_rows:  # one draw per row: the noise cannot be told from the rows' spread
            how = f"{self.label}; s.e. over rows {self.stderr:.3f}, an upper bound on its Monte Carlo s.e."
        else:
            how = f"{self.label}; Monte Carlo s.e. {self.stderr:.3f}"
        if self.bracket is not None:
            how += f"; bracket [{self.bracket[0]:.3f}, {self.bracket[1]:.3f}]"
        elbo = f", ELBO {self.elbo:.3f}" if self.elbo is not None else ""
        return (f"log-likelihood {self.mean:.3f} nats/example ({how}); "
                f"{self.bits_per_dim:.4f} bits/dim{elbo}; s.d. over rows {self.row_std:.3f}")

    def __repr__(self) -> str:
        return f"LikelihoodResult({self}; {len(self.values)} examples)"

    def to_dict(self) -> dict:
        """The figures as plain numbers (for ``json.dumps``); per-example values stay on ``values``."""
        return {"log_likelihood": self.mean, "stderr": self.stderr, "row_std": self.row_std,
                "bits_per_dim": self.bits_per_dim, "exact": self.exact, "kind": self.kind, "errs": self.errs,
                "label": self.label, "num_samples": self.num_samples, "elbo": self.elbo,
                "num_examples": len(self.values), "method": self.method, "stderr_over_rows": self.stderr_over_rows,
                "bracket": list(self.bracket) if self.bracket is not None else None}


def _result(values: torch.Tensor, dim: int, method: str, kind: str, errs: str | None, stderr: float | None,
            num_samples: int, over_rows: bool = False, **more) -> LikelihoodResult:
    """A labelled result from per-row ``values``; ``stderr=None``: one draw per row, ``row_std / sqrt(N)``."""
    n, mean = len(values), values.mean().item()
    row_std = values.double().std().item() if n > 1 else 0.0
    values = values.float().cpu()
    over_rows = over_rows or stderr is None
    if stderr is None:
        stderr = row_std / math.sqrt(n) if n > 1 else math.inf
    return LikelihoodResult(values, mean, stderr, bits_per_dim(mean, dim), kind == "exact", num_samples,
                            method=method, kind=kind, errs=errs, row_std=row_std, stderr_over_rows=over_rows,
                            **more)


def _density(gm, values: torch.Tensor, dim: int, method: str) -> LikelihoodResult:
    """log p(x) per row, computed with nothing drawn: exact, unless the model is a dequantized density of
    discrete data (``num_levels`` set): then the rows are x + u and E_u log p(x + u) <= log P(x) (Jensen;
    Theis et al. 2016), a lower bound of which each row is one draw (of u, by the caller)."""
    if gm is not None and gm.num_levels is not None:
        return _result(values, dim, method, "bound", "low", None, 0)
    return _result(values, dim, method, "exact", None, 0.0, 0)


@torch.no_grad()
def log_likelihood(model, data, *, guide=None, num_samples: int = 1000, batch_size: int = 100,
                   device: str | torch.device | None = None, seed: int = 0, method: str = "auto",
                   progress: bool = False, **options) -> LikelihoodResult:
    """Log-likelihood per example: exact where the model has it, otherwise an estimate or a bound.
    The model is scored in evaluation mode (``nn.Module.eval``: no dropout), and left in its own mode.

    Parameters
    ----------
    model : GenerativeModel, callable or FitResult
        A ppgen model, or a plain Pyro model function (with ``guide=``), or what :func:`~ppgen.fit`
        returned (its model, and a plain story's fitted guide unless ``guide=`` is given).
    data : Tensor (N, D) or (x, y)
    guide : None, callable or str
        The proposal of ``"iwae"`` in place of the model's own guide (as in :class:`Program`).
    num_samples : int
        K: importance samples per example (``"iwae"``), or chains per row (``"ais"``).
    batch_size : int
        Rows per forward pass; particles are drawn in chunks of about 10,000 samples.
    device : None, "auto", "cpu", "cuda", ...
        Where to compute: by default where the model is. Elsewhere, the model is moved there
        and back afterwards.
    seed : int
        Fixes the importance samples.
    method : str
        One of :data:`METHODS`:

{methods}

        A method that cannot score the model raises a ValueError (a :class:`ModelCheckError` for
        ``"iwae"``) naming the methods that can.
    progress : bool
        Print the progress of a computation longer than a few seconds to standard error, with an
        estimate of the time left (:class:`~ppgen.inference.progress.Progress`; units in
        :data:`PROGRESS`): AIS's temperatures, a diffusion bound's steps, rows otherwise. A model's
        own estimator reports it where its ``estimate_log_likelihood`` takes a ``progress`` callback,
        ``progress(done, total)``.
    **options
        Settings of the model's own estimator (an RBM's or a GAN's ``num_temperatures``, a
        diffusion model's ``batch_size`` and ``strata``), or of AIS over a decoder's latents (``num_temperatures``,
        ``leapfrog``, ``step_size``); ``"exact"`` and ``"iwae"`` take none.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> log_likelihood(IndependentBernoulli(4), torch.ones(2, 4)).mean  # 4 fair coins
    -2.772588...
    """
    for value, name in ((num_samples, "num_samples"), (batch_size, "batch_size")):
        positive_int(value, name)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    fitted = None
    if isinstance(model, FitResult):
        fitted, model = model, model.model
        guide = fitted.guide if guide is None and not isinstance(model, (GenerativeModel, Program)) else guide
    program = model if isinstance(model, Program) else Program(model, guide)
    x, y = program.rows(data, "data")
    if fitted is not None and guide is fitted.guide:
        refuse_other_rows(fitted, call_args(x, y), "log_likelihood")
    device = program.device if device is None else resolve_device(device)
    home = program.device
    program.to(device)
    try:
        with ieee_float32(), program.mode(False):  # scored without dropout, batch norm on its running statistics
            return _log_likelihood(program, x, y, num_samples, batch_size, device, seed, method, progress, options)
    finally:
        program.to(home)  # the caller's model stays where it was


if log_likelihood.__doc__:  # None under python -OO
    log_likelihood.__doc__ = log_likelihood.__doc__.replace(
        "{methods}", "\n".join(f"        - ``{name!r}``: {text};" for name, text in METHODS.items()))


@contextlib.contextmanager
def ieee_float32():
    """Inside: float32 convolutions and matrix products on CUDA in IEEE precision, not TF32.

    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default on Ampere and later GPUs,
    and matrix products too under ``torch.set_float32_matmul_precision("high")``. That is a fair trade
    in training, but it moves each logit by about 1e-3 of its size, and an exact log-likelihood
    sums hundreds of them. The settings are restored on exit; on the CPU they change nothing.
    """
    # torch >= 2.9 has per-operator settings; its older allow_tf32 flags raise once those are set
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        switches = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                    (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        switches = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved):
            setattr(owner, name, value)


def _log_likelihood(program: Program, x, y, num_samples, batch_size, device, seed, method, progress: bool,
                    options: dict) -> LikelihoodResult:
    dim = x[0].numel()
    rows = torch.arange(x.shape[0]).split(batch_size)
    first = batch_rows(x, y, rows[0], device)
    resolved = _resolve(program, method)
    refusal = _refusal(program, resolved, first, num_samples)
    if refusal is not None:
        error = ModelCheckError if resolved == "iwae" else ValueError
        raise error(_refused(program, method, resolved, refusal, first, num_samples))
    if options and resolved in ("exact", "iwae"):
        raise TypeError(f"log_likelihood with {_asked(method, resolved)} takes no options, got "
                        f"{', '.join(sorted(options))}")
    gm = program.generative_model
    report = Progress(*PROGRESS[resolved]) if progress else None
    if resolved == "exact" and gm is not None:  # a plain program's: by the weights below, every one p(x)
        values = []
        for idx in rows:
            values.append(gm.log_prob(*batch_rows(x, y, idx, device)).float().cpu())
            if report is not None:
                report(int(idx[-1]) + 1, x.shape[0])
        return _density(gm, torch.cat(values), dim, "exact")
    if gm is not None and resolved != "iwae" and resolved == gm.likelihood_method:  # its own: an RBM's AIS, ...
        if report is not None and "progress" in inspect.signature(gm.estimate_log_likelihood).parameters:
            options = {**options, "progress": report}  # a model's own estimator may not report progress
        estimate = gm.estimate_log_likelihood(x.to(device), num_samples=num_samples, seed=seed, **options)
        if not isinstance(estimate, LikelihoodEstimate):
            raise TypeError(f"{program.name}.estimate_log_likelihood must return a "
                            f"ppgen.models.base.LikelihoodEstimate, got {type(estimate).__name__}")
        return _result(estimate.values, dim, estimate.method, estimate.kind, estimate.errs, estimate.stderr,
                       estimate.num_samples, estimate.stderr_over_rows, bracket=estimate.bracket,
                       elbo=estimate.values.mean().item() if estimate.method == "elbo" else None)
    if resolved == "ais":  # over the latents of a decoder-based model: p(x)'s estimate is unbiased, its log errs low
        values, stderr = decoder_log_likelihood(gm.observation_log_prob, gm.check_data(x.to(device)), gm.z_dim,
                                                num_chains=num_samples, seed=seed, progress=report, **options)
        return _result(values, dim, "ais", "bound", "low", (stderr.pow(2).sum().sqrt() / len(values)).item(),
                       num_samples)

    story = program.inspect(*first)
    drawn = bool(story.latent or story.unguided)  # enumerated sites are summed out exactly, not drawn
    weigh = functools.partial(_enumerated_log_weights, program) if story.enumerated else program.log_weights
    particles = num_samples if drawn else 1  # without latents every weight is p(x) itself: K is irrelevant
    estimates, variances, elbos = [], [], []
    chunk = max(1, 10_000 // min(batch_size, x.shape[0]))  # particles per pass: ~10k samples live
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with program.param_scope(), torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        program.nesting(*first)
        for idx in rows:
            xb, yb = batch_rows(x, y, idx, device)
            log_w = torch.cat([weigh(xb, yb, min(chunk, particles - k))
                               for k in range(0, particles, chunk)]).double()  # (K, B)
            estimate = logmeanexp(log_w)
            ratio = torch.exp(log_w - estimate)  # w_k / mean(w): mean 1
            estimates.append(estimate.cpu())
            # delta method: Var[log mean w] ~ Var[w / E w] / K
            variances.append((ratio.var(0, unbiased=True) / particles).cpu()
                             if particles > 1 else torch.full_like(estimate.cpu(), float("inf")))
            elbos.append(log_w.mean(0).cpu())
            if report is not None:
                report(int(idx[-1]) + 1, x.shape[0])
    if not drawn:
        exact = resolved == "exact" or (method == "auto" and story.enumerated)  # every latent summed out
        return _density(gm, torch.cat(estimates), dim, "exact" if exact else "iwae")
    stderr = math.sqrt(torch.cat(variances).sum().item()) / x.shape[0]
    return _result(torch.cat(estimates), dim, "iwae", "bound", "low", stderr, num_samples,
                   elbo=torch.cat(elbos).mean().item())


def _resolve(program: Program, method: str) -> str:
    """The method that ``"auto"`` stands for: exact, else the model's own estimator, else iwae."""
    if method != "auto":
        return method
    if program.exact:
        return "exact"
    gm = program.generative_model
    return gm.likelihood_method if gm is not None and gm.likelihood_method is not None else "iwae"


def _refusal(program: Program, method: str, first, num_samples: int) -> str | None:
    """Why ``method`` (resolved) cannot score the model, or None. For ``"iwae"`` the story is
    checked on the first batch ``first`` (once per Program: it sets the data plate)."""
    gm = program.generative_model
    if method == "iwae" or (gm is None and method == "exact"):
        if gm is not None and not gm.is_normalised:
            return "its density is unnormalised (its factor lacks -log Z), so importance weights do not estimate p(x)"
        if gm is not None and not gm.guide_is_proposal:
            return f"its guide is not an importance proposal for p(x) ({program.name}.guide_is_proposal is False)"
        story = program.inspect(*first)
        if program.data_plate is None:
            with program.param_scope():
                try:  # enumerated sites are summed out in each weight, as TraceEnum_ELBO sums them
                    program.validate(*first, estimator="enum" if story.enumerated else "iwae",
                                     num_particles=min(num_samples, 2), thorough=False)
                except ModelCheckError as err:
                    return str(err)
        if method == "exact" and (story.latent or story.unguided):
            return (f"a plain Pyro program is scored exactly where every latent is enumerated; latent sites "
                    f"{list(story.latent + story.unguided)} are not: score it with method='iwae'")
        return None
    if gm is None:
        return ("a plain Pyro program is scored with its guide as the proposal (method='iwae'), or exactly where "
                "its every latent is enumerated (method='exact')")
    if method == "exact":
        return None if gm.has_exact_likelihood else "it has no exact log_prob"
    if method == gm.likelihood_method:
        return None
    if method == "ais":
        refusal = ("it has no AIS estimator of its own and is not a decoder-based model with z_dim and "
                   "observation_log_prob(z, x) (a VAE, a GAN)")
        if gm.z_dim is None:
            return refusal
        try:  # one decoder pass: the hook's default (and a model whose prior is not N(0, I)) raises
            gm.observation_log_prob(first[0].new_zeros(1, gm.z_dim), first[0][:1])
        except NotImplementedError as err:
            return f"{refusal}: {err}"
        return None
    return f"it has no bound of its own (its likelihood_method is {gm.likelihood_method!r})"


def _refused(program: Program, method: str, resolved: str, reason: str, first, num_samples: int) -> str:
    """One line: the method, the model, why not, and the methods that work for it."""
    reasons = {resolved: reason}
    for other in METHODS:
        target = _resolve(program, other)
        if target not in reasons:
            reasons[target] = _refusal(program, target, first, num_samples)
    working = [m for m in METHODS if reasons[_resolve(program, m)] is None]
    return (f"log_likelihood with {_asked(method, resolved)} cannot score {program.name}: {reason.rstrip('.')}. "
            f"Methods that work for {program.name}: {', '.join(map(repr, working)) or 'none'} "
            "(ppgen.inference.likelihood.METHODS)")


def _asked(method: str, resolved: str) -> str:
    return f"method={method!r}" + (f" (here {resolved!r})" if resolved != method else "")


def sum_out_enumerated(model_trace, sites: list[dict], keep: tuple[str, ...]) -> torch.Tensor:
    """The log-density of ``sites`` of a trace run under ``poutine.enum``, with the values of its enumerated
    sites summed out (``sites`` must hold every one of them), contracted as ``TraceEnum_ELBO`` contracts it
    (``pyro.ops.contract``): summed over every plate but those named in ``keep``, whose dims remain (a plate
    of size 1 is packed away)."""
    model_trace.compute_log_prob()
    model_trace.pack_tensors()
    symbols, terms, sum_dims = model_trace.plate_to_symbol, OrderedDict(), set()
    for site in sites:
        terms.setdefault(frozenset(symbols[f.name] for f in site["cond_indep_stack"] if f.vectorized), []).append(
            site["packed"]["log_prob"])
        if site["infer"].get("_enumerate_symbol") is not None:
            sum_dims.add(site["infer"]["_enumerate_symbol"])
    present = {d for ts in terms.values() for t in ts for d in t._pyro_dims}
    target = frozenset({symbols[name] for name in keep if name in symbols} & present)
    return packed.unpack(contract_to_tensor(terms, sum_dims, target_ordinal=target), model_trace.symbol_to_dim)


def _enumerated_log_weights(program: Program, x, y=None, num_particles: int = 1) -> torch.Tensor:
    r""":meth:`Program.log_weights` with the model's enumerated sites summed out exactly, shape (K, N):

    .. math::
        \log w_{kn} = \log \sum_{c} p(x_n, z_{kn}, c) - \log q(z_{kn} \mid x_n),

    c ranging over every joint value of the enumerated sites. The model runs under ``poutine.enum``
    (each enumerated site in a dimension of its own, left of the particle plate) and its log-densities
    are contracted as ``TraceEnum_ELBO`` contracts them (``pyro.ops.contract``), down to one term per
    particle and row. Every site must sit in the data plate, so that each row's sum is its own."""
    nesting, args = program.nesting(x, y), call_args(x, y)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
        guide_trace = poutine.trace(program.guide).get_trace(*args)
        enumerated = poutine.enum(poutine.replay(program.model, trace=guide_trace), first_available_dim=-(nesting + 2))
        model_trace = poutine.trace(enumerated).get_trace(*args)
    for site in sample_sites(model_trace):
        if not any(f.name == program.data_plate for f in site["cond_indep_stack"]):
            raise ModelCheckError(f"site {site['name']!r} is outside the data plate {program.data_plate!r}: a "
                                  "log-likelihood per row sums out enumerated sites row by row, so every site must "
                                  "sit in it")
    log_p = sum_out_enumerated(model_trace, sample_sites(model_trace), (PARTICLE_PLATE, program.data_plate))
    total = program.per_example(log_p, site).flatten(2).sum(-1)  # any site of the story: each is in the data plate
    for site in sample_sites(guide_trace):
        if not site["is_observed"]:
            total = total - program.per_example(site_log_prob(site), site).flatten(2).sum(-1)
    return total
