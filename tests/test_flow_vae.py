"""Flows inside a VAE: a MAF prior p(z) and an IAF guide q(z | x), through fit, IWAE and elbo_report."""

import math

import pytest
import torch

import ppgen
from ppgen.models.latent.flow_vae import FlowPriorVAE, IAFVAE

SMALL = {
    "flow_prior": lambda: FlowPriorVAE(784, z_dim=4, hidden=32, prior_transforms=2, prior_hidden=16),
    "iaf": lambda: IAFVAE(784, z_dim=4, hidden=32, iaf_steps=2, iaf_hidden=16, context_dim=8),
}


@pytest.mark.parametrize("name", SMALL)
def test_trains_checks_and_iwae_is_above_the_elbo(name, digits):
    x = digits["train"].x[:256]
    model = SMALL[name]()
    check = ppgen.check_model(model, x[:64], num_particles=2, num_rows=len(x))
    assert check.estimator == "trace"
    before = ppgen.log_likelihood(model, digits["test"].x[:64], num_samples=50).mean
    result = ppgen.fit(model, x, epochs=3, batch_size=64, lr=3e-3, num_particles=2, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    test = digits["test"].x[:64]
    ll = ppgen.log_likelihood(model, test, num_samples=200)
    assert ll.mean > before  # it learned something in 12 steps
    assert ll.mean >= ll.elbo  # same draws: log-mean-exp >= mean-log per example
    report = ppgen.elbo_report(model, test, num_samples=20, iwae_samples=200, estimators=())
    # independent draws: the IWAE estimate (K=200) sits above the 20-sample ELBO beyond Monte Carlo error
    se = math.hypot(report.log_likelihood_stderr, report.terms.elbo.std().item() / math.sqrt(len(test)))
    assert report.log_likelihood >= report.elbo - 4 * se
    assert report.kl["z"] > 0  # Monte Carlo KL(q || p): no closed form with a flow on either side


def test_iaf_scores_its_own_samples_by_the_cache_and_other_values_by_inversion(digits):
    model = SMALL["iaf"]()
    with torch.no_grad():  # move the flow steps off their near-identity start
        for p in model.iaf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = model.posterior(digits["test"].x[:8])
    z = q.rsample((3,))                                        # (3, 8, 4)
    cached = q.log_prob(z)
    inverted = q.log_prob(z.clone())                           # a new tensor: no cache, z_dim passes per step
    assert torch.allclose(cached, inverted, atol=1e-4)
    # and the density is the change of variables: base log-density minus the forward log|det|
    base = q.base_dist
    x0 = z.clone()
    logdet = torch.zeros(z.shape[:-1])
    for t in reversed(q.transforms):
        prev = t.inv(x0)
        logdet = logdet + t.log_abs_det_jacobian(prev, x0)
        x0 = prev
    assert torch.allclose(inverted, base.log_prob(x0) - logdet, atol=1e-4)


def test_flow_prior_is_the_mafs_exact_density(digits):
    model = SMALL["flow_prior"]()
    from pyro import poutine

    trace = poutine.trace(model.model).get_trace(size=5)
    z = trace.nodes["z"]["value"]                              # (5, 4) drawn from the flow prior
    trace.compute_log_prob()
    assert torch.allclose(trace.nodes["z"]["log_prob"], model.prior.log_prob(z))


def test_the_flow_prior_vae_scores_and_samples_in_float64(digits):
    from pyro import poutine

    model = SMALL["flow_prior"]().double()
    x = digits["test"].x[:16].double()
    trace = poutine.trace(model.model).get_trace(size=5)
    z = trace.nodes["z"]["value"]
    trace.compute_log_prob()
    assert z.dtype == torch.float64 and torch.equal(trace.nodes["z"]["log_prob"], model.prior.log_prob(z))
    assert model.sample(2).dtype == torch.float64
    ll = ppgen.log_likelihood(model, x, num_samples=20)
    # the same 20 draws per row: log-mean-exp is at least their mean, by Jensen
    assert math.isfinite(ll.mean) and ll.mean >= ll.elbo


def test_bad_iaf_widths_are_refused():
    with pytest.raises(ValueError, match="at least z_dim=8"):
        IAFVAE(784, z_dim=8, iaf_hidden=4)
