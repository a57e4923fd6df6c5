"""Bad data, diverging runs and untrustworthy checkpoints get clear errors (issue: reliability)."""

import math
import os
import tracemalloc
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen import NADE, VAE, ConvergenceWarning, IndependentBernoulli, fit
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


# --- issue 32: divergent learning rates, half-precision rows, the full joint table, enumerated programs ----------

_G = torch.Generator().manual_seed(0)
BITS16 = torch.bernoulli(torch.rand(1, 16, generator=_G).mul(0.8).add(0.1).expand(256, 16), generator=_G)
LEVELS16 = torch.randint(0, 256, (256, 16), generator=_G).float()  # 8-bit pixels of 4x4 images
POINTS2 = torch.randn(256, 2, generator=_G) * 0.1 + 0.5


def _families():
    """Each family's tiny model and rows of its kind (flows: dequantized levels; diffusion: pixels in [0, 1])."""
    from ppgen import NSF, MAF, BinaryDiffusion, GaussianDiffusion, Glow, RealNVP
    from ppgen.models.energy import EBM, RBM
    from ppgen.models.flows import dequantize
    from ppgen.models.implicit import GAN, AdversarialObjective

    grey = dequantize(LEVELS16, 256, seed=0)
    return {
        "GAN": (lambda: GAN(2, z_dim=2, hidden=[16], output="identity"), POINTS2, {}),
        "GAN (WGAN-GP)": (lambda: GAN(2, z_dim=2, hidden=[16], output="identity"), POINTS2,
                          {"objective": lambda program: AdversarialObjective(program, "wgan-gp")}),
        "RBM (exact Z)": (lambda: RBM(16, hidden=8), BITS16, {}),
        "RBM (PCD)": (lambda: RBM(16, hidden=21), BITS16, {}),
        "EBM": (lambda: EBM(2, hidden=[16], steps=10), POINTS2, {}),
        "RealNVP": (lambda: RealNVP(16, shape=(1, 4, 4), num_scales=1, hidden=8, blocks=1), grey, {}),
        "Glow": (lambda: Glow(16, shape=(1, 4, 4), levels=1, steps=1, hidden=8, blocks=1), grey, {}),
        "MAF": (lambda: MAF(16, transforms=2, hidden=16), grey, {}),
        "NSF": (lambda: NSF(16, transforms=2, hidden=16), grey, {}),
        "GaussianDiffusion": (lambda: GaussianDiffusion(16, shape=(1, 4, 4), num_steps=20, channels=8,
                                                        multipliers=(1,), attention=False), LEVELS16 / 255, {}),
        "BinaryDiffusion": (lambda: BinaryDiffusion(16, num_steps=20, hidden=(16,)), BITS16, {}),
    }


@pytest.mark.parametrize("lr", [10.0, 1e3])
@pytest.mark.parametrize("family", sorted(_families()))
def test_a_divergent_lr_stops_every_family_with_a_divergence_error(family, lr):
    """Before issue 32 the RBM (exact Z, and PCD) at lr 10 and the NSF at lr 10 and 1e3 returned, scoring
    -14.3, -64 (AIS), -284 and -553 nats per example against the uniform model's -11.09 and -88.7, and Glow at
    both rates, RealNVP and MAF at 1e3 stopped with a NonFiniteLossError that was no DivergenceError. Each run
    here stops within its first epoch."""
    make, x, extra = _families()[family]
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match="diverged|non-finite"):
        fit(make(), x, epochs=5, batch_size=64, lr=lr, progress=False, **extra)


@pytest.mark.parametrize("family", sorted(_families()))
def test_a_sound_lr_is_not_taken_for_divergence(family):
    make, x, extra = _families()[family]
    torch.manual_seed(0)
    with warnings.catch_warnings():  # a short run may end unconverged or under the uniform model: not this test's
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(make(), x, epochs=2, batch_size=64, lr=1e-3, progress=False, **extra)
    assert result.steps == 8


def test_the_divergence_by_the_uniform_model_names_both_figures():
    """The exact RBM at lr 10 grows to 16 times the uniform model's 16 log 2 = 11.09 nats in its first epoch
    (177 nats; 462 at its worst step, under the 1000-fold guard): before issue 32 it returned after 5 epochs
    with log p(x) = -14.3 nats per example, worse than the uniform model."""
    from ppgen.models.energy import RBM

    uniform = 16 * math.log(2)
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match=rf"epoch 1 ended at [\d.]+ nats per example, more than 3 times both "
                                              rf"the first step's [\d.]+ and the uniform model's {uniform:.5g}"):
        fit(RBM(16, hidden=8), BITS16, epochs=5, batch_size=64, lr=10.0, progress=False)


def test_a_gan_whose_samples_collapse_to_one_row_is_stopped():
    """The issue's GAN: every sample exactly 0 (the generator's sigmoid saturated, so no gradient reaches
    it), its game's loss unremarkable; before issue 32 fit returned it."""
    from ppgen.models.implicit import GAN

    gan = GAN(2, z_dim=2, hidden=[8])
    with torch.no_grad():
        gan.generator[-1].bias.fill_(-200.0)  # sigmoid(-200) is 0 in float32
    assert gan.sample(5).eq(0).all()
    with pytest.raises(DivergenceError, match=r"after epoch 1, all 64 samples of GAN are one row \(their spread is "
                                              r"at most 0 in every column, the data's up to 0.1\d*\): it collapsed"):
        fit(gan, POINTS2, epochs=3, batch_size=64, lr=1e-3, progress=False)


