"""Energy-based models: the RBM against enumeration (log Z, Gibbs, CD gradients), AIS and RAISE."""

import math

import pytest
import torch

from ppgen import fit, log_likelihood
from ppgen.inference import ModelCheckError
from ppgen.models.energy import (
    EBM, RBM, ContrastiveDivergence, EnergyModel, LangevinContrastiveDivergence, ais_log_partition,
    raise_log_likelihood,
)
from ppgen.models.energy.ais import base_visible_bias
from ppgen.models.energy.base import STARTS
from ppgen.inference import Program


def _random_rbm(x_dim, hidden, scale=1.0, seed=0):
    rbm = RBM(x_dim, hidden=hidden, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rbm.weight.copy_(scale * torch.randn(x_dim, hidden, generator=g))
        rbm.visible_bias.copy_(0.5 * torch.randn(x_dim, generator=g))
        rbm.hidden_bias.copy_(0.5 * torch.randn(hidden, generator=g))
    return rbm


def _all_rows(d):
    return ((torch.arange(2**d).unsqueeze(-1) >> torch.arange(d)) & 1).float()


def test_log_partition_by_enumerating_hidden_equals_the_sum_over_visible_states():
    rbm = _random_rbm(7, 5)
    brute = torch.logsumexp(-rbm.free_energy(_all_rows(7)).double(), 0)  # sum over the 2^7 visible rows
    assert rbm.log_partition().item() == pytest.approx(brute.item(), abs=1e-4)


def test_ais_log_z_matches_the_exact_value_within_its_error_and_raise_brackets_the_likelihood():
    rbm = _random_rbm(10, 8, scale=0.8)
    exact = rbm.log_partition().item()
    estimate = ais_log_partition(rbm, num_chains=200, num_temperatures=500, seed=1)
    # 4 standard errors (delta method), plus 0.01 nats for its own bias at 200 chains
    assert abs(estimate.log_z - exact) < 4 * estimate.stderr + 0.01
    x = torch.bernoulli(torch.sigmoid(rbm.visible_bias).detach().expand(30, 10), generator=torch.Generator().manual_seed(2))
    truth = rbm.log_prob(x).mean().item()
    lower, stderr = raise_log_likelihood(rbm, x, num_chains=20, num_temperatures=500, seed=3)
    upper = (-rbm.free_energy(x) - estimate.log_z).mean().item()
    slack = 4 * (stderr.pow(2).sum().sqrt().item() / len(x) + estimate.stderr) + 0.01
    assert lower.mean().item() <= truth + slack and truth <= upper + slack


def test_annealing_with_zero_temperatures_is_refused():
    with pytest.raises(ValueError, match="num_temperatures must be a positive int"):
        ais_log_partition(_random_rbm(4, 3), num_temperatures=0)


def test_the_gibbs_chain_samples_the_exact_distribution():
    chi2 = pytest.importorskip("scipy.stats").chi2
    rbm = _random_rbm(6, 4, scale=1.0)
    torch.manual_seed(0)
    samples = rbm.sample(20_000, steps=50)  # independent chains, each run 50 sweeps
    index = (samples * (2 ** torch.arange(6))).sum(-1).long()
    observed = torch.bincount(index, minlength=64).double()
    expected = rbm.log_prob(_all_rows(6)).exp().double() * len(samples)
    statistic = ((observed - expected) ** 2 / expected).sum().item()
    assert statistic < chi2.ppf(0.999, 63)  # fails 1 time in 1,000 when the sampler is right


def test_cd_gradients_approach_the_exact_log_likelihood_gradient_as_k_grows():
    rbm = _random_rbm(6, 4, scale=1.0)
    x = torch.bernoulli(torch.full((64, 6), 0.3), generator=torch.Generator().manual_seed(0))
    exact = torch.cat([g.flatten() for g in
                       torch.autograd.grad(rbm.log_prob(x).mean(), [rbm.weight, rbm.visible_bias, rbm.hidden_bias])])
    errors = {}
    torch.manual_seed(0)
    for k in (1, 25):
        objective = ContrastiveDivergence(Program(rbm), k=k)
        grads = []
        for _ in range(200):  # the mean of 200 CD estimates: its own noise is small
            loss = objective(x, scale=1.0) / len(x)
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(
                -loss, [rbm.weight, rbm.visible_bias, rbm.hidden_bias])]))
        mean = torch.stack(grads).mean(0)
        errors[k] = ((mean - exact).norm() / exact.norm()).item()
        assert torch.nn.functional.cosine_similarity(mean, exact, dim=0) > 0.5  # the right direction
    assert errors[25] < errors[1] and errors[25] < 0.2  # and the right size as k grows


