"""The neural autoregressive distribution estimator of Larochelle & Murray (2011)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper, describe_order, ranks, resolve_order

__all__ = ["NADE"]

BLOCK = 16  # pixels per block of conditional_logits; 16 was fastest on binarized MNIST (8 and 32 within 15%)
ROWS_PER_CHUNK = 100


class NADE(AutoregressiveModel):
    r"""NADE: one hidden layer per conditional, with weights shared across the conditionals.

    Generative story, in the ordering o:

    .. math::
        p(x) = \prod_{i=1}^{D} p(x_{o(i)} \mid x_{o(<i)}), \qquad
        h_i = \sigma\big(c + W_{:, o(<i)}\, x_{o(<i)}\big), \qquad
        p(x_{o(i)} = 1 \mid x_{o(<i)}) = \sigma\big(b_{o(i)} + V_{o(i)} \cdot h_i\big).

    The pre-activations obey :math:`a_{i+1} = a_i + W_{:, o(i)} x_{o(i)}` with :math:`a_1 = c`,
    so all D conditionals cost O(DH) (a cumulative sum), not O(D^2 H). 2DH + D + H parameters
    (W: H x D, V: D x H, b: D, c: H; 785,284 for D = 784, H = 500).

    References: H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
    AISTATS 2011 (binarized MNIST, H = 500: 88.86 nats).

    Parameters
    ----------
    x_dim : int
        Number of binary pixels D.
    hidden : int
        Hidden units H.
    order : "natural", "random" or a permutation of range(D)
    seed : int
        Seeds the random ordering and the initial weights.

    Examples
    --------
    >>> NADE(784, hidden=500).num_parameters
    785284
    >>> NADE(5, hidden=3).sample(2).shape
    torch.Size([2, 5])
    """

    def __init__(self, x_dim: int, hidden: int = 500, order: str | Sequence[int] = "natural", seed: int = 0):
        super().__init__(x_dim)
        positive_int(hidden, "hidden")
        generator = torch.Generator().manual_seed(seed)
        self.hidden = hidden
        self.register_buffer("orders", resolve_order(order, x_dim, generator)[None])  # (1, D)
        self.W = nn.Parameter((torch.rand(hidden, x_dim, generator=generator) * 2 - 1) / math.sqrt(x_dim))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter((torch.rand(x_dim, hidden, generator=generator) * 2 - 1) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(x_dim))

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        # For 0/1 pixels the pre-activation a_i changes only after a pixel that is 1 (13% of binarized
        # MNIST), so an image needs about 1 + sum(x) distinct hidden vectors, not D. Cut the ordering
        # into blocks of BLOCK pixels and carry a through them. Every conditional of a block whose
        # earlier in-block pixels are all 0 uses a at the block's start: one (n, H) @ (H, BLOCK) product.
        # Each in-block 1 starts a new pre-activation, shared by the pixels after it up to the next 1:
        # one row per 1, again times V's block. Sigmoids fall from D H to about (D / BLOCK + sum(x)) H
        # per image, and the products are dense. Measured in benchmarks/nade_speed.py.
        if not ((x == 0) | (x == 1)).all():
            return self._dense_logits(x, k)  # shared pre-activations hold for 0/1 pixels only
        order = self.orders[k]
        dim = x.shape[1]
        pad = (-dim) % BLOCK
        # unbind, not indexing: each block's gradient then lands in one stacked tensor, not a zero-filled copy each
        w_blocks = F.pad(self.W.T[order], (0, 0, 0, pad)).view(-1, BLOCK, self.hidden).unbind(0)  # J x (BLOCK, H)
        v_blocks = F.pad(self.V[order], (0, 0, 0, pad)).view(-1, BLOCK, self.hidden).transpose(1, 2).unbind(0)
        within = torch.arange(BLOCK, device=x.device)
        rows = []
        for chunk in F.pad(x[:, order], (0, pad)).split(ROWS_PER_CHUNK):  # chunks small enough to stay in cache
            n = len(chunk)
            blocks = chunk.view(n, -1, BLOCK).transpose(0, 1).contiguous()  # (J, n, BLOCK)
            block, row, pos = blocks[:, :, :-1].nonzero(as_tuple=True)  # a block's last 1 only changes the next block
            counts = torch.bincount(block, minlength=len(blocks)).tolist()
            # (ones, BLOCK): the block's 1s up to each 1 (index_select: a row gather, several times faster than [])
            up_to = blocks.view(-1, BLOCK).index_select(0, block * n + row) * (within <= pos[:, None])
            a = self.c.expand(n, -1).clone()  # updated in place below: autograd saves no copy of a
            at_start, after_one = [], []
            for j, (rows_j, up_to_j) in enumerate(zip(row.split(counts), up_to.split(counts))):
                at_start.append(torch.sigmoid(a) @ v_blocks[j])  # (n, BLOCK)
                if len(rows_j):
                    after_one.append(a.index_select(0, rows_j).addmm_(up_to_j, w_blocks[j]).sigmoid_() @ v_blocks[j])
                a.addmm_(blocks[j], w_blocks[j])
            logits = torch.stack(at_start)  # (J, n, BLOCK)
            if after_one:
                # for each pixel, the latest 1 before it in its block (an index into after_one), -1 if none
                latest = torch.full_like(blocks, -1, dtype=torch.long)
                latest[block, row, pos + 1] = torch.arange(len(block), device=x.device)
                latest = latest.cummax(2).values
                shared = torch.cat(after_one).take(latest.clamp(min=0) * BLOCK + within)
                logits = torch.where(latest >= 0, shared, logits)
            rows.append(logits.transpose(0, 1).reshape(n, -1)[:, :dim])
        return (torch.cat(rows) + self.b[order])[:, ranks(order)]  # back to pixel positions

    def _dense_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        """The conditionals by one cumulative sum over an (N, D, H) tensor: any real x, slower."""
        order = self.orders[k]
        # a_i = c + sum_{j<i} W_{:, o(j)} x_{o(j)}: a cumulative sum over terms shifted by one, c first
        shifted_x = torch.cat([torch.ones_like(x[:, :1]), x[:, order[:-1]]], 1)  # (N, D)
        shifted_w = torch.cat([self.c[None], self.W.T[order[:-1]]])  # (D, H)
        a = (shifted_x[:, :, None] * shifted_w).cumsum(1)  # (N, D, H)
        logits = self.b[order] + torch.einsum("ndh,dh->nd", torch.sigmoid(a), self.V[order])
        return logits[:, ranks(order)]

    def _stepper(self, n: int, k: int) -> Stepper:
        order = self.orders[k].tolist()
        a = self.c.expand(n, -1)

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            nonlocal a
            if i > 0:
                a = a + x[:, order[i - 1], None] * self.W[:, order[i - 1]]  # (n, H)
            return self.b[order[i]] + torch.sigmoid(a) @ self.V[order[i]]

        return step

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, hidden={self.hidden}, order={describe_order(self.orders[0])}"
