"""IndependentBernoulli against its closed forms."""

import itertools
import math

import numpy as np
import torch

from ppgen import IndependentBernoulli, fit, log_likelihood


def test_probabilities_of_all_binary_vectors_sum_to_one():
    model = IndependentBernoulli(10)
    with torch.no_grad():
        model.logits.copy_(torch.randn(10) * 2)
    every_x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)))  # (1024, 10)
    total = torch.logsumexp(model.log_prob(every_x).double(), 0)
    assert abs(total.item()) < 1e-5  # float32 log-probs of 1024 terms


def test_log_likelihood_equals_closed_form():
    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.random((500, 6)) < [0.1, 0.3, 0.5, 0.7, 0.9, 0.2]).astype(np.float32))
    model = IndependentBernoulli.from_frequencies(x)
    ones = x.sum(0).double().numpy()
    p = ones / len(x)
    closed_form = np.sum(ones * np.log(p) + (len(x) - ones) * np.log1p(-p)) / len(x)
    result = log_likelihood(model, x)
    assert result.exact and result.stderr == 0.0
    assert abs(result.mean - closed_form) < 1e-5
    assert abs(result.bits_per_dim - (-closed_form / (6 * math.log(2)))) < 1e-6


def test_svi_reaches_the_maximum_likelihood_frequencies():
    # fit() by SVI and the counting estimator are two algorithms for the same MLE.
    probs = torch.tensor([0.1, 0.25, 0.4, 0.6, 0.75, 0.9])
    x = torch.bernoulli(probs.expand(4000, 6), generator=torch.Generator().manual_seed(2))
    model = IndependentBernoulli(6)
    fit(model, x, epochs=400, batch_size=4000, lr=0.05, progress=False)
    frequencies = x.mean(0)
    # Adam at lr 0.05 settles within ~1e-3 of the optimum of this concave problem
    assert torch.allclose(model.probs, frequencies, atol=2e-3)
    mle = IndependentBernoulli.from_frequencies(x)
    gap = log_likelihood(mle, x).mean - log_likelihood(model, x).mean
    assert 0 <= gap < 1e-4  # the counting MLE is the maximum


def test_pseudo_counts_shrink_towards_one_half():
    x = torch.zeros(8, 2)
    model = IndependentBernoulli.from_frequencies(x, pseudo_count=1.0)
    assert torch.allclose(model.probs, torch.full((2,), 1 / 10))


def test_samples_follow_the_probabilities():
    model = IndependentBernoulli(3)
    with torch.no_grad():
        model.logits.copy_(torch.logit(torch.tensor([0.2, 0.5, 0.9])))
    draws = model.sample(20_000)
    # binomial standard error at n = 20000 is at most 0.0036; 4 sigma
    assert torch.allclose(draws.mean(0), torch.tensor([0.2, 0.5, 0.9]), atol=0.015)
