"""to_arviz round trips; NUTS and SVI against conjugate closed forms; PSIS k̂; LOO and compare."""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

from ppgen.inference.posterior import compare, loo, loo_approximate_posterior, pareto_khat, run_nuts, to_arviz

torch.set_num_threads(1)

# Three conjugate pairs in one model (their posteriors are independent), so one NUTS run checks all.
BETA = (2.0, 3.0)                         # p ~ Beta(2, 3); coin_n ~ Bernoulli(p)
PRIOR_MU, PRIOR_SD, NOISE_SD = 1.0, 2.0, 1.5  # mu ~ N(1, 2^2); y_n ~ N(mu, 1.5^2)
ALPHA = torch.tensor([1.0, 2.0, 3.0])     # pi ~ Dirichlet(alpha); c_n ~ Categorical(pi)


def conjugate_model(coins, ys, cats):
    p = pyro.sample("p", dist.Beta(*BETA))
    mu = pyro.sample("mu", dist.Normal(PRIOR_MU, PRIOR_SD))
    pi = pyro.sample("pi", dist.Dirichlet(ALPHA))
    with pyro.plate("coins", len(coins)):
        pyro.sample("coin", dist.Bernoulli(p), obs=coins)
    with pyro.plate("ys", len(ys)):
        pyro.sample("y", dist.Normal(mu, NOISE_SD), obs=ys)
    with pyro.plate("cats", len(cats)):
        pyro.sample("c", dist.Categorical(pi), obs=cats)


def conjugate_data():
    g = torch.Generator().manual_seed(1)
    coins = torch.bernoulli(torch.full((40,), 0.3), generator=g)
    ys = 0.5 + NOISE_SD * torch.randn(30, generator=g)
    cats = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 50, replacement=True, generator=g).float()
    return coins, ys, cats


def closed_form(coins, ys, cats):
    """Posterior mean and sd of every scalar: p, mu, pi[0..2]."""
    a, b = BETA[0] + coins.sum().item(), BETA[1] + (1 - coins).sum().item()
    precision = 1 / PRIOR_SD**2 + len(ys) / NOISE_SD**2
    mu_mean = (PRIOR_MU / PRIOR_SD**2 + ys.sum().item() / NOISE_SD**2) / precision
    conc = ALPHA + torch.bincount(cats.long(), minlength=3)
    c0 = conc.sum()
    return {
        "p": (np.array(a / (a + b)), np.array(math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))),
        "mu": (np.array(mu_mean), np.array(precision ** -0.5)),
        "pi": ((conc / c0).numpy(), (conc * (c0 - conc) / (c0**2 * (c0 + 1))).sqrt().numpy()),
        "_posterior": (a, b, mu_mean, precision ** -0.5, conc),
    }


def exact_guide(coins, ys, cats, narrow=1.0):
    """The exact posterior; ``narrow`` < 1 shrinks every sd by that factor (means kept)."""
    a, b, mu_mean, mu_sd, conc = closed_form(coins, ys, cats)["_posterior"]
    s = 1 / narrow**2  # Beta and Dirichlet sds shrink ~ 1/sqrt(concentration)
    pyro.sample("p", dist.Beta(a * s, b * s))
    pyro.sample("mu", dist.Normal(mu_mean, mu_sd * narrow))
    pyro.sample("pi", dist.Dirichlet(conc * s))


@pytest.fixture(scope="module")
def nuts_tree():
    return run_nuts(conjugate_model, conjugate_data(), num_chains=2, num_samples=400, warmup=200, seed=0)


def test_nuts_matches_conjugate_posteriors(nuts_tree):
    expected = closed_form(*conjugate_data())
    summary = az.summary(nuts_tree, round_to="none")
    for name in ("p", "mu", "pi"):
        rows = summary.loc[[i for i in summary.index if i == name or i.startswith(f"{name}[")]]
        mean, sd = expected[name]
        mean_err = np.abs(rows["mean"].to_numpy() - mean.ravel())
        sd_err = np.abs(rows["sd"].to_numpy() - sd.ravel())
        assert (mean_err < 4 * rows["mcse_mean"].to_numpy()).all(), (name, mean_err, rows)
        assert (sd_err < 4 * rows["mcse_sd"].to_numpy()).all(), (name, sd_err, rows)
        assert (rows["r_hat"].to_numpy() < 1.01).all(), rows
    assert not nuts_tree["sample_stats"]["diverging"].any()
    assert (nuts_tree["sample_stats"]["step_size"] > 0).all()


def test_svi_matches_conjugate_posteriors():
    data = conjugate_data()
    guide = AutoMultivariateNormal(conjugate_model)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(conjugate_model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999}), elbo)
    for _ in range(1000):
        svi.step(*data)
    tree = to_arviz(guide, conjugate_model, data, num_samples=4000, seed=1)
    expected = closed_form(*data)
    for name in ("p", "mu", "pi"):
        draws = tree["posterior"][name].values.reshape(4000, -1)
        mean, sd = expected[name]
        mcse = sd.ravel() / math.sqrt(len(draws))
        # A Gaussian in the unconstrained space is not the Beta/Dirichlet posterior: SVI tolerance
        # of 10% of a posterior sd on means and 10% on sds, on top of 4 Monte Carlo standard errors.
        assert (np.abs(draws.mean(0) - mean.ravel()) < 0.1 * sd.ravel() + 4 * mcse).all(), name
        assert (np.abs(draws.std(0) / sd.ravel() - 1) < 0.1 + 4 / math.sqrt(2 * len(draws))).all(), name


