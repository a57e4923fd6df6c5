"""Encoder and decoder networks shared by the latent-variable models.

Every network maps the last dimension and keeps any leading batch dimensions, so the same
decoder serves one code per example (N, z_dim) and K importance particles (K, N, z_dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["hidden_widths", "mlp", "ConvEncoder", "ConvDecoder", "IMAGE_SIDE"]

IMAGE_SIDE = 28  # the convolutional networks are for 28 x 28 images (x_dim = 784)



def hidden_widths(hidden) -> tuple[int, ...]:
    """Hidden-layer widths from an int or a list of ints, refusing anything else (a dict or a
    string would otherwise iterate into no layers at all)."""
    if isinstance(hidden, bool) or not isinstance(hidden, (int, list, tuple)):
        raise ValueError(f"hidden must be an int or a list of ints, got {hidden!r}")
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in widths):
        raise ValueError(f"hidden must be positive ints, got {hidden!r}")
    return widths

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (none after the last)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """28x28 image -> ``out_dim``: two stride-2 4x4 convolutions (28 -> 14 -> 7), then a linear layer."""

    def __init__(self, out_dim: int, channels: Sequence[int] = (32, 64)):
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = self.net(x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE))  # (B, out_dim)
        return out.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """``in_dim`` -> 28x28 logits: a linear layer to 7x7 maps, then two stride-2 transposed convolutions."""

    def __init__(self, in_dim: int, channels: Sequence[int] = (32, 64)):
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Linear(in_dim, c2 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), nn.Flatten(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))  # (B, 784)
        return out.reshape(*lead, -1)
