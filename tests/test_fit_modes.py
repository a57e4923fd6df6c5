"""fit trains in training mode and scores in evaluation mode (dropout, batch norm), and clips gradients
when asked: checked by what the modules saw at each call and by the optimiser's gradients."""

import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ppgen import ConvergenceWarning, fit, log_likelihood
from ppgen.models import IndependentBernoulli
from ppgen.models.sequence import CharTransformer


def _transformer(dropout=0.5):
    return CharTransformer(5, context=8, num_layers=1, num_heads=2, width=16, dropout=dropout, seed=0)


def _rows(n, seed=0):
    return torch.randint(0, 5, (n, 8), generator=torch.Generator().manual_seed(seed))


def _record_modes(model):
    """The training flag of every dropout module at each call, in order."""
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    return seen


@pytest.mark.parametrize("start_in_eval", [False, True])
def test_steps_train_and_validation_scores_in_eval_mode(start_in_eval):
    model = _transformer()
    model.train(not start_in_eval)
    seen = _record_modes(model)
    x, valid = _rows(64), _rows(32, seed=1)
    result = fit(model, x, valid=valid, epochs=2, batch_size=32, progress=False, convergence_tol=None)
    assert True in seen and False in seen  # steps with dropout; the check and validation without
    # the caller's mode comes back, submodule by submodule
    assert all(m.training is not start_in_eval for m in model.modules())
    # validation is the deterministic score: the exact log-likelihood of the same rows in evaluation mode
    # (before, dropout drew masks in validation: a noisy score, and the first-batch check's two passes disagreed)
    exact = log_likelihood(model, valid).mean
    assert result.valid_elbo[-1] == pytest.approx(exact, abs=1e-4)  # float32 sums over 32 rows of 8 characters
    assert all(m.training is not start_in_eval for m in model.modules())  # log_likelihood leaves it too


def test_dropout_scores_the_same_twice():
    model = _transformer()
    x = _rows(16)
    first, second = (log_likelihood(model, x).mean for _ in range(2))
    assert first == second  # evaluation mode: no masks drawn
    assert model.training


def _gradient_norms():
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.nn.utils.get_total_norm(grads).item())
    return norms, register_optimizer_step_pre_hook(hook)


def test_clip_norm_bounds_every_step():
    x = (torch.rand(256, 6, generator=torch.Generator().manual_seed(0)) < 0.8).float()
    norms, handle = _gradient_norms()
    try:
        fit(IndependentBernoulli(6), x, epochs=2, batch_size=64, optimizer="adam", clip_norm=0.05, progress=False,
            convergence_tol=None)
        clipped = list(norms)
        norms.clear()
        fit(IndependentBernoulli(6), x, epochs=2, batch_size=64, optimizer="adam", progress=False,
            convergence_tol=None)
    finally:
        handle.remove()
    assert len(clipped) == len(norms) == 8
    # the loss is for all 256 rows, and clip_norm bounds the gradient per row: of the mean loss. At the start,
    # the mean loss's gradient is about |0.8 - 0.5| sqrt(6) = 0.73 per row, far above 0.05
    assert min(norms) > 0.05 * 256
    assert all(n == pytest.approx(0.05 * 256, rel=1e-5) for n in clipped)  # every step scaled down to the bound


def test_clip_norm_longer_than_every_gradient_changes_nothing():
    x = (torch.rand(128, 6, generator=torch.Generator().manual_seed(0)) < 0.8).float()
    plain, loose = IndependentBernoulli(6), IndependentBernoulli(6)
    fit(plain, x, epochs=2, batch_size=32, optimizer="adam", progress=False, convergence_tol=None)
    fit(loose, x, epochs=2, batch_size=32, optimizer="adam", clip_norm=1e9, progress=False, convergence_tol=None)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), loose.parameters()))


@pytest.mark.parametrize("clip_norm", [0, -1.0, float("nan"), "1"])
def test_clip_norm_refused(clip_norm):
    with pytest.raises(ValueError, match="clip_norm must be a positive number"):
        fit(IndependentBernoulli(3), torch.ones(4, 3), epochs=1, clip_norm=clip_norm, progress=False)


def test_clip_norm_refused_with_lbfgs():
    from ppgen.models.latent import PPCA
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="clip_norm=1 clips gradient steps; L-BFGS"):
        fit(PPCA(4, 2), x, epochs=1, batch_size=64, optimizer="lbfgs", clip_norm=1.0, progress=False)


def _vae_fit(tmp_path, **options):
    from ppgen.models import VAE
    x = (torch.rand(96, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    model = VAE(8, z_dim=2, hidden=8, seed=0)
    return model, fit(model, x, epochs=3, batch_size=32, progress=False, convergence_tol=None,
                      checkpoint_dir=tmp_path, **options)


def test_max_minutes_stops_says_so_and_resumes_exactly(tmp_path):
    whole, whole_result = _vae_fit(tmp_path / "whole")
    calls = 0
    while True:  # a budget shorter than a step: every call takes one step (at least one runs) and stops
        calls += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, result = _vae_fit(tmp_path / "cut", max_minutes=1e-9, resume=True)
        if not result.out_of_time:
            break
        assert result.steps == calls
        said = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        assert any(f"stopped at max_minutes=1e-09 after step {calls} of 9 ({calls // 3} of 3 epochs done)" in m
                   and "resume=True with the same checkpoint_dir continues it" in m for m in said), said
    assert calls == 9 and result.steps == 9  # the last call ran to the end: no stop after the last step
    assert result.train_elbo == whole_result.train_elbo and result.losses == whole_result.losses
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), model.parameters()))


def test_max_minutes_refused():
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        fit(IndependentBernoulli(3), torch.ones(4, 3), epochs=1, max_minutes=0, progress=False)


def test_the_result_names_what_its_figures_are():
    """An ELBO or a likelihood is in nats per example; contrastive divergence's objective is not a likelihood
    (it once printed "nats/example" too)."""
    from ppgen.inference import Program
    from ppgen.models.energy import RBM
    from ppgen.models.energy.base import ContrastiveDivergence

    x = torch.bernoulli(torch.full((64, 6), 0.3), generator=torch.Generator().manual_seed(0))
    exact = fit(RBM(6, hidden=3), x, epochs=1, progress=False, convergence_tol=None)
    program = Program(RBM(6, hidden=3))
    cd = fit(program, x, epochs=1, objective=ContrastiveDivergence(program, k=1), progress=False)
    assert exact.unit == "nats/example" and "nats/example" in repr(exact)
    assert cd.unit == "ContrastiveDivergence objective (not a likelihood)" and "nats" not in repr(cd)
    assert cd.to_dict()["unit"] == cd.unit
    # a loss that falls steadily is not a likelihood for that: Ho et al.'s L_simple
    from ppgen.models.diffusion import GaussianDiffusion

    grey = torch.rand(32, 64, generator=torch.Generator().manual_seed(1)).mul(255).round() / 255
    simple = fit(GaussianDiffusion(64, shape=(1, 8, 8), num_steps=4, loss="simple", channels=8, multipliers=(1,)),
                 grey, epochs=1, progress=False, convergence_tol=None)
    assert simple.unit == "SimpleLoss objective (not a likelihood)"
