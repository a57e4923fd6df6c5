"""Inverse problems: operators against their definitions, restore against brute-force posteriors.

Sampling tests compare the restored pixels of many independent rows (one restoration each) with
p(x_missing | x_obs) computed by enumeration, through a chi-square goodness-of-fit test at
significance 1e-4 (the statistic of M independent draws over B bins is chi-square with B - 1
degrees of freedom). Each such test also checks that it has power: the same samples must be
rejected against a wrong reference (the unconditional marginal), so it can fail.
"""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ppgen.data import load_dataset
from ppgen.data.colour import PALETTE, coloured_digits, draw_colours, paint
from ppgen.inverse import (ColourRegression, Downsample, GaussianNoise, Greyscale, Inpaint, PaletteColouriser,
                           RestoreResult, fit_colour_regression, image_shape_of, inpaint_mask, make_operator, restore,
                           restore_grid, restore_summary, sample_diversity)
from ppgen.models import FVSBN, PPCA, VAE, BernoulliMixture, FactorAnalysis, FullJointTable, IndependentBernoulli

ALPHA = 1e-4  # significance of the goodness-of-fit tests


def operators(generator):
    mask = torch.rand(5, 48, generator=generator) < 0.5
    return [Inpaint(mask), Inpaint(mask[0]), Greyscale((3, 4, 4)), Downsample((3, 4, 4), 2),
            Downsample((1, 6, 6), 3), GaussianNoise(0.1, 48)]


@pytest.mark.parametrize("index", range(6))
def test_operator_pseudo_inverse_and_projection(index):
    generator = torch.Generator().manual_seed(index)
    op = operators(generator)[index]
    x, x2 = torch.rand(2, 5, op.in_dim, generator=generator, dtype=torch.float64)
    y = op.apply(x)  # the noiseless measurement, in the range of A
    if op.sigma == 0:
        torch.testing.assert_close(op(x), y)
    assert torch.allclose(op.apply(op.pseudo_inverse(y)), y)  # A A^+ y = y
    projected = op.project(x2, y)
    assert torch.allclose(op.apply(projected), y)  # consistent with y
    assert torch.allclose(op.project(projected, y), projected)  # idempotent
    # the null-space part of x2 is kept: projecting x itself gives x back
    assert torch.allclose(op.project(x, y), x)
    # A^+ is the Moore-Penrose pseudo-inverse: compare with torch.linalg.pinv of A's matrix
    if not isinstance(op, Inpaint) or op.mask.dim() == 1:
        matrix = op.apply(torch.eye(op.in_dim, dtype=torch.float64)).T  # (out, in)
        torch.testing.assert_close(op.pseudo_inverse(y), y @ torch.linalg.pinv(matrix).T)


def test_downsample_matches_avg_pool_and_greyscale_the_channel_mean():
    x = torch.rand(4, 3 * 28 * 28, generator=torch.Generator().manual_seed(0))
    images = x.reshape(4, 3, 28, 28)
    expected = F.avg_pool2d(images, 2).reshape(4, -1)
    torch.testing.assert_close(Downsample((3, 28, 28), 2)(x), expected)
    torch.testing.assert_close(Greyscale((3, 28, 28))(x), images.mean(1).reshape(4, -1))
    up = Downsample((3, 28, 28), 2).pseudo_inverse(expected).reshape(4, 3, 28, 28)
    torch.testing.assert_close(up, F.interpolate(expected.reshape(4, 3, 14, 14), scale_factor=2, mode="nearest"))


def test_noise_is_seeded_and_has_its_sigma():
    op = GaussianNoise(0.3)
    x = torch.zeros(200, 500)
    y1 = op(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y1, op(x, generator=torch.Generator().manual_seed(1)))
    # the sample std of 1e5 normals is within 1% of sigma (its relative s.e. is 1/sqrt(2e5) = 0.2%)
    assert abs(float(y1.std()) - 0.3) < 0.003
    noisy_inpaint = Inpaint(torch.arange(500) < 100, sigma=0.3)
    y = noisy_inpaint(x, generator=torch.Generator().manual_seed(1))
    assert (y[:, 100:] == 0).all() and abs(float(y[:, :100].std()) - 0.3) < 0.01


