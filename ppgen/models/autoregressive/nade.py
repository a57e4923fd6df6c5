"""The neural autoregressive distribution estimator of Larochelle & Murray (2011)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper, describe_order, ranks, resolve_order

__all__ = ["NADE"]

BLOCK = 4  # pixels per block of conditional_logits; 4 and 5 were fastest on binarized MNIST
ROWS_PER_CHUNK = 16


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
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        generator = torch.Generator().manual_seed(seed)
        self.hidden = hidden
        self.register_buffer("orders", resolve_order(order, x_dim, generator)[None])  # (1, D)
        self.W = nn.Parameter((torch.rand(hidden, x_dim, generator=generator) * 2 - 1) / math.sqrt(x_dim))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter((torch.rand(x_dim, hidden, generator=generator) * 2 - 1) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(x_dim))

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        # The plain cumulative sum over an (N, D, H) tensor is memory-bound (1,300 examples/s at
        # H = 100). Instead, cut the ordering into blocks of BLOCK pixels. The pre-activation at each
        # block's start is a prefix sum of per-block matrix products, and every conditional in a block
        # whose earlier pixels are all 0 shares it: those logits are one batched matrix product.
        # Only the (n, block) pairs with a 1 among the first BLOCK - 1 pixels (19% of them on
        # binarized MNIST) need their own pre-activations, looked up from a table of the 2^(BLOCK-1)
        # partial sums of W inside each block. 8x faster at H = 500 (benchmarks/RESULTS.md).
        if not ((x == 0) | (x == 1)).all():
            return self._dense_logits(x, k)  # the pattern table below holds for 0/1 pixels only
        order = self.orders[k]
        dim = x.shape[1]
        hidden, pad = self.hidden, (-dim) % BLOCK
        w_ordered = F.pad(self.W.T[order], (0, 0, 0, pad)).view(-1, BLOCK, hidden)  # (K, BLOCK, H)
        v_ordered = F.pad(self.V[order], (0, 0, 0, pad)).view(-1, BLOCK, hidden)
        # offsets[k, p, i - 1]: the sum of W over the pixels j < i of block k that are 1 in pattern p
        bit_values = 2 ** torch.arange(BLOCK - 1, device=x.device)
        patterns = (torch.arange(2 ** (BLOCK - 1), device=x.device)[:, None] & bit_values).ne(0).to(x.dtype)  # (P, BLOCK - 1)
        precedes = torch.ones(BLOCK - 1, BLOCK - 1, dtype=x.dtype, device=x.device).tril()  # [i - 1, j]: j < i
        offsets = torch.einsum("pj,ij,kjh->kpih", patterns, precedes, w_ordered[:, :-1])
        rows = []
        for chunk in F.pad(x[:, order], (0, pad)).split(ROWS_PER_CHUNK):  # chunks small enough to stay in cache
            blocks = chunk.view(len(chunk), -1, BLOCK).transpose(0, 1)  # (K, n, BLOCK)
            block_sums = torch.bmm(blocks, w_ordered)  # (K, n, H)
            starts = self.c + F.pad(block_sums[:-1].cumsum(0), (0, 0, 0, 0, 1, 0))  # pre-activation at block starts
            logits = torch.bmm(torch.sigmoid(starts), v_ordered.transpose(1, 2))  # (K, n, BLOCK), if no 1 in the block
            pattern = (blocks[:, :, :-1].long() * bit_values).sum(-1)  # (K, n)
            block, row = pattern.nonzero(as_tuple=True)
            if len(block):
                inside = starts[block, row, None] + offsets[block, pattern[block, row]]  # (pairs, BLOCK - 1, H)
                later = (torch.sigmoid(inside) * v_ordered[block, 1:]).sum(-1)
                logits = logits.index_put((block, row), torch.cat([logits[block, row, :1], later], 1))
            rows.append(logits.transpose(0, 1).reshape(len(chunk), -1)[:, :dim])
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
