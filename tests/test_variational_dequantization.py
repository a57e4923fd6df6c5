"""Variational dequantization (Flow++): its bounds against P(x) by brute-force integration, learning, the protocol.

The oracle: for D = 2 pixels of K = 4 levels, P(x) = int_{[0,1)^2} p(x + u) du for all 16 x by the
midpoint rule on an m x m grid of each unit cell, in float64. The rule's error falls as 1/m^2, so
the error at m = 200 is about |P_200 - P_100| / 3 (Richardson); the tolerances below allow three
times that, |P_200 - P_100|.
"""

import math

import pytest
import pyro.distributions as dist
import torch
from zuko.distributions import DiagNormal, NormalizingFlow
from zuko.transforms import AffineTransform

import ppgen
from ppgen.models.flows import MAF, RealNVP, VariationalDequantization
from ppgen.models.flows.variational import CellNoise

K = 4
LEVELS = torch.cartesian_prod(torch.arange(K), torch.arange(K))  # all 16 images (16, 2)


def cell_grid(m: int) -> torch.Tensor:
    """The midpoints of an m x m grid on the unit cell, (m^2, 2)."""
    c = (torch.arange(m) + 0.5) / m
    return torch.cartesian_prod(c, c)


@torch.no_grad()
def brute_force(log_density, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the integral of exp(log_density(x, u)) over each row's unit cell, and the cell mean of
    log_density (the uniform bound E_u log p(x + u)), by the midpoint rule: two (N,) tensors."""
    u = cell_grid(m)
    log_p = log_density(x[:, None].expand(-1, len(u), -1), u.expand(len(x), -1, -1))  # (N, m^2)
    return torch.logsumexp(log_p, 1) - math.log(len(u)), log_p.mean(1)


def flow_density(flow):
    return lambda x, u: flow.log_prob((x + u).reshape(-1, 2)).reshape(x.shape[:2])


def trained_vd(steps: int = 1000) -> VariationalDequantization:
    """A fixed MAF on [0, 4)^2, moved well off its initialisation (cell masses from e^-13 to 0.2), with a
    dequantizer q(u | x) trained by Adam on the ELBO of all 16 images, the flow left as it is. The steps:
    where p is nearly flat in a cell, log P(x) is only 0.01 nats above the uniform bound, and q must come
    that close to p(u | x) to beat it (after 400 steps one such cell was 3 s.e. below, after 1000 all above)."""
    flow = MAF(2, transforms=2, hidden=16, num_levels=K)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = VariationalDequantization(flow, transforms=2, hidden=32)
    program = ppgen.Program(model)
    optimizer = torch.optim.Adam(model.dequantizer.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps // 2], gamma=0.1)
    x = LEVELS.double()
    for _ in range(steps):
        with program.param_scope():
            loss = -program.log_weights(x, num_particles=16).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


def test_bounds_against_brute_force(float64):
    model = trained_vd()
    x = LEVELS.double()
    log_P, uniform = brute_force(flow_density(model.flow), x, 200)
    log_P100, uniform100 = brute_force(flow_density(model.flow), x, 100)
    grid_tol = (log_P - log_P100).abs() + (uniform - uniform100).abs()  # 3x the Richardson estimate, per x

    # the cell masses are a distribution over the 16 images (the logit box's alpha = 1e-6 loses < 1e-6)
    mass_tol = (log_P.exp() - log_P100.exp()).abs().sum().item() + 1e-6
    assert abs(log_P.exp().sum().item() - 1) < mass_tol

    # per image: uniform bound <= variational bound (the ELBO, S draws of the trained q) <= log P(x)
    S = 4000
    with torch.no_grad():
        log_w = ppgen.Program(model).log_weights(x, num_particles=S)  # (S, 16)
    elbo, se = log_w.mean(0), log_w.std(0) / math.sqrt(S)
    assert (uniform <= elbo + 4 * se + grid_tol).all(), (uniform - elbo).max()
    assert (elbo <= log_P + 4 * se + grid_tol).all(), (elbo - log_P).max()
    # ... and tighter on the whole: the mean gain over the 16 images exceeds 4 of its standard errors
    gain, gain_se = (elbo - uniform).mean(), se.pow(2).sum().sqrt() / len(x)
    assert gain > 4 * gain_se + grid_tol.mean() and gain > 1.0, (gain, gain_se)  # ~7.9 nats: skewed cells

    # IWAE with K = 4000 importance samples of q: within 4 s.e. (+ grid) of log P(x) on average, and
    # closer than the ELBO (whose gap, KL(q || p(u | x)), averages ~0.03 nats here)
    result = ppgen.log_likelihood(model, x, method="iwae", num_samples=S, seed=1)
    assert (result.method, result.kind, result.errs) == ("iwae", "bound", "low")
    iwae_gap = abs(result.mean - log_P.mean().item())
    assert iwae_gap < 4 * result.stderr + grid_tol.mean().item(), (iwae_gap, result.stderr)
    assert iwae_gap < 0.5 * (log_P - elbo).mean().item()


def test_dequantizer_is_a_density_on_the_cell(float64):
    """q(u | x) integrates to 1 over the unit cell for every x (Phi's Jacobian counted), and the
    log-density kept beside a draw equals the one recomputed through z = Phi^-1(u).

    q(u | x) is singular (integrably) or vanishes at the cell's faces unless z's spread is exactly 1,
    so the midpoint rule converges only as 1/m here: its error at m = 200 is about |I_200 - I_100|,
    and the tolerance allows three times that (a wrong Jacobian is off by O(1))."""
    model = trained_vd(steps=100)
    x = LEVELS.double()

    def log_q(rows, u):  # rows (N, M, 2) with M grid points each: q evaluated with the batch (N,) as built
        return model.noise(rows[:, 0]).log_prob(u.transpose(0, 1).contiguous()).transpose(0, 1)

    log_mass, _ = brute_force(log_q, x, 200)
    log_mass100, _ = brute_force(log_q, x, 100)
    assert (log_mass.abs() < 3 * (log_mass - log_mass100).abs() + 1e-6).all(), log_mass

    with torch.no_grad():
        q = model.noise(x)
        u = q.rsample((8,))
        assert isinstance(q, CellNoise) and u.shape == (8, 16, 2)
        torch.testing.assert_close(q.log_prob(u), q.log_prob(u.clone()), rtol=1e-8, atol=1e-8)


def shifted_noise(shift: float, dtype=torch.float32) -> CellNoise:
    """u = Phi(z), z ~ N(shift, I) for 5 rows of 3 pixels: log q(u) = sum_i (shift z_i - shift^2 / 2)."""
    base = DiagNormal(torch.zeros(5, 3, dtype=dtype), torch.ones(5, 3, dtype=dtype))
    return CellNoise(NormalizingFlow(AffineTransform(torch.tensor(-shift, dtype=dtype), torch.tensor(1.0, dtype=dtype)),
                                     base))


def test_cell_noise_closed_form_and_saturation():
    """Against the closed form of a shifted normal pushed through Phi (in float64, scored through z = Phi^-1(u));
    and where Phi saturates (z ~ 10 in float32), draws stay in [0, 1) with a finite, kept log q, so the
    model's uniform density of u is 1 there."""
    q = shifted_noise(2.0, torch.float64)
    u = q.rsample((4,))
    z = torch.special.ndtri(u)
    torch.testing.assert_close(q.log_prob(u.clone()), (2.0 * z - 2.0).sum(-1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q.log_prob(u), (2.0 * z - 2.0).sum(-1), rtol=1e-6, atol=1e-6)

    saturated = shifted_noise(10.0)
    u = saturated.rsample((4,))
    assert (u < 1).all() and torch.isfinite(saturated.log_prob(u)).all()
    # sum_i (10 z_i - 50) with z_i = 10 + eps_i: 150 + 10 sum_i eps_i, whose s.d. is 10 sqrt(3)
    assert ((saturated.log_prob(u) - 150).abs() < 4 * 10 * 3 ** 0.5).all()
    assert (dist.Uniform(0.0, 1.0).log_prob(u) == 0).all()


def test_samples_are_levels_with_the_cell_masses(float64):
    model = trained_vd(steps=1)
    log_P, _ = brute_force(flow_density(model.flow), LEVELS.double(), 200)
    n = 4000
    samples = model.sample(n)
    assert samples.shape == (n, 2) and torch.equal(samples, samples.round())
    assert samples.min() >= 0 and samples.max() <= K - 1
    freq = torch.stack([(samples == level).all(1).double().mean() for level in LEVELS.double()])
    P = log_P.exp()
    assert ((freq - P).abs() <= 4 * (P * (1 - P) / n).sqrt() + 1e-3).all(), (freq - P).abs().max()


def test_fit_learns_a_tighter_bound_than_uniform():
    """After a short fit on a tiny data set (D = 4, K = 8), the ELBO of the variational dequantizer
    beats E_u log p(x + u) with uniform u on the same flow by more than 4 standard errors (each row's
    draws are the noise; the rows themselves are fixed)."""
    n, D, levels = 256, 4, 8
    x = (levels * torch.sigmoid(torch.randn(n, 2) @ torch.randn(2, D))).floor().clamp(max=levels - 1)
    model = VariationalDequantization(MAF(D, transforms=3, hidden=32, num_levels=levels), hidden=32)
    ppgen.fit(model, x, epochs=20, batch_size=64, lr=3e-3, progress=False)
    S = 200
    with torch.no_grad():
        variational = ppgen.Program(model).log_weights(x, num_particles=S)  # (S, n)
        rows = x.expand(S, n, D)
        uniform = model.flow.log_prob((rows + torch.rand_like(rows)).reshape(-1, D)).reshape(S, n)
    gain = variational.mean() - uniform.mean()
    se = ((variational.var(0) + uniform.var(0)).sum() / S).sqrt() / n
    assert gain > 4 * se, (gain, se)


def test_fit_checks_and_refusals():
    """fit's first-batch checks pass (with particles, on an image flow), log_likelihood labels a bound;
    non-integer rows and flows of real-valued data are refused."""
    flow = RealNVP(16, shape=(1, 4, 4), num_scales=1, hidden=8, blocks=1, num_levels=K)
    model = VariationalDequantization(flow, hidden=16)
    x = torch.randint(0, K, (32, 16)).float()
    result = ppgen.fit(model, x, epochs=1, batch_size=16, num_particles=2, progress=False, convergence_tol=None)
    assert result.check.latent == ["u"] and result.check.observed == ["x"]
    assert any("particle" in line for line in result.check.passed)
    scored = ppgen.log_likelihood(model, x[:4], num_samples=4)  # "auto": no exact log_prob, so IWAE, a bound
    assert (scored.method, scored.kind, scored.exact) == ("iwae", "bound", False) and scored.elbo <= scored.mean
    with pytest.raises(NotImplementedError, match="no exact likelihood"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"integer pixel levels 0\.\.3 .* found 1\.5 at row 2, column 5"):
        ppgen.fit(model, torch.where(torch.arange(32)[:, None] * 16 + torch.arange(16) == 37, 1.5, x),
                  epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"pixel values in \[0, 3\]"):
        model.check_data(x + 4)
    with pytest.raises(TypeError, match="pixel Flow"):
        VariationalDequantization(MAF(2, transforms=1, hidden=4, num_levels=None))
