"""Can the end of ``fit`` be trusted? The ConvergenceWarning's calibration, and the default fit
against scikit-learn (issue 31).

Part 1, calibration. Fits of every family whose objective is a built-in estimator (the ones the
stationarity check looks at: exact maximum likelihood and the ELBO), some stopped far from their
optimum (a crawling Adam, a learning rate too small to move, too few epochs) and some converged,
over seeds. For each: the true gap, in nats per example, between the training objective at the
returned parameters and at the optimum (a closed form, EM or scikit-learn where there is one,
else a long float64 L-BFGS run from the returned parameters; for the VAE a long Adam run, both
scored with a 64-sample ELBO), and whether ``fit`` warned. A fit is *far* when its gap exceeds ten
times the tolerance ``1e-3 (1 + |objective|)`` and *converged* when it is below the tolerance:
fires are warnings among the far fits, false alarms warnings among the converged ones.

Part 2, defaults. ``fit`` with the default optimiser and estimator (``"auto"``) on the PPCA, FA and
mixture cases of the issue and on a larger and a badly scaled one, against scikit-learn's PCA,
FactorAnalysis and GaussianMixture (``score``: mean log-likelihood) and ppgen's own ``fit_mle``.

Part 3, a spline flow on pixels. The issue's ``NSF(784, transforms=2, hidden=[64], bins=4)`` on
2,000 dequantized grey digits for 5 epochs, with the logit pre-processing's alpha at 1e-6 (the old
default), 0.05 and 0.01 (NSF's default now): bits per dimension on the training rows (the last
epoch's mean) and on 500 validation rows, and whether fit warned that it scored worse than the
uniform model.

Part 4, guides of global latents (``--global``, alone, a few minutes): stories whose latents all rows share (a
coin's bias under a Beta or a Normal guide, a Gaussian mean, a Bayesian linear regression under a full or a
mean-field Normal guide), fitted far from and to their optimum over seeds. The truth is the guide against its
family's optimum in closed form (the conjugate posterior; for the mean-field guide, the posterior mean and the
inverse of the posterior precision's diagonal), in the latents' unconstrained space: *far* when some latent's
guide is more than twice as wide as the optimum's or its mean more than one posterior sd off, *converged* when
every one is within 1.25 times as wide (and not under 0.8) and 0.5 sd. Whether ``fit`` warned, and by which check.

One CPU thread; about 25 minutes. Writes ``benchmarks/results/fit_trust.json`` and prints the
Markdown tables of ``benchmarks/RESULTS.md``.

    python benchmarks/fit_trust.py
    python benchmarks/fit_trust.py --tables   # the tables again, from benchmarks/results/fit_trust.json
    python benchmarks/fit_trust.py --global   # part 4 alone, into the same JSON
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from ppgen import FVSBN, PPCA, VAE, BernoulliMixture, ConvergenceWarning, FactorAnalysis, GaussianMixture, \
    IndependentBernoulli, fit
from ppgen.inference import ELBO, Program
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.energy import RBM
from ppgen.models.flows import MAF

TOL = 1e-3  # fit's convergence_tol
SEEDS_CONVERGED, SEEDS_FAR = 5, 2


# --- data ----------------------------------------------------------------------------------------

def three_factors(seed, n=2000, d=10, q=3, scales=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, q, generator=g)
    x = torch.randn(n, q, generator=g) @ w.T + 0.5 * torch.randn(n, d, generator=g) + 2.0
    return x if scales is None else x * scales


def blobs(seed, n=500):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    return torch.cat([c + 0.7 * torch.randn(n, 2, generator=g) for c in centres])


def prototypes(seed, n=1500):
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[0.9] * 10 + [0.1] * 10, [0.1] * 10 + [0.9] * 10, [0.9, 0.1] * 10])
    return torch.bernoulli(protos[torch.randint(0, 3, (n,), generator=g)], generator=g)


def correlated_bits(seed, n=500, d=8):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g) @ torch.randn(2, d, generator=g)
    return torch.bernoulli(torch.sigmoid(z), generator=g)


def banana(seed, n=1000):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    return torch.stack([a, a.pow(2) / 2 + 0.5 * torch.randn(n, generator=g)], -1)


# --- optima --------------------------------------------------------------------------------------

def exact_score(model, x) -> float:
    with torch.no_grad():
        return model.log_prob(x).mean().item()


def long_lbfgs(model, x, epochs=100) -> float:
    """The objective at the end of a long float64 L-BFGS run from ``model``'s parameters."""
    twin = copy.deepcopy(model).double()
    fit(twin, x.double(), epochs=epochs, batch_size=len(x), elbo="mle", optimizer="lbfgs", progress=False,
        convergence_tol=None)
    return exact_score(twin, x.double())


