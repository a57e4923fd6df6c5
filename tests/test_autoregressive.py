"""Autoregressive models: normalisation by enumeration, the autoregressive property by autograd and
by the masks, sequential sampling against teacher forcing, the Pyro program, inpainting against
the exact conditional, and the rank-based ROC AUC against a pairwise count."""

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine

from conftest import randomised
from ppgen.inference.anomaly import roc_auc
from ppgen.models.autoregressive import FVSBN, MADE, NADE, PixelCNN, order_observed_first
from ppgen.models.autoregressive._common import ranks
from ppgen.models.autoregressive.pixelcnn import horizontal_mask, raster_mask, vertical_mask

MODELS = {
    "fvsbn": lambda: FVSBN(6),
    "fvsbn-random": lambda: FVSBN(6, order="random", seed=3),
    "nade": lambda: NADE(6, hidden=5),
    "nade-random": lambda: NADE(6, hidden=5, order="random", seed=3),
    "made": lambda: MADE(6, hidden_sizes=(12,)),
    "made-deep-random": lambda: MADE(6, hidden_sizes=(12, 10), order="random", seed=1),
    "made-ensemble": lambda: MADE(6, hidden_sizes=(12,), num_masks=3, order="random", seed=2),
    "made-direct": lambda: MADE(6, hidden_sizes=(4,), num_masks=2, order="random", seed=4, direct=True),
    "pixelcnn-gated": lambda: PixelCNN(channels=4, layers=3, kernel=3, height=3, width=3),
    "pixelcnn-plain": lambda: PixelCNN(channels=4, layers=3, kernel=3, height=3, width=3, gated=False),
}


def all_binary(dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)), dtype=torch.float64)


def allowed(order: torch.Tensor) -> torch.Tensor:
    """allowed[d, j]: pixel j comes strictly before pixel d in the ordering."""
    rank = ranks(order)
    return rank[None, :] < rank[:, None]


@pytest.mark.parametrize("name", MODELS)
def test_probabilities_of_all_binary_vectors_sum_to_one(name):
    model = randomised(MODELS[name]())
    log_p = model.log_prob(all_binary(model.x_dim))
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert log_p.std() > 0.1  # a non-trivial distribution, not uniform


@pytest.mark.parametrize("name", MODELS)
def test_conditionals_depend_only_on_earlier_pixels(name):
    model = randomised(MODELS[name]())
    x = torch.rand(model.x_dim, dtype=torch.float64)
    for k in range(model.num_orderings):
        jac = torch.autograd.functional.jacobian(lambda v: model.conditional_logits(v[None], k)[0], x)  # (D, D)
        ok = allowed(model.orders[k])
        assert (jac[~ok] == 0).all()
        assert (jac[ok] != 0).float().mean() > 0.5  # and the allowed dependences are really used


def test_masks_are_autoregressive():
    made = MADE(7, hidden_sizes=(9, 8), num_masks=4, order="random", seed=5)
    for k in range(4):
        conn = made.connectivity(k)
        assert not conn[~allowed(made.orders[k])].any()
        assert conn.any()
    direct = MADE(7, hidden_sizes=(3,), num_masks=2, order="random", seed=5, direct=True)
    for k in range(2):  # the direct connection links every earlier pixel to every later one
        assert torch.equal(direct.connectivity(k), allowed(direct.orders[k]))
    fvsbn = randomised(FVSBN(5, order=[3, 1, 4, 0, 2]))
    assert torch.equal(fvsbn.weight_matrix != 0, allowed(fvsbn.orders[0]))
    # PixelCNN kernels: (a, b) kept iff it comes before the centre (c, c) in raster order (A), or is it (B)
    for k in (3, 5):
        c = k // 2
        before = torch.tensor([[(a, b) < (c, c) for b in range(k)] for a in range(k)])
        assert torch.equal(raster_mask(k, include_centre=False).bool(), before)
        assert torch.equal(raster_mask(k, include_centre=True).bool(), before | (torch.eye(k, dtype=torch.bool)
                                                                                & (torch.arange(k) == c)))
        rows = torch.arange(k)[:, None].expand(k, k)
        assert torch.equal(vertical_mask(k, include_centre_row=False).bool(), rows < c)
        assert torch.equal(vertical_mask(k, include_centre_row=True).bool(), rows <= c)
        assert torch.equal(horizontal_mask(k, include_centre=False).bool(), torch.arange(k)[None] < c)


