"""fit(): minibatch scaling, resume equality, the NaN guard, early stopping, estimators."""

import re
import time
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppgen import VAE, IndependentBernoulli, fit, log_likelihood
from ppgen.inference import ELBO, ConvergenceWarning, FitConfig, NonFiniteLossError, Program, Trainer, TrainState
from ppgen.inference.checkpoint import load_checkpoint
from ppgen.inference.posterior import GAP_MIN_EFFECTIVE, guide_gap, newton_gap


def beta_bernoulli(x):
    theta = pyro.sample("theta", dist.Beta(2.0, 2.0))  # global: outside the data plate
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Bernoulli(theta).expand([x.shape[0], x.shape[1]]).to_event(1), obs=x)


def point_guide(x):
    pyro.sample("theta", dist.Delta(torch.tensor(0.3)))


def test_minibatch_loss_scales_only_the_data_plate():
    x = torch.bernoulli(torch.full((1000, 1), 0.3), generator=torch.Generator().manual_seed(0))
    batch = x[:100]
    program = Program(beta_bernoulli, point_guide)
    program.validate(batch, num_rows=1000)
    loss = ELBO(program)(batch, scale=1000 / 100)
    theta = torch.tensor(0.3)
    # -[log p(theta) + (N / B) sum_batch log p(x_n | theta)]; the prior is counted once
    expected = -(dist.Beta(2.0, 2.0).log_prob(theta) + 10 * dist.Bernoulli(theta).log_prob(batch).sum())
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_weight_decay_is_a_gaussian_prior_on_the_weights():
    # weight_decay = lam is MAP under theta ~ N(0, 1/lam) against the log-likelihood of all N rows:
    # the optimum solves N (sigmoid(theta) - mean(x)) + lam theta = 0, found here by bisection
    x = (torch.rand(200, 3, generator=torch.Generator().manual_seed(0)) < torch.tensor([0.1, 0.5, 0.8])).float()
    lam, frequency = 20.0, x.mean(0).double()
    low, high = torch.full((3,), -10.0, dtype=torch.float64), torch.full((3,), 10.0, dtype=torch.float64)
    for _ in range(100):
        middle = (low + high) / 2
        positive = len(x) * (torch.sigmoid(middle) - frequency) + lam * middle > 0
        low, high = torch.where(positive, low, middle), torch.where(positive, middle, high)
    model = IndependentBernoulli(3)
    fit(model, x, epochs=1500, batch_size=200, lr=0.05, weight_decay=lam, progress=False, convergence_tol=None)
    # Adam's steps shrink with lr; 1500 full-batch steps at 0.05 settle to ~1e-4 of the optimum
    assert torch.allclose(model.logits.detach().double(), middle, atol=2e-3)
    assert (middle.abs() < 0.8 * torch.logit(frequency).abs()).all()  # and the prior did pull it towards 0


def test_adagrad_takes_the_steps_of_the_adagrad_recursion():
    # full-batch steps on the closed-form gradient of the whole-data loss, N (sigmoid(theta) - mean(x)),
    # plus the decay lam theta: Adagrad's G += g^2, theta -= lr g / (sqrt(G) + 1e-10), written out here
    x = (torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) < torch.tensor([0.2, 0.5, 0.9])).float()
    lr, lam = 0.3, 2.0
    theta, accumulated = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(25):
        gradient = len(x) * (torch.sigmoid(theta) - x.mean(0).double()) + lam * theta
        accumulated += gradient**2
        theta -= lr * gradient / (accumulated.sqrt() + 1e-10)
    model = IndependentBernoulli(3)
    fit(model, x, epochs=25, batch_size=50, lr=lr, optimizer="adagrad", weight_decay=lam, progress=False,
        convergence_tol=None)
    assert torch.allclose(model.logits.detach().double(), theta, atol=1e-5)  # float32 against float64
    adam = IndependentBernoulli(3)
    fit(adam, x, epochs=25, batch_size=50, lr=lr, weight_decay=lam, progress=False, convergence_tol=None)
    assert not torch.allclose(adam.logits.detach().double(), theta, atol=1e-2)  # a different recursion


