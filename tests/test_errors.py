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
    ({"checkpoint_minutes": 0}, "checkpoint_minutes must be a positive number or None, got 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(IndependentBernoulli(4), X, progress=False, **kwargs)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown data set 'digitz'; choices: digits, digits_grey, digits_colour, binarized_mnist, mnist"):
        load_dataset("digitz")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("digits", "dev")
    with pytest.raises(ValueError, match="observes nothing"):  # a plain story without a guide: nothing to guide
        fit(lambda x: None, X, progress=False)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(4, likelihood="poisson")
    with pytest.raises(TypeError, match=r"fit\(\) got unknown options \['epoch'\]; the settings are the fields"):
        fit(IndependentBernoulli(4), X, epoch=3, progress=False)
    with pytest.raises(TypeError, match=r"config must be a FitConfig, got Tensor; labels or conditions go with the "
                                        r"rows as one argument, fit\(model, \(x, y\)\)"):
        fit(IndependentBernoulli(4), X, X[:, 0], progress=False)  # SVI.step(x, y)'s habit


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


# --- restore: options, sizes, scales and widths it cannot take (issue 32) ---------------------------------------

def _restorers():
    from ppgen import PPCA, BinaryDiffusion, GaussianDiffusion

    return {"GaussianDiffusion": GaussianDiffusion(16, shape=(1, 4, 4), num_steps=3, channels=4, multipliers=(1,),
                                                   attention=False),
            "BinaryDiffusion": BinaryDiffusion(16, num_steps=3, hidden=(4,)), "PPCA": PPCA(16, 2),
            "FVSBN": FVSBN(16), "VAE": VAE(16, z_dim=2, hidden=4), "IndependentBernoulli": IndependentBernoulli(16)}


BOTTOM = torch.arange(16) < 8  # the top half observed
ROWS = torch.bernoulli(torch.full((3, 16), 0.5), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, takes", [
    ("GaussianDiffusion", "GaussianDiffusion.restore takes method, steps, eta, progress"),
    ("BinaryDiffusion", "BinaryDiffusion.restore takes progress"),
    ("VAE", "vae_inpaint takes sampler, num_particles, proposal, defensive, num_moves"),
    ("PPCA", "the exact Gaussian posterior takes no options"),
    ("FVSBN", "inpainting takes num_particles"),
])
def test_restore_names_an_unknown_option_and_the_accepted_ones(name, takes):
    """The diffusion models and the VAE raised Python's own TypeError ("got an unexpected keyword argument")."""
    from ppgen.inverse import Inpaint, restore

    with pytest.raises(TypeError, match=rf"^restore got unknown option\(s\) 'bogus': {takes}$"):
        restore(_restorers()[name], ROWS, Inpaint(BOTTOM), 2, bogus=1)


@pytest.mark.parametrize("name", sorted(_restorers()))
def test_restore_refuses_more_samples_than_memory_holds_before_allocating(name):
    """num_samples=10**12 of 3 rows x 16 values is 384 TB in float64: the methods allocated it (MemoryError), or,
    for the Gaussian diffusion, started drawing them one by one."""
    import tracemalloc

    from ppgen.inverse import Inpaint, restore

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"num_samples=1,000,000,000,000 restorations of 3 rows of 16 values take "
                                             r"3.58e\+05 GiB in float64, more than half of the [\d.,e+]+ GiB free on "
                                             r"cpu: at most [\d,]+ fit"):
            restore(_restorers()[name], ROWS, Inpaint(BOTTOM), 10**12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_restore_refuses_8_bit_pixels_for_the_gaussian_diffusion():
    """y on the 0..255 scale of digits_grey: DDNM returned 99% of the observed pixels as 1 (consistency error 254)
    without a word. Noisy measurements may leave [0, 1] by up to 8 sigma."""
    from ppgen.inverse import GaussianNoise, Inpaint, restore

    model = _restorers()["GaussianDiffusion"]
    row, col = (ROWS == 1).nonzero()[0].tolist()
    with pytest.raises(ValueError, match=r"y must hold measurements on the model's pixel scale \[0, 1\] \(divide 8-bit "
                                         rf"pixels by 255\); found 255 at row {row}, column {col}"):
        restore(model, 255 * ROWS, Inpaint(BOTTOM), 1)
    with pytest.raises(ValueError, match=r"scale \[0, 1\] up to the operator's noise \(\[-0.8, 1.8\] at sigma=0.1\); "
                                         r"found -0.9 at row 0, column 0"):
        restore(model, ROWS - 0.9, GaussianNoise(0.1, 16), 1)
    assert restore(model, ROWS + 0.5, GaussianNoise(0.1, 16), 1).samples.shape == (1, 3, 16)  # 5 sigma: noise


@pytest.mark.parametrize("name", sorted(_restorers()))
def test_restore_names_y_and_the_width_the_model_needs(name):
    """PPCA with a GaussianNoise operator of any width crashed in a matrix product; the diffusion models and the
    autoregressive ones named an x or a `known` the caller never passed."""
    from ppgen.inverse import GaussianNoise, Inpaint, restore

    model = _restorers()[name]
    with pytest.raises(ValueError, match=rf"GaussianNoise\(sigma=0.1\) measures rows of width 8, but {name}'s rows "
                                         r"have x_dim=16 values"):
        restore(model, ROWS[:, :8], GaussianNoise(0.1), 1)
    if model.data_support == "binary":
        with pytest.raises(ValueError, match=r"^y must hold only 0 and 1 for a Bernoulli likelihood; found 255"):
            restore(model, 255 * ROWS, Inpaint(BOTTOM), 1)


def test_the_pixel_checks_state_the_check_that_failed():
    """Before: "(integers 0..0 plus dequantization noise)" for 2 levels and "(integers 0..254 ...)" for 256, where the
    check was integer levels 0..1 and 0..255 before any noise."""
    from ppgen.models.flows import RealNVP, dequantize

    with pytest.raises(ValueError, match=r"^x must hold pixel values in \[0, 1\] \(integer levels, before "
                                         r"dequantization\); found 2 at row 0, column 1$"):
        dequantize(torch.tensor([[1.0, 2.0]]), num_levels=2)
    with pytest.raises(ValueError, match=r"^x must hold pixel values in \[0, 255\] \(integer levels, before "
                                         r"dequantization\); found 256"):
        dequantize(torch.tensor([[256.0]]))
    # a flow's rows are dequantized: levels 0..255 plus noise in [0, 1) lie in [0, 256]
    with pytest.raises(ValueError, match=r"must hold dequantized pixel values in \[0, 256\] \(levels 0\.\.255 plus "
                                         r"noise in \[0, 1\)\); found 257 at row 0, column 3"):
        RealNVP(4, shape=(1, 2, 2), hidden=2).check_data(torch.tensor([[0.0, 1.0, 256.0, 257.0]]))


def test_the_mask_checks_say_what_they_were_given():
    """Before: "mask must be a bool tensor, got bool" for a NumPy array of bools (a bool dtype, but no tensor)."""
    import numpy as np

    from ppgen.inverse import Inpaint

    with pytest.raises(TypeError, match=r"^mask must be a bool tensor \(True = observed\), got a numpy.ndarray of "
                                        r"bool$"):
        Inpaint(np.array([True, False]))
    with pytest.raises(TypeError, match=r"^observed_mask must be a bool tensor, got a torch.Tensor of torch.int64$"):
        FVSBN(2).inpaint(torch.zeros(1, 2), torch.tensor([1, 0]), 1)
