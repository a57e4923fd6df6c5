"""PixelCNN of van den Oord et al. (2016): masked convolutions over an image in raster order, with one
Bernoulli logit per pixel (:class:`PixelCNN`, binary images) or a softmax over grey levels (:class:`GreyPixelCNN`)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import integer, positive_int, positive_number
from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, at_least_float32, num_rows, progress_bar

__all__ = ["PixelCNN", "GreyPixelCNN", "MaskedConv2d"]


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


def check_stack(channels: int, layers: int, kernel: int, height: int, width: int, gated: bool) -> None:
    """Refuse arguments of a PixelCNN's masked stack, naming the one that is wrong."""
    for value, name in ((channels, "channels"), (layers, "layers"), (height, "height"), (width, "width")):
        positive_int(value, name)
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd int, got {kernel!r}")
    if gated and layers < 2:
        raise ValueError(f"the gated PixelCNN needs layers >= 2 (the vertical stack reaches the output "
                         f"through a gated layer), got {layers}")


class MaskedStack:
    """The network of both PixelCNNs, a mixin for a module: masked convolutions from an image (N, 1, rows, W)
    to ``outputs`` maps (N, outputs, rows, W) whose pixel (r, c) sees only the pixels before it in raster order
    (see :class:`PixelCNN` for the two stacks)."""

    def _build_stack(self, channels: int, layers: int, kernel: int, height: int, width: int, gated: bool,
                     outputs: int, seed: int) -> None:
        self.channels, self.num_layers, self.kernel = channels, layers, kernel
        self.height, self.width, self.gated = height, width, gated
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
                                      nn.Conv2d(channels, outputs, 1))

    def _logit_map(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, outputs, rows, W) of every pixel of ``image`` (N, 1, rows, W)."""
        if self.gated:
            v, h = self.first_v(image), self.first_h(image)
            for block in self.blocks:
                v, h = block(v, h)
        else:
            h = self.first(image)
            for block in self.blocks:
                h = h + block(torch.relu(h))
        return self.head(h)

    def _pixel_logits(self, image: torch.Tensor, i: int) -> torch.Tensor:
        """The logits (N, outputs) of pixel i of ``image`` (N, 1, H, W), computed on the rows that reach it."""
        row, col = divmod(i, self.width)
        top = max(0, row - self.reach)
        return self._logit_map(image[:, :, top:row + 1])[:, :, -1, col]  # a window (N, 1, rows, W) in

    def _stack_repr(self) -> str:
        return (f"height={self.height}, width={self.width}, channels={self.channels}, layers={self.num_layers}, "
                f"kernel={self.kernel}, gated={self.gated}")


class PixelCNN(MaskedStack, AutoregressiveModel):
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
        check_stack(channels, layers, kernel, height, width, gated)
        super().__init__(height * width)
        self.register_buffer("orders", torch.arange(height * width)[None])  # (1, D): raster order
        self._build_stack(channels, layers, kernel, height, width, gated, outputs=1, seed=seed)

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self._logit_map(x.reshape(-1, 1, self.height, self.width)).reshape(-1, self.x_dim)

    def _stepper(self, n: int, k: int) -> Stepper:
        return lambda x, i: self._pixel_logits(x.reshape(n, 1, self.height, self.width), i)[:, 0]

    def extra_repr(self) -> str:
        return self._stack_repr()


class GreyPixelCNN(MaskedStack, GenerativeModel):
    r"""PixelCNN over ``height`` x ``width`` pixels of ``levels`` grey levels, a softmax per pixel, in raster order.

    Generative story, with pixels flattened row-major (d = row * width + column) and
    :math:`x_d \in \{0, \dots, L - 1\}` for L = ``levels``:

    .. math::
        p(x) = \prod_{d=1}^{HW} \mathrm{Categorical}\big(x_d \mid \mathrm{softmax}(f_\theta(\tilde x)_d)\big),
        \qquad \tilde x = \frac{2 x}{L - 1} - 1,

    where :math:`f_\theta` is :class:`PixelCNN`'s masked stack (gated or plain, the same layers) on the image
    scaled to [-1, 1], whose 1 x 1 head ends in L logits per pixel; output d sees only the pixels
    before d. The likelihood is exact and discrete: ``log_prob`` is log P(x), the log-probability of the
    integer levels (bits/dim = -log2 P(x) / HW), not a density of dequantized pixels x + u, whose
    expectation E_u log p(x + u) (a flow's figure) bounds log P(x) from below. Parameters: the
    convolution weights and biases (``num_parameters``; the head's last layer holds (channels + 1) L).

    Sampling draws pixel by pixel, running the network on the rows that can influence each pixel
    (the last ``kernel // 2 + layers - 1`` rows above and the current row).

    References: A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu, "Pixel Recurrent Neural
    Networks", ICML 2016 (MNIST is binarized there; with a 256-way softmax per sub-pixel the PixelCNN
    reaches 3.14 bits/dim on CIFAR-10); A. van den Oord et al., "Conditional Image Generation with
    PixelCNN Decoders", NeurIPS 2016 (the gated stack).

    Parameters
    ----------
    levels : int
        L >= 2, the grey levels (256 for 8-bit images); rows hold whole numbers 0..L-1 as floats.
    channels, layers, kernel, height, width, gated :
        The masked stack, as for :class:`PixelCNN`.
    seed : int
        Seeds the initial weights.

    Examples
    --------
    >>> model = GreyPixelCNN(levels=4, channels=8, layers=2, kernel=3, height=3, width=3)
    >>> x = model.sample(2)
    >>> x.shape, bool(((x >= 0) & (x <= 3) & (x == x.round())).all()), model.log_prob(x).shape
    (torch.Size([2, 9]), True, torch.Size([2]))
    """

    has_exact_likelihood = True
    data_support = "categorical"  # whole grey levels 0..levels-1 as floats, checked by check_data below

    def __init__(self, levels: int = 256, channels: int = 32, layers: int = 5, kernel: int = 5, height: int = 28,
                 width: int = 28, gated: bool = True, seed: int = 0):
        integer(levels, "levels", minimum=2)
        check_stack(channels, layers, kernel, height, width, gated)
        super().__init__(height * width)
        self.levels = levels
        self._build_stack(channels, layers, kernel, height, width, gated, outputs=levels, seed=seed)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of levels (N, D) as images scaled to [-1, 1], (N, 1, H, W)."""
        return (x / (self.levels - 1) * 2 - 1).reshape(-1, 1, self.height, self.width)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (N, D, L): ``[:, d]`` are the logits of x_d given the pixels before d."""
        return self._logit_map(self._image(x)).permute(0, 2, 3, 1).reshape(-1, self.x_dim, self.levels)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)) as rows:
            if x is not None:
                logits = at_least_float32(self.conditional_logits(x))  # (N, D, L)
                return pyro.sample(OBSERVED_SITE, dist.Categorical(logits=logits).to_event(1), obs=x)
            x = self._sequential(len(rows), sites=True)
            return pyro.deterministic(OBSERVED_SITE, x, event_dim=1)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log P(x) per row (N,) in nats: the sum over pixels of log-softmax(logits)[x_d]."""
        x = self.check_data(x)
        log_p = F.log_softmax(at_least_float32(self.conditional_logits(x)), -1)  # (N, D, L)
        return log_p.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, temperature: float = 1.0,
               progress=False) -> torch.Tensor:
        """``n`` rows (n, D) of levels (floats) drawn pixel by pixel. ``temperature`` divides the logits
        (below 1: sharper than the model). ``progress``: True shows a bar over the pixels, a callable
        gets ``(done, total)``."""
        n = positive_int(n, "n")
        temperature = positive_number(temperature, "temperature")
        bar = progress_bar(self.x_dim, progress, "pixels")
        rows = self._sequential(n, temperature=temperature, bar=bar)
        bar.close()
        return rows

    def _sequential(self, n: int, *, sites: bool = False, temperature: float = 1.0, bar=None) -> torch.Tensor:
        """Draw ``n`` rows pixel by pixel; with ``sites``, as Pyro sites ``"x_{d}"`` (the program's story)."""
        x = torch.zeros(n, self.x_dim, dtype=self.dtype, device=self.device)
        for d in range(self.x_dim):
            logits = at_least_float32(self._pixel_logits(self._image(x), d))  # (n, L)
            if sites:
                value = pyro.sample(f"x_{d}", dist.Categorical(logits=logits))
            else:
                value = torch.multinomial(F.softmax(logits / temperature, -1), 1).squeeze(-1)
            x = x.index_copy(1, torch.tensor([d], device=x.device), value[:, None].to(x.dtype))
            if bar is not None:
                bar.update()
        return x

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        """``x`` as rows (N, H * W) of whole grey levels 0..L-1 in the model's dtype, or raise naming what
        is wrong (floats only, as for every image model: convert integer levels with ``.float()``)."""
        x = super().check_data(x, name)
        off = (x != x.round()) | (x < 0) | (x > self.levels - 1)
        if off.any():
            row, col = (int(i) for i in off.nonzero()[0])
            raise ValueError(f"{name} must hold whole grey levels 0..{self.levels - 1} for "
                             f"{type(self).__name__}(levels={self.levels}); found {x[row, col].item():g} at row "
                             f"{row}, column {col}")
        return x

    def extra_repr(self) -> str:
        return f"levels={self.levels}, {self._stack_repr()}"
