"""Sample-quality scores against closed forms."""

import pytest
import torch

from ppgen.inference.sample_quality import (
    frechet_distance, frechet_distance_of_moments, kernel_distance, precision_recall,
)


def test_frechet_distance_of_two_gaussians_is_the_closed_form():
    # diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    s_a, s_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    closed = ((mu_a - mu_b) ** 2).sum() + ((s_a.sqrt() - s_b.sqrt()) ** 2).sum()
    assert frechet_distance_of_moments(mu_a, torch.diag(s_a), mu_b, torch.diag(s_b)) == pytest.approx(closed.item())
    # a full covariance rotated alike on both sides: FD is rotation-invariant
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    rotated = frechet_distance_of_moments(q @ mu_a, q @ torch.diag(s_a) @ q.T, q @ mu_b, q @ torch.diag(s_b) @ q.T)
    assert rotated == pytest.approx(closed.item(), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_of_samples_near_the_closed_form():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20_000, 2, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = 2.0 * torch.randn(20_000, 2, generator=g) + torch.tensor([1.0, 0.0])
    # closed form 1 + 2 (2 - 1)^2 = 3; 20,000 rows estimate the moments to about 1%
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)


def test_kernel_distance_is_zero_in_mean_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(2)
    same = kernel_distance(torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g), subsets=40,
                           subset_size=200)
    assert abs(same.mean) < 3 * same.stderr  # unbiased: 0 within 3 standard errors
    other = kernel_distance(torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g) + 0.5,
                            subsets=40, subset_size=200)
    assert other.mean > 10 * other.stderr


def test_precision_and_recall_see_a_dropped_mode():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    real = centres[torch.randint(2, (1000,), generator=g)] + torch.randn(1000, 2, generator=g)
    collapsed = centres[0] + torch.randn(1000, 2, generator=g)  # one of the two modes only
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and 0.4 < recall < 0.6
    with pytest.raises(ValueError, match="must be a \\(N, d\\) array"):
        precision_recall(torch.zeros(5), real)


def test_the_shipped_digit_classifier_is_accurate_and_gives_features(digits):
    from ppgen.inference.sample_quality import digit_classifier, digit_features, label_spread

    test = digits["test"]
    with torch.no_grad():
        accuracy = (digit_classifier()(test.x).argmax(-1) == test.y).double().mean().item()
    assert accuracy >= 0.98
    assert digit_features(test.x[:10]).shape == (10, 64)
    spread = label_spread(test.x)
    assert spread.sum().item() == pytest.approx(1.0) and spread.max() < 0.15  # ten balanced classes
    assert label_spread(test.x[test.y == 3]).max() > 0.9  # a "collapsed" set: one class
    # real test digits against real validation digits: FID small; against noise: large
    fid_same = frechet_distance(digit_features(test.x[:1000]), digit_features(digits["valid"].x))
    noise = torch.bernoulli(torch.full((1000, 784), 0.13), generator=torch.Generator().manual_seed(0))
    assert fid_same < 0.1 * frechet_distance(digit_features(test.x[:1000]), digit_features(noise))


def test_digit_precision_and_recall_see_realism_and_coverage(digits):
    """Kynkäänniemi et al.'s k = 3 manifolds on 500 digits a set, in manifold_features.

    Held-out real digits against real digits: both near 1 (0.88 / 0.87 here; k-NN balls leave the rarest
    ~10% of held-out rows outside, whatever the model: that is the floor, hence > 0.8). Noise is not a digit:
    precision near 0 (0.00 here for fair coins, for salt noise as dense as a digit's ink and for uniform grey
    pixels, 0.02 for independent pixels at the digits' frequencies; in the 64 ReLU features the last three
    scored 0.64, 0.79 and 0.97), hence < 0.05 and < 0.1. A collapsed set covers nothing: 500 copies of one
    digit have balls of radius 0, so recall is exactly 0; samples of one class cover about that class's share
    of the real rows (0.1) plus the odd neighbour (0.09..0.43 over the ten classes, mean 0.17 here), far below
    the real rows' 0.87, hence each < 0.5 and their mean < 0.3.
    """
    from ppgen.inference.sample_quality import digit_precision_recall
    from ppgen.models import IndependentBernoulli

    g = torch.Generator().manual_seed(0)
    n, train = 500, digits["train"]
    real = digits["test"].x[:n]
    precision, recall = digit_precision_recall(real, train.x[:n])
    assert precision > 0.8 and recall > 0.8
    for noise in (torch.bernoulli(torch.full((n, 784), 0.5), generator=g),
                  torch.bernoulli(torch.full((n, 784), 0.13), generator=g),  # the digits' ink density
                  torch.rand(n, 784, generator=g)):
        precision, recall = digit_precision_recall(real, noise)
        assert precision < 0.05 and recall < 0.05
    blobs = IndependentBernoulli.from_frequencies(train.x).sample(n).float()  # each pixel as often as in digits
    assert digit_precision_recall(real, blobs)[0] < 0.1
    assert digit_precision_recall(real, train.x[:1].repeat(n, 1))[1] == 0.0  # a copy of one typical digit
    one_class = [digit_precision_recall(real, train.x[train.y == c][:n]) for c in range(10)]
    assert all(p > 0.6 and r < 0.5 for p, r in one_class)  # realistic (0.78..0.97), but covers one class's share
    assert sum(r for _, r in one_class) / 10 < 0.3


def test_sample_quality_reports_the_real_vs_real_floor_beside_the_model(digits):
    """The floor: 200 train digits scored against the same 200 test digits as the samples, in the same features.
    Real digits score as real digits do (0.91 / 0.89 > 0.8, FID 47 against the independent-pixel model's 708,
    whose blobs cover none of the data: recall 0.00 < 0.1); a model that replays real rows of another split scores
    the floor itself, exactly."""
    from ppgen.inference.sample_quality import sample_quality
    from ppgen.models import IndependentBernoulli

    real, train = digits["test"].x, digits["train"].x
    blobs = sample_quality(IndependentBernoulli.from_frequencies(train), real, 200, reference=train)
    floor = blobs["real_vs_real"]
    assert floor["rows"] == 200 and floor["precision"] > 0.8 and floor["recall"] > 0.8
    assert floor["fid"] < 0.1 * blobs["fid"] and blobs["recall"] < 0.1
    assert floor["largest_class_share"] < 0.2  # ten classes

    class Replay:  # "samples" that are the train rows the floor uses
        y_dim, device = None, torch.device("cpu")

        def sample(self, n):
            return train[:n]

    replay = sample_quality(Replay(), real, 200, reference=train[:200])  # n reference rows: all of them
    assert {k: v for k, v in replay.items() if k not in ("samples", "real_vs_real")} == \
        {k: v for k, v in replay["real_vs_real"].items() if k != "rows"}
    with pytest.raises(ValueError, match="reference must hold at least 2 real rows"):
        sample_quality(Replay(), real[:200], 200)  # no rows beyond the n drawn for the floor
    assert sample_quality(train, real, 200, reference=train[:200]) == replay  # rows already drawn score as drawn
    with pytest.raises(ValueError, match=r"samples given as a tensor must be rows \(N, D\) with N >= n=200"):
        sample_quality(train[:100], real, 200, reference=train)
