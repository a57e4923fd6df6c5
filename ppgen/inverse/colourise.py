"""The regression baseline for colourisation: one answer per grey image, trained with MSE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import image_shape, positive_int
from ppgen.inverse.operators import Greyscale, Operator

__all__ = ["ColourRegression", "fit_colour_regression"]


class ColourRegression(nn.Module):
    """A small CNN mapping grey rows (N, H*W) to colour rows (N, C*H*W), trained with MSE.

    Its single answer estimates the conditional mean E[colour | grey], the average of every
    plausible colouring: where colour is ambiguous it is muddy. It is a
    :class:`~ppgen.inverse.restoration.Restorer` (the same answer ``num_samples`` times), so
    :func:`restore` and :func:`sample_diversity` compare it with the generative models.
    """

    def __init__(self, shape: Sequence[int] = (3, 28, 28), hidden: int = 16):
        super().__init__()
        self.shape = image_shape(shape, min_channels=2)
        positive_int(hidden, "hidden")
        self.net = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, self.shape[0], 1), nn.Sigmoid())

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        _, height, width = self.shape
        return self.net(grey.reshape(-1, 1, height, width)).reshape(grey.shape[0], -1)

    @torch.no_grad()
    def restore(self, y: torch.Tensor, operator: Operator, num_samples: int) -> tuple[torch.Tensor, str]:
        """Its one answer for the grey rows ``y`` (N, H*W), ``num_samples`` times: (S, N, C*H*W)."""
        if not isinstance(operator, Greyscale) or operator.shape != self.shape:
            raise ValueError(f"ColourRegression cannot restore for {operator!r}: it colourises "
                             f"Greyscale(shape={self.shape}) measurements")
        return self(y).expand(num_samples, -1, -1), "MSE regression (one answer: the conditional mean)"


def fit_colour_regression(x_colour: torch.Tensor, *, shape: Sequence[int] = (3, 28, 28), epochs: int = 5,
                          batch_size: int = 64, lr: float = 3e-3, hidden: int = 16, seed: int = 0) -> ColourRegression:
    """Train a :class:`ColourRegression` with MSE on (Greyscale(x), x) pairs of the colour rows ``x_colour``.

    Adam, ``epochs`` passes in minibatches, everything seeded by ``seed``; returns the module in
    eval mode.
    """
    operator = Greyscale(shape)
    x_colour = operator.check_rows(x_colour, operator.in_dim, "x_colour")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        positive_int(value, name)
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
