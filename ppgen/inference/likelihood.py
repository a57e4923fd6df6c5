"""log_likelihood(): exact log p(x) where the model has it, an estimate or a bound otherwise.

The methods are named once, in :data:`METHODS`; ``log_likelihood``'s docstring, its errors and the
CLI read them there. Each one either scores a model or is refused in one line that names the
model, the method and the methods that work for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ppgen.checks import positive_int
from ppgen.inference.program import ModelCheckError, Program, batch_rows, logmeanexp, resolve_device
from ppgen.models.base import LikelihoodEstimate, bits_per_dim
from ppgen.models.decoder_ais import decoder_log_likelihood

__all__ = ["log_likelihood", "LikelihoodResult", "METHODS"]

#: The methods of ``log_likelihood(method=...)``, named once (log_likelihood's docstring lists them from here):
#: a result's ``method`` is one of them, never "auto".
METHODS = {
    "auto": '"exact" where the model has it, else the model\'s own estimator (its likelihood_method: an RBM\'s or '
            'a GAN\'s "ais", a diffusion model\'s "elbo"), else "iwae"',
    "exact": "log p(x) in closed form, the model's log_prob (has_exact_likelihood)",
    "iwae": "the guide is the proposal of an importance sampler with K = num_samples particles per example (Burda "
            "et al. 2016): a stochastic lower bound on log p(x) whose bias shrinks as K grows (on an exact model, "
            "it measures how far the bound is from the exact value)",
    "ais": "annealed importance sampling with K = num_samples chains per row: the model's own (an RBM's log Z, a "
           "GAN's), or over the latents with HMC (Wu et al. 2017) for a decoder-based model with z_dim and "
           "observation_log_prob(z, x) (a VAE): it needs no guide, so a VAE and a GAN are measured the same way",
    "elbo": "the model's own variational bound (a diffusion model's, all T terms summed)",
}


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
        The method of :data:`METHODS` that made the figure (``"auto"`` resolved): ``"exact"``,
        ``"iwae"``, ``"ais"``: annealed importance sampling, of log Z for an energy model (RBM) or
        over the latents for a decoder-based model (GAN, VAE; Wu et al. 2017), or ``"elbo"``: a
        diffusion model's bound with all T terms summed.
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
                   device: str | torch.device | None = None, seed: int = 0, method: str = "auto",
                   **options) -> LikelihoodResult:
    """Log-likelihood per example: exact where the model has it, otherwise an estimate or a bound.

    Parameters
    ----------
    model : GenerativeModel or callable
        A ppgen model, or a plain Pyro model function (with ``guide=``).
    data : Tensor (N, D) or (x, y)
    guide : None, callable or str
        The proposal of ``"iwae"`` in place of the model's own guide (as in :class:`Program`).
    num_samples : int
        K: importance samples per example (``"iwae"``), or chains per row (``"ais"``).
    batch_size : int
        Rows per forward pass; particles are drawn in chunks of about 10,000 samples.
    device : None, "auto", "cpu", "cuda", ...
        Where to compute: by default where the model is. Elsewhere, the model is moved there
        and back afterwards.
    seed : int
        Fixes the importance samples.
    method : str
        One of :data:`METHODS`:

