r"""Noise schedules of diffusion models, and the checks their arguments go through.

A schedule is the vector :math:`\beta_1, \dots, \beta_T` of per-step noise levels. For Gaussian
diffusion :math:`\beta_t` is the variance added at step t, :math:`\bar\alpha_t = \prod_{s \le t}
(1 - \beta_s)`; for binary (bit-flip) diffusion it is the probability of flipping a bit, and
:math:`\bar\alpha_t = \prod_{s \le t} (1 - 2\beta_s)`.

References: J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS
2020 (linear schedule, 1e-4 to 0.02 over T = 1000); A. Nichol and P. Dhariwal, "Improved
Denoising Diffusion Probabilistic Models", ICML 2021 (cosine schedule, Eq. 17); D. P. Kingma, T. Salimans,
B. Poole and J. Ho, "Variational Diffusion Models", NeurIPS 2021 (log SNR linear in t, from 13.3 to -5).
"""

from __future__ import annotations

import math

import torch

from ppgen.checks import positive_int

__all__ = ["SCHEDULES", "GAUSSIAN_SCHEDULES", "check_betas", "linear_betas", "cosine_betas", "log_snr_betas",
           "gaussian_betas", "binary_betas"]

SCHEDULES = ("linear", "cosine")  # both diffusions'
GAUSSIAN_SCHEDULES = (*SCHEDULES, "log-snr")