def test_made_with_only_its_direct_connection_is_the_fvsbn_with_those_weights():
    order = [2, 0, 5, 1, 4, 3]
    fvsbn = randomised(FVSBN(6, order=order))
    made = randomised(MADE(6, hidden_sizes=(8,), order=order, direct=True))
    with torch.no_grad():
        made.layers[-1].weight.zero_()  # silence the hidden layer: only the direct connection is left
        made.layers[-1].bias.copy_(fvsbn.bias)
        # FVSBN's weights where the ordering allows them, noise elsewhere: the mask must drop the noise
        made.direct.copy_(torch.where(allowed(made.orders[0]), fvsbn.weight_matrix, torch.randn(6, 6).double()))
    x = all_binary(6)
    assert torch.allclose(made.log_prob(x), fvsbn.log_prob(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["made-ensemble", "made-direct", "pixelcnn-gated"])
def test_conditionals_stay_on_the_models_device(name):
    """With no GPU: a fake CUDA device (torch's FakeTensorMode, a private API) runs the shapes and devices of
    every operation without data, so a tensor made on the CPU inside the model raises a device mismatch.
    MADE's direct connection did so on a real GPU, which the CUDA tests skipped here cannot show."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    model = MODELS[name]()
    mode = FakeTensorMode()
    tensors = {key: mode.from_tensor(t) for key, t in [*model.named_parameters(), *model.named_buffers()]}
    with mode:
        on_gpu = {key: t.to("cuda") for key, t in tensors.items()}
        with _reparametrize_module(model, on_gpu):
            logits = model.conditional_logits(torch.zeros(4, model.x_dim, device="cuda"), model.num_orderings - 1)
    assert logits.device.type == "cuda" and logits.shape == (4, model.x_dim)


def test_gated_pixelcnn_has_no_blind_spot_and_the_plain_one_has():
    x = torch.rand(16, dtype=torch.float64)
    jacobians = {}
    for gated in (True, False):
        model = randomised(PixelCNN(channels=6, layers=4, kernel=3, height=4, width=4, gated=gated))
        jacobians[gated] = torch.autograd.functional.jacobian(lambda v: model.conditional_logits(v[None])[0], x)
    ok = allowed(torch.arange(16))
    assert (jacobians[True][ok] != 0).all()  # every earlier pixel reaches every later one
    blind = jacobians[False][ok] == 0
    assert blind.any()
    # the plain stack misses pixel (0, 3) when predicting (1, 0): up and to the right
    assert jacobians[False][4, 3] == 0 and jacobians[True][4, 3] != 0


SEQUENTIAL = {**MODELS, "pixelcnn-cropped": lambda: PixelCNN(channels=4, layers=2, kernel=3, height=7, width=5)}


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_log_prob_is_the_sum_of_conditionals_met_in_sequential_sampling(name):
    model = randomised(SEQUENTIAL[name]())
    trace = poutine.trace(model.model).get_trace(None, size=5)
    x = trace.nodes["x"]["value"]  # (5, D)
    k = int(trace.nodes["mask"]["value"]) if "mask" in trace.nodes else 0
    per_site = [trace.nodes[f"x_{d}"]["fn"].log_prob(trace.nodes[f"x_{d}"]["value"]) for d in range(model.x_dim)]
    teacher_forced = torch.distributions.Bernoulli(logits=model.conditional_logits(x, k)).log_prob(x).sum(-1)
    torch.testing.assert_close(torch.stack(per_site).sum(0), teacher_forced, rtol=0, atol=1e-10)
    if model.num_orderings == 1:
        torch.testing.assert_close(torch.stack(per_site).sum(0), model.log_prob(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_pyro_program_scores_the_data_with_log_prob(name):
    model = randomised(MODELS[name]())
    x = torch.bernoulli(torch.full((4, model.x_dim), 0.4, dtype=torch.float64))
    if model.num_orderings == 1:
        trace = poutine.trace(model.model).get_trace(x)
        assert trace.log_prob_sum().item() == pytest.approx(model.log_prob(x).sum().item(), abs=1e-10)
        return
    # the ensemble: log p(x) = log sum_k p(k) p_k(x), with p(k) in the trace as the "mask" site
    for row in x:
        joint = [poutine.trace(pyro.condition(model.model, data={"mask": torch.tensor(k)})).get_trace(row[None])
                 .log_prob_sum() for k in range(model.num_orderings)]
        assert torch.logsumexp(torch.stack(joint), 0).item() == pytest.approx(model.log_prob(row[None]).item(),
                                                                              abs=1e-10)


def test_conditioning_a_pixel_site_clamps_it():
    model = randomised(NADE(6, hidden=5))
    conditioned = pyro.condition(model.model, data={"x_2": torch.ones(50, dtype=torch.float64)})
    trace = poutine.trace(conditioned).get_trace(None, size=50)
    assert (trace.nodes["x"]["value"][:, 2] == 1).all()
    assert trace.nodes["x_2"]["is_observed"]


def exact_conditional(model, x_row, observed):
    """p(x_missing | x_obs) over all completions by enumeration: (completions (M, D), probs (M,))."""
    missing = (~observed).nonzero().squeeze(-1)
    fill = all_binary(len(missing))
    rows = x_row.expand(len(fill), -1).clone()
    rows[:, missing] = fill
    return rows, torch.softmax(model.log_prob(rows), 0)


def total_variation(samples, completions, probs):
    """TV distance between the empirical law of ``samples`` and ``probs`` on ``completions``, and its MC scale."""
    counts = (samples[:, None, :] == completions[None]).all(-1).double().sum(0)
    assert counts.sum() == len(samples)  # every sample is one of the completions: observed pixels kept
    tv = 0.5 * (counts / len(samples) - probs).abs().sum().item()
    mc_scale = 0.5 * (probs * (1 - probs) / len(samples)).sqrt().sum().item()  # >= E[TV] at the truth
    return tv, mc_scale


OBSERVED_FIRST = {  # natural orderings: the first three pixels come first in every mask
    "nade": MODELS["nade"],
    "made-ensemble": lambda: MADE(6, hidden_sizes=(12,), num_masks=3, seed=2),
    "pixelcnn-gated": MODELS["pixelcnn-gated"],
}


@pytest.mark.parametrize("name", OBSERVED_FIRST)
def test_inpainting_observed_first_is_the_exact_conditional(name):
    model = randomised(OBSERVED_FIRST[name]())
    dim = model.x_dim
    observed = torch.arange(dim) < 3
    x = torch.tensor([[1.0, 0.0, 1.0] + [0.0] * (dim - 3)], dtype=torch.float64)
    result = model.inpaint(x, observed, n=4000)
    assert result.method == "exact" and result.samples.shape == (4000, 1, dim)
    completions, probs = exact_conditional(model, x[0], observed)
    tv, mc = total_variation(result.samples[:, 0], completions, probs)
    assert tv < 3 * mc


def test_inpainting_against_the_ordering_uses_importance_resampling():
    model = randomised(MADE(6, hidden_sizes=(12,)))
    observed = torch.tensor([False, False, False, True, True, False])  # the last pixels are observed
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    result = model.inpaint(x.expand(3000, -1), observed, n=1, num_particles=300)
    assert result.method == "importance_resampling"
    assert (result.ess > 1).all() and (result.ess <= 300 + 1e-9).all()
    completions, probs = exact_conditional(model, x[0], observed)
    tv, mc = total_variation(result.samples[0], completions, probs)
    assert tv < 3 * mc


def test_a_chosen_ordering_inpaints_an_arbitrary_mask_exactly():
    observed = torch.tensor([True, False, True, False, False, True])
    model = randomised(NADE(6, hidden=5, order=order_observed_first(observed)))
    x = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    result = model.inpaint(x, observed, n=200)
    assert result.method == "exact"
    assert (result.samples[..., observed] == x[0, observed]).all()


def test_inpainting_an_image_keeps_its_top_half():
    model = PixelCNN(channels=4, layers=2, kernel=3, height=8, width=8)
    x = torch.bernoulli(torch.full((3, 64), 0.5))
    observed = torch.arange(64) < 32
    result = model.inpaint(x, observed, n=2)
    assert result.method == "exact"
    assert torch.equal(result.samples[..., :32], x[:, :32].expand(2, -1, -1))
    assert not torch.equal(result.samples[..., 32:], x[:, 32:].expand(2, -1, -1))


def test_roc_auc_equals_the_pairwise_count():
    generator = torch.Generator().manual_seed(0)
    scores_in = torch.randint(0, 12, (40,), generator=generator).double()  # many ties
    scores_out = torch.randint(-3, 8, (25,), generator=generator).double()
    diff = scores_in[:, None] - scores_out[None, :]
    brute = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert roc_auc(scores_in, scores_out) == pytest.approx(brute, abs=1e-12)
    assert roc_auc(scores_out, scores_in) == pytest.approx(1 - brute, abs=1e-12)
    assert roc_auc([0.0, float("-inf")], [float("-inf")]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([math.nan], [1.0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="order"):
        FVSBN(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="kernel"):
        PixelCNN(kernel=4)
    with pytest.raises(TypeError, match="observed_mask"):
        NADE(3, hidden=2).inpaint(torch.zeros(1, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="direct"):
        MADE(3, hidden_sizes=(2,), direct="yes")


@pytest.mark.parametrize("dim,order", [(9, "natural"), (40, "random"), (4, "random"), (37, "natural")])
def test_nade_block_conditionals_equal_the_cumulative_sum(dim, order):
    # the blocked conditionals (shared pre-activations, several blocks, chunks of rows, D not a
    # multiple of the block) against the direct cumulative sum; both float64, so any difference
    # beyond rounding is a bug
    model = randomised(NADE(dim, hidden=7, order=order, seed=1)).double()
    x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * dim) if dim <= 9 \
        else (torch.rand(300, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.4).double()
    assert torch.allclose(model.conditional_logits(x), model._dense_logits(x), atol=1e-10, rtol=0)
    # training differentiates through the shared pre-activations: the gradients must agree too
    def gradients(logits):
        model.zero_grad()
        logits(x).sigmoid().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    fast, dense = gradients(model.conditional_logits), gradients(model._dense_logits)
    assert all(torch.allclose(f, d, atol=1e-10, rtol=0) for f, d in zip(fast, dense))
    if dim <= 9:  # and the log-likelihoods still sum to one over all 2^D vectors
        assert torch.logsumexp(model.log_prob(x), 0).item() == pytest.approx(0.0, abs=1e-10)
