"""What the autoregressive models share: orderings, the Pyro program, sequential sampling, inpainting.

Every model here factorises p(x) by the chain rule in an ordering o of the D pixels,

.. math::
    p(x) = \\prod_{i=1}^{D} p(x_{o(i)} \\mid x_{o(<i)}),

and differs only in how it computes the D conditional logits. A subclass of
:class:`AutoregressiveModel` registers a buffer ``orders`` of shape (K, D) (K = 1 except for a
MADE mask ensemble, which is the uniform mixture of K such products) and implements
``conditional_logits(x, k)``; it may override ``_stepper`` to make sequential sampling cheaper.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from ppgen.checks import describe, positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, at_least_float32, num_rows, progress_bar

__all__ = ["AutoregressiveModel", "InpaintResult", "resolve_order", "observed_first", "order_observed_first"]

ORDERS = ("natural", "random")

Stepper = Callable[[torch.Tensor, int], torch.Tensor]


def resolve_order(order: str | Sequence[int] | torch.Tensor, dim: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """An ordering of ``dim`` pixels as a permutation tensor: ``order[i]`` is the i-th pixel drawn.

    Parameters
    ----------
    order : "natural", "random" or a permutation of range(dim)
        ``"natural"`` is 0, 1, ..., dim - 1 (raster order for images); ``"random"`` draws a
        permutation with ``generator``.

    Examples
    --------
    >>> resolve_order("natural", 4).tolist()
    [0, 1, 2, 3]
    >>> resolve_order([2, 0, 1], 3).tolist()
    [2, 0, 1]
    """
    if isinstance(order, str):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} or a permutation, got {order!r}")
        return torch.arange(dim) if order == "natural" else torch.randperm(dim, generator=generator)
    perm = torch.as_tensor(order)
    if perm.dtype.is_floating_point or perm.dtype == torch.bool or perm.shape != (dim,) \
            or not torch.equal(perm.sort().values, torch.arange(dim)):
        raise ValueError(f"order must be a permutation of range({dim}), got {order!r}")
    return perm.long()


def describe_order(order: torch.Tensor) -> str:
    """``"natural"`` for 0, 1, ..., D - 1, else ``"custom"`` (for ``extra_repr``)."""
    return "natural" if torch.equal(order.cpu(), torch.arange(order.shape[-1])) else "custom"


def ranks(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``ranks(order)[d]`` is the position at which pixel d is drawn."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def observed_first(order: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per row of ``observed`` (N, D): whether every observed pixel precedes every missing one in ``order``.

    Examples
    --------
    >>> observed_first(torch.tensor([0, 1, 2]), torch.tensor([[True, False, False], [False, True, False]]))
    tensor([ True, False])
    """
    rank = ranks(order).expand_as(observed)
    dim = observed.shape[-1]
    last_observed = torch.where(observed, rank, -1).amax(-1)
    first_missing = torch.where(observed, dim, rank).amin(-1)
    return last_observed < first_missing


def order_observed_first(observed_mask: torch.Tensor) -> torch.Tensor:
    """An ordering (D,) that draws the observed pixels first, each group in index order.

    A model built with it (``NADE(D, order=order_observed_first(mask))``) inpaints that mask
    exactly.

    Examples
    --------
    >>> order_observed_first(torch.tensor([False, True, False, True])).tolist()
    [1, 3, 0, 2]
    """
    if not isinstance(observed_mask, torch.Tensor) or observed_mask.dtype != torch.bool or observed_mask.dim() != 1:
        raise TypeError("observed_mask must be a 1-D bool tensor")
    return torch.cat([observed_mask.nonzero().squeeze(-1), (~observed_mask).nonzero().squeeze(-1)]).cpu()


@dataclasses.dataclass
class InpaintResult:
    """Completions of partly observed rows.

    Attributes
    ----------
    samples : Tensor (n, N, D)
        ``n`` completions of each of the N rows; observed pixels keep their values.
    method : {"exact", "importance_resampling"}
        ``"exact"``: every observed pixel comes before every missing one in the model's ordering,
        so the completions are drawn sequentially from the exact conditional p(x_missing | x_obs).
        ``"importance_resampling"``: otherwise; particles are drawn pixel by pixel with the
        observed pixels clamped and resampled with weights prod_{observed d} p(x_d | x_{o(<d)})
        (sampling-importance-resampling: exact as ``num_particles`` grows, biased by O(1 / P)).
    ess : Tensor (N,) or None
        Effective sample size of the importance weights per row (None for ``"exact"``).
    """

    samples: torch.Tensor
    method: str
    ess: torch.Tensor | None = None


