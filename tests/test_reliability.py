"""Bad data, diverging runs and untrustworthy checkpoints get clear errors (issue: reliability)."""

import os

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppgen import NADE, VAE, IndependentBernoulli, fit
from ppgen.data import NpyRows
from ppgen.inference import DivergenceError, NonFiniteLossError
from ppgen.inference.checkpoint import RunLock, load_checkpoint, save_checkpoint

X = torch.bernoulli(torch.full((40, 6), 0.4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model", [VAE(6, z_dim=2, hidden=4), NADE(6, hidden=4)])
def test_float64_numpy_rows_are_converted_exactly(model):
    result = fit(model, X.double().numpy(), epochs=2, batch_size=20, progress=False)  # NumPy's default dtype
    assert result.steps == 4


def test_lossy_conversion_warns_once():
    class RealValued(IndependentBernoulli):
        data_support = "real"

    model = RealValued(3)
    x = torch.tensor([[0.1, 0.2, 1.0 / 3.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="converted from torch.float64 to the model's torch.float32, which rounds 3"):
        assert model.check_data(x).dtype == torch.float32
    model.check_data(x)  # once per model: no second warning (warnings are errors in this suite)


def test_empty_truncated_and_complex_npy_files_are_refused_by_name(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"empty.npy is empty: it holds an array of shape \(0, 4\)"):
        NpyRows(tmp_path / "empty.npy")
    np.save(tmp_path / "whole.npy", np.ones((100, 4), dtype=np.uint8))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-50])
    with pytest.raises(ValueError, match="cut.npy is truncated: its header promises 100 rows"):
        NpyRows(tmp_path / "cut.npy")
    np.save(tmp_path / "complex.npy", np.ones((3, 4), dtype=np.complex64))
    with pytest.raises(ValueError, match="complex.npy holds complex numbers"):
        NpyRows(tmp_path / "complex.npy")
    with pytest.raises(TypeError, match="must hold real numbers"):
        fit(IndependentBernoulli(4), torch.ones(3, 4, dtype=torch.complex64), progress=False)


@pytest.mark.parametrize("options, message", [
    ({"lr": True}, "lr must be a positive number, got True"),
    ({"seed": 1.5}, "seed must be an int, got 1.5"),
    ({"epochs": True}, "epochs must be a positive int, got True"),
    ({"resume": "yes", "checkpoint_dir": "x"}, "resume must be True or False"),
])
def test_hyperparameters_are_type_checked(options, message):
    with pytest.raises(ValueError, match=message):
        fit(IndependentBernoulli(6), X, progress=False, **options)


def test_a_diverging_run_stops_with_a_clear_error(digits):
    with pytest.raises((DivergenceError, NonFiniteLossError)) as caught:
        fit(VAE(784, z_dim=4, hidden=32), digits["train"].x[:512], epochs=20, batch_size=64, lr=10.0,
            progress=False)
    assert "diverged" in str(caught.value) or "first non-finite:" in str(caught.value)


def test_the_non_finite_guard_always_names_where():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            # each term is finite (~ -1e38), their sum overflows to -inf
            pyro.sample("x", dist.Normal(loc * 0 + 1e19, 1.0), obs=x)

    with pytest.raises(NonFiniteLossError, match="none on its own .* log-density of site 'x' in the model"):
        fit(model, torch.zeros(50), guide=lambda x: None, epochs=1, batch_size=50, progress=False,
            divergence_factor=None)


def _checkpointed(tmp_path, **options):
    settings = {"epochs": 2, "batch_size": 20, "checkpoint_dir": tmp_path, "progress": False, **options}
    return fit(IndependentBernoulli(6), X, **settings)


def test_a_flipped_byte_is_refused(tmp_path):
    _checkpointed(tmp_path)
    path = tmp_path / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    payload = load_checkpoint(path)
    (logits,) = (value.numpy().tobytes() for name, value in payload["params"].items() if name.endswith("logits"))
    at = bytes(data).find(logits)  # inside the tensor record of the parameters
    assert at > 0
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: its contents do not match their SHA-256 digest"):
        _checkpointed(tmp_path, resume=True, epochs=3)


def test_resume_with_a_new_lr_and_weight_decay_applies_them_and_says_so(tmp_path, capsys):
    _checkpointed(tmp_path)
    capsys.readouterr()
    fit(IndependentBernoulli(6), X, epochs=3, batch_size=20, checkpoint_dir=tmp_path, resume=True, lr=0.05,
        weight_decay=0.01, progress=True)
    assert "changed: lr 0.001 -> 0.05, weight_decay 0.0 -> 0.01, epochs 2 -> 3" in capsys.readouterr().err
    optimizer_state = load_checkpoint(tmp_path / "checkpoint.pt")["optimizers"]["params"]
    assert optimizer_state["param_groups"][0]["lr"] == 0.05
    assert optimizer_state["param_groups"][0]["weight_decay"] == 0.01


def test_resume_with_another_optimizer_is_refused(tmp_path):
    _checkpointed(tmp_path)
    with pytest.raises(ValueError, match="it was written with optimizer='adam', this call has optimizer='adagrad'"):
        fit(IndependentBernoulli(6), X, epochs=3, batch_size=20, checkpoint_dir=tmp_path, resume=True,
            optimizer="adagrad", progress=False)


def test_two_fits_in_one_folder_are_refused_and_a_dead_owner_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(ValueError, match="is in use by another fit"):
        _checkpointed(tmp_path)
    lock.write_text("999999999")  # no such process: a run that was killed
    _checkpointed(tmp_path)
    assert not lock.exists()  # released at the end
    assert RunLock(tmp_path).acquire().held


def test_incomplete_and_non_finite_checkpoints_are_refused_before_training(tmp_path):
    _checkpointed(tmp_path)
    path = tmp_path / "checkpoint.pt"
    payload = load_checkpoint(path)
    del payload["optimizers"]
    save_checkpoint(payload, path)
    with pytest.raises(ValueError, match="lacks 'optimizers': it is incomplete"):
        _checkpointed(tmp_path, resume=True)
    _checkpointed(tmp_path / "b")
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    (name,) = payload["params"]
    payload["params"][name][2] = float("nan")
    save_checkpoint(payload, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ValueError, match=f"non-finite values in parameter '{name}'"):
        _checkpointed(tmp_path / "b", resume=True)


def test_a_checkpoint_folder_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "below"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            fit(IndependentBernoulli(6), X, epochs=1, checkpoint_dir=folder, progress=False)