def test_fit_trains_a_small_rbm_by_exact_likelihood_and_a_large_one_by_pcd(digits):
    x = digits["train"].x[:500, :16]  # 16 pixels: 2^16 states
    small = RBM(16, hidden=8)
    result = fit(small, x, epochs=5, batch_size=100, lr=0.05, progress=False)
    assert result.estimator == "mle" and result.train_elbo[-1] > result.train_elbo[0]
    large = RBM(784, hidden=32)
    result = fit(large, digits["train"].x[:500], epochs=2, batch_size=100, lr=0.01, progress=False)
    assert result.estimator == "pcd-1" and all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ModelCheckError, match="unnormalised"):
        fit(RBM(784, hidden=32), digits["train"].x[:100], elbo="trace", epochs=1, progress=False)


def test_log_likelihood_of_a_large_rbm_is_an_ais_estimate_with_a_bracket(digits):
    rbm = RBM(784, hidden=24, seed=0)
    rbm.ais_temperatures = 100  # enough for a untrained RBM's nearly flat energy; 10,000 by default
    result = log_likelihood(rbm, digits["test"].x[:20], num_samples=20)
    assert result.method == "ais" and not result.exact and result.bracket[0] <= result.bracket[1] + 1.0
    assert "bracket" in str(result)


def test_a_non_binary_row_is_refused():
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        RBM(3, hidden=2).log_prob(torch.tensor([[0.0, 0.5, 1.0]]))


class _Quadratic(EBM):
    """E(x) = |x - mu|^2 / (2 sigma^2): Langevin should sample N(mu, sigma^2)."""

    def energy(self, x):
        return (x - torch.tensor([1.0, -2.0])).pow(2).sum(-1) / (2 * 0.5**2)


def test_langevin_samples_a_known_gaussian():
    ebm = _Quadratic(2, hidden=2, steps=400, step_size=0.005, noise=None, bounds=None)  # ULA, eps = sqrt(2 lambda) = 0.1
    torch.manual_seed(0)
    samples = ebm.sample(4000)
    # the unadjusted Langevin chain's variance is sigma^2 / (1 - eps^2 / (4 sigma^2)) = 0.2551 here;
    # 4,000 draws estimate a mean to 0.008 and a variance to 2% (1 s.e.)
    assert torch.allclose(samples.mean(0), torch.tensor([1.0, -2.0]), atol=0.04)
    assert torch.allclose(samples.var(0), torch.full((2,), 0.2551), rtol=0.08)


def test_langevin_contrastive_divergence_lowers_the_energy_of_the_data():
    g = torch.Generator().manual_seed(0)
    x = (torch.tensor([0.3, 0.7]) + 0.05 * torch.randn(512, 2, generator=g)).clamp(0, 1)
    ebm = EBM(2, hidden=32, steps=20, step_size=0.00125, noise=None)
    result = fit(ebm, x, epochs=10, batch_size=128, lr=1e-3, progress=False)
    assert result.estimator == "langevin-cd" and all(math.isfinite(v) for v in result.losses)
    with torch.no_grad():
        assert ebm.energy(x).mean() < ebm.energy(torch.rand(512, 2, generator=g)).mean()
    with pytest.raises(ModelCheckError, match="unnormalised"):
        fit(EBM(2, hidden=4), x, elbo="trace", epochs=1, progress=False)


def test_samplers_draw_in_the_models_dtype():
    assert RBM(4, hidden=3).double().sample(2, steps=2).dtype == torch.float64
    assert EBM(3, hidden=4, steps=2).double().sample(2).dtype == torch.float64


@pytest.mark.parametrize("start", STARTS)
def test_every_start_of_the_chains_gives_the_exact_gradient_with_long_chains(start):
    # the one objective, its four starts, on an RBM whose exact gradient is known by enumeration
    rbm = _random_rbm(6, 4, scale=1.0)
    x = torch.bernoulli(torch.full((64, 6), 0.3), generator=torch.Generator().manual_seed(0))
    params = [rbm.weight, rbm.visible_bias, rbm.hidden_bias]
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(rbm.log_prob(x).mean(), params)])
    objective = ContrastiveDivergence(Program(rbm), k=25, start=start, buffer_size=256)
    grads = []
    for _ in range(200):
        loss = objective(x, scale=1.0) / len(x)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(-loss, params)]))
    # 25 sweeps mix this RBM from any start; the mean of 200 x 64 negatives errs by ~0.005 (relative)
    error = ((torch.stack(grads).mean(0) - exact).norm() / exact.norm()).item()
    assert error < 0.05, (objective.estimator, error)


