"""GANs: an implicit Pyro story trained by a two-group adversarial Objective in the unchanged fit loop."""

import math

import pytest
import torch
from pyro import poutine

from ppgen import fit
from ppgen.inference import Program
from ppgen.models.implicit import GAN, AdversarialObjective


def _ring(n=400, seed=0):
    angles = torch.arange(8) * 2 * math.pi / 8
    centres = torch.stack([angles.cos(), angles.sin()], -1) * 2.0
    g = torch.Generator().manual_seed(seed)
    return centres[torch.randint(8, (n,), generator=g)] + 0.05 * torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_both_players_train_through_fit_with_finite_losses(loss):
    x = _ring()
    gan = GAN(2, z_dim=4, hidden=[32], output="identity")
    before = {name: p.detach().clone() for name, p in gan.named_parameters()}
    program = Program(gan)
    result = fit(program, x, objective=AdversarialObjective(program, loss), epochs=3, batch_size=100, lr=1e-3,
                 progress=False)
    assert result.estimator == loss and result.steps == 12
    assert all(math.isfinite(v) for v in result.losses)
    moved = {name.split(".")[0] for name, p in gan.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {"generator", "discriminator"}  # one optimiser per group, both stepped


def test_the_default_objective_is_the_nonsaturating_game_and_the_story_is_a_pyro_program():
    gan = GAN(2, z_dim=3, hidden=8, output="identity")
    assert fit(gan, _ring(), epochs=1, batch_size=100, progress=False).estimator == "nonsaturating"
    trace = poutine.trace(gan.model).get_trace(size=5)
    assert trace.nodes["z"]["value"].shape == (5, 3) and trace.nodes["x"]["value"].shape == (5, 2)


def test_asking_a_gan_for_a_density_is_refused():
    with pytest.raises(NotImplementedError, match="a GAN has no density"):
        GAN(2, z_dim=2, hidden=4, output="identity").log_prob(torch.zeros(1, 2))


@pytest.mark.slow
def test_the_nonsaturating_gan_covers_every_mode_of_a_ring_of_eight():
    x = _ring(2000)
    gan = GAN(2, z_dim=8, hidden=[128, 128], output="identity", seed=0)
    program = Program(gan)
    result = fit(program, x, objective=AdversarialObjective(program, "nonsaturating"), epochs=30, batch_size=100,
                 lr=1e-3, seed=0, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    angles = torch.arange(8) * 2 * math.pi / 8
    centres = torch.stack([angles.cos(), angles.sin()], -1) * 2.0
    torch.manual_seed(1)
    distance = torch.cdist(gan.sample(2000), centres)
    near = distance.min(-1).values < 0.5
    share = torch.bincount(distance.argmin(-1)[near], minlength=8) / 2000
    # a collapsed GAN leaves modes empty; when written, each of the 8 held 2.5-5% of samples within 0.3
    assert (share >= 0.01).all(), share.tolist()


def test_ais_over_the_latents_recovers_an_exact_marginal_likelihood():
    from ppgen import PPCA
    from ppgen.models.decoder_ais import decoder_log_likelihood

    model = PPCA(6, 2, seed=0)  # a linear-Gaussian decoder: log p(x) in closed form
    with torch.no_grad():
        model.log_noise_scale.fill_(math.log(0.5))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, generator=g) @ model.weight.detach().T + model.loc.detach() + 0.7 * torch.randn(
        20, 6, generator=g)
    exact = model.log_prob(x).double()

    def observation(z, rows):
        return torch.distributions.Normal(z @ model.weight.T + model.loc, 0.5).log_prob(rows).sum(-1)

    estimate, stderr = decoder_log_likelihood(observation, x, 2, num_chains=32, num_temperatures=500, leapfrog=5)
    # per row within 4 standard errors (plus 0.05 nats of annealing bias); on average a hair below
    assert ((estimate - exact).abs() <= 4 * stderr + 0.05).all()
    assert -0.1 < (estimate - exact).mean().item() < 0.02


def test_log_likelihood_of_a_gan_is_an_ais_lower_bound():
    from ppgen import log_likelihood

    gan = GAN(2, z_dim=2, hidden=8, output="identity")
    result = log_likelihood(gan, _ring(10), num_samples=8)
    assert result.method == "ais" and not result.exact and math.isfinite(result.mean) and "AIS" in str(result)


def test_the_dcgan_networks_map_noise_to_digits_and_train_a_step(digits):
    gan = GAN(784, z_dim=16, architecture="dcgan", channels=8)
    assert gan.sample(3).shape == (3, 784) and gan.generate(torch.randn(2, 5, 16)).shape == (2, 5, 784)
    result = fit(gan, digits["train"].x[:64], epochs=1, batch_size=32, progress=False)
    assert result.steps == 2 and all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ValueError, match="28x28"):
        GAN(100, architecture="dcgan")


def test_a_gan_trains_scores_and_samples_in_float64():
    gan = GAN(3, z_dim=2, hidden=[], output="identity").double()  # no hidden layer: x = W z + b
    objective = AdversarialObjective(Program(gan), "wgan-gp")
    x = torch.randn(10, 3, dtype=torch.float64)
    assert all(objective(x, group=group).dtype == torch.float64 for group in objective.groups)
    assert gan.sample(2).dtype == torch.float64
    # under the observation model N(W z + b, 0.5^2 I), p(x) = N(b, W W^T + 0.25 I): AIS over z against it
    w, b = gan.generator[0].weight.detach(), gan.generator[0].bias.detach()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64) @ w.T + b + 0.5 * torch.randn(
        10, 3, generator=g, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(3, dtype=torch.float64)).log_prob(x)
    estimate = gan.estimate_log_likelihood(x, num_samples=16, num_temperatures=100, scale=0.5)
    assert estimate.method == "ais" and estimate.values.dtype == torch.float64
    # the mean over rows within 4 standard errors, plus 0.05 nats of annealing bias (AIS errs low)
    assert abs(estimate.values.mean().item() - exact.mean().item()) < 4 * estimate.stderr + 0.05

