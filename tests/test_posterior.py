"""to_arviz round trips; NUTS and SVI against conjugate closed forms; PSIS k̂; LOO and compare."""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.ops.indexing import Vindex

from ppgen import ModelCheckError
from ppgen.inference import fit
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


def test_a_deterministic_site_is_reported_beside_the_draws_not_scored_as_data():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x)):
            pyro.deterministic("shifted", x - mu)
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    x, mu = torch.tensor([0.5, 1.0, 2.5]), torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    tree = to_arviz({"mu": mu}, model, x)
    assert sorted(tree["posterior"].data_vars) == ["mu", "shifted"]
    assert tree["posterior"]["shifted"].dims == ("chain", "draw", "data")
    np.testing.assert_allclose(tree["posterior"]["shifted"].values, (x - mu[..., None]).numpy(), rtol=1e-6)
    assert list(tree["log_likelihood"].data_vars) == ["obs"] == list(tree["observed_data"].data_vars)
    np.testing.assert_allclose(tree["log_likelihood"]["obs"].values,
                               dist.Normal(mu[..., None], 1.0).log_prob(x).numpy(), rtol=1e-6)



def test_a_factor_is_in_the_joint_and_not_scored_as_data():
    """pyro.factor adds a term to log p(x, z) (as PyMC's Potential), not an observation: it was put in the
    log_likelihood group beside the data, where ArviZ's LOO then refused to choose between the two."""
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.factor("shrink", -0.5 * mu ** 2)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(1.2, 0.5))

    x = torch.tensor([0.5, 1.0, 2.5, 1.5, 0.0])
    tree = to_arviz(guide, model, x, num_samples=200, seed=0)
    assert list(tree["log_likelihood"].data_vars) == ["obs"] == list(tree["observed_data"].data_vars)
    assert list(tree["posterior_predictive"].data_vars) == ["obs"]
    mu = torch.as_tensor(tree["posterior"]["mu"].values)
    joint = dist.Normal(0.0, 10.0).log_prob(mu) - 0.5 * mu ** 2 + dist.Normal(mu[..., None], 1.0).log_prob(x).sum(-1)
    np.testing.assert_allclose(tree["sample_stats"]["log_joint"].values, joint.numpy(), rtol=1e-5)
    assert loo_approximate_posterior(tree).elpd_i.shape == (5,)


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


# A mixture of two unit Gaussians whose component c_n is summed out (enumerated), as NUTS and TraceEnum_ELBO sum it.
MIX_W, MIX_LOCS = dist.Beta(2.0, 2.0), dist.Normal(torch.zeros(2), 5.0).to_event(1)


def enumerated_mixture(x):
    w = pyro.sample("w", MIX_W)
    locs = pyro.sample("locs", MIX_LOCS)
    with pyro.plate("rows", len(x)):
        c = pyro.sample("c", dist.Bernoulli(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(locs)[..., c.long()], 1.0), obs=x)


def mixture_rows(w, locs, x):
    """log p(x_n | w, locs) = log((1 - w) N(x_n; locs_0, 1) + w N(x_n; locs_1, 1)) per draw and row, float64."""
    w, locs, x = w.double()[..., None], locs.double(), x.double()
    return torch.logaddexp(torch.log1p(-w) + dist.Normal(locs[..., :1], 1.0).log_prob(x),
                           torch.log(w) + dist.Normal(locs[..., 1:], 1.0).log_prob(x))


MIX_X = torch.cat([torch.randn(40, generator=torch.Generator().manual_seed(2)) - 2.0,
                   torch.randn(60, generator=torch.Generator().manual_seed(3)) + 1.5])


def test_an_enumerated_site_has_no_draws_and_is_summed_out_of_each_row_s_log_likelihood():
    draws = {"w": torch.tensor([[0.3, 0.6, 0.5]]), "locs": torch.tensor([[[-2.0, 1.5], [0.0, 1.0], [1.5, -2.0]]])}
    tree = to_arviz(draws, enumerated_mixture, MIX_X)
    assert sorted(tree["posterior"].data_vars) == ["locs", "w"]
    log_lik = tree["log_likelihood"]["x"]
    assert log_lik.dims == ("chain", "draw", "rows")
    expected = mixture_rows(draws["w"], draws["locs"], MIX_X)  # (1, 3, 100)
    np.testing.assert_allclose(log_lik.values, expected.numpy(), rtol=0, atol=2e-5)  # float32 densities
    with pytest.raises(ValueError, match=r"unknown \['c'\], missing \[\]"):  # the summed-out site cannot be given
        to_arviz({**draws, "c": torch.zeros(1, 3, 100)}, enumerated_mixture, MIX_X)