def _small_vae():
    torch.manual_seed(1)
    return VAE(784, z_dim=4, hidden=16)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(digits, tmp_path):
    x = digits["train"].x[:600]
    settings = dict(batch_size=128, lr=1e-2, seed=5, progress=False)
    straight = _small_vae()
    fit(straight, x, epochs=4, **settings)

    first = _small_vae()
    fit(first, x, epochs=2, checkpoint_dir=tmp_path, **settings)
    resumed = VAE(784, z_dim=4, hidden=16)  # other initial weights: the checkpoint must replace them
    result = fit(resumed, x, epochs=4, checkpoint_dir=tmp_path, resume=True, **settings)
    assert result.epochs == 4 and result.steps == 4 * 5
    for name, value in _params(straight).items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_resume_after_an_interrupt_mid_epoch(digits, tmp_path, monkeypatch):
    x = digits["train"].x[:600]
    settings = dict(batch_size=128, lr=1e-2, seed=7, progress=False)
    straight = _small_vae()
    fit(straight, x, epochs=3, **settings)

    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # the 8th step: epoch 2, batch 3
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        fit(_small_vae(), x, epochs=3, checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["step"] == 7

    resumed = VAE(784, z_dim=4, hidden=16)
    fit(resumed, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **settings)
    for name, value in _params(straight).items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_total_seconds_counts_every_call_of_a_resumed_run(digits, tmp_path, monkeypatch):
    x = digits["train"].x[:600]
    settings = dict(batch_size=128, lr=1e-2, seed=5, progress=False, checkpoint_dir=tmp_path)
    first = fit(_small_vae(), x, epochs=1, **settings)
    assert 0 < first.total_seconds <= first.seconds

    calls, real_step = {"n": 0}, torch.optim.Adam.step

    def slow_then_interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        time.sleep(0.25)  # two recorded steps: the interrupted call trains for at least 0.5 s
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", slow_then_interrupted)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        fit(_small_vae(), x, epochs=2, resume=True, **settings)
    interrupted_wall = time.perf_counter() - started
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    last = fit(_small_vae(), x, epochs=2, resume=True, **settings)
    # the interrupted call returned nothing, but its half second of steps is in the run's time
    assert first.total_seconds + 0.5 <= last.total_seconds <= first.seconds + interrupted_wall + last.seconds


def test_same_seed_same_result_and_other_seed_differs(digits):
    x = digits["train"].x[:300]
    runs = []
    for seed in (3, 3, 4):
        model = _small_vae()
        runs.append(fit(model, x, epochs=1, batch_size=100, seed=seed, progress=False).losses)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_nan_guard_names_the_site_and_keeps_the_last_good_state(tmp_path):
    x = torch.full((50, 1), 3.0)

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        # a trap: an observation whose density overflows to -inf once loc passes 0.5
        trap_loc = torch.tensor(float("inf")) if loc.item() > 0.5 else torch.tensor(0.0)
        pyro.sample("trap", dist.Normal(trap_loc, 1.0), obs=torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).expand([x.shape[0], 1]).to_event(1), obs=x)

    with pytest.raises(NonFiniteLossError) as caught:
        fit(model, x, guide=lambda x: None, epochs=50, batch_size=50, lr=0.1, checkpoint_dir=tmp_path,
            progress=False)
    err = caught.value
    assert err.site == "log-density of site 'trap' in the model"
    assert re.match(rf"the loss became (nan|-?inf) at step {err.step} \(epoch {err.step}, batch 1\)", str(err))
    loc = pyro.param("loc").item()
    # the failing step read loc > 0.5, and Adam moves at most lr per step: loc is where the
    # previous (finite) step left it, not updated by the non-finite one
    assert 0.5 < loc <= 0.5 + 0.1 + 1e-6
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["state"]["step"] == err.step - 1
    assert saved["params"]["pyro.param:loc"].item() == pytest.approx(loc)


