"""log_likelihood(): exact log p(x) where the model has it, an importance-sampled bound otherwise."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ppgen.inference.program import Program, batch_rows, logmeanexp, resolve_device
from ppgen.models.base import bits_per_dim

__all__ = ["log_likelihood", "LikelihoodResult"]


@dataclasses.dataclass
class LikelihoodResult:
    """Log-likelihood of a data set, in nats per example (higher is better).

    Attributes
    ----------
    values : Tensor (N,)
        log p(x_n), or its importance-sampled estimate, per example.
    mean : float
        Mean of ``values``.
    stderr : float
        Monte Carlo standard error of ``mean`` (0 when exact), from the spread of the
        normalised importance weights (delta method).
    bits_per_dim : float
        Negative log-likelihood in bits per dimension (lower is better).
    exact : bool
        True when computed in closed form; False for the importance-sampled estimate
        :math:`\\log \\frac1K \\sum_k p(x, z_k) / q(z_k \\mid x)`, the IWAE bound with K samples.
    num_samples : int
        K (0 when exact).
    elbo : float or None
        The ELBO per example from the same samples (mean of the log weights), for latent models.
    method : str
        ``"exact"``, ``"iwae"``, ``"ais"``: annealed importance sampling, of log Z for an
        energy model (RBM) or over the latents for a decoder-based model (GAN, Wu et al. 2017), or
        ``"elbo"``: a diffusion model's bound with all T terms summed.
    bracket : (float, float) or None
        For ``"ais"``: a conservative (RAISE, errs low) and an optimistic (AIS, errs high) mean
        log-likelihood, between which the true value lies up to Monte Carlo error.
    """

    values: torch.Tensor
    mean: float
    stderr: float
    bits_per_dim: float
    exact: bool
    num_samples: int
    elbo: float | None = None
    method: str = ""
    bracket: tuple[float, float] | None = None

    def __str__(self) -> str:
        how = "exact" if self.exact else f"IWAE K={self.num_samples}, ± {self.stderr:.3f}"
        if self.method == "elbo":
            how = f"ELBO with all diffusion steps summed: a lower bound, ± {self.stderr:.3f} over rows"
        if self.method == "ais":
            how = f"AIS, {self.num_samples} chains, ± {self.stderr:.3f}"
            if self.bracket is not None:
                how += f"; bracket [{self.bracket[0]:.3f}, {self.bracket[1]:.3f}]"
        elbo = f", ELBO {self.elbo:.3f}" if self.elbo is not None else ""
        return (f"log-likelihood {self.mean:.3f} nats/example ({how}); "
                f"{self.bits_per_dim:.4f} bits/dim{elbo}")

    def __repr__(self) -> str:
        return f"LikelihoodResult({self}; {len(self.values)} examples)"

    def to_dict(self) -> dict:
        """The figures as plain numbers (for ``json.dumps``); per-example values stay on ``values``."""
        return {"log_likelihood": self.mean, "stderr": self.stderr, "bits_per_dim": self.bits_per_dim,
                "exact": self.exact, "num_samples": self.num_samples, "elbo": self.elbo,
                "num_examples": len(self.values), "method": self.method or ("exact" if self.exact else "iwae"),
                "bracket": list(self.bracket) if self.bracket is not None else None}


@torch.no_grad()
def log_likelihood(model, data, *, guide=None, num_samples: int = 1000, batch_size: int = 100,
                   device: str | torch.device | None = None, seed: int = 0, method: str = "auto") -> LikelihoodResult:
    """Log-likelihood per example: exact where the model has it, otherwise the IWAE estimate.

    Parameters
    ----------
    model : GenerativeModel or callable
        With ``has_exact_likelihood`` the model's ``log_prob`` is used. Otherwise the guide
        (the model's own, or ``guide=``) is the proposal of an importance sampler with
        ``num_samples`` particles per example (Burda et al. 2016): a stochastic lower bound
        on log p(x) whose bias shrinks as K grows.
    data : Tensor (N, D) or (x, y)
    num_samples : int
        K, importance samples per example.
    batch_size : int
        Rows per forward pass; particles are drawn in chunks of about 10,000 samples.
    device : None, "auto", "cpu", "cuda", ...
        Where to compute: by default where the model is. Elsewhere, the model is moved there
        and back afterwards.
    seed : int
        Fixes the importance samples.
    method : {"auto", "iwae", "ais"}
        ``"auto"``: exact where the model has it; ``"iwae"``: the importance-sampled estimate
        even then (to measure how far the bound is from the exact value, e.g. on PPCA);
        ``"ais"``: annealed importance sampling over the latents with HMC (Wu et al. 2017), for a
        decoder-based model with ``observation_log_prob(z, x)`` and ``z_dim`` (a VAE's decoder or
        a GAN's generator), ``num_samples`` chains per row: it needs no guide, so a VAE and a GAN
        are measured the same way.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> log_likelihood(IndependentBernoulli(4), torch.ones(2, 4)).mean  # 4 fair coins
    -2.772588...
    """
    for value, name in ((num_samples, "num_samples"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if method not in ("auto", "iwae", "ais"):
        raise ValueError(f"method must be 'auto', 'iwae' or 'ais', got {method!r}")
    program = model if isinstance(model, Program) else Program(model, guide)
    x, y = program.rows(data, "data")
    device = program.device if device is None else resolve_device(device)
    home = program.device
    program.to(device)
    try:
        with ieee_float32():
            return _log_likelihood(program, x, y, num_samples, batch_size, device, seed, method)
    finally:
        program.to(home)  # the caller's model stays where it was


@contextlib.contextmanager
def ieee_float32():
    """Inside: float32 convolutions and matrix products on CUDA in IEEE precision, not TF32.

    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default on Ampere and later GPUs,
    and matrix products too under ``torch.set_float32_matmul_precision("high")``. That is a fair trade
    in training, but it moves each logit by about 1e-3 of its size, and an exact log-likelihood
    sums hundreds of them. The settings are restored on exit; on the CPU they change nothing.
    """
    # torch >= 2.9 has per-operator settings; its older allow_tf32 flags raise once those are set
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        switches = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                    (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        switches = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved):
            setattr(owner, name, value)


def _decoder_ais(model, x: torch.Tensor, num_chains: int, seed: int, dim: int) -> LikelihoodResult:
    from ppgen.inference.decoder_ais import decoder_log_likelihood

    observation = getattr(model, "observation_log_prob", None)
    if observation is None or not isinstance(getattr(model, "z_dim", None), int):
        raise ValueError(f"method='ais' needs a decoder-based model with observation_log_prob(z, x) and z_dim "
                         f"(a VAE or a GAN); {type(model).__name__} has none. Use method='auto'.")
    values, stderr = decoder_log_likelihood(observation, model.check_data(x), model.z_dim, num_chains=num_chains,
                                            seed=seed)
    mean = values.mean().item()
    return LikelihoodResult(values.float().cpu(), mean, (stderr.pow(2).sum().sqrt() / len(values)).item(),
                            bits_per_dim(mean, dim), False, num_chains, method="ais")


def _log_likelihood(program: Program, x, y, num_samples, batch_size, device, seed, method) -> LikelihoodResult:
    dim = x[0].numel()
    rows = torch.arange(x.shape[0]).split(batch_size)
    if program.exact and method == "auto":
        values = torch.cat([program.generative_model.log_prob(*batch_rows(x, y, idx, device)).float().cpu()
                            for idx in rows])
        mean = values.mean().item()
        return LikelihoodResult(values, mean, 0.0, bits_per_dim(mean, dim), True, 0, method="exact")
    if method == "ais":
        return _decoder_ais(program.generative_model, x.to(device), num_samples, seed, dim)
    estimate = getattr(program.generative_model, "estimate_log_likelihood", None)
    if estimate is not None and method == "auto":  # the model's own estimator: an RBM's AIS, a diffusion bound
        values, stderr, bracket = estimate(x.to(device), num_samples=num_samples, seed=seed)
        mean = values.mean().item()
        kind = getattr(program.generative_model, "likelihood_method", "ais")  # "elbo": a diffusion bound
        return LikelihoodResult(values.float().cpu(), mean, stderr, bits_per_dim(mean, dim), False,
                                1 if kind == "elbo" else num_samples, method=kind, bracket=bracket,
                                elbo=mean if kind == "elbo" else None)

    estimates, variances, elbos = [], [], []
    chunk = max(1, 10_000 // min(batch_size, x.shape[0]))  # particles per pass: ~10k samples live
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with program.param_scope(), torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        first = batch_rows(x, y, rows[0], device)
        if program.data_plate is None:
            program.validate(*first, estimator="iwae", num_particles=min(num_samples, 2), thorough=False)
        program.nesting(*first)
        for idx in rows:
            xb, yb = batch_rows(x, y, idx, device)
            log_w = torch.cat([program.log_weights(xb, yb, min(chunk, num_samples - k))
                               for k in range(0, num_samples, chunk)]).double()  # (K, B)
            estimate = logmeanexp(log_w)
            ratio = torch.exp(log_w - estimate)  # w_k / mean(w): mean 1
            estimates.append(estimate.cpu())
            # delta method: Var[log mean w] ~ Var[w / E w] / K
            variances.append((ratio.var(0, unbiased=True) / num_samples).cpu()
                             if num_samples > 1 else torch.full_like(estimate.cpu(), float("inf")))
            elbos.append(log_w.mean(0).cpu())
    values = torch.cat(estimates)
    mean = values.mean().item()
    stderr = math.sqrt(torch.cat(variances).sum().item()) / len(values)
    return LikelihoodResult(values.float(), mean, stderr, bits_per_dim(mean, dim), False, num_samples,
                            elbo=torch.cat(elbos).mean().item(), method="iwae")
