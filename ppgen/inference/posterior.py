r"""Posterior draws into ArviZ: NUTS reference runs, guide draws, PSIS diagnostics and LOO.

Every source of posterior draws (a Pyro :class:`~pyro.infer.MCMC` run, a fitted guide, a dict of
draws) becomes one ArviZ ``DataTree`` with the groups ``posterior``, ``log_likelihood``
(pointwise, for the model's observed sites), ``posterior_predictive``, ``observed_data`` and
``sample_stats``; a ``pyro.deterministic`` site is a function of the draws, in ``posterior`` beside
them. Dimensions are named after the model's plates (the data plate gives the
dimension ``"data"``); the singleton dimensions that Pyro adds to broadcast against plates are
squeezed away. Sites the model marks for enumeration (``infer={"enumerate": "parallel"}``, a
mixture's component) are summed out of every density, as ``TraceEnum_ELBO`` and NUTS sum them:
they have no draws, and the pointwise log-likelihood of a row is :math:`\log \sum_c p(x_n, c \mid
\theta)`.

The draws are scored all at once, in a plate left of the model's plates; a story that does not
broadcast over them (``x @ w`` where ``(x * w).sum(-1)`` would) is scored one draw at a time
instead, slower and the same.

Whether variational inference worked is then checked three ways:

- :func:`pareto_khat`: the Pareto-smoothed importance sampling (PSIS) shape estimate k̂ of the
  weights p(x, z) / q(z) for z drawn from the guide (Yao et al. 2018): k̂ < 0.5 the guide is
  good, < 0.7 usable, else the importance weights have too heavy a tail to trust it.
- :func:`guide_gap` and :func:`newton_gap`, which ``fit`` runs at its end for a guide of global
  latents: the guide's moments against the importance-weighted posterior, or, where the weights
  cannot say, against the optimality conditions of a Gaussian guide (Opper & Archambeau 2009).
- :func:`loo`, :func:`loo_approximate_posterior` and :func:`compare`: PSIS leave-one-out
  cross-validation (Vehtari, Gelman & Gabry 2017) of the posterior predictive, for MCMC draws
  and for draws of an approximate posterior (Magnusson et al. 2019).

References: Y. Yao, A. Vehtari, D. Simpson, A. Gelman, "Yes, but Did It Work?: Evaluating
Variational Inference", ICML 2018. A. Vehtari, A. Gelman, J. Gabry, "Practical Bayesian model
evaluation using leave-one-out cross-validation and WAIC", Statistics and Computing 2017.
M. Magnusson, M. Andersen, J. Jonasson, A. Vehtari, "Bayesian leave-one-out cross-validation
for large data", ICML 2019. M. Opper, C. Archambeau, "The variational Gaussian approximation
revisited", Neural Computation 2009.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Mapping

import arviz_base
import arviz_stats
import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive

from ppgen.checks import non_negative_int, positive_int
from ppgen.inference.training import FitResult, refuse_other_rows
from ppgen.inference.likelihood import sum_out_enumerated
from ppgen.inference.program import (PARTICLE_PLATE, ModelCheckError, Program, deterministic_sites, is_factor,
                                     sample_sites)

__all__ = ["to_arviz", "run_nuts", "pareto_khat", "ParetoKhat", "loo", "loo_approximate_posterior", "compare"]

SAMPLE_DIMS = ("chain", "draw")
PSIS_MIN_SAMPLES = 25  # arviz_stats fits the largest 20% of the weights and needs at least 5


def to_arviz(source, model=None, data=None, *, num_samples: int = 1000, seed: int = 0,
             sample_stats: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Posterior draws as an ArviZ ``DataTree``, with pointwise log-likelihood and predictions.

    Parameters
    ----------
    source : pyro.infer.MCMC, FitResult, guide, or dict
        Where the draws come from: an MCMC run (its chains are kept); a :class:`FitResult` of
        :func:`ppgen.fit` or a fitted guide callable (``num_samples`` draws); or a dict mapping
        latent site names to arrays shaped ``(chain, draw, *site shape)``.
    model : GenerativeModel or callable, optional
        The model; defaults to the MCMC kernel's or the FitResult's model.
    data : tensor or tuple, optional
        The model's arguments: ``x`` or ``(x, y)``. Defaults to the MCMC run's arguments.
    num_samples : int
        Draws from a guide.
    seed : int
        Seeds the guide draws and the posterior predictive draws.
    sample_stats : dict, optional
        Extra per-draw statistics, arrays shaped ``(chain, draw)``.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior``, ``log_likelihood``, ``posterior_predictive``, ``observed_data``
        and ``sample_stats`` (``diverging`` for MCMC; ``log_joint`` and ``log_guide`` for guide
        draws, which :func:`loo_approximate_posterior` uses). Values an observed site masks out
        (``.mask(m)``, ``poutine.mask``: missing data) are no data: its log-likelihood keeps the
        others, along ``<site>_observed`` (as PyMC's ``x_observed``), ``observed_data`` shows them
        as NaN, and ``posterior_predictive`` draws them (the imputations).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(x):
    ...     p = pyro.sample("p", dist.Beta(1.0, 1.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Bernoulli(p), obs=x)
    >>> tree = to_arviz({"p": torch.full((2, 50), 0.5)}, model, torch.ones(7))
    >>> tree["log_likelihood"]["x"].dims
    ('chain', 'draw', 'data')
    """
    stats: dict[str, np.ndarray] = {}
    if isinstance(source, MCMC):
        model = source.kernel.model if model is None else model
        args = source._args if data is None else _as_args(data)  # MCMC keeps the arguments it ran with
        draws = source.get_samples(group_by_chain=True)
        stats["diverging"] = _divergences(source)
    else:
        if model is None and isinstance(source, FitResult):
            model = source.model
        if model is None or data is None:
            raise ValueError("model= and data= are needed unless the source is an MCMC run")
        args = _as_args(data)
        if isinstance(source, FitResult):
            refuse_other_rows(source, args, "to_arviz")
            source = source.guide
        if isinstance(source, Mapping):
            draws = {k: torch.as_tensor(np.asarray(v)) for k, v in source.items()}
        elif callable(source):
            program = Program(model, source)
            with program.param_scope():
                draws, log_p, log_q = _guide_draws(program, args, positive_int(num_samples, "num_samples"), seed)
            draws = {k: v.unsqueeze(0) for k, v in draws.items()}
            stats.update(log_joint=log_p.unsqueeze(0).numpy(), log_guide=log_q.unsqueeze(0).numpy())
        else:
            raise TypeError(f"source must be an MCMC run, a FitResult, a guide or a dict of draws, "
                            f"got {type(source).__name__}")
    stats.update({k: np.asarray(v) for k, v in (sample_stats or {}).items()})
    program = Program(model, _no_guide)
    with program.param_scope():
        return _build_tree(program, {k: v.detach().cpu() for k, v in draws.items()}, args, seed, stats)


