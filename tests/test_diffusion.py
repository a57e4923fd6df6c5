"""Diffusion models: closed forms against simulation, analytic KLs against Monte Carlo, the ELBO
against an independent quadrature (T = 1) and brute-force enumeration (binary), and the samplers.

Tolerances: Monte Carlo comparisons allow 4-5 standard errors computed in the test (a false
alarm rate below 1e-4 per check with fixed seeds, so they do not flake); closed forms in float64
are compared at 1e-9 relative."""

import copy
import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import ppgen
from ppgen.models.diffusion import BinaryDiffusion, DiscretisedGaussian, GaussianDiffusion, SimpleLoss, DiffusionELBO
from ppgen.models.diffusion.schedules import binary_betas, cosine_betas, linear_betas, log_snr_betas

scipy_stats = pytest.importorskip("scipy.stats")


class _FixedNoise(nn.Module):
    """A fixed, smooth, non-trivial eps_theta(x_t, t) with no parameters (a "fixed decoder")."""

    def __init__(self, scale: float = 0.3):
        super().__init__()
        self.scale = scale

    def forward(self, x, t):
        return self.scale * torch.tanh(x + 0.1 * t.to(x.dtype).unsqueeze(-1))


class _FixedLogits(nn.Module):
    def __init__(self, dim: int, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return x @ self.w + self.b + 0.2 * t.to(x.dtype).unsqueeze(-1)


def _tiny_gaussian(num_steps=10, schedule="linear", variance="beta", network=None, **kw):
    net = network if network is not None else _FixedNoise()
    return GaussianDiffusion(4, shape=(1, 2, 2), num_steps=num_steps, schedule=schedule, variance=variance,
                             network=net, **kw).double()


# --- schedules and the forward process --------------------------------------------------------------

def test_schedules_match_their_papers():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # cosine: alpha_bar_t = f(t)/f(0) (Nichol & Dhariwal Eq. 17), recomputed here
    t = np.arange(1, 101) / 100
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    assert np.allclose(torch.cumprod(1 - cosine_betas(100), 0).numpy()[:-1], f[:-1], rtol=1e-9)
    # binary "linear": prod(1 - 2 beta) = 1 - t/T
    expected = 1 - torch.arange(1, 9, dtype=torch.float64) / 8
    assert torch.allclose(torch.cumprod(1 - 2 * binary_betas("linear", 8), 0), expected, atol=1e-12)


def test_log_snr_schedule_gives_every_step_the_same_elbo_weight():
    """Kingma et al.'s schedule: alpha_bar_t = sigmoid(13.3 - 18.3 t / T) (recomputed here), and with the posterior
    variances each term L_{t-1}, t >= 2, is (exp(18.3 / T) - 1) / 2 times ||eps - eps_theta||^2 (closed form of
    the Gaussian KL with equal variances), whatever t: the unweighted noise loss is the ELBO."""
    T = 50
    alpha_bar = torch.cumprod(1 - log_snr_betas(T), 0)
    lam = 13.3 - 18.3 * torch.arange(1, T + 1, dtype=torch.float64) / T
    assert torch.allclose(alpha_bar, torch.sigmoid(lam), rtol=1e-12)
    model = _tiny_gaussian(T, "log-snr", "posterior")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 4, generator=g, dtype=torch.float64)
    weight = (math.exp(18.3 / T) - 1) / 2
    for step in (2, 3, T // 2, T):
        t = torch.full((6,), step)
        eps_theta = model.network(model.q_sample(x0, t, noise), t)
        expected = weight * (noise - eps_theta).pow(2).sum(-1)
        # rtol: the schedules are float32 buffers (each factor rounded by ~6e-8), in float64 arithmetic after
        assert torch.allclose(model.step_term(x0, t, noise), expected, rtol=1e-6), step


def test_gaussian_q_closed_form_matches_step_by_step_chain():
    model = _tiny_gaussian(num_steps=10, schedule="cosine")
    n = 20_000
    x = torch.tensor([[0.0, 0.2, 0.8, 1.0]], dtype=torch.float64).expand(n, 4)
    trace = poutine.trace(model.guide).get_trace(x)  # the chain, one step at a time
    u0 = 2 * x[0] - 1
    for t in (1, 4, 10):
        xt = trace.nodes[f"x_{t}"]["value"]
        ab = model.alpha_bar[t - 1]
        mean, var = ab.sqrt() * u0, 1 - ab
        # mean within 4.5 s.e.; variance within 4.5 s.e. of the sample variance (sqrt(2/n) var)
        assert ((xt.mean(0) - mean).abs() < 4.5 * (var / n).sqrt()).all()
        assert ((xt.var(0) - var).abs() < 4.5 * var * math.sqrt(2 / n)).all()
        z = ((xt[:, 2] - mean[2]) / var.sqrt()).numpy()
        assert scipy_stats.kstest(z, "norm").pvalue > 1e-3


def test_binary_q_closed_form_matches_step_by_step_chain():
    model = BinaryDiffusion(3, num_steps=6, schedule="cosine", network=_FixedLogits(3)).double()
    n = 40_000
    x = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64).expand(n, 3)
    trace = poutine.trace(model.guide).get_trace(x)
    for t in range(1, 7):
        freq = trace.nodes[f"x_{t}"]["value"].mean(0)
        p = model.q_probs(x[:1], torch.tensor([t]))[0]  # flips with (1 - prod(1 - 2 beta)) / 2
        se = (p * (1 - p) / n).sqrt().clamp(min=1e-12)
        assert ((freq - p).abs() < 4.5 * se + 1e-12).all(), (t, freq, p)


