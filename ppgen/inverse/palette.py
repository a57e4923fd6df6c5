r"""The exact colouriser of the coloured-digit story (:mod:`ppgen.data.colour`): a reference.

Seen in grey, a red digit on white could as well be green or blue: colour given greyness is
ambiguous, and a generative model should return several plausible colourings.
:class:`PaletteColouriser` draws them from the exact posterior of the story, so that the
colourisations of trained models (``ppgen.restore(model, y, Greyscale())``) can be compared with it.
"""

from __future__ import annotations

import torch

from ppgen.data.colour import PALETTE, SHAPE, grey_levels, paint
from ppgen.inverse.operators import Greyscale, Operator

__all__ = ["PaletteColouriser"]


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

    Use it through ``ppgen.restore(PaletteColouriser(), y, Greyscale())``: it is a
    :class:`~ppgen.inverse.restoration.Restorer`.
    """

    restore_method = "exact posterior (palette enumeration)"  # the name restore() returns with its samples

    def __init__(self, palette: torch.Tensor = PALETTE, shape=SHAPE):
        self.operator = Greyscale(shape)
        if not isinstance(palette, torch.Tensor) or palette.dim() != 2 or palette.shape[1] != self.operator.shape[0]:
            raise ValueError(f"palette must be a tensor (P, {self.operator.shape[0]}), got "
                             f"{getattr(palette, 'shape', type(palette).__name__)}")
        self.palette = palette
        self.levels = grey_levels(palette)

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
    def restore(self, y: torch.Tensor, operator: Operator, num_samples: int) -> tuple[torch.Tensor, str]:
        """``num_samples`` colourings (S, N, C*H*W) of the grey rows ``y`` (N, H*W), drawn from the
        exact posterior, and :attr:`restore_method`. Refuses any operator but its noiseless
        :class:`~ppgen.inverse.operators.Greyscale`."""
        if not isinstance(operator, Greyscale) or operator.shape != self.operator.shape or operator.sigma:
            raise ValueError(f"PaletteColouriser cannot restore for {operator!r}: it colourises "
                             f"{self.operator!r} measurements of coloured digits")
        g, fg, bg = self._read(y)
        n = len(g)
        f = torch.multinomial(fg.double(), num_samples, replacement=True).T  # (S, N) palette indices
        b = torch.multinomial(bg.double(), num_samples, replacement=True).T
        palette = self.palette.double()
        rows = paint(g.repeat(num_samples, 1), palette[f.reshape(-1)], palette[b.reshape(-1)])
        return rows.reshape(num_samples, n, -1).to(y.dtype), self.restore_method