def run_nuts(model, data, *, num_chains: int = 2, num_samples: int = 500, warmup: int = 500, seed: int = 0,
             progress: bool = False, **nuts_options) -> xr.DataTree:
    """Sample the posterior with Pyro's NUTS, one chain after another, and convert with :func:`to_arviz`.

    Chains run sequentially in this process (no multiprocessing), each seeded from ``seed``,
    so the same seed gives the same draws.

    Parameters
    ----------
    model : GenerativeModel or callable
    data : tensor or tuple
        The model's arguments: ``x`` or ``(x, y)``.
    num_chains, num_samples, warmup : int
        Chains, kept draws per chain and warm-up (adaptation) steps per chain.
    seed : int
    progress : bool
        Show Pyro's progress bar (only when standard error is a terminal).
    **nuts_options
        Passed to :class:`pyro.infer.NUTS` (e.g. ``target_accept_prob``, ``max_tree_depth``).

    Returns
    -------
    xarray.DataTree
        As :func:`to_arviz`; ``sample_stats`` holds ``diverging`` and ``step_size`` per draw.
    """
    for value, name in ((num_chains, "num_chains"), (num_samples, "num_samples")):
        positive_int(value, name)
    non_negative_int(warmup, "warmup")
    args = _as_args(data)
    chains, diverging, step_sizes = [], [], []
    program = Program(model, _no_guide)
    with program.param_scope(), torch.random.fork_rng():
        for chain in range(num_chains):
            torch.manual_seed(seed * 1_000_003 + chain)
            sizes: list[float] = []

            def record(kernel, params, stage, i, sizes=sizes):
                if stage == "Sample":
                    sizes.append(kernel.step_size)

            mcmc = MCMC(NUTS(program.model, **nuts_options), num_samples=num_samples, warmup_steps=warmup,
                        hook_fn=record, disable_progbar=not (progress and sys.stderr.isatty()))
            mcmc.run(*args)
            chains.append(mcmc.get_samples())
            diverging.append(_divergences(mcmc)[0])
            step_sizes.append(sizes)
    draws = {k: torch.stack([c[k] for c in chains]) for k in chains[0]}
    stats = {"diverging": np.stack(diverging), "step_size": np.asarray(step_sizes, dtype=float)}
    return to_arviz(draws, model, data, seed=seed, sample_stats=stats)


@dataclasses.dataclass
class ParetoKhat:
    """PSIS diagnostic of a guide: k̂ with ArviZ's thresholds and what it means.

    Attributes
    ----------
    khat : float
        Estimated shape of the Pareto tail of the importance weights p(x, z) / q(z), z ~ q.
    num_samples : int
    verdict : {"good", "ok", "bad"}
        k̂ < 0.5, k̂ < 0.7, otherwise.
    message : str
        The verdict in words.
    """

    khat: float
    num_samples: int
    verdict: str
    message: str

    def to_dict(self) -> dict:
        """The figures as plain values (for ``json.dumps``)."""
        return dataclasses.asdict(self)


def pareto_khat(model, guide, data, num_samples: int = 1000, seed: int = 0) -> ParetoKhat:
    """Did variational inference work? PSIS k̂ of the guide's importance weights (Yao et al. 2018).

    Draws z_s ~ q(z) from the guide (a guide, an autoguide name or a :class:`FitResult`'s) and fits a
    generalized Pareto distribution to the largest weights w_s = p(x, z_s) / q(z_s) (all latents and
    all data jointly; the model's enumerated sites summed out of p). k̂ < 0.5: the guide
    covers the posterior and importance sampling corrects what is left; 0.5 <= k̂ < 0.7:
    usable, with slower convergence; k̂ >= 0.7: the guide misses posterior mass (often too
    narrow), and its expectations should not be trusted.

    Returns
    -------
    ParetoKhat
    """
    args = _as_args(data)
    num_samples = positive_int(num_samples, "num_samples")
    if num_samples < PSIS_MIN_SAMPLES:
        raise ValueError(f"num_samples must be at least {PSIS_MIN_SAMPLES} for PSIS (it fits the largest fifth of "
                         f"the weights, at least 5 of them), got {num_samples}")
    if isinstance(guide, FitResult):
        refuse_other_rows(guide, args, "pareto_khat")
    program = Program(model, guide.guide if isinstance(guide, FitResult) else guide)
    with program.param_scope():
        draws, log_p, log_q = _guide_draws(program, args, num_samples, seed)
    if not draws:
        raise ValueError(f"the guide of {program.name} draws no latent: there are no importance weights to "
                         "diagnose (its latents, if any, are summed out or point estimates)")
    if all(bool((value == value[:1]).all()) for value in draws.values()):
        raise ValueError(f"the guide of {program.name} draws the same value every time (a point estimate: AutoDelta, "
                         "or a Delta): there is no spread to weigh, and k̂ is not defined. Diagnose a guide with a "
                         "spread (guide='auto_normal'), or sample the posterior with run_nuts")
    # arviz_stats' psislw takes a log-likelihood and smooths the weights exp(-input): pass -log w
    minus_log_w = xr.DataArray((log_q - log_p).numpy()[None, :], dims=SAMPLE_DIMS)
    _, khat = minus_log_w.azstats.psislw(dim=list(SAMPLE_DIMS))
    khat = float(khat)
    if khat < 0.5:
        verdict, message = "good", "the guide is close to the posterior; importance-weighted estimates are reliable"
    elif khat < 0.7:
        verdict, message = "ok", "the guide is usable, but importance-weighted estimates converge slowly"
    else:
        verdict, message = "bad", ("the guide misses posterior mass (typically too narrow or the wrong shape); "
                                   "do not trust its posterior, and compare with MCMC")
    return ParetoKhat(khat, num_samples, verdict, f"k̂ = {khat:.2f} ({verdict}): {message}")