# --- the bound, term by term -------------------------------------------------------------------------

def test_discretised_decoder_sums_to_one_over_the_levels():
    loc = torch.tensor([[-1.3], [-0.2], [0.5], [0.99]], dtype=torch.float64)
    for scale in (1e-3, 0.05, 2.0):
        levels = torch.arange(256, dtype=torch.float64) / 255
        log_p = DiscretisedGaussian(loc.expand(4, 256), torch.full((4, 256), scale, dtype=torch.float64)).log_prob(
            levels.expand(4, 256))
        assert torch.allclose(torch.logsumexp(log_p, -1).exp(), torch.ones(4, dtype=torch.float64), atol=1e-9)
    # finite gradients in float32 wherever the bin is, even when the CDF difference is 1e-8 wide
    # (a NaN from the branch not taken once ended an ELBO training run)
    loc = torch.tensor([-3.0, -0.5, 0.0, 0.49, 0.9, 3.0], requires_grad=True)
    values = torch.tensor([0.0, 0.5, 1.0, 0.75, 0.2, 1.0])
    log_p = DiscretisedGaussian(loc, torch.full((6,), 0.001)).log_prob(values)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(loc.grad).all()


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_analytic_kl_equals_monte_carlo(variance):
    model = _tiny_gaussian(num_steps=8, variance=variance)
    x0 = torch.tensor([[-1.0, -0.3, 0.4, 1.0]], dtype=torch.float64)
    t = torch.tensor([5])
    noise = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kl = model.step_term(x0, t, noise).item()
    xt = model.q_sample(x0, t, noise)
    q = torch.distributions.Normal(model.posterior_mean(x0, xt, t), model.posterior_variance[4].sqrt())
    p = torch.distributions.Normal(model.reverse_mean(xt, t), model.sigma2[4].sqrt())
    draws = q.sample((200_000,))
    ratio = (q.log_prob(draws) - p.log_prob(draws)).sum(-1)
    assert abs(ratio.mean().item() - kl) < 5 * ratio.std().item() / math.sqrt(len(ratio))
    assert kl > 0


def _log_mass(a, b):
    """log(Phi(b) - Phi(a)) in NumPy, from the lower or the upper tail."""
    from scipy.special import log_ndtr

    with np.errstate(divide="ignore"):
        low = log_ndtr(b) + np.log1p(-np.exp(log_ndtr(a) - log_ndtr(b)))
        high = log_ndtr(-a) + np.log1p(-np.exp(log_ndtr(-b) - log_ndtr(-a)))
    return np.where(a + b < 0, low, high)


