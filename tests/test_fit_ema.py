"""fit(ema=...): Polyak averaging of the parameters, against the moving average computed by hand from the
trajectory of the same run without it; resumed bit for bit; validated on the averages it returns."""

import pytest
import torch

import ppgen
from ppgen import FitConfig, fit

SETTINGS = dict(batch_size=32, lr=0.05, optimizer="adam", progress=False, convergence_tol=None, seed=3)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((32, 4), 0.3), generator=g), torch.bernoulli(torch.full((16, 4), 0.3),
                                                                                      generator=g)


def _model():
    return ppgen.FVSBN(4, seed=1)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _trajectory(tmp_path, epochs):
    """The parameters before the first step and after each (full batch: one step an epoch), without ema."""
    x, _ = _data()
    model = _model()
    points = [_params(model)]
    for epoch in range(1, epochs + 1):
        fit(model, x, epochs=epoch, checkpoint_dir=tmp_path / "plain", resume=True, **SETTINGS)
        points.append(_params(model))
    return points


def _moving_average(points, decay, start=0):
    """The average after each step t = start + 1, ... of the run, its decay warmed up: min(decay, (1+t)/(10+t))."""
    average = dict(points[start])
    for t, point in enumerate(points[start + 1:], start=start + 1):
        d = min(decay, (1 + t) / (10 + t))
        average = {n: d * average[n] + (1 - d) * point[n] for n in average}
    return average


def test_ema_returns_the_moving_average_of_the_trajectory_and_resumes_bit_for_bit(tmp_path):
    x, _ = _data()
    points = _trajectory(tmp_path, 5)
    expected = _moving_average(points, 0.3)  # warmed-up decays 0.18 and 0.25 at steps 1 and 2, then 0.3
    unbroken = _model()
    fit(unbroken, x, epochs=5, ema=0.3, **SETTINGS)
    for name, value in _params(unbroken).items():  # float32: five lerps of values of order 1
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
    assert not torch.allclose(_params(unbroken)["bias"], points[-1]["bias"])  # averaging changed them
    resumed = _model()
    fit(resumed, x, epochs=3, ema=0.3, checkpoint_dir=tmp_path / "ema", **SETTINGS)
    fit(resumed, x, epochs=5, ema=0.3, checkpoint_dir=tmp_path / "ema", resume=True, **SETTINGS)
    for name, value in _params(resumed).items():  # trained on from the trained parameters, not the averages
        assert torch.equal(value, _params(unbroken)[name]), name


def test_ema_added_on_resume_starts_at_the_checkpoints_parameters(tmp_path):
    x, _ = _data()
    points = _trajectory(tmp_path, 4)
    model = _model()
    fit(model, x, epochs=2, checkpoint_dir=tmp_path / "run", **SETTINGS)
    fit(model, x, epochs=4, ema=0.5, checkpoint_dir=tmp_path / "run", resume=True, **SETTINGS)
    expected = _moving_average(points, 0.5, start=2)
    for name, value in _params(model).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_validation_scores_the_averages_that_fit_returns(tmp_path):
    x, valid = _data()
    model = _model()
    result = fit(model, x, epochs=4, ema=0.7, valid=valid, **SETTINGS)
    # FVSBN's validation score is its exact mean log-likelihood; float32 sums of 16 rows
    assert result.valid_elbo[-1] == pytest.approx(ppgen.log_likelihood(model, valid).mean, abs=1e-5)
    plain = _model()
    plain_result = fit(plain, x, epochs=4, valid=valid, **SETTINGS)
    assert plain_result.valid_elbo[-1] != pytest.approx(result.valid_elbo[-1], abs=1e-4)
    # with early stopping the model holds the averages of the best epoch, the ones that scored best
    best = _model()
    stopped = fit(best, x, epochs=40, ema=0.7, valid=valid, patience=2, **{**SETTINGS, "lr": 0.5})
    assert stopped.best_epoch < stopped.epochs
    assert max(stopped.valid_elbo) == pytest.approx(ppgen.log_likelihood(best, valid).mean, abs=1e-5)


@pytest.mark.parametrize("ema", [0, 1, 1.5, -0.1, True, "0.9"])
def test_ema_outside_zero_one_is_refused(ema):
    with pytest.raises(ValueError, match="ema must be a decay between 0 and 1"):
        FitConfig(ema=ema)


def test_ema_with_lbfgs_is_refused():
    with pytest.raises(ValueError, match="ema averages the steps of a stochastic optimiser"):
        FitConfig(ema=0.9, optimizer="lbfgs")