# guide_gap: the effective draws below which the weighted moments are too noisy to judge a guide by, and how far
# a guide's global latent may sit from its posterior before the fit is called short of its optimum (a guide that
# minimises KL(q || p) is narrower than the posterior, never twice as wide, and centred within a fraction of an sd)
GAP_MIN_EFFECTIVE = 200
GAP_SD_RATIO = 2.0
GAP_MEAN_SDS = 1.0


@dataclasses.dataclass(frozen=True)
class GuideGap:
    """One scalar of a guide's global latents against the posterior its importance weights give (:func:`guide_gap`)
    or its Newton step (:func:`newton_gap`), in the latent's unconstrained space.

    Attributes
    ----------
    site, index : str, tuple of int
        The latent and the component within its draws.
    guide_mean, guide_sd, posterior_mean, posterior_sd : float
        Its mean and standard deviation under the guide and under the weighted draws.
    khat, effective_samples : float
        The PSIS k̂ of the weights and their effective sample size, of ``num_samples`` draws (:func:`newton_gap`:
        NaN).
    optimum_sd : float
        The sd the guide's family has at its optimum (:func:`newton_gap`'s for a mean-field guide: narrower than
        the posterior's); None: the posterior's.
    shift_stderr : float
        The Monte Carlo standard error of :attr:`shift` (:func:`newton_gap`); None: not estimated.
    """

    site: str
    index: tuple[int, ...]
    guide_mean: float
    guide_sd: float
    posterior_mean: float
    posterior_sd: float
    khat: float
    effective_samples: float
    num_samples: int
    optimum_sd: float | None = None
    shift_stderr: float | None = None

    @property
    def shift(self) -> float:
        """How far the guide's mean sits from the posterior's, in posterior standard deviations."""
        return abs(self.guide_mean - self.posterior_mean) / self.posterior_sd

    @property
    def width(self) -> float:
        """The guide's sd over its family's optimal sd (the posterior's unless :attr:`optimum_sd` says otherwise)."""
        return self.guide_sd / (self.optimum_sd if self.optimum_sd is not None else self.posterior_sd)

    @property
    def off_centre(self) -> bool:
        """Off-centre by more than GAP_MEAN_SDS posterior sds (and by 3 standard errors, where they are known)."""
        return self.shift > GAP_MEAN_SDS and (self.shift_stderr is None or self.shift > 3 * self.shift_stderr)

    @property
    def far(self) -> bool:
        """Whether the guide is more than GAP_SD_RATIO times as wide as its family's optimum, or off-centre."""
        return self.width > GAP_SD_RATIO or self.off_centre

    def message(self, advice: str) -> str:
        """Why the guide is far from its posterior, in numbers, and ``advice`` (for a guide too wide: it has
        not travelled far enough; one about as wide but off-centre may also wander about the optimum)."""
        where = self.site + (str(list(self.index)) if self.index else "")
        if self.width <= GAP_SD_RATIO:
            advice = (f"{advice}; or, if it wanders about the optimum with steps too large for the objective's "
                      "noise, a smaller lr or more num_particles")
        if self.optimum_sd is None:
            how = (f"by importance sampling ({self.num_samples:,} draws of the guide, k̂ {self.khat:.2f}, "
                   f"{self.effective_samples:,.0f} effective)")
            wide = f"{self.width:.3g} times as wide"
        else:
            how = (f"by the posterior's gradient and curvature where the guide draws ({self.num_samples:,} draws; "
                   "a Newton step from the guide's mean)")
            wide = (f"{self.width:.3g} times as wide as its family's optimum ({self.optimum_sd:.3g})"
                    if self.optimum_sd != self.posterior_sd else f"{self.width:.3g} times as wide")
        return (f"the guide is far from the posterior it approximates: {how}, {where} has posterior mean "
                f"{self.posterior_mean:.4g} and sd {self.posterior_sd:.3g} (unconstrained), where the guide has "
                f"{self.guide_mean:.4g} and {self.guide_sd:.3g}: {wide}, {self.shift:.2g} sd off-centre. The fit has "
                f"not reached its optimum. {advice} (or set convergence_tol=None)")


def guide_gap(program: Program, args: tuple, num_samples: int = 1000, seed: int = 0,
              max_samples: int | None = None, one_by_one: bool = True, max_seconds: float | None = None,
              chunk_cells: int = 200_000) -> GuideGap | None:
    """Has the guide of a story's global latents reached the posterior? The scalar of its continuous latents
    whose guide is furthest from its Pareto-smoothed importance-weighted posterior (Yao et al. 2018), or None
    where the weights cannot say: k̂ >= 0.7, fewer than GAP_MIN_EFFECTIVE effective draws (many latents, or a
    guide too narrow), a guide that draws latents per row or the same value every time.

    A guide left far too wide (the usual start, and where an optimiser on a noisy objective crawls) is where
    importance sampling is at its best, and where a fit's other checks are at their weakest: the objective of
    the whole data moves by a few nats in hundreds, within its noise. A guide ten times too wide leaves about
    one draw in ten with weight; where the weights are sound (k̂ < 0.7) but too few, the draws are taken again
    four times as many, up to ``max_samples``. A story that does not broadcast over draws is scored one draw
    at a time, or with ``one_by_one`` False raises the error it raised. The draws are scored a chunk at a time,
    about ``chunk_cells`` draws x rows each (memory); where the chunks so far say that the rest would take
    past ``max_seconds`` in all, it gives up (None).
    """
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    while True:
        gap = _guide_gap(program, args, num_samples, seed, one_by_one, chunk_cells, deadline)
        if not isinstance(gap, float) or max_samples is None or 4 * num_samples > max_samples:
            return gap if isinstance(gap, GuideGap) else None
        num_samples *= 4