def test_nothing_to_draw_and_too_few_draws_for_psis_are_refused_naming_why():
    def point_mixture(x):  # parameters and a summed-out component: no latent to draw
        locs = pyro.param("locs", torch.tensor([-2.0, 1.5]))
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.4), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(Vindex(locs)[..., c.long()], 1.0), obs=x)

    with pytest.raises(ValueError, match="point_mixture has no latent to draw"):
        to_arviz({}, point_mixture, MIX_X)
    with pytest.raises(ValueError, match="the guide of point_mixture draws no latent"):
        pareto_khat(point_mixture, lambda x: None, MIX_X, num_samples=30)
    with pytest.raises(ValueError, match="num_samples must be at least 25 for PSIS"):
        pareto_khat(enumerated_mixture, "auto_normal", MIX_X, num_samples=24)
    # a point estimate draws one value: every weight is the same (ArviZ stopped on "All tail values are the same")
    with pytest.raises(ValueError, match=r"the guide of conjugate_model draws the same value every time \(a point "
                                         r"estimate: AutoDelta"):
        pareto_khat(conjugate_model, "auto_delta", conjugate_data(), num_samples=30)


def _regression(broadcasts: bool):
    def regression(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 10.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", len(x)):
            # x @ w runs on one draw but not on a batch of them; w.unsqueeze(-2) broadcasts a batch against the
            # wrong dim, scoring each draw under the others' parameters; (x * w).sum(-1) is right for both
            mean = (x * w).sum(-1) if broadcasts else x @ w if broadcasts is None else (x * w.unsqueeze(-2)).sum(-1)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    return regression


def test_a_story_that_does_not_broadcast_over_the_draws_is_scored_one_draw_at_a_time():
    """x @ w fails on a batch of draws, and a misplaced unsqueeze scores each draw under all the others' parameters
    without failing: both are scored draw by draw, and give what the story that broadcasts gives, to float32."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.randn(20, generator=g)
    draws = {"w": torch.randn(2, 15, 3, generator=g), "sigma": 0.5 + torch.rand(2, 15, generator=g)}
    right = to_arviz(draws, _regression(True), (x, y))["log_likelihood"]["y"].values
    closed = dist.Normal((x * draws["w"][..., None, :]).sum(-1), draws["sigma"][..., None]).log_prob(y).numpy()
    np.testing.assert_allclose(right, closed, rtol=1e-5)
    for story in (_regression(None), _regression(False)):
        np.testing.assert_allclose(to_arviz(draws, story, (x, y))["log_likelihood"]["y"].values, closed, rtol=1e-5)
        tree = to_arviz(lambda x, y: _normal_guide(), story, (x, y), num_samples=40, seed=2)
        w, sigma = (torch.from_numpy(tree["posterior"][k].values) for k in ("w", "sigma"))
        expected = (dist.Normal((x * w[..., None, :]).sum(-1), sigma[..., None]).log_prob(y).sum(-1)
                    + dist.Normal(torch.zeros(3), 10.0).log_prob(w).sum(-1) + dist.HalfNormal(1.0).log_prob(sigma))
        np.testing.assert_allclose(tree["sample_stats"]["log_joint"].values, expected.numpy(), rtol=1e-5)


def test_an_enumerated_story_that_does_not_broadcast_over_the_draws_is_refused_with_the_fix():
    def indexed(x):  # locs[c] in place of Vindex(locs)[..., c]: fine on one draw, wrong on a batch of them
        w = pyro.sample("w", MIX_W)
        locs = pyro.sample("locs", MIX_LOCS)
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Bernoulli(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[c.long()], 1.0), obs=x)

    with pytest.raises(ModelCheckError, match=r"indexed does not broadcast over a dimension of draws \(the 30 draws "
                                              r"are scored at once, in a plate at dim -2, to sum out its enumerated "
                                              r"sites\): .*Keep the leading batch dimensions"):
        pareto_khat(indexed, "auto_normal", MIX_X, num_samples=30)


def _normal_guide():
    pyro.sample("w", dist.Normal(torch.zeros(3), 0.5).to_event(1))
    pyro.sample("sigma", dist.LogNormal(0.0, 0.3))


def test_a_pointwise_log_likelihood_that_enumeration_couples_is_refused_naming_why():
    def switch(x):  # one component for all rows: summed out, it couples them
        locs = pyro.sample("locs", MIX_LOCS)
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(Vindex(locs)[..., c.long()], 1.0), obs=x)

    def twice(x):  # two observed sites of one component a row
        locs = pyro.sample("locs", MIX_LOCS)
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(Vindex(locs)[..., c.long()], 1.0), obs=x)
            pyro.sample("x2", dist.Normal(Vindex(locs)[..., c.long()], 2.0), obs=x)

    draws = {"locs": torch.tensor([[[-2.0, 1.5]]])}
    with pytest.raises(ModelCheckError, match=r"the enumerated sites \['c'\] share no plate with the observed site "
                                              r"'x': summed out, they couple all its values"):
        to_arviz(draws, switch, MIX_X)
    with pytest.raises(ModelCheckError, match=r"the enumerated sites \['c'\] are summed out of the observed sites "
                                              r"\['x', 'x2'\] together"):
        to_arviz(draws, twice, MIX_X)


def test_guide_draws_of_a_model_with_an_enumerated_site_weigh_the_joint_with_it_summed_out():
    """The sample_stats' log p(x, w, locs) of each guide draw is the closed form; and a fitted guide's k̂ is
    good, where scoring the component drawn from its prior gave k̂ = 25 and a log-likelihood twice too low."""
    pyro.clear_param_store()
    result = fit(enumerated_mixture, MIX_X, guide="auto_multivariate_normal", epochs=600, batch_size=len(MIX_X),
                 lr=0.02, progress=False, seed=0)
    tree = to_arviz(result, enumerated_mixture, MIX_X, num_samples=300, seed=1)
    w, locs = (torch.from_numpy(tree["posterior"][k].values) for k in ("w", "locs"))
    expected = (mixture_rows(w, locs, MIX_X).sum(-1) + MIX_W.log_prob(w.double())
                + MIX_LOCS.log_prob(locs.double()))
    np.testing.assert_allclose(tree["sample_stats"]["log_joint"].values, expected.numpy(), rtol=1e-6, atol=1e-3)
    khat = pareto_khat(enumerated_mixture, result, MIX_X, num_samples=300, seed=1)
    assert khat.verdict == "good", khat


def test_nuts_on_a_model_with_an_enumerated_site_gives_a_tree_that_sums_it_out():
    tree = run_nuts(enumerated_mixture, MIX_X, num_chains=1, num_samples=60, warmup=60, seed=0)
    assert sorted(tree["posterior"].data_vars) == ["locs", "w"]
    w, locs = (torch.from_numpy(tree["posterior"][k].values) for k in ("w", "locs"))
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values, mixture_rows(w, locs, MIX_X).numpy(), rtol=0,
                               atol=2e-5)
    with warnings.catch_warnings():  # 60 draws: ArviZ warns from a k̂ of 0.44, which this short run may reach
        warnings.simplefilter("ignore", UserWarning)
        # ArviZ reads the pointwise values: elpd_loo lies within a few effective parameters (3 here) of their sum
        assert loo(tree).elpd == pytest.approx(tree["log_likelihood"]["x"].values.mean(1).sum(), abs=5.0)


@pytest.mark.parametrize("how", ["distribution", "poutine"])
def test_masked_out_values_are_no_data_in_the_tree(how):
    """x_n ~ N(mu, 2^2) with a fifth of the values missing (filled with 0 and masked out). Pyro scores a masked
    value 0: counted as an observation it widened LOO's standard error (the values' spread held the zeros: 23.1
    for 15.4 on 400 rows) and was one of its points. The tree keeps the observed values only, along
    ``x_observed`` (as PyMC does), and shows the missing ones as NaN among the data; its LOO is the unmasked
    story's on the observed values."""
    def story(x, observed):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            if how == "distribution":
                pyro.sample("x", dist.Normal(mu, 2.0).mask(observed), obs=x)
            else:
                with pyro.poutine.mask(mask=observed):
                    pyro.sample("x", dist.Normal(mu, 2.0), obs=x)

    def complete(x):
        return story(x, torch.ones(len(x), dtype=torch.bool))

    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(200, generator=generator) + 3
    observed = torch.rand(200, generator=generator) < 0.8
    precision = 1 / 100 + observed.sum().item() / 4
    mean, sd = x[observed].sum().item() / 4 / precision, precision ** -0.5
    mu = mean + sd * torch.randn(1, 500, generator=generator)  # exact posterior draws
    tree = to_arviz({"mu": mu}, story, (torch.where(observed, x, 0.0), observed))
    log_lik = tree["log_likelihood"]["x"]
    assert log_lik.dims == ("chain", "draw", "x_observed")
    np.testing.assert_allclose(log_lik.values[0], dist.Normal(mu[0, :, None], 2.0).log_prob(x[observed]).numpy(),
                               rtol=1e-6)
    data = tree["observed_data"]["x"].values
    assert np.isnan(data[~observed.numpy()]).all() and np.allclose(data[observed.numpy()], x[observed].numpy())
    assert tree["posterior_predictive"]["x"].shape == (1, 500, 200)  # draws for the missing values too
    masked, unmasked = loo(tree, var_name="x"), loo(to_arviz({"mu": mu}, complete, x[observed]), var_name="x")
    assert masked.n_data_points == unmasked.n_data_points == observed.sum().item()
    assert masked.elpd == pytest.approx(unmasked.elpd, rel=1e-6) and masked.se == pytest.approx(unmasked.se, rel=1e-6)


def test_numpy_data_is_taken_as_fit_takes_it():
    """fit takes NumPy arrays; to_arviz and pareto_khat stopped inside Pyro ("The value argument to log_prob
    must be a Tensor"). The same arrays as tensors give the same tree."""
    data = conjugate_data()
    arrays = tuple(d.numpy() for d in data)
    draws = {"p": torch.full((1, 30), 0.3), "mu": torch.full((1, 30), 0.5), "pi": torch.full((1, 30, 3), 1 / 3)}
    from_arrays, from_tensors = to_arviz(draws, conjugate_model, arrays), to_arviz(draws, conjugate_model, data)
    for name in ("coin", "y", "c"):
        np.testing.assert_array_equal(from_arrays["log_likelihood"][name].values,
                                      from_tensors["log_likelihood"][name].values)
    assert pareto_khat(conjugate_model, exact_guide, arrays, num_samples=100).khat == pytest.approx(
        pareto_khat(conjugate_model, exact_guide, data, num_samples=100).khat)