def test_one_step_elbo_equals_quadrature():
    """T = 1 with a fixed eps_theta = 0: ELBO = -KL(N(sqrt(a) u, 1 - a) || N(0, 1))
    + E_z log [Phi((u + h - mu)/s) - Phi((u - h - mu)/s)], mu = u + sqrt((1 - a)/a) z, s = sqrt(beta),
    per pixel, by Gauss-Hermite quadrature in NumPy/SciPy."""
    zero = _FixedNoise(0.0)
    beta = 0.3
    model = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=1, schedule=[beta], network=zero).double()
    x = torch.tensor([[0.0, 40 / 255, 128 / 255, 1.0]], dtype=torch.float64)
    a, h, s = 1 - beta, 1 / 255, math.sqrt(beta)
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    expected = 0.0
    for u in (2 * x[0].numpy() - 1):
        expected -= 0.5 * (-math.log(1 - a) + (1 - a) + a * u * u - 1)  # -KL of the prior term
        mu = u + math.sqrt((1 - a) / a) * nodes
        hi = np.inf if u >= 1 else u + h
        lo = -np.inf if u <= -1 else u - h
        expected += float(np.sum(weights * _log_mass((lo - mu) / s, (hi - mu) / s)))
    n = 40_000
    values = -model.nll_bound(x.expand(n, 4), seed=1)  # one draw of x_1 per row
    se = values.std().item() / math.sqrt(n)
    assert abs(values.mean().item() - expected) < 4.5 * se
    # the Pyro program gives the same ELBO in expectation (sampled KL instead of analytic)
    with poutine.trace() as guide_tape:
        model.guide(x.expand(n, 4))
    replayed = poutine.trace(poutine.replay(model.model, trace=guide_tape.trace)).get_trace(x.expand(n, 4))
    guide_tape.trace.compute_log_prob()
    replayed.compute_log_prob()
    log_w = sum(site["log_prob"] for site in replayed.nodes.values() if site["type"] == "sample") \
        - sum(site["log_prob"] for site in guide_tape.trace.nodes.values() if site["type"] == "sample")
    assert abs(log_w.mean().item() - expected) < 4.5 * log_w.std().item() / math.sqrt(n)


def test_binary_elbo_terms_equal_brute_force_enumeration():
    d, steps = 2, 3
    model = BinaryDiffusion(d, num_steps=steps, schedule=[0.1, 0.25, 0.4], network=_FixedLogits(d)).double()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)  # (4, d)
    total_p = 0.0
    for x0 in states:
        x0 = x0.unsqueeze(0)
        elbo, log_joint, l0 = 0.0, [], 0.0
        for path in itertools.product(range(len(states)), repeat=steps):  # x_1, ..., x_T
            values = {f"x_{t + 1}": states[i].unsqueeze(0) for t, i in enumerate(path)}
            guide = poutine.trace(poutine.condition(model.guide, data=values)).get_trace(x0)
            joint = poutine.trace(poutine.condition(model.model, data=values)).get_trace(x0)
            log_q, log_p = guide.log_prob_sum().item(), joint.log_prob_sum().item()
            elbo += math.exp(log_q) * (log_p - log_q)
            log_joint.append(log_p)
            l0 -= math.exp(log_q) * joint.nodes["x"]["fn"].log_prob(x0).sum().item()
        # the model's terms, with the expectation over x_t taken by enumerating x_t exactly
        terms = model.prior_term(x0).item()
        first = None
        for t in range(1, steps + 1):
            q_t = model.q_probs(x0, torch.tensor([t]))[0]
            weight = (states * q_t + (1 - states) * (1 - q_t)).prod(-1)  # q(x_t | x_0) for each state
            step = model.step_term(x0.expand(len(states), d), torch.full((len(states),), t), states)
            terms += (weight * step).sum().item()
            first = (weight * step).sum().item() if t == 1 else first
        assert terms == pytest.approx(-elbo, rel=1e-9)
        assert first == pytest.approx(l0, rel=1e-9)
        log_px = torch.logsumexp(torch.tensor(log_joint, dtype=torch.float64), 0).item()
        assert log_px >= -terms - 1e-9  # the bound
        total_p += math.exp(log_px)
    assert total_p == pytest.approx(1.0, abs=1e-9)  # the model is a normalised distribution over 2^d rows


def test_binary_bound_estimate_is_unbiased_for_the_enumerated_terms():
    model = BinaryDiffusion(2, num_steps=3, schedule=[0.1, 0.25, 0.4], network=_FixedLogits(2)).double()
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=torch.float64)
    exact = model.prior_term(x0).item()
    for t in range(1, 4):
        q_t = model.q_probs(x0, torch.tensor([t]))[0]
        weight = (states * q_t + (1 - states) * (1 - q_t)).prod(-1)
        exact += (weight * model.step_term(x0.expand(4, 2), torch.full((4,), t), states)).sum().item()
    n = 40_000
    sampled = model.nll_bound(x0.expand(n, 2), seed=2)
    assert abs(sampled.mean().item() - exact) < 4.5 * sampled.std().item() / math.sqrt(n)
    train = torch.stack([model.elbo_loss(x0.expand(n, 2)) for _ in range(1)]).flatten().detach()
    assert abs(train.mean().item() - exact) < 4.5 * train.std().item() / math.sqrt(n)