def _guide_gap(program: Program, args: tuple, num_samples: int, seed: int, one_by_one: bool, chunk_cells: int,
               deadline: float | None) -> GuideGap | float | None:
    """:func:`guide_gap` of ``num_samples`` draws; sound weights too few to judge by: their effective count."""
    rows = args[0].shape[0] if isinstance(args[0], torch.Tensor) and args[0].dim() else 1
    chunk = max(1, min(num_samples, chunk_cells // rows))
    parts, start = [], time.perf_counter()
    with program.param_scope():
        for k, first in enumerate(range(0, num_samples, chunk)):
            parts.append(_guide_draws(program, args, min(chunk, num_samples - first), seed + k, one_by_one))
            if not parts[0][0] or any(name not in program.global_latents for name in parts[0][0]):
                return None  # nothing drawn, or latents per row: too many to weigh
            done, now = first + len(parts[-1][1]), time.perf_counter()
            if deadline is not None and done < num_samples and now + (now - start) / done * (
                    num_samples - done) > deadline:
                return None
        draws = {name: torch.cat([part[0][name] for part in parts]) for name in parts[0][0]}
        log_p, log_q = torch.cat([part[1] for part in parts]), torch.cat([part[2] for part in parts])
        with torch.no_grad(), poutine.block(), torch.random.fork_rng():
            torch.manual_seed(seed)
            supports = {s["name"]: s["fn"].support for s in sample_sites(poutine.trace(program.model).get_trace(*args))
                        if not s["is_observed"]}
    if any(bool((value == value[:1]).all()) for value in draws.values()):
        return None  # a point estimate
    minus_log_w = xr.DataArray((log_q - log_p).numpy()[None, :], dims=SAMPLE_DIMS)
    log_weights, khat = minus_log_w.azstats.psislw(dim=list(SAMPLE_DIMS))
    log_weights = torch.from_numpy(np.asarray(log_weights, dtype=np.float64).reshape(-1))
    weights = (log_weights - log_weights.max()).exp()
    weights = weights / weights.sum()
    effective = 1 / weights.pow(2).sum().item()
    if not math.isfinite(float(khat)) or float(khat) >= 0.7:
        return None
    if effective < GAP_MIN_EFFECTIVE:
        return effective
    worst = None
    for name, value in draws.items():
        if supports[name].is_discrete:
            continue
        free = torch.distributions.biject_to(supports[name]).inv(value.double())
        shape = [size for size in free.shape[1:] if size != 1]  # the particles' plate broadcasts against plates
        free = free.reshape(num_samples, -1)
        guide_mean, guide_sd = free.mean(0), free.std(0)
        posterior_mean = weights @ free
        posterior_sd = (weights @ (free - posterior_mean).pow(2)).sqrt()
        for j in range(free.shape[1]):
            if not posterior_sd[j] > 0:
                continue
            gap = GuideGap(name, tuple(int(i) for i in np.unravel_index(j, shape)) if shape else (),
                           guide_mean[j].item(), guide_sd[j].item(), posterior_mean[j].item(),
                           posterior_sd[j].item(), float(khat), effective, num_samples)
            if worst is None or _badness(gap) > _badness(worst):
                worst = gap
    return worst


def _badness(gap: GuideGap) -> float:
    return max(gap.width / GAP_SD_RATIO, gap.shift / GAP_MEAN_SDS if gap.off_centre else 0.0)


NEWTON_MAX_LATENTS = 100  # scalars of global latents newton_gap looks at: a Hessian row each per draw


def _gaussian_family(guide) -> str | None:
    """The covariance family of an autoguide whose draws are Gaussian in the latents' unconstrained space (a
    low-rank one's optimal width has no closed form: it is held to the posterior's, which it does not exceed at
    its optimum), or None."""
    from pyro.infer import autoguide

    if isinstance(guide, (autoguide.AutoNormal, autoguide.AutoDiagonalNormal)):
        return "diagonal"
    if isinstance(guide, autoguide.AutoMultivariateNormal):
        return "full"
    return "low-rank" if isinstance(guide, autoguide.AutoLowRankMultivariateNormal) else None


def newton_gap(program: Program, args: tuple, num_samples: int = 64, seed: int = 0,
               max_seconds: float | None = None) -> GuideGap | None:
    """Has a Gaussian guide of a story's global latents reached its optimum? Where importance sampling cannot
    say (a guide narrower than the posterior gives weights of too heavy a tail), the conditions that hold at the
    optimum of any Gaussian q = N(m, S) in the latents' unconstrained space can (Opper & Archambeau 2009):
    E_q[grad log p(x, z)] = 0 for the mean, and for the covariance S^-1 = E_q[-hess log p(x, z)] (mean field:
    its diagonal). From ``num_samples`` draws of the guide, g = E_q[grad] and H = E_q[-hess] over all the rows;
    the Newton step H^-1 g from the guide's mean, in units of the posterior sds sqrt(diag H^-1), says how far off
    centre the guide is (exactly, for a Gaussian posterior), with its Monte Carlo standard error; the guide's sd
    against its family's optimum (1 / sqrt(diag H) for a mean-field guide, sqrt(diag H^-1) for a full one) how
    wide (a low-rank guide's: against the posterior's). Returns the scalar furthest from its optimum, or None:
    not an autoguide of that family (nor a hand-written guide), latents per row, more than NEWTON_MAX_LATENTS
    scalars, H not positive definite, or past ``max_seconds``. A model that Pyro's ``initialize_model`` cannot
    take raises its error (``fit`` takes that as no answer).
    """
    from pyro.infer.mcmc.util import initialize_model

    family = _gaussian_family(program.guide_module)
    if family is None or not program.global_latents:
        return None
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    with program.param_scope(), poutine.block(), torch.random.fork_rng():
        torch.manual_seed(seed)
        _, potential, transforms, _ = initialize_model(program.model, model_args=args)
        with torch.no_grad():
            traces = [poutine.trace(program.guide).get_trace(*args) for _ in range(num_samples)]
        names = sorted(transforms)
        if any(name not in program.global_latents for name in names):
            return None
        free = {name: torch.stack([transforms[name](t.nodes[name]["value"]) for t in traces]) for name in names}
        sizes = [free[name][0].numel() for name in names]
        if sum(sizes) > NEWTON_MAX_LATENTS:
            return None
        draws = torch.cat([free[name].reshape(num_samples, -1) for name in names], 1).double()
        gradients, hessians = [], []
        for draw in draws:
            point = draw.clone().requires_grad_(True)
            parts = torch.split(point, sizes)
            energy = potential({name: part.reshape(free[name].shape[1:]).to(free[name].dtype)
                                for name, part in zip(names, parts)})
            (gradient,) = torch.autograd.grad(energy, point, create_graph=True)
            hessians.append(torch.stack([torch.autograd.grad(gradient[i], point, retain_graph=True)[0]
                                         for i in range(len(point))]).detach())
            gradients.append(-gradient.detach())
            if deadline is not None and time.perf_counter() > deadline:
                return None
    precision = torch.stack(hessians).mean(0)
    try:
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    except RuntimeError:  # not positive definite: no Gaussian optimum near the guide to measure against
        return None
    steps = torch.stack(gradients) @ covariance  # each draw's Newton step; their mean is the guide's
    step, step_stderr = steps.mean(0), steps.std(0) / math.sqrt(num_samples)
    posterior_sd = covariance.diagonal().sqrt()
    guide_mean, guide_sd = draws.mean(0), draws.std(0)
    optimum_sd = precision.diagonal().rsqrt() if family == "diagonal" else posterior_sd
    worst, offsets = None, np.cumsum([0] + sizes)
    for j in range(len(step)):
        site = int(np.searchsorted(offsets, j, side="right")) - 1
        shape = [size for size in free[names[site]].shape[1:] if size != 1]
        local = j - offsets[site]
        gap = GuideGap(names[site], tuple(int(i) for i in np.unravel_index(local, shape)) if shape else (),
                       guide_mean[j].item(), guide_sd[j].item(), (guide_mean[j] + step[j]).item(),
                       posterior_sd[j].item(), math.nan, math.nan, num_samples,
                       optimum_sd=optimum_sd[j].item(), shift_stderr=(step_stderr[j] / posterior_sd[j]).item())
        if worst is None or _badness(gap) > _badness(worst):
            worst = gap
    return worst


def loo(tree: xr.DataTree, **kwargs):
    """PSIS-LOO of posterior draws (MCMC): ``arviz.loo`` with pointwise values.

    Returns an ArviZ ``ELPDData`` (``elpd``, ``se``, ``p``, ``pareto_k`` per observation).
    """
    return arviz_stats.loo(tree, pointwise=True, **kwargs)


def loo_approximate_posterior(tree: xr.DataTree, **kwargs):
    """PSIS-LOO for draws of a guide, corrected by log p(x, z) - log q(z) (Magnusson et al. 2019).

    ``tree`` must come from :func:`to_arviz` with a guide as source (its ``sample_stats`` hold
    ``log_joint`` and ``log_guide``).
    """
    stats = tree["sample_stats"] if "sample_stats" in tree.children else {}
    if "log_joint" not in stats or "log_guide" not in stats:
        raise ValueError("tree has no sample_stats log_joint/log_guide: build it with to_arviz(guide, model, data)")
    return arviz_stats.loo_approximate_posterior(tree, stats["log_joint"], stats["log_guide"], pointwise=True,
                                                 **kwargs)


def compare(models: Mapping[str, Any], var_name: str | None = None, **kwargs):
    """Rank models by PSIS-LOO expected log predictive density (``arviz.compare``).

    ``models`` maps names to DataTrees from :func:`to_arviz` (guide draws get
    :func:`loo_approximate_posterior`, others :func:`loo`) or to ``ELPDData`` already computed.
    ``var_name`` picks the observed site to score when a model has several. Returns ArviZ's comparison
    table (a pandas DataFrame, best model first).
    """
    if len(models) < 2:
        raise ValueError(f"compare needs at least two models, got {len(models)}")
    elpds = {}
    for name, value in models.items():
        if isinstance(value, xr.DataTree):
            guided = "sample_stats" in value.children and "log_guide" in value["sample_stats"]
            value = (loo_approximate_posterior if guided else loo)(value, var_name=var_name)
        elpds[name] = value
    return arviz_stats.compare(elpds, **kwargs)


# --- internals -------------------------------------------------------------------------------

def _build_tree(program: Program, draws: dict[str, torch.Tensor], args: tuple, seed: int,
                stats: dict[str, np.ndarray]) -> xr.DataTree:
    with torch.no_grad(), poutine.block(), torch.random.fork_rng():
        torch.manual_seed(seed)
        fn = program.model
        trace = poutine.trace(fn).get_trace(*args)  # unconditioned: only data sites are observed
        sites = {s["name"]: s for s in sample_sites(trace) + deterministic_sites(trace)}
        derived = [s["name"] for s in deterministic_sites(trace)]
        # pyro.factor terms are in the joint (sample_stats' log_joint), but no data: as PyMC's Potential, they are
        # neither log-likelihood nor observed data
        observed = [name for name, s in sites.items() if s["is_observed"] and name not in derived and not is_factor(s)]
        enumerated = [name for name, s in sites.items() if not s["is_observed"] and s["infer"].get("enumerate")]
        latent = [name for name, s in sites.items() if not s["is_observed"] and name not in enumerated]
        unknown, missing = sorted(set(draws) - set(latent)), sorted(set(latent) - set(draws))
        if unknown or missing:
            summed = f" (summed out, never drawn: the enumerated sites {enumerated})" if enumerated else ""
            raise ValueError(f"draws must cover the model's latent sites {latent}{summed}: unknown {unknown}, "
                             f"missing {missing}")
        if not latent:
            raise ValueError(f"{program.name} has no latent to draw (its latents, if any, are summed out, or its "
                             "parameters are point estimates): there is no posterior to put in ArviZ; "
                             "ppgen.log_likelihood scores it")
        shapes = {name: _leading(draws[name]) for name in latent}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"every draw must have the same (chain, draw) shape, got {shapes}")
        chains, num_draws = shapes[latent[0]]
        nesting = program.nesting(*args)
        flat = {name: draws[name].reshape((chains * num_draws,) + sites[name]["value"].shape) for name in latent}
        # Predictive reads every axis after the first as a batch axis: pad to the plate nesting
        vectorized_draws = {name: value.reshape(value.shape[:1] + (1,) * (nesting - len(sites[name]["fn"].batch_shape))
                                                + value.shape[1:]) for name, value in flat.items()}
        count = chains * num_draws
        values, log_lik, predictive = _at_once_else_one_by_one(
            program, count, nesting, enumerated, seed,
            lambda: _at_once(fn, vectorized_draws, args, observed, derived, count, nesting),
            lambda: _one_at_a_time(fn, flat, args, observed, derived, count))

    def group(values: dict[str, torch.Tensor], event: bool, sample: bool = True) -> xr.Dataset:
        arrays, dims = {}, {}
        for name, value in values.items():
            names, keep = _axis_names(sites[name], event)
            lead = (chains, num_draws) if sample else ()
            shape = tuple(sites[name]["value"].shape) if event else tuple(sites[name]["fn"].batch_shape)
            if len(keep) != len(shape):  # pyro.deterministic's default event_dim inside a plate: value-shaped
                plates = {f.dim: f.name for f in sites[name]["cond_indep_stack"] if f.vectorized}
                names = [plates.get(i - len(shape), f"{name}_dim_{i}") for i in range(len(shape))]
                keep = [True] * len(shape)
            value = value.detach().cpu().reshape(lead + shape)
            arrays[name] = value[(slice(None),) * len(lead) + tuple(slice(None) if k else 0 for k in keep)].numpy()
            dims[name] = names
        return arviz_base.dict_to_dataset(arrays, dims=dims, sample_dims=list(SAMPLE_DIMS) if sample else [],
                                          inference_library=pyro)

    if enumerated:
        log_likelihood = _enumerated_log_likelihood(program, fn, vectorized_draws, args, sites, observed, enumerated,
                                                    (chains, num_draws))
    else:
        log_likelihood = group(log_lik, event=False)
    observed_data = {name: sites[name]["value"] for name in observed}
    for name in observed:  # masked-out values are no data: as PyMC's x_observed, and NaN among the data
        mask = _observed_mask(sites[name])
        # (an enumerated story's log-likelihood may hold other axes: there the masked values stay, scored 0)
        if mask is not None and tuple(log_likelihood[name].shape[len(SAMPLE_DIMS):]) == tuple(mask.shape):
            log_likelihood = _only_observed(log_likelihood, name, mask)
            value = observed_data[name].double()
            observed_data[name] = value.masked_fill(~mask.reshape(mask.shape + (1,) * (value.dim() - mask.dim()))
                                                    .expand_as(value), math.nan)
    for name in derived:  # a function of the draws: reported beside them, as PyMC's Deterministic
        value, shape = values[name].detach(), tuple(sites[name]["value"].shape)
        flat[name] = value.reshape(shape).expand((count,) + shape) if value.numel() == math.prod(
            shape) else value.reshape((count,) + shape)
    groups = {
        "posterior": group(flat, event=True),
        "log_likelihood": log_likelihood,
        "posterior_predictive": group(dict(predictive), event=True),
        "observed_data": group(observed_data, event=True, sample=False),
    }
    if stats:
        groups["sample_stats"] = arviz_base.dict_to_dataset(stats, sample_dims=list(SAMPLE_DIMS),
                                                            inference_library=pyro)
    return xr.DataTree.from_dict(groups)


def _at_once(fn, draws: dict[str, torch.Tensor], args: tuple, observed: list[str], derived: list[str], count: int,
             nesting: int):
    """The story run on all ``count`` draws at once (Predictive's vectorisation): the deterministic sites' values,
    the observed sites' log-densities (count, ...) and posterior predictive draws."""
    vectorized = Predictive(fn, posterior_samples=draws, parallel=True).get_vectorized_trace(*args)
    predictive = Predictive(poutine.uncondition(fn), posterior_samples=draws, return_sites=observed,
                            parallel=True)(*args)
    log_lik = {}
    for name in observed:
        site = vectorized.nodes[name]
        log_p = _draws_and_plates(site, site["fn"].log_prob(site["value"]), nesting)
        log_lik[name] = log_p.expand((count,) + log_p.shape[1:]) if log_p.shape[0] == 1 else log_p
    return {name: vectorized.nodes[name]["value"] for name in derived}, log_lik, dict(predictive)


def _one_at_a_time(fn, flat: dict[str, torch.Tensor], args: tuple, observed: list[str], derived: list[str],
                   count: int):
    """What :func:`_at_once` gives, for a story that does not broadcast over draws: run once per draw."""
    values, log_lik, predictive = ({name: [] for name in names} for names in (derived, observed, observed))
    for i in range(count):
        draw = {name: value[i] for name, value in flat.items()}
        scored = poutine.trace(poutine.condition(fn, data=draw)).get_trace(*args)
        drawn = poutine.trace(poutine.condition(poutine.uncondition(fn), data=draw)).get_trace(*args)
        for name in derived:
            values[name].append(scored.nodes[name]["value"])
        for name in observed:
            log_lik[name].append(scored.nodes[name]["fn"].log_prob(scored.nodes[name]["value"]))
            predictive[name].append(drawn.nodes[name]["value"])
    return tuple({name: torch.stack(items) for name, items in group.items()} for group in (values, log_lik,
                                                                                             predictive))


def _enumerated_log_likelihood(program: Program, fn, draws: dict[str, torch.Tensor], args: tuple, sites: dict,
                               observed: list[str], enumerated: list[str], lead: tuple[int, int]) -> xr.Dataset:
    """The pointwise log-likelihood of a model with enumerated sites: per draw, log sum_c p(x_n, c | draw) for
    each n of the plates that the observed site shares with every enumerated site (a mixture's rows), the
    sum over every joint value of the enumerated sites contracted as TraceEnum_ELBO contracts it."""
    if len(observed) != 1:
        raise ModelCheckError(
            f"the enumerated sites {enumerated} are summed out of the observed sites {observed} together: their "
            "pointwise log-likelihood is one, not one per site; ppgen scores models with enumeration that observe "
            "one site")

    def plates(name: str) -> dict:
        return {f.name: f for f in sites[name]["cond_indep_stack"] if f.vectorized}

    keep = sorted((f for name, f in plates(observed[0]).items() if all(name in plates(e) for e in enumerated)),
                  key=lambda f: f.dim)
    if not keep:
        raise ModelCheckError(
            f"the enumerated sites {enumerated} share no plate with the observed site {observed[0]!r}: summed out, "
            "they couple all its values, which then have no pointwise log-likelihood (enumerate a site per row, "
            "inside the data plate)")
    nesting, count = program.nesting(*args), lead[0] * lead[1]
    with torch.no_grad(), poutine.block(), pyro.plate(PARTICLE_PLATE, count, dim=-(nesting + 1)):
        trace = poutine.trace(poutine.enum(poutine.condition(fn, data=draws),
                                           first_available_dim=-(nesting + 2))).get_trace(*args)
    chosen = [s for s in sample_sites(trace) if s["name"] in enumerated + observed]
    log_p = sum_out_enumerated(trace, chosen, (PARTICLE_PLATE, *(f.name for f in keep)))
    shape = [count] + [1] * nesting
    for f in keep:
        shape[f.dim] = f.size
    values = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape).expand(shape)
    return arviz_base.dict_to_dataset({observed[0]: values.reshape(lead + tuple(f.size for f in keep)).cpu().numpy()},
                                      dims={observed[0]: [f.name for f in keep]}, sample_dims=list(SAMPLE_DIMS),
                                      inference_library=pyro)


