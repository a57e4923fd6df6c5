"""GreyPixelCNN, the PixelCNN over grey levels: normalisation by enumeration, the autoregressive property,
log_prob against the Pyro program's trace and against its own sequential story, sampling frequencies
against exp(log_prob), refused input, and fit / check_model / log_likelihood on it."""

import itertools
import math

import pytest
import torch
from pyro import poutine

import ppgen
from conftest import randomised
from ppgen.models.autoregressive import GreyPixelCNN

STACKS = {"gated": True, "plain": False}


def all_images(levels: int, dim: int) -> torch.Tensor:
    """Every row of ``dim`` pixels with values 0..levels-1, (levels^dim, dim) float64, in lexicographic order."""
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.float64)


@pytest.mark.parametrize("stack", STACKS)
def test_probabilities_of_all_81_images_sum_to_one(stack):
    model = randomised(GreyPixelCNN(levels=3, channels=4, layers=3, kernel=3, height=2, width=2, gated=STACKS[stack]))
    log_p = model.log_prob(all_images(3, 4))  # (81,)
    # float64: the sum of 81 terms is exact to ~1e-15; 1e-6 leaves room and still catches any leak of mass
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-6)
    assert log_p.std() > 0.1  # not the uniform model, whose sum would be 1 whatever the network


@pytest.mark.parametrize("stack", STACKS)
def test_a_pixel_changes_no_earlier_conditional_and_some_later_one(stack):
    model = randomised(GreyPixelCNN(levels=5, channels=4, layers=3, kernel=3, height=3, width=4, gated=STACKS[stack]))
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (1, 12), generator=generator).double()
    logits = model.conditional_logits(x)  # (1, D, L)
    for d in range(model.x_dim):
        changed = x.clone()
        changed[0, d] = (x[0, d] + 1 + torch.randint(0, 4, (), generator=generator)) % 5  # another level
        after = model.conditional_logits(changed)
        assert torch.equal(after[0, :d + 1], logits[0, :d + 1]), f"pixel {d} reached an earlier conditional"
        if d + 1 < model.x_dim:
            assert not torch.equal(after[0, d + 1:], logits[0, d + 1:]), f"pixel {d} reached no later conditional"


def test_log_prob_is_the_pyro_programs_trace_log_density():
    model = randomised(GreyPixelCNN(levels=6, channels=4, layers=2, kernel=3, height=3, width=3))
    x = torch.randint(0, 6, (7, 9), generator=torch.Generator().manual_seed(2)).double()
    trace = poutine.trace(model.model).get_trace(x)
    trace.compute_log_prob()
    # two float64 computations of the same sums (Categorical's normalised logits against log_softmax): 1e-10
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], model.log_prob(x), rtol=0, atol=1e-10)


def test_the_sequential_story_meets_the_teacher_forced_conditionals():
    # 7 rows with reach 2: sampling crops the image to the 3 rows that reach each pixel
    model = randomised(GreyPixelCNN(levels=4, channels=4, layers=2, kernel=3, height=7, width=3))
    trace = poutine.trace(model.model).get_trace(None, size=5)
    x = trace.nodes["x"]["value"]  # (5, D)
    per_site = sum(trace.nodes[f"x_{d}"]["fn"].log_prob(trace.nodes[f"x_{d}"]["value"]) for d in range(model.x_dim))
    torch.testing.assert_close(per_site, model.log_prob(x), rtol=0, atol=1e-10)


def test_sample_frequencies_match_exp_log_prob():
    model = randomised(GreyPixelCNN(levels=3, channels=4, layers=2, kernel=3, height=2, width=2))
    images = all_images(3, 4)
    p = model.log_prob(images).exp()  # (81,)
    n = 20_000
    torch.manual_seed(0)
    rows = model.sample(n)
    index = (rows * torch.tensor([27.0, 9.0, 3.0, 1.0], dtype=rows.dtype)).sum(-1).long()  # lexicographic
    counts = torch.bincount(index, minlength=81).double()
    assert counts.sum() == n
    # Pearson's chi-square over the 81 cells (80 degrees of freedom; every expected count n p is >= 5 here, where
    # the chi-square approximation holds): a correct sampler falls below the 0.999 quantile with probability 0.999
    expected = n * p
    assert expected.min() >= 5, expected.min()
    statistic = ((counts - expected) ** 2 / expected).sum()
    p_value = torch.special.gammaincc(torch.tensor(40.0, dtype=torch.float64), statistic / 2).item()  # chi2(80) sf
    assert p_value > 1e-3, (statistic.item(), p_value)
    # and the test can fail: the same counts against the uniform distribution over the 81 images
    uniform = ((counts - n / 81) ** 2 / (n / 81)).sum()
    assert torch.special.gammaincc(torch.tensor(40.0, dtype=torch.float64), uniform / 2).item() < 1e-6


