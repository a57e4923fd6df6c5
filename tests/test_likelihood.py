"""Importance-sampled log-likelihood against the exact marginal of a linear-Gaussian model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppgen import LikelihoodResult, log_likelihood
from ppgen.inference import fit
from ppgen.models import IndependentBernoulli

W = torch.tensor([1.5, -0.8, 0.5])
B = torch.tensor([0.2, 0.0, -0.3])
SIGMA = 0.7


def linear_gaussian(x):
    """z ~ N(0, 1); x | z ~ N(W z + B, SIGMA^2 I): marginal x ~ N(B, W W^T + SIGMA^2 I)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(B + z.unsqueeze(-1) * W, SIGMA).to_event(1), obs=x)


def exact_log_marginal(x):
    cov = torch.outer(W, W) + SIGMA**2 * torch.eye(3)
    return dist.MultivariateNormal(B, cov).log_prob(x)


def posterior(x):
    """Exact q(z | x): precision 1 + |W|^2 / SIGMA^2."""
    var = 1.0 / (1.0 + W.dot(W) / SIGMA**2)
    return var * ((x - B) @ W) / SIGMA**2, math.sqrt(var)


def make_guide(loc_shift=0.0, scale_factor=1.0):
    def guide(x):
        loc, scale = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + loc_shift, scale * scale_factor))
    return guide


@pytest.fixture
def data():
    return dist.MultivariateNormal(B, torch.outer(W, W) + SIGMA**2 * torch.eye(3)).sample((200,))


def test_importance_sampling_agrees_with_exact_within_its_standard_error(data):
    exact = exact_log_marginal(data).mean().item()
    result = log_likelihood(linear_gaussian, data, guide=make_guide(0.3, 1.6), num_samples=2000, seed=3)
    assert not result.exact
    assert 0 < result.stderr < 0.01  # small enough that the check below has teeth
    # The estimator's bias is O(Var / K), far below its standard error at K = 2000.
    assert abs(result.mean - exact) < 4 * result.stderr
    # and the ELBO of an imperfect guide is clearly below the likelihood
    assert result.elbo < exact - 0.05


def test_optimal_guide_makes_every_weight_exact(data):
    result = log_likelihood(linear_gaussian, data, guide=make_guide(), num_samples=10)
    assert torch.allclose(result.values.double(), exact_log_marginal(data).double(), atol=1e-4)
    assert result.stderr < 1e-5 and abs(result.elbo - result.mean) < 1e-4


def test_iwae_bound_rises_with_k_towards_exact(data):
    exact = exact_log_marginal(data).mean().item()
    guide = make_guide(0.8, 2.5)  # a poor proposal, so the bound moves visibly with K
    bounds = [log_likelihood(linear_gaussian, data, guide=guide, num_samples=k, seed=k) for k in (1, 10, 1000)]
    means = [b.mean for b in bounds]
    assert means[0] < means[1] < means[2] <= exact + 4 * bounds[2].stderr
    assert exact - means[2] < exact - means[0]


def test_svi_recovers_the_gaussian_marginal_with_autoguide(data):
    # A plain Pyro function with an autoguide: the learned AutoNormal posterior gives an
    # importance-sampled likelihood equal to the exact one.
    def model(x):
        w = pyro.param("w", torch.ones(3))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(B + z.unsqueeze(-1) * w, SIGMA).to_event(1), obs=x)

    result = fit(model, data, guide="auto_normal", epochs=300, batch_size=200, lr=0.05, progress=False)
    assert "w" in pyro.get_param_store()  # a plain model's pyro.param stays where Pyro users expect it
    assert result.train_elbo[-1] > result.train_elbo[0]
    # the generating W (up to sign) maximises the marginal likelihood of these 200 rows only
    # approximately; 0.35 allows for that sampling error (about 1/sqrt(200) per entry, times 3)
    w = pyro.param("w").detach()
    assert min((w - W).abs().max(), (w + W).abs().max()) < 0.35


def test_what_fit_returns_is_scored_with_its_fitted_guide(data):
    """log_likelihood(result, x), as to_arviz and pareto_khat take it: the story with the guide fit trained (it was
    refused as "got FitResult"). The guide, amortised, learns the exact posterior's mean map: the estimate is the
    exact marginal within its standard error."""
    def guide(x):
        gain = pyro.param("gain", torch.zeros(3))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - B) @ gain, scale))

    pyro.clear_param_store()
    result = fit(linear_gaussian, data, guide=guide, epochs=300, batch_size=200, lr=0.05, progress=False)
    scored = log_likelihood(result, data, num_samples=500, seed=1)
    assert scored.mean == log_likelihood(linear_gaussian, data, guide=guide, num_samples=500, seed=1).mean
    assert abs(scored.mean - exact_log_marginal(data).mean().item()) < 4 * scored.stderr