def elbo_score(model, x, particles=64) -> float:
    program = Program(model)
    with program.param_scope(), torch.random.fork_rng():
        torch.manual_seed(0)
        objective = ELBO(program, "trace", particles)
        program.validate(x[:8], num_rows=len(x))
        with torch.no_grad():
            return -objective(x).item() / len(x)


def vae_optimum(model, x) -> float:
    twin = copy.deepcopy(model)
    fit(twin, x, epochs=300, batch_size=500, lr=1e-2, seed=9, progress=False, convergence_tol=None)
    fit(twin, x, epochs=100, batch_size=500, lr=1e-3, seed=10, progress=False, convergence_tol=None)
    return max(elbo_score(twin, x), elbo_score(model, x))


# --- the cases -----------------------------------------------------------------------------------
# name -> (family, build(seed) -> (model, x, fit options), score(model, x), optimum(model, x), settings
# stopped far, settings converged)

def sklearn_fa(x) -> float:
    from sklearn.decomposition import FactorAnalysis as FA

    xd = x.double().numpy()
    return float(FA(3, tol=1e-10, max_iter=10_000).fit(xd).score(xd))


def sklearn_gmm(x, covariance="diag") -> float:
    from sklearn.mixture import GaussianMixture as GMM

    xd = x.double().numpy()
    return float(GMM(3, covariance_type=covariance, tol=1e-8, max_iter=1000, n_init=5, random_state=0)
                 .fit(xd).score(xd))