def test_coloured_digits_are_the_formula_applied_to_the_grey_digits():
    x, labels = coloured_digits("valid", seed=3)
    grey, grey_labels = load_dataset("digits_grey", "valid")
    assert torch.equal(labels, grey_labels) and x.shape == (1000, 3 * 784)
    g = (255 * grey / grey.amax(1, keepdim=True)).round() / 255
    fg, bg = draw_colours(1000, seed=3 * 3 + 1)
    torch.testing.assert_close(x, paint(g, PALETTE[fg], PALETTE[bg]))
    # channel by channel, by hand, for one row
    n = 7
    for c in range(3):
        expected = g[n] * PALETTE[fg[n], c] + (1 - g[n]) * PALETTE[bg[n], c]
        torch.testing.assert_close(x[n, c * 784:(c + 1) * 784], expected)
    # greyscale: y = g mean(fg) + (1 - g) mean(bg)
    expected = g * PALETTE[fg].mean(1, keepdim=True) + (1 - g) * PALETTE[bg].mean(1, keepdim=True)
    torch.testing.assert_close(Greyscale()(x), expected)
    # deterministic, distinct per split and seed, and foreground and background differ in grey level
    assert torch.equal(coloured_digits("valid", seed=3).x, x)
    assert not torch.equal(coloured_digits("valid", seed=0).x, x)
    assert (PALETTE[fg].mean(1) != PALETTE[bg].mean(1)).all()
    # each colour pair is drawn about uniformly: 8 colours, 8 * 8 - (1 + 1 + 9 + 9) = 44 pairs
    assert len(set(zip(fg.tolist(), bg.tolist()))) == 44
    # every value is on the 8-bit grid, as the Gaussian diffusion model's discretised decoder expects
    assert torch.equal((x * 255).round() / 255, x)


# --------------------------------------------------------------------------- restore: brute force

def all_binary(dim):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)))


def conditional_table(log_joint, observed_mask, x_obs):
    """p(x_miss | x_obs) over the 2^m completions (in itertools.product order of the missing pixels)."""
    xs = all_binary(len(observed_mask))
    keep = (xs[:, observed_mask] == x_obs[observed_mask]).all(1)
    log_p = log_joint(xs)[keep]
    return torch.softmax(log_p.double(), 0)


def bin_index(samples, missing):
    """Index of each sample's missing pixels in itertools.product order."""
    bits = samples[:, missing].long()
    powers = 2 ** torch.arange(bits.shape[1] - 1, -1, -1)
    return (bits * powers).sum(1)


def chi_square_p(counts, probs):
    expected = probs * counts.sum()
    return float(stats.chi2.sf(float(((counts - expected) ** 2 / expected).sum()), len(probs) - 1))


def check_matches(samples, missing, reference, wrong):
    counts = torch.bincount(bin_index(samples, missing), minlength=len(reference)).double()
    assert chi_square_p(counts, reference) > ALPHA, (counts / counts.sum(), reference)
    # power: the wrong reference differs enough to be rejected by the same samples
    assert chi_square_p(counts, wrong) < ALPHA


def strong_fvsbn(dim):
    model = FVSBN(dim)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.weight.copy_(3 * torch.randn(model.weight.shape, generator=generator))
        model.bias.copy_(torch.randn(dim, generator=generator))
    return model


@pytest.mark.parametrize("observed_first", [True, False])
def test_autoregressive_inpainting_matches_enumeration(observed_first):
    model = strong_fvsbn(6)
    observed = torch.tensor([True, True, True, False, False, False])
    if not observed_first:
        observed = observed.flip(0)  # observed pixels come last in the ordering: importance resampling
    missing = ~observed
    x_obs = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    op = Inpaint(observed)
    rows = 3000  # independent rows, one restoration each
    y = op(x_obs.expand(rows, -1).clone())
    result = restore(model, y, op, 1, seed=0, **({} if observed_first else {"num_particles": 200}))
    assert result.method == ("exact conditionals" if observed_first else "sequential importance resampling")
    samples = result.samples[0]
    assert (samples[:, observed] == x_obs[observed]).all()
    with torch.no_grad():
        reference = conditional_table(model.log_prob, observed, x_obs)
        marginal = torch.softmax(model.log_prob(all_binary(6)).double(), 0).reshape(
            *[2] * 6).sum(dim=tuple(int(i) for i in np.flatnonzero(observed.numpy()))).reshape(-1)
    check_matches(samples, missing, reference, marginal)
    # same seed, same samples
    assert torch.equal(restore(model, y[:20], op, 2, seed=5).samples, restore(model, y[:20], op, 2, seed=5).samples)


