"""Normalizing flows: every log-determinant against autograd, inverses, normalisation, sampling vs density.

Numerics in float64 where a tolerance is tight: a log|det| from autograd's full Jacobian and the
layer's closed form agree to ~1e-12 then, so 1e-4 leaves room only for real errors.
"""

import copy
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

import ppgen
from conftest import load_script
from ppgen.models.flows import MAF, NSF, Dequantized, Flow, Glow, LogitPixels, RealNVP, dequantize
from ppgen.models.flows.layers import ActNorm, Coupling, InvertibleConv1x1, Squeeze

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def perturb(module, scale=0.1):
    """Move every parameter off its (often identity) initialisation, so the maps are not trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def autograd_logdet(f, x):
    """log|det df/dx| per row from autograd's full Jacobian (x: (N, ...))."""
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: f(r[None])[0].reshape(-1), row, vectorize=True)
        out.append(torch.linalg.slogdet(jac.reshape(row.numel(), row.numel()))[1])
    return torch.stack(out)


def image_layers():
    actnorm = ActNorm(4)
    actnorm(torch.randn(8, 4, 2, 2) * 3 + 1)  # data-dependent init, then moved
    return {
        "actnorm": perturb(actnorm),
        "invconv": perturb(InvertibleConv1x1(4)),
        "squeeze": Squeeze(),
        **{f"coupling-{mask}-{'affine' if affine else 'additive'}": perturb(Coupling(4, mask, 8, 1, affine), 0.3)
           for mask in ("checkerboard", "checkerboard_flipped", "channel", "channel_flipped")
           for affine in (True, False)},
        **{f"coupling-{mask}-packed": perturb(Coupling(4, mask, 8, 1, packed=True), 0.3)
           for mask in ("checkerboard", "checkerboard_flipped")},
        **{f"coupling-{mask}-sigmoid": perturb(Coupling(4, mask, 8, 1, scale_map="sigmoid"), 0.3)
           for mask in ("checkerboard", "channel_flipped")},
    }


def test_every_layer_logdet_matches_autograd_and_inverts(float64):
    x = torch.randn(2, 4, 2, 2)
    for name, layer in image_layers().items():
        z, logdet = layer(x)
        expected = autograd_logdet(lambda r: layer(r)[0], x)
        assert torch.allclose(logdet, expected, atol=1e-4), name
        assert torch.allclose(layer.inverse(z), x, atol=1e-5), name
    logit = LogitPixels(256, alpha=0.05)
    y = dequantize(torch.randint(0, 256, (3, 6)).double())
    h, logdet = logit(y)
    assert torch.allclose(logdet, autograd_logdet(lambda r: logit(r)[0], y), atol=1e-4)
    assert torch.allclose(logit.inverse(h), y, atol=1e-5)


def small_flows(num_levels=None):
    return {
        "realnvp": perturb(RealNVP(16, shape=(1, 4, 4), num_scales=2, hidden=8, blocks=1, num_levels=num_levels), 0.2),
        "realnvp-packed": perturb(RealNVP(16, shape=(1, 4, 4), num_scales=2, hidden=8, blocks=1, num_levels=num_levels,
                                          checkerboard="packed"), 0.2),
        "realnvp-first": perturb(RealNVP(16, shape=(1, 4, 4), num_scales=2, hidden=8, blocks=1, num_levels=num_levels,
                                         factor_out="first"), 0.2),
        "glow": perturb(Glow(16, shape=(1, 4, 4), levels=2, steps=2, hidden=8, blocks=1, num_levels=num_levels), 0.2),
        "glow-first": perturb(Glow(16, shape=(1, 4, 4), levels=2, steps=2, hidden=8, blocks=1, num_levels=num_levels,
                                   factor_out="first"), 0.2),
        "glow-tanh": perturb(Glow(16, shape=(1, 4, 4), levels=2, steps=2, hidden=8, blocks=1, num_levels=num_levels,
                                  scale_map="tanh"), 0.2),
        "glow-additive": perturb(Glow(16, shape=(1, 4, 4), levels=1, steps=2, hidden=8, affine=False,
                                      num_levels=num_levels), 0.2),
        "maf": perturb(MAF(16, transforms=2, hidden=16, num_levels=num_levels)),
        "nsf": perturb(NSF(16, transforms=2, hidden=16, num_levels=num_levels)),
    }