def _observed_mask(site: dict) -> torch.Tensor | None:
    """Which values of an observed site count (``.mask(m)`` on its distribution, or ``poutine.mask``), as a
    boolean tensor over the batch axes that :func:`_axis_names` keeps; None when all of them do."""
    fn, batch = site["fn"], tuple(site["fn"].batch_shape)
    mask = torch.ones(batch, dtype=torch.bool)
    for m in (site.get("mask"), getattr(fn, "_mask", None)):  # MaskedDistribution keeps its mask there
        if m is not None:
            mask = mask & torch.as_tensor(m, dtype=torch.bool).cpu()
    if mask.all():
        return None
    _, keep = _axis_names(site, event=False)
    return mask.expand(batch)[tuple(slice(None) if k else 0 for k in keep)]


def _only_observed(log_likelihood: xr.Dataset, name: str, mask: torch.Tensor) -> xr.Dataset:
    """``log_likelihood`` with ``name``'s values where ``mask`` is False left out, the rest along one axis
    ``<name>_observed``: a masked-out value has no likelihood (Pyro scores it 0), and counted as an
    observation it would widen LOO's standard error (the values' spread holds the zeros) and count as a point."""
    values = log_likelihood[name].values[..., mask.numpy()]
    return log_likelihood.drop_vars(name).assign(
        {name: xr.DataArray(values, dims=[*SAMPLE_DIMS, f"{name}_observed"])})