@pytest.mark.parametrize("k", [1, 3])
def test_factorised_and_mixture_inpainting_match_enumeration(k):
    generator = torch.Generator().manual_seed(k)
    if k == 1:
        model = IndependentBernoulli(6)
        with torch.no_grad():
            model.logits.copy_(torch.randn(6, generator=generator))
    else:
        model = BernoulliMixture(6, k)
        with torch.no_grad():
            model.logits.copy_(3 * torch.randn(k, 6, generator=generator))
            model.weight_logits.copy_(torch.randn(k, generator=generator))
    observed = torch.tensor([True, False, True, True, False, False])
    x_obs = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    op = Inpaint(observed)
    result = restore(model, op(x_obs.expand(3000, -1).clone()), op, 1, seed=0)
    assert result.method == "exact conditionals"
    with torch.no_grad():
        reference = conditional_table(model.log_prob, observed, x_obs)
        marginal = torch.softmax(model.log_prob(all_binary(6)).double(), 0).reshape(2, 2, 2, 2, 2, 2).sum(
            dim=(0, 2, 3)).reshape(-1)
    if k == 1:  # independent pixels: the conditional is the marginal, so there is no wrong reference to reject
        counts = torch.bincount(bin_index(result.samples[0], ~observed), minlength=8).double()
        assert chi_square_p(counts, reference) > ALPHA
        torch.testing.assert_close(reference, marginal)
    else:
        check_matches(result.samples[0], ~observed, reference, marginal)


def random_ppca(dim=8, latent=3, kind=PPCA):
    model = kind(dim, latent)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(dim, latent, generator=generator) * 0.5)
        model.loc.copy_(torch.rand(dim, generator=generator))
    return model


def test_linear_gaussian_inpainting_is_the_schur_complement():
    model = random_ppca(kind=FactorAnalysis)
    observed = torch.tensor([True, False, True, True, False, True, False, False])
    op = Inpaint(observed)
    truth = model.sample(2)
    result = restore(model, op(truth), op, 20000, seed=0)
    assert result.method == "exact Gaussian posterior"
    with torch.no_grad():
        cov = (model.weight @ model.weight.T + torch.diag(model.noise_variance())).double()
        mu = model.loc.double()
    o, m = observed, ~observed
    gain = cov[m][:, o] @ torch.linalg.inv(cov[o][:, o])
    mean = mu[m] + (truth.double()[:, o] - mu[o]) @ gain.T  # (2, 4)
    post = cov[m][:, m] - gain @ cov[o][:, m]
    samples = result.samples.double()
    assert (samples[:, :, o] - truth[:, o]).abs().max() < 1e-5  # observed pixels kept
    # 20000 draws: the mean's s.e. is sqrt(var / 20000); 5 s.e. per coordinate
    assert ((samples[:, :, m].mean(0) - mean).abs() < 5 * (post.diagonal() / 20000).sqrt()).all()
    # the covariance's s.e. is about sqrt((s_ii s_jj + s_ij^2) / 20000) <= 0.011 * max s_ii here; allow 5 s.e.
    for row in range(2):
        empirical = torch.cov(samples[:, row][:, m].T)
        assert (empirical - post).abs().max() < 5 * 0.011 * post.diagonal().max()