def test_early_stopping_restores_the_best_epoch_and_says_when_the_stop_is_in_doubt(digits):
    x, valid = digits["train"].x[:200], digits["valid"].x[:200]
    model = _small_vae()
    with pytest.warns(ConvergenceWarning) as caught:
        result = fit(model, x, valid=valid, patience=2, epochs=60, batch_size=50, lr=5e-2, progress=False)
    assert result.stopped_early and result.epochs < 60
    best = result.best_epoch
    assert result.valid_elbo[best - 1] == max(result.valid_elbo)
    assert result.epochs - best == 2
    # the model now holds the best epoch's weights: its held-out ELBO is the best one
    # (re-estimated with another seed: a Monte Carlo check, so compared with 3 nats of slack)
    again = log_likelihood(model, valid, num_samples=1, seed=11).elbo
    assert abs(again - result.valid_elbo[best - 1]) < 3.0
    # the last epoch scored within the noise of the best one on fresh passes (no decline), while the training
    # objective still rose: the stop may be short of the optimum, and fit says so
    message = str(caught[0].message)
    assert f"It stopped early after epoch {result.epochs}, 2 epochs after its best record (epoch {best})" in message
    assert "raise patience" in message
    last = torch.tensor(result.train_elbo[-5:], dtype=torch.float64)
    assert torch.linalg.lstsq(torch.stack([torch.arange(5.0, dtype=torch.float64), torch.ones(5, dtype=torch.float64)],
                                          1), last[:, None]).solution[0].item() > 0.1  # nats per example per epoch


def test_a_lucky_validation_record_does_not_stop_the_fit():
    """mu ~ N(0, 10^2), x_i ~ N(mu, 1), a Normal guide on mu, one step an epoch, patience 5. The one-draw
    validation ELBO is noisy enough that the first epochs' record is luck: the plain rule stopped by epoch 10
    with the guide's mean 50 posterior sd from the exact one (seeds 0-2). The fresh paired passes see that the
    parameters still improve and train on."""

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    x = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 3.0
    train, valid = x[:300], x[300:]
    precision = 1 / 100 + len(train)  # the conjugate posterior
    mean, sd = train.sum().item() / precision, precision ** -0.5
    pyro.clear_param_store()
    with pytest.warns(ConvergenceWarning) as caught:
        result = fit(model, train, guide=guide, valid=valid, patience=5, epochs=400, batch_size=300, lr=0.05,
                     progress=False)
    assert result.stopped_early and result.epochs > 50
    # measured 0.9-1.5 sd over seeds 0-2: the stop comes where five steps gain less than eight paired passes
    # can see; the guide's scale is then still about 5 times the posterior's (lr 0.05 moves it slowly), and the
    # stationarity check, with 8 draws of the global mu per chunk, says so
    assert abs(pyro.param("loc").item() - mean) < 3 * sd
    assert pyro.param("scale").item() > 3 * sd
    message = str(caught[0].message)
    assert "far from a stationary point" in message and "It stopped early after epoch" in message


def _coin(x):
    """Pyro's first tutorial: a Beta(2, 2) prior on a coin's bias, a Beta guide of two parameters."""
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(p), obs=x)


def _beta_guide(x, a=1.0, b=1.0):
    a = pyro.param("a", torch.tensor(a), constraint=dist.constraints.positive)
    b = pyro.param("b", torch.tensor(b), constraint=dist.constraints.positive)
    pyro.sample("p", dist.Beta(a, b))


