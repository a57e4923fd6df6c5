r"""Inverse problems: restore x from a measurement y = A x + sigma * eps by conditional sampling.

An :class:`Operator` is the measurement A (a linear map on rows in the model's data space) with
Gaussian noise of standard deviation ``sigma``: :class:`Inpaint` (keep some pixels),
:class:`Greyscale` (average the colour channels), :class:`Downsample` (average pooling) and
:class:`GaussianNoise` (A = I). Each knows its pseudo-inverse A^+ and the projection

.. math::
    \mathrm{project}(x, y) = A^+ y + (I - A^+ A)\, x,

which keeps the part of x that A does not see and replaces the rest by what y says (the
range-null-space decomposition of DDNM, Wang et al. 2023). For a noiseless operator
A(project(x, y)) = y.

:func:`restore` draws samples of x from p(x | y) with whatever the model can do:

- a model with its own ``restore(y, operator, num_samples, **kwargs)`` method (the diffusion
  models; :class:`ColourRegression`; :class:`ppgen.data.colour.PaletteColouriser`) is called;
- an autoregressive model inpaints with its exact conditionals (when the observed pixels come
  first in its ordering) or by sequential importance resampling;
- a VAE inpaints by self-normalised importance resampling over its latent code.

Every path returns a :class:`RestoreResult`: ``samples`` (S, N, D), the per-pixel posterior
``mean`` and ``variance`` (N, D), and the ``method`` used.

References: Y. Wang, J. Yu and J. Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model", ICLR 2023. D. B. Rubin, "Using the SIR algorithm to simulate posterior
distributions", Bayesian Statistics 3, 1988. T. Hesterberg, "Weighted average importance sampling
and defensive mixture distributions", Technometrics 37, 1995.

Examples
--------
>>> import torch
>>> op = Downsample((1, 4, 4), factor=2)
>>> x = torch.arange(16.).reshape(1, 16) / 16
>>> y = op(x)
>>> y.shape, torch.allclose(op(op.pseudo_inverse(y)), y), torch.allclose(op(op.project(x.flip(1), y)), y)
(torch.Size([1, 4]), True, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["Operator", "Inpaint", "Greyscale", "Downsample", "GaussianNoise", "RestoreResult", "restore",
           "sample_diversity", "ColourRegression", "fit_colour_regression", "restore_grid", "TASKS"]

TASKS = ("inpaint", "colourise", "upsample", "denoise")


# ----------------------------------------------------------------------------------------------
# operators


class Operator:
    r"""A measurement y = A x + sigma * eps on rows x (N, in_dim) -> y (N, out_dim).

    Subclasses implement the noiseless linear map :meth:`apply` and its Moore-Penrose
    pseudo-inverse :meth:`_pinv`; everything else is shared.

    Attributes
    ----------
    task : str
        ``"inpaint"``, ``"colourise"``, ``"upsample"`` or ``"denoise"``.
    sigma : float
        Standard deviation of the Gaussian measurement noise (0: noiseless).
    in_dim, out_dim : int or None
        Widths of x and y (None: any width, for :class:`GaussianNoise` without ``dim``).
    """

    task: ClassVar[str]
    sigma: float
    in_dim: int | None
    out_dim: int | None

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = A x + sigma * eps, eps ~ N(0, I) drawn with ``generator`` (the global RNG when None)."""
        x = self._rows(x, self.in_dim, "x")
        y = self.apply(x)
        if self.sigma > 0:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
            y = y + self.sigma * self._restrict(noise)
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless map A x (no checks: the caller's rows have width ``in_dim``)."""
        raise NotImplementedError

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _restrict(self, noise: torch.Tensor) -> torch.Tensor:
        """The measurement noise as it enters y (Inpaint: only on observed pixels)."""
        return noise

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y, rows of width ``in_dim``; A(A^+ y) = y for every y in the range of A."""
        return self._pinv(self._rows(y, self.out_dim, "y"))

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A^+ y + (I - A^+ A) x: x made consistent with y, keeping x's null-space part (DDNM)."""
        x = self._rows(x, self.in_dim, "x")
        y = self._rows(y, self.out_dim, "y")
        if x.shape[0] != y.shape[0] and x.shape[0] != 1 and y.shape[0] != 1:
            raise ValueError(f"x has {x.shape[0]} rows and y has {y.shape[0]}; they must match")
        return self._pinv(y) + x - self._pinv(self.apply(x))

    def check_y(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` as a 2-D floating tensor of width ``out_dim``, or a ValueError/TypeError saying why not."""
        return self._rows(y, self.out_dim, "y")

    def _rows(self, t, dim: int | None, name: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must hold floats, got dtype {t.dtype}; convert it with .float()")
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, D) with N >= 1, got shape {tuple(t.shape)}")
        if dim is not None and t.shape[1] != dim:
            raise ValueError(f"{name} has {t.shape[1]} columns, but {self!r} takes {name} of width {dim}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        return t

    def _noise_repr(self) -> str:
        return f", sigma={self.sigma:g}" if self.sigma else ""


def _check_sigma(sigma, *, positive: bool) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
            or sigma < 0 or (positive and sigma == 0):
        expected = "a positive finite float" if positive else "a finite float >= 0"
        raise ValueError(f"sigma must be {expected}, got {sigma!r}")
    return float(sigma)


def _check_shape(shape, *, min_channels: int = 1) -> tuple[int, int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 \
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be (channels, height, width), three positive ints, got {shape!r}")
    if shape[0] < min_channels:
        raise ValueError(f"shape must have at least {min_channels} channels, got {tuple(shape)}")
    return tuple(shape)


class Inpaint(Operator):
    """Observe the pixels where ``mask`` is True: y = mask * x (A diagonal 0/1, A^+ = A).

    y has the shape of x; its unobserved entries are ignored (A^+ y sets them to 0).

    Parameters
    ----------
    mask : bool Tensor (D,) or (N, D)
        True where a pixel is observed; one mask for all rows, or one per row.
    sigma : float
        Noise on the observed pixels (0: noiseless).

    Examples
    --------
    >>> op = Inpaint(torch.tensor([True, False, True]))
    >>> op
    Inpaint(D=3, observed=2 of 3)
    >>> op(torch.tensor([[1., 1., 0.]]))
    tensor([[1., 0., 0.]])
    """

    task = "inpaint"

    def __init__(self, mask: torch.Tensor, *, sigma: float = 0.0):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = observed), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.dim() not in (1, 2) or mask.shape[-1] == 0 or (mask.dim() == 2 and mask.shape[0] == 0):
            raise ValueError(f"mask must have shape (D,) or (N, D), got shape {tuple(mask.shape)}")
        if mask.all():
            raise ValueError("mask hides nothing (it is all True): there is nothing to inpaint")
        if not mask.any():
            raise ValueError("mask hides everything (it is all False): that is unconditional sampling, "
                             "use model.sample")
        self.mask = mask
        self.sigma = _check_sigma(sigma, positive=False)
        self.in_dim = self.out_dim = mask.shape[-1]

    def mask_for(self, t: torch.Tensor, name: str = "y") -> torch.Tensor:
        """The mask expanded to the rows of ``t`` (N, D), on ``t``'s device."""
        if self.mask.dim() == 2 and t.shape[0] != self.mask.shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} rows, but the mask of {self!r} has {self.mask.shape[0]}")
        return self.mask.to(t.device).expand(t.shape[0], -1)

    def apply(self, x):
        return x * self.mask_for(x, "x")

    def _pinv(self, y):
        return y * self.mask_for(y)

    def _restrict(self, noise):
        return noise * self.mask_for(noise)

    def __repr__(self) -> str:
        rows = f"rows={self.mask.shape[0]}, " if self.mask.dim() == 2 else ""
        return (f"Inpaint({rows}D={self.in_dim}, observed={int(self.mask.sum())} of {self.mask.numel()}"
                f"{self._noise_repr()})")


class Greyscale(Operator):
    """Colour rows (N, C*H*W, channels first) -> grey rows (N, H*W): the mean of the channels.

    A = (1/C) [I ... I], A A^T = I / C, so A^+ = C A^T repeats the grey level in every channel.

    Examples
    --------
    >>> op = Greyscale((3, 1, 2))
    >>> op(torch.tensor([[1., 0., 0., 0., 0., 1.]]))
    tensor([[0.3333, 0.3333]])
    >>> op.pseudo_inverse(torch.tensor([[0.5, 1.]]))
    tensor([[0.5000, 1.0000, 0.5000, 1.0000, 0.5000, 1.0000]])
    """

    task = "colourise"

    def __init__(self, shape: Sequence[int] = (3, 28, 28), *, sigma: float = 0.0):
        self.shape = _check_shape(shape, min_channels=2)
        self.sigma = _check_sigma(sigma, positive=False)
        channels, height, width = self.shape
        self.in_dim, self.out_dim = channels * height * width, height * width

    def apply(self, x):
        return x.reshape(x.shape[0], self.shape[0], -1).mean(1)

    def _pinv(self, y):
        return y.repeat(1, self.shape[0])

    def __repr__(self) -> str:
        return f"Greyscale(shape={self.shape}{self._noise_repr()})"


class Downsample(Operator):
    """Average pooling of ``factor`` x ``factor`` blocks: (N, C*H*W) -> (N, C*(H/f)*(W/f)).

    A A^T = I / f^2, so A^+ = f^2 A^T is nearest-neighbour upsampling and A A^+ = I.

    Examples
    --------
    >>> op = Downsample((1, 2, 2), factor=2)
    >>> op(torch.tensor([[0., 1., 1., 1.]]))
    tensor([[0.7500]])
    >>> op.pseudo_inverse(torch.tensor([[0.75]]))
    tensor([[0.7500, 0.7500, 0.7500, 0.7500]])
    """

    task = "upsample"

    def __init__(self, shape: Sequence[int] = (1, 28, 28), factor: int = 2, *, sigma: float = 0.0):
        self.shape = _check_shape(shape)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an int >= 2, got {factor!r}")
        channels, height, width = self.shape
        if height % factor or width % factor:
            raise ValueError(f"factor={factor} must divide the height {height} and width {width} of shape {self.shape}")
        self.factor = factor
        self.sigma = _check_sigma(sigma, positive=False)
        self.in_dim = channels * height * width
        self.out_dim = channels * (height // factor) * (width // factor)

    def apply(self, x):
        return F.avg_pool2d(x.reshape(-1, *self.shape), self.factor).reshape(x.shape[0], -1)

    def _pinv(self, y):
        channels, height, width = self.shape
        small = y.reshape(-1, channels, height // self.factor, width // self.factor)
        return small.repeat_interleave(self.factor, 2).repeat_interleave(self.factor, 3).reshape(y.shape[0], -1)

    def __repr__(self) -> str:
        return f"Downsample(shape={self.shape}, factor={self.factor}{self._noise_repr()})"


class GaussianNoise(Operator):
    """y = x + sigma * eps (A = I): denoising. ``project(x, y)`` is y itself.

    Parameters
    ----------
    sigma : float > 0
    dim : int, optional
        Width of the rows (None: any width).

    Examples
    --------
    >>> op = GaussianNoise(0.1)
    >>> op
    GaussianNoise(sigma=0.1)
    >>> op(torch.zeros(2, 3), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3])
    """

    task = "denoise"

    def __init__(self, sigma: float, dim: int | None = None):
        self.sigma = _check_sigma(sigma, positive=True)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.in_dim = self.out_dim = dim

    def apply(self, x):
        return x

    def _pinv(self, y):
        return y

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma:g}{'' if self.in_dim is None else f', dim={self.in_dim}'})"


# ----------------------------------------------------------------------------------------------
# restore


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
        How the samples were drawn: ``"exact conditionals"``, ``"sequential importance
        resampling"``, ``"importance resampling"``, or the name a model's own ``restore`` gives
        (its ``restore_method`` attribute, e.g. ``"DDNM"``).
    y : Tensor (N, out_dim)
    operator : Operator
    ess : Tensor (N,) or None
        Effective sample size of the importance weights per row, for the importance methods.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    method: str
    y: torch.Tensor
    operator: Operator
    ess: torch.Tensor | None = None

    def __repr__(self) -> str:
        s, n, d = self.samples.shape
        ess = "" if self.ess is None else f", ess median={float(self.ess.median()):.1f}"
        return f"RestoreResult({s} samples of {n} rows x {d}, method={self.method!r}, operator={self.operator!r}{ess})"


CAPABLE = ("any model with a restore(y, operator, num_samples) method (the diffusion models, "
           "PaletteColouriser, ColourRegression), autoregressive models (FVSBN, NADE, MADE, PixelCNN: "
           "task 'inpaint'), VAE (task 'inpaint')")


def restore(model, y: torch.Tensor, operator: Operator, num_samples: int = 16, *, seed: int = 0,
            **kwargs) -> RestoreResult:
    r"""Draw ``num_samples`` restorations x ~ p(x | y) of each measurement row y = A x + noise.

    Parameters
    ----------
    model
        A trained model. Dispatch, in this order:

        - ``model.restore(y, operator, num_samples, **kwargs)`` if the model has one (it returns
          samples (S, N, D); its ``restore_method`` attribute names the method);
        - autoregressive model with :class:`Inpaint`: ``model.inpaint`` -- the exact conditionals
          p(x_missing | x_obs) when every observed pixel precedes the missing ones in the
          model's ordering, else sequential importance resampling (``num_particles``, default 1000);
        - :class:`ppgen.VAE` with :class:`Inpaint`: self-normalised importance resampling over z
          (keywords ``num_particles=1000``, ``proposal="encoder"`` or ``"prior"``,
          ``defensive=0.1``; see :func:`vae_inpaint`).
    y : Tensor (N, operator.out_dim)
        The measurements.
    operator : Operator
    num_samples : int
        Restorations per row, S.
    seed : int
        Torch's global random state is seeded with it for the call (and restored afterwards),
        so the same seed gives the same samples.

    Returns
    -------
    RestoreResult

    Raises
    ------
    ValueError
        When the model cannot restore for the operator's task, naming the models that can.
    """
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a ppgen.inverse.Operator (Inpaint, Greyscale, Downsample, "
                        f"GaussianNoise), got {type(operator).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    y = operator.check_y(y)
    if isinstance(operator, Inpaint):
        operator.mask_for(y)
    ess = None
    with _seeded(seed, y.device):
        own = getattr(model, "restore", None)
        if callable(own):
            samples = own(y, operator, num_samples, **kwargs)
            method = getattr(model, "restore_method", f"{type(model).__name__}.restore")
        else:
            from ppgen.models.autoregressive import AutoregressiveModel
            from ppgen.models.latent.vae import VAE

            if isinstance(model, AutoregressiveModel) and isinstance(operator, Inpaint):
                _noiseless(operator, model)
                result = model.inpaint(operator.pseudo_inverse(y), operator.mask_for(y), num_samples,
                                       **_only(kwargs, "num_particles"))
                samples, ess = result.samples, result.ess
                method = "exact conditionals" if result.method == "exact" else "sequential importance resampling"
            elif isinstance(model, VAE) and isinstance(operator, Inpaint):
                samples, ess = vae_inpaint(model, y, operator, num_samples, **kwargs)
                method = "importance resampling"
            else:
                raise ValueError(f"{type(model).__name__} cannot restore for task {operator.task!r}; "
                                 f"models that can: {CAPABLE}")
    if not isinstance(samples, torch.Tensor) or samples.shape != (num_samples, y.shape[0], operator.in_dim
                                                                   or y.shape[1]):
        raise ValueError(f"{type(model).__name__}.restore must return samples of shape "
                         f"({num_samples}, {y.shape[0]}, {operator.in_dim or y.shape[1]}), got "
                         f"{getattr(samples, 'shape', type(samples).__name__)}")
    samples = samples.detach()
    variance = samples.var(0) if num_samples > 1 else torch.zeros_like(samples[0])
    return RestoreResult(samples, samples.mean(0), variance, str(method), y, operator, ess)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _only(kwargs: dict, *allowed: str) -> dict:
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, extra))}; this method takes "
                        f"{', '.join(allowed) or 'none'}")
    return kwargs


def _noiseless(operator: Operator, model) -> None:
    if operator.sigma:
        raise ValueError(f"{type(model).__name__} inpaints observed pixels exactly: it needs a noiseless "
                         f"Inpaint (sigma=0), got {operator!r}")


@torch.no_grad()
def vae_inpaint(model, y: torch.Tensor, operator: Inpaint, num_samples: int, *, num_particles: int = 1000,
                proposal: str = "encoder", defensive: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Inpaint with a VAE by self-normalised importance resampling (SIR) over its latent code.

    For each row, K particles are drawn from the defensive mixture proposal

    .. math::
        r(z) = (1 - \alpha)\, q_\phi(z \mid \tilde x) + \alpha\, p(z), \qquad
        w_k = \frac{p(z_k)\, p(y_{obs} \mid z_k)}{r(z_k)},

    where :math:`\tilde x` is y with its missing pixels set to 0.5 (the encoder never saw
    missing values; 0.5 is the uninformative Bernoulli mean, and fills Gaussian data at the middle
    of [0, 1]). The weights are valid whatever the encoder makes of :math:`\tilde x`: r has full
    support, and the prior component bounds them, w <= p(y_obs | z) / alpha (Hesterberg 1995),
    so their variance is finite. ``num_samples`` particles are resampled in proportion to w, and
    the missing pixels drawn from the decoder p(x_miss | z). As K grows the draws tend to
    p(x_miss | y_obs); for finite K the bias is O(1/K) (Rubin 1988).

    Parameters
    ----------
    proposal : {"encoder", "prior"}
        ``"prior"``: r = p(z), w = p(y_obs | z) (alpha unused).
    defensive : float in [0, 1]
        alpha, the weight of the prior in the mixture.

    Returns
    -------
    samples (S, N, D) and the effective sample size (sum w)^2 / sum w^2 per row (N,).
    """
    if proposal not in ("encoder", "prior"):
        raise ValueError(f"proposal must be 'encoder' or 'prior', got {proposal!r}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    if isinstance(defensive, bool) or not isinstance(defensive, (int, float)) or not 0 <= defensive <= 1:
        raise ValueError(f"defensive must be a float in [0, 1], got {defensive!r}")
    _noiseless(operator, model)
    from ppgen.models.base import local_params
    from pyro import distributions as dist

    mask = operator.mask_for(y)  # (N, D)
    x_obs = model.check_data(torch.where(mask, y, torch.zeros_like(y)), "y")  # 0/1 for a Bernoulli VAE
    rows = x_obs.shape[0]
    prior = dist.Normal(model.prior_loc, model.prior_scale).to_event(1)
    with local_params(model):
        q = None
        if proposal == "encoder" and defensive < 1:
            q = dist.Normal(*model.posterior_params(torch.where(mask, x_obs, torch.full_like(x_obs, 0.5)))).to_event(1)
        chunk = max(1, 2**22 // (rows * model.x_dim))  # particles per pass: bounded memory
        zs, log_ws = [], []
        for start in range(0, num_particles, chunk):
            k = min(chunk, num_particles - start)
            z = prior.sample((k, rows))  # (k, N, z_dim)
            if q is None:
                log_w = x_obs.new_zeros(k, rows)
            else:
                z = torch.where((torch.rand(k, rows, 1, device=z.device) < defensive), z, q.sample((k,)))
                log_p = prior.log_prob(z)
                log_r = torch.logaddexp(math.log1p(-defensive) + q.log_prob(z),
                                        (math.log(defensive) if defensive else -math.inf) + log_p)
                log_w = log_p - log_r
            log_lik = model.likelihood_dist(z).base_dist.log_prob(x_obs)  # (k, N, D)
            log_ws.append(log_w + (log_lik * mask).sum(-1))
            zs.append(z)
        z, log_w = torch.cat(zs), torch.cat(log_ws)  # (K, N, z_dim), (K, N)
        pick = dist.Categorical(logits=log_w.T).sample((num_samples,))  # (S, N)
        chosen = z[pick, torch.arange(rows, device=z.device)]  # (S, N, z_dim)
        x = model.likelihood_dist(chosen).sample()  # (S, N, D)
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    return torch.where(mask, x_obs, x), ess


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


# ----------------------------------------------------------------------------------------------
# the regression baseline for colourisation


class ColourRegression(nn.Module):
    """A small CNN mapping grey rows (N, H*W) to colour rows (N, C*H*W), trained with MSE.

    Its single answer estimates the conditional mean E[colour | grey], the average of every
    plausible colouring: where colour is ambiguous it is muddy. It has a ``restore`` method
    (the same answer ``num_samples`` times), so :func:`restore` and :func:`sample_diversity`
    compare it with the generative models.
    """

    restore_method = "MSE regression (one answer: the conditional mean)"

    def __init__(self, shape: Sequence[int] = (3, 28, 28), hidden: int = 16):
        super().__init__()
        self.shape = _check_shape(shape, min_channels=2)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        self.net = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, self.shape[0], 1), nn.Sigmoid())

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        _, height, width = self.shape
        return self.net(grey.reshape(-1, 1, height, width)).reshape(grey.shape[0], -1)

    @torch.no_grad()
    def restore(self, y: torch.Tensor, operator: Operator, num_samples: int) -> torch.Tensor:
        if not isinstance(operator, Greyscale) or operator.shape != self.shape:
            raise ValueError(f"ColourRegression cannot restore for {operator!r}: it colourises "
                             f"Greyscale(shape={self.shape}) measurements")
        return self(y).expand(num_samples, -1, -1)


def fit_colour_regression(x_colour: torch.Tensor, *, shape: Sequence[int] = (3, 28, 28), epochs: int = 5,
                          batch_size: int = 64, lr: float = 3e-3, hidden: int = 16, seed: int = 0) -> ColourRegression:
    """Train a :class:`ColourRegression` with MSE on (Greyscale(x), x) pairs of the colour rows ``x_colour``.

    Adam, ``epochs`` passes in minibatches, everything seeded by ``seed``; returns the module in
    eval mode.
    """
    operator = Greyscale(shape)
    x_colour = operator._rows(x_colour, operator.in_dim, "x_colour")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ColourRegression(shape, hidden).to(x_colour.device, x_colour.dtype)
        grey = operator.apply(x_colour)
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for batch in torch.randperm(len(x_colour)).split(batch_size):
                loss = F.mse_loss(net(grey[batch]), x_colour[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return net.eval()


# ----------------------------------------------------------------------------------------------
# figures


def restore_grid(y: torch.Tensor | None, result: RestoreResult, truth: torch.Tensor | None = None,
                 shape: Sequence[int] = (1, 28, 28), *, max_rows: int = 4, max_samples: int = 4,
                 path: str | os.PathLike | None = None) -> Figure:
    """Before/after grid, one row per measurement: truth | measurement | samples | mean | variance.

    The measurement is drawn as A^+ y (upsampled, or grey in every channel; missing pixels of an
    inpainting mid-grey); the variance is scaled to its maximum. ``y`` None uses ``result.y``;
    ``shape`` is the (C, H, W) of a restored row (C = 1 grey, 3 colour). Returns a
    ``matplotlib.figure.Figure`` (saved to ``path`` if given); pyplot's state is untouched.
    """
    from matplotlib.figure import Figure  # imported here: drawing is optional

    shape = _check_shape(shape)
    if shape[0] not in (1, 3):
        raise ValueError(f"shape must have 1 (grey) or 3 (colour) channels, got {shape}")
    operator = result.operator
    y = result.y if y is None else operator.check_y(y)
    shown = min(max_rows, y.shape[0])
    measured = operator.pseudo_inverse(y[:shown])
    if isinstance(operator, Inpaint):
        measured = torch.where(operator.mask_for(y)[:shown], measured, torch.full_like(measured, 0.5))
    variance = result.variance[:shown] / result.variance[:shown].max().clamp_min(1e-12)
    columns = ([("truth", truth[:shown])] if truth is not None else []) + [("measurement", measured)]
    columns += [(f"sample {i + 1}", result.samples[i, :shown]) for i in range(min(max_samples, len(result.samples)))]
    columns += [("mean", result.mean[:shown]), ("variance", variance)]

    def image(row):
        img = row.detach().cpu().float().clamp(0, 1).reshape(shape).permute(1, 2, 0).numpy()
        return img[..., 0] if shape[0] == 1 else img

    fig = Figure(figsize=(1.1 * len(columns), 1.1 * shown + 0.4))
    axes = fig.subplots(shown, len(columns), squeeze=False)
    for c, (label, rows) in enumerate(columns):
        for r in range(shown):
            ax = axes[r, c]
            ax.imshow(image(rows[r]), cmap="gray_r" if shape[0] == 1 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(label, fontsize=7)
    fig.suptitle(f"{operator!r}: {result.method}", fontsize=8)
    fig.tight_layout(pad=0.2)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