CASES = {
    "independent": ("baseline", lambda s: (IndependentBernoulli(8, seed=s),
                                          torch.bernoulli(torch.full((200, 8), 0.2),
                                                          generator=torch.Generator().manual_seed(s))),
                    exact_score, lambda m, x: exact_score(IndependentBernoulli.from_frequencies(x), x),
                    [dict(epochs=30, batch_size=200, lr=1e-2), dict(epochs=200, batch_size=200, lr=1e-4)],
                    [dict(epochs=200, batch_size=200, lr=0.2), dict(epochs=60, batch_size=50, lr=0.05)]),
    "fvsbn": ("autoregressive", lambda s: (FVSBN(8, seed=s), correlated_bits(s)), exact_score,
              lambda m, x: max(long_lbfgs(m, x), exact_score(m, x)),
              [dict(epochs=20, batch_size=100, lr=1e-3)],
              [dict(epochs=300, batch_size=500, lr=0.05), dict(epochs=20, batch_size=500, optimizer="lbfgs")]),
    "ppca": ("latent (exact)", lambda s: (PPCA(10, 3, seed=s), three_factors(s)), exact_score,
             lambda m, x: exact_score(PPCA(10, 3).fit_mle(x), x),
             [dict(epochs=200, batch_size=500), dict(epochs=20, batch_size=2000, lr=1e-5, optimizer="adam")],
             [dict(epochs=10, batch_size=2000), dict(epochs=300, batch_size=2000, lr=0.05, elbo="mle",
                                                     optimizer="adam")]),
    "factor analysis": ("latent (exact)", lambda s: (FactorAnalysis(10, 3, seed=s), three_factors(s)), exact_score,
                        lambda m, x: sklearn_fa(x),
                        [dict(epochs=100, batch_size=500, elbo="mle")], [dict(epochs=10, batch_size=2000)]),
    "gaussian mixture": ("latent (enumerated)", lambda s: (GaussianMixture(2, 3, seed=s), blobs(s)), exact_score,
                         lambda m, x: sklearn_gmm(x),
                         [dict(epochs=300, batch_size=1500, optimizer="adam")], [dict(epochs=10, batch_size=1500)]),
    "bernoulli mixture": ("latent (enumerated)", lambda s: (BernoulliMixture(20, 3, seed=s), prototypes(s)),
                          exact_score, lambda m, x: exact_score(BernoulliMixture(20, 3).fit_mle(x), x),
                          [dict(epochs=20, batch_size=1500, optimizer="adam")], [dict(epochs=10, batch_size=1500)]),
    "maf": ("flow", lambda s: (MAF(2, transforms=2, hidden=16, num_levels=None, seed=s), banana(s)), exact_score,
            lambda m, x: max(long_lbfgs(m, x), exact_score(m, x)),
            [dict(epochs=5, batch_size=100, lr=1e-3)], [dict(epochs=60, batch_size=1000, optimizer="lbfgs")]),
    "rbm (exact Z)": ("energy", lambda s: (RBM(8, hidden=4, seed=s), correlated_bits(s)), exact_score,
                      lambda m, x: max(long_lbfgs(m, x), exact_score(m, x)),
                      [dict(epochs=10, batch_size=500, lr=1e-3)],
                      [dict(epochs=40, batch_size=500, optimizer="lbfgs"),
                       dict(epochs=400, batch_size=500, lr=0.05)]),
    "vae": ("latent (ELBO)", lambda s: (VAE(12, z_dim=2, hidden=8, seed=s), correlated_bits(s, n=2000, d=12)),
            elbo_score, vae_optimum,
            [dict(epochs=30, batch_size=100, lr=1e-3)], [dict(epochs=300, batch_size=500, lr=1e-2)]),
}


def calibrate() -> list[dict]:
    rows = []
    for name, (family, build, score, optimum, far_settings, converged_settings) in CASES.items():
        for label, settings, seeds in (("stopped early", far_settings, SEEDS_FAR),
                                       ("converged", converged_settings, SEEDS_CONVERGED)):
            for options in settings:
                for seed in range(seeds):
                    model, x = build(seed)
                    start = time.perf_counter()
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", ConvergenceWarning)
                        result = fit(model, x, seed=seed, progress=False, **options)
                    seconds = time.perf_counter() - start
                    got = score(model, x)
                    best = optimum(model, x)
                    gap, tol = best - got, TOL * (1 + abs(got))
                    truth = "far" if gap > 10 * tol else "converged" if gap < tol else "between"
                    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
                    rows.append({"case": name, "family": family, "settings": options, "seed": seed, "intended": label,
                                 "optimizer": result.optimizer, "estimator": result.estimator, "objective": got,
                                 "optimum": best, "gap": gap, "tolerance": tol, "truth": truth,
                                 "warned": bool(messages), "messages": messages, "seconds": seconds})
                    print(f"{name:18s} {label:14s} {options} seed {seed}: gap {gap:9.4f} (tol {tol:.4f}, {truth}) "
                          f"{'WARNED' if messages else 'quiet'} {seconds:.1f} s", flush=True)
    return rows


