"""benchmarks/binarized_mnist.py: Burda et al.'s learning-rate schedule, and a run without early stopping that
keeps its last parameters and records its validation likelihood beside its ELBO."""

import json

import torch

from ppgen.inference import log_likelihood
from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppgen.models.latent import VAE

from conftest import load_script


def test_burda_schedule_is_their_code_s_stages():
    bench = load_script("benchmarks/binarized_mnist.py")
    # their experiments.py: stage i (1..8) trains 3^(i-1) epochs at 1e-4 * round(10^(1 - (i-1)/7), 1)
    expected = [1e-4 * round(10 ** (1 - (i - 1) / 7), 1) for i in range(1, 9) for _ in range(3 ** (i - 1))]
    assert bench.BURDA_EPOCHS == len(expected) == 3280
    assert [bench.burda_schedule(epoch) for epoch in range(1, 3281)] == expected
    assert expected[0] == 1e-3 and expected[1] == 1e-4 * 7.2 and expected[-1] == 1e-4


def test_a_run_without_patience_keeps_its_last_parameters_and_records_its_likelihood(tmp_path):
    bench = load_script("benchmarks/binarized_mnist.py")
    generator = torch.Generator().manual_seed(0)
    train_x = (torch.rand(60, 12, generator=generator) < 0.1).float()
    valid_x = (torch.rand(20, 12, generator=generator) < 0.1).float()
    torch.manual_seed(0)
    model = VAE(12, z_dim=2, hidden=(8,))
    curve = bench.train(model, train_x, valid_x, tmp_path / "vae", schedule=bench.constant(0.05), max_epochs=4,
                        max_minutes=10, batch_size=20, device="cpu", seed=0, patience=None, valid_ll_every=2)
    assert curve["complete"] and not curve["stopped_early"] and len(curve["epochs"]) == 4
    assert json.loads((tmp_path / "vae" / "curve.json").read_text())["epochs"] == curve["epochs"]
    assert ["valid_ll_nll" in row for row in curve["epochs"]] == [False, True, False, True]
    # the last parameters, not the best epoch's: the model is the last checkpoint's
    saved = load_checkpoint(tmp_path / "vae" / "checkpoint" / CHECKPOINT_NAME)["params"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["owners.0." + name]), name
    # the recorded figure is the estimate on the first validation rows, with the benchmark's sample count
    expected = log_likelihood(model, valid_x[:bench.VALID_LL_ROWS], batch_size=500,
                              num_samples=bench.VALID_LL_SAMPLES)
    assert curve["epochs"][-1]["valid_ll_nll"] == -expected.mean
    # log p(x) >= its IWAE estimate >= the ELBO, in expectation; the ELBO here is one draw a row on 20 rows,
    # whose mean varies by about 0.3 nats on this model: 1 nat is about three of those
    assert curve["epochs"][-1]["valid_ll_nll"] < curve["epochs"][-1]["valid_nll"] + 1.0