def test_an_ebm_whose_chains_collapse_to_one_point_is_stopped():
    """An energy so steep that every Langevin chain is clipped to the corner (0, 0) of the box: its samples are
    one point, its contrastive-divergence loss a steady 1,600 nats (no growth to see); fit returned it before."""
    from ppgen.models.energy import EBM

    ebm = EBM(2, hidden=[16], steps=10)
    with torch.no_grad():
        ebm.net[0].weight.fill_(100.0)
        ebm.net[0].bias.zero_()
        ebm.net[-1].weight.fill_(1.0)
    assert ebm.sample(5).eq(0).all()
    with pytest.raises(DivergenceError, match=r"after epoch 1, all 64 samples of EBM are one row .*: it collapsed"):
        fit(ebm, POINTS2, epochs=2, batch_size=64, lr=1e-4, progress=False)


def test_non_finite_losses_are_divergence_errors():
    assert issubclass(NonFiniteLossError, DivergenceError)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_public_model_takes_rows_of_any_float_dtype(dtype):
    """One rule, the core's (GenerativeModel.check_data): rows come in the model's dtype, converted exactly
    where they can be (and with a warning where not). RealNVP's fit crashed on float16 and bfloat16 rows (and
    every flow's on float64) before issue 32, the categorical models' on bfloat16."""
    from test_protocol import _public_models, _rows, _tiny

    for name in _public_models():
        model = _tiny(name)
        x, y = _rows(model, 4)
        if not x.is_floating_point():
            continue
        rows = x.to(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # float64 -> float32 may round: warned, not this test's
            checked = model.check_data(rows)
        assert checked.is_floating_point() and checked.dtype.itemsize >= 4, (name, checked.dtype)
        assert torch.equal(checked.to(rows.dtype), rows), name
    for model, x in ((_families()["RealNVP"][0](), _families()["RealNVP"][1]), (ppgen.FullJointTable(3), X[:, :3]),
                     (ppgen.MAF(16, transforms=1, hidden=4), LEVELS16)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fit(model, x.to(dtype), epochs=1, batch_size=64, progress=False)
        assert result.steps >= 1


def test_the_full_joint_table_fits_to_its_counts():
    """Its MLE is the configurations' frequencies (FullJointTable.from_frequencies, the closed form); fit
    crashed on it before issue 32 ("element 0 of tensors does not require grad"). L-BFGS on a full batch
    reaches it; the tolerance is L-BFGS's stopping rule in float32 on 6.5 nats per row."""
    x = torch.bernoulli(torch.full((500, 6), 0.3), generator=torch.Generator().manual_seed(0))
    table = ppgen.FullJointTable(6)
    fit(table, x, epochs=50, batch_size=500, optimizer="lbfgs", progress=False)
    best = ppgen.FullJointTable.from_frequencies(x).log_prob(x).mean().item()
    assert table.log_prob(x).mean().item() == pytest.approx(best, abs=1e-4)


def _mixture(x):
    w = pyro.param("w", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=dist.constraints.simplex)
    loc = pyro.param("loc", torch.tensor([-1.0, 2.0], dtype=torch.float64))
    with pyro.plate("rows", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc[c], 1.0), obs=x)


def test_an_enumerated_pyro_mixture_is_scored_exactly():
    """log p(x) = log sum_c w_c N(x; mu_c, 1), the closed form in float64; log_likelihood refused it before issue
    32, naming an elbo='iwae' nobody chose. The mean is compared in float64 (1e-9: rounding); each row's value is
    stored in float32 (1e-6: half an ulp below 16)."""
    x = 2 * torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, loc = torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)
    closed = torch.logsumexp(w.log() + dist.Normal(loc, 1.0).log_prob(x[:, None]), -1)
    for method, named in (("auto", "exact"), ("exact", "exact"), ("iwae", "iwae")):
        result = ppgen.log_likelihood(_mixture, x, guide=lambda x: None, method=method)
        assert (result.method, result.kind) == (named, "exact")
        assert result.mean == pytest.approx(closed.mean().item(), abs=1e-9)
        assert torch.allclose(result.values.double(), closed, rtol=0, atol=1e-6)


def test_an_enumerated_site_beside_a_guided_latent_is_summed_in_each_importance_weight():
    """x = mu_c + z + noise, z ~ N(0, 1) sampled by the guide, c enumerated: p(x) = sum_c w_c N(x; mu_c, 2),
    against which IWAE (K = 2000) must fall within 4 of its standard errors."""
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            c = pyro.sample("c", dist.Categorical(torch.tensor([0.3, 0.7])), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(torch.tensor([-1.0, 2.0])[c] + z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.3))

    x = 2 * torch.randn(50, generator=torch.Generator().manual_seed(0))
    closed = torch.logsumexp(torch.tensor([0.3, 0.7]).log() + dist.Normal(torch.tensor([-1.0, 2.0]), 2**0.5)
                             .log_prob(x[:, None]), -1).mean().item()
    result = ppgen.log_likelihood(model, x, guide=guide, num_samples=2000)
    assert (result.method, result.kind) == ("iwae", "bound")
    assert abs(result.mean - closed) < 4 * result.stderr


def test_a_bits_back_decoder_refuses_more_initial_words_than_its_stream_before_allocating():
    """decompress refuses a crafted init_words from the model's z_dim before decoding (test_ppz_format); the
    decoder itself, called directly with init_words=2**31 on a short stream, allocated 8 GiB for them."""
    from ppgen.compression import CompressedFormatError
    from ppgen.compression.bitsback import decode_bbans

    words = np.ones(10, dtype=np.uint32)
    tracemalloc.start()
    try:
        with pytest.raises(CompressedFormatError, match="init_words is 2,147,483,648, but the stream's 10 words"):
            decode_bbans(VAE(4, z_dim=2, hidden=4).double(), words, 1, seed=0, init_words=2**31, prob_bits=16,
                         latent_bits=8, q_bits=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak
