r"""The noise-prediction networks of diffusion models: a small U-Net for images and an MLP for rows.

Both take the noisy rows :math:`x_t` and the step t (integers 1..T, one per row) and return one
output per input dimension. The step enters through the sinusoidal embedding of Vaswani et al.
(2017), as in Ho et al. (2020), followed by a two-layer MLP; each residual block adds a projection
of it to its feature maps (the "PixelCNN++ / Wide ResNet" block of Ho et al., Appendix B).

The default U-Net is sized for a CPU: 32 base channels, multipliers (1, 2, 2) on 28x28 images
(28 -> 14 -> 7), one residual block per level, self-attention at the coarsest level only (7x7).
Ho et al.'s CIFAR-10 network has 128 channels, (1, 2, 2, 2), two blocks per level and attention at
16x16 (35.7M parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int

__all__ = ["timestep_embedding", "UNet", "TimeMLP"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of the steps ``t`` (B,): (B, dim) in ``dtype`` (that of the network
    it feeds, so that a ``.double()`` network gets a float64 embedding), sines then cosines.

    >>> timestep_embedding(torch.tensor([0.0, 1.0]), 4).shape
    torch.Size([2, 4])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s zero init)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h, emb):
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.time(F.silu(emb))[:, :, None, None]
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return self.skip(h) + out


class _Attention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv, self.out = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h, emb=None):
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, c, hh * ww).unbind(1)  # (B, C, HW) each
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return h + self.out(out.transpose(1, 2).reshape(b, c, hh, ww))


class UNet(nn.Module):
    r"""U-Net for (C, H, W) images, H and W divisible by 2^(len(multipliers) - 1).

    Parameters
    ----------
    shape : (C, H, W)
    channels : int
        Base width; level i has ``channels * multipliers[i]``.
    multipliers : sequence of int
    num_blocks : int
        Residual blocks per level (the decoder has one more, taking the skip connection).
    attention : bool
        Self-attention after each block at the coarsest level.
    dropout : float
    out_channels : int, optional
        Output channels (default C).
    fourier : sequence of int
        Exponents n of Fourier features :math:`\sin(2^n \pi x), \cos(2^n \pi x)` of the input,
        given to the first convolution beside x (Kingma et al. 2021, Variational Diffusion Models,
        Appendix C): with n = 7, 8 on [-1, 1] images of 8-bit levels they vary within a level's width
        (2 / 255 ~ 2^-7), so the network can tell where between two levels a barely noisy pixel lies,
        which a likelihood needs at the smallest noise levels. Default none.

    Examples
    --------
    >>> net = UNet((1, 28, 28), channels=8)
    >>> net(torch.zeros(2, 784), torch.tensor([1, 5])).shape
    torch.Size([2, 784])
    """

    def __init__(self, shape: Sequence[int], channels: int = 32, multipliers: Sequence[int] = (1, 2, 2),
                 num_blocks: int = 1, attention: bool = True, dropout: float = 0.0, out_channels: int | None = None,
                 fourier: Sequence[int] = ()):
        super().__init__()
        c, h, w = shape
        channels = positive_int(channels, "channels")
        if not multipliers or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in multipliers):
            raise ValueError(f"multipliers must be a non-empty sequence of positive ints, got {multipliers!r}")
        if out_channels is not None:
            positive_int(out_channels, "out_channels")
        factor = 2 ** (len(multipliers) - 1)
        if h % factor or w % factor:
            raise ValueError(f"the U-Net halves the image {len(multipliers) - 1} times: H and W must be divisible by "
                             f"{factor}, got shape {tuple(shape)}")
        if isinstance(fourier, (str, bytes)) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                         for n in fourier):
            raise ValueError(f"fourier must be a sequence of int exponents, got {fourier!r}")
        self.shape, self.out_channels, self.fourier = (c, h, w), out_channels or c, tuple(fourier)
        t_dim = 4 * channels
        self.embed_dim = channels
        self.time = nn.Sequential(nn.Linear(channels, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(c * (1 + 2 * len(self.fourier)), channels, 3, padding=1)
        widths = [channels * m for m in multipliers]
        self.down, skips, width = nn.ModuleList(), [channels], channels
        for level, out in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(_ResBlock(width, out, t_dim, dropout))
                width = out
                if attention and level == len(widths) - 1:
                    blocks.append(_Attention(width))
                skips.append(width)
            if level < len(widths) - 1:
                blocks.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
            self.down.append(blocks)
        self.middle = nn.ModuleList([_ResBlock(width, width, t_dim, dropout)]
                                    + ([_Attention(width)] if attention else [])
                                    + [_ResBlock(width, width, t_dim, dropout)])
        self.up = nn.ModuleList()
        for level, out in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_blocks + 1):
                blocks.append(_ResBlock(width + skips.pop(), out, t_dim, dropout))
                width = out
                if attention and level == len(widths) - 1:
                    blocks.append(_Attention(width))
            if level > 0:
                blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                blocks.append(nn.Conv2d(width, width, 3, padding=1))
            self.up.append(blocks)
        self.head = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(),
                                  nn.Conv2d(width, self.out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C*H*W) rows, ``t`` (B,) steps: (B, out_channels*H*W)."""
        batch = x.shape[0]
        emb = self.time(timestep_embedding(t, self.embed_dim, dtype=self.stem.weight.dtype))
        x = x.reshape(batch, *self.shape)
        if self.fourier:
            angles = torch.cat([(2.0 ** n * math.pi) * x for n in self.fourier], 1)
            x = torch.cat([x, angles.sin(), angles.cos()], 1)
        h = self.stem(x)
        stack = [h]
        for blocks in self.down:
            for block in blocks:
                if isinstance(block, _Attention):  # the skip carries the attended features
                    h = stack[-1] = block(h, emb)
                else:
                    h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
                    stack.append(h)
        for block in self.middle:
            h = block(h, emb)
        for blocks in self.up:
            for block in blocks:
                if isinstance(block, _ResBlock):
                    h = block(torch.cat([h, stack.pop()], dim=1), emb)
                elif isinstance(block, _Attention):
                    h = block(h, emb)
                else:
                    h = block(h)
        return self.head(h).reshape(batch, -1)


class TimeMLP(nn.Module):
    """MLP on rows: ``[x, emb(t)] -> hidden -> ... -> out_dim`` with SiLU, the step embedding also
    added to every hidden layer.

    >>> TimeMLP(4, 4, hidden=(8, 8))(torch.zeros(3, 4), torch.tensor([1, 2, 3])).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (512, 512), embed_dim: int = 64):
        super().__init__()
        self.embed_dim = embed_dim
        widths = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.times = nn.ModuleList(nn.Linear(embed_dim, b) for b in widths[1:])
        self.head = nn.Linear(widths[-1], out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.embed_dim, dtype=self.head.weight.dtype)
        h = x
        for layer, time in zip(self.layers, self.times):
            h = F.silu(layer(h) + time(emb))
        return self.head(h)
