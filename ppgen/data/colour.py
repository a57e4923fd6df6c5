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
return several plausible colourings. :class:`ppgen.inverse.PaletteColouriser` draws them from the
exact posterior of this story.

By the palette's symmetry the posterior mean colour of every pixel is its grey level in all three
channels: the MSE-optimal single answer (a regression's target) is the grey image itself.
"""

from __future__ import annotations


import torch

from ppgen.checks import non_negative_int
from ppgen.data.digits import Dataset, load_digits

__all__ = ["PALETTE", "PALETTE_NAMES", "SHAPE", "coloured_digits", "draw_colours", "grey_levels", "paint"]

PALETTE_NAMES = ("black", "white", "red", "green", "blue", "yellow", "cyan", "magenta")
PALETTE = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0],
                        [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                        [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])  # (P, 3) RGB in [0, 1]
SHAPE = (3, 28, 28)  # (C, H, W) of a coloured digit
_SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}


def grey_levels(palette: torch.Tensor) -> torch.Tensor:
    """Grey level of each colour, rounded so that equal levels compare equal (P,)."""
    return (palette.double().mean(-1) * 1e6).round() / 1e6


def draw_colours(n: int, *, seed: int = 0, palette: torch.Tensor = PALETTE) -> tuple[torch.Tensor, torch.Tensor]:
    """Palette indices (foreground, background), each (n,), uniform over pairs of distinct grey levels.

    Examples
    --------
    >>> fg, bg = draw_colours(1000)
    >>> bool((grey_levels(PALETTE)[fg] != grey_levels(PALETTE)[bg]).all())
    True
    """
    generator = torch.Generator().manual_seed(seed)
    levels = grey_levels(palette)
    allowed = (levels[:, None] != levels[None, :]).double()  # (P, P): pairs with distinct levels
    pair = torch.multinomial(allowed.reshape(-1), n, replacement=True, generator=generator)
    return pair // len(palette), pair % len(palette)


def paint(grey01: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Colour rows (N, 3*D), channels first: c = g fg + (1 - g) bg for grey rows g (N, D) in [0, 1]
    and colours fg, bg (N, 3)."""
    g = grey01[:, None, :]  # (N, 1, D)
    return (g * fg[:, :, None] + (1 - g) * bg[:, :, None]).reshape(grey01.shape[0], -1)


def coloured_digits(split: str = "train", seed: int = 0) -> Dataset:
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
    non_negative_int(seed, "seed")
    grey, labels = load_digits(split, grey=True)
    g = (255 * grey / grey.amax(1, keepdim=True)).round() / 255  # every digit spans [0, 1] exactly
    fg, bg = draw_colours(len(g), seed=3 * seed + _SPLIT_OFFSET[split])
    colour = paint(g, PALETTE[fg], PALETTE[bg])
    return Dataset(((255 * colour).round() / 255).to(grey.dtype), labels)  # exactly k / 255, as digits_grey / 255
