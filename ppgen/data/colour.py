r"""Coloured digits: the greyscale digits painted with a palette, for colourisation.

Each digit n is painted with a foreground colour f_n on a background colour b_n, per channel,

.. math::
    g_n = \mathrm{round}\big(255\, \mathrm{intensity}_n / \max_d \mathrm{intensity}_{n,d}\big) / 255
    \in [0, 1], \qquad c_n = g_n f_n + (1 - g_n) b_n,

with (f_n, b_n) drawn uniformly (seeded) from the pairs of :data:`PALETTE` colours whose grey
levels (channel means) differ, so the digit stays visible in grey. The palette is the eight
corners of the RGB cube, so every channel value is g, 1 - g, 0 or 1: on the 8-bit grid
{0, 1/255, ..., 1} like ``digits_grey / 255``. Its grey levels are shared by several hues --
red, green and blue all have level 1/3; yellow, cyan and magenta 2/3 -- or held by one colour
(black 0, white 1). Seen in grey, a red digit on white
could as well be green or blue: colour given greyness is ambiguous, and a generative model should
return several plausible colourings. :class:`PaletteColouriser` draws them from the exact
posterior of this story.

By the palette's symmetry the posterior mean colour of every pixel is its grey level in all three
channels: the MSE-optimal single answer (a regression's target) is the grey image itself.
"""

from __future__ import annotations

import os

import torch

from ppgen.data import Dataset, load_dataset

__all__ = ["PALETTE", "PALETTE_NAMES", "coloured_digits", "draw_colours", "paint", "PaletteColouriser"]

PALETTE_NAMES = ("black", "white", "red", "green", "blue", "yellow", "cyan", "magenta")
PALETTE = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0],
                        [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                        [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])  # (P, 3) RGB in [0, 1]
SHAPE = (3, 28, 28)
_SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}


def _levels(palette: torch.Tensor) -> torch.Tensor:
    """Grey level of each colour, rounded so that equal levels compare equal (P,)."""
    return (palette.double().mean(-1) * 1e6).round() / 1e6


def draw_colours(n: int, *, seed: int = 0, palette: torch.Tensor = PALETTE) -> tuple[torch.Tensor, torch.Tensor]:
    """Palette indices (foreground, background), each (n,), uniform over pairs of distinct grey levels.

    Examples
    --------
    >>> fg, bg = draw_colours(1000)
    >>> bool((_levels(PALETTE)[fg] != _levels(PALETTE)[bg]).all())
    True
    """
    generator = torch.Generator().manual_seed(seed)
    levels = _levels(palette)
    allowed = (levels[:, None] != levels[None, :]).double()  # (P, P): pairs with distinct levels
    pair = torch.multinomial(allowed.reshape(-1), n, replacement=True, generator=generator)
    return pair // len(palette), pair % len(palette)