def check_betas(betas, upper: float = 1.0, name: str = "betas", closed: bool = False) -> torch.Tensor:
    """``betas`` as a 1-D float64 tensor, or a ValueError naming the first value outside
    (0, upper) (or (0, upper] with ``closed``)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence (one value per step), got shape "
                         f"{tuple(betas.shape)}")
    above = betas > upper if closed else betas >= upper
    bad = ~torch.isfinite(betas) | (betas <= 0) | above
    if bad.any():
        i = int(bad.nonzero()[0])
        interval = f"(0, {upper:g}]" if closed else f"(0, {upper:g})"
        raise ValueError(f"{name} must lie in {interval}; {name}[{i}] (step t={i + 1}) is {betas[i].item():g}")
    return betas


def linear_betas(num_steps: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    r"""Ho et al.'s linear schedule, :math:`\beta_t` from ``start`` to ``end``, for T = 1000 steps;
    for other T both ends are scaled by 1000 / T (Nichol & Dhariwal 2021), so the total noise is
    about the same whatever T.

    >>> linear_betas(1000)[[0, -1]].tolist()
    [0.0001, 0.02]
    """
    num_steps = positive_int(num_steps, "num_steps")
    scale = 1000 / num_steps
    return check_betas(torch.linspace(start * scale, min(end * scale, 0.999), num_steps, dtype=torch.float64))


def _cosine_alpha_bar(num_steps: int, offset: float) -> torch.Tensor:
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return f / f[0]  # (T + 1,), alpha_bar_0 = 1


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    r"""Nichol & Dhariwal's cosine schedule: :math:`\bar\alpha_t = f(t)/f(0)`,
    :math:`f(t) = \cos^2\left(\frac{t/T + s}{1 + s}\frac{\pi}{2}\right)`, s = 0.008, and
    :math:`\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}` clipped at 0.999."""
    alpha_bar = _cosine_alpha_bar(positive_int(num_steps, "num_steps"), offset)
    return check_betas((1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta))


def log_snr_betas(num_steps: int, log_snr_max: float = 13.3, log_snr_min: float = -5.0) -> torch.Tensor:
    r"""Kingma et al.'s fixed schedule: the log signal-to-noise ratio
    :math:`\lambda_t = \log(\bar\alpha_t / (1 - \bar\alpha_t))` falls linearly in t, from ``log_snr_max`` at
    t = 0 to ``log_snr_min`` at t = T (their :math:`\gamma = -\lambda` from -13.3 to 5), so
    :math:`\bar\alpha_t = \mathrm{sigmoid}(\lambda_t)` for t >= 1 and :math:`\bar\alpha_0 = 1` (the data).

    Two things follow. The first step's noise is tiny, :math:`\sqrt{\beta_1} \approx e^{-\lambda_{max}/2}`
    = 0.0013 in the chain's [-1, 1] units, a sixth of an 8-bit level's width (2 / 255), so the discretised
    decoder can put nearly all of a pixel's mass on its own level; Ho et al.'s 1e-4 gives 0.01, wider than a
    level, which costs even a perfect model about 0.6 bits on every black pixel. And with the posterior
    variances :math:`\sigma_t^2 = \tilde\beta_t` each ELBO term is
    :math:`L_{t-1} = \tfrac12 (e^{\lambda_{t-1} - \lambda_t} - 1)\,\lVert\epsilon - \epsilon_\theta\rVert^2`,
    the same weight for every t >= 2: Ho et al.'s unweighted ``loss="simple"`` is then the ELBO (up to that
    constant and the t = 1 decoder), the discrete form of Kingma et al.'s continuous-time result.

    >>> b = log_snr_betas(1000)
    >>> round(b[0].sqrt().item(), 5)  # the first step's noise, [-1, 1] units
    0.00131
    >>> round(torch.cumprod(1 - b, 0)[-1].item(), 5)  # alpha_bar_T = sigmoid(-5)
    0.00669
    """
    num_steps = positive_int(num_steps, "num_steps")
    if not log_snr_max > log_snr_min:
        raise ValueError(f"log_snr_max must exceed log_snr_min, got {log_snr_max} and {log_snr_min}")
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.sigmoid(log_snr_max + (log_snr_min - log_snr_max) * t)
    alpha_bar[0] = 1.0
    return check_betas(1 - alpha_bar[1:] / alpha_bar[:-1])


def gaussian_betas(schedule, num_steps: int) -> torch.Tensor:
    """The variances of a Gaussian diffusion: a schedule name or explicit betas in (0, 1)."""
    if isinstance(schedule, str):
        if schedule not in GAUSSIAN_SCHEDULES:
            raise ValueError(f"schedule must be one of {GAUSSIAN_SCHEDULES} or a sequence of betas, "
                             f"got {schedule!r}")
        return {"linear": linear_betas, "cosine": cosine_betas, "log-snr": log_snr_betas}[schedule](num_steps)
    betas = check_betas(schedule)
    if len(betas) != num_steps:
        raise ValueError(f"betas has {len(betas)} values but num_steps is {num_steps}")
    return betas


def binary_betas(schedule, num_steps: int) -> torch.Tensor:
    r"""Flip probabilities of a binary diffusion, each in (0, 1/2]. ``"linear"``:
    :math:`\beta_t = 1 / (2(T - t + 1))`, so :math:`\bar\alpha_t = \prod_{s\le t}(1 - 2\beta_s) = 1 - t/T`
    (linear in t; D3PM's uniform schedule for two classes, Austin et al. 2021); ``"cosine"``:
    :math:`\bar\alpha_t` of the cosine schedule. Both end at :math:`\beta_T = 1/2`, so
    :math:`x_T` is uniform whatever :math:`x_0`.

    >>> binary_betas("linear", 4).tolist()
    [0.125, 0.16666666666666666, 0.25, 0.5]
    """
    num_steps = positive_int(num_steps, "num_steps")
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or a sequence of flip probabilities, "
                             f"got {schedule!r}")
        if schedule == "linear":
            t = torch.arange(1, num_steps + 1, dtype=torch.float64)
            return 1 / (2 * (num_steps - t + 1))
        alpha_bar = _cosine_alpha_bar(num_steps, 0.008)
        alpha_bar[-1] = 0.0
        return check_betas((1 - alpha_bar[1:] / alpha_bar[:-1]) / 2, upper=0.5, closed=True)
    betas = check_betas(schedule, upper=0.5, closed=True)
    if len(betas) != num_steps:
        raise ValueError(f"betas has {len(betas)} values but num_steps is {num_steps}")
    return betas
