"""The baseline that assumes nothing: one probability per joint configuration (:class:`FullJointTable`)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, num_rows
from ppgen.models.bayesnet.structure import check_rows

__all__ = ["FullJointTable"]


class FullJointTable(GenerativeModel):
    r"""One categorical distribution over all :math:`K^D` joint configurations.

    Generative story: :math:`x_n \sim \mathrm{Categorical}(\mathrm{softmax}(\ell))` over the
    configurations (decoded to D digits base K); :math:`K^D - 1` free parameters. The baseline
    that assumes nothing; refused past ``MAX_CELLS`` = 2^24 configurations. Its maximum-likelihood
    table is the configurations' frequencies: :meth:`from_frequencies` in closed form, or
    ``ppgen.fit`` through ``log_prob`` (``optimizer="lbfgs"`` on a full batch reaches it in a few epochs).

    Parameters
    ----------
    dim : int
        Number of variables D.
    cardinality : int
        States per variable K.

    Examples
    --------
    >>> table = FullJointTable(3)
    >>> table.num_parameters
    7
    >>> table.log_prob(torch.zeros(1, 3)).exp().tolist()
    [0.125]
    """

    has_exact_likelihood = True
    data_support = "categorical"
    MAX_CELLS = 2 ** 24

    def __init__(self, dim: int, cardinality: int = 2):
        super().__init__(dim)
        if isinstance(cardinality, bool) or not isinstance(cardinality, int) or cardinality < 2:
            raise ValueError(f"cardinality must be an int >= 2, got {cardinality!r}")
        cells = cardinality ** dim
        if cells > self.MAX_CELLS:
            raise ValueError(f"FullJointTable(dim={dim}, cardinality={cardinality}) needs {cardinality}^{dim} = "
                             f"{cells} cells; the limit is 2^24 = {self.MAX_CELLS}. Use a BayesNet or a factorised "
                             "model for this many variables")
        self.cardinality = cardinality
        self.logits = nn.Parameter(torch.zeros(cells))
        self.register_buffer("place", cardinality ** torch.arange(dim - 1, -1, -1), persistent=False)

    @classmethod
    def from_frequencies(cls, x: torch.Tensor, cardinality: int = 2, pseudo_count: float = 0.0) -> "FullJointTable":
        """Maximum-likelihood table (configuration frequencies, plus ``pseudo_count`` each);
        unseen configurations get probability 0 (log-probability -inf) when ``pseudo_count`` is 0."""
        if isinstance(pseudo_count, bool) or not isinstance(pseudo_count, (int, float)) or pseudo_count < 0:
            raise ValueError(f"pseudo_count must be a number >= 0, got {pseudo_count!r}")
        table = cls(torch.as_tensor(x).shape[-1], cardinality)
        counts = torch.bincount(table.encode(x), minlength=table.logits.numel()).to(table.logits.dtype)
        with torch.no_grad():
            table.logits.copy_((counts + pseudo_count).log())
        return table

    @property
    def num_parameters(self) -> int:
        return self.logits.numel() - 1

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        return check_rows(x, [f"column {d}" for d in range(self.x_dim)], [self.cardinality] * self.x_dim,
                          name, allow_missing=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Configuration index of each row, shape (N,)."""
        return (self.check_data(x).long().to(self.place.device) * self.place).sum(-1)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            return pyro.sample("x", dist.Categorical(logits=self.logits), obs=None if x is None else self.encode(x))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits.log_softmax(-1)[self.encode(x)]

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` rows of state indices (floats), shape (n, dim)."""
        n = positive_int(n, "n")
        index = dist.Categorical(logits=self.logits).sample((n,))
        return (index[:, None] // self.place % self.cardinality).to(self.logits.dtype)