def defaults() -> list[dict]:
    from sklearn.decomposition import PCA

    def pca(x, q=3):
        xd = x.double().numpy()
        return float(PCA(q).fit(xd).score(xd))

    x, big = three_factors(0), three_factors(1, n=5000, d=50, q=5)
    skewed = three_factors(0, scales=torch.logspace(-2, 2, 10))
    y, bits = blobs(0), prototypes(0)
    runs = [
        ("PPCA(10, 3), the issue's call", lambda: PPCA(10, 3), x, dict(epochs=200, batch_size=500), pca(x)),
        ("PPCA(10, 3), full batch", lambda: PPCA(10, 3), x, dict(batch_size=2000), pca(x)),
        ("FactorAnalysis(10, 3), full batch", lambda: FactorAnalysis(10, 3), x, dict(batch_size=2000), sklearn_fa(x)),
        ("GaussianMixture(2, 3, diag), the issue's call", lambda: GaussianMixture(2, 3), y,
         dict(epochs=300, batch_size=1500), sklearn_gmm(y)),
        ("GaussianMixture(2, 3, full), full batch", lambda: GaussianMixture(2, 3, covariance="full"), y,
         dict(batch_size=1500), sklearn_gmm(y, "full")),
        ("BernoulliMixture(20, 3), full batch", lambda: BernoulliMixture(20, 3), bits, dict(batch_size=1500),
         exact_score(BernoulliMixture(20, 3).fit_mle(bits), bits)),
        ("PPCA(50, 5), 5,000 rows, full batch", lambda: PPCA(50, 5), big, dict(batch_size=5000), pca(big, 5)),
        ("PPCA(10, 3), columns scaled 1e-2..1e2, float32", lambda: PPCA(10, 3), skewed, dict(batch_size=2000),
         pca(skewed)),
        ("PPCA(10, 3), columns scaled 1e-2..1e2, float64", lambda: PPCA(10, 3).double(), skewed.double(),
         dict(batch_size=2000), pca(skewed)),
        ("FactorAnalysis(10, 3), columns scaled, float64, 100 epochs", lambda: FactorAnalysis(10, 3).double(),
         skewed.double(), dict(batch_size=2000, epochs=100), sklearn_fa(skewed)),
    ]
    rows = []
    for name, make, data, options, reference in runs:
        model = make()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            result = fit(model, data, progress=False, **options)
        got = exact_score(model, data)
        warned = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        rows.append({"case": name, "options": options, "optimizer": result.optimizer, "estimator": result.estimator,
                     "epochs": result.epochs, "loglik": got, "reference": reference, "gap": reference - got,
                     "warned": bool(warned), "messages": warned, "seconds": time.perf_counter() - start})
        print(f"{name}: {result.estimator}/{result.optimizer} {got:.4f} vs {reference:.4f} "
              f"(gap {reference - got:+.4f}) {'WARNED' if warned else 'quiet'}", flush=True)
    return rows


def nsf_pixels() -> list[dict]:
    from ppgen.data import load_dataset
    from ppgen.models.flows import NSF, Dequantized, dequantize

    train = Dequantized(load_dataset("digits_grey", "train").x[:2000])
    valid = dequantize(load_dataset("digits_grey", "valid").x[:500], seed=1)
    rows = []
    for alpha in (1e-6, 0.05, 0.01):
        flow = NSF(784, transforms=2, hidden=[64], bins=4, alpha=alpha)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            result = fit(flow, train, epochs=5, batch_size=128, progress=False)
        with torch.no_grad():
            valid_bits = -flow.log_prob(valid).mean().item() / (784 * math.log(2))
        uniform = any("worse than the uniform" in str(w.message) for w in caught)
        rows.append({"alpha": alpha, "train_bits_per_dim": -result.train_elbo[-1] / (784 * math.log(2)),
                     "valid_bits_per_dim": valid_bits, "warned_worse_than_uniform": uniform,
                     "seconds": time.perf_counter() - start})
        print(f"NSF alpha {alpha:g}: {rows[-1]['train_bits_per_dim']:.3f} / {valid_bits:.3f} bits/dim, "
              f"{'warned' if uniform else 'quiet'}", flush=True)
    return rows


# --- part 4: guides of global latents --------------------------------------------------------------

def _coin(x):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(p), obs=x)


