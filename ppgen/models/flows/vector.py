"""Flows on vectors: the masked autoregressive flow and the neural spline flow, built on zuko.

zuko (Rozet et al.) supplies the autoregressive transforms; ppgen supplies the protocol (the
Pyro program, dequantized pixels in logit space, temperature sampling). Why zuko and not
``pyro.distributions.transforms``: see ``benchmarks/flow_libraries.py`` and the RESULTS section
"Normalizing flows" (exact log-determinants in both; zuko trains faster here, needs no hidden
width >= D, has the density direction as its native one, and is where Pyro's maintainers point
new flow work, bridged by ``pyro.contrib.zuko``).
"""

from __future__ import annotations

from collections.abc import Sequence

import zuko

from ppgen.checks import positive_int
from ppgen.models.flows.base import Flow

__all__ = ["MAF", "NSF"]


def _widths(hidden) -> tuple[int, ...]:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a positive int or a sequence of them, got {hidden!r}")
    return hidden


class _ZukoFlow(Flow):
    def transform(self, h):
        z, ladj = self.net.transform().call_and_ladj(h)
        return z, ladj

    def untransform(self, z):
        return self.net.transform().inv(z)


class MAF(_ZukoFlow):
    r"""Masked autoregressive flow: a stack of autoregressive affine maps, each a MADE.

    Generative story: :math:`u \sim \mathcal{N}(0, I_D)` and, layer by layer in an ordering
    that reverses between layers, :math:`x_i = u_i \exp(\alpha_i) + \mu_i` with
    :math:`(\mu_i, \alpha_i) = g(x_{<i})` from a MADE with ``hidden`` widths. Density evaluation
    is one pass per layer; sampling is sequential (D passes per layer). On pixels the data
    first go through the logit pre-processing (alpha = 1e-6, as in the paper).

    References: G. Papamakarios, T. Pavlakou and I. Murray, "Masked Autoregressive Flow for
    Density Estimation", NeurIPS 2017 (MNIST, dequantized, logit space: 1.89 bits/dim as listed
    in Grathwohl et al. 2019, Table 2).

    Parameters
    ----------
    x_dim : int
    transforms : int
        Autoregressive layers.
    hidden : int or sequence of int
        Hidden widths of each layer's MADE.
    num_levels : int or None
        256 for 8-bit pixels (dequantized, in pixel units), None for real-valued data.

    Examples
    --------
    >>> import torch
    >>> maf = MAF(3, transforms=2, hidden=16, num_levels=None)
    >>> maf.log_prob(torch.zeros(4, 3)).shape, maf.sample(5).shape
    (torch.Size([4]), torch.Size([5, 3]))
    """

    def __init__(self, x_dim: int, transforms: int = 5, hidden: int | Sequence[int] = (512, 512),
                 num_levels: int | None = 256, alpha: float = 1e-6):
        super().__init__(x_dim, num_levels, alpha)
        self.hidden, self.transforms = _widths(hidden), positive_int(transforms, "transforms")
        self.net = zuko.flows.MAF(x_dim, transforms=transforms, hidden_features=self.hidden)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, transforms={self.transforms}, hidden={self.hidden}, num_levels={self.num_levels}"


class NSF(_ZukoFlow):
    r"""Neural spline flow: autoregressive monotonic rational-quadratic splines.

    As :class:`MAF`, with each affine map replaced by a rational-quadratic spline of ``bins``
    bins on [-5, 5] (identity outside) whose knots come from a MADE of ``x_{<i}``.

    The splines bend only inside [-5, 5], so on pixels the logit pre-processing must keep the
    levels there: its default alpha here is 0.01 (levels in ±4.6), not MAF's 1e-6, which sends
    them to ±13.8 (a digit's background below -5.5, where the splines are the identity). With
    alpha = 1e-6, ``NSF(784, transforms=2, hidden=[64], bins=4)`` scored 27 bits/dim on grey
    digits, worse than the 8 of a uniform model; with 0.01 it scored 2.1 on the same budget
    (``benchmarks/RESULTS.md``).

    References: C. Durkan, A. Bekasov, I. Murray and G. Papamakarios, "Neural Spline Flows",
    NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> NSF(3, transforms=2, hidden=16, num_levels=None).log_prob(torch.zeros(4, 3)).shape
    torch.Size([4])
    """

    def __init__(self, x_dim: int, transforms: int = 5, hidden: int | Sequence[int] = (512, 512), bins: int = 8,
                 num_levels: int | None = 256, alpha: float = 0.01):
        super().__init__(x_dim, num_levels, alpha)
        self.hidden, self.transforms, self.bins = _widths(hidden), positive_int(transforms, "transforms"), \
            positive_int(bins, "bins")
        self.net = zuko.flows.NSF(x_dim, bins=bins, transforms=transforms, hidden_features=self.hidden)

    def extra_repr(self) -> str:
        return (f"x_dim={self.x_dim}, transforms={self.transforms}, hidden={self.hidden}, bins={self.bins}, "
                f"num_levels={self.num_levels}")
