"""``restore``: samples of x from p(x | y) for every model that can give them, and their summaries."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import os
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.checks import seed as check_seed
from ppgen.inverse.operators import Inpaint, Operator
from ppgen.inverse.vae import vae_inpaint

__all__ = ["RestoreResult", "Restorer", "restore", "sample_diversity", "restore_summary", "CAPABLE"]


@runtime_checkable
class Restorer(Protocol):
    """What :func:`restore` asks of a restorer that is not a generative model (a regression
    baseline, an exact posterior by enumeration); :meth:`ppgen.GenerativeModel.restore` declares
    the same hook, with a default, for every model."""

    def restore(self, y: torch.Tensor, operator: Operator, num_samples: int,
                **options) -> tuple[torch.Tensor, str] | None:
        """``(samples (num_samples, N, D), method name)`` for the measurements ``y`` (N,
        operator.out_dim), or None when it has no method for ``operator``."""


@dataclasses.dataclass
class RestoreResult:
    """Samples of x from p(x | y) and their per-pixel summaries.

    Attributes
    ----------
    samples : Tensor (S, N, D)
        S restorations of each of the N measurements.
    mean, variance : Tensor (N, D)
        Per-pixel posterior mean and variance estimated from the samples (the unbiased sample
        variance; zero when S = 1).
    method : str
        How the samples were drawn: ``"exact conditionals"``, ``"exact Gaussian posterior"``,
        ``"sequential importance resampling"`` (an autoregressive model whose ordering does not
        put the observed pixels first), ``"sequential Monte Carlo (tempered)"``, ``"importance
        resampling"``, or the name a model's own ``restore`` returns with its samples (e.g.
        ``"DDNM"``).
    y : Tensor (N, out_dim)
    operator : Operator
    ess : Tensor (N,) or None
        Effective sample size of the importance weights per row, for the importance methods.
    info : dict
        Other diagnostics of the method (SMC: ``stages``, ``acceptance``, ``log_evidence``).
    """

    samples: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    method: str
    y: torch.Tensor
    operator: Operator
    ess: torch.Tensor | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        s, n, d = self.samples.shape
        ess = "" if self.ess is None else f", ess median={float(self.ess.median()):.1f}"
        return f"RestoreResult({s} samples of {n} rows x {d}, method={self.method!r}, operator={self.operator!r}{ess})"


CAPABLE = ("for every task: PPCA, FactorAnalysis and models with their own restore(y, operator, num_samples) "
           "(the diffusion models: GaussianDiffusion, and BinaryDiffusion for inpaint; PaletteColouriser and "
           "ColourRegression for colourise); "
           "for 'inpaint' only: the autoregressive models (FVSBN, NADE, MADE, PixelCNN), IndependentBernoulli, "
           "BernoulliMixture and VAE")


def restore(model, y: torch.Tensor, operator: Operator, num_samples: int = 16, *, seed: int = 0,
            **kwargs) -> RestoreResult:
    r"""Draw ``num_samples`` restorations x ~ p(x | y) of each measurement row y = A x + noise.

    Parameters
    ----------
    model
        A trained model. Dispatch, in this order:

        - ``model.restore(y, operator, num_samples, **kwargs)``, the model's own method (a
          :class:`ppgen.GenerativeModel`'s hook, or any :class:`Restorer`): it returns
          ``(samples (S, N, D), method name)``, or None to fall through to the routes below;
        - :class:`ppgen.PPCA` or :class:`ppgen.FactorAnalysis`, any operator: the exact Gaussian
          posterior (``"exact Gaussian posterior"``);
        - :class:`ppgen.IndependentBernoulli` or :class:`ppgen.BernoulliMixture` with
          :class:`Inpaint`: exact, through the component posterior p(c | y_obs);
        - autoregressive model with :class:`Inpaint`: ``model.inpaint`` -- the exact conditionals
          p(x_missing | x_obs) when every observed pixel precedes the missing ones in the
          model's ordering, else sequential importance resampling (``num_particles``, default 1000);
        - :class:`ppgen.VAE` with :class:`Inpaint`: p(z | y_obs) by tempered sequential Monte
          Carlo (keywords ``num_particles=256``, ``num_moves=20``), or by self-normalised
          importance resampling with ``sampler="importance"`` (``num_particles=1000``,
          ``proposal="encoder"`` or ``"prior"``, ``defensive=0.1``); see :func:`vae_inpaint`.
    y : Tensor (N, operator.out_dim)
        The measurements.
    operator : Operator
    num_samples : int
        Restorations per row, S.
    seed : int
        Torch's global random state is seeded with it for the call (and restored afterwards),
        so the same seed gives the same samples. The call runs on the model's device (``y`` is
        moved there), and so do the results.
    **kwargs
        Options of the method (above); an option it does not take is a TypeError that names the
        options it takes, raised before anything runs.

    Returns
    -------
    RestoreResult

    Raises
    ------
    ValueError
        When the model cannot restore for the operator's task, naming the models that can; when
        the operator measures rows of another width than the model's; when the S x N x D samples
        (in float64, the widest any method keeps) would fill more than half of the memory free on
        the model's device, naming the largest ``num_samples`` that fits.
    """
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a ppgen.inverse.Operator (Inpaint, Greyscale, Downsample, "
                        f"GaussianNoise), got {type(operator).__name__}")
    from ppgen.models.base import GenerativeModel

    positive_int(num_samples, "num_samples")
    check_seed(seed)
    y = operator.check_y(y).to(_device_of(model, y.device))  # run where the model is
    if isinstance(operator, Inpaint):
        operator.mask_for(y)
    width = operator.in_dim or y.shape[1]
    if isinstance(model, GenerativeModel) and width != model.x_dim:
        raise ValueError(f"{operator!r} measures rows of width {width}, but {type(model).__name__}'s rows have "
                         f"x_dim={model.x_dim} values")
    _check_memory(num_samples, y.shape[0], width, y.device)
    if isinstance(model, Restorer):
        _check_options(kwargs, model.restore, f"{type(model).__name__}.restore")
    ess, info = None, {}
    with _seeded(seed, y.device):
        own = model.restore(y, operator, num_samples, **kwargs) if isinstance(model, Restorer) else None
        if own is not None:
            samples, method = _own_answer(model, own, (num_samples, y.shape[0], operator.in_dim or y.shape[1]))
        else:
            from ppgen.models.autoregressive import AutoregressiveModel
            from ppgen.models.independent import IndependentBernoulli
            from ppgen.models.latent.linear_gaussian import PPCA, FactorAnalysis
            from ppgen.models.latent.mixture import BernoulliMixture
            from ppgen.models.latent.vae import VAE

            if isinstance(model, AutoregressiveModel) and isinstance(operator, Inpaint):
                operator.require_noiseless(type(model).__name__)
                result = model.inpaint(model.check_data(operator.pseudo_inverse(y), "y"), operator.mask_for(y),
                                       num_samples, **_only(kwargs, "num_particles", who="inpainting"))
                samples, ess = result.samples, result.ess
                method = "exact conditionals" if result.method == "exact" else "sequential importance resampling"
            elif isinstance(model, (IndependentBernoulli, BernoulliMixture)) and isinstance(operator, Inpaint):
                samples = _mixture_inpaint(model, y, operator, num_samples, **_only(kwargs, who="exact inpainting"))
                method = "exact conditionals"
            elif isinstance(model, (PPCA, FactorAnalysis)):
                samples = _gaussian_restore(model, y, operator, num_samples,
                                            **_only(kwargs, who="the exact Gaussian posterior"))
                method = "exact Gaussian posterior"
            elif isinstance(model, VAE) and isinstance(operator, Inpaint):
                _check_options(kwargs, vae_inpaint, "vae_inpaint")
                samples, ess, info = vae_inpaint(model, y, operator, num_samples, **kwargs)
                method = ("importance resampling" if kwargs.get("sampler") == "importance"
                          else "sequential Monte Carlo (tempered)")
            else:
                raise ValueError(f"{type(model).__name__} cannot restore for task {operator.task!r}; "
                                 f"models that can: {CAPABLE}")
    samples = samples.detach()
    variance = samples.var(0) if num_samples > 1 else torch.zeros_like(samples[0])
    return RestoreResult(samples, samples.mean(0), variance, str(method), y, operator, ess, info)


def _own_answer(model, answer, shape: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """A model's own ``restore`` answer, ``(samples, method)``, checked against the expected shape."""
    samples, method = answer if isinstance(answer, tuple) and len(answer) == 2 else (answer, None)
    if not isinstance(samples, torch.Tensor) or samples.shape != shape or not isinstance(method, str):
        got = (f"({_shape_or_type(samples)}, {type(method).__name__})" if isinstance(answer, tuple)
               else _shape_or_type(answer))
        raise ValueError(f"{type(model).__name__}.restore must return samples of shape {shape} and the method's "
                         f"name, a pair (samples, str), or None; got {got}")
    return samples, method


