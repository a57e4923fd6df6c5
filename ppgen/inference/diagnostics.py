r"""ELBO decomposition and health checks for latent-variable models.

For a guide q(z | x) the evidence lower bound of one example splits by site,

.. math::
    \mathrm{ELBO}(x) = \underbrace{\mathbb{E}_q[\log p(x \mid z)]}_{\text{reconstruction}}
    - \sum_{\text{latent sites } s} \mathrm{KL}\big(q(z_s \mid \cdot) \,\|\, p(z_s \mid \cdot)\big)
    \le \log p(x),

and where the densities factorise over coordinates the KL splits per latent dimension too.
:func:`elbo_terms` computes these per example; :func:`elbo_report` averages them and adds
the active units (Burda et al. 2016), a posterior-collapse warning, the gap to the exact or
importance-sampled log-likelihood, and the variance and signal-to-noise ratio of the gradient
estimators (Rainforth et al. 2018).

References: Y. Burda, R. Grosse and R. Salakhutdinov, "Importance Weighted Autoencoders",
ICLR 2016; T. Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better",
ICML 2018; M. D. Hoffman and M. J. Johnson, "ELBO surgery", NeurIPS 2016 AABI workshop.

Longer than 500 lines: the ELBO terms, the gradient statistics and the report that combines
them, with its text and figure, are one feature.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from pyro import poutine
from torch.distributions import Independent, kl_divergence

from ppgen.checks import positive_int
from ppgen.inference.likelihood import log_likelihood

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from ppgen.inference.objectives import ELBO
from ppgen.inference.program import Program, batch_rows, call_args, resolve_device, sample_sites, site_log_prob

__all__ = ["elbo_terms", "ELBOTerms", "elbo_report", "ELBOReport", "GradientStats", "gradient_stats",
           "format_report", "plot_elbo_report", "ACTIVITY_THRESHOLD"]

ACTIVITY_THRESHOLD = 0.01  # Burda et al. (2016): unit d is active when Cov_x(E_q[z_d | x]) > 0.01
KL_METHODS = ("auto", "monte_carlo")
MAX_SITES = 5  # latent sites that format_report and the reprs list one by one


@dataclasses.dataclass
class ELBOTerms:
    """The ELBO of every example, split by site (nats; tensors have one row per example).

    Attributes
    ----------
    elbo : Tensor (N,)
        ``reconstruction - sum(kl.values())``.
    reconstruction : Tensor (N,)
        E_q[log p(x | z)]: the observed sites' log-likelihood under the guide's samples.
    kl : dict site -> Tensor (N,)
        KL(q || p) of each latent site of the guide.
    kl_per_dim : dict site -> Tensor (N, d)
        The same split over the site's last dimension, for sites whose q and p factorise
        over it (``Independent`` distributions, or one-dimensional sites).
    kl_method : dict site -> str
        ``"analytic"`` (``torch.distributions.kl_divergence``) or ``"monte carlo"``
        (the mean of log q(z) - log p(z) over the samples).
    kl_stderr : dict site -> float
        Monte Carlo standard error of the mean of ``kl[site]`` over examples; 0 when analytic.
    posterior_mean : dict site -> Tensor (N, d)
        E_q[z | x] (the guide's mean where it has one, else the sample mean).
    num_samples : int
        Samples from q per example.
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: dict[str, torch.Tensor]
    kl_per_dim: dict[str, torch.Tensor]
    kl_method: dict[str, str]
    kl_stderr: dict[str, float]
    posterior_mean: dict[str, torch.Tensor]
    num_samples: int

    def __repr__(self) -> str:
        n = len(self.elbo)
        stderr = self.elbo.std().item() / math.sqrt(n) if n > 1 else math.nan
        kl = _short(", ".join(f"KL({s}) {v.mean().item():.3f}" for s, v in self.kl.items()))
        return (f"ELBOTerms({n} examples, {self.num_samples} samples each; nats per example: "
                f"ELBO {self.elbo.mean().item():.3f} ± {stderr:.3f} (s.e. over examples), "
                f"reconstruction {self.reconstruction.mean().item():.3f}, {kl})")

    def to_dict(self) -> dict:
        """Means over the examples as plain numbers (for ``json.dumps``); per-example tensors stay attributes."""
        return {"num_examples": len(self.elbo), "num_samples": self.num_samples,
                "elbo": self.elbo.mean().item(), "reconstruction": self.reconstruction.mean().item(),
                "kl": {s: v.mean().item() for s, v in self.kl.items()}, "kl_method": dict(self.kl_method),
                "kl_stderr": dict(self.kl_stderr)}


def _short(text: str, limit: int = 400) -> str:
    """``text`` cut to ``limit`` characters, marked where it was cut (keeps reprs short for many sites)."""
    return text if len(text) <= limit else text[: limit - 5] + " ..."


@torch.no_grad()
def elbo_terms(model, data, *, guide=None, num_samples: int = 100, kl: str = "auto", batch_size: int = 500,
               device: str | torch.device | None = None, seed: int = 0) -> ELBOTerms:
    """The ELBO of each example split into reconstruction and KL per latent site and dimension.

    Parameters
    ----------
    model : GenerativeModel or callable
        Every latent site of the guide must sit in the ``"data"`` plate.
    data : Tensor (N, D) or (x, y)
    guide : callable or autoguide name, optional
        Defaults to the model's own guide.
    num_samples : int
        Samples z ~ q(z | x) per example (vectorised).
    kl : {"auto", "monte_carlo"}
        ``"auto"`` uses the closed form where ``kl_divergence`` is registered for the pair
        of distributions and Monte Carlo otherwise; ``"monte_carlo"`` always samples.

    Examples
    --------
    >>> from ppgen.models import VAE
    >>> terms = elbo_terms(VAE(784, z_dim=2, hidden=8), torch.zeros(3, 784), num_samples=4)
    >>> terms.kl_method, tuple(terms.kl_per_dim["z"].shape)
    ({'z': 'analytic'}, (3, 2))
    """
    positive_int(num_samples, "num_samples")
    if kl not in KL_METHODS:
        raise ValueError(f"kl must be one of {KL_METHODS}, got {kl!r}")
    program = Program(model, guide)
    x, y = program.rows(data, "data")
    device = program.device if device is None else resolve_device(device)
    home = program.device
    program.to(device)
    parts = []
    try:
        with program.param_scope(), torch.random.fork_rng():
            torch.manual_seed(seed)
            rows = torch.arange(x.shape[0]).split(batch_size)
            program.validate(*batch_rows(x, y, rows[0], device), thorough=False)
            for idx in rows:
                parts.append(_batch_terms(program, *batch_rows(x, y, idx, device), num_samples, kl))
    finally:
        program.to(home)  # the caller's model stays where it was
    first = parts[0]
    cat = {name: torch.cat([p[name] for p in parts]).cpu() for name in ("elbo", "reconstruction")}
    sites = first["kl"].keys()
    kl_mc_var = {s: sum(p["kl_var"][s] for p in parts) for s in sites}  # sum over rows of Var / K
    return ELBOTerms(
        elbo=cat["elbo"], reconstruction=cat["reconstruction"],
        kl={s: torch.cat([p["kl"][s] for p in parts]).cpu() for s in sites},
        kl_per_dim={s: torch.cat([p["kl_per_dim"][s] for p in parts]).cpu()
                    for s in first["kl_per_dim"]},
        kl_method=first["kl_method"],
        kl_stderr={s: math.sqrt(kl_mc_var[s]) / x.shape[0] for s in sites},
        posterior_mean={s: torch.cat([p["posterior_mean"][s] for p in parts]).cpu() for s in sites},
        num_samples=num_samples,
    )


def _batch_terms(program: Program, x, y, num_samples: int, kl: str) -> dict:
    guide_trace, model_trace = program.trace(x, y, num_particles=num_samples)
    n = x.shape[0]

    def _rows(t, site, trailing):  # (K, N, other batch dims..., trailing...)
        return program.per_example(t, site, trailing)
    enumerated = [site["name"] for site in sample_sites(model_trace) if not site["is_observed"]
                  and site["name"] not in guide_trace.nodes and site["infer"].get("enumerate")]
    if enumerated:
        raise ValueError(f"sites {enumerated} are enumerated in the model, not sampled by the guide: its "
                         "ELBO under TraceEnum_ELBO is the exact log-likelihood (use log_likelihood)")
    reconstruction = x.new_zeros(num_samples, n)
    for site in sample_sites(model_trace):
        if site["is_observed"]:
            reconstruction = reconstruction + _rows(site_log_prob(site), site, 0).flatten(2).sum(-1)
    out = {"kl": {}, "kl_var": {}, "kl_per_dim": {}, "kl_method": {}, "posterior_mean": {}}
    # Auxiliary guide sites (AutoNormal draws "z_unconstrained", then z as a Delta carrying only the
    # Jacobian) are part of log q(z): each joins the site it is named after, or stands as its own term.
    auxiliary = {site["name"]: _rows(site_log_prob(site), site, 0).flatten(2).sum(-1)
                 for site in sample_sites(guide_trace) if site["infer"].get("is_auxiliary")}  # (K, N)
    for q_site in sample_sites(guide_trace):
        if q_site["is_observed"] or q_site["infer"].get("is_auxiliary"):
            continue
        name = q_site["name"]
        p_site = model_trace.nodes[name]
        q_fn, p_fn, value = q_site["fn"], p_site["fn"], q_site["value"]
        event_dims = len(q_fn.event_shape)
        log_q_aux = auxiliary.pop(f"{name}_unconstrained", None)
        closed_form = _analytic_kl(q_fn, p_fn) if kl == "auto" and log_q_aux is None else None
        if closed_form is not None:
            site_kl = _rows(closed_form, q_site, 0).flatten(2).sum(-1).mean(0)  # (N,)
            out["kl_var"][name] = 0.0
            per_dim = _factor_kl(q_fn, p_fn, None)
        else:
            samples = _rows(q_fn.log_prob(value) - p_fn.log_prob(value), q_site, 0)
            samples = samples.flatten(2).sum(-1)  # (K, N)
            if log_q_aux is not None:
                samples = samples + log_q_aux
            site_kl = samples.mean(0)
            out["kl_var"][name] = (samples.var(0).sum().item() / num_samples) if num_samples > 1 else math.inf
            # no per-dimension split through an autoguide's transform
            per_dim = _factor_kl(q_fn, p_fn, value) if log_q_aux is None else None
        out["kl"][name] = site_kl
        out["kl_method"][name] = "analytic" if closed_form is not None else "monte carlo"
        if per_dim is not None:  # (*batch, d) -> (N, d)
            out["kl_per_dim"][name] = _rows(per_dim, q_site, 1).flatten(2, -2).sum(2).mean(0)
        elif event_dims == 0:
            out["kl_per_dim"][name] = site_kl.unsqueeze(-1)
        try:
            mean = q_fn.mean
        except NotImplementedError:
            mean = value
        mean = mean.expand(value.shape).reshape(*value.shape[: value.dim() - event_dims], -1)
        out["posterior_mean"][name] = _rows(mean, q_site, 1).flatten(2, -2).mean(2).mean(0)
    for name, log_q in auxiliary.items():  # auxiliary sites no model site is named after: E_q[log q], in the KL
        out["kl"][name], out["kl_method"][name] = log_q.mean(0), "monte carlo (auxiliary: log q only)"
        out["kl_var"][name] = (log_q.var(0).sum().item() / num_samples) if num_samples > 1 else math.inf
    out["reconstruction"] = reconstruction.mean(0)
    out["elbo"] = out["reconstruction"] - sum(out["kl"].values(), torch.zeros_like(out["reconstruction"]))
    return out


def _analytic_kl(q_fn, p_fn) -> torch.Tensor | None:
    try:
        return kl_divergence(q_fn, p_fn)
    except NotImplementedError:
        return None


def _factor_kl(q_fn, p_fn, value) -> torch.Tensor | None:
    """KL per coordinate of the last dimension, shape (*batch, d), where both sides factorise
    over it (analytic when ``value`` is None, else log q - log p at ``value``)."""
    if not (isinstance(q_fn, Independent) and isinstance(p_fn, Independent)
            and q_fn.reinterpreted_batch_ndims == 1 == p_fn.reinterpreted_batch_ndims):
        return None
    q_base, p_base = q_fn.base_dist, p_fn.base_dist
    if value is None:
        return _analytic_kl(q_base, p_base)
    return q_base.log_prob(value) - p_base.log_prob(value)


@dataclasses.dataclass
class GradientStats:
    """Spread of one gradient estimator over repeated draws on a fixed minibatch.

    ``variance`` is the mean over parameters of Var[g_i] of the per-example gradient; ``snr``
    the mean over parameters of |E g_i| / sd(g_i) (Rainforth et al. 2018). ``model`` and
    ``guide`` give (variance, snr) for the generative and the inference network's parameters.
    """

    estimator: str
    num_particles: int
    repeats: int
    variance: float
    snr: float
    model: tuple[float, float]
    guide: tuple[float, float]

    def to_dict(self) -> dict:
        """The figures as plain numbers (for ``json.dumps``)."""
        return {**dataclasses.asdict(self), "model": list(self.model), "guide": list(self.guide)}


def gradient_stats(model, data, *, guide=None, estimators: Sequence[str] = ("trace", "meanfield", "iwae"),
                   num_particles: int = 5, repeats: int = 20, batch_size: int = 100,
                   seed: int = 0) -> dict[str, GradientStats]:
    """Repeat each estimator's gradient ``repeats`` times on the first ``batch_size`` rows.

    Every estimator uses ``num_particles`` samples per example (``iwae`` weights them inside
    the log, ``trace`` and ``meanfield`` average ELBOs); each repeat uses seed ``seed + r``.
    """
    for value, name in ((num_particles, "num_particles"), (repeats, "repeats"), (batch_size, "batch_size")):
        positive_int(value, name)
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to measure a variance, got {repeats}")
    unknown = [e for e in estimators if e not in ELBO.ESTIMATORS]
    if unknown:
        raise ValueError(f"estimators must be among {ELBO.ESTIMATORS}, got {unknown}")
    program = Program(model, guide)
    x, y = program.rows(data, "data")
    xb, yb = batch_rows(x, y, torch.arange(min(batch_size, x.shape[0])), program.device)
    stats = {}
    with program.param_scope(), torch.random.fork_rng():
        torch.manual_seed(seed)
        program.validate(xb, yb, estimator="trace", thorough=False)
        guide_ids = _guide_param_ids(program, xb, yb)
        for estimator in estimators:
            objective = ELBO(program, estimator, num_particles)
            params = [p for group in objective.collect_parameters(xb, yb).values() for p in group]
            draws = []
            for r in range(repeats):
                torch.manual_seed(seed + r)
                loss = objective(xb, yb, scale=1.0) / xb.shape[0]
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                draws.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
            in_guide = torch.cat([torch.full((p.numel(),), id(p) in guide_ids) for p in params])
            flat = torch.stack([torch.cat([g.flatten() for g in draw]) for draw in draws]).double()  # (R, P)
            stats[estimator] = GradientStats(
                estimator, num_particles, repeats, *_spread(flat),
                model=_spread(flat[:, ~in_guide]), guide=_spread(flat[:, in_guide]))
    return stats


def _spread(flat: torch.Tensor) -> tuple[float, float]:
    """(mean variance, mean SNR) over the columns of (R, P) gradient draws that vary."""
    if flat.shape[1] == 0:
        return (math.nan, math.nan)
    var = flat.var(0)
    varying = var > 0
    snr = flat.mean(0)[varying].abs() / var[varying].sqrt()
    return var.mean().item(), (snr.mean().item() if varying.any() else math.nan)


def _guide_param_ids(program, x, y) -> set[int]:
    with poutine.block(), poutine.trace(param_only=True) as capture:
        program.guide(*call_args(x, y))
    ids = set()
    for site in capture.trace.nodes.values():
        value = site["value"]
        ids.add(id(value.unconstrained() if hasattr(value, "unconstrained") else value))
    return ids


@dataclasses.dataclass
class ELBOReport:
    """Averages over the examples of :func:`elbo_terms`, and the health checks (nats per example).

    Attributes
    ----------
    terms : ELBOTerms
        The per-example values these averages come from.
    elbo, reconstruction : float
    kl : dict site -> float
    kl_per_dim : dict site -> Tensor (d,)
    kl_method : dict site -> str
    activity : dict site -> Tensor (d,)
        Cov_x(E_q[z_d | x]) over the examples, per latent dimension.
    active_units : dict site -> int
        Dimensions with activity above ``threshold`` (0.01, Burda et al. 2016).
    latent_dims : dict site -> int
    log_likelihood : float
        Exact log p(x) (``exact``) or the IWAE estimate with ``iwae_samples`` samples.
    log_likelihood_stderr : float
    exact : bool
    iwae_samples : int
    log_likelihood_label : str
        What ``log_likelihood`` is, as :attr:`ppgen.LikelihoodResult.label` says.
    gap : float
        ``log_likelihood - elbo`` >= 0: the KL from the guide to the exact posterior
        (exact), or a lower bound on it (IWAE).
    gradients : dict estimator -> GradientStats
    warning : str or None
        Set when the posterior collapsed (no active units, or KL ~ 0).
    """

    terms: ELBOTerms
    elbo: float
    reconstruction: float
    kl: dict[str, float]
    kl_per_dim: dict[str, torch.Tensor]
    kl_method: dict[str, str]
    activity: dict[str, torch.Tensor]
    active_units: dict[str, int]
    latent_dims: dict[str, int]
    log_likelihood: float
    log_likelihood_stderr: float
    exact: bool
    iwae_samples: int
    gap: float
    gradients: dict[str, GradientStats]
    warning: str | None
    threshold: float = ACTIVITY_THRESHOLD
    log_likelihood_label: str = ""

    @property
    def kl_total(self) -> float:
        return sum(self.kl.values())

    def __str__(self) -> str:
        return format_report(self)

    def __repr__(self) -> str:
        return f"ELBOReport({len(self.terms.elbo)} examples; nats per example)\n{format_report(self)}"

    def to_dict(self) -> dict:
        """The report's figures as plain numbers and lists (for ``json.dumps``), in nats per example;
        per-example tensors stay on ``terms``."""
        return {
            "num_examples": len(self.terms.elbo), "num_samples": self.terms.num_samples,
            "elbo": self.elbo, "reconstruction": self.reconstruction, "kl": dict(self.kl), "kl_total": self.kl_total,
            "kl_method": dict(self.kl_method), "log_likelihood": self.log_likelihood,
            "log_likelihood_stderr": self.log_likelihood_stderr, "exact": self.exact,
            "iwae_samples": self.iwae_samples, "log_likelihood_label": self.log_likelihood_label,
            "gap": self.gap, "active_units": dict(self.active_units),
            "latent_dims": dict(self.latent_dims), "threshold": self.threshold,
            "kl_per_dim": {s: v.tolist() for s, v in self.kl_per_dim.items()},
            "activity": {s: v.tolist() for s, v in self.activity.items()},
            "gradients": {name: g.to_dict() for name, g in self.gradients.items()}, "warning": self.warning,
        }


def elbo_report(model, data, *, guide=None, num_samples: int = 100, iwae_samples: int = 1000,
                estimators: Sequence[str] = ("trace", "meanfield", "iwae"), gradient_particles: int = 5,
                gradient_repeats: int = 20, gradient_batch_size: int = 100,
                threshold: float = ACTIVITY_THRESHOLD, batch_size: int = 500,
                device: str | torch.device | None = None, seed: int = 0) -> ELBOReport:
    """Where the ELBO goes, how many latent units are used, and how good the bound and its gradient are.

    Parameters
    ----------
    model, data, guide
        As in :func:`elbo_terms`.
    num_samples : int
        Samples from q per example for the ELBO terms.
    iwae_samples : int
        K of the importance-sampled log-likelihood (ignored when the model's is exact).
    estimators : sequence of str
        Gradient estimators to compare (names as in :func:`ppgen.fit`); empty to skip.
    gradient_particles, gradient_repeats, gradient_batch_size
        See :func:`gradient_stats`.
    threshold : float
        Activity above which a latent unit counts as active.
    """
    terms = elbo_terms(model, data, guide=guide, num_samples=num_samples, batch_size=batch_size,
                       device=device, seed=seed)
    ll = log_likelihood(model, data, guide=guide, num_samples=iwae_samples, batch_size=batch_size,
                        device=device, seed=seed + 1)
    activity = {s: (m.var(0) if m.shape[0] > 1 else torch.zeros(m.shape[1])) for s, m in terms.posterior_mean.items()}
    active = {s: int((a > threshold).sum()) for s, a in activity.items()}
    dims = {s: a.numel() for s, a in activity.items()}
    kl = {s: v.mean().item() for s, v in terms.kl.items()}
    elbo = terms.elbo.mean().item()
    gradients = (gradient_stats(model, data, guide=guide, estimators=estimators, num_particles=gradient_particles,
                                repeats=gradient_repeats, batch_size=gradient_batch_size, seed=seed)
                 if estimators else {})
    return ELBOReport(
        terms=terms, elbo=elbo, reconstruction=terms.reconstruction.mean().item(), kl=kl,
        kl_per_dim={s: v.mean(0) for s, v in terms.kl_per_dim.items()}, kl_method=terms.kl_method,
        activity=activity, active_units=active, latent_dims=dims,
        log_likelihood=ll.mean, log_likelihood_stderr=ll.stderr, exact=ll.exact, iwae_samples=ll.num_samples,
        gap=ll.mean - elbo, gradients=gradients, warning=_collapse_warning(kl, active, dims), threshold=threshold,
        log_likelihood_label=ll.label,
    )


def _collapse_warning(kl: dict[str, float], active: dict[str, int], dims: dict[str, int]) -> str | None:
    if not dims:
        return None
    total_kl, total_active, total_dims = sum(kl.values()), sum(active.values()), sum(dims.values())
    if total_active == 0 or total_kl < 0.01:
        return (f"posterior collapse: {total_active} of {total_dims} latent units are active and "
                f"KL(q || p) is {total_kl:.3g} nats per example; the decoder ignores z "
                "(try KL annealing, a weaker decoder, or free bits)")
    return None


def format_report(report: ELBOReport) -> str:
    """The report as plain text, one quantity per line (nats per example)."""
    how = report.log_likelihood_label or ("exact" if report.exact else f"IWAE K={report.iwae_samples}")
    how += "" if report.exact else f" ± {report.log_likelihood_stderr:.3f}"
    lines = [
        f"ELBO                   {report.elbo:10.3f}   ({report.terms.num_samples} samples per example, "
        f"{len(report.terms.elbo)} examples)",
        f"  reconstruction       {report.reconstruction:10.3f}   E_q[log p(x | z)]",
    ]
    shown = sorted(report.kl, key=report.kl.get, reverse=True)[:MAX_SITES]  # the largest KLs, for many sites
    for site in shown:
        lines.append(f"  {f'KL({site})':21s}{report.kl[site]:10.3f}   {report.kl_method[site]}")
    if len(report.kl) > len(shown):
        lines.append(f"  ... {len(report.kl) - len(shown)} more latent sites, "
                     f"{report.kl_total - sum(report.kl[s] for s in shown):.3f} nats of KL in all")
    lines += [f"log-likelihood         {report.log_likelihood:10.3f}   ({how})",
              f"gap (log p - ELBO)     {report.gap:10.3f}"]
    for site in [s for s in shown if s in report.active_units]:
        active = report.active_units[site]
        lines.append(f"{f'active units ({site})':23s}{active} of {report.latent_dims[site]} "
                     f"(Cov_x E_q[z_d | x] > {report.threshold:g})")
        if site in report.kl_per_dim:
            top = torch.sort(report.kl_per_dim[site], descending=True)
            shown = ", ".join(f"{v:.2f}" for v in top.values[:8].tolist())
            more = ", ..." if len(top.values) > 8 else ""
            lines.append(f"  KL per dim, sorted   {shown}{more}")
    if report.gradients:
        lines.append("gradient estimators    variance      SNR   (model SNR, guide SNR)")
        for name, g in report.gradients.items():
            lines.append(f"  {name:9s} K={g.num_particles:<4d}   {g.variance:9.3g} {g.snr:8.3f}   "
                         f"({g.model[1]:.3f}, {g.guide[1]:.3f})")
    if report.warning:
        lines.append(f"WARNING: {report.warning}")
    return "\n".join(lines)


def plot_elbo_report(report: ELBOReport, path: str | os.PathLike | None = None) -> "Figure":
    """Three panels: the ELBO split (reconstruction, KL, gap), KL and activity per latent
    dimension, and the gradient SNR per estimator. Returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax_split, ax_dims, ax_grad = fig.subplots(1, 3)
    names = ["-reconstruction", *[f"KL({s})" for s in report.kl], "gap"]
    values = [-report.reconstruction, *report.kl.values(), report.gap]
    ax_split.bar(names, values, color=["C0", *["C1"] * len(report.kl), "C2"])
    ax_split.set_ylabel("nats per example")
    ax_split.set_title(f"-ELBO = {-report.elbo:.2f}; -log p(x) {'=' if report.exact else '~'} "
                       f"{-report.log_likelihood:.2f}", fontsize=9)
    ax_split.tick_params(axis="x", labelsize=8)
    for i, (site, kl) in enumerate(report.kl_per_dim.items()):
        order = torch.argsort(kl, descending=True)
        ax_dims.bar(np.arange(len(kl)) + 0.4 * i, kl[order].numpy(), width=0.4, color=f"C{i}", label=f"KL ({site})")
        twin = ax_dims.twinx()
        twin.plot(np.arange(len(kl)) + 0.4 * i, report.activity[site][order].numpy(), "k.", label="activity")
        twin.axhline(report.threshold, color="k", linestyle=":", linewidth=1)
        twin.set_yscale("log")
        twin.set_ylabel("Cov_x E_q[z_d | x]")
    ax_dims.set_xlabel("latent dimension (sorted by KL)")
    ax_dims.set_ylabel("KL (nats)")
    active = ", ".join(f"{s}: {a}/{report.latent_dims[s]}" for s, a in report.active_units.items())
    ax_dims.set_title(f"active units {active}", fontsize=9)
    if report.gradients:
        labels = list(report.gradients)
        pos = np.arange(len(labels))
        ax_grad.bar(pos - 0.2, [g.model[1] for g in report.gradients.values()], width=0.4, label="model")
        ax_grad.bar(pos + 0.2, [g.guide[1] for g in report.gradients.values()], width=0.4, label="guide")
        ax_grad.set_xticks(pos, labels)
        ax_grad.set_ylabel("gradient SNR (mean |E g| / sd g)")
        ax_grad.legend(fontsize=8)
    else:
        ax_grad.set_axis_off()
    if report.warning:
        fig.suptitle("posterior collapse", color="C3", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