def test_the_bound_from_a_few_strata_of_steps_is_the_full_bound_in_expectation():
    torch.manual_seed(0)
    model = BinaryDiffusion(6, num_steps=8, hidden=(16,))
    for p in model.parameters():  # a network far from its zero-initialised start, so that steps' terms differ
        p.data.normal_(0, 0.5)
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float().repeat(100, 1)  # 4 rows x 100
    few = torch.stack([model.nll_bound(x, seed=s, strata=2) for s in range(10)]).view(-1, 100, 4)
    full = torch.stack([model.nll_bound(x, seed=s) for s in range(10)]).view(-1, 100, 4)
    for row in range(4):  # per row: two estimators of the same expectation, 1,000 draws each
        a, b = few[..., row].flatten(), full[..., row].flatten()
        stderr = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
        assert abs(a.mean().item() - b.mean().item()) < 4 * stderr  # 4 standard errors: a false alarm in 1 of 15,000
    assert few.var(dim=(0, 1)).mean() > full.var(dim=(0, 1)).mean()  # the price of 4x fewer network passes
    result = ppgen.log_likelihood(model, x[:40], strata=4, batch_size=40)  # the estimator's option, through the API
    assert result.values.shape == (40,) and result.method == "elbo"
    for bad in (3, 9, 0):
        with pytest.raises(ValueError, match="strata"):
            model.nll_bound(x, strata=bad)


def _log_weights(model, x, particles):
    """log p(x, x_{1:T}) - log q(x_{1:T} | x) of each particle, (particles, N), drawn at once under an
    outer plate as Pyro's vectorize_particles does."""
    with pyro.plate("particles", particles, dim=-2):
        guide = poutine.trace(model.guide).get_trace(x)
        joint = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
    guide.compute_log_prob()
    joint.compute_log_prob()
    return sum(site["log_prob"] for site in joint.nodes.values() if site["type"] == "sample") \
        - sum(site["log_prob"] for site in guide.nodes.values() if site["type"] == "sample")


def test_the_program_broadcasts_over_vectorised_particles():
    """Both programs run under an outer particle plate (the reverse steps see rows; Lazy reshapes):
    the binary model's log weights average to its ELBO from exact enumeration of x_t (as in the test
    above), within 4.5 standard errors computed here; the Gaussian one gives Pyro's vectorised ELBO."""
    model = BinaryDiffusion(2, num_steps=3, schedule=[0.1, 0.25, 0.4], network=_FixedLogits(2)).double()
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=torch.float64)
    for row in range(2):
        exact = model.prior_term(x0[row:row + 1]).item()
        for t in range(1, 4):
            q_t = model.q_probs(x0[row:row + 1], torch.tensor([t]))[0]
            weight = (states * q_t + (1 - states) * (1 - q_t)).prod(-1)
            exact += (weight * model.step_term(x0[row].expand(4, 2), torch.full((4,), t), states)).sum().item()
        log_w = _log_weights(model, x0, 40_000)[:, row]
        assert log_w.shape == (40_000,)
        assert abs(log_w.mean().item() + exact) < 4.5 * log_w.std().item() / math.sqrt(len(log_w))
    gaussian = _tiny_gaussian(num_steps=3)
    x = torch.tensor([[0.0, 0.3, 0.7, 1.0]], dtype=torch.float64).expand(3, 4)
    assert _log_weights(gaussian, x, 5).shape == (5, 3)
    loss = pyro.infer.Trace_ELBO(num_particles=5, vectorize_particles=True).differentiable_loss(
        gaussian.model, gaussian.guide, x)
    assert torch.isfinite(loss)


def test_gaussian_training_loss_is_unbiased_for_the_full_sum():
    model = _tiny_gaussian(num_steps=6)
    x = torch.tensor([[0.0, 0.3, 0.7, 1.0]], dtype=torch.float64)
    n = 40_000
    full = model.nll_bound(x.expand(n, 4), seed=4)
    sampled = model.elbo_loss(x.expand(n, 4)).detach()
    se = math.sqrt(full.var().item() / n + sampled.var().item() / n)
    assert abs(full.mean().item() - sampled.mean().item()) < 4.5 * se


