"""The VAE: a real Pyro program, its ELBO against an independent estimator, ELBO <= IWAE."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from ppgen import VAE, IndependentBernoulli, fit, log_likelihood


@pytest.fixture(scope="module")
def trained(digits):
    pyro.set_rng_seed(0)
    model = VAE(784, z_dim=8, hidden=64)
    fit(model, digits["train"].x[:2000], epochs=4, batch_size=100, lr=3e-3, progress=False)
    return model


def test_log_weights_match_pyros_trace_elbo(trained, digits):
    # Second algorithm: Pyro's own Trace_ELBO on the same model/guide, 200 particles.
    x = digits["test"].x[:100]
    pyro_elbo = -Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1).loss(
        trained.model, trained.guide, x) / len(x)
    ours = log_likelihood(trained, x, num_samples=200, seed=1).elbo
    # per-example ELBO sd is ~10 nats; the mean over 100 x 200 draws has sd ~0.1
    assert abs(ours - pyro_elbo) < 0.5


def test_elbo_is_below_the_iwae_estimate_on_held_out_data(trained, digits):
    x = digits["test"].x[:300]
    # independent draws: the ELBO with K=1 particles, the IWAE bound with K=100
    elbo = log_likelihood(trained, x, num_samples=1, seed=2).elbo
    iwae = log_likelihood(trained, x, num_samples=100, seed=3)
    assert iwae.mean - elbo > 1.0  # the bound gap of a small VAE is several nats
    assert iwae.mean - elbo > 10 * iwae.stderr


def test_the_model_is_a_plain_pyro_program(digits):
    # Pyro's SVI with its global param store trains the same model object.
    x = digits["train"].x[:200]
    model = VAE(784, z_dim=2, hidden=16)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.8
    assert any(name.startswith("decoder") for name in pyro.get_param_store())

    trace = poutine.trace(pyro.condition(model.model, data={"z": torch.zeros(3, 2)})).get_trace(size=3)
    assert torch.equal(trace.nodes["z"]["value"], torch.zeros(3, 2))
    assert trace.nodes["x"]["value"].shape == (3, 784)


def test_encode_decode_reconstruct(trained, digits):
    x = digits["test"].x[:50]
    z = trained.encode(x)
    assert torch.equal(z, trained.posterior_params(x)[0])
    recon = trained.reconstruct(x)
    assert torch.equal(recon, torch.sigmoid(trained.decoder(z)))
    # it reconstructs better than the best image-independent guess, the training pixel
    # frequencies (per-pixel Bernoulli log-loss ~0.26 nats); an untrained decoder gives ~0.69
    bce = torch.nn.functional.binary_cross_entropy
    frequencies = IndependentBernoulli.from_frequencies(digits["train"].x, pseudo_count=1).probs
    assert bce(recon, x) < 0.95 * bce(frequencies.expand_as(x), x)


def test_gaussian_likelihood_accepts_real_data():
    x = torch.randn(64, 5)
    model = VAE(5, z_dim=2, hidden=8, likelihood="gaussian")
    result = fit(model, x, epochs=2, batch_size=32, progress=False)
    assert len(result.losses) == 4
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit(VAE(5, z_dim=2, hidden=8), x, epochs=1, progress=False)