def _axis_names(site: dict, event: bool) -> tuple[list[str], list[bool]]:
    """Dimension names of a site's value axes (batch, then event if ``event``), and which to keep.

    A batch axis is named after the plate at its position; a singleton axis without a plate
    (Pyro's broadcasting) is dropped; other axes are called ``<site>_dim_<k>``.
    """
    fn, name = site["fn"], site["name"]
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    batch = tuple(fn.batch_shape)
    names, keep = [], []
    for i, size in enumerate(batch):
        dim = i - len(batch)
        keep.append(dim in plates or size != 1)
        if dim in plates:
            names.append(plates[dim])
        elif size != 1:
            names.append(f"{name}_dim_{len(names)}")
    for _ in fn.event_shape if event else ():
        keep.append(True)
        names.append(f"{name}_dim_{len(names)}")
    return names, keep


def _guide_draws(program: Program, args: tuple, num_samples: int, seed: int, one_by_one: bool = True):
    """``num_samples`` draws of the guided latents from the guide (vectorized), with log p(x, z) (the
    enumerated sites summed out) and log q(z); where the story does not broadcast over draws, one draw at a
    time, or with ``one_by_one`` False the error raised."""
    with torch.no_grad(), poutine.block(), torch.random.fork_rng():
        model_sites = sample_sites(poutine.trace(program.model).get_trace(*args))
        enumerated = [s["name"] for s in model_sites if not s["is_observed"] and s["infer"].get("enumerate")]
        torch.manual_seed(seed)
        nesting = program.nesting(*args)
        return _at_once_else_one_by_one(program, num_samples, nesting, enumerated, seed,
                                        lambda: _joint_draws(program, args, num_samples, nesting, enumerated),
                                        lambda: _joint_draws_one_at_a_time(program, args, num_samples),
                                        one_by_one)