# --- training and evaluation ----------------------------------------------------------------------------

def _grey_rows(n):
    x = ppgen.data.load_dataset("digits_grey", "train").x[:n] / 255
    return x.reshape(n, 28, 28)[:, ::2, ::2].reshape(n, 196)[:, :196]  # 14x14 digits, still on the 8-bit grid


def test_gaussian_bound_is_finite_and_training_lowers_it():
    x = _grey_rows(64)
    model = GaussianDiffusion(196, shape=(1, 14, 14), num_steps=20, channels=8, multipliers=(1, 2), attention=False)
    before = ppgen.log_likelihood(model, x[:32], seed=0)
    assert math.isfinite(before.bits_per_dim) and before.bits_per_dim > 0 and not before.exact
    result = ppgen.fit(model, x, epochs=15, batch_size=32, lr=3e-3, progress=False, seed=0)
    assert result.estimator == "diffusion-elbo"
    after = ppgen.log_likelihood(model, x[:32], seed=0)
    # a drop far beyond both standard errors (the untrained bound is ~100 bits/dim)
    assert after.mean > before.mean + 10 * (before.stderr + after.stderr)
    estimate = model.estimate_log_likelihood(x[:32], seed=0)
    values, stderr = estimate.values, estimate.stderr
    assert torch.allclose(values.float(), after.values) and stderr == pytest.approx(after.stderr)
    assert stderr == pytest.approx(values.std().item() / math.sqrt(32))
    # ppgen.log_likelihood goes through the model's hook: the same values, whatever its num_samples
    core = ppgen.log_likelihood(model, x[:32], seed=0)
    assert torch.allclose(core.values, after.values) and not core.exact
    assert after.bits_per_dim == pytest.approx(-after.mean / (196 * math.log(2)))
    assert "lower bound" in str(after) and after.stderr_over_rows and "s.e. over rows" in str(after)


def test_binary_training_lowers_the_bound():
    x = ppgen.data.load_dataset("digits", "train").x[:200, 300:316]  # 16 central pixels
    model = BinaryDiffusion(16, num_steps=10, hidden=(32,))
    before = -model.nll_bound(x, seed=0).mean().item()
    ppgen.fit(model, x, epochs=30, batch_size=50, lr=3e-3, progress=False)
    after = -model.nll_bound(x, seed=0).mean().item()
    assert after > before + 1.0 and after > -16 * math.log(2)  # better than 16 fair coins


def test_simple_loss_is_selectable_and_named():
    model = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=5, loss="simple", channels=8, multipliers=(1,),
                              attention=False)
    x = torch.rand(20, 4).mul(255).round() / 255
    result = ppgen.fit(model, x, epochs=2, batch_size=10, progress=False)
    assert result.estimator == "simple"
    program = ppgen.inference.program.Program(model)
    assert isinstance(model.default_objective(program), SimpleLoss)
    model.loss = "elbo"
    assert isinstance(model.default_objective(program), DiffusionELBO)
    assert ppgen.fit(model, x, epochs=1, batch_size=10, progress=False,
                     objective=SimpleLoss).estimator == "simple"


# --- Pyro programs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gaussian", "binary"])
def test_model_and_guide_are_pyro_programs(kind):
    if kind == "gaussian":
        model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=4, channels=8, multipliers=(1, 2), attention=False)
        x = torch.rand(5, 16).mul(255).round() / 255
    else:
        model = BinaryDiffusion(16, num_steps=4, hidden=(8,))
        x = torch.bernoulli(torch.full((5, 16), 0.3))
    guide = poutine.trace(model.guide).get_trace(x)
    joint = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
    assert [n for n in guide.stochastic_nodes if n != "data"] == [f"x_{t}" for t in range(1, 5)]
    assert joint.nodes["x"]["is_observed"] and set(joint.stochastic_nodes) - {"data"} == {"x_1", "x_2", "x_3", "x_4"}
    assert list(model.guide.__self__.parameters()) and not list(p for n, p in model.named_parameters()
                                                                if not n.startswith("network"))
    check = ppgen.check_model(model, x)
    assert check.latent == ["x_1", "x_2", "x_3", "x_4"]
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    assert torch.isfinite(loss)
    assert model.sample(3).shape == (3, 16)


# --- sampling --------------------------------------------------------------------------------------------

