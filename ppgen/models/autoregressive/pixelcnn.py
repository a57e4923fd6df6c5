"""PixelCNN of van den Oord et al. (2016): masked convolutions over a binary image in raster order."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper

__all__ = ["PixelCNN", "MaskedConv2d"]


class MaskedConv2d(nn.Conv2d):
    """A 'same' convolution whose kernel is multiplied by a fixed binary ``mask`` (kh, kw).

    Odd kernel sizes only; ``padding`` keeps the image size.
    """

    def __init__(self, in_channels: int, out_channels: int, mask: torch.Tensor):
        kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def raster_mask(kernel: int, include_centre: bool) -> torch.Tensor:
    """k x k mask keeping the positions before the centre in raster order (type A), or also the centre (B).

    >>> raster_mask(3, include_centre=False).int().tolist()
    [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    """
    mask = torch.zeros(kernel * kernel)
    mask[: kernel * kernel // 2 + include_centre] = 1
    return mask.reshape(kernel, kernel)


def vertical_mask(kernel: int, include_centre_row: bool) -> torch.Tensor:
    """k x k mask keeping the rows above the centre (and the centre row when asked)."""
    mask = torch.zeros(kernel, kernel)
    mask[: kernel // 2 + include_centre_row] = 1
    return mask


def horizontal_mask(kernel: int, include_centre: bool) -> torch.Tensor:
    """1 x k mask keeping the columns left of the centre (and the centre when asked)."""
    mask = torch.zeros(1, kernel)
    mask[0, : kernel // 2 + include_centre] = 1
    return mask


class GatedLayer(nn.Module):
    """One gated layer: a vertical stack (rows above) feeding a horizontal stack (this row, to the left).

    v' = tanh(W_v * v) . sigmoid(G_v * v);  h' = h + 1x1(tanh(W_h * h + U v_feat) . sigmoid(...)).
    """

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.vertical = MaskedConv2d(channels, 2 * channels, vertical_mask(kernel, include_centre_row=True))
        self.horizontal = MaskedConv2d(channels, 2 * channels, horizontal_mask(kernel, include_centre=True))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_feat = self.vertical(v)  # (N, 2C, H, W)
        v_val, v_gate = v_feat.chunk(2, dim=1)
        h_val, h_gate = (self.horizontal(h) + self.v_to_h(v_feat)).chunk(2, dim=1)
        return torch.tanh(v_val) * torch.sigmoid(v_gate), h + self.h_out(torch.tanh(h_val) * torch.sigmoid(h_gate))


class PixelCNN(AutoregressiveModel):
    r"""PixelCNN over a binary image of ``height`` x ``width`` pixels in raster order.

    Generative story, with pixels flattened row-major (d = row * width + column):

    .. math::
        p(x) = \prod_{d=1}^{HW} p(x_d \mid x_{<d}), \qquad
        p(x_d = 1 \mid x_{<d}) = \sigma\big(f_\theta(x)_d\big),

    where :math:`f_\theta` is a stack of convolutions whose kernels are masked so that output d
    sees only the pixels before d. ``gated=False``: a ``kernel`` x ``kernel`` type-A convolution
    (centre excluded), then ``layers - 1`` residual blocks with 3 x 3 type-B convolutions (centre
    included) and ReLU (van den Oord et al. 2016a); these leave a blind spot up and to the right
    of each pixel. ``gated=True``: the gated PixelCNN (van den Oord et al. 2016b), a vertical
    stack seeing the rows above and a horizontal stack seeing the current row to the left, joined
    by tanh x sigmoid gates; it has no blind spot. Both end in 1 x 1 convolutions to one logit per
    pixel. Parameters: the convolution weights and biases (``num_parameters``).

    Sampling runs the network once per pixel on the rows that can influence it (the last
    ``kernel // 2 + layers - 1`` rows above and the current row), not on the whole image.

    References: A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural
    Networks", ICML 2016 (binarized MNIST: 81.30 nats); A. van den Oord, N. Kalchbrenner,
    O. Vinyals, L. Espeholt, A. Graves and K. Kavukcuoglu, "Conditional Image Generation with
    PixelCNN Decoders", NeurIPS 2016.

    Parameters
    ----------
    channels : int
        Feature maps per layer.
    layers : int
        Masked convolution layers (the first one included; at least 2 when gated).
    kernel : int
        Odd size of the first layer's kernel (later layers use 3).
    height, width : int
        Image size; the model's ``x_dim`` is height * width.
    gated : bool
        Gated, blind-spot-free variant (default) or the original masked stack.
    seed : int
        Seeds the initial weights.

    Examples
    --------
    >>> model = PixelCNN(channels=8, layers=2, kernel=3, height=4, width=4)
    >>> model.x_dim, model.sample(2).shape
    (16, torch.Size([2, 16]))
    """

    def __init__(self, channels: int = 32, layers: int = 5, kernel: int = 5, height: int = 28, width: int = 28,
                 gated: bool = True, seed: int = 0):
        for value, name in ((channels, "channels"), (layers, "layers"), (height, "height"), (width, "width")):
            positive_int(value, name)
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd int, got {kernel!r}")
        if gated and layers < 2:
            raise ValueError(f"the gated PixelCNN needs layers >= 2 (the vertical stack reaches the output "
                             f"through a gated layer), got {layers}")
        super().__init__(height * width)
        self.channels, self.num_layers, self.kernel = channels, layers, kernel
        self.height, self.width, self.gated = height, width, gated
        self.register_buffer("orders", torch.arange(height * width)[None])  # (1, D): raster order
        self.reach = kernel // 2 + layers - 1  # rows above that can influence a pixel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if gated:
                self.first_v = MaskedConv2d(1, channels, vertical_mask(kernel, include_centre_row=False))
                self.first_h = MaskedConv2d(1, channels, horizontal_mask(kernel, include_centre=False))
                self.blocks = nn.ModuleList(GatedLayer(channels) for _ in range(layers - 1))
            else:
                self.first = MaskedConv2d(1, channels, raster_mask(kernel, include_centre=False))
                self.blocks = nn.ModuleList(MaskedConv2d(channels, channels, raster_mask(3, include_centre=True))
                                            for _ in range(layers - 1))
            self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                      nn.Conv2d(channels, 1, 1))

    def _logit_map(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, rows, W) of every pixel of ``image`` (N, 1, rows, W)."""
        if self.gated:
            v, h = self.first_v(image), self.first_h(image)
            for block in self.blocks:
                v, h = block(v, h)
        else:
            h = self.first(image)
            for block in self.blocks:
                h = h + block(torch.relu(h))
        return self.head(h)

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self._logit_map(x.reshape(-1, 1, self.height, self.width)).reshape(-1, self.x_dim)

    def _stepper(self, n: int, k: int) -> Stepper:
        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            row, col = divmod(i, self.width)
            top = max(0, row - self.reach)
            window = x.reshape(n, 1, self.height, self.width)[:, :, top:row + 1]  # (n, 1, rows, W)
            return self._logit_map(window)[:, 0, -1, col]

        return step

    def extra_repr(self) -> str:
        return (f"height={self.height}, width={self.width}, channels={self.channels}, layers={self.num_layers}, "
                f"kernel={self.kernel}, gated={self.gated}")
