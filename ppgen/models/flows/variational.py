r"""Variational dequantization: a pixel flow with a learned noise density q(u | x) (Flow++).

A pixel flow's density p on :math:`[0, K)^D` gives the integer image x the mass
:math:`P(x) = \int_{[0,1)^D} p(x + u)\, du`. Uniform dequantization bounds it with
:math:`\mathbb{E}_{u \sim U} \log p(x + u)`; any density q(u | x) on the unit cell gives the bound

.. math::
    \log P(x) \;\ge\; \mathbb{E}_{u \sim q(u \mid x)} \left[\log p(x + u) - \log q(u \mid x)\right],

with equality when :math:`q(u \mid x) = p(x + u) / P(x)`, and the uniform q as the special case
(Ho, Chen, Srinivas, Duan and Abbeel 2019, Section 3.1). As a Pyro program this is a latent
variable model: u is the latent, :math:`p(x, u) = p(x + u)` its joint density (u uniform,
density 1, then the factor p(x + u)), and q(u | x) the guide. So ``ppgen.fit`` trains the flow
and q together with its ELBO, and ``ppgen.log_likelihood(..., method="iwae")`` tightens the
bound further with K importance samples (Burda et al. 2016).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import zuko
from torch.distributions import constraints

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, num_rows
from ppgen.models.flows.base import LOG_2PI, Flow, FlowDistribution
from ppgen.models.flows.dequantization import check_pixels

__all__ = ["VariationalDequantization", "CellNoise"]


class CellNoise(dist.TorchDistribution):
    r"""q(u | x) on the unit cell: :math:`u = \Phi(z)`, the standard normal CDF of z from a conditional
    zuko flow (``base``, batch shape (N,), event shape (D,), standard normal base), so that

    .. math::
        \log q(u \mid x) = \log q(z \mid x) - \sum_i \log \phi(z_i).

    With the flow at the identity, z ~ N(0, I) and u is exactly uniform: q starts at (and its family
    holds) the uniform dequantization. (Flow++ composes a sigmoid onto a logistic base: the same.)
    Phi reaches 1 in floating point (for z > 5.4 in float32), outside the cell [0, 1): ``rsample``
    returns at most the largest float below 1 there (a change below the resolution of x + u), and
    keeps log q beside the u it returns, so that ``log_prob`` of that u is exact; any other u is
    scored through :math:`z = \Phi^{-1}(u)`."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.unit_interval, 1)
    has_rsample = True

    def __init__(self, base: torch.distributions.Distribution, batch_shape=None, validate_args=None):
        self.base, self._drawn = base, None
        batch_shape = base.batch_shape if batch_shape is None else torch.Size(batch_shape)
        super().__init__(batch_shape, base.event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return CellNoise(self.base, batch_shape, validate_args=False)

    @staticmethod
    def _log_jacobian(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # log |du/dz| = sum_i log phi(z_i), per row

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        z, log_q = self.base.rsample_and_log_prob(shape[:len(shape) - len(self.base.batch_shape)])  # (..., N, D)
        u = torch.special.ndtr(z).clamp(max=1 - torch.finfo(z.dtype).eps / 2)  # the largest float below 1
        self._drawn = (u, log_q - self._log_jacobian(z))
        return u

    def log_prob(self, value):
        if self._drawn is not None and value is self._drawn[0]:
            return self._drawn[1]
        z = torch.special.ndtri(value)
        return self.base.log_prob(z) - self._log_jacobian(z)


class VariationalDequantization(GenerativeModel):
    r"""A pixel flow trained and scored with a learned dequantizer q(u | x) (Flow++'s variational
    dequantization).

    Generative story, for integer pixels x in {0, ..., K-1}^D:

    .. math::
        v \sim p_\text{flow} \text{ on } [0, K)^D, \qquad x = \lfloor v \rfloor, \qquad u = v - x,

    so :math:`p(x, u) = p_\text{flow}(x + u)` on the unit cell and :math:`P(x) = \int p(x + u)\, du`.
    Written as a Pyro model: :math:`u \sim U[0, 1]^D` (log density 0), then the factor
    :math:`\log p_\text{flow}(x + u)` at site ``"x"``. Guide: :math:`u = \Phi(z)` (the normal CDF),
    :math:`z \sim q(z \mid x)`, a zuko MAF over :math:`\mathbb{R}^D` of ``transforms`` coupling
    layers (``passes=2``: sampling and density are one pass each) whose networks of ``hidden``
    widths read the context :math:`2x/(K-1) - 1`; q is uniform with the MAF at the identity
    (:class:`CellNoise`). Its ELBO is the variational dequantization bound on log P(x) (module
    docstring), tighter than the uniform one at the optimum of q; there is no exact ``log_prob``:
    ``ppgen.log_likelihood`` reports a labelled bound (IWAE by default, its ``elbo`` beside it).

    Its parameter count is the flow's plus the dequantizer's, about ``transforms * 4 * D * hidden``
    for one hidden layer (``num_parameters`` counts them).

    References: J. Ho, X. Chen, A. Srinivas, Y. Duan and P. Abbeel, "Flow++: Improving Flow-Based
    Generative Models with Variational Dequantization and Architecture Design", ICML 2019, Section 3.1.

    Parameters
    ----------
    flow : Flow
        A pixel flow (``num_levels`` set), trained with the dequantizer; its density is in pixel units.
    transforms : int
        Coupling layers of the dequantizer's flow.
    hidden : int or sequence of int
        Hidden widths of each layer's network (keep it small: it is a means to a tighter bound).

    Examples
    --------
    >>> from ppgen.models.flows import MAF
    >>> model = VariationalDequantization(MAF(2, transforms=2, hidden=8, num_levels=4), hidden=8)
    >>> x = torch.tensor([[0.0, 3.0], [2.0, 1.0]])
    >>> u = model.noise(x).rsample()
    >>> bool(((u >= 0) & (u <= 1)).all()), model.sample(3).shape
    (True, torch.Size([3, 2]))
    """

    has_exact_likelihood = False
    data_support = "real"

    def __init__(self, flow: Flow, transforms: int = 2, hidden: int | Sequence[int] = (64,)):
        if not isinstance(flow, Flow) or flow.num_levels is None:
            raise TypeError(f"flow must be a ppgen pixel Flow (num_levels set), got {type(flow).__name__}"
                            f"{' with num_levels=None' if isinstance(flow, Flow) else ''}")
        super().__init__(flow.x_dim)
        self.flow, self.num_levels = flow, flow.num_levels
        self.transforms = positive_int(transforms, "transforms")
        self.hidden = tuple(positive_int(h, "hidden") for h in ((hidden,) if isinstance(hidden, int) else hidden))
        self.dequantizer = zuko.flows.MAF(self.x_dim, context=self.x_dim, transforms=self.transforms,
                                          hidden_features=self.hidden, passes=2)

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        """Rows of integer levels 0..K-1 (the model draws the noise u itself): dequantized rows are refused."""
        x = check_pixels(super().check_data(x, name), self.num_levels, name, dequantized=False)
        off = x != x.round()
        if off.any():
            row, col = (int(i) for i in off.nonzero()[0])
            raise ValueError(f"{name} must hold integer pixel levels 0..{self.num_levels - 1} (the model draws its "
                             f"own dequantization noise); found {x[row, col].item():g} at row {row}, column {col}")
        return x

    def noise(self, x: torch.Tensor) -> CellNoise:
        """q(u | x) for rows x (N, D) of integer levels: batch shape (N,), event shape (D,)."""
        return CellNoise(self.dequantizer(2 * x / (self.num_levels - 1) - 1))

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            if x is None:  # generating: v ~ p_flow, x = floor(v)
                v = pyro.sample("v", FlowDistribution(self.flow))
                return pyro.deterministic(OBSERVED_SITE, self._floor(v), event_dim=1)
            u = pyro.sample("u", dist.Uniform(x.new_zeros(()), x.new_ones(())).expand(x.shape).to_event(1))
            pyro.factor(OBSERVED_SITE, FlowDistribution(self.flow).log_prob(x + u))  # (..., N): log p(x + u)
            return x

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            return
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("u", self.noise(x))

    def _floor(self, v: torch.Tensor) -> torch.Tensor:
        return v.floor().clamp(max=self.num_levels - 1)  # the flow decodes into [0, K]; v = K has no mass

    @torch.no_grad()
    def sample(self, n: int, y=None, *, temperature: float = 1.0, progress=False) -> torch.Tensor:
        """``n`` rows of integer levels: ``floor`` of the flow's samples (see :meth:`Flow.sample`)."""
        return self._floor(self.flow.sample(n, temperature=temperature, progress=progress))

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, transforms={self.transforms}, hidden={self.hidden}"