def test_samplers_are_reproducible_and_ddim_is_deterministic():
    model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=20, channels=8, multipliers=(1, 2), attention=False)
    for p in model.parameters():  # a non-trivial network
        nn.init.normal_(p, std=0.05)
    start = torch.randn(3, 16)
    a = model.sample(3, method="ddim", steps=5, start=start, seed=1)
    b = model.sample(3, method="ddim", steps=5, start=start, seed=2)
    assert torch.equal(a, b)  # eta = 0: a function of x_T alone
    assert not torch.equal(a, model.sample(3, method="ddim", steps=5, start=-start, seed=1))
    c = model.sample(3, method="ddim", steps=5, eta=1.0, start=start, seed=1)
    assert torch.equal(c, model.sample(3, method="ddim", steps=5, eta=1.0, start=start, seed=1))
    assert torch.equal(model.sample(3, seed=7), model.sample(3, seed=7))
    for s in (a, c, model.sample(3, seed=7)):
        assert s.shape == (3, 16) and s.min() >= 0 and s.max() <= 1
        assert torch.equal(s * 255, (s * 255).round())  # on the 8-bit grid
    assert model.ddim_steps(5) == [20, 15, 10, 6, 1]
    assert model.sample(2, method="ddim", steps=3, progress=True).shape == (2, 16)  # a tqdm bar, no warning


def test_colour_images():
    model = GaussianDiffusion(2352, num_steps=3, channels=8, multipliers=(1, 2), attention=False)
    assert model.shape == (3, 28, 28)
    x = ppgen.load_dataset("digits_colour", "test").x[:4] if "digits_colour" in ppgen.data.DATASETS \
        else torch.rand(4, 2352).mul(255).round() / 255
    assert torch.isfinite(model.nll_bound(x)).all() and model.sample(2, method="ddim", steps=2).shape == (2, 2352)


def test_ddim_one_step_returns_the_predicted_x0():
    model = _tiny_gaussian(num_steps=10)
    start = torch.randn(2, 4, dtype=torch.float64)
    t = torch.full((2,), 10)
    x0 = model.predict_x0(start, t, model.predict_noise(start, t)).clamp(-1, 1)
    expected = ((x0 + 1) / 2 * 255).round() / 255
    assert torch.equal(model.sample(2, method="ddim", steps=1, start=start), expected)


# --- inverse problems -------------------------------------------------------------------------------------

class _Inpaint:
    """A stand-in for ppgen.inverse.Inpaint (same protocol)."""

    task, sigma = "inpaint", 0.0

    def __init__(self, mask):
        self.mask, self.in_dim, self.out_dim = mask, mask.shape[-1], mask.shape[-1]

    def __call__(self, x):
        return x * self.mask

    def check_y(self, y):
        return y

    def mask_for(self, y):
        return self.mask.expand(y.shape[0], -1)

    def pseudo_inverse(self, y):
        return y * self.mask

    def project(self, x, y):
        return self.pseudo_inverse(y) + x - self.pseudo_inverse(self(x))


def _operators():
    try:
        from ppgen import inverse
        return inverse.Inpaint, inverse.GaussianNoise
    except ImportError:
        return _Inpaint, None


def test_ddnm_restores_observed_pixels_exactly():
    inpaint, _ = _operators()
    model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=10, channels=8, multipliers=(1, 2), attention=False)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:8] = True
    x = torch.rand(3, 16).mul(255).round() / 255
    op = inpaint(mask)
    for method in ("ancestral", "ddim"):
        samples, name = model.restore(op(x), op, 2, method=method, steps=5 if method == "ddim" else None)
        assert samples.shape == (2, 3, 16)
        # the last step returns the projected x0: observed pixels are y's (float32 rounding only)
        assert torch.allclose(samples[:, :, :8], x[:, :8].expand(2, 3, 8), atol=1e-6)
        assert not torch.allclose(samples[0, :, 8:], samples[1, :, 8:])  # the hidden ones are drawn


def test_restore_from_gaussian_noise_starts_at_the_matching_step():
    _, noise_op = _operators()
    model = _tiny_gaussian(num_steps=50)
    for sigma in (0.05, 0.2):
        t = model.noise_level_step(sigma)
        ratio = ((1 - model.alpha_bar) / model.alpha_bar).sqrt()
        assert (ratio[t - 1] - 2 * sigma).abs() == (ratio - 2 * sigma).abs().min()
    if noise_op is not None:
        op = noise_op(0.1)
        y = op(torch.full((2, 4), 0.5, dtype=torch.float64))
        assert model.restore(y, op, 3)[0].shape == (3, 2, 4)