class AutoregressiveModel(GenerativeModel):
    """Base class of the exact-likelihood autoregressive models over D binary pixels.

    The Pyro program ``model(x)`` has two faces. With ``x`` given (training, scoring) it observes
    all pixels at once in one site ``"x"``, ``Bernoulli(logits).to_event(1)`` with the
    teacher-forced logits of every conditional, whose log-density is the chain-rule product.
    With ``x`` None it tells the story pixel by pixel: one site ``"x_{d}"`` per pixel d, drawn
    in the ordering, then a deterministic site ``"x"`` with the assembled rows. Conditioning the
    per-pixel sites with ``pyro.condition`` clamps those pixels while the rest are drawn.

    A model with K > 1 orderings (a MADE mask ensemble) is the uniform mixture over them; its
    Pyro program first draws ``"mask"`` ~ Uniform{0..K-1} (outside the data plate, shared by the
    rows of one call) and the guide draws it the same way, so the ELBO that ``fit`` maximises is
    E_k[sum_n log p_k(x_n)] -- the order-agnostic training objective, a lower bound of
    sum_n log (1/K) sum_k p_k(x_n), which :meth:`log_prob` returns exactly.
    """

    has_exact_likelihood = True
    data_support = "binary"
    orders: torch.Tensor  # (K, D) buffer set by subclasses

    @property
    def num_orderings(self) -> int:
        """K, the number of orderings (masks) the model averages over."""
        return self.orders.shape[0]

    def conditional_logits(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        """Teacher-forced logits (N, D): column d is logit p_k(x_d = 1 | the pixels before d)."""
        raise NotImplementedError

    def _stepper(self, n: int, k: int) -> Stepper:
        """A function ``step(x, i)`` giving the logits (n,) of pixel ``orders[k, i]``.

        ``x`` holds the pixels drawn so far; calls come with i = 0, 1, ..., D - 1 in turn, so a
        subclass may keep running state between them. The default recomputes all logits.
        """
        d = self.orders[k]
        return lambda x, i: self.conditional_logits(x, k)[:, d[i]]

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def model(self, x=None, y=None, *, size=None):
        k = self._choose_ordering()
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)) as rows:
            if x is not None:
                fn = dist.Bernoulli(logits=at_least_float32(self.conditional_logits(x, k))).to_event(1)
                return pyro.sample("x", fn, obs=x)
            x = self._sequential(k, len(rows), sites=True)[0]
            return pyro.deterministic("x", x, event_dim=1)

    def guide(self, x=None, y=None, *, size=None):
        self._choose_ordering()

    def _choose_ordering(self) -> int:
        if self.num_orderings == 1:
            return 0
        prior = dist.Categorical(logits=torch.zeros(self.num_orderings, dtype=self._dtype(), device=self.device))
        return int(pyro.sample("mask", prior))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per row (N,): the chain rule, averaged in probability over the K orderings."""
        x = self.check_data(x)
        if self.num_orderings == 1:
            return self._log_prob_k(x, 0)
        per_k = torch.stack([self._log_prob_k(x, k) for k in range(self.num_orderings)])  # (K, N)
        return torch.logsumexp(per_k, 0) - math.log(self.num_orderings)

    def _log_prob_k(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return bernoulli_log_prob(self.conditional_logits(x, k), x).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, progress=False) -> torch.Tensor:
        """``n`` rows drawn pixel by pixel (each row from an ordering drawn uniformly), (n, D).
        ``progress``: True shows a bar over the pixels, a callable gets ``(done, total)``."""
        n = positive_int(n, "n")
        ks = torch.randint(self.num_orderings, (n,))
        orderings = ks.unique().tolist()
        bar = progress_bar(len(orderings) * self.x_dim, progress, "pixels")
        rows = torch.cat([self._sequential(k, int((ks == k).sum()), bar=bar)[0] for k in orderings])
        bar.close()
        return rows

    def _sequential(self, k: int, n: int, values: torch.Tensor | None = None,
                    observed: torch.Tensor | None = None, sites: bool = False, bar=None):
        """Draw ``n`` rows in ordering k, clamping ``observed`` pixels (n, D) to ``values``.

        Returns the rows (n, D) and the log-probability (n,) of the clamped pixels under their
        conditionals (the importance weight of the draw as a proposal for p(x_missing | x_obs)).
        """
        step = self._stepper(n, k)
        x = torch.zeros(n, self.x_dim, dtype=self._dtype(), device=self.device)
        log_w = x.new_zeros(n)
        for i, d in enumerate(self.orders[k].tolist()):
            logits = step(x, i)  # (n,)
            if sites:
                value = pyro.sample(f"x_{d}", dist.Bernoulli(logits=logits))
            else:
                value = torch.bernoulli(torch.sigmoid(logits))
            if observed is not None:
                clamp = observed[:, d]
                value = torch.where(clamp, values[:, d], value)
                log_w = log_w + clamp * bernoulli_log_prob(logits, value)
            x = x.index_copy(1, torch.tensor([d], device=x.device), value[:, None])
            if bar is not None:
                bar.update()
        return x, log_w

    def _draw(self, values: torch.Tensor, observed: torch.Tensor, ks: torch.Tensor):
        """:meth:`_sequential` for rows that each have their own ordering ``ks`` (R,)."""
        x, log_w = torch.empty_like(values), values.new_empty(values.shape[0])
        for k in ks.unique().tolist():
            rows = (ks == k).nonzero().squeeze(-1).to(values.device)
            x[rows], log_w[rows] = self._sequential(k, len(rows), values[rows], observed[rows])
        return x, log_w

    @torch.no_grad()
    def inpaint(self, x: torch.Tensor, observed_mask: torch.Tensor, n: int = 1, *,
                num_particles: int = 1000) -> InpaintResult:
        """Complete the unobserved pixels of ``x`` by sampling from p(x_missing | x_observed).

        Parameters
        ----------
        x : Tensor (N, D)
            Rows whose pixels outside ``observed_mask`` are ignored (any 0/1 values).
        observed_mask : bool Tensor (D,) or (N, D)
            True where a pixel is observed.
        n : int
            Completions per row.
        num_particles : int
            Particles per row for sampling-importance-resampling, used when some observed pixel
            does not precede all missing ones in the ordering (see :class:`InpaintResult`).

        Returns
        -------
        InpaintResult
            ``samples`` (n, N, D) and the ``method`` used. Exact when, in every ordering of the
            model, the observed pixels come first (e.g. the top rows for a raster order); a MADE
            ensemble then draws its mask from the posterior p(k | x_obs) first.
        """
        x = self.check_data(x)
        n = positive_int(n, "n")
        num_particles = positive_int(num_particles, "num_particles")
        observed = _check_mask(observed_mask, x.shape).to(x.device)
        num_rows_, dim = x.shape
        if all(observed_first(self.orders[k], observed).all() for k in range(self.num_orderings)):
            # observed conditionals do not depend on the missing pixels: log p_k(x_obs) per row
            log_obs = torch.stack([(observed * bernoulli_log_prob(self.conditional_logits(x, k), x)).sum(-1)
                                   for k in range(self.num_orderings)])  # (K, N)
            ks = dist.Categorical(logits=log_obs.T).sample((n,)).cpu()  # (n, N)
            rows = self._draw(x.expand(n, -1, -1).reshape(-1, dim), observed.expand(n, -1, -1).reshape(-1, dim),
                              ks.reshape(-1))[0]
            return InpaintResult(rows.reshape(n, num_rows_, dim), "exact")
        ks = torch.randint(self.num_orderings, (num_particles * num_rows_,))
        particles, log_w = self._draw(x.repeat(num_particles, 1), observed.repeat(num_particles, 1), ks)
        log_w = log_w.reshape(num_particles, num_rows_)
        pick = dist.Categorical(logits=log_w.T).sample((n,))  # (n, N)
        rows = torch.arange(num_rows_, device=pick.device)
        samples = particles.reshape(num_particles, num_rows_, dim)[pick, rows]
        ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
        return InpaintResult(samples, "importance_resampling", ess)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | sigmoid(logits)) elementwise: x * logits - log(1 + exp(logits))."""
    return x * logits - F.softplus(logits)


def _check_mask(mask, shape: torch.Size) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"observed_mask must be a bool tensor, got {describe(mask)}")
    if mask.shape not in (shape, shape[1:]):
        raise ValueError(f"observed_mask must have shape {tuple(shape[1:])} or {tuple(shape)}, "
                         f"got {tuple(mask.shape)}")
    return mask.expand(shape)
