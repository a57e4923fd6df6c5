"""Measurement operators y = A x + sigma * eps on rows of images (channels first, flattened).

Each operator knows the noiseless map A (:meth:`Operator.apply`), its Moore-Penrose
pseudo-inverse A^+ and the DDNM projection A^+ y + (I - A^+ A) x (Wang et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from ppgen.checks import describe, image_shape

__all__ = ["Operator", "Inpaint", "Greyscale", "Downsample", "GaussianNoise", "make_operator", "inpaint_mask",
           "TASKS", "MASKS"]

TASKS = ("inpaint", "colourise", "upsample", "denoise")
MASKS = ("bottom", "top", "right", "centre", "random")


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
        x = self.check_rows(x, self.in_dim, "x")
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
        return self._pinv(self.check_rows(y, self.out_dim, "y"))

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A^+ y + (I - A^+ A) x: x made consistent with y, keeping x's null-space part (DDNM)."""
        x = self.check_rows(x, self.in_dim, "x")
        y = self.check_rows(y, self.out_dim, "y")
        if x.shape[0] != y.shape[0] and x.shape[0] != 1 and y.shape[0] != 1:
            raise ValueError(f"x has {x.shape[0]} rows and y has {y.shape[0]}; they must match")
        return self._pinv(y) + x - self._pinv(self.apply(x))

    def check_y(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` as a 2-D floating tensor of width ``out_dim``, or a ValueError/TypeError saying why not."""
        return self.check_rows(y, self.out_dim, "y")

    def check_rows(self, t, dim: int | None, name: str) -> torch.Tensor:
        """``t`` as a 2-D floating tensor of width ``dim`` (any width when None), or an error naming
        ``name`` and this operator."""
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

    def require_noiseless(self, who: str) -> None:
        """Refuse a noisy operator: ``who`` (a method or model name) needs y to hold exact values."""
        if self.sigma:
            raise ValueError(f"{who} needs a noiseless {type(self).__name__} (sigma=0), got {self!r}")

    def _noise_repr(self) -> str:
        return f", sigma={self.sigma:g}" if self.sigma else ""


def _check_sigma(sigma, *, positive: bool) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
            or sigma < 0 or (positive and sigma == 0):
        expected = "a positive finite float" if positive else "a finite float >= 0"
        raise ValueError(f"sigma must be {expected}, got {sigma!r}")
    return float(sigma)


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
            raise TypeError(f"mask must be a bool tensor (True = observed), got {describe(mask)}")
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
        self.shape = image_shape(shape, min_channels=2)
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
        self.shape = image_shape(shape)
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
    channels, height, width = image_shape(shape)
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
    shape = image_shape(shape)
    if task == "inpaint":
        return Inpaint(inpaint_mask(mask, shape, seed=seed))
    if task == "colourise":
        return Greyscale(shape)
    if task == "upsample":
        return Downsample(shape, factor)
    if task == "denoise":
        return GaussianNoise(sigma, math.prod(shape))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