def paint(grey01: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Colour rows (N, 3*D), channels first: c = g fg + (1 - g) bg for grey rows g (N, D) in [0, 1]
    and colours fg, bg (N, 3)."""
    g = grey01[:, None, :]  # (N, 1, D)
    return (g * fg[:, :, None] + (1 - g) * bg[:, :, None]).reshape(grey01.shape[0], -1)


def coloured_digits(split: str = "train", seed: int = 0, root: str | os.PathLike | None = None) -> Dataset:
    """The embedded ``digits_grey`` rows painted with palette colours: ``Dataset(x, y)``.

    ``x`` (N, 3*784) floats on the grid {0, 1/255, ..., 1}, channels first (red, green, blue
    planes of 28x28);
    ``y`` the digit labels. Deterministic: the colours are drawn by :func:`draw_colours` with a
    seed derived from ``seed`` and ``split`` (each split gets its own colours).

    Examples
    --------
    >>> x, y = coloured_digits("valid")
    >>> x.shape, float(x.min()), float(x.max())
    (torch.Size([1000, 2352]), 0.0, 1.0)
    """
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be one of {tuple(_SPLIT_OFFSET)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    grey, labels = load_dataset("digits_grey", split, root=root)
    g = (255 * grey / grey.amax(1, keepdim=True)).round() / 255  # every digit spans [0, 1] exactly
    fg, bg = draw_colours(len(g), seed=3 * seed + _SPLIT_OFFSET[split])
    colour = paint(g, PALETTE[fg], PALETTE[bg])
    return Dataset(((255 * colour).round() / 255).to(grey.dtype), labels)  # exactly k / 255, as digits_grey / 255


class PaletteColouriser:
    r"""The exact posterior p(colour | grey) of the coloured-digit story: a reference colouriser.

    From a grey row y = g m_f + (1 - g) m_b (m the grey levels of the foreground and background
    colours) it reads the background level as the median of y (most pixels of a digit are
    background, g = 0) and the foreground level as the value of y farthest from it (g = 1 at the
    digit's brightest pixel), then g = (y - m_b) / (m_f - m_b). Given the levels, the posterior
    over (f, b) is uniform over the palette colours at those levels (the prior is uniform over
    pairs), so

    .. math::
        E[c \mid y] = g\, E[f \mid m_f] + (1 - g)\, E[b \mid m_b], \qquad
        \mathrm{Var}[c \mid y] = g^2\, \mathrm{Var}[f \mid m_f] + (1 - g)^2\, \mathrm{Var}[b \mid m_b].

    Use it through ``ppgen.restore(PaletteColouriser(), y, Greyscale())``.
    """

    restore_method = "exact posterior (palette enumeration)"

    def __init__(self, palette: torch.Tensor = PALETTE, shape=SHAPE):
        from ppgen.inverse import Greyscale

        self.operator = Greyscale(shape)
        if not isinstance(palette, torch.Tensor) or palette.dim() != 2 or palette.shape[1] != self.operator.shape[0]:
            raise ValueError(f"palette must be a tensor (P, {self.operator.shape[0]}), got "
                             f"{getattr(palette, 'shape', type(palette).__name__)}")
        self.palette = palette
        self.levels = _levels(palette)

    def __repr__(self) -> str:
        return f"PaletteColouriser({len(self.palette)} colours, shape={self.operator.shape})"

    def _read(self, y: torch.Tensor):
        """Per row: g (N, D) and the palette members at the foreground and background levels ((N, P) bool)."""
        y = self.operator.check_y(y).double()
        m_b = y.median(1).values
        far = (y - m_b[:, None]).abs().argmax(1)
        m_f = y.gather(1, far[:, None]).squeeze(1)
        members = []
        for name, level in (("foreground", m_f), ("background", m_b)):
            nearest = (level[:, None] - self.levels[None, :]).abs()  # (N, P)
            if (nearest.amin(1) > 1e-4).any():
                row = int((nearest.amin(1) > 1e-4).nonzero()[0])
                raise ValueError(f"y row {row} has {name} grey level {float(level[row]):.4f}, which no palette "
                                 "colour has: it is not a grey coloured digit")
            members.append((self.levels[None, :] - self.levels[nearest.argmin(1)][:, None]).abs() < 1e-9)
        g = ((y - m_b[:, None]) / (m_f - m_b)[:, None]).clamp(0, 1)
        return g, members[0], members[1]

    def _moments(self, member: torch.Tensor):
        weights = member.double() / member.sum(1, keepdim=True)  # (N, P) uniform over the members
        mean = weights @ self.palette.double()  # (N, C)
        var = weights @ self.palette.double() ** 2 - mean**2
        return mean, var

    def posterior_mean_variance(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form per-pixel E[c | y] and Var[c | y], each (N, C*H*W), in y's dtype."""
        g, fg, bg = self._read(y)
        (mf, vf), (mb, vb) = self._moments(fg), self._moments(bg)
        g = g[:, None, :]
        mean = g * mf[:, :, None] + (1 - g) * mb[:, :, None]
        var = g**2 * vf[:, :, None] + (1 - g) ** 2 * vb[:, :, None]
        return mean.reshape(len(g), -1).to(y.dtype), var.reshape(len(g), -1).to(y.dtype)

    @torch.no_grad()
    def restore(self, y: torch.Tensor, operator, num_samples: int) -> torch.Tensor:
        """``num_samples`` colourings (S, N, C*H*W) drawn from the exact posterior."""
        from ppgen.inverse import Greyscale

        if not isinstance(operator, Greyscale) or operator.shape != self.operator.shape or operator.sigma:
            raise ValueError(f"PaletteColouriser cannot restore for {operator!r}: it colourises "
                             f"{self.operator!r} measurements of coloured digits")
        g, fg, bg = self._read(y)
        n = len(g)
        f = torch.multinomial(fg.double(), num_samples, replacement=True).T  # (S, N) palette indices
        b = torch.multinomial(bg.double(), num_samples, replacement=True).T
        palette = self.palette.double()
        rows = paint(g.repeat(num_samples, 1), palette[f.reshape(-1)], palette[b.reshape(-1)])
        return rows.reshape(num_samples, n, -1).to(y.dtype)
