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
- PPCA and factor analysis restore exactly for every operator (a Gaussian posterior); a fully
  factorised model or a Bernoulli mixture inpaints exactly;
- an autoregressive model inpaints with its exact conditionals (when the observed pixels come
  first in its ordering) or by sequential importance resampling;
- a VAE inpaints by sampling its latent code from p(z | y_obs) (tempered sequential Monte Carlo,
  or self-normalised importance resampling), then the missing pixels from its decoder.

Every path returns a :class:`RestoreResult`: ``samples`` (S, N, D), the per-pixel posterior
``mean`` and ``variance`` (N, D), and the ``method`` used.

References: Y. Wang, J. Yu and J. Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model", ICLR 2023. P. Del Moral, A. Doucet and A. Jasra, "Sequential Monte Carlo
samplers", JRSS B 68, 2006. D. B. Rubin, "Using the SIR algorithm to simulate posterior
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
import itertools
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
           "sample_diversity", "restore_summary", "make_operator", "inpaint_mask", "image_shape",
           "ColourRegression", "fit_colour_regression", "restore_grid", "TASKS", "MASKS"]

TASKS = ("inpaint", "colourise", "upsample", "denoise")
MASKS = ("bottom", "top", "right", "centre", "random")


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


def image_shape(dim: int) -> tuple[int, int, int]:
    """(C, H, W) of square images flattened into rows of width ``dim``: C = 1 (grey) or 3 (colour).

    Examples
    --------
    >>> image_shape(784), image_shape(3 * 784)
    ((1, 28, 28), (3, 28, 28))
    """
    for channels in (1, 3):
        side = math.isqrt(dim // channels)
        if dim % channels == 0 and side * side * channels == dim:
            return channels, side, side
    raise ValueError(f"rows of width {dim} are not square grey or colour images (C * H * H with C = 1 or 3)")


def inpaint_mask(name: str, shape: Sequence[int] = (1, 28, 28), *, seed: int = 0) -> torch.Tensor:
    """A bool mask (C*H*W,), True = observed, hiding the same pixels in every channel.

    ``"bottom"``/``"top"``: the bottom/top half of the rows is hidden; ``"right"``: the right half
    of the columns; ``"centre"``: the central H/2 x W/2 square; ``"random"``: each pixel hidden
    with probability 1/2 (seeded).

    Examples
    --------
    >>> inpaint_mask("bottom", (1, 2, 2)).tolist()
    [True, True, False, False]
    """
    channels, height, width = _check_shape(shape)
    observed = torch.ones(height, width, dtype=torch.bool)
    if name == "bottom":
        observed[height // 2:] = False
    elif name == "top":
        observed[:height // 2] = False
    elif name == "right":
        observed[:, width // 2:] = False
    elif name == "centre":
        observed[height // 4: height // 4 + height // 2, width // 4: width // 4 + width // 2] = False
    elif name == "random":
        observed = torch.rand(height, width, generator=torch.Generator().manual_seed(seed)) < 0.5
    else:
        raise ValueError(f"mask must be one of {MASKS}, got {name!r}")
    return observed.reshape(-1).repeat(channels)


def make_operator(task: str, shape: Sequence[int] = (1, 28, 28), *, mask: str = "bottom", factor: int = 2,
                  sigma: float = 0.1, seed: int = 0) -> Operator:
    """The operator of a task for rows of images of ``shape`` (C, H, W) -- what ``ppgen restore`` measures with.

    ``"inpaint"``: :class:`Inpaint` with :func:`inpaint_mask` ``mask``; ``"colourise"``:
    :class:`Greyscale` (``shape`` is the colour image's); ``"upsample"``: :class:`Downsample` by
    ``factor``; ``"denoise"``: :class:`GaussianNoise` of std ``sigma``.

    Examples
    --------
    >>> make_operator("upsample", (1, 28, 28), factor=4)
    Downsample(shape=(1, 28, 28), factor=4)
    """
    shape = _check_shape(shape)
    if task == "inpaint":
        return Inpaint(inpaint_mask(mask, shape, seed=seed))
    if task == "colourise":
        return Greyscale(shape)
    if task == "upsample":
        return Downsample(shape, factor)
    if task == "denoise":
        return GaussianNoise(sigma, math.prod(shape))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


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


CAPABLE = ("any model with a restore(y, operator, num_samples) method (the diffusion models, "
           "PaletteColouriser, ColourRegression), PPCA and FactorAnalysis (every task), autoregressive models "
           "(FVSBN, NADE, MADE, PixelCNN), IndependentBernoulli, BernoulliMixture and VAE (task 'inpaint')")


def restore(model, y: torch.Tensor, operator: Operator, num_samples: int = 16, *, seed: int = 0,
            **kwargs) -> RestoreResult:
    r"""Draw ``num_samples`` restorations x ~ p(x | y) of each measurement row y = A x + noise.

    Parameters
    ----------
    model
        A trained model. Dispatch, in this order:

        - ``model.restore(y, operator, num_samples, **kwargs)`` if the model has one (it returns
          samples (S, N, D); its ``restore_method`` attribute names the method);
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
        so the same seed gives the same samples.

    The call runs on the model's device (``y`` is moved there); so do the results.

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
    y = operator.check_y(y).to(_device_of(model, y.device))  # run where the model is
    if isinstance(operator, Inpaint):
        operator.mask_for(y)
    ess, info = None, {}
    with _seeded(seed, y.device):
        own = getattr(model, "restore", None)
        if callable(own):
            samples = own(y, operator, num_samples, **kwargs)
            method = getattr(model, "restore_method", f"{type(model).__name__}.restore")
        else:
            from ppgen.models.autoregressive import AutoregressiveModel
            from ppgen.models.independent import IndependentBernoulli
            from ppgen.models.latent.linear_gaussian import _LinearGaussian
            from ppgen.models.latent.mixture import BernoulliMixture
            from ppgen.models.latent.vae import VAE

            if isinstance(model, AutoregressiveModel) and isinstance(operator, Inpaint):
                _noiseless(operator, model)
                result = model.inpaint(operator.pseudo_inverse(y), operator.mask_for(y), num_samples,
                                       **_only(kwargs, "num_particles"))
                samples, ess = result.samples, result.ess
                method = "exact conditionals" if result.method == "exact" else "sequential importance resampling"
            elif isinstance(model, (IndependentBernoulli, BernoulliMixture)) and isinstance(operator, Inpaint):
                samples = _mixture_inpaint(model, y, operator, num_samples, **_only(kwargs))
                method = "exact conditionals"
            elif isinstance(model, _LinearGaussian):
                samples = _gaussian_restore(model, y, operator, num_samples, **_only(kwargs))
                method = "exact Gaussian posterior"
            elif isinstance(model, VAE) and isinstance(operator, Inpaint):
                samples, ess, info = vae_inpaint(model, y, operator, num_samples, **kwargs)
                method = ("importance resampling" if kwargs.get("sampler") == "importance"
                          else "sequential Monte Carlo (tempered)")
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
    return RestoreResult(samples, samples.mean(0), variance, str(method), y, operator, ess, info)


def _device_of(model, default: torch.device) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, nn.Module):
        return next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0, device=default)).device
    return default


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
def _mixture_inpaint(model, y: torch.Tensor, operator: Inpaint, num_samples: int) -> torch.Tensor:
    r"""Exact inpainting for a fully factorised model (one component) or a Bernoulli mixture:
    p(c | y_obs) \propto pi_c prod_{d observed} p(y_d | c), then x_miss ~ p(x_miss | c) pixel by pixel."""
    _noiseless(operator, model)
    from pyro import distributions as dist

    mask = operator.mask_for(y)
    x_obs = model.check_data(torch.where(mask, y, torch.zeros_like(y)), "y")
    logits = model.logits[None] if model.logits.dim() == 1 else model.logits  # (k, D)
    log_pi = torch.log_softmax(getattr(model, "weight_logits", logits.new_zeros(1)), -1)  # (k,)
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
    if operator.in_dim not in (None, dim):
        raise ValueError(f"{operator!r} measures rows of width {operator.in_dim}; the model's are {dim}")
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


@torch.no_grad()
def vae_inpaint(model, y: torch.Tensor, operator: Inpaint, num_samples: int, *, sampler: str = "smc",
                num_particles: int | None = None, proposal: str = "encoder", defensive: float = 0.1,
                num_moves: int = 20) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    r"""Inpaint with a VAE: draw z from p(z | y_obs), then the missing pixels from the decoder p(x_miss | z).

    ``sampler="smc"`` (the default) or ``"importance"``.

    ``sampler="importance"``: self-normalised importance resampling (SIR). For each row K
    particles are drawn from the defensive mixture proposal

    .. math::
        r(z) = (1 - \alpha)\, q_\phi(z \mid \tilde x) + \alpha\, p(z), \qquad
        w_k = \frac{p(z_k)\, p(y_{obs} \mid z_k)}{r(z_k)},

    where :math:`\tilde x` is y with its missing pixels set to 0.5 (the encoder never saw
    missing values; 0.5 is the uninformative Bernoulli mean, and fills Gaussian data at the middle
    of [0, 1]). The weights are valid whatever the encoder makes of :math:`\tilde x`: r has full
    support, and the prior component bounds them, w <= p(y_obs | z) / alpha (Hesterberg 1995),
    so their variance is finite. ``num_samples`` particles are resampled in proportion to w.
    As K grows the draws tend to p(z | y_obs); for finite K the bias is O(1/K) (Rubin 1988). The
    effective sample size (sum w)^2 / sum w^2 says whether K sufficed: with hundreds of observed
    pixels of a 28x28 digit the posterior is so peaked that it is often near 1 (one particle
    carries all the weight, and the samples share one z): for a VAE with 16 latents trained on
    the digits, the median ESS of 5,000 particles was 1.0 to 1.8 per row with the bottom half or
    the centre hidden. Hence the default:

    ``sampler="smc"``: a tempered sequential Monte Carlo sampler (Del Moral, Doucet & Jasra 2006;
    Chopin 2002) through :math:`\pi_\beta(z) \propto p(z)\, p(y_{obs} \mid z)^\beta`,
    :math:`0 = \beta_0 < \dots < \beta_T = 1`: each next beta is chosen so that the incremental
    weights keep an ESS of K/2, the particles are resampled, then moved by ``num_moves``
    random-walk Metropolis steps invariant for :math:`\pi_\beta` (proposal scale from the particle
    cloud's spread, tuned towards 30% acceptance). Also estimates
    :math:`\log p(y_{obs}) = \sum_t \log \frac1K \sum_k p(y_{obs} \mid z_k)^{\beta_t - \beta_{t-1}}`
    (unbiased in p, returned in ``info["log_evidence"]``). On the digits VAE above (centre hidden)
    two seeds with K = 256 and 20 moves agreed within 0.6 nats per row, and with K = 1024 or 50
    moves; with 5 moves they differed by up to 2.5 nats (poorer mixing), hence 20. About 1.5 s per
    row of 784 pixels on one CPU core.

    Parameters
    ----------
    num_particles : int
        K (default 1000 for importance, 256 for SMC).
    proposal : {"encoder", "prior"}
        Importance sampling: ``"prior"`` gives r = p(z), w = p(y_obs | z) (alpha unused).
    defensive : float in [0, 1]
        alpha, the weight of the prior in the importance proposal.
    num_moves : int
        SMC: Metropolis steps per tempering stage.

    Returns
    -------
    samples (S, N, D); the ESS of the importance weights per row (N,) (None for SMC); a dict
    of diagnostics (SMC: ``stages``, ``acceptance``, ``log_evidence`` (N,)).
    """
    if sampler not in ("importance", "smc"):
        raise ValueError(f"sampler must be 'importance' or 'smc', got {sampler!r}")
    if proposal not in ("encoder", "prior"):
        raise ValueError(f"proposal must be 'encoder' or 'prior', got {proposal!r}")
    num_particles = (1000 if sampler == "importance" else 256) if num_particles is None else num_particles
    for name, value in (("num_particles", num_particles), ("num_moves", num_moves)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(defensive, bool) or not isinstance(defensive, (int, float)) or not 0 <= defensive <= 1:
        raise ValueError(f"defensive must be a float in [0, 1], got {defensive!r}")
    _noiseless(operator, model)
    from ppgen.models.base import local_params

    mask = operator.mask_for(y)  # (N, D)
    x_obs = model.check_data(torch.where(mask, y, torch.zeros_like(y)), "y")  # 0/1 for a Bernoulli VAE
    with local_params(model):
        if sampler == "importance":
            z, ess, info = _importance(model, x_obs, mask, num_samples, num_particles, proposal, defensive)
        else:
            z, info = _smc(model, x_obs, mask, num_samples, num_particles, num_moves)
            ess = None
        x = model.likelihood_dist(z).sample()  # (S, N, D)
    return torch.where(mask, x_obs, x), ess, info


def _log_lik(model, z: torch.Tensor, x_obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(y_obs | z) per particle and row (K, N), in chunks of particles to bound memory."""
    chunk = max(1, 2**22 // (x_obs.shape[0] * model.x_dim))
    return torch.cat([(model.likelihood_dist(part).base_dist.log_prob(x_obs) * mask).sum(-1)
                      for part in z.split(chunk)])


def _prior(model):
    from pyro import distributions as dist

    return dist.Normal(model.prior_loc, model.prior_scale).to_event(1)


def _importance(model, x_obs, mask, num_samples, num_particles, proposal, defensive):
    from pyro import distributions as dist

    rows, prior = x_obs.shape[0], _prior(model)
    z = prior.sample((num_particles, rows))  # (K, N, z_dim)
    log_w = x_obs.new_zeros(num_particles, rows)
    if proposal == "encoder" and defensive < 1:
        q = dist.Normal(*model.posterior_params(torch.where(mask, x_obs, torch.full_like(x_obs, 0.5)))).to_event(1)
        z = torch.where(torch.rand(num_particles, rows, 1, device=z.device) < defensive, z, q.sample((num_particles,)))
        log_p = prior.log_prob(z)
        log_r = torch.logaddexp(math.log1p(-defensive) + q.log_prob(z),
                                (math.log(defensive) if defensive else -math.inf) + log_p)
        log_w = log_p - log_r
    log_w = log_w + _log_lik(model, z, x_obs, mask)  # (K, N)
    pick = dist.Categorical(logits=log_w.T).sample((num_samples,))  # (S, N)
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    return z[pick, torch.arange(rows, device=z.device)], ess, {}


def _ess(log_w: torch.Tensor) -> torch.Tensor:
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def _next_increment(log_lik: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per row, the largest step d <= 1 - beta whose incremental weights exp(d * log_lik) keep ESS >= K/2 (bisection)."""
    target = log_lik.shape[0] / 2
    lo, hi = torch.zeros_like(beta), 1 - beta
    whole = _ess(hi * log_lik) >= target
    for _ in range(50):
        mid = (lo + hi) / 2
        good = _ess(mid * log_lik) >= target
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    return torch.where(whole, 1 - beta, torch.where(lo > 0, lo, hi))


def _smc(model, x_obs, mask, num_samples, num_particles, num_moves, max_stages: int = 1000):
    rows, prior = x_obs.shape[0], _prior(model)
    arange = torch.arange(rows, device=x_obs.device)
    z = prior.sample((num_particles, rows))  # (K, N, z_dim)
    log_lik = _log_lik(model, z, x_obs, mask).double()
    beta = log_lik.new_zeros(rows)
    log_evidence = log_lik.new_zeros(rows)
    step = log_lik.new_full((rows,), 2.38 / math.sqrt(z.shape[-1]))
    stages, accepted, moves = 0, 0.0, 0
    while (beta < 1).any():
        stages += 1
        if stages > max_stages:
            raise RuntimeError(f"tempering did not reach beta = 1 in {max_stages} stages (beta = {beta.min():.3g})")
        delta = _next_increment(log_lik, beta)  # (N,)
        increment = delta * log_lik  # (K, N)
        log_evidence += torch.logsumexp(increment, 0) - math.log(num_particles)
        beta = torch.where(1 - beta - delta < 1e-9, torch.ones_like(beta), beta + delta)
        pick = torch.multinomial(torch.softmax(increment, 0).T, num_particles, replacement=True).T  # (K, N)
        z, log_lik = z[pick, arange], log_lik[pick, arange]
        spread = z.std(0).clamp_min(1e-4)  # (N, z_dim)
        for _ in range(num_moves):
            proposed = z + (step[:, None] * spread).to(z) * torch.randn_like(z)
            proposed_lik = _log_lik(model, proposed, x_obs, mask).double()
            log_accept = (prior.log_prob(proposed) - prior.log_prob(z)).double() + beta * (proposed_lik - log_lik)
            accept = torch.rand_like(log_accept).log() < log_accept
            z = torch.where(accept[..., None], proposed, z)
            log_lik = torch.where(accept, proposed_lik, log_lik)
            rate = accept.double().mean(0)  # (N,)
            step = step * torch.exp(rate - 0.3)
            accepted, moves = accepted + float(rate.mean()), moves + 1
    pick = torch.randint(num_particles, (num_samples, rows), device=z.device)  # equally weighted after resampling
    info = {"stages": stages, "acceptance": accepted / max(moves, 1), "log_evidence": log_evidence}
    return z[pick, arange], info


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

    ``consistency``: the largest |A x - y| over samples (0 up to rounding for a noiseless
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
        truth = result.operator._rows(truth, d, "truth").to(samples)
        if truth.shape[0] != n:
            raise ValueError(f"truth has {truth.shape[0]} rows, the restoration {n}")
        summary["mse_mean"] = float(((result.mean - truth) ** 2).mean())
        summary["mse_sample"] = float(((samples - truth) ** 2).mean())
    return summary


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
    inpainting mid-grey); the variance, summed over channels, is scaled to its maximum and drawn
    dark where high. ``y`` None uses ``result.y``;
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
    variance = result.variance[:shown].reshape(shown, shape[0], -1).sum(1)  # summed over channels
    variance = (variance / variance.max().clamp_min(1e-12)).repeat(1, shape[0])
    columns = ([("truth", truth[:shown])] if truth is not None else []) + [("measurement", measured)]
    columns += [(f"sample {i + 1}", result.samples[i, :shown]) for i in range(min(max_samples, len(result.samples)))]
    columns += [("mean", result.mean[:shown]), ("variance", variance)]

    def image(row, grey):
        img = row.detach().cpu().float().clamp(0, 1).reshape(shape).permute(1, 2, 0).numpy()
        return img[..., 0] if grey else img

    fig = Figure(figsize=(1.1 * len(columns), 1.1 * shown + 0.6))
    axes = fig.subplots(shown, len(columns), squeeze=False)
    for c, (label, rows) in enumerate(columns):
        for r in range(shown):
            ax = axes[r, c]
            grey = shape[0] == 1 or label == "variance"  # the variance map: summed over channels, in grey
            ax.imshow(image(rows[r], grey), cmap="gray_r" if grey else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(label, fontsize=7)
    fig.suptitle(f"{operator!r}: {result.method}", fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