def _beta_guide(x):
    a = pyro.param("a", torch.tensor(1.0), constraint=dist.constraints.positive)
    b = pyro.param("b", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("p", dist.Beta(a, b))


def _gaussian_mean(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def _normal_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _regression(x):
    w = pyro.sample("w", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x[:, :3] * w).sum(-1), 1.0), obs=x[:, 3])


def _flips(seed, n=300):
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def _regression_rows(seed, n=400):
    g = torch.Generator().manual_seed(seed)
    design = torch.randn(n, 3, generator=g)
    design[:, 1] = design[:, 0] + 0.2 * torch.randn(n, generator=g)  # correlated weights: mean field is narrower
    y = design @ torch.tensor([1.0, -1.0, 0.5]) + torch.randn(n, generator=g)
    return torch.cat([design, y[:, None]], 1)


def _coin_optimum(x):
    """Mean and sd of logit p under the conjugate posterior Beta(2 + heads, 2 + tails)."""
    a, b = 2 + x.sum(), 2 + len(x) - x.sum()
    return (torch.digamma(a) - torch.digamma(b)).reshape(1), (torch.polygamma(1, a) + torch.polygamma(1, b)).sqrt()


def _mean_optimum(x):
    precision = 1 / 100 + len(x)
    return (x.sum() / precision).reshape(1), torch.tensor([precision ** -0.5])


def _regression_posterior(x):
    design, y = x[:, :3].double(), x[:, 3].double()
    precision = design.T @ design + torch.eye(3, dtype=torch.float64) / 100
    return torch.linalg.solve(precision, design.T @ y), precision


def _regression_optimum(x, mean_field):
    mean, precision = _regression_posterior(x)
    sd = precision.diagonal().rsqrt() if mean_field else torch.linalg.inv(precision).diagonal().sqrt()
    return mean, sd


def _beta_guide_moments(program):
    a, b = pyro.param("a").detach(), pyro.param("b").detach()
    return (torch.digamma(a) - torch.digamma(b)).reshape(1), (torch.polygamma(1, a) + torch.polygamma(1, b)).sqrt()


def _autoguide_moments(program, site):
    guide = program.guide
    if hasattr(guide, "scale_tril"):  # AutoMultivariateNormal
        posterior = guide.get_posterior()
        return posterior.loc.detach(), posterior.covariance_matrix.detach().diagonal().sqrt()
    return getattr(guide.locs, site).detach().reshape(-1), getattr(guide.scales, site).detach().reshape(-1)


GLOBAL_CASES = {  # story, guide, rows, the guide's moments, its family's optimum, far settings, converged settings
    "coin, Beta guide": (_coin, _beta_guide, _flips, _beta_guide_moments, _coin_optimum,
                         [dict(), dict(epochs=1000, lr=0.01),
                          dict(valid=100, patience=5, epochs=400, lr=0.01, batch_size=300)],
                         [dict(epochs=3000, lr=0.05, batch_size=300)]),
    "coin, AutoNormal": (_coin, "auto_normal", _flips, lambda p: _autoguide_moments(p, "p"), _coin_optimum,
                         [dict(), dict(epochs=30, lr=0.01)],
                         [dict(epochs=1000, lr=0.05), dict(epochs=300, lr=0.02, batch_size=32)]),
    "Gaussian mean, Normal guide": (_gaussian_mean, _normal_guide, lambda s: torch.randn(
        300, generator=torch.Generator().manual_seed(s)) + 3.0, lambda p: (pyro.param("loc").detach().reshape(1),
                                                                           pyro.param("scale").detach().reshape(1)),
        _mean_optimum, [dict(), dict(epochs=100, lr=0.01)], [dict(epochs=3000, lr=0.05, batch_size=300)]),
    "regression, AutoMultivariateNormal": (_regression, "auto_multivariate_normal", _regression_rows,
                                           lambda p: _autoguide_moments(p, "w"),
                                           lambda x: _regression_optimum(x, False),
                                           [dict(), dict(epochs=50, lr=0.01)], [dict(epochs=800, lr=0.05)]),
    "regression, AutoNormal (mean field)": (_regression, "auto_normal", _regression_rows,
                                            lambda p: _autoguide_moments(p, "w"),
                                            lambda x: _regression_optimum(x, True),
                                            [dict(), dict(epochs=50, lr=0.01)], [dict(epochs=800, lr=0.05)]),
}