def test_whole_flows_logdet_and_inverse(float64):
    x = dequantize(torch.randint(0, 256, (2, 16)).double())
    for name, flow in small_flows(256).items():
        z, logdet = flow.encode_with_logdet(x)
        assert torch.allclose(logdet, autograd_logdet(lambda r: flow.encode_with_logdet(r)[0], x), atol=1e-4), name
        assert torch.allclose(flow.decode(z), x, atol=1e-5), name
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + logdet
        assert torch.allclose(flow.log_prob(x), expected), name


@pytest.mark.parametrize("flow_class", [RealNVP, Glow])
def test_the_factored_out_half_is_the_one_the_last_coupling_moved(flow_class):
    """After level 1, half the channels go straight to the latent (its first 8 of 16 numbers here). The default,
    factor_out="second", factors out the half that level's last coupling moved (Dinh et al.; Kingma & Dhariwal):
    changing that coupling's network changes them and not the half level 2 goes on with. factor_out="first"
    factors out the half that only conditioned it: the change leaves it as it was, and reaches the latent through
    level 2."""
    x = dequantize(torch.randint(0, 256, (4, 16)).double()).float()
    kwargs = dict(shape=(1, 4, 4), hidden=8, blocks=1, **({"num_scales": 2} if flow_class is RealNVP else
                                                          {"levels": 2, "steps": 2}))
    for factor_out, moves in (("second", True), ("first", False)):
        flow = perturb(flow_class(16, factor_out=factor_out, **kwargs), 0.2)
        before = flow.encode(x)
        last_coupling = [layer for layer in flow.levels[0] if isinstance(layer, Coupling)][-1]
        perturb(last_coupling.net, 0.5)
        after = flow.encode(x)
        assert (after[:, :8] - before[:, :8]).abs().max() > 1e-3 if moves else torch.equal(after[:, :8], before[:, :8])
        assert torch.equal(after[:, 8:], before[:, 8:]) == moves  # the other half goes on through level 2
    with pytest.raises(ValueError, match="factor_out must be 'first' or 'second', got 'last'"):
        flow_class(16, factor_out="last", **kwargs)


def test_glow_s_coupling_scale_is_the_paper_s_sigmoid_and_tanh_is_the_legacy():
    """Glow's code scales the moved half by sigmoid(h + 2) on the way to z, a log-scale of log sigmoid(2) = -0.127 at
    the zero-initialised start; RealNVP's tanh-bounded scale (ppgen's Glow before 2026-12-07) starts at 0."""
    x = torch.randn(3, 4, 2, 2)
    for scale_map, start in (("sigmoid", math.log(1 / (1 + math.exp(-2)))), ("tanh", 0.0)):
        coupling = Coupling(4, "channel", 8, 1, scale_map=scale_map)  # its last layer zero-initialised
        assert torch.allclose(coupling(x)[1], torch.full((3,), 8 * start)), scale_map  # 8 moved numbers
        assert (coupling.scale is None) == (scale_map == "sigmoid")  # the sigmoid has no learnt bound
    assert Glow(16, shape=(1, 4, 4), levels=1, steps=1, hidden=4).scale_map == "sigmoid"
    assert dict(Glow.legacy_arguments) == {"factor_out": "first", "scale_map": "tanh"}
    with pytest.raises(ValueError, match="scale_map must be one of .*'tanh', 'sigmoid'.*, got 'exp'"):
        Glow(16, shape=(1, 4, 4), levels=1, steps=1, hidden=4, scale_map="exp")
    with pytest.raises(ValueError, match="scale_map must be one of"):
        Coupling(4, "channel", scale_map="softplus")


@pytest.mark.parametrize("name", ["realnvp", "realnvp-packed", "glow", "glow-tanh", "glow-additive", "maf", "nsf"])
def test_a_flow_moved_to_float64_scores_inverts_and_samples_in_float64(name):
    flow = small_flows(256)[name]  # built in float32, the default dtype here
    flow64 = copy.deepcopy(flow).double()
    x = dequantize(torch.randint(0, 256, (3, 16)).double())
    log_p = flow64.log_prob(x)
    # the same density as the float32 flow, to float32's rounding of it
    assert log_p.dtype == torch.float64 and torch.allclose(log_p, flow.log_prob(x.float()).double(), rtol=1e-5)
    # and float64 all the way through: the round trip is exact to ~1e-12 (a float32 step would leave ~1e-4)
    assert (flow64.decode(flow64.encode(x)) - x).abs().max() < 1e-9
    samples = flow64.sample(2)
    assert samples.dtype == torch.float64 and ((samples >= 0) & (samples <= 256)).all()