_FLIPS = (torch.rand(300, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def _posterior(flips):
    heads = flips.sum()
    return 2 + heads, 2 + len(flips) - heads


def _logit_sd(a, b):
    """The sd of logit p under Beta(a, b)."""
    return (torch.polygamma(1, a) + torch.polygamma(1, b)).sqrt()


def test_guide_gap_weighs_a_wide_guide_into_the_exact_posterior():
    """The posterior of the coin is Beta(2 + heads, 2 + tails); of logit p its mean is digamma(a) - digamma(b) and
    its variance trigamma(a) + trigamma(b). From a guide far too wide (Beta(1, 1)), the importance-weighted
    moments are the exact ones within 5 standard errors (mean: sd / sqrt(ESS); sd: sd / sqrt(2 ESS)), and the
    gap is called far; the exact posterior as the guide is not. (About one draw in ten carries weight: 500
    draws are too few, so four times as many are taken, and again.)"""
    a, b = _posterior(_FLIPS)
    mean, sd = (torch.digamma(a) - torch.digamma(b)).item(), _logit_sd(a, b).item()
    pyro.clear_param_store()
    program = Program(_coin, _beta_guide)
    program.validate(_FLIPS)
    gap = guide_gap(program, (_FLIPS,), 500, max_samples=16_000, chunk_cells=30_000)  # 100 draws at a time
    assert gap.site == "p" and gap.num_samples > 500 and gap.effective_samples > GAP_MIN_EFFECTIVE
    ess = gap.effective_samples
    assert abs(gap.posterior_mean - mean) < 5 * sd / ess ** 0.5
    assert abs(gap.posterior_sd / sd - 1) < 5 / (2 * ess) ** 0.5
    assert gap.far and gap.guide_sd > 10 * sd
    assert guide_gap(program, (_FLIPS,), 500) is None  # too few effective draws, and no more asked for
    # out of time after the first chunk: it gives up rather than overrun a fit's end
    assert guide_gap(program, (_FLIPS,), 4000, chunk_cells=30_000, max_seconds=0.0) is None

    pyro.clear_param_store()
    program = Program(_coin, lambda x: _beta_guide(x, a.item(), b.item()))
    program.validate(_FLIPS)
    gap = guide_gap(program, (_FLIPS,), 1000)
    assert not gap.far and gap.effective_samples > 900 and gap.shift < 0.2 and abs(gap.guide_sd / sd - 1) < 0.1


def test_the_coin_fitted_with_the_defaults_is_called_short_of_its_posterior():
    """fit's defaults (10 epochs of lr 1e-3: 30 steps) leave the Beta guide where it started, about 10 times as
    wide as the posterior (15 in logit p, where the message measures it); for this seed the objective's course
    and the stationarity check see nothing in the noise of one draw of p, and a patience of 5 stopped such a
    fit after 9 epochs. Both are now called short of the posterior, by the importance weights; the same story
    fitted for 3,000 full-batch steps of lr 0.05 (the guide within 1.2 times the posterior's sd, measured) is
    not."""
    for settings in ({}, {"valid": _FLIPS[:100], "patience": 5, "epochs": 400, "lr": 0.01, "batch_size": 300}):
        pyro.clear_param_store()
        with pytest.warns(ConvergenceWarning, match="the guide is far from the posterior") as caught:
            fit(_coin, _FLIPS if not settings else _FLIPS[100:], guide=_beta_guide, progress=False, **settings)
        # the guide's width against the posterior's, of logit p, in closed form (trigamma), as the message has it
        # from the weighted draws (their sd within 20%: 4 standard errors at 200 effective draws, the fewest used)
        ratio = (_logit_sd(pyro.param("a"), pyro.param("b")) / _logit_sd(*_posterior(_FLIPS[100:] if settings
                                                                                     else _FLIPS))).item()
        found = float(re.search(r"([\d.]+) times as wide", str(caught[0].message)).group(1))
        assert ratio > 10 and abs(found / ratio - 1) < 0.2
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit(_coin, _FLIPS, guide=_beta_guide, epochs=3000, batch_size=300, lr=0.05, progress=False)



def _regression(x):
    """y_n ~ N(w . d_n, 1), w ~ N(0, 10^2 I): its posterior is Gaussian, N(P^-1 D^T y, P^-1), P = D^T D + I / 100."""
    w = pyro.sample("w", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x[:, :3] * w).sum(-1), 1.0), obs=x[:, 3])


