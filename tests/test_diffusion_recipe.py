"""Nichol & Dhariwal's recipe for GaussianDiffusion: learned variances against their closed form and
torch's Gaussian KL, the bound against the model's own Pyro program, the hybrid loss's stop-gradient by
autograd, and importance-sampled steps against the full sum over t (and an exact resume).

Tolerances: closed forms at 1e-6 relative: the models compute in float64 but hold their schedules as
computed in float64 and stored in the default float32 (``register_schedule``), 6e-8 relative each, which
the logs and KLs carry over a few times; values computed twice by the model itself at 1e-12. Monte Carlo
comparisons within 4.5 standard errors computed in the test (a false alarm below 1e-5 per check with
fixed seeds)."""

import functools
import math

import pytest
import torch
from pyro import poutine
from torch import nn

import ppgen
from ppgen.inference.checkpoint import load_checkpoint
from ppgen.inference.program import Program
from ppgen.models.diffusion import DiffusionELBO, GaussianDiffusion, HybridLoss, TimeMLP

BETAS = [0.05, 0.15, 0.3, 0.5]


class _NoiseAndV(nn.Module):
    """eps_theta = 0.3 tanh(x + 0.1 t) and the raw variance output r: ``r`` everywhere, or tanh(x) when None."""

    def __init__(self, r=None):
        super().__init__()
        self.r = r

    def forward(self, x, t):
        eps = 0.3 * torch.tanh(x + 0.1 * t.to(x.dtype).unsqueeze(-1))
        return torch.cat([eps, torch.tanh(x) if self.r is None else torch.full_like(x, self.r)], -1)


def _learned(network, **kw):
    return GaussianDiffusion(4, shape=(1, 2, 2), num_steps=len(BETAS), schedule=BETAS, variance="learned",
                             network=network, **kw).double()


def _schedule():
    """beta_t, alpha_bar_t, alpha_bar_{t-1} and beta~_t (beta~_1 taken as beta~_2), float64, index t - 1."""
    beta = torch.tensor(BETAS, dtype=torch.float64)
    ab = torch.cumprod(1 - beta, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    tilde = beta * (1 - ab_prev) / (1 - ab)
    return beta, ab, ab_prev, torch.cat([tilde[1:2], tilde[1:]])


# --- learned variances ---------------------------------------------------------------------------------

def test_learned_variance_runs_from_beta_tilde_to_beta():
    """v = (r + 1)/2: r = 1 (v = 1) gives beta_t, r = -1 (v = 0) beta~_t, r = 0 their geometric mean."""
    beta, _, _, tilde = _schedule()
    x_t = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 2, 3, 4])
    for r, expected in ((1.0, beta), (-1.0, tilde), (0.0, (beta * tilde).sqrt())):
        _, var = _learned(_NoiseAndV(r)).predict(x_t, t)
        torch.testing.assert_close(var, expected[t - 1, None].expand(4, 4), rtol=1e-6, atol=0)


def test_learned_step_terms_equal_torchs_gaussian_kl_and_the_decoders_bin_mass():
    """Per-pixel v = (tanh(x_t) + 1)/2: for t >= 2 the step term is torch's KL(q(x_{t-1}|x_t,x_0) || N(mu, sigma^2))
    with Ho et al.'s Eq. 11 mean and the Eq. 15 variance written here from the schedule; at t = 1 it is
    -log of each pixel's bin mass Phi((u + 1/255 - mu)/sigma) - Phi((u - 1/255 - mu)/sigma) (open at the ends)."""
    model = _learned(_NoiseAndV())
    beta, ab, ab_prev, tilde = _schedule()
    x0 = torch.tensor([[-1.0, -0.3, 40 / 127.5 - 1, 1.0]], dtype=torch.float64)
    x0 = ((x0 + 1) * 127.5).round() / 127.5 - 1  # on the 8-bit grid in [-1, 1] units
    noise = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for step in range(1, 5):
        i, t = step - 1, torch.tensor([step])
        x_t = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * noise
        eps = 0.3 * torch.tanh(x_t + 0.1 * step)
        mu = (x_t - beta[i] / (1 - ab[i]).sqrt() * eps) / (1 - beta[i]).sqrt()
        v = (torch.tanh(x_t) + 1) / 2
        var = torch.exp(v * beta[i].log() + (1 - v) * tilde[i].log())
        term = model.step_term(x0, t, noise).item()
        if step == 1:
            h = 1 / 255
            upper = torch.where(x0 >= 1, torch.ones_like(x0), torch.special.ndtr((x0 + h - mu) / var.sqrt()))
            lower = torch.where(x0 <= -1, torch.zeros_like(x0), torch.special.ndtr((x0 - h - mu) / var.sqrt()))
            expected = -(upper - lower).log().sum().item()
        else:
            q_mean = (ab_prev[i].sqrt() * beta[i] * x0 + (1 - beta[i]).sqrt() * (1 - ab_prev[i]) * x_t) / (1 - ab[i])
            q_var = beta[i] * (1 - ab_prev[i]) / (1 - ab[i])
            expected = torch.distributions.kl_divergence(torch.distributions.Normal(q_mean, q_var.sqrt()),
                                                         torch.distributions.Normal(mu, var.sqrt())).sum().item()
        assert term == pytest.approx(expected, rel=1e-6), step


def test_learned_bound_equals_the_elbo_of_its_own_pyro_program():
    """T = 4 and a small random network: nll_bound (analytic KLs, the decoder's bin masses) and the log
    weights of the Pyro program (the forward chain replayed through the reverse steps, sampled KLs) estimate
    the same ELBO: their means agree within 4.5 standard errors of the difference. The learned variances
    matter at this tolerance: with sigma^2 = beta_t or beta~_t (the same noise network) the bound moves by
    2.2 and 5.4 nats, over 20 standard errors."""
    torch.manual_seed(0)
    network = TimeMLP(4, 8, hidden=(16,), embed_dim=8).double()
    model = _learned(network)
    x = torch.tensor([[0.0, 40 / 255, 128 / 255, 1.0]], dtype=torch.float64)
    n = 20_000
    bound = -model.nll_bound(x.expand(n, 4), seed=1)
    with torch.no_grad(), poutine.trace() as guide_tape:
        model.guide(x.expand(n, 4))
    with torch.no_grad():
        joint = poutine.trace(poutine.replay(model.model, trace=guide_tape.trace)).get_trace(x.expand(n, 4))
    guide_tape.trace.compute_log_prob()
    joint.compute_log_prob()
    log_w = sum(site["log_prob"] for site in joint.nodes.values() if site["type"] == "sample") \
        - sum(site["log_prob"] for site in guide_tape.trace.nodes.values() if site["type"] == "sample")
    se = math.sqrt(bound.var().item() / n + log_w.var().item() / n)
    assert abs(bound.mean().item() - log_w.mean().item()) < 4.5 * se
    # the learned variances matter here: the fixed ones give bounds far outside that tolerance
    for variance in ("beta", "posterior"):
        fixed = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=4, schedule=BETAS, variance=variance,
                                  network=_FirstHalf(network)).double()
        assert abs(-fixed.nll_bound(x.expand(n, 4), seed=1).mean().item() - bound.mean().item()) > 20 * se


class _FirstHalf(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x, t):
        return self.network(x, t)[:, :x.shape[1]]


class _ZeroNoiseHalves(nn.Module):
    """eps_theta = 0; r = 1 (sigma^2 = beta_t) in the first two pixels, -1 (beta~_t) in the last two."""

    def forward(self, x, t):
        return torch.cat([torch.zeros_like(x), torch.tensor([1.0, 1.0, -1.0, -1.0]).to(x).expand_as(x)], -1)


def test_ancestral_sampling_draws_with_the_learned_variance_of_each_pixel():
    """T = 2, eps_theta = 0, x_2 = 0: x_1 = sigma_2 z_1 and x_0 = x_1 / sqrt(alpha_bar_1) + sigma_1 z_0, so
    Var x_0 = sigma_2^2 / alpha_bar_1 + sigma_1^2 per pixel, beta's or beta~'s (beta~_1 := beta~_2) as r sets
    it, plus the 8-bit rounding's (2/255)^2 / 12 (Sheppard). Within 4.5 standard errors of a variance,
    Var sqrt(2 / n), on 40,000 draws (the two values differ by about 80 of them)."""
    betas = [0.001, 0.002]
    model = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=2, schedule=betas, variance="learned",
                              network=_ZeroNoiseHalves()).double()
    n = 40_000
    draws = 2 * model.sample(n, start=torch.zeros(n, 4, dtype=torch.float64), seed=0) - 1
    ab1, ab2 = 1 - betas[0], (1 - betas[0]) * (1 - betas[1])
    tilde2 = betas[1] * (1 - ab1) / (1 - ab2)
    rounding = (2 / 255) ** 2 / 12
    for pixels, (s1, s2) in ((slice(0, 2), betas), (slice(2, 4), (tilde2, tilde2))):
        expected = s2 / ab1 + s1 + rounding
        for variance in draws[:, pixels].var(0).tolist():
            assert abs(variance - expected) < 4.5 * expected * math.sqrt(2 / n)


