r"""Did a fit reach an answer? The checks :func:`ppgen.fit` runs on the parameters it returns.

The slope of the last epochs' objective (:func:`~ppgen.inference.training.convergence_message`)
misses a fit that crawls, or that sits on the plateau of a learning rate too small to move it.
:func:`stationarity` looks at the parameters instead. Split some rows (all of them up to
``sample``) into 2K chunks. The first K give per-example gradients :math:`g_1, \dots, g_K` of the
objective (each chunk scaled to the full data, as ``fit`` scales a minibatch), their mean
:math:`\bar g` and, per parameter j, the per-row second moment
:math:`F_j = m \operatorname{Var}_k g_{kj} + \bar g_j^2` (m rows per chunk: the diagonal
empirical Fisher, Adam's denominator). The step :math:`d = \bar g / \sqrt{F}` is an Adam-like
one. The other K chunks, held out (neither their rows nor their Monte Carlo draws made d), score
the objective at :math:`\theta` and at :math:`\theta - t d` for each t in :data:`STEP_SIZES`, with
the same random numbers at both, so that the difference has little noise. (An exact objective,
without Monte Carlo noise, checked on all the training rows is the one case scored in sample: all
2K chunks make d, the steps are scored on all the rows, and G is the training objective's own
gain.) The gain

.. math::
    G = \max_t \frac{1}{K} \sum_k \big[L_k(\theta) - L_k(\theta - t\, d)\big]
    \quad \text{(nats per example)}

is what one more step would still buy, a lower bound on the distance to the optimum: near a
stationary point no step gains, and a fit that crawled gains at once. For an exact likelihood the
chunks differ only by their rows; for a stochastic objective (an ELBO) they also hold the Monte
Carlo noise, which the held-out scoring keeps out of G. No single step gains on a saddle point
or a ridge, where an optimiser can stop too (L-BFGS in float32 on badly scaled data); there the
gradient's signal-to-noise ratio speaks: S, the root mean square over the parameters of
:math:`\bar g_j` over its standard error :math:`\sqrt{\operatorname{Var}_k g_{kj} / K}`, is about 1
at a stationary point (each ratio a Student t with K - 1 degrees of freedom) and grows as the
square root of the rows away from one. Neither sees a local optimum, nor a saddle whose gradient
is within its noise: both are stationary points.

A latent that all rows share (a global one) gets one draw per chunk, whose spread can swamp both
the gradient and G; for a guide with such latents ``fit`` averages 8 draws in every chunk (``draws``).

The fit is far from stationary when G exceeds ``tol (1 + |L|)`` (``fit``'s ``convergence_tol``,
relative as the slope test's) and, held out, three standard errors of its mean over the K chunks;
or when S exceeds :data:`SNR_FAR`. The calibration, fires and false alarms over fits of every family, is
``benchmarks/fit_trust.py`` (figures in ``benchmarks/RESULTS.md``).

:func:`uniform_baseline_message` compares the fitted figure with the trivial model: the uniform
distribution over the data's levels (8 bits per dimension on 8-bit pixels, 1 on binary data).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["Stationarity", "stationarity", "uniform_baseline_message", "STEP_SIZES", "SNR_FAR"]

# the step sizes t of the trial steps theta - t d: Adam-like learning rates, large to small
STEP_SIZES = (1.0, 0.1, 0.01, 1e-3)
# the signal-to-noise ratio S beyond which the gradient is far from zero whatever one step gains
SNR_FAR = 10.0


@dataclasses.dataclass(frozen=True)
class Stationarity:
    """What :func:`stationarity` measured; figures per example, in the objective's units (nats).

    Attributes
    ----------
    objective : float
        Minus the loss at the returned parameters on the scored chunks (higher is better).
    gain, stderr : float
        The best gain of one trial step, and its standard error over the scored chunks.
    in_sample : bool
        Whether the steps were scored on the rows that made them (an exact objective on all the
        training rows: G is the training objective's gain, without noise) or on held-out rows.
    step_size : float
        The t of that step (0 when no step gained).
    snr : float
        The root mean square over the parameters of the mean gradient over its standard error.
    num_parameters, rows : int
        The parameters with a gradient, and the rows the check used.
    """

    objective: float
    gain: float
    stderr: float
    step_size: float
    snr: float
    num_parameters: int
    rows: int
    in_sample: bool = False

    def gains(self, tol: float) -> bool:
        """Whether one step gains more than ``tol (1 + |objective|)`` (and, held out, three standard errors)."""
        return self.gain > tol * (1 + abs(self.objective)) and (self.in_sample or self.gain > 3 * self.stderr)

    def far(self, tol: float) -> bool:
        """Whether the parameters are far from a stationary point: a step gains, or S > :data:`SNR_FAR`."""
        return self.gains(tol) or self.snr > SNR_FAR

    def message(self, tol: float, advice: str) -> str | None:
        """Why the fit is far from a stationary point, in numbers, and ``advice``; None when it is not."""
        if not self.far(tol):
            return None
        spread = "" if self.in_sample else f" ± {self.stderr:.2g}"
        step = (f"one Adam-like step of size {self.step_size:g} from them still raises it by {self.gain:.3g}{spread} "
                f"nats per example (from {self.objective:.4g}; tolerance {tol:g} x "
                f"{1 + abs(self.objective):.3g})" if self.gains(tol) else
                f"no single step along it gains (from {self.objective:.4g} nats per example): a saddle point or a "
                "ridge, where the optimiser stopped")
        return (f"the parameters are far from a stationary point of the objective: {step}, and its gradient is "
                f"{self.snr:.3g} standard errors from zero (root mean square over {self.num_parameters} parameters "
                f"and {self.rows} rows; about 1 at a stationary point). {advice} (or set convergence_tol=None)")


def stationarity(loss: Callable[..., torch.Tensor], params: Sequence[torch.Tensor],
                 rows: Callable[[torch.Tensor], tuple], num_rows: int, *, sample: int = 2048, chunks: int = 16,
                 weight_decay: float = 0.0, exact: bool = False, seed: int = 0,
                 draws: int = 1) -> Stationarity | None:
    """Measure how far ``params`` are from a stationary point of ``loss`` (module docstring).

    Parameters
    ----------
    loss : callable
        ``loss(x, y, scale)``: the scalar loss of rows ``x`` (labels ``y`` or None) with the data
        plate scaled by ``scale``, an estimate of the full-data loss (an :class:`Objective`'s call).
    params : sequence of Tensor
        The parameters the loss is minimised over; those without ``requires_grad`` are skipped.
    rows : callable
        ``rows(idx)``: the pair ``(x, y)`` of the data's rows ``idx`` (a LongTensor), on the device.
    num_rows : int
        N, the rows of the data.
    sample, chunks : int
        The rows used (a seeded random subset when N is larger) and the chunks they are split into
        (half for the gradient, half held out).
    weight_decay : float
        ``fit``'s L2 penalty on the full-data loss, added to the objective as it was during training.
    exact : bool
        Whether the loss is free of Monte Carlo noise (exact maximum likelihood, an enumerated
        ELBO): with all N rows in the sample, the steps are then scored in sample.
    seed : int
        Seeds the choice of rows and every chunk's Monte Carlo draws; the caller's random state is kept.
    draws : int
        Monte Carlo draws averaged in each chunk's gradient and score (an exact objective takes one). A
        latent shared by all rows gives each chunk one draw of it, whose spread can hide a guide far from
        its optimum (a global scale's gradient is a chi-square of that draw); ``fit`` asks for 8 there.

    Returns
    -------
    Stationarity or None
        None with fewer than 4 rows or no parameter.
    """
    params = [p for p in params if p.requires_grad]
    count = min(chunks, num_rows - num_rows % 2)
    if count < 4 or not params:
        return None
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))[:sample] \
        if num_rows > sample else torch.arange(num_rows)
    parts = order.tensor_split(count)
    in_sample = exact and len(order) == num_rows
    # in sample, the steps are scored on all the rows at once: the training objective, without noise
    fit_parts, held_out = (parts, (order,)) if in_sample else (parts[0::2], parts[1::2])
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    original = [p.detach().clone() for p in params]

    draws = 1 if exact else draws

    def objective(idx: torch.Tensor, k: int) -> torch.Tensor:  # per example, with chunk k's random numbers
        total = 0.0
        for r in range(draws):
            torch.manual_seed(seed + 1 + k + r * count)
            total = total + loss(*rows(idx), num_rows / len(idx))
        value = total / draws
        if weight_decay:
            value = value + weight_decay / 2 * sum(p.pow(2).sum() for p in params)
        return value / num_rows

    with torch.random.fork_rng(devices=devices), torch.enable_grad():  # enumerated ELBOs need grad mode
        grads = torch.stack([_flat(torch.autograd.grad(objective(idx, k), params, allow_unused=True), params)
                             for k, idx in enumerate(fit_parts)])  # (K, P)
        weights = _weights(fit_parts, grads.dtype)
        mean = weights @ grads  # the rows' mean gradient
        variance = grads.var(0)  # between chunks: of a chunk's mean gradient
        fisher = variance * (len(order) / count) + mean.pow(2)  # per row: m rows per chunk
        seen = fisher > 0
        direction = torch.where(seen, mean / fisher.sqrt().clamp_min(1e-30), torch.zeros_like(mean))
        # S only over gradients that vary between chunks beyond rounding: one that is the same for every
        # chunk is a deterministic push toward a boundary (an MLE at infinity: a pixel never on in the data),
        # whose t-ratio is meaningless; the gain test speaks for it
        varies = seen & (variance > 1e-10 * mean.pow(2))
        snr = (mean[varies].pow(2) / (variance[varies] / len(fit_parts))).mean().sqrt().item() \
            if varies.any() else 0.0
        offset = 0 if in_sample else len(fit_parts)

        def scores() -> torch.Tensor:
            return torch.stack([objective(idx, offset + k).detach().double() for k, idx in enumerate(held_out)])

        shares = _weights(held_out, torch.float64)
        try:
            at = scores()
            best = (0.0, 0.0, 0.0)
            for t in STEP_SIZES:
                _set(params, original, direction, t)
                gains = at - scores()
                if torch.isfinite(gains).all() and (shares @ gains).item() > best[0]:
                    spread = 0.0 if in_sample else (gains.std() / math.sqrt(len(gains))).item()
                    best = ((shares @ gains).item(), spread, t)
        finally:
            _set(params, original, direction, 0.0)
    return Stationarity(objective=-(shares @ at).item(), gain=best[0], stderr=best[1], step_size=best[2], snr=snr,
                        num_parameters=int(seen.sum()), rows=len(order), in_sample=in_sample)


def _weights(parts, dtype) -> torch.Tensor:
    """Each chunk's share of the rows (chunk sizes differ by one at most)."""
    sizes = torch.tensor([len(idx) for idx in parts], dtype=dtype)
    return sizes / sizes.sum()


def _flat(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params)])


@torch.no_grad()
def _set(params, original, direction: torch.Tensor, t: float) -> None:
    """params = original - t direction."""
    offset = 0
    for p, o in zip(params, original):
        p.copy_(o - t * direction[offset:offset + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype))
        offset += p.numel()


def uniform_baseline_message(figure: float, x_dim: int, levels: int | None, *, whole_numbers: bool = False,
                             bound: bool = False) -> str | None:
    """Why a fitted figure cannot be right, or None: discrete data against the uniform model.

    Parameters
    ----------
    figure : float
        The fitted objective in nats per example: log p(x) of discrete rows (in pixel units for a
        dequantized density), or a lower bound on it.
    x_dim, levels : int
        The dimensions and the levels per dimension (2 for binary data; None: not discrete, no check).
    whole_numbers : bool
        Whether a dequantized density (a flow on pixels) was fitted on whole-number rows.
    bound : bool
        Whether ``figure`` is a lower bound (an ELBO) rather than log p(x).

    Examples
    --------
    >>> uniform_baseline_message(-600.0, 784, 2)[:60]
    'it scores -600 nats per example (1.1 bits/dim), worse than t'
    >>> uniform_baseline_message(-100.0, 784, 2) is None
    True
    """
    if levels is None:
        return None
    uniform = -x_dim * math.log(levels)
    if whole_numbers:
        return ("it was fitted on whole-number rows, but it is a density on levels plus uniform noise in [0, 1) "
                "(dequantized pixels): on whole numbers its density grows without bound and its figures mean "
                "nothing. Fit it on ppgen.models.flows.dequantize(x) or Dequantized(x)")
    if figure > 1e-6 * x_dim:
        return (f"it scores {figure:.5g} nats per example, above 0, which no distribution of data with {levels} "
                "levels can (a probability is at most 1): the rows are not what the model describes. For a "
                "flow on pixels, were they dequantized (ppgen.models.flows.dequantize)?")
    if figure >= uniform:
        return None
    bits = -figure / (x_dim * math.log(2))
    what = " (an ELBO: a lower bound; ppgen.log_likelihood may find log p(x) higher)" if bound else ""
    return (f"it scores {figure:.5g} nats per example ({bits:.3g} bits/dim){what}, worse than the uniform "
            f"distribution over the {levels} levels ({math.log2(levels):.3g} bits/dim, {uniform:.5g} nats): the fit "
            "failed. Likely causes: too few epochs or too small an lr (the training curve says); data outside "
            "the range or scale the model expects; for a flow on pixels, transforms that act on a narrower range "
            "than the logits of the levels (about ±13.8 with alpha=1e-6, where zuko's splines bend [-5, 5] only: "
            "alpha=0.01, NSF's default, keeps them inside)")
