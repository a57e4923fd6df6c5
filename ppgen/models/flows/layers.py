r"""Invertible layers for image flows: actnorm, invertible 1x1 convolutions, couplings, squeeze.

Every layer is a :class:`Bijection` on images (N, C, H, W) in the *encoding* direction, data
towards latent: ``forward(x)`` returns ``(z, logdet)`` with ``logdet[n] = log |det dz_n / dx_n|``,
and ``inverse(z)`` returns ``x``. A flow's density is the change of variables

.. math::
    \log p(x) = \log p_Z(f(x)) + \sum_l \log \left| \det \frac{\partial h_l}{\partial h_{l-1}} \right|.

References: L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using Real NVP",
ICLR 2017; D. P. Kingma and P. Dhariwal, "Glow: Generative Flow with Invertible 1x1
Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Bijection", "ActNorm", "InvertibleConv1x1", "Coupling", "Squeeze", "ResNet", "MASKS", "SCALE_MAPS"]

MASKS = ("checkerboard", "checkerboard_flipped", "channel", "channel_flipped")
SCALE_MAPS = ("tanh", "sigmoid")


class Bijection(nn.Module):
    """An invertible map on (N, C, H, W) tensors with a tractable log |det Jacobian|."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ActNorm(Bijection):
    r"""Per-channel affine map :math:`z = (x + b) \odot e^{s}` (Glow's activation normalisation).

    Data-dependent initialisation: the first batch passed through ``forward`` sets
    :math:`b = -\mathrm{mean}` and :math:`s = -\log \mathrm{std}` per channel, so that batch leaves
    the layer with zero mean and unit variance per channel. log|det| = H W sum_c s_c.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N H W)
        self.bias.copy_(-flat.mean(1).view_as(self.bias))
        self.log_scale.copy_(-torch.log(flat.std(1, unbiased=False) + 1e-6).view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x):
        if not self.initialized:
            self.initialize(x)
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x + self.bias) * self.log_scale.exp(), logdet.expand(x.shape[0])

    def inverse(self, z):
        return z * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(Bijection):
    r"""An invertible 1x1 convolution in LU form: :math:`W = P L (U + \mathrm{diag}(\mathrm{sign}\, e^{s}))`.

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular; initialised
    from a random rotation. log|det| = H W sum(s), in O(C) instead of O(C^3).
    """

    def __init__(self, channels: int):
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.perm.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return self.perm @ lower @ upper  # (C, C)

    def forward(self, x):
        logdet = x.shape[2] * x.shape[3] * self.log_diag.sum()
        return F.conv2d(x, self.weight()[:, :, None, None]), logdet.expand(x.shape[0])

    def inverse(self, z):
        return F.conv2d(z, torch.linalg.inv(self.weight())[:, :, None, None])


class ResNet(nn.Module):
    """The coupling network: 3x3 conv, ``blocks`` residual blocks, 3x3 conv initialised to zero
    (so a fresh coupling is the identity, as in Glow)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(hidden, hidden, 1)) for _ in range(blocks))
        self.tail = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        h = self.head(x)
        for block in self.blocks:
            h = h + block(h)
        return self.tail(F.relu(h))