def test_a_network_of_the_wrong_width_is_refused_naming_the_widths():
    model = _learned(_FirstHalf(_NoiseAndV()))  # returns D values, not 2 D
    x = torch.full((3, 4), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"network must return 8 values per row .*variance='learned'.*\(3, 4\)"):
        model.nll_bound(x)
    fixed = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=4, schedule=BETAS, network=_NoiseAndV()).double()
    with pytest.raises(ValueError, match=r"network must return 4 values per row .*got shape \(3, 8\)"):
        fixed.sample(3)


# --- the hybrid loss ---------------------------------------------------------------------------------

class _Outputs(nn.Module):
    """eps = a + 0.2 tanh(x) and r = b + 0.5 tanh(x), with a and b (D,) the only parameters."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(-0.5, 0.5, dim, dtype=torch.float64))
        self.b = nn.Parameter(torch.linspace(0.3, -0.3, dim, dtype=torch.float64))

    def forward(self, x, t):
        return torch.cat([self.a + 0.2 * torch.tanh(x), self.b + 0.5 * torch.tanh(x)], -1)


def test_hybrids_vlb_reaches_the_variances_only():
    """By autograd: L_vlb's gradient with respect to the noise output is exactly zero (the stop-gradient) and
    not with respect to the variance output; L_simple's is -2 sum(eps - eps_theta) per pixel (and none to
    the variances); L_vlb's value is the step term's, at t = 1 (the decoder) and later steps alike."""
    network = _Outputs(4)
    model = _learned(network, loss="hybrid")
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 4, dtype=torch.float64, generator=generator).mul(255).round() / 127.5 - 1
    t = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])
    noise = torch.randn(8, 4, dtype=torch.float64, generator=generator)
    simple, vlb = model.hybrid_terms(x0, t, noise)
    grad_a, grad_b = torch.autograd.grad(vlb.sum(), [network.a, network.b], allow_unused=True)
    assert (grad_a is None or torch.equal(grad_a, torch.zeros(4, dtype=torch.float64))) and grad_b.abs().min() > 1e-3
    torch.testing.assert_close(vlb.detach(), model.step_term(x0, t, noise).detach(), rtol=1e-12, atol=0)
    grad_a, grad_b = torch.autograd.grad(simple.sum(), [network.a, network.b], allow_unused=True)
    x_t = model.q_sample(x0, t, noise)
    expected = -2 * (noise - (network.a + 0.2 * torch.tanh(x_t))).sum(0)
    torch.testing.assert_close(grad_a, expected.detach(), rtol=1e-12, atol=1e-12)
    assert grad_b is None or torch.equal(grad_b, torch.zeros(4, dtype=torch.float64))
    program = Program(model)
    assert isinstance(model.default_objective(program), HybridLoss)


def test_hybrid_and_simple_are_refused_where_they_cannot_train_the_variances():
    with pytest.raises(ValueError, match=r"loss='hybrid'.*variance='learned'.*variance='beta'"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=4, loss="hybrid", network=_NoiseAndV())
    with pytest.raises(ValueError, match=r"loss='simple' leaves learned variances untrained.*'hybrid'"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=4, loss="simple", variance="learned", network=_NoiseAndV())
    fixed = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=4, variance="posterior", network=_NoiseAndV())
    with pytest.raises(ValueError, match=r"needs variance='learned', this model has variance='posterior'"):
        fixed.hybrid_loss(torch.full((2, 4), 0.5))


# --- importance-sampled steps ----------------------------------------------------------------------------

def test_importance_sampled_elbo_is_unbiased_for_the_full_sum():
    """Fixed x0 and one fixed noise per t, so L_{t-1} is a number per t and t the only randomness: the
    mean of L_T + L_{t-1}/p_t over many draws equals L_T + sum_t L_{t-1} (within 4.5 standard errors of the
    mean of 400 independent batches); p_t is (1 - 0.001) sqrt(mean L^2) / sum + 0.001/T of the history
    recorded, and t is uniform until every t has 10 values."""
    model = _learned(_NoiseAndV())
    noises = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model.step_draw = lambda x0, t, generator=None: noises[t - 1]
    objective = DiffusionELBO(Program(model), importance_sampling=True)
    x = torch.tensor([[0.0, 40 / 255, 128 / 255, 1.0]], dtype=torch.float64)
    x0 = model.to_chain(x)
    terms = torch.stack([model.step_term(x0, torch.tensor([s]), noises[s - 1:s]) for s in range(1, 5)])[:, 0]
    full = (model.prior_term(x0)[0] + terms.sum()).item()
    assert objective.step_probabilities() is None
    history = torch.tensor([[1.0] * 10, [2.0] * 10, [0.5] * 9 + [4.0], [3.0] * 10], dtype=torch.float64)
    for column in range(10):
        objective.record(torch.arange(1, 5), history[:, column])
    objective.record(torch.tensor([1]), torch.tensor([7.0], dtype=torch.float64))  # the oldest value goes
    history[0] = torch.tensor([1.0] * 9 + [7.0])
    rms = history.pow(2).mean(-1).sqrt()
    p = objective.step_probabilities()
    torch.testing.assert_close(p, 0.999 * rms / rms.sum() + 0.001 / 4, rtol=1e-12, atol=0)
    objective.eval()  # scoring records nothing: the history and p stay as set
    with torch.no_grad():
        means = torch.stack([objective(x.expand(250, 4)) / 250 for _ in range(400)])
    assert torch.equal(objective.step_probabilities(), p)
    se = means.std().item() / math.sqrt(len(means))
    assert abs(means.mean().item() - full) < 4.5 * se and se > 0
    objective.train()
    objective(x.expand(3, 4))
    assert int(objective.counts.sum()) == 40  # full; the new values replaced the oldest


def _grey_rows(n):
    x = ppgen.data.load_dataset("digits_grey", "train").x[:n] / 255
    return x.reshape(n, 28, 28)[:, ::2, ::2].reshape(n, 196)  # 14x14 digits, still on the 8-bit grid


def _grey_model(num_steps=20, **kw):
    torch.manual_seed(0)
    return GaussianDiffusion(196, shape=(1, 14, 14), num_steps=num_steps, channels=8, multipliers=(1, 2),
                             attention=False, variance="learned", **kw)


def test_importance_sampled_fit_resumes_bit_for_bit(tmp_path):
    """A run with importance-sampled steps resumed after 2 of 4 epochs ends with the parameters and the
    losses of a straight run. The history is in use by then (T = 4 steps x 10 values, 64 drawn per epoch:
    the checkpoint holds it full), so a resume without it would draw other steps."""
    x = _grey_rows(64)
    settings = dict(batch_size=16, lr=3e-3, seed=3, progress=False,
                    objective=functools.partial(DiffusionELBO, importance_sampling=True))
    straight = _grey_model(4)
    result = ppgen.fit(straight, x, epochs=4, **settings)
    ppgen.fit(_grey_model(4), x, epochs=2, checkpoint_dir=tmp_path, **settings)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["objective"]
    assert torch.equal(saved["counts"], torch.full((4,), 10)) and saved["history"].shape == (4, 10)
    resumed = _grey_model(4)
    torch.manual_seed(9)  # whatever the global state: fit seeds its own
    again = ppgen.fit(resumed, x, epochs=4, checkpoint_dir=tmp_path, resume=True, **settings)
    assert again.resumed_from_step == 8 and again.losses == result.losses
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


@pytest.mark.parametrize("option", ["hybrid", "elbo-importance"])
def test_a_short_fit_of_each_option_lowers_the_bound(option):
    """64 rows of 14x14 digits, 15 epochs: the learned-variance model's bound (all T terms, seeded) falls
    by far more than both standard errors (the untrained bound is ~100 bits/dim), and the trained loss
    falls from the first epoch's steps to the last's."""
    x = _grey_rows(64)
    if option == "hybrid":
        model, objective = _grey_model(loss="hybrid"), None
    else:
        model, objective = _grey_model(), functools.partial(DiffusionELBO, importance_sampling=True)
    before = model.estimate_log_likelihood(x[:32], seed=0)
    result = ppgen.fit(model, x, epochs=15, batch_size=32, lr=3e-3, progress=False, seed=0, objective=objective)
    after = model.estimate_log_likelihood(x[:32], seed=0)
    assert result.estimator == ("hybrid" if option == "hybrid" else "diffusion-elbo")
    assert after.values.mean() > before.values.mean() + 10 * (before.stderr + after.stderr)
    assert sum(result.losses[-2:]) < sum(result.losses[:2])