def test_likelihood_is_computed_without_tf32_and_leaves_the_settings_as_they_were(monkeypatch):
    # TF32 (a 10-bit mantissa) is PyTorch's default for cuDNN convolutions; an exact figure sums hundreds of
    # logits, so log_likelihood turns it off while it runs and restores the caller's settings afterwards.
    model = IndependentBernoulli(4)
    model_log_prob, seen = model.log_prob, []

    def recording_log_prob(*args):
        seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return model_log_prob(*args)

    monkeypatch.setattr(model, "log_prob", recording_log_prob)
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as after set_float32_matmul_precision("high")
    try:
        assert log_likelihood(model, torch.ones(3, 4)).mean == pytest.approx(4 * math.log(0.5))
        assert seen == [("ieee", "ieee")]
        assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == (conv, "tf32")
    finally:
        torch.backends.cuda.matmul.fp32_precision = matmul


# --- what each figure is: kind, errs, stderr ---------------------------------------------------------------------


def test_a_dequantized_flow_is_a_lower_bound_whose_noise_is_its_monte_carlo_error():
    """A MAF on 2 pixels of 4 levels: quadrature over each level's unit square gives both the discrete log P(x)
    (log of the mean density) and the bound E_u log p(x + u) (mean of the log density), a second algorithm."""
    from ppgen.models.flows import MAF, dequantize

    flow = MAF(2, transforms=2, hidden=8, num_levels=4, seed=0)
    with torch.no_grad():  # off its near-identity start, so the density bends inside each square
        g = torch.Generator().manual_seed(0)
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    levels = torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0))  # the 16 discrete rows
    mid = (torch.arange(200) + 0.5) / 200
    with torch.no_grad():
        log_p = torch.stack([flow.log_prob(row + torch.cartesian_prod(mid, mid)) for row in levels])  # (16, 40000)
    log_mass = torch.logsumexp(log_p, 1) - math.log(log_p.shape[1])  # log P(x)
    assert log_mass.exp().sum().item() == pytest.approx(1.0, abs=0.01)  # the quadrature holds the whole mass
    bound = log_p.mean(1).mean().item()  # E_u log p(x + u), averaged over the 16 rows

    result = log_likelihood(flow, dequantize(levels.repeat(1000, 1), 4, seed=1))  # 16,000 rows, u drawn once each
    assert (result.exact, result.kind, result.errs, result.method) == (False, "bound", "low", "exact")
    assert result.label.startswith("dequantized density") and "lower bound" in str(result)
    # one draw of u per row: the draws' noise and the rows' spread are one, stderr = row_std / sqrt(N)
    assert result.row_std == pytest.approx(result.values.double().std().item(), rel=1e-6)
    assert result.stderr == pytest.approx(result.row_std / math.sqrt(16_000), rel=1e-9)
    assert result.stderr_over_rows and f"s.e. over rows {result.stderr:.3f}, an upper bound" in str(result)
    assert "Monte Carlo s.e. 0" not in str(result)
    assert abs(result.mean - bound) < 4 * result.stderr  # it estimates the bound within its standard error ...
    assert log_mass.mean().item() - result.mean > 4 * result.stderr  # ... which is clearly below log P(x) (0.9 nats)
    # scored by "iwae" (no latents: K is irrelevant) it is the same bound, labelled the same way
    iwae = log_likelihood(flow, dequantize(levels.repeat(1000, 1), 4, seed=1), method="iwae")
    assert torch.equal(iwae.values, result.values) and (iwae.kind, iwae.errs, iwae.method) == ("bound", "low", "iwae")
    assert iwae.label.startswith("dequantized density") and iwae.num_samples == 0


def test_a_latent_free_plain_model_scored_by_iwae_is_exact_whatever_k():
    """No latent sites: every importance weight is p(x) itself, so the figure is the closed form, K is irrelevant
    (one particle is drawn), and the result says exact (not "IWAE K=1000")."""
    def gaussian(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(B, torch.outer(W, W) + SIGMA**2 * torch.eye(3)), obs=x)

    def no_guide(x):
        pass

    x = dist.MultivariateNormal(B, torch.outer(W, W) + SIGMA**2 * torch.eye(3)).sample((50,))
    result = log_likelihood(gaussian, x, guide=no_guide, num_samples=1000)
    assert torch.allclose(result.values.double(), exact_log_marginal(x).double(), atol=1e-5)
    assert result.exact and (result.kind, result.errs, result.stderr, result.num_samples) == ("exact", None, 0.0, 0)
    assert result.method == "iwae" and "no latent variables" in str(result) and "K=" not in str(result)


