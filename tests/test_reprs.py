"""Result objects print a few lines whatever the input size, and give their figures as JSON-ready dicts."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from conftest import load_script
from ppgen.inference import fit, log_likelihood
from ppgen.inference.diagnostics import elbo_report, elbo_terms
from ppgen.inference.program import check_model
from ppgen.models import VAE, BayesNet

LIMIT = 2000  # characters


def as_json(result) -> dict:
    """``result.to_dict()``, after checking that it survives a JSON round trip unchanged."""
    figures = result.to_dict()
    assert json.loads(json.dumps(figures)) == figures
    return figures


@pytest.fixture(scope="module")
def vae_and_rows(digits):
    pyro.set_rng_seed(0)
    model = VAE(784, z_dim=50, hidden=16, seed=0)  # 50 latent units: the per-dimension lists are long
    result = fit(model, digits["train"].x[:2000], epochs=2, batch_size=10, lr=1e-3, progress=False)  # 400 steps
    return model, result, digits["valid"].x


def test_fit_result_is_short_and_its_figures_are_the_history(vae_and_rows):
    _, result, _ = vae_and_rows
    assert len(result.losses) == 400 and len(repr(result)) < LIMIT
    figures = as_json(result)
    assert figures["train_elbo"] == result.train_elbo and figures["final_loss"] == result.losses[-1]
    assert figures["model"] == "VAE" and figures["steps"] == 400 and figures["check"]["latent"] == ["z"]
    assert "losses" not in figures  # per-step values stay an attribute


def test_elbo_report_and_terms_are_short_and_their_figures_are_the_means(vae_and_rows):
    model, _, x = vae_and_rows
    report = elbo_report(model, x, num_samples=2, iwae_samples=4, estimators=("trace",), gradient_repeats=2,
                         gradient_batch_size=20)
    for text in (repr(report), str(report), repr(report.terms)):
        assert len(text) < LIMIT
    assert repr(report).count("\n") < 15 and "nats per example" in repr(report)
    figures = as_json(report)
    assert figures["num_examples"] == len(x) == 1000 and len(figures["kl_per_dim"]["z"]) == 50
    assert math.isclose(figures["elbo"], report.terms.elbo.mean().item(), rel_tol=1e-6)
    assert math.isclose(figures["gap"], figures["log_likelihood"] - figures["elbo"], rel_tol=1e-6)
    assert figures["gradients"]["trace"]["repeats"] == 2
    terms = as_json(report.terms)
    assert math.isclose(terms["kl"]["z"], report.terms.kl["z"].mean().item(), rel_tol=1e-6)
    assert f"{report.terms.elbo.mean().item():.3f}" in repr(report.terms)


def test_likelihood_result_is_short(vae_and_rows):
    model, _, x = vae_and_rows
    result = log_likelihood(model, x, num_samples=2)
    assert len(repr(result)) < LIMIT and as_json(result)["num_examples"] == len(x)


def many_sites(x):
    """A story with 60 local latent sites: the reprs must list some and count the rest."""
    with pyro.plate("rows", x.shape[0]):
        for i in range(60):
            z = pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x{i}", dist.Normal(z, 1.0), obs=x[:, i])


def test_reprs_stay_short_with_many_sites():
    x = torch.randn(300, 60)
    check = check_model(many_sites, x, guide="auto_normal")
    assert len(repr(check)) < LIMIT and len(str(check)) < LIMIT and "more" in repr(check)
    assert len(as_json(check)["observed"]) == 60
    report = elbo_report(many_sites, x, guide="auto_normal", num_samples=2, iwae_samples=2, estimators=())
    assert len(repr(report)) < LIMIT and "55 more latent sites" in repr(report)
    assert len(repr(report.terms)) < LIMIT and len(as_json(report)["kl"]) == 60
    total = sum(report.kl.values())
    assert math.isclose(as_json(report)["kl_total"], total, rel_tol=1e-9)


def test_model_check_of_a_large_network_is_short():
    names = [f"v{i}" for i in range(300)]  # a chain of 300 binary variables
    net = BayesNet({n: ["0", "1"] for n in names}, {b: [a] for a, b in zip(names, names[1:])})
    check = check_model(net, torch.zeros(4, 300, dtype=torch.long))
    assert len(repr(check)) < LIMIT and as_json(check)["estimator"] == "mle"


def test_autoguide_auxiliary_sites_count_in_the_kl():
    # AutoNormal draws "z_unconstrained" (auxiliary) and then z as a Delta that carries only the Jacobian:
    # log q(z) is the auxiliary site's. Untrained, q(z_i | x) = N(m_i, 0.1^2) with m_i a prior median
    # (|m_i| < 0.4), so KL(q || N(0, 1)) = 0.5 (0.01 + m_i^2 - 1) - log 0.1 lies in [1.808, 1.888].
    x = torch.randn(300, 60)
    terms = elbo_terms(many_sites, x, guide="auto_normal", num_samples=50)
    assert sorted(terms.kl) == sorted(f"z{i}" for i in range(60))
    kl = torch.stack([v.mean() for v in terms.kl.values()])
    assert ((kl > 1.808 - 0.03) & (kl < 1.888 + 0.03)).all()  # Monte Carlo s.e. of each ~0.005
    # the same guide initialisation (seed 0) scored by log_likelihood's mean log weight: a second algorithm
    reference = log_likelihood(many_sites, x, guide="auto_normal", num_samples=50).elbo
    assert abs(terms.elbo.mean().item() - reference) < 0.2


def test_likelihood_labels_reach_the_dict_the_command_table_and_the_leaderboard(vae_and_rows, tmp_path):
    """to_dict carries what the figure is; ppgen's table and benchmarks/leaderboard.py print that label, and the
    leaderboard still reads run folders written before figures carried it (their words from the same describe)."""
    from ppgen.cli import format_table
    from ppgen.inference.likelihood import describe

    model, _, x = vae_and_rows
    result = log_likelihood(model, x[:20], num_samples=5)
    figures = as_json(result)
    assert (figures["kind"], figures["errs"], figures["method"], figures["exact"]) == ("bound", "low", "iwae", False)
    assert figures["label"] == "IWAE K=5: a lower bound on log p(x)"
    assert figures["row_std"] == pytest.approx(result.values.double().std().item(), rel=1e-6)
    floor = {"fid": 0.5, "kid": 0.001, "precision": 0.9, "recall": 0.88, "rows": 40}
    quality = {"fid": 12.0, "kid": 0.02, "precision": 0.7, "recall": 0.1, "real_vs_real": floor}
    table = format_table({"vae": {**figures, "num_parameters": 10, "sample_quality": quality}})
    assert f"| {result.label} |" in table and "| 12.00 (0.50) |" in table and "| 0.70 / 0.10 (0.90 / 0.88) |" in table

    leaderboard = load_script("benchmarks/leaderboard.py")
    assert leaderboard.run_label(figures) == result.label
    old = {"log_likelihood": -90.0, "stderr": 0.0, "exact": True, "num_samples": 0, "method": "exact"}
    assert leaderboard.run_label(old) == "exact" == describe("exact", "exact")
    old_iwae = {**old, "exact": False, "num_samples": 1000, "method": "iwae"}
    assert leaderboard.run_label(old_iwae) == "IWAE K=1000: a lower bound on log p(x)"
    with pytest.raises(SystemExit, match="AIS figure without its kind"):  # errs high or low with the model
        leaderboard.run_label({**old_iwae, "method": "ais"})