{methods}

        A method that cannot score the model raises a ValueError (a :class:`ModelCheckError` for
        ``"iwae"``) naming the methods that can.
    **options
        Settings of the model's own estimator (an RBM's or a GAN's ``num_temperatures``, a
        diffusion model's ``batch_size``), or of AIS over a decoder's latents (``num_temperatures``,
        ``leapfrog``, ``step_size``); ``"exact"`` and ``"iwae"`` take none.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> log_likelihood(IndependentBernoulli(4), torch.ones(2, 4)).mean  # 4 fair coins
    -2.772588...
    """
    for value, name in ((num_samples, "num_samples"), (batch_size, "batch_size")):
        positive_int(value, name)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    program = model if isinstance(model, Program) else Program(model, guide)
    x, y = program.rows(data, "data")
    device = program.device if device is None else resolve_device(device)
    home = program.device
    program.to(device)
    try:
        with ieee_float32():
            return _log_likelihood(program, x, y, num_samples, batch_size, device, seed, method, options)
    finally:
        program.to(home)  # the caller's model stays where it was


if log_likelihood.__doc__:  # None under python -OO
    log_likelihood.__doc__ = log_likelihood.__doc__.replace(
        "{methods}", "\n".join(f"        - ``{name!r}``: {text};" for name, text in METHODS.items()))


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


def _log_likelihood(program: Program, x, y, num_samples, batch_size, device, seed, method,
                    options: dict) -> LikelihoodResult:
    dim = x[0].numel()
    rows = torch.arange(x.shape[0]).split(batch_size)
    first = batch_rows(x, y, rows[0], device)
    resolved = _resolve(program, method)
    refusal = _refusal(program, resolved, first, num_samples)
    if refusal is not None:
        error = ModelCheckError if resolved == "iwae" else ValueError
        raise error(_refused(program, method, resolved, refusal, first, num_samples))
    if options and resolved in ("exact", "iwae"):
        raise TypeError(f"log_likelihood with {_asked(method, resolved)} takes no options, got "
                        f"{', '.join(sorted(options))}")
    gm = program.generative_model
    if resolved == "exact":
        values = torch.cat([gm.log_prob(*batch_rows(x, y, idx, device)).float().cpu() for idx in rows])
        mean = values.mean().item()
        return LikelihoodResult(values, mean, 0.0, bits_per_dim(mean, dim), True, 0, method="exact")
    if resolved != "iwae" and resolved == gm.likelihood_method:  # its own: an RBM's AIS, a diffusion bound
        estimate = gm.estimate_log_likelihood(x.to(device), num_samples=num_samples, seed=seed, **options)
        if not isinstance(estimate, LikelihoodEstimate):
            raise TypeError(f"{program.name}.estimate_log_likelihood must return a "
                            f"ppgen.models.base.LikelihoodEstimate, got {type(estimate).__name__}")
        mean = estimate.values.mean().item()
        return LikelihoodResult(estimate.values.float().cpu(), mean, estimate.stderr, bits_per_dim(mean, dim), False,
                                estimate.num_samples, method=estimate.method, bracket=estimate.bracket,
                                elbo=mean if estimate.method == "elbo" else None)
    if resolved == "ais":  # over the latents of a decoder-based model
        values, stderr = decoder_log_likelihood(gm.observation_log_prob, gm.check_data(x.to(device)), gm.z_dim,
                                                num_chains=num_samples, seed=seed, **options)
        mean = values.mean().item()
        return LikelihoodResult(values.float().cpu(), mean, (stderr.pow(2).sum().sqrt() / len(values)).item(),
                                bits_per_dim(mean, dim), False, num_samples, method="ais")

    estimates, variances, elbos = [], [], []
    chunk = max(1, 10_000 // min(batch_size, x.shape[0]))  # particles per pass: ~10k samples live
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with program.param_scope(), torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
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


def _resolve(program: Program, method: str) -> str:
    """The method that ``"auto"`` stands for: exact, else the model's own estimator, else iwae."""
    if method != "auto":
        return method
    if program.exact:
        return "exact"
    gm = program.generative_model
    return gm.likelihood_method if gm is not None and gm.likelihood_method is not None else "iwae"


def _refusal(program: Program, method: str, first, num_samples: int) -> str | None:
    """Why ``method`` (resolved) cannot score the model, or None. For ``"iwae"`` the story is
    checked on the first batch ``first`` (once per Program: it sets the data plate)."""
    gm = program.generative_model
    if method == "iwae":
        if gm is not None and not gm.is_normalised:
            return "its density is unnormalised (its factor lacks -log Z), so importance weights do not estimate p(x)"
        if gm is not None and not gm.guide_is_proposal:
            return f"its guide is not an importance proposal for p(x) ({program.name}.guide_is_proposal is False)"
        if program.data_plate is None:
            with program.param_scope():
                try:
                    program.validate(*first, estimator="iwae", num_particles=min(num_samples, 2), thorough=False)
                except ModelCheckError as err:
                    return str(err)
        return None
    if gm is None:
        return "a plain Pyro program is scored with its guide as the proposal only (method='iwae')"
    if method == "exact":
        return None if gm.has_exact_likelihood else "it has no exact log_prob"
    if method == gm.likelihood_method:
        return None
    if method == "ais":
        refusal = ("it has no AIS estimator of its own and is not a decoder-based model with z_dim and "
                   "observation_log_prob(z, x) (a VAE, a GAN)")
        if gm.z_dim is None:
            return refusal
        try:  # one decoder pass: the hook's default (and a model whose prior is not N(0, I)) raises
            gm.observation_log_prob(first[0].new_zeros(1, gm.z_dim), first[0][:1])
        except NotImplementedError as err:
            return f"{refusal}: {err}"
        return None
    return f"it has no bound of its own (its likelihood_method is {gm.likelihood_method!r})"


def _refused(program: Program, method: str, resolved: str, reason: str, first, num_samples: int) -> str:
    """One line: the method, the model, why not, and the methods that work for it."""
    reasons = {resolved: reason}
    for other in METHODS:
        target = _resolve(program, other)
        if target not in reasons:
            reasons[target] = _refusal(program, target, first, num_samples)
    working = [m for m in METHODS if reasons[_resolve(program, m)] is None]
    return (f"log_likelihood with {_asked(method, resolved)} cannot score {program.name}: {reason.rstrip('.')}. "
            f"Methods that work for {program.name}: {', '.join(map(repr, working)) or 'none'} "
            "(ppgen.inference.likelihood.METHODS)")


def _asked(method: str, resolved: str) -> str:
    return f"method={method!r}" + (f" (here {resolved!r})" if resolved != method else "")