def global_latents(seeds: int = 3) -> list[dict]:
    rows = []
    for name, (story, guide, data, moments, optimum, far_settings, converged_settings) in GLOBAL_CASES.items():
        for label, settings in (("stopped early", far_settings), ("converged", converged_settings)):
            for options in settings:
                for seed in range(seeds):
                    x = data(seed)
                    held = options.get("valid", 0)
                    train, valid = (x[held:], x[:held]) if held else (x, None)
                    pyro.clear_param_store()
                    program = Program(story, guide)
                    start = time.perf_counter()
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", ConvergenceWarning)
                        result = fit(program, train, valid=valid, seed=seed, progress=False,
                                     **{k: v for k, v in options.items() if k != "valid"})
                    seconds = time.perf_counter() - start
                    mean, sd = moments(program)
                    best_mean, best_sd = (v.double() for v in optimum(train))
                    posterior_sd = (_coin_optimum(train)[1] if story is _coin else _mean_optimum(train)[1]
                                    if story is _gaussian_mean else _regression_optimum(train, False)[1]).double()
                    ratio = (sd.double() / best_sd).max().item(), (sd.double() / best_sd).min().item()
                    shift = ((mean.double() - best_mean).abs() / posterior_sd).max().item()
                    truth = ("far" if ratio[0] > 2 or shift > 1 else
                             "converged" if ratio[0] <= 1.25 and ratio[1] >= 0.8 and shift <= 0.5 else "between")
                    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
                    rows.append({"case": name, "settings": options,
                                 "seed": seed, "intended": label, "epochs": result.epochs,
                                 "stopped_early": result.stopped_early, "sd_ratio": ratio[0],
                                 "sd_ratio_min": ratio[1], "shift": shift, "truth": truth, "warned": bool(messages),
                                 "messages": messages, "seconds": seconds})
                    print(f"{name:36s} {label:14s} {rows[-1]['settings']} seed {seed}: sd x{ratio[0]:.2f} "
                          f"(min x{ratio[1]:.2f}), {shift:.2f} sd off ({truth}) "
                          f"{caught_by(rows[-1]) if messages else 'quiet'} {seconds:.1f} s", flush=True)
    return rows


def global_table(rows: list[dict]) -> str:
    lines = ["| case | far fits warned | converged fits warned (false alarms) | between (warned) | by |",
             "|---|---:|---:|---:|---|"]
    for name in GLOBAL_CASES:
        mine = [r for r in rows if r["case"] == name]
        by = sorted({caught_by(r) for r in mine if r["warned"]})
        lines.append(f"| {name} | {_tally(mine, 'far')} | {_tally(mine, 'converged')} | "
                     f"{_tally(mine, 'between', '{total} ({warned})')} | {', '.join(by) or '-'} |")
    lines.append(f"| **all** | **{_tally(rows, 'far')}** | **{_tally(rows, 'converged')}** | "
                 f"{_tally(rows, 'between', '{total}')} | |")
    lines += ["", "Far fits not warned about, and converged ones warned about:", ""]
    odd = [r for r in rows if (r["truth"] == "far") != r["warned"] and r["truth"] != "between"]
    lines += [f"- {r['case']}, {r['settings']}, seed {r['seed']} ({r['truth']}): sd x{r['sd_ratio']:.2f}, "
              f"{r['shift']:.2f} sd off" for r in odd] or ["- none"]
    return "\n".join(lines)


def _tally(rows: list[dict], truth: str, form: str = "{warned} / {total}") -> str:
    """How many of the fits whose truth is ``truth`` were warned about, of how many."""
    mine = [r for r in rows if r["truth"] == truth]
    return form.format(warned=sum(r["warned"] for r in mine), total=len(mine))


