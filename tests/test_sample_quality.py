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