@pytest.mark.parametrize("op", [Greyscale((2, 2, 2), sigma=0.3), Downsample((2, 2, 2), 2, sigma=0.1)])
def test_linear_gaussian_restoration_matches_importance_sampling(op):
    """A second algorithm: weight 10^6 prior draws by the Gaussian likelihood of y."""
    model = random_ppca()
    with torch.no_grad():
        cov = (model.weight @ model.weight.T + torch.diag(model.noise_variance())).double()
        prior = torch.distributions.MultivariateNormal(model.loc.double(), cov)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        x = prior.sample((10**6,))
        y = op(prior.sample((1,)))  # the noise on y is part of the story: y = A x0 + sigma eps
    samples = 50000
    result = restore(model, y.float(), op, samples, seed=0)
    log_w = -((op.apply(x) - y) ** 2).sum(1) / (2 * op.sigma**2)
    w = torch.softmax(log_w, 0)
    ess = float(1 / (w**2).sum())
    assert ess > 10000
    mean = (w[:, None] * x).sum(0)
    var = (w[:, None] * (x - mean) ** 2).sum(0)
    assert (var < 0.8 * cov.diagonal()).all()  # y is informative: the posterior is not the prior
    # both estimates are noisy: the means' s.e. are sqrt(var / n) (n = samples, ESS); 5 combined s.e.
    assert ((result.mean[0].double() - mean).abs() < 5 * (var / samples + var / ess).sqrt()).all()
    # a variance estimate's relative s.e. is about sqrt(2 / n); 5 combined s.e. (6-7% here)
    rtol = 5 * math.sqrt(2 / samples + 2 / ess)
    assert ((result.variance[0].double() / var - 1).abs() < rtol).all()


def tiny_vae(dim=6, z_dim=2):
    model = VAE(dim, z_dim=z_dim, hidden=8, seed=2)
    with torch.no_grad():  # a decoder with strong pixel correlations, so conditioning matters
        for layer in model.decoder:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(3)
    return model


