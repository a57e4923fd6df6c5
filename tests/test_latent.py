"""Latent-variable models against closed forms: Gaussian marginals, enumeration, Bayes' rule, EM."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppgen.inference import fit, log_likelihood
from ppgen.inference.diagnostics import elbo_terms
from ppgen.models.latent import PPCA, VAE, BernoulliMixture, ConditionalVAE, FactorAnalysis, GaussianMixture


def _randomise(model, scale=0.5):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn_like(p))
    return model


@pytest.fixture
def linear_data():
    w = torch.tensor([[2.0, 0.0], [1.0, -1.0], [0.0, 1.5], [0.5, 0.5], [-1.0, 0.3]])
    z = torch.randn(400, 2)
    return z @ w.T + torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]) + 0.4 * torch.randn(400, 5)


@pytest.mark.parametrize("cls", [PPCA, FactorAnalysis])
def test_linear_gaussian_log_prob_is_the_gaussian_marginal(cls, linear_data):
    model = _randomise(cls(5, 2))
    w, mu = model.weight.detach().double(), model.loc.detach().double()
    psi = torch.diag(model.noise_variance().detach().double())
    if cls is PPCA:
        assert torch.allclose(psi, psi[0, 0] * torch.eye(5, dtype=torch.float64))  # one shared noise variance
    expected = dist.MultivariateNormal(mu, w @ w.T + psi).log_prob(linear_data.double())
    assert torch.allclose(model.log_prob(linear_data).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", [PPCA, FactorAnalysis])
def test_exact_posterior_guide_makes_the_elbo_exact(cls, linear_data):
    model = _randomise(cls(5, 2))
    x = linear_data[:100]

    def optimal_guide(x):  # built from exact_posterior, independently of the model's own guide
        loc, cov = model.exact_posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, cov))

    exact = model.log_prob(x).detach()
    terms = elbo_terms(model, x, guide=optimal_guide, num_samples=20)
    assert torch.allclose(terms.elbo, exact, atol=1e-3)
    # Bayes' rule by hand: p(z | x) is proportional to p(z) p(x | z), so for any z
    # log p(x) = log p(z) + log p(x | z) - log p(z | x)
    loc, cov = model.exact_posterior(x)
    z = torch.randn(100, 2)
    w, mu, noise = model.weight.detach(), model.loc.detach(), model.noise_variance().detach()
    log_joint = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + dist.Normal(z @ w.T + mu, noise.sqrt()).log_prob(x).sum(-1))
    assert torch.allclose(log_joint - dist.MultivariateNormal(loc, cov).log_prob(z), exact, atol=1e-3)
    # the model's own guide, set to the exact posterior, is encode's source too
    model.set_guide_to_exact_posterior()
    assert torch.allclose(elbo_terms(model, x, num_samples=5).elbo, exact, atol=1e-3)
    assert torch.allclose(model.encode(x), loc, atol=1e-5)


def test_ppca_elbo_below_iwae_below_exact_and_iwae_rises_with_k(linear_data):
    model = _randomise(PPCA(5, 2))
    exact = model.log_prob(linear_data).mean().item()
    model.set_guide_to_exact_posterior()
    with torch.no_grad():  # then a deliberately poorer guide, so the bounds differ visibly
        model.guide_log_diag.add_(1.0)
        model.guide_bias.add_(1.0)
    bounds = [log_likelihood(model, linear_data, num_samples=k, seed=k, method="iwae") for k in (1, 10, 1000)]
    elbo = bounds[0].elbo
    assert all(not b.exact for b in bounds)
    # with K=1 the estimate is the ELBO itself; each step up in K gains far more than its error
    assert elbo < bounds[1].mean - 4 * bounds[1].stderr
    assert bounds[1].mean < bounds[2].mean - 4 * math.hypot(bounds[1].stderr, bounds[2].stderr)
    assert bounds[2].mean <= exact + 4 * bounds[2].stderr
    assert exact - bounds[2].mean < 0.5 * (exact - elbo)


def test_bernoulli_mixture_matches_enumeration_and_sums_to_one():
    model = _randomise(BernoulliMixture(4, 3), scale=1.0)
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))  # all 16 vectors
    pi = torch.softmax(model.weight_logits.detach().double(), -1)
    probs = torch.sigmoid(model.logits.detach().double())
    joint = torch.stack([pi[c] * torch.prod(probs[c] ** x.double() * (1 - probs[c]) ** (1 - x.double()), -1)
                         for c in range(3)], -1)  # (16, 3), brute force
    log_p = model.log_prob(x).detach().double()
    assert torch.allclose(log_p, joint.sum(-1).log(), atol=1e-5)
    assert math.isclose(log_p.exp().sum().item(), 1.0, abs_tol=1e-5)
    assert torch.allclose(model.predict(x).double(), joint / joint.sum(-1, keepdim=True), atol=1e-5)
    assert torch.equal(model.encode(x), model.predict(x))


def test_bernoulli_mixture_joint_log_prob_is_its_components_log_densities():
    """joint_log_prob's two matrix products against the broadcast Bernoulli log-densities of its own story, on
    digit-sized rows in float64 (1e-9: rounding of sums of 784 terms)."""
    model = _randomise(BernoulliMixture(784, 7), scale=3.0).double()
    x = torch.bernoulli(torch.full((50, 784), 0.3, dtype=torch.float64))
    broadcast = (model.component(torch.arange(7)).log_prob(x.unsqueeze(-2))
                 + torch.log_softmax(model.weight_logits, -1))
    assert torch.allclose(model.joint_log_prob(x), broadcast, rtol=0, atol=1e-9)


def test_gaussian_mixture_log_prob_and_predict_by_hand():
    model = _randomise(GaussianMixture(3, 4, covariance="full"))
    x = torch.randn(50, 3)
    pi = model.weights.double()
    covariance = model.covariance_matrix.double()
    dens = torch.stack([pi[c] * dist.MultivariateNormal(model.loc[c].detach().double(), covariance[c])
                        .log_prob(x.double()).exp() for c in range(4)], -1)
    assert torch.allclose(model.log_prob(x).double(), dens.sum(-1).log(), atol=1e-4)
    assert torch.allclose(model.predict(x).double(), dens / dens.sum(-1, keepdim=True), atol=1e-5)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gaussian_mixture_svi_reaches_em(covariance):
    mixture = pytest.importorskip("sklearn.mixture")
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    x = torch.cat([c + torch.randn(150, 2) @ torch.tensor([[1.0, 0.4], [0.0, 0.6]]) for c in centres])
    em = mixture.GaussianMixture(3, covariance_type=covariance, random_state=0, tol=1e-8, max_iter=500)
    em.fit(x.double().numpy())
    em_log_lik = float(em.score(x.double().numpy()))  # mean log-likelihood per row
    model = GaussianMixture(2, 3, covariance=covariance).initialize(x)
    start = model.log_prob(x).mean().item()
    fit(model, x, elbo="enum", epochs=100, batch_size=len(x), lr=0.05, progress=False)
    # tolerance: 0.005 nats per row (both optimisers stop near the same optimum, closer than 1e-4)
    assert start < em_log_lik - 0.001  # k-means alone is not there yet
    assert model.log_prob(x).mean().item() >= em_log_lik - 0.005


def test_bernoulli_mixture_trains_by_enumeration(digits):
    x = digits["train"].x[:500]
    model = BernoulliMixture(784, 5).initialize(x)
    start = model.log_prob(x).mean().item()
    result = fit(model, x, elbo="enum", epochs=10, batch_size=500, lr=0.05, progress=False)
    # with c summed out exactly the ELBO is the exact log-likelihood
    assert math.isclose(-result.losses[-1], model.log_prob(x).mean().item(), abs_tol=1.0)
    assert model.log_prob(x).mean().item() > start + 1.0


def test_conv_vae_decodes_particles_like_rows_and_trains(digits):
    model = VAE(784, z_dim=4, architecture="conv", channels=(4, 8))
    z = torch.randn(3, 5, 4)
    with torch.no_grad():
        stacked = torch.stack([model.decoder(z[k]) for k in range(3)])
        assert torch.allclose(model.decoder(z), stacked, atol=1e-6)
    result = fit(model, digits["train"].x[:300], epochs=3, batch_size=100, lr=3e-3, progress=False)
    assert result.train_elbo[-1] > result.train_elbo[0] + 20
    with pytest.raises(ValueError, match="x_dim=784"):
        VAE(100, architecture="conv")


def test_latent_traversal_decodes_the_changed_coordinate():
    model = VAE(10, z_dim=3, hidden=8)
    z = torch.randn(2, 3)
    out = model.latent_traversal(z, 1, [-2.0, 0.0, 2.0])
    assert out.shape == (2, 3, 10)
    for i, value in enumerate([-2.0, 0.0, 2.0]):
        code = z.clone()
        code[:, 1] = value
        assert torch.allclose(out[:, i], model.decode(code))
    assert model.latent_traversal(z[0], 2, torch.linspace(-1, 1, 5)).shape == (5, 10)


def test_conditional_vae_generates_the_requested_digit(digits):
    x, y = digits["train"].x[:2000], digits["train"].y[:2000]
    model = ConditionalVAE(784, 10, z_dim=4, hidden=128)
    fit(model, (x, y), epochs=6, batch_size=100, lr=3e-3, progress=False)
    # nearest-class-mean classifier fitted on real digits, applied to generated ones
    means = torch.stack([x[y == c].mean(0) for c in range(10)])  # (10, 784)
    labels = torch.arange(10).repeat_interleave(20)
    torch.manual_seed(1)
    generated = model.decode(torch.randn(200, 4), labels)
    predicted = torch.cdist(generated, means).argmin(-1)
    assert (predicted == labels).float().mean() > 0.4  # chance is 0.1
    # same z, another label: another image
    z = torch.randn(5, 4)
    # (expected numbers of pixels that differ: a digit has about 100 lit pixels)
    assert (model.decode(z, 3) - model.decode(z, 8)).abs().sum(-1).min() > 20
    assert model.sample(6, y=2).shape == (6, 784)
    assert model.encode(x[:7], y[:7]).shape == (7, 4)
    with pytest.raises(ValueError, match="labels"):
        model.sample(3)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model.sample(2, y=torch.tensor([1, 10]))


def test_vae_activation_is_used_and_checked():
    tanh = VAE(6, z_dim=2, hidden=(5, 4), activation="tanh")
    assert sum(isinstance(m, torch.nn.Tanh) for m in tanh.modules()) == 4  # after each of 2 hidden layers, in encoder and decoder
    assert not any(isinstance(m, torch.nn.ReLU) for m in tanh.modules())
    assert "activation='tanh'" in repr(tanh)
    with pytest.raises(ValueError, match="activation must be one of"):
        VAE(6, z_dim=2, activation="sigmoid")


def test_decoder_ais_of_a_vae_matches_quadrature_over_its_one_latent():
    # z is 1-D, so log p(x) = log ∫ N(z; 0, 1) p(x | z) dz is a quadrature on a fine grid
    vae = VAE(6, z_dim=1, hidden=8, seed=0)
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(3.0)  # a sharper decoder than the initial one, so the posterior is far from the prior
    x = (torch.rand(12, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    z = torch.linspace(-10, 10, 20001)[:, None, None]  # (G, 1, 1)
    with torch.no_grad():
        log_joint = dist.Normal(0.0, 1.0).log_prob(z[:, :, 0]) + vae.observation_log_prob(z, x)  # (G, N)
    exact = (torch.logsumexp(log_joint.double(), 0) + math.log(20 / 20000)).float()
    ais = log_likelihood(vae, x, method="ais", num_samples=16)
    assert ais.method == "ais" and not ais.exact
    # per row within 4 standard errors plus 0.05 nats of annealing bias (AIS errs low on average)
    assert ((ais.values - exact).abs() <= 4 * ais.values.new_tensor(ais.stderr * len(x) ** 0.5) + 0.05).all()
    assert abs(ais.mean - exact.mean().item()) < 0.05
    with pytest.raises(ValueError, match="decoder-based model"):
        log_likelihood(PPCA(6, 2), x, method="ais")
