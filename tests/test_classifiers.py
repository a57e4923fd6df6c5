"""Naive Bayes's closed-form posterior predictive against its Pyro program; Ng & Jordan's finding."""

import itertools

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from ppgen.models.classifiers import BayesianLogisticRegression, NaiveBayes, digit_pair


def test_naive_bayes_closed_form_predictive_matches_pyro_model():
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((12, 3), 0.4), generator=g)
    y = torch.randint(0, 2, (12,), generator=g)
    nb = NaiveBayes(3, alpha=2.0, a=1.0, b=3.0).condition_on(x, y)
    num_samples = 40_000
    # draw (pi, theta) from the posterior (the guide), then one new row (x, y) from the model
    with pyro.plate("draws", num_samples, dim=-2):
        guide_trace = poutine.trace(nb.guide).get_trace(size=1)
        new = poutine.trace(poutine.replay(nb.model, trace=guide_trace)).get_trace(size=1).nodes
    new = {name: new[name]["value"] for name in ("x", "y")}
    rows = torch.cat([new["x"].reshape(num_samples, 3), new["y"].reshape(num_samples, 1).float()], 1)
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    expected = nb.log_predictive(configs).exp()  # (8, 2): p(x, y = c | D)
    assert torch.allclose(expected.sum(), torch.tensor(1.0), atol=1e-6)
    for c in range(2):
        for i, config in enumerate(configs):
            freq = (rows == torch.cat([config, torch.tensor([float(c)])])).all(1).float().mean()
            p = expected[i, c]
            assert abs(freq - p) < 4.5 * (p * (1 - p) / num_samples).sqrt(), (config, c, freq, p)


def test_naive_bayes_sample_draws_the_posterior_predictive():
    # sample() used to run the model, whose pi and theta come from the prior: noise after condition_on
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((12, 2), 0.3), generator=g)
    y = torch.randint(0, 2, (12,), generator=g)
    nb = NaiveBayes(2, alpha=2.0, a=1.0, b=3.0).condition_on(x, y)
    num_samples = 40_000
    torch.manual_seed(0)
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))
    joint = nb.log_predictive(configs).exp()  # (4, 2): p(x, y = c | D), the closed form
    for c, expected in ((0, joint[:, 0] / joint[:, 0].sum()), (None, joint.sum(1))):  # p(x | y = 0, D), p(x | D)
        rows = nb.sample(num_samples, c)
        freq = (rows[:, None, :] == configs).all(-1).float().mean(0)
        # binomial sd of each frequency; 4.5 sd: no false alarm in practice
        assert ((freq - expected).abs() < 4.5 * (expected * (1 - expected) / num_samples).sqrt()).all(), (c, freq, expected)
    with pytest.raises(ValueError, match="labels 0..1"):
        nb.sample(3, torch.tensor([0, 1, 2]))


def test_naive_bayes_conjugate_update_counts():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    nb = NaiveBayes(2, alpha=1.0, a=0.5, b=0.5).condition_on(x, y)
    assert torch.equal(nb.post_alpha, torch.tensor([3.0, 2.0]))
    assert torch.equal(nb.post_a, torch.tensor([[2.5, 1.5], [0.5, 1.5]]))
    assert torch.equal(nb.post_b, torch.tensor([[0.5, 1.5], [1.5, 0.5]]))
    with pytest.raises(ValueError, match="labels 0..1"):
        nb.condition_on(x, torch.tensor([0, 2, 1]))


@pytest.mark.slow
def test_ng_jordan_naive_bayes_converges_faster_logistic_regression_lower_asymptote():
    torch.set_num_threads(1)
    x, y = digit_pair((3, 5), "train", pool=2)
    x_test, y_test = digit_pair((3, 5), "test", pool=2)
    errors = {"nb": {}, "lr": {}}
    for n in (20, 200, len(x)):
        nb_err, lr_err = [], []
        for seed in range(8 if n < len(x) else 1):
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
            nb = NaiveBayes(x.shape[1]).condition_on(x[idx], y[idx])
            nb_err.append((nb.predict_proba(x_test).argmax(-1) != y_test).float().mean().item())
            lr = BayesianLogisticRegression(x.shape[1], prior_scale=3.0)
            p = lr.predict_proba(x_test, lr.map_estimate(x[idx], y[idx]))
            lr_err.append(((p > 0.5).long() != y_test).float().mean().item())
        errors["nb"][n], errors["lr"][n] = np.mean(nb_err), np.mean(lr_err)
    full = len(x)
    assert errors["lr"][full] < errors["nb"][full] - 0.03  # lower asymptotic error

    def progress(e):  # share of the way from n=20 to the asymptote covered by n=200
        return (e[20] - e[200]) / (e[20] - e[full])

    assert progress(errors["nb"]) > 0.9 > progress(errors["lr"]) + 0.1, errors


