"""The long runs' weights that the tutorials load (tutorials/weights/): each file is the one its README names (by
SHA-256), loads into the model built with the stated arguments, and scores test digits as a trained model does."""

import hashlib
import math
import re
from pathlib import Path

import pytest
import torch

import ppgen
from conftest import load_script
from ppgen.models.flows import dequantize

WEIGHTS = Path(__file__).resolve().parents[1] / "tutorials" / "weights"


def _table() -> dict[str, str]:
    """file name -> SHA-256, from the README's table."""
    return dict(re.findall(r"(?m)^\| `([\w.]+\.pt)`.*\| `([0-9a-f]{64})` \|$", (WEIGHTS / "README.md").read_text()))


def test_every_weights_file_is_listed_with_its_digest():
    table = _table()
    assert sorted(table) == sorted(p.name for p in WEIGHTS.glob("*.pt"))
    for name, digest in table.items():
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == digest, name


def test_the_glow_scores_test_digits_as_a_trained_flow():
    """A fresh Glow scores the digits at about 8 bits/dim and the run's validation figure is 1.430 on MNIST: the
    embedded test digits (MNIST's own test images) must come out near the latter, within 0.1 for 200 rows (their
    bits/dim spread across rows is about 0.2, so 200 rows leave a standard error near 0.015; the rest is the
    difference between the two sets of digits)."""
    glow = ppgen.load_fitted(ppgen.Glow(784, levels=2, steps=8, hidden=64, blocks=1, factor_out="first",
                                        scale_map="tanh"), WEIGHTS / "glow_mnist.pt")
    x = dequantize(ppgen.load_dataset("digits_grey", "test").x[:200], seed=0)
    with torch.no_grad():
        bits = -glow.eval().log_prob(x).mean().item() / (784 * math.log(2))
    assert bits == pytest.approx(1.43, abs=0.1)


def _against_untrained(build, weights: str, n: int) -> tuple[dict, dict]:
    """Sample quality of n samples of the model in ``weights`` and of an untrained ``build()``, each against n
    embedded grey test digits (the floor: n training digits)."""
    from ppgen.inference.sample_quality import sample_quality

    test, train = (ppgen.load_dataset("digits_grey", split).x[:n] / 255 for split in ("test", "train"))
    trained = ppgen.load_fitted(build(), WEIGHTS / weights).eval()
    torch.manual_seed(0)
    return tuple(sample_quality(model, test, n, reference=train) for model in (trained, build().eval()))


def test_the_dcgan_draws_digits_as_a_trained_generator_does():
    """The run's DCGAN scored FID 24.8 on 10,000 samples against MNIST's test digits; an untrained generator's
    noise scores about 900. On 300 samples against 300 embedded test digits (FID's small-sample bias: about 20
    for real digits at this n), a trained generator must land far below the untrained one's, under 120, and draw
    every digit (its largest class under a quarter of the samples)."""
    from ppgen.models.implicit import GAN

    trained, untrained = _against_untrained(
        lambda: GAN(784, z_dim=64, architecture="dcgan", channels=64, discriminator_norm="spectral"),
        "dcgan_mnist.pt", 300)
    assert trained["fid"] < 120 < 500 < untrained["fid"]
    assert trained["largest_class_share"] < 0.25


def test_the_deep_ebm_samples_digits_by_its_langevin_steps():
    """The run's EBM: 100 Langevin steps from uniform noise. An untrained energy leaves the noise about where it
    started (FID near 1,000 in the classifier's features); the trained one's 200 samples must score under 300
    against the embedded test digits (its run: about 90 on 500 samples) and cover most digits (largest class under
    0.3)."""
    from ppgen.models.energy import EBM

    trained, untrained = _against_untrained(
        lambda: EBM(784, architecture="conv", channels=16, steps=100, step_size=0.25, noise=0.005),
        "ebm_mnist.pt", 200)
    assert trained["fid"] < 300 < 500 < untrained["fid"]
    assert trained["largest_class_share"] < 0.3


def test_the_gaussian_diffusion_bounds_test_digits_as_its_run_did():
    """The run's averaged weights after its last epoch (100) scored 1.159 bits/dim on 500 MNIST validation rows;
    a fresh U-Net's bound is far above 3. The bound on 60 embedded test digits, estimated from 20 strata of the
    1,000 steps as the run's validation is, must come out within 0.15 of 1.16: its standard error here is about
    0.05 (the rows' spread and the strata's draws; measured at export: 1.134)."""
    from ppgen.models.diffusion import GaussianDiffusion

    def build():
        return GaussianDiffusion(784, num_steps=1000, schedule="log-snr", variance="posterior", loss="simple",
                                 channels=32, multipliers=[1, 2, 2], num_blocks=1, attention=True)

    bench = load_script("benchmarks/diffusion.py")
    rows = ppgen.load_dataset("digits_grey", "test").x[:60] / 255
    trained = ppgen.load_fitted(build(), WEIGHTS / "diffusion_mnist.pt")
    bits = [bench.bound_estimate(model, rows, 20).mean().item() / (784 * math.log(2)) for model in (trained, build())]
    assert bits[0] == pytest.approx(1.16, abs=0.15) and bits[1] > 3


def test_the_long_rbm_scores_test_digits_near_its_runs_figure():
    """The run's RBM scored -86.91 nats on MNIST's static test rows (AIS, 100 chains x 14,500 temperatures); a fresh
    one with its small random weights is near the uniform -784 log 2 = -543.4. A cheap AIS (8 chains, 1,000
    temperatures: spread of a few nats, erring high) on 200 embedded test digits must land within 8 nats of -87
    for the shipped weights, and far below for fresh ones."""
    from ppgen.models.energy import RBM
    from ppgen.models.energy.ais import ais_log_partition, base_visible_bias

    rows = ppgen.load_dataset("digits", "test").x[:200]
    base = base_visible_bias(rows, 784)
    figures = []
    for rbm in (ppgen.load_fitted(RBM(784, hidden=500), WEIGHTS / "rbm_mnist.pt"), RBM(784, hidden=500)):
        with torch.no_grad():
            log_z = ais_log_partition(rbm, num_chains=8, num_temperatures=1000, base_bias=base, seed=0).log_z
            figures.append((-rbm.free_energy(rows).double() - log_z).mean().item())
    assert figures[0] == pytest.approx(-87, abs=8) and figures[1] < -500
