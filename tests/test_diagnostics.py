"""ELBO decomposition, active units, gradient statistics and the linear probe, against independent computations."""

import pyro
import pytest
import torch
from matplotlib.figure import Figure

from ppgen.inference import fit, log_likelihood
from ppgen.inference.diagnostics import elbo_report, elbo_terms, format_report, gradient_stats, plot_elbo_report
from ppgen.inference.representation import linear_probe_accuracy
from ppgen.models.latent import PPCA, VAE, GaussianMixture
from ppgen.plots import latent_map


@pytest.fixture(scope="module")
def trained(digits):
    pyro.set_rng_seed(0)
    model = VAE(784, z_dim=6, hidden=64)
    fit(model, digits["train"].x[:1000], epochs=3, batch_size=100, lr=3e-3, progress=False)
    return model


def test_analytic_kl_is_the_gaussian_formula_and_agrees_with_monte_carlo(trained, digits):
    x = digits["test"].x[:200]
    analytic = elbo_terms(trained, x, num_samples=2)
    assert analytic.kl_method == {"z": "analytic"} and analytic.kl_stderr == {"z": 0.0}
    loc, scale = trained.posterior_params(x)
    by_hand = 0.5 * (scale**2 + loc**2 - 1) - scale.log()  # KL(N(m, s^2) || N(0, 1)) per dimension
    assert torch.allclose(analytic.kl_per_dim["z"], by_hand.detach(), atol=1e-4)
    assert torch.allclose(analytic.kl["z"], by_hand.sum(-1).detach(), atol=1e-3)

    sampled = elbo_terms(trained, x, num_samples=200, kl="monte_carlo", seed=1)
    assert sampled.kl_method == {"z": "monte carlo"} and 0 < sampled.kl_stderr["z"] < 0.05
    difference = sampled.kl["z"].mean() - analytic.kl["z"].mean()
    assert abs(difference.item()) < 4 * sampled.kl_stderr["z"]
    # the per-dimension Monte Carlo terms add up to the site's
    assert torch.allclose(sampled.kl_per_dim["z"].sum(-1), sampled.kl["z"], atol=1e-3)


def test_elbo_terms_agree_with_the_importance_weights(trained, digits):
    # second algorithm: the mean log weight of log_likelihood, from independent draws
    x = digits["test"].x[:200]
    terms = elbo_terms(trained, x, num_samples=100)
    assert torch.allclose(terms.elbo, terms.reconstruction - terms.kl["z"])
    reference = log_likelihood(trained, x, num_samples=100, seed=5, device="cpu").elbo
    # per-example ELBO sd ~ 10 nats over 200 x 100 draws: sd of the mean ~0.1
    assert abs(terms.elbo.mean().item() - reference) < 0.5


def test_active_units_follow_the_covariance_criterion(trained, digits):
    x = digits["test"].x[:300]
    report = elbo_report(trained, x, num_samples=5, iwae_samples=50, estimators=())
    activity = trained.encode(x).var(0)  # Cov_x(E_q[z | x]), by hand
    assert torch.allclose(report.activity["z"], activity, atol=1e-5)
    assert report.active_units["z"] == int((activity > 0.01).sum()) > 0
    assert report.warning is None
    assert 0 < report.gap < 20 and not report.exact
    assert report.elbo < report.log_likelihood
    text = format_report(report)
    assert "active units (z)" in text and f"{report.elbo:.3f}" in text


def test_an_encoder_that_ignores_x_has_no_active_units(digits):
    model = VAE(784, z_dim=4, hidden=16)
    with torch.no_grad():
        model.encoder[0].weight.zero_()  # q(z | x) no longer depends on x
    report = elbo_report(model, digits["test"].x[:100], num_samples=5, iwae_samples=10, estimators=())
    assert report.active_units == {"z": 0}
    assert torch.all(report.activity["z"] < 1e-12)
    assert "posterior collapse" in report.warning
    assert "WARNING: posterior collapse" in format_report(report)


def test_exact_posterior_closes_the_gap_on_ppca():
    model = PPCA(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0], [2.0, 0.3]]))
    x = model.sample(300)
    model.set_guide_to_exact_posterior()
    report = elbo_report(model, x, num_samples=10, estimators=())
    assert report.exact and report.kl_method == {"z": "monte carlo"}  # MVN q vs diagonal p: no closed form
    assert abs(report.gap) < 1e-3
    assert report.active_units == {"z": 2}


def test_gradient_variance_falls_as_one_over_the_particles(trained, digits):
    # averaging K independent single-sample gradients divides every variance by K
    x = digits["train"].x[:50]
    one = gradient_stats(trained, x, estimators=("trace",), num_particles=1, repeats=40)["trace"]
    four = gradient_stats(trained, x, estimators=("trace",), num_particles=4, repeats=40)["trace"]
    assert 2.5 < one.variance / four.variance < 6.0  # 4, within the spread of 40-draw variances
    assert four.snr > one.snr
    iwae = gradient_stats(trained, x, estimators=("iwae",), num_particles=4, repeats=40)["iwae"]
    assert iwae.guide[1] < four.guide[1]  # Rainforth et al. 2018: tighter bounds, noisier encoder gradients


def test_report_for_models_without_sampled_latents_is_refused():
    with pytest.raises(ValueError, match="enumerated"):
        elbo_terms(GaussianMixture(2, 3), torch.randn(10, 2))


def test_plot_elbo_report_returns_a_figure(trained, digits, tmp_path):
    report = elbo_report(trained, digits["test"].x[:100], num_samples=5, iwae_samples=10, gradient_repeats=3,
                         gradient_batch_size=20)
    assert set(report.gradients) == {"trace", "meanfield", "iwae"}
    fig = plot_elbo_report(report, tmp_path / "report.png")
    assert isinstance(fig, Figure) and (tmp_path / "report.png").stat().st_size > 0


def test_linear_probe_matches_scikit_learn(trained, digits):
    linear_model = pytest.importorskip("sklearn.linear_model")
    z_train, y_train = trained.encode(digits["train"].x[:1000]), digits["train"].y[:1000]
    z_test, y_test = trained.encode(digits["test"].x[:500]), digits["test"].y[:500]
    ours = linear_probe_accuracy(z_train, y_train, z_test, y_test, l2=1e-3)
    mean, std = z_train.mean(0), z_train.std(0)
    # sklearn minimises sum of losses + ||W||^2 / (2 C): C = 1 / (l2 N) gives the same optimum
    reference = linear_model.LogisticRegression(C=1 / (1e-3 * 1000), max_iter=2000, tol=1e-8)
    reference.fit(((z_train - mean) / std).numpy(), y_train.numpy())
    expected = reference.score(((z_test - mean) / std).numpy(), y_test.numpy())
    assert abs(ours - expected) <= 0.01
    assert ours > 0.4  # the codes carry the digit class (chance 0.1)
    shuffled = y_train[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    assert linear_probe_accuracy(z_train, shuffled, z_test, y_test) < 0.2
    assert isinstance(latent_map(z_test, y_test), Figure)