def _shape_or_type(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _device_of(model, default: torch.device) -> torch.device:
    from ppgen.models.base import GenerativeModel

    if isinstance(model, GenerativeModel):
        return model.device
    if isinstance(model, nn.Module):
        return next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0, device=default)).device
    return default


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _only(kwargs: dict, *allowed: str, who: str) -> dict:
    """``kwargs``, or a TypeError naming the options ``who`` (a method) does not take and those it takes."""
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise TypeError(f"restore got unknown option(s) {', '.join(map(repr, extra))}: {who} takes "
                        f"{', '.join(allowed) or 'no options'}")
    return kwargs


def _check_options(kwargs: dict, method, who: str) -> None:
    """Refuse an option that ``method`` (a restoring function or method) does not take: its parameters
    after (model,) y, operator, num_samples. One that takes ``**options`` takes any."""
    params = list(inspect.signature(method).parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        _only(kwargs, *(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                        and p.name not in ("model", "y", "operator", "num_samples")), who=who)


def _check_memory(num_samples: int, rows: int, width: int, device: torch.device) -> None:
    """Refuse ``num_samples`` restorations of ``rows`` rows of ``width`` values whose float64 samples
    would fill more than half of the memory free on ``device`` (:func:`_free_memory`)."""
    free = _free_memory(device)
    need = 8 * num_samples * rows * width
    if free is not None and need > free / 2:
        most = int(free / 2 // (8 * rows * width))
        raise ValueError(f"num_samples={num_samples:,} restorations of {rows:,} rows of {width:,} values take "
                         f"{need / 2**30:,.3g} GiB in float64, more than half of the {free / 2**30:,.3g} GiB free on "
                         f"{device}: at most {most:,} fit")


def _free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory; the host's available memory (Linux's
    MemAvailable, which counts the caches it can reclaim), else its physical memory; None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return None


@torch.no_grad()
def _mixture_inpaint(model, y: torch.Tensor, operator: Inpaint, num_samples: int) -> torch.Tensor:
    r"""Exact inpainting for a fully factorised model (one component) or a Bernoulli mixture:
    p(c | y_obs) \propto pi_c prod_{d observed} p(y_d | c), then x_miss ~ p(x_miss | c) pixel by pixel."""
    operator.require_noiseless(type(model).__name__)
    from pyro import distributions as dist

    from ppgen.models.latent.mixture import BernoulliMixture

    mask = operator.mask_for(y)
    x_obs = model.check_data(torch.where(mask, y, torch.zeros_like(y)), "y")
    logits = model.logits[None] if model.logits.dim() == 1 else model.logits  # (k, D)
    weight_logits = model.weight_logits if isinstance(model, BernoulliMixture) else logits.new_zeros(1)  # k = 1
    log_pi = torch.log_softmax(weight_logits, -1)  # (k,)
    log_lik = x_obs[:, None, :] * logits - F.softplus(logits)  # (N, k, D): log Bernoulli(x_d | c)
    c = dist.Categorical(logits=log_pi + (log_lik * mask[:, None, :]).sum(-1)).sample((num_samples,))  # (S, N)
    x = torch.bernoulli(torch.sigmoid(logits[c]))  # (S, N, D)
    return torch.where(mask, x_obs, x)


@torch.no_grad()
def _gaussian_restore(model, y: torch.Tensor, operator: Operator, num_samples: int) -> torch.Tensor:
    r"""Exact posterior of a linear-Gaussian model x ~ N(mu, C = W W^T + Psi) given y = A x + sigma eps:

    .. math::
        x \mid y \sim \mathcal{N}\big(\mu + K (y - A\mu),\ C - K A C\big), \qquad
        K = C A^\top (A C A^\top + \sigma^2 I)^{-1}.

    A is the operator's matrix (for :class:`Inpaint` the rows of the observed pixels, mask by
    mask); samples use the eigendecomposition of the posterior covariance (singular where y
    fixes x exactly)."""
    w, mu = model.weight.double(), model.loc.double()
    cov = w @ w.T + torch.diag(model.noise_variance().double())  # (D, D)
    dim = cov.shape[0]
    y = y.double()
    out = y.new_empty(num_samples, y.shape[0], dim)
    if isinstance(operator, Inpaint):
        masks = operator.mask_for(y)
        groups = [(masks == m).all(1) for m in masks.unique(dim=0)]
        matrices = [torch.eye(dim, dtype=y.dtype, device=y.device)[m] for m in masks.unique(dim=0)]
        measured = [y[g][:, m] for g, m in zip(groups, masks.unique(dim=0))]
    else:
        groups = [torch.ones(y.shape[0], dtype=torch.bool, device=y.device)]
        matrices = [operator.apply(torch.eye(dim, dtype=y.dtype, device=y.device)).T]  # (out, D)
        measured = [y]
    for rows, a, y_rows in zip(groups, matrices, measured):
        s = a @ cov @ a.T + operator.sigma**2 * torch.eye(len(a), dtype=y.dtype, device=y.device)
        gain = torch.linalg.solve(s, a @ cov).T  # K = C A^T S^{-1}, (D, m)
        mean = mu + (y_rows - mu @ a.T) @ gain.T  # (n, D)
        post = cov - gain @ a @ cov
        values, vectors = torch.linalg.eigh((post + post.T) / 2)
        root = vectors * values.clamp_min(0).sqrt()  # (D, D): root @ root.T = post
        noise = torch.randn(num_samples, len(mean), dim, dtype=y.dtype, device=y.device)
        out[:, rows] = mean + noise @ root.T
    return out.to(model.loc.dtype)


def sample_diversity(samples: torch.Tensor) -> float:
    """Mean over rows and pixels of the standard deviation across samples (dim 0).

    The population standard deviation, so one sample, or identical ones, give exactly 0.

    Examples
    --------
    >>> sample_diversity(torch.tensor([[[0., 1.]], [[1., 1.]]]))
    0.25
    >>> sample_diversity(torch.ones(1, 3, 4))
    0.0
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() < 2:
        raise ValueError(f"samples must be a tensor (S, ...) of S samples, got "
                         f"{getattr(samples, 'shape', type(samples).__name__)}")
    return float(samples.std(0, correction=0).mean())


def restore_summary(result: RestoreResult, truth: torch.Tensor | None = None) -> dict:
    """Numbers that describe a restoration, as a JSON-ready dict.

    ``consistency``: the largest ``|A x - y|`` over samples (0 up to rounding for a noiseless
    operator whose restorations respect y; for a noisy one, compare it with sigma).
    ``diversity``: :func:`sample_diversity`. With ``truth`` (N, D): ``mse_mean``, the mean squared
    error of the posterior mean, and ``mse_sample``, that of a single sample on average
    (for exact posterior samples, ``mse_sample`` = ``mse_mean`` + mean posterior variance).
    """
    samples = result.samples
    s, n, d = samples.shape
    measured = result.operator.apply(samples.reshape(s * n, d)).reshape(s, n, -1)
    summary = {"method": result.method, "operator": repr(result.operator), "task": result.operator.task,
               "rows": n, "num_samples": s,
               "consistency": float((measured - result.y).abs().amax()) if not isinstance(result.operator, Inpaint)
               else float(((measured - result.y) * result.operator.mask_for(result.y)).abs().amax()),
               "diversity": sample_diversity(samples),
               "mean_variance": float(result.variance.mean())}
    if result.ess is not None:
        summary["ess_median"] = float(result.ess.median())
        summary["ess_min"] = float(result.ess.min())
    for key, value in result.info.items():  # method diagnostics; per-row tensors as their mean
        summary[key if not isinstance(value, torch.Tensor) else f"{key}_mean"] = (
            float(value.double().mean()) if isinstance(value, torch.Tensor) else value)
    if truth is not None:
        truth = result.operator.check_rows(truth, d, "truth").to(samples)
        if truth.shape[0] != n:
            raise ValueError(f"truth has {truth.shape[0]} rows, the restoration {n}")
        summary["mse_mean"] = float(((result.mean - truth) ** 2).mean())
        summary["mse_sample"] = float(((samples - truth) ** 2).mean())
    return summary