def test_bad_rows_and_arguments_are_refused_naming_them():
    model = GreyPixelCNN(levels=3, channels=4, layers=2, kernel=3, height=2, width=2)
    with pytest.raises(ValueError, match=r"levels 0\.\.2 for GreyPixelCNN\(levels=3\); found 3 at row 0, column 1"):
        model.log_prob(torch.tensor([[0.0, 3.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"whole grey levels .* found 0\.5 at row 1, column 2"):
        model.log_prob(torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.0, 1.0, 0.5, 2.0]]))
    with pytest.raises(ValueError, match=r"found -1 at row 0, column 0"):
        model.log_prob(torch.tensor([[-1.0, 1.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="x has 5 columns, but the model expects 4"):
        model.log_prob(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="found 256"):
        grey = GreyPixelCNN(channels=4, layers=2, kernel=3, height=2, width=2)  # levels=256
        grey.log_prob(torch.tensor([[0.0, 255.0, 256.0, 1.0]]))
    with pytest.raises(ValueError, match="levels must be an int >= 2, got 1"):
        GreyPixelCNN(levels=1)
    with pytest.raises(ValueError, match="kernel must be a positive odd int, got 4"):
        GreyPixelCNN(kernel=4)
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        model.sample(2, temperature=0)


def test_fit_learns_a_copied_pixel_and_log_likelihood_is_exact():
    # x_0 ~ Uniform{0, 1, 2} and x_1 = x_2 = x_3 = x_0: entropy log 3 nats per image, against 4 log 3 for the
    # uniform model and 2 log 3 for one that ignores the pixels before it (the marginals are uniform too)
    x = torch.randint(0, 3, (300, 1), generator=torch.Generator().manual_seed(3)).double().expand(-1, 4).contiguous()
    model = GreyPixelCNN(levels=3, channels=8, layers=2, kernel=3, height=2, width=2).double()
    check = ppgen.check_model(model, x)
    assert (check.estimator, check.data_plate, check.observed, check.latent) == ("mle", "data", ["x"], [])
    assert any("log_prob" in passed for passed in check.passed), check.passed  # log_prob against the trace
    ppgen.fit(model, x, epochs=60, batch_size=50, lr=3e-2, progress=False, convergence_tol=None)
    result = ppgen.log_likelihood(model, x)
    assert result.exact and result.kind == "exact"
    # the same numbers, which log_likelihood hands back in float32: its rounding, 1e-6 relative
    torch.testing.assert_close(result.values.double(), model.log_prob(x), rtol=1e-6, atol=0)
    # the fitted model copies x_0 almost surely: within 0.1 nats of log 3 a row (the copies cost ~0.02 at this budget)
    assert -result.mean == pytest.approx(math.log(3), abs=0.1)


def test_the_long_benchmarks_pixelcnn_trains_on_levels_and_reports_their_exact_bits_per_dim(tmp_path):
    import argparse

    from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint

    from conftest import load_script

    bench = load_script("benchmarks/flows.py")
    levels = ppgen.load_dataset("digits_grey", "train").x[:150]  # integer levels 0..255
    train, valid, test = levels[:64], levels[64:100], levels[100:150]
    cfg = {**bench.LONG["pixelcnn"], "model": dict(levels=256, channels=4, layers=2, kernel=3), "epochs": 1,
           "batch_size": 32, "valid_rows": 20}
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=4, runs=tmp_path, max_minutes=10.0)
    row = bench.long_flow(args, "pixelcnn", train, valid, test, cfg)
    assert row["status"] == "complete" and row["published"] is None and row["valid_rows"] == 20
    # the figure is the exact -log2 P(x) / 784 of the test levels, recomputed from the checkpoint's moving averages
    # (the preset's ema; the same float32 sums: rel 1e-6; the standard error, a std of them: rel 1e-4)
    assert cfg["ema"]
    model = GreyPixelCNN(**cfg["model"])
    saved = load_checkpoint(tmp_path / "pixelcnn" / "checkpoint" / CHECKPOINT_NAME)["averages"]
    loaded = model.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved.items()}, strict=False)
    assert set(loaded.missing_keys) <= dict(model.named_buffers()).keys() and not loaded.unexpected_keys
    with torch.no_grad():
        log_p = model.log_prob(test).double()
    per_dim = 1 / (784 * math.log(2))
    assert row["test_rows"] == len(test)
    assert row["test_bits_per_dim"] == pytest.approx(-log_p.mean().item() * per_dim, rel=1e-6)
    assert row["test_bits_per_dim_stderr"] == pytest.approx(log_p.std().item() / math.sqrt(len(test)) * per_dim,
                                                            rel=1e-4)
    assert all((tmp_path / "pixelcnn" / f"samples-T{t}.png").exists() for t in bench.TEMPERATURES)