def _regression_rows(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    design = torch.randn(n, 3, generator=g)
    design[:, 1] = design[:, 0] + 0.2 * torch.randn(n, generator=g)  # correlated: the mean field is narrow
    return torch.cat([design, (design @ torch.tensor([1.0, -1.0, 0.5]) + torch.randn(n, generator=g))[:, None]], 1)


def test_newton_gap_finds_the_gaussian_posterior_and_calls_a_narrow_off_centre_guide_short():
    """A mean-field guide of correlated weights, fitted for 50 epochs at lr 0.01: narrower than the posterior, so
    the importance weights cannot say (k̂ >= 0.7), and 2-6 posterior sds off-centre, which no check saw. The
    posterior is Gaussian, so from the guide's draws the Newton step lands on its mean exactly and the inverse of
    E_q[-hess log p] is its covariance: both equal the closed form to float precision. The fit now warns, naming
    the latent; 800 epochs of lr 0.05 (0.06 sd off, measured) do not."""
    x = _regression_rows(seed=1)
    design, y = x[:, :3].double(), x[:, 3].double()
    precision = design.T @ design + torch.eye(3, dtype=torch.float64) / 100
    mean, sd = torch.linalg.solve(precision, design.T @ y), torch.linalg.inv(precision).diagonal().sqrt()
    pyro.clear_param_store()
    program = Program(_regression, "auto_normal")
    with pytest.warns(ConvergenceWarning, match=r"by the posterior's gradient and curvature where the guide draws "
                                                r"\(64 draws; a Newton step from the guide's mean\), w\[0\] has") \
            as caught:
        fit(program, x, epochs=50, lr=0.01, seed=1, progress=False)
    assert len(caught) == 1
    gap = newton_gap(program, (x,))
    assert gap.far and gap.shift > 5 and gap.shift_stderr < 0.1  # the truth: 5.65 sd off (benchmarks/fit_trust.py)
    assert gap.posterior_mean == pytest.approx(mean[gap.index[0]].item(), abs=1e-6)
    assert gap.posterior_sd == pytest.approx(sd[gap.index[0]].item(), rel=1e-6)
    assert gap.optimum_sd == pytest.approx(precision[gap.index[0], gap.index[0]].rsqrt().item(), rel=1e-6)
    pyro.clear_param_store()
    program = Program(_regression, "auto_normal")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit(program, x, epochs=800, lr=0.05, seed=1, progress=False)
    assert not newton_gap(program, (x,)).far


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "graph", "iwae"])
def test_every_estimator_trains_the_vae(digits, elbo):
    x = digits["train"].x[:500]
    model = _small_vae()
    before = log_likelihood(model, x, num_samples=50, seed=1).mean
    fit(model, x, elbo=elbo, num_particles=2, epochs=3, batch_size=100, lr=1e-2, progress=False)
    after = log_likelihood(model, x, num_samples=50, seed=1).mean
    assert after > before + 50  # from ~-540 nats at initialisation; each estimator climbs fast


def test_iwae_loss_equals_the_importance_weighted_bound(digits):
    x = digits["valid"].x[:64]
    model = _small_vae()
    objective = ELBO(Program(model), "iwae", num_particles=500)
    with torch.no_grad():
        loss = objective(x).item() / 64
    bound = log_likelihood(model, x, num_samples=500, seed=2)
    # two independent draws of the K = 500 bound; their difference is within 5 standard errors
    assert abs(-loss - bound.mean) < 5 * bound.stderr * 2**0.5 + 1e-3


def test_fit_isolates_parameters_of_two_models():
    x = torch.bernoulli(torch.full((64, 5), 0.8), generator=torch.Generator().manual_seed(0))
    a, b = IndependentBernoulli(5), IndependentBernoulli(5)
    fit(a, x, epochs=20, batch_size=64, lr=0.1, progress=False)
    assert torch.equal(b.logits, torch.zeros(5))  # untouched
    assert len(pyro.get_param_store()) == 0  # nothing left in Pyro's global store