def test_naive_bayes_leave_one_out_equals_refitting_without_the_row():
    x, y = digit_pair((4, 9), "valid", pool=7)  # 16 binary features
    x, y = x[:60], y[:60]
    loo = NaiveBayes(16, alpha=2.0, a=0.5, b=1.5).loo_conditional(x, y)
    for n in (0, 7, 33, 59):  # brute force: condition on the other 59 rows, predict row n
        keep = torch.arange(60) != n
        refit = NaiveBayes(16, alpha=2.0, a=0.5, b=1.5).condition_on(x[keep], y[keep])
        expected = refit.predict_proba(x[n:n + 1])[0, y[n]].log()
        assert loo[n].item() == pytest.approx(expected.item(), abs=1e-5)
    # and leaving the row out costs: on average it is predicted worse than by the full fit
    full = NaiveBayes(16, alpha=2.0, a=0.5, b=1.5).condition_on(x, y).predict_proba(x).log()
    assert loo.mean() < full.gather(-1, y[:, None]).mean()


def _log_evidence(x, y, num_classes, alpha, a, b):
    """log p(x, y) of naive Bayes with its parameters integrated out: Dirichlet-multinomial x Beta-binomial."""
    lg = torch.lgamma
    counts = torch.bincount(y, minlength=num_classes).double()
    ones = torch.stack([x[y == c].sum(0) for c in range(num_classes)]).double()  # (C, D)
    labels = lg(torch.tensor(num_classes * alpha)) - lg(num_classes * alpha + counts.sum()) \
        + (lg(alpha + counts) - lg(torch.tensor(alpha))).sum()

    def log_beta(p, q):
        return lg(p) - lg(p + q) + lg(q)

    features = (log_beta(a + ones, b + counts[:, None] - ones) - log_beta(torch.tensor(a), torch.tensor(b))).sum()
    return labels + features


def test_naive_bayes_log_likelihood_is_the_evidence_ratio():
    """log p(x*, y* | D) = log p(D + row) - log p(D): a second formula for the posterior predictive, and
    log p(x* | D) its sum over the classes; ppgen.log_likelihood reports them as exact (float32 sums: 1e-4)."""
    import ppgen

    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((30, 5), 0.3), generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    new_x = torch.bernoulli(torch.full((4, 5), 0.5), generator=g)
    new_y = torch.tensor([0, 1, 2, 1])
    prior = dict(alpha=1.5, a=0.5, b=2.0)
    nb = NaiveBayes(5, num_classes=3, **prior).condition_on(x, y)
    base = _log_evidence(x, y, 3, **prior)

    def ratio(row, label):
        return _log_evidence(torch.cat([x, row[None]]), torch.cat([y, label.view(1)]), 3, **prior) - base

    expected_joint = torch.stack([ratio(r, c) for r, c in zip(new_x, new_y)]).float()
    expected_marginal = torch.stack([torch.stack([ratio(r, torch.tensor(c)) for c in range(3)]).logsumexp(0)
                                     for r in new_x]).float()
    joint = ppgen.log_likelihood(nb, (new_x, new_y))
    marginal = ppgen.log_likelihood(nb, new_x)
    assert joint.exact and joint.method == "exact" and marginal.exact
    torch.testing.assert_close(joint.values, expected_joint, rtol=0, atol=1e-4)
    torch.testing.assert_close(marginal.values, expected_marginal, rtol=0, atol=1e-4)
    assert (marginal.values > joint.values).all()  # p(x) sums p(x, y = c) over three positive terms
    with pytest.raises(ValueError, match="labels 0..2"):
        nb.log_prob(new_x, torch.tensor([0, 1, 2, 3]))
