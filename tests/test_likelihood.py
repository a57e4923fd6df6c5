"""Importance-sampled log-likelihood against the exact marginal of a linear-Gaussian model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppgen import log_likelihood
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
