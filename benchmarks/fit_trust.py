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

One CPU thread; about 25 minutes. Writes ``benchmarks/results/fit_trust.json`` and prints the
Markdown tables of ``benchmarks/RESULTS.md``.

    python benchmarks/fit_trust.py
    python benchmarks/fit_trust.py --tables   # the tables again, from benchmarks/results/fit_trust.json
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import warnings
from pathlib import Path

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


def caught_by(row: dict) -> str:
    """Which check warned: the slope of the last epochs, stationarity, the uniform model."""
    kinds = [kind for kind, phrase in (("slope", "still improving"), ("stationarity", "stationary point"),
                                       ("uniform", "uniform")) if any(phrase in m for m in row["messages"])]
    return " + ".join(kinds) or "none"


def tables(calibration: list[dict], default_rows: list[dict], nsf_rows: list[dict]) -> str:
    lines = ["| case | family | far fits warned | converged fits warned (false alarms) | between |",
             "|---|---|---:|---:|---:|"]
    for name in CASES:
        mine = [r for r in calibration if r["case"] == name]
        far = [r for r in mine if r["truth"] == "far"]
        done = [r for r in mine if r["truth"] == "converged"]
        between = [r for r in mine if r["truth"] == "between"]
        lines.append(f"| {name} | {mine[0]['family']} | {sum(r['warned'] for r in far)} / {len(far)} | "
                     f"{sum(r['warned'] for r in done)} / {len(done)} | {len(between)} "
                     f"({sum(r['warned'] for r in between)} warned) |")
    far = [r for r in calibration if r["truth"] == "far"]
    done = [r for r in calibration if r["truth"] == "converged"]
    lines.append(f"| **all** | | **{sum(r['warned'] for r in far)} / {len(far)}** | "
                 f"**{sum(r['warned'] for r in done)} / {len(done)}** | "
                 f"{sum(r['truth'] == 'between' for r in calibration)} |")
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

    if sys.argv[1:] == ["--tables"]:  # the tables again, from the last run's JSON
        saved = json.loads((Path(__file__).parent / "results" / "fit_trust.json").read_text())
        print(tables(saved["calibration"], saved["defaults"], saved["nsf"]))
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="sklearn")
    calibration = calibrate()
    default_rows = defaults()
    nsf_rows = nsf_pixels()
    print(tables(calibration, default_rows, nsf_rows))
    write_json_atomic({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "tolerance": TOL, "calibration": calibration, "defaults": default_rows, "nsf": nsf_rows},
                      Path(__file__).parent / "results" / "fit_trust.json")


if __name__ == "__main__":
    main()