def caught_by(row: dict) -> str:
    """Which check warned: the slope of the last epochs, stationarity, the guide against the posterior by
    importance sampling or by a Newton step (a Gaussian guide's optimality conditions), the uniform model."""
    kinds = [kind for kind, phrase in (("slope", "still improving"), ("stationarity", "stationary point"),
                                       ("posterior", "by importance sampling"), ("newton", "a Newton step"),
                                       ("uniform", "uniform"))
             if any(phrase in m for m in row["messages"])]
    return " + ".join(kinds) or "none"


def tables(calibration: list[dict], default_rows: list[dict], nsf_rows: list[dict]) -> str:
    lines = ["| case | family | far fits warned | converged fits warned (false alarms) | between |",
             "|---|---|---:|---:|---:|"]
    for name in CASES:
        mine = [r for r in calibration if r["case"] == name]
        lines.append(f"| {name} | {mine[0]['family']} | {_tally(mine, 'far')} | {_tally(mine, 'converged')} | "
                     f"{_tally(mine, 'between', '{total} ({warned} warned)')} |")
    lines.append(f"| **all** | | **{_tally(calibration, 'far')}** | **{_tally(calibration, 'converged')}** | "
                 f"{_tally(calibration, 'between', '{total}')} |")
    far = [r for r in calibration if r["truth"] == "far"]
    counts = {}
    for r in far:
        counts[caught_by(r)] = counts.get(caught_by(r), 0) + 1
    lines += ["", "Far fits by the check that warned: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    missed = [r for r in far if not r["warned"]]
    lines += ["Far fits not warned about (gap in nats per example):", ""]
    lines += [f"- {r['case']}, {r['settings']}, seed {r['seed']}: gap {r['gap']:.3f}" for r in missed] or ["- none"]
    lines += ["", "| case | fit chose | log-lik per row | reference | gap | warned |", "|---|---|---:|---:|---:|---|"]
    for r in default_rows:
        lines.append(f"| {r['case']} | {r['estimator']} / {r['optimizer']}, {r['epochs']} epochs | {r['loglik']:.4f} | "
                     f"{r['reference']:.4f} | {r['gap']:+.4f} | {'yes' if r['warned'] else 'no'} |")
    lines += ["", "| NSF alpha | logits of levels 0, 255 | train bits/dim | valid bits/dim | warned: worse than uniform |",
              "|---:|---|---:|---:|---|"]
    for r in nsf_rows:
        edge = math.log((1 - r["alpha"]) / r["alpha"])
        lines.append(f"| {r['alpha']:g} | ±{edge:.1f} | {r['train_bits_per_dim']:.2f} | "
                     f"{r['valid_bits_per_dim']:.2f} | {'yes' if r['warned_worse_than_uniform'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    import sys

    path = Path(__file__).parent / "results" / "fit_trust.json"
    if sys.argv[1:] == ["--tables"]:  # the tables again, from the last run's JSON
        saved = json.loads(path.read_text())
        print(tables(saved["calibration"], saved["defaults"], saved["nsf"]))
        print("\n" + global_table(saved.get("global_latents", [])))
        return
    if sys.argv[1:] == ["--global"]:
        torch.set_num_threads(1)
        rows = global_latents()
        print(global_table(rows))
        saved = json.loads(path.read_text()) if path.exists() else {}
        write_json_atomic({**saved, "global_latents": rows}, path)
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="sklearn")
    calibration = calibrate()
    default_rows = defaults()
    nsf_rows = nsf_pixels()
    global_rows = global_latents()
    print(tables(calibration, default_rows, nsf_rows))
    print("\n" + global_table(global_rows))
    write_json_atomic({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "tolerance": TOL, "calibration": calibration, "defaults": default_rows, "nsf": nsf_rows,
                       "global_latents": global_rows}, path)


if __name__ == "__main__":
    main()
