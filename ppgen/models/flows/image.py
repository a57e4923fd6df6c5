"""Multi-scale image flows: RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018)."""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
from torch import nn

from ppgen.checks import image_shape_of, positive_int
from ppgen.models.flows.base import Flow
from ppgen.models.flows.layers import ActNorm, Bijection, Coupling, InvertibleConv1x1, Squeeze

__all__ = ["MultiScaleFlow", "RealNVP", "Glow"]


class MultiScaleFlow(Flow):
    """Levels of invertible layers on (C, H, W) images; after every level but the last, half the
    channels are factored out (they go straight to the latent, Gaussian), and the next level
    works on the other half (Dinh et al. 2017, Sec. 3.6). Subclasses fill ``self.levels``.

    ``factor_out`` says which half: ``"second"`` (the default), the channels the level's last
    coupling moved, as Dinh et al. and Kingma & Dhariwal factor out; ``"first"``, the half that
    only conditioned it, is what ppgen did before 2026-12-07 (0.22-0.31 bits/dim worse over 800 steps
    in ``benchmarks/RESULTS.md``); checkpoints written then load only into a model built with it."""

    legacy_arguments = types.MappingProxyType({"factor_out": "first"})

    def __init__(self, x_dim: int, shape=None, num_levels: int | None = 256, alpha: float = 1e-6,
                 factor_out: str = "second"):
        super().__init__(x_dim, num_levels, alpha)
        if factor_out not in ("first", "second"):
            raise ValueError(f"factor_out must be 'first' or 'second', got {factor_out!r}")
        self.factor_out = factor_out
        self.shape = image_shape_of(x_dim, shape)
        self.levels = nn.ModuleList()
        self._latent_shapes: list[tuple[int, int, int]] = []  # factored-out parts, then the last level's output

    def add_level(self, layers: Sequence[Bijection], out_shape: tuple[int, int, int], split: bool) -> tuple:
        """Append a level whose layers map to ``out_shape``, half of whose channels are factored out after it
        if ``split``; returns the shape the next level sees."""
        self.levels.append(nn.ModuleList(layers))
        c, h, w = out_shape
        if not split:
            self._latent_shapes.append(out_shape)
            return out_shape
        if c < 2:
            raise ValueError(f"cannot factor out half of {c} channel(s); use fewer scales")
        self._latent_shapes.append((c // 2, h, w))
        return (c - c // 2, h, w)

    def transform(self, h):
        h = h.reshape(h.shape[0], *self.shape)
        logdet, parts = h.new_zeros(h.shape[0]), []
        for i, level in enumerate(self.levels):
            for layer in level:
                h, more = layer(h)
                logdet = logdet + more
            if i < len(self.levels) - 1:
                factored, h = self._split(h, self._latent_shapes[i][0])
                parts.append(factored.flatten(1))
        parts.append(h.flatten(1))
        return torch.cat(parts, 1), logdet

    def _split(self, h, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the k factored-out channels of h, the rest)."""
        if self.factor_out == "first":
            return h[:, :k], h[:, k:]
        return h[:, h.shape[1] - k:], h[:, :h.shape[1] - k]

    def _factor_out_repr(self) -> str:
        return "" if self.factor_out == "second" else f", factor_out={self.factor_out!r}"

    def untransform(self, z):
        sizes = [c * h * w for c, h, w in self._latent_shapes]
        parts = [p.reshape(z.shape[0], *shape) for p, shape in zip(z.split(sizes, 1), self._latent_shapes)]
        h = parts[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([parts[i], h] if self.factor_out == "first" else [h, parts[i]], 1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        return h.reshape(z.shape[0], -1)


class RealNVP(MultiScaleFlow):
    r"""RealNVP: affine couplings with checkerboard and channel masks, squeezes and factor-out.

    Generative story: :math:`z \sim \mathcal{N}(0, I_D)`, :math:`x = f^{-1}(z)`, where f is the
    logit pre-processing followed by ``num_scales`` scales. Each scale but the last is three
    checkerboard couplings (alternating masks), a squeeze (C, H, W) -> (4C, H/2, W/2), three
    channel couplings, and factoring out the half of the channels the last of them moved
    (``factor_out``, see :class:`MultiScaleFlow`); the last scale is four checkerboard
    couplings. Each coupling is :math:`z_b = x_b e^{s(x_a)} + t(x_a)` with s, t from a
    convolutional residual network (``blocks`` blocks of width ``hidden``); log p(x) is exact by
    the change of variables. Parameters: the coupling networks and per-channel scales
    (``num_parameters``).

    Differences from the paper: no batch normalisation (the tanh-bounded scales and zero-
    initialised last convolutions keep training stable), and alpha = 0.05 as in the paper's
    logit pre-processing. ``checkerboard="packed"`` gives each checkerboard coupling's network only
    the kept pixels, packed into a half-width image (normflows' split): half the convolutions' work,
    with 3x3 neighbourhoods skewed by a pixel on alternate rows; the default ``"masked"`` is the
    paper's (the whole image, the moved pixels zeroed). Packing needs an even width at every scale.

    References: L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using Real NVP",
    ICLR 2017. MNIST with uniform dequantization: 1.06 bits/dim (as listed in Grathwohl et al.
    2019, Table 2).

    Examples
    --------
    >>> flow = RealNVP(784, num_scales=2, hidden=8, blocks=1)
    >>> flow.sample(2, temperature=0.7).shape
    torch.Size([2, 784])
    >>> x = flow.sample(3)
    >>> torch.allclose(flow.decode(flow.encode(x)), x, atol=1e-2)
    True
    """

    def __init__(self, x_dim: int = 784, shape: Sequence[int] | None = None, num_scales: int = 2,
                 hidden: int = 64, blocks: int = 2, num_levels: int | None = 256, alpha: float = 0.05,
                 checkerboard: str = "masked", factor_out: str = "second"):
        super().__init__(x_dim, shape, num_levels, alpha, factor_out)
        positive_int(num_scales, "num_scales"), positive_int(hidden, "hidden"), positive_int(blocks, "blocks")
        if checkerboard not in ("masked", "packed"):
            raise ValueError(f"checkerboard must be 'masked' or 'packed', got {checkerboard!r}")
        self.num_scales, self.hidden, self.blocks, self.checkerboard = num_scales, hidden, blocks, checkerboard
        c, h, w = self.shape
        packed = checkerboard == "packed"

        def boards(n: int, width: int) -> list[Coupling]:
            if packed and width % 2:
                raise ValueError(f"checkerboard='packed' needs an even width at every scale; {num_scales} scales "
                                 f"of {self.shape} reach width {width} (use checkerboard='masked')")
            return [Coupling(c, ("checkerboard", "checkerboard_flipped")[i % 2], hidden, blocks, packed=packed)
                    for i in range(n)]

        for scale in range(num_scales - 1):
            layers = boards(3, w) + [Squeeze()]
            c, h, w = 4 * c, h // 2, w // 2
            layers += [Coupling(c, ("channel", "channel_flipped")[i % 2], hidden, blocks) for i in range(3)]
            c, h, w = self.add_level(layers, (c, h, w), split=True)
            if h < 1 or w < 1:
                raise ValueError(f"{num_scales} scales squeeze {self.shape} below one pixel")
        self.add_level(boards(4, w), (c, h, w), split=False)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, num_scales={self.num_scales}, hidden={self.hidden}, blocks={self.blocks}"
                + (", checkerboard='packed'" if self.checkerboard == "packed" else "") + self._factor_out_repr())


class Glow(MultiScaleFlow):
    r"""Glow: levels of [squeeze, K x (actnorm, invertible 1x1 conv, coupling), split].

    Generative story: :math:`z \sim \mathcal{N}(0, I_D)`, :math:`x = f^{-1}(z)`, f the logit
    pre-processing followed by ``levels`` levels. Each level squeezes (C, H, W) -> (4C, H/2,
    W/2) and applies ``steps`` steps of flow: actnorm (per-channel affine, initialised from the
    first batch to zero mean and unit variance), an invertible 1x1 convolution in LU form
    (log|det| = H W sum log|diag U|), and an affine or additive coupling over half the
    channels (network: ``blocks`` residual blocks of width ``hidden``, last layer zero-
    initialised); every level but the last factors out the half of the channels its last coupling
    moved (``factor_out``, see :class:`MultiScaleFlow`). The coupling's scale is the paper's code's
    sigmoid(h + 2) (``scale_map="sigmoid"``, the default since 2026-12-07), or RealNVP's tanh-bounded
    one (``"tanh"``, ppgen's before, which learns bits/dim faster early on but samples worse digits:
    FID 317 against 200 after 1,600 steps in ``benchmarks/RESULTS.md``); checkpoints written before
    load only into a model built with ``scale_map="tanh", factor_out="first"``.

    Differences from the paper: the factored-out halves have a standard normal prior (Glow
    learns a conditional one).

    References: D. P. Kingma and P. Dhariwal, "Glow: Generative Flow with Invertible 1x1
    Convolutions", NeurIPS 2018. MNIST with uniform dequantization: 1.05 bits/dim (as listed
    in Grathwohl et al. 2019, Table 2).

    Examples
    --------
    >>> Glow(784, levels=2, steps=2, hidden=8, blocks=1).sample(2).shape
    torch.Size([2, 784])
    """

    legacy_arguments = types.MappingProxyType({**MultiScaleFlow.legacy_arguments, "scale_map": "tanh"})

    def __init__(self, x_dim: int = 784, shape: Sequence[int] | None = None, levels: int = 2, steps: int = 4,
                 hidden: int = 64, blocks: int = 1, affine: bool = True, num_levels: int | None = 256,
                 alpha: float = 0.05, factor_out: str = "second", scale_map: str = "sigmoid"):
        super().__init__(x_dim, shape, num_levels, alpha, factor_out)
        for value, name in ((levels, "levels"), (steps, "steps"), (hidden, "hidden"), (blocks, "blocks")):
            positive_int(value, name)
        self.num_flow_levels, self.steps, self.hidden, self.blocks, self.affine = levels, steps, hidden, blocks, affine
        self.scale_map = scale_map
        c, h, w = self.shape
        for level in range(levels):
            if h % 2 or w % 2:
                raise ValueError(f"level {level + 1} of {levels} cannot squeeze a {h}x{w} image; use fewer levels")
            c, h, w = 4 * c, h // 2, w // 2
            layers: list[Bijection] = [Squeeze()]
            for step in range(steps):
                layers += [ActNorm(c), InvertibleConv1x1(c),
                           Coupling(c, "channel", hidden, blocks, affine, scale_map=scale_map)]
            c, h, w = self.add_level(layers, (c, h, w), split=level < levels - 1)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, levels={self.num_flow_levels}, steps={self.steps}, hidden={self.hidden}, "
                f"affine={self.affine}" + self._factor_out_repr()
                + (f", scale_map={self.scale_map!r}" if self.affine and self.scale_map != "sigmoid" else ""))