class _GreyOracle(nn.Module):
    """The exact noise predictor when every image is mid-grey (x_0 = 0 in [-1, 1] units):
    eps = x_t / sqrt(1 - alpha_bar_t), so the predicted x_0 is 0."""

    def __init__(self, alpha_bar):
        super().__init__()
        self.register_buffer("alpha_bar", alpha_bar.float())

    def forward(self, x, t):
        return x / (1 - self.alpha_bar[t - 1]).sqrt().unsqueeze(-1)


def test_restore_through_ppgen_inverse_is_consistent_with_y():
    inverse = pytest.importorskip("ppgen.inverse")
    oracle = _GreyOracle(torch.cumprod(1 - linear_betas(8), 0))
    colour = GaussianDiffusion(48, shape=(3, 4, 4), num_steps=8, network=oracle)
    x = torch.rand(2, 48).mul(0.4).add(0.3).mul(255).round() / 255  # away from 0 and 1: no clipping
    grey = torch.full((2, 48), 0.5)
    for op in (inverse.Greyscale((3, 4, 4)), inverse.Downsample((3, 4, 4), factor=2),
               inverse.Inpaint(torch.rand(2, 48) < 0.5)):  # one mask per row
        for method in ("ancestral", "ddim"):
            result = inverse.restore(colour, op(x), op, num_samples=2, seed=0, method=method,
                                     steps=4 if method == "ddim" else None)
            assert result.samples.shape == (2, 2, 48) and result.method == "DDNM"
            # x_0 = project(0.5, y) exactly, up to the rounding of each pixel to the 8-bit grid
            expected = op.project(grey, op(x))
            assert (result.samples - expected).abs().max() <= 0.5 / 255 + 1e-6, (op, method)
            for sample in result.samples:
                assert (op(sample) - op(x)).abs().max() <= 0.5 / 255 + 1e-6


def test_ddnm_is_seeded_through_ppgen_inverse():
    inverse = pytest.importorskip("ppgen.inverse")
    model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=6, channels=8, multipliers=(1, 2), attention=False)
    x = torch.rand(2, 16).mul(255).round() / 255
    op = inverse.Downsample((1, 4, 4), factor=2)
    a = inverse.restore(model, op(x), op, num_samples=2, seed=3).samples
    assert torch.equal(a, inverse.restore(model, op(x), op, num_samples=2, seed=3).samples)
    assert not torch.equal(a[0], a[1])


def test_binary_replacement_inpainting_keeps_known_bits():
    inpaint, _ = _operators()
    model = BinaryDiffusion(6, num_steps=5, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    mask = torch.tensor([True, True, True, False, False, False])
    samples, _ = model.restore(x * mask, inpaint(mask), 3)
    assert samples.shape == (3, 4, 6) and torch.equal(samples[:, :, :3], x[:, :3].expand(3, 4, 3))


def test_restore_returns_its_method_or_none():
    """The declared contract: (samples, method name), or None for an operator a model has no method for."""
    inverse = pytest.importorskip("ppgen.inverse")
    gaussian = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=4, channels=8, multipliers=(1, 2), attention=False)
    binary = BinaryDiffusion(16, num_steps=4, hidden=(8,))
    x = torch.rand(2, 16).mul(255).round() / 255
    mask = torch.arange(16) < 8
    down, noisy_inpaint = inverse.Downsample((1, 4, 4), factor=2), inverse.Inpaint(mask, sigma=0.1)
    assert gaussian.restore(down(x), down, 2)[1] == "DDNM"
    noise = inverse.GaussianNoise(0.1, 16)
    assert gaussian.restore(noise(x), noise, 2)[1] == "diffusion from the noise level"
    assert gaussian.restore(noisy_inpaint(x), noisy_inpaint, 2) is None  # noisy, and not denoising
    bits = x.round()
    assert binary.restore(bits * mask, inverse.Inpaint(mask), 2)[1] == "replacement"
    assert binary.restore(down(bits), down, 2) is None
    assert binary.restore(noisy_inpaint(bits), noisy_inpaint, 2) is None
    assert not hasattr(gaussian, "restore_method") and not hasattr(binary, "restore_method")


