"""Every bad input gets an error that names what was wrong."""

import json

import pytest
import torch

from ppgen import FVSBN, VAE, IndependentBernoulli, fit, load_dataset, log_likelihood
from ppgen.inference.checkpoint import save_atomic, write_json_atomic

X = torch.bernoulli(torch.full((20, 4), 0.5), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("data, error, message", [
    (X[0], ValueError, r"must have shape \(N, D\), got shape \(4,\)"),
    (X[:, :3], ValueError, "has 3 columns, but the model expects 4"),
    (X.to(torch.uint8), TypeError, "must hold floats, got dtype torch.uint8; convert it with .float()"),
    (X * 0.5, ValueError, r"only 0 and 1 for a Bernoulli likelihood; found 0.5 at row \d+, column \d+"),
    (torch.where(torch.arange(80).reshape(20, 4) == 9, float("nan"), X), ValueError,
     r"contains NaN or inf \(first at row 2, column 1\)"),
    (X[:0], ValueError, r"data is empty"),
    ([1, 2], TypeError, "must be a torch.Tensor or a NumPy array, got int"),
])
def test_bad_data(data, error, message):
    with pytest.raises(error, match=message):
        fit(IndependentBernoulli(4), data, epochs=1, progress=False)
    if not isinstance(data, list):
        with pytest.raises(error, match=message):
            log_likelihood(IndependentBernoulli(4), data)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"epochs": 0}, "epochs must be a positive int, got 0"),
    ({"lr": -1.0}, "lr must be a positive number, got -1.0"),
    ({"weight_decay": -1e-4}, "weight_decay must be a non-negative number, got -0.0001"),
    ({"optimizer": "sgd"}, "optimizer must be one of \\('adam', 'adagrad'\\), got 'sgd'"),
    ({"elbo": "tracee"}, "elbo must be one of"),
    ({"num_particles": 0}, "num_particles must be a positive int, got 0"),
    ({"patience": 3}, "patience \\(early stopping\\) needs valid= data"),
    ({"resume": True}, "resume=True needs checkpoint_dir="),
    ({"guide": "auto_nromal"}, "unknown autoguide 'auto_nromal'; choices: auto_normal"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ({"precision": "fp16"}, "precision must be one of \\('fp32', 'bf16'\\), got 'fp16'"),
    ({"strategy": "horovod"}, "strategy must be one of \\('auto', 'single', 'ddp'\\), got 'horovod'"),
    ({"num_workers": -1}, "num_workers must be an int >= 0, got -1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(IndependentBernoulli(4), X, progress=False, **kwargs)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown data set 'digitz'; choices: digits, digits_grey, digits_colour, binarized_mnist, mnist"):
        load_dataset("digitz")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("digits", "dev")
    with pytest.raises(ValueError, match="a plain model function needs guide="):
        fit(lambda x: None, X, progress=False)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(4, likelihood="poisson")


def test_corrupt_checkpoints_are_refused(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="checkpoint .*checkpoint.pt is corrupt or unreadable"):
        fit(IndependentBernoulli(4), X, checkpoint_dir=tmp_path, resume=True, progress=False)
    save_atomic({"weights": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not a ppgen checkpoint"):
        fit(IndependentBernoulli(4), X, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_a_failed_json_write_leaves_the_old_file_whole(tmp_path):
    path = write_json_atomic({"epochs": [1, 2]}, tmp_path / "results" / "curve.json")  # makes the folder
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic({"epochs": [1, 2, 3], "model": object()}, path)  # fails halfway through the text
    assert json.loads(path.read_text()) == {"epochs": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["curve.json"]  # no temporary file left behind
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert path.stat().st_mode == plain.stat().st_mode  # the permissions of a file written directly


def test_resume_refuses_other_settings_and_fresh_runs_refuse_to_overwrite(tmp_path):
    fit(IndependentBernoulli(4), X, epochs=1, batch_size=10, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="written with batch_size=10, this call has batch_size=5"):
        fit(IndependentBernoulli(4), X, epochs=2, batch_size=5, checkpoint_dir=tmp_path, resume=True,
            progress=False)
    with pytest.raises(ValueError, match="written with model='IndependentBernoulli', this call has model='FVSBN'"):
        fit(FVSBN(4), X, epochs=2, batch_size=10, checkpoint_dir=tmp_path, resume=True, progress=False)
    other_rows = torch.bernoulli(torch.full((20, 4), 0.5), generator=torch.Generator().manual_seed(9))
    with pytest.raises(ValueError, match="written with data="):
        fit(IndependentBernoulli(4), other_rows, epochs=2, batch_size=10, checkpoint_dir=tmp_path, resume=True,
            progress=False)
    with pytest.raises(ValueError, match="already exists; pass resume=True"):
        fit(IndependentBernoulli(4), X, epochs=1, batch_size=10, checkpoint_dir=tmp_path, progress=False)


def test_checkpoints_load_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"format": "ppgen-checkpoint-1", "payload": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        fit(IndependentBernoulli(4), X, checkpoint_dir=tmp_path, resume=True, progress=False)
