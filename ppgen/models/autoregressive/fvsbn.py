"""The fully visible sigmoid belief network: one logistic regression per pixel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper, describe_order, resolve_order

__all__ = ["FVSBN"]


class FVSBN(AutoregressiveModel):
    r"""Fully visible sigmoid belief network over D binary pixels.

    Generative story, in the ordering o:

    .. math::
        p(x) = \prod_{i=1}^{D} p(x_{o(i)} \mid x_{o(<i)}), \qquad
        p(x_d = 1 \mid x_{o(<\mathrm{rank}(d))}) = \sigma\Big(b_d + \sum_{j:\ \mathrm{rank}(j) <
        \mathrm{rank}(d)} W_{dj} x_j\Big),

    i.e. a logistic regression of each pixel on the pixels before it: W is strictly lower
    triangular once rows and columns are permuted into the ordering. D(D + 1) / 2 parameters
    (307,720 for 28x28 images): the D(D - 1) / 2 free entries of W and the D biases b.

    References: R. M. Neal, "Connectionist learning of belief networks", Artificial
    Intelligence 56, 1992; B. Frey, "Graphical Models for Machine Learning and Digital
    Communication", MIT Press 1998; H. Larochelle and I. Murray, "The Neural Autoregressive
    Distribution Estimator", AISTATS 2011 (binarized MNIST: 97.45 nats).

    Parameters
    ----------
    x_dim : int
        Number of binary pixels D.
    order : "natural", "random" or a permutation of range(D)
        The ordering o (``order[i]`` is the i-th pixel).
    seed : int
        Seeds the random ordering.

    Examples
    --------
    >>> model = FVSBN(3)
    >>> model.num_parameters
    6
    >>> round(model.log_prob(torch.zeros(1, 3)).item(), 4)  # all logits 0 at first: 3 fair coins
    -2.0794
    """

    def __init__(self, x_dim: int, order: str | Sequence[int] = "natural", seed: int = 0):
        super().__init__(x_dim)
        order = resolve_order(order, x_dim, torch.Generator().manual_seed(seed))
        self.register_buffer("orders", order[None])  # (1, D)
        # the strictly lower triangle in the ordering, as (row, column) pixel indices
        rows, cols = torch.tril_indices(x_dim, x_dim, offset=-1)
        self.register_buffer("_flat_index", order[rows] * x_dim + order[cols], persistent=False)
        self.weight = nn.Parameter(torch.zeros(len(rows)))
        self.bias = nn.Parameter(torch.zeros(x_dim))

    @property
    def weight_matrix(self) -> torch.Tensor:
        """W (D, D) with zeros where pixel j does not precede pixel d (indexed by pixel, not rank)."""
        w = self.weight.new_zeros(self.x_dim * self.x_dim)
        return w.index_copy(0, self._flat_index, self.weight).view(self.x_dim, self.x_dim)

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.bias + x @ self.weight_matrix.T  # (N, D)

    def _stepper(self, n: int, k: int) -> Stepper:
        w, order = self.weight_matrix, self.orders[k]
        return lambda x, i: self.bias[order[i]] + x @ w[order[i]]

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, order={describe_order(self.orders[0])}"