def test_a_new_autoguide_ignores_stale_parameters_of_an_earlier_one():
    # Two plain models fitted one after the other with the same autoguide class: the second
    # guide must not take over the first one's parameters from Pyro's global store.
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    first = fit(model, torch.randn(20, 3) + 5.0, guide="auto_multivariate_normal", epochs=200, batch_size=20,
                lr=0.05, progress=False)
    data = torch.randn(200, 5) - 2.0
    second = fit(model, data, guide="auto_multivariate_normal", epochs=300, batch_size=200, lr=0.05,
                 progress=False)
    # the posterior mean of loc (Normal-Normal, closed form) is n xbar / (n + 1/100), its sd
    # 1/sqrt(200) = 0.07; single-sample SVI at lr 0.05 jitters on that scale: 3 sds of slack.
    # Without the fix the second fit crashes, or starts from the first guide's 3-dim state.
    expected = data.sum(0) / (200 + 0.01)
    assert torch.allclose(second.guide.loc.detach(), expected, atol=0.21)
    assert first.guide.loc.shape == (3,)  # the first guide keeps its own parameters


def test_a_second_iaf_autoguide_of_a_plain_model_fits():
    # Pyro's AutoIAFNormal files one tensor under two names in the global store (_prototype_tensor
    # and its first layer's weight); forgetting the first guide's entries raised KeyError there.
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    fit(model, torch.randn(20, 2) + 5.0, guide="auto_iaf_normal", epochs=5, batch_size=20, progress=False,
        convergence_tol=None)
    data = torch.randn(200, 2) - 2.0
    second = fit(model, data, guide="auto_iaf_normal", epochs=300, batch_size=200, lr=0.05, progress=False)
    draws = pyro.infer.Predictive(model, guide=second.guide, num_samples=2000, return_sites=["loc"])(data)["loc"]
    # the posterior of loc (Normal-Normal) has mean n xbar / (n + 1/100) and sd 1/sqrt(200) = 0.07;
    # 2,000 guide draws estimate its mean within 0.002, single-sample SVI jitters by about one sd: 3 sds of slack.
    expected = data.sum(0) / (200 + 0.01)
    assert torch.allclose(draws.reshape(-1, 2).mean(0), expected, atol=0.21)


def test_bf16_runs_the_networks_in_bfloat16_and_keeps_the_elbo_in_float32(digits):
    x = digits["train"].x[:256]
    model = _small_vae()
    fp32, bf16 = (ELBO(Program(model), precision=p) for p in ("fp32", "bf16"))
    losses = {}
    for name, objective in (("fp32", fp32), ("bf16", bf16)):
        torch.manual_seed(0)  # the same draw of z for both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            assert model.decoder(torch.zeros(1, 4)).dtype == (torch.bfloat16 if name == "bf16" else torch.float32)
        losses[name] = objective(x)
    assert losses["bf16"].dtype == torch.float32
    # bfloat16 keeps 8 significant bits: products of 784 inputs are off by ~1e-3 relatively
    assert abs(losses["bf16"].item() / losses["fp32"].item() - 1) < 1e-2
    assert losses["bf16"].item() != losses["fp32"].item()  # the bf16 path was really taken
    result = fit(model, x, epochs=3, batch_size=64, lr=1e-2, precision="bf16", progress=False)
    assert result.train_elbo[-1] > result.train_elbo[0] + 50


