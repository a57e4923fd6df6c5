"""The masked autoencoder for distribution estimation of Germain et al. (2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.autoregressive._common import AutoregressiveModel, Stepper, ranks, resolve_order

__all__ = ["MADE"]


class MADE(AutoregressiveModel):
    r"""MADE: an MLP whose weight masks make output d depend only on the inputs before d.

    Generative story, for mask (ordering and connectivity) k of K, drawn uniformly:

    .. math::
        p(x) = \frac{1}{K} \sum_{k=1}^{K} \prod_{i=1}^{D} p_k(x_{o_k(i)} \mid x_{o_k(<i)}),
        \qquad p_k(x_d = 1 \mid \cdot) = \sigma\big(f_{k}(x)_d\big),

    where :math:`f_k` is the MLP ``D -> hidden_sizes -> D`` (ReLU) with every weight matrix
    multiplied elementwise by a binary mask. Each input has degree m(d) = rank_k(d) + 1, each
    hidden unit a degree drawn uniformly from [min of the layer below, D - 1]; a hidden
    connection is kept when m(unit) >= m(input), an output connection when m(output d) >
    m(unit). So output d sees exactly the inputs that precede d in the ordering.

    With ``direct=True`` a masked linear map also joins the input straight to the output (the
    paper's direct connection): :math:`f_k(x) \mathrel{+}= (A \odot M_k)\, x` with
    :math:`M_{k,dj} = [\mathrm{rank}_k(j) < \mathrm{rank}_k(d)]`. That is an FVSBN inside the
    MADE, and the hidden layers model what its logistic regressions miss.

    With ``num_masks`` = K > 1 the Pyro program draws one mask per call (per minibatch in
    ``fit``: connectivity-agnostic training, maximising E_k log p_k(x)) and :meth:`log_prob`
    averages the K masks in probability. Parameters: the weights and biases of the MLP
    (785,284 for 784-500-784; the masks are fixed buffers, not parameters), and with ``direct=True``
    the D x D matrix A (614,656 more for D = 784, of which the masks use fewer than half).

    References: M. Germain, K. Gregor, I. Murray and H. Larochelle, "MADE: Masked Autoencoder
    for Distribution Estimation", ICML 2015 (binarized MNIST: 88.40 nats with one mask,
    86.64 with 32 masks).

    Parameters
    ----------
    x_dim : int
        Number of binary pixels D (at least 2).
    hidden_sizes : sequence of int
        Widths of the hidden layers.
    num_masks : int
        K, the masks cycled through in training and averaged at test time.
    order : "natural", "random" or a permutation of range(D)
        ``"random"`` gives each mask its own random ordering; otherwise all masks share the
        ordering and differ in their hidden connectivity.
    seed : int
        Seeds the masks, orderings and initial weights.
    direct : bool
        Add the masked direct connection from input to output (initialised to zero).

    Examples
    --------
    >>> MADE(784, hidden_sizes=(500,)).num_parameters
    785284
    >>> MADE(784, hidden_sizes=(500,), direct=True).num_parameters
    1399940
    >>> made = MADE(4, hidden_sizes=(8,), num_masks=2, order="random")
    >>> made.orders.shape, made.connectivity(0).shape
    (torch.Size([2, 4]), torch.Size([4, 4]))
    """

    def __init__(self, x_dim: int, hidden_sizes: Sequence[int] = (500,), num_masks: int = 1,
                 order: str | Sequence[int] = "natural", seed: int = 0, direct: bool = False):
        super().__init__(x_dim)
        if x_dim < 2:
            raise ValueError(f"x_dim must be at least 2 for MADE (hidden degrees lie in [1, x_dim - 1]), got {x_dim}")
        hidden_sizes = tuple(hidden_sizes)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {hidden_sizes!r}")
        positive_int(num_masks, "num_masks")
        if not isinstance(direct, bool):
            raise ValueError(f"direct must be True or False, got {direct!r}")
        generator = torch.Generator().manual_seed(seed)
        sizes = [x_dim, *hidden_sizes, x_dim]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.hidden_sizes = hidden_sizes
        self.register_parameter("direct", nn.Parameter(torch.zeros(x_dim, x_dim)) if direct else None)

        orders, masks = [], []
        for _ in range(num_masks):
            ordering = resolve_order(order, x_dim, generator)
            degrees = [ranks(ordering) + 1]  # inputs: 1..D
            for width in hidden_sizes:
                degrees.append(torch.randint(int(degrees[-1].min()), x_dim, (width,), generator=generator))
            masks.append([d_out[:, None] >= d_in[None, :] for d_in, d_out in zip(degrees[:-1], degrees[1:])]
                         + [degrees[0][:, None] > degrees[-1][None, :]])
            orders.append(ordering)
        self.register_buffer("orders", torch.stack(orders))  # (K, D)
        for layer, per_mask in enumerate(zip(*masks)):
            self.register_buffer(f"mask{layer}", torch.stack(per_mask))  # (K, out, in) bool

    def _masked_weights(self, k: int) -> list[torch.Tensor]:
        return [layer.weight * getattr(self, f"mask{l}")[k] for l, layer in enumerate(self.layers)]

    def _direct_mask(self, k: int) -> torch.Tensor:
        rank = ranks(self.orders[k])
        return rank[None, :] < rank[:, None]  # (D outputs, D inputs): input j precedes output d

    def _masked_direct(self, k: int) -> torch.Tensor | None:
        return None if self.direct is None else self.direct * self._direct_mask(k)

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        h = x
        for l, (layer, weight) in enumerate(zip(self.layers, self._masked_weights(k))):
            h = F.linear(torch.relu(h) if l else h, weight, layer.bias)
        direct = self._masked_direct(k)
        return h if direct is None else h + F.linear(x, direct)  # (N, D)

    def _stepper(self, n: int, k: int) -> Stepper:
        weights, order = self._masked_weights(k), self.orders[k].tolist()
        biases = [layer.bias for layer in self.layers]
        direct = self._masked_direct(k)

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            h = x
            for l in range(len(weights) - 1):
                h = F.linear(torch.relu(h) if l else h, weights[l], biases[l])
            d = order[i]
            logit = (torch.relu(h) if len(weights) > 1 else h) @ weights[-1][d] + biases[-1][d]
            return logit if direct is None else logit + x @ direct[d]

        return step

    @torch.no_grad()
    def connectivity(self, k: int = 0) -> torch.Tensor:
        """Which inputs can reach which outputs through mask k: bool (D outputs, D inputs)."""
        paths = getattr(self, "mask0")[k].double()
        for l in range(1, len(self.layers)):
            paths = getattr(self, f"mask{l}")[k].double() @ paths
        connected = paths > 0
        return connected if self.direct is None else connected | self._direct_mask(k)

    def extra_repr(self) -> str:
        direct = ", direct=True" if self.direct is not None else ""
        return f"x_dim={self.x_dim}, hidden_sizes={self.hidden_sizes}, num_masks={self.num_orderings}{direct}"