def grid(low, high, n):
    edges = torch.linspace(low, high, n + 1)
    mid = (edges[1:] + edges[:-1]) / 2
    xx, yy = torch.meshgrid(mid, mid, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), ((high - low) / n) ** 2


TWO_D = {
    "realnvp": lambda levels: RealNVP(2, shape=(1, 1, 2), num_scales=1, hidden=8, blocks=1, num_levels=levels,
                                      alpha=1e-6),
    "maf": lambda levels: MAF(2, transforms=3, hidden=16, num_levels=levels),
    "nsf": lambda levels: NSF(2, transforms=2, hidden=16, num_levels=levels),
}


@pytest.mark.parametrize("name", sorted(TWO_D))
def test_2d_density_integrates_to_one(name, float64):
    # real line: midpoint rule on [-15, 15]^2 (these flows put < 1e-4 of their mass outside; a
    # 1500^2 grid on [-30, 30]^2 gives 1 +- 1e-6); pixels: [0, 2]^2 with two levels, where the
    # logit pre-processing's Jacobian must be counted
    flow = perturb(TWO_D[name](None))
    points, area = grid(-15, 15, 300)
    with torch.no_grad():
        total = flow.log_prob(points).exp().sum().item() * area
    assert abs(total - 1) < 1e-3, total
    pixels = perturb(TWO_D[name](2))  # alpha = 1e-6: a mass of ~1e-6 maps outside [0, 2]^2
    points, area = grid(0, 2, 400)
    with torch.no_grad():
        total = pixels.log_prob(points).exp().sum().item() * area
    assert abs(total - 1) < 1e-3, total


def test_samples_agree_with_log_prob_along_random_projections(float64):
    # KS statistic between samples and the model's CDF along 3 random directions; the CDF is the
    # grid density projected (quadrature error ~1e-3); 4000 samples: the 0.1% critical value is 0.031
    flow = perturb(TWO_D["maf"](None))
    samples = flow.sample(4000)
    points, area = grid(-15, 15, 400)
    with torch.no_grad():
        mass = flow.log_prob(points).exp() * area
    for direction in torch.nn.functional.normalize(torch.randn(3, 2), dim=-1):
        proj, order = (points @ direction).sort()
        cdf = mass[order].cumsum(0)
        drawn = (samples @ direction).sort().values
        model_cdf = torch.from_numpy(np.interp(drawn.numpy(), proj.numpy(), cdf.numpy()))
        empirical = torch.arange(1, len(drawn) + 1) / len(drawn)
        assert (model_cdf - empirical).abs().max() < 0.031 + 3e-3


def test_actnorm_initialises_to_zero_mean_unit_variance():
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.1, 2.0, 30.0])[:, None, None] + torch.tensor([5.0, -1, 0])[:, None, None]
    z, _ = ActNorm(3)(x)
    flat = z.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(3), atol=1e-4)


class UniformPixels(Flow):
    """Uniform on [0, 256)^D: logit (alpha = 0) then the probit map, z = Phi^-1(sigmoid(h))."""

    def transform(self, h):
        u = torch.sigmoid(h)
        z = torch.distributions.Normal(0.0, 1.0).icdf(u)
        # dz/dh = u (1 - u) / phi(z)
        logdet = torch.log(u) + torch.log1p(-u) - torch.distributions.Normal(0.0, 1.0).log_prob(z)
        return z, logdet.sum(-1)

    def untransform(self, z):
        return torch.logit(torch.distributions.Normal(0.0, 1.0).cdf(z))


def test_uniform_model_has_exactly_8_bits_per_dim(float64):
    x, _ = ppgen.load_dataset("digits_grey", "test")
    result = ppgen.log_likelihood(UniformPixels(784, num_levels=256, alpha=0.0), dequantize(x[:50].double()))
    assert abs(result.bits_per_dim - 8.0) < 1e-6  # log_likelihood keeps float32 values: 1e-7 relative
    assert torch.allclose(result.values.double(), torch.full((50,), -784 * math.log(256)), rtol=1e-6)