@pytest.mark.parametrize("kind", ["gaussian", "binary"])
def test_float64_scores_and_samples_in_float64(kind):
    """``.double()`` on the default networks (the step embedding and the schedules follow it): each
    term of the bound in float64 equals the float32 model's at the same draw, up to float32 rounding
    (about 1e-7 relative per operation through a few layers: 1e-5, and 1e-5 nats for small KLs)."""
    if kind == "gaussian":
        model32 = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=6, channels=8, multipliers=(1, 2))
        for p in model32.parameters():  # a non-trivial network (the U-Net's head starts at zero)
            nn.init.normal_(p, std=0.05)
        x = torch.rand(5, 16, dtype=torch.float64).mul(255).round() / 255
    else:
        model32 = BinaryDiffusion(16, num_steps=6, hidden=(16,))
        x = torch.bernoulli(torch.full((5, 16), 0.4, dtype=torch.float64))
    model64 = copy.deepcopy(model32).double()
    assert all(b.dtype == torch.float64 for b in model64.buffers())
    x0 = model64.to_chain(x)
    generator = torch.Generator().manual_seed(0)
    for t in range(1, 7):
        steps = torch.full((5,), t)
        draw = model64.step_draw(x0, steps, generator)
        term64, term32 = model64.step_term(x0, steps, draw), model32.step_term(x0.float(), steps, draw.float())
        assert term64.dtype == torch.float64
        assert torch.allclose(term64, term32.double(), rtol=1e-5, atol=1e-5), t
    estimate = model64.estimate_log_likelihood(x)
    assert torch.equal(estimate.values, -model64.nll_bound(x)) and torch.isfinite(estimate.values).all()
    assert ppgen.log_likelihood(model64, x).method == "elbo"
    samples = model64.sample(2, seed=0)
    assert samples.dtype == torch.float64 and samples.shape == (2, 16)
    if kind == "gaussian":
        assert torch.equal(samples * 255, (samples * 255).round())  # on the 8-bit grid
        assert model64.sample(2, method="ddim", steps=2).dtype == torch.float64
    else:
        assert ((samples == 0) | (samples == 1)).all()


def test_unet_keywords_are_grouped_apart_from_the_model():
    model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=2, channels=8, multipliers=(1, 2), attention=False)
    assert model.network.embed_dim == 8 and len(model.network.down) == 2
    with pytest.raises(ValueError, match="network"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=2, network=_FixedNoise(), channels=8)
    with pytest.raises(TypeError, match="chanels"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=2, chanels=8)


def test_unet_fourier_features_feed_the_first_convolution():
    """The stem sees x, then sin(2^n pi x) and cos(2^n pi x) for each exponent n, channel blocks in that order."""
    model = GaussianDiffusion(16, shape=(1, 4, 4), num_steps=2, channels=8, multipliers=(1, 2), attention=False,
                              fourier=(7, 8))
    seen = []
    model.network.stem.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.rand(3, 16) * 2 - 1
    model.network(x, torch.tensor([1, 2, 1]))
    image = x.view(3, 1, 4, 4)
    expected = torch.cat([image, torch.sin(128 * math.pi * image), torch.sin(256 * math.pi * image),
                          torch.cos(128 * math.pi * image), torch.cos(256 * math.pi * image)], 1)
    assert model.network.stem.in_channels == 5 and torch.allclose(seen[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="fourier"):
        GaussianDiffusion(16, shape=(1, 4, 4), num_steps=2, channels=8, fourier=(7.5,))


# --- bad input ---------------------------------------------------------------------------------------------

def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=2, schedule=[0.1, 1.2])
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=2, schedule=[0.0, 0.1])
    with pytest.raises(ValueError, match="betas"):
        BinaryDiffusion(4, num_steps=2, schedule=[0.1, 0.7])  # a flip probability above 1/2
    with pytest.raises(ValueError, match="num_steps"):
        GaussianDiffusion(4, shape=(1, 2, 2), num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        BinaryDiffusion(4, num_steps=2.5)
    with pytest.raises(ValueError, match="schedule"):
        BinaryDiffusion(4, num_steps=3, schedule="quadratic")
    model = GaussianDiffusion(4, shape=(1, 2, 2), num_steps=5, channels=8, multipliers=(1,), attention=False)
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, method="ddim", steps=2.5)
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, method="ddim", steps=6)
    with pytest.raises(ValueError, match="255"):
        model.nll_bound(torch.full((2, 4), 200.0))
    with pytest.raises(ValueError, match="shape"):
        GaussianDiffusion(10)