def test_update_takes_adams_first_step_and_then_the_steps_fit_takes():
    x = torch.bernoulli(torch.full((100, 3), 0.25), generator=torch.Generator().manual_seed(0))
    config = FitConfig(epochs=4, batch_size=100, lr=0.1, progress=False, convergence_tol=None)
    fitted = IndependentBernoulli(3)
    result = fit(fitted, x, config)
    model = IndependentBernoulli(3)
    program = Program(model)
    trainer = Trainer(program, config)
    with program.param_scope():
        state = trainer.init(x)
        before = model.logits.detach().clone()
        nll = -model.log_prob(x).sum().item()
        state, loss = trainer.update(state, x)
        # the loss of an exact model is -log p(x) of all rows at the parameters the step started from
        assert loss == pytest.approx(nll, rel=1e-6) and state.losses == [loss / 100]
        # Adam's first step moves each parameter by lr against its gradient's sign (m / sqrt(v) = g / |g|),
        # the gradient of -log p(x) being N sigmoid(logit_d) - sum_n x_nd
        gradient = 100 * torch.sigmoid(before) - x.sum(0)
        torch.testing.assert_close(model.logits.detach(), before - 0.1 * gradient.sign(), rtol=0, atol=1e-6)
        for _ in range(3):
            state, loss = trainer.update(state, x)
    # fit's loop is init and update over the same full batch: the same losses and parameters, bit for bit
    assert state.step == 4 and state.losses == result.losses and torch.equal(model.logits, fitted.logits)


def test_a_trainer_holds_all_its_state_from_construction():
    x = torch.bernoulli(torch.full((100, 3), 0.25), generator=torch.Generator().manual_seed(0))
    config = FitConfig(epochs=2, batch_size=30, progress=False, convergence_tol=None)
    program = Program(IndependentBernoulli(3))
    trainer = Trainer(program, config)
    declared = set(vars(trainer))
    result = trainer.run(x, valid=(x[:20], None))
    assert set(vars(trainer)) == declared and result.steps == 2 * 4 and len(result.valid_elbo) == 2
    with pytest.raises(RuntimeError, match="Trainer.update before Trainer.init"):
        Trainer(program, config).update(TrainState(), x)


def test_graph_baselines_follow_the_batch_size_and_stay_out_of_pyros_store(tmp_path):
    """TraceGraph_ELBO's decaying-average baseline is a running average per position of the batch, kept by Pyro
    in its global store: fit crashed on a smaller last minibatch (300 rows in batches of 128) and in its
    stationarity check (chunks of other sizes), and left the average behind. From a poor start (4.0 nats per row
    below), the fit must reach EM's log-likelihood (fit_mle, a second algorithm) within 0.005 nats per row (it
    ends 0.001 below; the rest is the score function's noise), leave a user's own entry of that name as it was,
    and checkpoint the averages: a run resumed after 3 of 6 epochs ends bit for bit where a straight run does."""
    from pyro.nn import PyroModule, PyroParam

    from ppgen.inference.objectives import BASELINE_PREFIX
    from ppgen.models import GaussianMixture

    class Assign(PyroModule):  # q(c | x) = Categorical(softmax(a x + b))
        def __init__(self):
            super().__init__()
            self.a, self.b = PyroParam(torch.zeros(2)), PyroParam(torch.zeros(2))

        def forward(self, x, y=None):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("c", dist.Categorical(logits=x * self.a + self.b),
                            infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}})

    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(150, 1, generator=generator) - 3, torch.randn(150, 1, generator=generator) + 3])
    best = GaussianMixture(1, 2).fit_mle(x).log_prob(x).mean().item()
    pyro.get_param_store()[BASELINE_PREFIX + "c"] = torch.ones(3)  # a user's own SVI run

    def run(*epochs, folder=None):
        model, guide = GaussianMixture(1, 2), Assign()
        with torch.no_grad():
            model.loc.copy_(torch.tensor([[-1.0], [1.0]]))
        for n in epochs:
            fit(model, x, guide=guide, elbo="graph", epochs=n, batch_size=128, lr=0.05, progress=False,
                checkpoint_dir=folder, resume=folder is not None, convergence_tol=None if n < 100 else 1e-3)
        return model, torch.cat([p.detach().flatten() for p in [*model.parameters(), *guide.parameters()]])

    model, _ = run(100)
    assert model.log_prob(x).mean().item() == pytest.approx(best, abs=0.005)
    assert torch.equal(run(6)[1], run(3, 6, folder=tmp_path)[1])
    assert list(pyro.get_param_store().keys()) == [BASELINE_PREFIX + "c"]
    assert torch.equal(pyro.get_param_store()[BASELINE_PREFIX + "c"], torch.ones(3))