def checkerboard(height: int, width: int, flipped: bool, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W) mask of 1s where (i + j) is even (odd when ``flipped``)."""
    i, j = torch.arange(height, device=like.device), torch.arange(width, device=like.device)
    return (((i[:, None] + j[None, :]) % 2 == int(flipped)).to(like.dtype))[None, None]


def split_checkerboard(x: torch.Tensor, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W), W even -> (kept, moved), each (N, C, H, W / 2): the pixels where (i + j) is even (odd when
    ``flipped``), the :func:`checkerboard` mask's, and the others, each row's in order."""
    n, c, h, w = x.shape
    if w % 2:
        raise ValueError(f"a packed checkerboard needs an even width, got {h}x{w} (use the masked one)")
    pairs = x.view(n, c, h, w // 2, 2)
    first = _kept_first(h, flipped, x)
    return torch.where(first, pairs[..., 0], pairs[..., 1]), torch.where(first, pairs[..., 1], pairs[..., 0])


def join_checkerboard(kept: torch.Tensor, moved: torch.Tensor, flipped: bool) -> torch.Tensor:
    """The inverse of :func:`split_checkerboard`."""
    first = _kept_first(kept.shape[2], flipped, kept)
    return torch.stack((torch.where(first, kept, moved), torch.where(first, moved, kept)), -1).flatten(-2)


def _kept_first(height: int, flipped: bool, like: torch.Tensor) -> torch.Tensor:
    """(H, 1): True on the rows whose kept pixel is the first of each pair of columns (2k, 2k + 1)."""
    return ((torch.arange(height, device=like.device) + int(flipped)) % 2 == 0)[:, None]


class Coupling(Bijection):
    r"""Affine (or additive) coupling: the masked part a passes unchanged, the rest b is moved,

    .. math::
        z_a = x_a, \qquad z_b = x_b \odot e^{s(x_a)} + t(x_a), \qquad
        \log|\det| = \textstyle\sum s(x_a),

    with :math:`s = \sigma \tanh(\cdot)` (``scale_map="tanh"``: a learnt scale per channel keeps the
    scales bounded, as in RealNVP), :math:`s = \log \mathrm{sigmoid}(\cdot + 2)` (``"sigmoid"``: Glow's
    code, which only contracts x_b on the way to z, 0.88 at the zero-initialised start) and
    :math:`s = 0` for ``affine=False`` (NICE/Glow's additive coupling).

    Parameters
    ----------
    channels : int
    mask : {"checkerboard", "checkerboard_flipped", "channel", "channel_flipped"}
        Which entries condition the others: a spatial checkerboard, or one half of the channels.
    hidden, blocks : int
        Width and residual blocks of the coupling network.
    affine : bool
    scale_map : {"tanh", "sigmoid"}
        How the network's raw output becomes the log-scale s (above).
    packed : bool
        For a checkerboard: the network sees only the kept pixels, packed row by row into a half-width
        image (C, H, W / 2), and moves the others packed the same way (normflows' checkerboard split), at
        half the convolutions' cost; its 3x3 neighbourhoods are skewed by a pixel on alternate rows. By
        default it sees the whole image with the moved pixels set to zero (Dinh et al. 2017).
    """

    def __init__(self, channels: int, mask: str, hidden: int = 64, blocks: int = 2, affine: bool = True,
                 packed: bool = False, scale_map: str = "tanh"):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if scale_map not in SCALE_MAPS:
            raise ValueError(f"scale_map must be one of {SCALE_MAPS}, got {scale_map!r}")
        if mask.startswith("channel") and channels < 2:
            raise ValueError(f"a channel mask needs at least 2 channels, got {channels}")
        if packed and mask.startswith("channel"):
            raise ValueError(f"packed applies to checkerboard masks, not to {mask!r}")
        self.mask, self.affine, self.packed, self.scale_map = mask, affine, packed, scale_map
        self.split = channels // 2
        if mask.startswith("channel"):
            n_in, n_out = (self.split, channels - self.split)
            if mask.endswith("flipped"):
                n_in, n_out = n_out, n_in
        else:
            n_in, n_out = channels, channels
        self.net = ResNet(n_in, n_out * (2 if affine else 1), hidden, blocks)
        self.scale = nn.Parameter(torch.ones(1, n_out, 1, 1)) if affine and scale_map == "tanh" else None

    def _shift_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x_a)
        if not self.affine:
            return out, torch.zeros_like(out)
        shift, raw = out.chunk(2, dim=1)
        if self.scale_map == "sigmoid":
            return shift, F.logsigmoid(raw + 2)
        return shift, self.scale * torch.tanh(raw)

    def _halves(self, x):
        """(kept, moved): the channel halves, or the packed checkerboard's."""
        if self.packed:
            return split_checkerboard(x, self.mask.endswith("flipped"))
        a, b = x[:, : self.split], x[:, self.split:]
        return (b, a) if self.mask.endswith("flipped") else (a, b)

    def _join(self, a, b):
        if self.packed:
            return join_checkerboard(a, b, self.mask.endswith("flipped"))
        return torch.cat((b, a) if self.mask.endswith("flipped") else (a, b), dim=1)

    def forward(self, x):
        if self.mask.startswith("channel") or self.packed:
            a, b = self._halves(x)
            shift, log_scale = self._shift_scale(a)
            return self._join(a, b * log_scale.exp() + shift), log_scale.flatten(1).sum(1)
        m = checkerboard(x.shape[2], x.shape[3], self.mask.endswith("flipped"), x)
        shift, log_scale = self._shift_scale(x * m)
        log_scale, shift = log_scale * (1 - m), shift * (1 - m)
        return x * m + (1 - m) * (x * log_scale.exp() + shift), log_scale.flatten(1).sum(1)

    def inverse(self, z):
        if self.mask.startswith("channel") or self.packed:
            a, b = self._halves(z)
            shift, log_scale = self._shift_scale(a)
            return self._join(a, (b - shift) * torch.exp(-log_scale))
        m = checkerboard(z.shape[2], z.shape[3], self.mask.endswith("flipped"), z)
        shift, log_scale = self._shift_scale(z * m)
        return z * m + (1 - m) * (z - shift) * torch.exp(-log_scale)

    def extra_repr(self) -> str:
        return (f"mask={self.mask!r}, affine={self.affine}" + (", packed=True" if self.packed else "")
                + (f", scale_map={self.scale_map!r}" if self.affine and self.scale_map != "tanh" else ""))


class Squeeze(Bijection):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels. log|det| = 0."""

    def forward(self, x):
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
        z = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(n)

    def inverse(self, z):
        n, c, h, w = z.shape
        return z.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)