def _at_once_else_one_by_one(program: Program, count: int, nesting: int, enumerated: list[str], seed: int,
                             at_once, one_by_one, fallback: bool = True):
    """``at_once()``, the story run on all ``count`` draws at once; where it does not broadcast over them,
    ``one_by_one()``, reseeded, except that summing out enumerated sites needs them at once (refused then)."""
    try:
        return at_once()
    except (RuntimeError, ValueError, IndexError) as err:
        if isinstance(err, ModelCheckError) or not fallback:
            raise
        if enumerated:
            raise _not_broadcasting(program, count, nesting, err) from None
        torch.manual_seed(seed)
        return one_by_one()


def _joint_draws_one_at_a_time(program: Program, args: tuple, num_samples: int):
    """What :func:`_guide_draws` gives, for a story that does not broadcast over draws: one draw at a time."""
    draws, log_p, log_q = {}, [], []
    for _ in range(num_samples):
        guide_trace, model_trace = program.trace(*args)
        log_p.append(_total_log_prob(model_trace))
        log_q.append(_total_log_prob(guide_trace))
        for site in sample_sites(model_trace):
            if not site["is_observed"]:
                draws.setdefault(site["name"], []).append(site["value"].cpu())
    return {name: torch.stack(values) for name, values in draws.items()}, torch.cat(log_p), torch.cat(log_q)