class _Gaussian(EnergyModel):
    """A user's energy model is its energy: E(x) = |x - mu|^2 / 2, so p = N(mu, I)."""

    def __init__(self, x_dim):
        super().__init__(x_dim, steps=20, step_size=0.05)
        self.mu = torch.nn.Parameter(torch.zeros(x_dim))

    def energy(self, x):
        return (x - self.mu).pow(2).sum(-1) / 2


def test_an_energy_model_of_ones_own_trains_by_the_shared_objective_to_the_mle():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([1.0, -2.0]) + torch.randn(1000, 2, generator=g)
    model = _Gaussian(2)
    result = fit(model, x, epochs=20, batch_size=100, lr=0.02, progress=False)
    assert result.estimator == "pcd-20"  # the family's default: persistent chains of `steps` Langevin steps
    # the MLE of mu is the sample mean (Langevin's step-size bias is in the variance, not the mean);
    # the chains' noise leaves mu within ~0.04 of it over seeds 0-4
    assert torch.allclose(model.mu.detach(), x.mean(0), atol=0.1)


def test_energy_models_score_and_sample_in_float64():
    rbm = _random_rbm(6, 4).double()
    log_p = rbm.log_prob(_all_rows(6).double())
    # float64 throughout: the 2^6 probabilities sum to 1 to rounding (float32 would leave ~1e-7)
    assert log_p.dtype == torch.float64 and abs(log_p.exp().sum().item() - 1) < 1e-12
    assert rbm.sample(2, steps=2).dtype == torch.float64
    large = RBM(30, hidden=24).double()  # H > 20: log Z by AIS
    x = torch.bernoulli(torch.full((5, 30), 0.3, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # W = 0 and b = the base's logits: every annealed density is the base, each AIS weight 1
        large.weight.zero_()
        large.visible_bias.copy_(base_visible_bias(x, 30))
    estimate = large.estimate_log_likelihood(x, num_samples=4, num_temperatures=10, raise_chains=2)
    bernoulli = (x * large.visible_bias - torch.nn.functional.softplus(large.visible_bias)).sum(-1)  # closed form
    assert estimate.method == "ais" and estimate.values.dtype == torch.float64
    assert torch.allclose(estimate.values, bernoulli.detach(), atol=1e-9) and estimate.stderr < 1e-9
    ebm = EBM(3, hidden=4, steps=2).double()
    objective = ContrastiveDivergence(Program(ebm), k=2)  # CD-2 from the data, Langevin steps
    rows = torch.rand(5, 3, dtype=torch.float64)
    torch.manual_seed(0)
    loss = objective(rows, scale=1.0)
    torch.manual_seed(0)
    negatives = ebm.run_chains(rows, 2)  # the same chain, run by hand
    assert loss.dtype == torch.float64 and ebm.sample(2).dtype == torch.float64
    assert loss.item() == pytest.approx((ebm.energy(rows) - ebm.energy(negatives)).sum().item(), abs=1e-12)



# --------------------------------------------------------------------------- continuous AIS (MALA), the deep EBM

def _gaussian_mixture_energy(x):
    """E = -log(3 (0.3 N(x; (-2, 0), 0.3^2 I) + 0.7 N(x; (2, 1), 0.5^2 I))): two separated modes, Z = 3."""
    m1, m2 = x.new_tensor([-2.0, 0.0]), x.new_tensor([2.0, 1.0])
    l1 = math.log(0.3) - (x - m1).pow(2).sum(-1) / (2 * 0.3**2) - math.log(2 * math.pi * 0.3**2)
    l2 = math.log(0.7) - (x - m2).pow(2).sum(-1) / (2 * 0.5**2) - math.log(2 * math.pi * 0.5**2)
    return -(math.log(3.0) + torch.logaddexp(l1, l2))


_MU = torch.tensor([0.2, 0.5, 0.9, 0.6], dtype=torch.float64)
AIS_CASES = {  # energy, dimension, AIS keywords, exact log Z
    # a Gaussian N(m, 0.5^2 I) on R^3 from the N(0, I) base: log Z = (D / 2) log(2 pi s^2)
    "gaussian": (lambda x: (x - x.new_tensor([1.0, -2.0, 0.5])).pow(2).sum(-1) / (2 * 0.5**2), 3, {},
                 1.5 * math.log(2 * math.pi * 0.25)),
    # the two-Gaussian mixture from a broad N(0, 2^2 I) base: log Z = log 3
    "mixture": (_gaussian_mixture_energy, 2, {"base": (0.0, 2.0)}, math.log(3.0)),
    # a Gaussian truncated to [0, 1]^4 from the uniform base: sum_d log(sqrt(2 pi) s (Phi((1 - m)/s) - Phi(-m/s)))
    "truncated": (lambda x: (x - _MU).pow(2).sum(-1) / (2 * 0.15**2), 4, {"bounds": (0.0, 1.0)},
                  (4 * math.log(math.sqrt(2 * math.pi) * 0.15)
                   + torch.log(torch.special.ndtr((1 - _MU) / 0.15) - torch.special.ndtr(-_MU / 0.15)).sum()).item()),
}


@pytest.mark.parametrize("case", AIS_CASES)
def test_ais_with_mala_recovers_the_exact_log_z_within_its_error(case):
    from ppgen.models.energy.continuous_ais import ais_log_partition_continuous

    energy, dim, options, exact = AIS_CASES[case]
    estimate = ais_log_partition_continuous(energy, dim, num_chains=200, num_temperatures=500, seed=0, **options)
    # 4 standard errors (delta method), plus 0.02 nats of AIS's own downward bias; over 20 seeds of the mixture
    # (200 temperatures) the errors over their standard errors had mean -0.3 and s.d. 0.96
    assert abs(estimate.log_z - exact) < 4 * estimate.stderr + 0.02, (estimate, exact)
    assert estimate.stderr < 0.05  # and the estimate is informative


class _BoxGaussian(EBM):
    """E(x) = |x - mu|^2 / (2 s^2) on [0, 1]^4: a truncated Gaussian, log Z by the normal CDF."""

    def energy(self, x):
        return (x - _MU.to(x.dtype)).pow(2).sum(-1) / (2 * 0.15**2)


def test_the_ebm_log_likelihood_is_minus_the_energy_minus_log_z_by_ais():
    ebm = _BoxGaussian(4, hidden=2).double()
    x = (_MU + 0.1 * torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    exact = -ebm.energy(x) - AIS_CASES["truncated"][3]
    result = log_likelihood(ebm, x, num_samples=200, num_temperatures=500)
    assert result.method == "ais" and result.kind == "estimate" and result.errs == "high" and not result.exact
    assert abs(result.mean - exact.mean().item()) < 4 * result.stderr + 0.02
    # the same log Z for every row: the rows differ by their energies only
    torch.testing.assert_close(result.values.double() - exact, (result.values.double() - exact)[:1].expand(6),
                               rtol=0, atol=1e-5)


def test_the_ebm_defaults_are_short_run_mcmc_from_noise_as_nijkamp_et_al():
    ebm = EBM(3, hidden=4)
    assert (ebm.steps, ebm.step_size, ebm.noise_scale, ebm.bounds) == (100, 0.25, 0.005, (0.0, 1.0))
    objective = ebm.default_objective(Program(ebm))
    assert (objective.start, objective.k, objective.alpha, objective.data_noise) == ("noise", 100, 0.0, 0.015)
    replay = LangevinContrastiveDivergence(Program(ebm), persistent=True)  # Du & Mordatch's recipe
    assert (replay.start, replay.alpha, replay.data_noise) == ("buffer", 1.0, 0.0)
    # each update: the data plus N(0, 0.015^2) noise against K Langevin steps from fresh uniform noise
    short = EBM(3, hidden=4, steps=3).double()
    objective = LangevinContrastiveDivergence(Program(short))
    rows = torch.rand(5, 3, dtype=torch.float64)
    torch.manual_seed(0)
    loss = objective(rows, scale=1.0)
    torch.manual_seed(0)  # the same draws, by hand: the data's noise, the chains' uniform start, 3 steps
    noisy = rows + 0.015 * torch.randn_like(rows)
    negatives = short.run_chains(torch.rand(5, 3, dtype=torch.float64), 3)
    assert loss.item() == pytest.approx((short.energy(noisy) - short.energy(negatives)).sum().item(), abs=1e-12)


def test_the_convolutional_energy_scores_samples_and_trains_on_grey_digits():
    from ppgen import load_dataset

    ebm = EBM(784, architecture="conv", channels=4, steps=3)
    samples = ebm.sample(4)
    assert samples.shape == (4, 784) and 0 <= samples.min() and samples.max() <= 1
    assert ebm.double().energy(torch.rand(2, 5, 784, dtype=torch.float64)).shape == (2, 5)  # any leading shape
    grey = load_dataset("digits_grey", "train").x[:32] / 255
    result = fit(EBM(784, architecture="conv", channels=4, steps=3), grey, epochs=1, batch_size=16, lr=1e-4,
                 progress=False)
    assert result.estimator == "langevin-cd" and result.steps == 2 and all(math.isfinite(v) for v in result.losses)
    with pytest.raises(ValueError, match="side is divisible by 4"):
        EBM(100, architecture="conv")
    with pytest.raises(ValueError, match="architecture must be one of"):
        EBM(784, architecture="resnet")