def test_iwae_stderr_is_the_spread_of_repeated_estimates_not_of_the_rows(data):
    """The delta-method standard error against the spread of 20 independent estimates (seeds) on the same rows;
    the standard deviation of 20 draws is itself uncertain by about 1 / sqrt(2 * 19) = 16%, the delta method by a
    little more at K = 20: a factor 1.6 either way."""
    guide = make_guide(0.5, 1.8)
    runs = [log_likelihood(linear_gaussian, data, guide=guide, num_samples=20, seed=seed) for seed in range(20)]
    spread = torch.tensor([r.mean for r in runs]).std().item()
    stderr = sum(r.stderr for r in runs) / len(runs)
    assert spread / 1.6 < stderr < 1.6 * spread
    first = runs[0]
    assert (first.kind, first.errs, first.label) == ("bound", "low", "IWAE K=20: a lower bound on log p(x)")
    assert first.row_std == pytest.approx(first.values.double().std().item(), rel=1e-6)
    # the rows differ more than the draws: row_std / sqrt(N) (0.11 here) would over-state this error (0.016)
    assert first.stderr < 0.5 * first.row_std / math.sqrt(len(data))
    assert not first.stderr_over_rows and f"Monte Carlo s.e. {first.stderr:.3f}" in str(first)


def test_ais_of_log_z_is_an_estimate_that_errs_high():
    """An RBM small enough for its exact log Z: AIS with 2 chains and 10 temperatures under-estimates log Z on
    average (Jensen: its Z is unbiased), so its log-likelihood errs high. Over 40 seeds the mean excess is several
    of its standard errors above 0."""
    from ppgen.models import RBM

    rbm = RBM(10, hidden=8, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rbm.weight.copy_(torch.randn(10, 8, generator=g))
        rbm.visible_bias.copy_(0.5 * torch.randn(10, generator=g))
        rbm.hidden_bias.copy_(0.5 * torch.randn(8, generator=g))
    x = torch.bernoulli(torch.full((20, 10), 0.5), generator=g)
    exact = log_likelihood(rbm, x, method="exact")
    assert exact.exact and exact.kind == "exact" and exact.label == "exact"
    runs = [log_likelihood(rbm, x, method="ais", num_samples=2, seed=seed, num_temperatures=10, raise_rows=2,
                           raise_chains=1) for seed in range(40)]
    excess = torch.tensor([r.mean - exact.mean for r in runs])
    assert excess.mean() > 3 * excess.std() / math.sqrt(len(runs))
    ais = runs[0]
    assert (ais.exact, ais.kind, ais.errs, ais.method) == (False, "estimate", "high", "ais")
    assert "errs high on average (the NLL low)" in str(ais) and ais.to_dict()["errs"] == "high"


def test_a_result_says_what_it_is_consistently():
    values = torch.zeros(3)
    with pytest.raises(ValueError, match="exact=True, kind='bound'"):
        LikelihoodResult(values, 0.0, 0.0, 0.0, True, 0, kind="bound", errs="low")
    with pytest.raises(ValueError, match="errs=None"):
        LikelihoodResult(values, 0.0, 0.1, 0.0, False, 10, method="iwae", kind="bound")


def test_a_hidden_markov_story_needs_no_guide_and_scores_as_the_forward_algorithm():
    """Pyro's HMM idiom: a chain of enumerated states per sequence, point-estimated transitions and emissions, and no
    guide (every latent is summed out; fit refused a plain story without guide=). Trained on minibatches of
    sequences, its log-likelihood is exact, and equals the forward algorithm's at the fitted parameters."""
    from pyro.ops.indexing import Vindex

    def hmm(x):
        trans = pyro.param("trans", torch.tensor([[0.7, 0.3], [0.3, 0.7]]), constraint=dist.constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
        with pyro.plate("data", x.shape[0]):
            state = 0
            for t in pyro.markov(range(x.shape[1])):
                probs = torch.tensor([0.5, 0.5]) if t == 0 else Vindex(trans)[state]
                state = pyro.sample(f"s_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                pyro.sample(f"x_{t}", dist.Normal(Vindex(locs)[state], 0.5), obs=x[:, t])

    generator = torch.Generator().manual_seed(0)
    states = torch.zeros(60, 12, dtype=torch.long)
    for t in range(1, 12):
        stay = torch.rand(60, generator=generator) < 0.85
        states[:, t] = torch.where(stay, states[:, t - 1], 1 - states[:, t - 1])
    x = torch.tensor([-1.0, 1.5])[states] + 0.5 * torch.randn(60, 12, generator=generator)
    pyro.clear_param_store()
    result = fit(hmm, x, epochs=20, batch_size=20, lr=0.05, progress=False)
    assert result.estimator == "enum"
    trans, locs = pyro.param("trans").detach(), pyro.param("locs").detach()
    log_alpha = math.log(0.5) + dist.Normal(locs, 0.5).log_prob(x[:, :1])  # forward algorithm, (rows, states)
    for t in range(1, 12):
        log_alpha = (torch.logsumexp(log_alpha[:, :, None] + trans.log(), 1)
                     + dist.Normal(locs, 0.5).log_prob(x[:, t:t + 1]))
    scored = log_likelihood(result, x)
    assert scored.exact
    torch.testing.assert_close(scored.values, torch.logsumexp(log_alpha, -1), rtol=1e-5, atol=1e-4)