def _joint_draws(program: Program, args: tuple, num_samples: int, nesting: int, enumerated: list[str]):
    """``num_samples`` draws of the guided latents at once, with log p(x, z) and log q(z) of each draw."""
    if not enumerated:
        guide_trace, model_trace = program.trace(*args, num_particles=num_samples)
        log_p = _per_draw_log_prob(model_trace, num_samples, nesting)
    else:
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-(nesting + 1)):
            guide_trace = poutine.trace(program.guide).get_trace(*args)
            model_trace = poutine.trace(poutine.enum(poutine.replay(program.model, trace=guide_trace),
                                                     first_available_dim=-(nesting + 2))).get_trace(*args)
        log_p = sum_out_enumerated(model_trace, sample_sites(model_trace), (PARTICLE_PLATE,))
        log_p = log_p.reshape(-1).expand(num_samples).double().cpu()
    draws = {s["name"]: s["value"].cpu() for s in sample_sites(model_trace)
             if not s["is_observed"] and s["name"] not in enumerated}
    return draws, log_p, _per_draw_log_prob(guide_trace, num_samples, nesting)


def _not_broadcasting(program: Program, count: int, nesting: int, err: Exception) -> ModelCheckError:
    """The refusal of a story that does not broadcast over ``count`` draws scored at once."""
    why = str(err).splitlines()[0].rstrip(".")
    return ModelCheckError(
        f"{program.name} does not broadcast over a dimension of draws (the {count} draws are scored at once, in "
        f"a plate at dim {-(nesting + 1)}, to sum out its enumerated sites): {why}. Keep the leading batch "
        "dimensions of the latents, e.g. (x * w).sum(-1) rather than x @ w, and z.shape[:-1] rather than len(x)")


def _draws_and_plates(site: dict, log_p: torch.Tensor, nesting: int) -> torch.Tensor:
    """A site's log-density scored on all draws at once, checked to have no dims but the draws' and the plates':
    a story that broadcasts a latent's draws against the wrong dim scores each draw under the others' (raised
    as a ValueError, on which the draws are scored one at a time)."""
    if log_p.dim() > nesting + 1:
        raise ValueError(f"site {site['name']!r} has a log-density of shape {tuple(log_p.shape)} on the draws: more "
                         f"dims than the draws' and the {nesting} plates'")
    return log_p


def _total_log_prob(trace) -> torch.Tensor:
    """The log-density of one draw's trace, summed over its sites, shape (1,) float64."""
    trace.compute_log_prob()
    return sum((site["log_prob"].sum().double().cpu() for site in sample_sites(trace)),
               torch.zeros((), dtype=torch.float64)).reshape(1)


def _per_draw_log_prob(trace, num_samples: int, nesting: int) -> torch.Tensor:
    trace.compute_log_prob()
    total = torch.zeros(num_samples, dtype=torch.float64)
    for site in sample_sites(trace):
        log_p = _draws_and_plates(site, site["log_prob"], nesting)
        log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
        total += log_p.expand((num_samples,) + log_p.shape[1:]).reshape(num_samples, -1).sum(-1).double().cpu()
    return total


def _divergences(mcmc: MCMC) -> np.ndarray:
    """Divergent transitions after warm-up, as a (chain, draw) boolean array."""
    diverging = np.zeros((mcmc.num_chains, mcmc.num_samples), dtype=bool)
    for chain, steps in enumerate(mcmc.diagnostics()["divergences"].values()):
        kept = [t - mcmc.warmup_steps for t in steps if t >= mcmc.warmup_steps]
        diverging[chain, kept] = True
    return diverging


def _leading(value: torch.Tensor) -> tuple[int, int]:
    if value.dim() < 2:
        raise ValueError(f"draws must be shaped (chain, draw, ...), got shape {tuple(value.shape)}")
    return tuple(value.shape[:2])


def _as_args(data) -> tuple:
    """The model's arguments: ``x`` or ``(x, y)``, NumPy arrays made tensors (as :func:`~ppgen.fit` takes them)."""
    args = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    return tuple(torch.as_tensor(a) if hasattr(a, "__array__") and not isinstance(a, torch.Tensor) else a
                 for a in args)


def _no_guide(*args, **kwargs) -> None:
    """The guide of a model whose draws come from elsewhere (MCMC, a dict)."""