def vae_log_joint_by_quadrature(model, xs, points):
    """log p(x) = log E_{z ~ N(0, I)} p(x | z) by the Gauss-Hermite product rule (``points`` per axis)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)  # weight function exp(-z^2 / 2)
    weights = weights / math.sqrt(2 * math.pi)
    grid = torch.tensor(np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2), dtype=torch.float32)
    log_w = torch.tensor(np.log(np.outer(weights, weights)).reshape(-1))  # (G,)
    with torch.no_grad():
        log_lik = model.likelihood_dist(grid[:, None, :]).log_prob(xs[None]).double()  # (G, 2^D)
    return torch.logsumexp(log_w[:, None] + log_lik, 0)


@pytest.mark.parametrize("options", [{"sampler": "importance", "proposal": "encoder", "num_particles": 300},
                                     {"sampler": "importance", "proposal": "prior", "num_particles": 300},
                                     {"sampler": "smc", "num_particles": 64, "num_moves": 3}])
def test_vae_inpainting_matches_quadrature(options):
    model = tiny_vae()
    xs = all_binary(6)
    observed = torch.tensor([True, False, True, False, True, False])
    x_obs = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    all_pixels = torch.ones(6, dtype=torch.bool)
    tables = {}
    for points in (60, 90):
        log_joint = vae_log_joint_by_quadrature(model, xs, points)
        tables[points] = conditional_table(lambda x: log_joint[bin_index(x, all_pixels)], observed, x_obs)
    reference = tables[90]
    # the quadrature has converged well enough (the ReLU decoder's kinks slow Gauss-Hermite down):
    # 60 and 90 points per axis agree within 1e-3, a fifth of the s.e. sqrt(p (1 - p) / 3000) >= 0.005
    # of the sampled frequencies of bins with p >= 0.1
    assert torch.allclose(tables[60], reference, atol=1e-3)
    marginal = log_joint.exp().reshape(2, 2, 2, 2, 2, 2).sum(dim=(0, 2, 4)).reshape(-1)
    op = Inpaint(observed)
    rows = 3000
    result = restore(model, op(x_obs.expand(rows, -1).clone()), op, 1, seed=0, **options)
    if options.get("sampler") == "smc":
        assert result.method == "sequential Monte Carlo (tempered)" and result.ess is None
        assert result.info["stages"] >= 1 and 0.05 < result.info["acceptance"] < 0.95
        # the evidence estimate Z_n is unbiased for p(y_obs): the mean over 3000 independent rows
        # is within 4 standard errors of the quadrature value
        log_p_obs = torch.logsumexp(log_joint[(all_binary(6)[:, observed] == x_obs[observed]).all(1)], 0)
        ratio = (result.info["log_evidence"] - log_p_obs).exp()
        assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(rows)
    else:
        assert result.method == "importance resampling"
        # ESS per row lies in [1, K]; on 3 observed pixels most particles count
        assert result.ess.shape == (rows,) and (result.ess >= 1).all() and (result.ess <= 300 + 1e-3).all()
        assert float(result.ess.median()) > 30
    check_matches(result.samples[0], ~observed, reference, marginal)


def test_restore_result_summaries():
    model = strong_fvsbn(6)
    op = Inpaint(torch.tensor([True, True, False, False, False, False]))
    y = op(torch.tensor([[1.0, 1, 0, 0, 0, 0], [0.0, 1, 0, 0, 0, 0]]))
    result = restore(model, y, op, 50, seed=0)
    assert isinstance(result, RestoreResult) and result.samples.shape == (50, 2, 6)
    torch.testing.assert_close(result.mean, result.samples.mean(0))
    torch.testing.assert_close(result.variance, result.samples.var(0))
    assert (result.variance[:, :2] == 0).all() and (result.variance[:, 2:] > 0).any()
    assert "exact conditionals" in repr(result)


# --------------------------------------------------------------------------- colourisation

def test_colourisation_posterior_variance_where_colour_is_ambiguous():
    x, _ = coloured_digits("test")
    fg, bg = draw_colours(2000, seed=2)
    levels = PALETTE.mean(1)
    ambiguous = torch.tensor([abs(3 * float(m) - round(3 * float(m))) < 1e-6 and 0 < float(m) < 1 for m in levels])
    # one row with an ambiguous foreground on an unambiguous background, one the other way round
    rows = [int((ambiguous[fg] & ~ambiguous[bg]).nonzero()[0]), int((~ambiguous[fg] & ambiguous[bg]).nonzero()[0])]
    truth = x[rows]
    y = Greyscale()(truth)
    colouriser = PaletteColouriser()
    result = restore(colouriser, y, Greyscale(), 2000, seed=0)
    assert result.method == colouriser.restore_method
    mean, var = colouriser.posterior_mean_variance(y)
    # every draw is consistent with the measurement, and the truth is one of the colourings
    torch.testing.assert_close(Greyscale()(result.samples.reshape(-1, 3 * 784)), y.repeat(2000, 1))
    assert any(torch.allclose(s, truth[0], atol=1e-6) for s in result.samples[:, 0])
    # closed form against 2000 draws: a pixel channel is a uniform draw over 3 values in [0, 1],
    # s.e. of its mean <= 0.5 / sqrt(2000) = 0.011 and of its variance < 0.006: 0.05 is > 4 s.e.
    torch.testing.assert_close(result.mean, mean, atol=0.05, rtol=0)
    torch.testing.assert_close(result.variance, var, atol=0.03, rtol=0)
    g = load_dataset("digits_grey", "test").x[rows]
    g = (255 * g / g.amax(1, keepdim=True)).round() / 255
    digit, background = (g == 1), (g == 0)  # (2, 784)
    per_pixel = result.variance.reshape(2, 3, 784).sum(1)
    # row 0: the foreground hue is ambiguous (variance 2/9 per channel), the background is not
    assert (per_pixel[0][digit[0]] > 0.4).all() and (per_pixel[0][background[0]] == 0).all()
    assert (per_pixel[1][background[1]] > 0.4).all() and (per_pixel[1][digit[1]] == 0).all()
    # by the palette's symmetry the posterior mean is the grey level in every channel
    torch.testing.assert_close(mean, Greyscale().pseudo_inverse(y))


def test_regression_baseline_is_the_muddy_mean_with_no_diversity():
    x_train, _ = coloured_digits("valid")
    net = fit_colour_regression(x_train[:400], epochs=8, hidden=8, seed=0, lr=1e-2)
    assert isinstance(net, ColourRegression)
    truth = coloured_digits("test").x[:200]
    y = Greyscale()(truth)
    regression = restore(net, y, Greyscale(), 8)
    exact = restore(PaletteColouriser(), y, Greyscale(), 8, seed=0)
    assert sample_diversity(regression.samples) == 0.0
    assert sample_diversity(exact.samples) > 0.1
    mse = lambda pred: float(((pred - truth) ** 2).mean())  # noqa: E731
    posterior_mean = PaletteColouriser().posterior_mean_variance(y)[0]
    # the regression learns the conditional mean (up to 20% extra error after a few seconds of
    # training), which beats any single posterior draw: E|s - c|^2 = 2 Var > Var = E|E[c|y] - c|^2
    assert mse(regression.mean) < 1.2 * mse(posterior_mean)
    assert mse(regression.mean) < 0.8 * np.mean([mse(s) for s in exact.samples])


def test_restore_grid_draws_a_figure(tmp_path):
    truth = coloured_digits("test").x[:3]
    y = Greyscale()(truth)
    result = restore(PaletteColouriser(), y, Greyscale(), 4)
    fig = restore_grid(None, result, truth, (3, 28, 28), path=tmp_path / "grid.png")
    assert len(fig.axes) == 3 * (2 + 4 + 2) and (tmp_path / "grid.png").stat().st_size > 0
    model = strong_fvsbn(6)
    op = Inpaint(torch.tensor([True, True, True, False, False, False]))
    fig = restore_grid(None, restore(model, op(torch.ones(2, 6)), op, 3), shape=(1, 2, 3))
    assert len(fig.axes) == 2 * (1 + 3 + 2)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, match", [
    (lambda: Inpaint(torch.ones(2, 3, 4, dtype=torch.bool)), "mask must have shape"),
    (lambda: Inpaint(torch.ones(5, dtype=torch.bool)), "hides nothing"),
    (lambda: Inpaint(torch.zeros(5, dtype=torch.bool)), "hides everything"),
    (lambda: GaussianNoise(0.0), "sigma must be a positive"),
    (lambda: GaussianNoise(-1.0), "sigma must be a positive"),
    (lambda: Greyscale((3, 28, 28), sigma=-0.1), "sigma must be"),
    (lambda: Greyscale((1, 28, 28)), "at least 2 channels"),
    (lambda: Greyscale((3, 28)), "shape must be"),
    (lambda: Downsample((1, 28, 28), factor=3), "must divide the height 28"),
    (lambda: Downsample((1, 28, 28), factor=1), "factor must be an int >= 2"),
])
def test_bad_operator_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_widths_raise():
    x = torch.rand(2, 100)
    with pytest.raises(ValueError, match=r"x has 100 columns, but Greyscale\(shape=\(3, 28, 28\)\) takes x of width 2352"
                       ):
        Greyscale()(x)
    with pytest.raises(ValueError, match="y has 100 columns.*width 196"):
        Downsample().pseudo_inverse(x)
    with pytest.raises(ValueError, match="x has 100 columns.*width 784"):
        Downsample().project(x, torch.rand(2, 196))
    with pytest.raises(ValueError, match="x has 2 rows, but the mask .* has 3"):
        Inpaint(torch.rand(3, 100) < 0.5)(x)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        Inpaint(torch.ones(5))
    with pytest.raises(ValueError, match="y has 100 columns.*width 6"):
        restore(strong_fvsbn(6), x, Inpaint(torch.arange(6) < 3))


def test_restore_refuses_what_a_model_cannot_do():
    op = Greyscale((3, 2, 2))
    with pytest.raises(ValueError, match=r"VAE cannot restore for task 'colourise'; models that can: .*diffusion"):
        restore(VAE(12, z_dim=2, hidden=4), torch.rand(3, 4), op)
    with pytest.raises(ValueError, match="FullJointTable cannot restore for task 'inpaint'"):
        restore(FullJointTable(6), torch.zeros(2, 6), Inpaint(torch.arange(6) < 3))
    with pytest.raises(ValueError, match="IndependentBernoulli cannot restore for task 'upsample'"):
        restore(IndependentBernoulli(16), torch.zeros(2, 4), Downsample((1, 4, 4), 2))
    with pytest.raises(ValueError, match=r"Greyscale\(shape=\(3, 2, 2\)\) measures rows of width 12, but PPCA's rows "
                                         r"have x_dim=8 values"):
        restore(random_ppca(), torch.zeros(2, 4), Greyscale((3, 2, 2)))
    with pytest.raises(ValueError, match="needs a noiseless Inpaint"):
        restore(strong_fvsbn(6), torch.zeros(2, 6), Inpaint(torch.arange(6) < 3, sigma=0.1))
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        restore(tiny_vae(), torch.full((2, 6), 0.5), Inpaint(torch.arange(6) < 3))
    with pytest.raises(TypeError, match="operator must be"):
        restore(strong_fvsbn(6), torch.zeros(2, 6), "inpaint")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        restore(strong_fvsbn(6), torch.zeros(2, 6), Inpaint(torch.arange(6) < 3), 0)
    with pytest.raises(TypeError, match=r"restore got unknown option\(s\) 'temperature': inpainting takes num_particles"):
        restore(strong_fvsbn(6), torch.zeros(2, 6), Inpaint(torch.arange(6) < 3), temperature=2)
    with pytest.raises(ValueError, match="cannot restore for Downsample"):
        restore(PaletteColouriser(), torch.zeros(2, 196), Downsample())
    with pytest.raises(ValueError, match="no palette colour has"):
        restore(PaletteColouriser(), torch.full((2, 784), 0.2).index_fill(1, torch.tensor([5]), 0.9), Greyscale())

    class Broken:
        def restore(self, y, operator, num_samples):
            return torch.zeros(num_samples, len(y), 5)

    with pytest.raises(ValueError, match=r"Broken.restore must return samples of shape \(4, 2, 6\)"):
        restore(Broken(), torch.zeros(2, 6), Inpaint(torch.arange(6) < 3), 4)


# --------------------------------------------------------------------------- helpers for the CLI

def test_masks_operators_and_shapes():
    bottom = inpaint_mask("bottom", (1, 28, 28)).reshape(28, 28)
    assert bottom[:14].all() and not bottom[14:].any()
    assert not inpaint_mask("top").reshape(28, 28)[:14].any()
    right = inpaint_mask("right", (3, 4, 4)).reshape(3, 4, 4)
    assert right[:, :, :2].all() and not right[:, :, 2:].any()
    centre = inpaint_mask("centre").reshape(28, 28)
    assert (~centre).sum() == 14 * 14 and not centre[7:21, 7:21].any()
    random = inpaint_mask("random", seed=1)
    assert torch.equal(random, inpaint_mask("random", seed=1)) and 300 < int(random.sum()) < 484  # Binomial(784, 1/2)
    with pytest.raises(ValueError, match="mask must be one of"):
        inpaint_mask("left")
    for task, kind in (("inpaint", Inpaint), ("colourise", Greyscale), ("upsample", Downsample),
                       ("denoise", GaussianNoise)):
        op = make_operator(task, (3, 28, 28))
        assert isinstance(op, kind) and op.task == task and op.in_dim == 3 * 784
    with pytest.raises(ValueError, match="task must be one of"):
        make_operator("deblur")
    assert image_shape_of(784) == (1, 28, 28) and image_shape_of(2352) == (3, 28, 28)
    with pytest.raises(ValueError, match="not square"):
        image_shape_of(100 * 3 + 1)


def test_restore_summary_numbers():
    truth = coloured_digits("test").x[:5]
    y = Greyscale()(truth)
    result = restore(PaletteColouriser(), y, Greyscale(), 10, seed=1)
    summary = restore_summary(result, truth)
    assert summary["task"] == "colourise" and summary["consistency"] < 1e-6
    # per pixel, mean_s (s - c)^2 = (mean - c)^2 + (S - 1) / S * unbiased variance
    assert math.isclose(summary["mse_sample"], summary["mse_mean"] + 0.9 * summary["mean_variance"], rel_tol=1e-4)
    model = tiny_vae()
    op = Inpaint(torch.tensor([True, False, True, False, True, False]))
    summary = restore_summary(restore(model, op(torch.ones(4, 6)), op, 3, sampler="importance", num_particles=50))
    assert 1 <= summary["ess_min"] <= summary["ess_median"] <= 50 and "mse_mean" not in summary