def test_pareto_khat_good_for_exact_guide_and_bad_for_narrow_one():
    data = conjugate_data()
    good = pareto_khat(conjugate_model, exact_guide, data, num_samples=2000)
    narrow = pareto_khat(conjugate_model, lambda *d: exact_guide(*d, narrow=0.2), data, num_samples=2000)
    assert good.khat < 0.5 and good.verdict == "good"
    assert narrow.khat > 0.7 and narrow.verdict == "bad"
    assert "k̂" in narrow.message


def beta_bernoulli(x):
    p = pyro.sample("p", dist.Beta(1.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Bernoulli(p), obs=x)


def grouped(x):
    """Nested plates: mu has Pyro's singleton dim (G, 1), which to_arviz squeezes."""
    with pyro.plate("groups", x.shape[0], dim=-2):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    pyro.sample("scale", dist.LogNormal(0.0, 1.0).expand([2]).to_event(1))


def test_to_arviz_from_dict_round_trips_values_and_dims():
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.3]])
    g = torch.Generator().manual_seed(0)
    draws = {"mu": torch.randn(3, 20, 2, 1, generator=g), "scale": torch.rand(3, 20, 2, generator=g) + 0.5}
    tree = to_arviz(draws, grouped, x)
    post = tree["posterior"]
    assert post["mu"].dims == ("chain", "draw", "groups")
    assert post["scale"].dims == ("chain", "draw", "scale_dim_0")
    np.testing.assert_array_equal(post["mu"].values, draws["mu"][..., 0].numpy())
    np.testing.assert_array_equal(post["scale"].values, draws["scale"].numpy())
    log_lik = tree["log_likelihood"]["x"]
    assert log_lik.dims == ("chain", "draw", "groups", "data")
    expected = dist.Normal(draws["mu"], 1.0).log_prob(x).numpy()
    np.testing.assert_allclose(log_lik.values, expected, rtol=1e-6)
    assert list(tree["log_likelihood"].data_vars) == ["x"]  # latents are not scored
    assert tree["posterior_predictive"]["x"].shape == (3, 20, 2, 3)
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, x.numpy())
    # predictions are drawn anew around each draw's mu, not copied from the data
    pred = tree["posterior_predictive"]["x"].values - draws["mu"].numpy()
    assert abs(pred.std() - 1.0) < 4 * 0.5 / math.sqrt(pred.size)


def test_to_arviz_from_mcmc_keeps_chains_and_draws():
    x = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mcmc = MCMC(NUTS(beta_bernoulli), num_samples=30, warmup_steps=20, disable_progbar=True)
    mcmc.run(x)
    tree = to_arviz(mcmc)
    np.testing.assert_array_equal(tree["posterior"]["p"].values, mcmc.get_samples(group_by_chain=True)["p"].numpy())
    assert tree["sample_stats"]["diverging"].shape == (1, 30)
    p = tree["posterior"]["p"].values[..., None]
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values,
                               np.where(x.numpy() == 1, np.log(p), np.log1p(-p)), rtol=1e-5)


def test_to_arviz_from_guide_scores_draws_under_model_and_guide():
    x = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])

    def guide(x):
        pyro.sample("p", dist.Beta(3.0, 2.0))

    tree = to_arviz(guide, beta_bernoulli, x, num_samples=200, seed=3)
    p = torch.as_tensor(tree["posterior"]["p"].values)
    assert p.shape == (1, 200)
    stats = tree["sample_stats"]
    np.testing.assert_allclose(stats["log_guide"].values, dist.Beta(3.0, 2.0).log_prob(p).numpy(), rtol=1e-5)
    log_lik = dist.Bernoulli(p[..., None]).log_prob(x).sum(-1)
    np.testing.assert_allclose(stats["log_joint"].values, log_lik.numpy(), rtol=1e-5, atol=1e-6)
    again = to_arviz(guide, beta_bernoulli, x, num_samples=200, seed=3)
    np.testing.assert_array_equal(again["posterior"]["p"].values, p.numpy())  # seeded


def test_loo_and_compare_run_on_to_arviz_output(nuts_tree):
    data = conjugate_data()
    guide_tree = to_arviz(exact_guide, conjugate_model, data, num_samples=1000)
    loo_nuts, loo_guide = loo(nuts_tree, var_name="y"), loo_approximate_posterior(guide_tree, var_name="y")
    # the same posterior twice: the same elpd within a few standard errors of the difference
    assert abs(loo_nuts.elpd - loo_guide.elpd) < 0.5
    table = compare({"nuts": nuts_tree, "exact": guide_tree}, var_name="y")
    assert set(table.index) == {"nuts", "exact"}
    with pytest.raises(ValueError, match="log_joint"):
        loo_approximate_posterior(nuts_tree)
