"""Exact resume for every objective of every family, and only of the same model.

An interrupted fit resumed with ``resume=True`` must end where an uninterrupted run ends, bit for bit:
its parameters, its buffers (batch-norm statistics, actnorm's flag), the objective's own state
(persistent chains, a replay buffer, WGAN-GP's critic count) and every step's loss. A resume with a
model built with another configuration must be refused, naming the argument that changed."""

import pytest
import torch

from ppgen import VAE, fit
from ppgen.inference import Program
from ppgen.inference.checkpoint import load_checkpoint, save_checkpoint
from ppgen.inference.signals import DeferredSignals
from ppgen.models.autoregressive import FVSBN, MADE, NADE
from ppgen.models.diffusion.binary import BinaryDiffusion
from ppgen.models.diffusion.gaussian import GaussianDiffusion
from ppgen.models.energy import EBM, RBM, ContrastiveDivergence
from ppgen.models.energy.ebm import LangevinContrastiveDivergence
from ppgen.models.flows import Glow, RealNVP
from ppgen.models.flows.dequantization import Dequantized
from ppgen.models.implicit import GAN, AdversarialObjective


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons of two runs, and a shared CPU
    yield
    torch.set_num_threads(threads)


def _rows(kind: str, n: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n + dim)
    if kind == "binary":
        return torch.bernoulli(torch.rand(dim, generator=g).expand(n, dim), generator=g)
    if kind == "levels":  # 8-bit pixels
        return torch.randint(0, 256, (n, dim), generator=g).float()
    return torch.rand(n, dim, generator=g)  # in [0, 1]


def _gan(loss="nonsaturating", **model):
    def build():
        program = Program(GAN(**{"x_dim": 4, "z_dim": 2, "hidden": 8, "output": "identity", **model}))
        return program, AdversarialObjective(program, loss)
    return build


def _with(model_fn, objective_fn=None):
    def build():
        program = Program(model_fn())
        return program, objective_fn(program) if objective_fn is not None else None
    return build


# every objective of every family: (the model and objective, the data); 32 rows, batches of 8, 3 epochs
CASES = {
    "vae-elbo": (_with(lambda: VAE(12, z_dim=2, hidden=4, seed=1)), ("binary", 12)),
    "nade-mle": (_with(lambda: NADE(12, hidden=4, order="random", seed=1)), ("binary", 12)),
    "rbm-cd": (_with(lambda: RBM(12, hidden=4), lambda p: ContrastiveDivergence(p, k=1)), ("binary", 12)),
    "rbm-pcd": (_with(lambda: RBM(12, hidden=4), lambda p: ContrastiveDivergence(p, k=1, persistent=True)),
                ("binary", 12)),
    "ebm-replay": (_with(lambda: EBM(4, hidden=8, steps=3),
                         lambda p: LangevinContrastiveDivergence(p, persistent=True, buffer_size=16)), ("real", 4)),
    "gan-mlp": (_gan(), ("real", 4)),
    "dcgan": (_gan(x_dim=784, z_dim=4, architecture="dcgan", channels=2, output="sigmoid"), ("real", 784)),
    "wgan-gp": (_gan("wgan-gp"), ("real", 4)),  # n_critic = 5 critic steps per generator step
    "gaussian-diffusion": (_with(lambda: GaussianDiffusion(16, shape=(1, 4, 4), num_steps=4, channels=4,
                                                           multipliers=(1,), attention=False)), ("grid", 16)),
    "binary-diffusion": (_with(lambda: BinaryDiffusion(12, num_steps=4, hidden=(8,))), ("binary", 12)),
    "glow-actnorm": (_with(lambda: Glow(16, shape=(1, 4, 4), levels=1, steps=1, hidden=4)), ("levels", 16)),
}
SETTINGS = dict(epochs=3, batch_size=8, lr=1e-2, seed=3, progress=False, convergence_tol=None)


def _data(kind: str, dim: int):
    x, valid = _rows(kind, 32, dim), _rows(kind, 16, dim)
    if kind == "grid":  # the 8-bit grid a diffusion model takes, in [0, 1]
        x, valid = (x * 255).round() / 255, (valid * 255).round() / 255
    if kind == "levels":  # a flow's: dequantized afresh every epoch; the validation rows once, with fixed noise
        return Dequantized(x), valid + torch.rand(valid.shape, generator=torch.Generator().manual_seed(0))
    return x, valid