def test_flow_is_a_pyro_program():
    flow = perturb(RealNVP(16, shape=(1, 4, 4), hidden=8, blocks=1), 0.2)
    x = dequantize(torch.randint(0, 256, (5, 16)).float())
    trace = poutine.trace(flow.model).get_trace(x)
    assert torch.allclose(trace.log_prob_sum(), flow.log_prob(x).sum(), rtol=1e-5)
    conditioned = poutine.trace(pyro.condition(flow.model, data={"x": x})).get_trace(size=5)
    assert torch.equal(conditioned.nodes["x"]["value"], x)
    drawn = Predictive(flow.model, num_samples=2)(size=3)["x"]
    assert drawn.shape == (2, 3, 16) and (drawn >= 0).all() and (drawn <= 256).all()
    assert ppgen.check_model(flow, x).estimator == "mle"


def test_fit_trains_a_flow_by_exact_maximum_likelihood():
    x, _ = ppgen.load_dataset("digits_grey", "train")
    flow = MAF(784, transforms=1, hidden=64)
    before = ppgen.log_likelihood(flow, dequantize(x[:200])).bits_per_dim
    result = ppgen.fit(flow, Dequantized(x[:512]), epochs=2, batch_size=128, lr=1e-3, progress=False)
    assert result.estimator == "mle"
    after = ppgen.log_likelihood(flow, dequantize(x[:200])).bits_per_dim
    assert after < before - 0.5


def test_bad_input_is_refused():
    flow = RealNVP(16, shape=(1, 4, 4), hidden=4, blocks=1)
    good = dequantize(torch.randint(0, 256, (2, 16)).float())
    bad = good.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 1, column 3\)"):
        flow.log_likelihood = ppgen.log_likelihood(flow, bad)
    bad[1, 3] = 300.0
    with pytest.raises(ValueError, match=r"pixel values in \[0, 256\].*found 300 at row 1, column 3"):
        ppgen.log_likelihood(flow, bad)
    for temperature in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            flow.sample(2, temperature=temperature)
    with pytest.raises(ValueError, match="integer pixel levels"):
        dequantize(good)
    with pytest.raises(ValueError, match=r"in \[0, 255\].*before dequantization"):
        Dequantized(torch.full((2, 16), 256.0))
    with pytest.raises(ValueError, match="checkerboard must be 'masked' or 'packed', got 'halved'"):
        RealNVP(16, shape=(1, 4, 4), hidden=4, blocks=1, checkerboard="halved")
    with pytest.raises(ValueError, match=r"even width at every scale; 3 scales of \(1, 28, 28\) reach width 7"):
        RealNVP(784, num_scales=3, hidden=4, blocks=1, checkerboard="packed")
    with pytest.raises(ValueError, match="packed applies to checkerboard masks, not to 'channel'"):
        Coupling(4, "channel", packed=True)


def test_non_finite_coupling_scale_is_caught_by_fit_and_named():
    flow = RealNVP(16, shape=(1, 4, 4), hidden=4, blocks=1)
    x = torch.randint(0, 256, (64, 16)).float()
    coupling, calls = flow.levels[0][2], []

    def blow_up(module, args):  # the coupling's scales become infinite in a training step (not in fit's check)
        calls.append(torch.is_grad_enabled())
        if calls.count(True) == 2:
            with torch.no_grad():
                module.scale.fill_(float("inf"))

    coupling.register_forward_pre_hook(blow_up)
    with pytest.raises(ppgen.inference.NonFiniteLossError, match=r"levels\.0\.2\.scale"):
        ppgen.fit(flow, Dequantized(x), epochs=2, batch_size=32, progress=False)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="the MNIST idx files are not beside the repo")
def test_digits_grey_is_what_the_script_derives():
    derived = load_script("scripts/make_digits.py").derive_grey(SHARED / "MNIST" / "raw")
    from importlib import resources

    with resources.files("ppgen.data").joinpath("digits_grey.npz").open("rb") as f, np.load(f) as shipped:
        assert sorted(shipped.files) == sorted(derived)
        for key, value in derived.items():
            assert np.array_equal(shipped[key], value), key


def test_digits_grey_are_the_binarized_rows_sources():
    for split in ("valid", "test"):
        grey, labels = ppgen.load_dataset("digits_grey", split)
        binary, same_labels = ppgen.load_dataset("digits", split)
        assert torch.equal(labels, same_labels) and torch.equal(grey, grey.round())
        assert grey.min() == 0 and grey.max() == 255
        assert not ((binary == 1) & (grey == 0)).any()  # Bernoulli(intensity / 255) never fires at 0