def _fit(case, folder=None, resume=False):
    build, (kind, dim) = CASES[case]
    program, objective = build()
    x, valid = _data(kind, dim)
    result = fit(program, x, valid=valid, objective=objective, checkpoint_dir=folder, resume=resume, **SETTINGS)
    return program.generative_model, objective, result


def _state(objective):
    return {} if objective is None else objective.checkpoint_state()


def _interrupt_at(monkeypatch, cls, method, call):
    """Raise KeyboardInterrupt at the ``call``-th call of ``cls.method`` (counted from now)."""
    real, calls = getattr(cls, method), {"n": 0}

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt(f"injected at call {call} of {method}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counting)
    return lambda: monkeypatch.setattr(cls, method, real)


def _assert_equal_state(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_state(a[key], b[key], f"{where}[{key!r}]")
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_three_interrupts_resume_to_the_uninterrupted_run_bit_for_bit(case, tmp_path, monkeypatch):
    straight, straight_objective, straight_result = _fit(case)
    folder = tmp_path / "cut"
    # where a signal lands, signals.check(): at the start of the run, then per epoch before each of its 4
    # batches, per validation batch (2, or 1 where the objective has no score) and after its checkpoint
    groups = 2 if case in ("gan-mlp", "dcgan", "wgan-gp") else 1
    interrupts = [
        # in epoch 1's validation, after its first batch ran the modules (batch norm in training mode);
        # without a score: after epoch 1's checkpoint
        (DeferredSignals, "check", 7),
        # inside step 7: its forward passes ran (statistics, chains, buffer and counter moved), no update did
        (torch.optim.Adam, "step", 2 * groups + 1),
        # at the safe point before step 10 (11 without a score), in epoch 3
        (DeferredSignals, "check", 8),
    ]
    for n, (cls, method, call) in enumerate(interrupts):
        undo = _interrupt_at(monkeypatch, cls, method, call)
        with pytest.raises(KeyboardInterrupt, match="injected"):
            _fit(case, folder, resume=n > 0)
        undo()
    step = load_checkpoint(folder / "checkpoint.pt")["state"]["step"]
    assert step == (9 if straight_result.valid_elbo else 10)
    resumed, objective, result = _fit(case, folder, resume=True)
    assert result.resumed_from_step == step
    for name, value in straight.state_dict().items():  # parameters and persistent buffers
        assert torch.equal(value, resumed.state_dict()[name]), name
    _assert_equal_state(_state(straight_objective), _state(objective), "objective state")
    assert result.losses == straight_result.losses
    assert result.valid_elbo == straight_result.valid_elbo


def _gaussian(**kw):
    return GaussianDiffusion(16, shape=(1, 4, 4), channels=4, multipliers=(1,), attention=False, **kw)


# (the model for each value of one argument, the data, the two values): every change the parameter shapes miss
CHANGES = {
    "gaussian num_steps": (lambda v: _gaussian(num_steps=v), ("grid", 16), "num_steps", 20, 1000),
    "gaussian schedule": (lambda v: _gaussian(num_steps=4, schedule=v), ("grid", 16), "schedule", "linear", "cosine"),
    "gaussian variance": (lambda v: _gaussian(num_steps=4, variance=v), ("grid", 16), "variance", "beta", "posterior"),
    "binary num_steps": (lambda v: BinaryDiffusion(12, num_steps=v, hidden=(8,)), ("binary", 12), "num_steps", 4, 8),
    "gan output": (lambda v: GAN(4, z_dim=2, hidden=8, output=v), ("real", 4), "output", "sigmoid", "identity"),
    "ebm steps": (lambda v: EBM(4, hidden=8, steps=v), ("real", 4), "steps", 3, 5),
    "ebm step_size": (lambda v: EBM(4, hidden=8, steps=3, step_size=v), ("real", 4), "step_size", 0.25, 0.1),
    "realnvp alpha": (lambda v: RealNVP(16, shape=(1, 4, 4), num_scales=1, hidden=4, blocks=1, alpha=v),
                      ("levels", 16), "alpha", 0.05, 0.01),
    "made order": (lambda v: MADE(12, hidden_sizes=(8,), order=v), ("binary", 12), "order", "natural", "random"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_resume_with_another_configuration_is_refused_naming_it(change, tmp_path):
    build, (kind, dim), name, before, after = CHANGES[change]
    x, _ = _data(kind, dim)
    settings = {**SETTINGS, "epochs": 1, "checkpoint_dir": tmp_path}
    fit(build(before), x, **settings)
    with pytest.raises(ValueError, match=f"it was written with {name}={before!r}, this model has {name}={after!r}"):
        fit(build(after), x, **{**settings, "epochs": 2, "resume": True})
    fit(build(before), x, **{**settings, "epochs": 2, "resume": True})  # the same configuration resumes


def test_a_resume_refuses_a_model_whose_configuration_buffers_differ_and_says_the_seeds_differ(tmp_path):
    x, _ = _data("binary", 6)
    settings = {**SETTINGS, "epochs": 1, "checkpoint_dir": tmp_path}
    fit(FVSBN(6, order="random", seed=1), x, **settings)
    # the seed draws the order, whose index table is a buffer derived from it (not saved, as it is configuration)
    with pytest.raises(ValueError, match=r"buffer 'owners\.0\._flat_index' was .*built with seed=1, this model "
                                         r"with seed=2"):
        fit(FVSBN(6, order="random", seed=2), x, **{**settings, "epochs": 2, "resume": True})


def test_another_seed_resumes_with_the_checkpoints_masks(tmp_path):
    """MADE's seed draws its masks, persistent buffers that the checkpoint carries: a model built with another
    seed continues the run of the first, masks included."""
    x, _ = _data("binary", 12)
    settings = {**SETTINGS, "epochs": 2}
    straight = MADE(12, hidden_sizes=(8,), seed=1)
    fit(straight, x, **settings)
    fit(MADE(12, hidden_sizes=(8,), seed=1), x, **{**settings, "epochs": 1, "checkpoint_dir": tmp_path})
    resumed = MADE(12, hidden_sizes=(8,), seed=2)
    assert not torch.equal(resumed.mask0, straight.mask0)
    fit(resumed, x, **settings, checkpoint_dir=tmp_path, resume=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_checkpoint_from_before_the_model_configuration_was_recorded_still_resumes(tmp_path):
    """A long run's checkpoints (format 3, written before the model's arguments, buffers and the objective's
    state were) must resume: what they lack is unknown, not a mismatch."""
    x, _ = _data("binary", 12)
    settings = {**SETTINGS, "epochs": 2}
    straight = VAE(12, z_dim=2, hidden=4, seed=1)
    fit(straight, x, **settings)
    fit(VAE(12, z_dim=2, hidden=4, seed=1), x, **{**settings, "epochs": 1, "checkpoint_dir": tmp_path})
    path = tmp_path / "checkpoint.pt"
    payload = load_checkpoint(path)
    assert payload["config"]["model_arguments"]["hidden"] == 4 and "model_buffers" in payload["config"]
    old = {key: value for key, value in payload.items() if key not in ("buffers", "objective")}
    old["config"] = {k: v for k, v in payload["config"].items() if k not in ("model_arguments", "model_buffers")}
    save_checkpoint(old, path)
    resumed = VAE(12, z_dim=2, hidden=4, seed=1)
    assert fit(resumed, x, **settings, checkpoint_dir=tmp_path, resume=True).resumed_from_step == 4
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


@pytest.mark.parametrize("objective, name, before, after", [
    (ContrastiveDivergence, "k", 1, 5),
    (AdversarialObjective, "n_critic", 1, 5),
])
def test_a_resume_with_other_objective_settings_is_refused_naming_them(objective, name, before, after, tmp_path):
    rbm = objective is ContrastiveDivergence
    x, _ = _data("binary" if rbm else "real", 12 if rbm else 4)
    model = RBM(12, hidden=4) if rbm else GAN(4, z_dim=2, hidden=8)
    settings = {**SETTINGS, "epochs": 1, "checkpoint_dir": tmp_path}
    fit(model, x, objective=lambda p: objective(p, **{name: before}), **settings)
    with pytest.raises(ValueError, match=f"trained by {objective.__name__} with {name}={before!r}, this call's "
                                         f"objective has {name}={after!r}"):
        fit(model, x, objective=lambda p: objective(p, **{name: after}), **{**settings, "epochs": 2, "resume": True})
    fit(model, x, objective=lambda p: objective(p, **{name: before}), **{**settings, "epochs": 2, "resume": True})
