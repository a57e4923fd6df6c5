"""benchmarks/diffusion.py --preset cpu-long: the bound estimated from a few steps per row is the bound in
expectation, and a run resumed call by call continues its curve exactly where the last call stopped."""

import argparse
import json
import math

import pytest
import torch

from ppgen import load_dataset
from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint

from conftest import load_script


def _bench():
    return load_script("benchmarks/diffusion.py")


def test_the_benchmark_s_bound_is_the_model_s_stratified_bound_over_batches():
    bench = _bench()
    torch.manual_seed(0)
    model = bench.BinaryDiffusion(6, num_steps=8, hidden=(16,))
    x = (torch.rand(30, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    generator = torch.Generator().manual_seed(4)  # one stream across the batches, as the benchmark draws it
    expected = torch.cat([model.nll_bound(x[:20], strata=2, seed=generator), model.nll_bound(x[20:], strata=2,
                                                                                           seed=generator)])
    assert torch.equal(bench.bound_estimate(model, x, 2, seed=4, batch_size=20), expected)


def test_the_bound_s_terms_sum_to_the_bound_of_the_same_draws():
    bench = _bench()
    torch.manual_seed(0)
    model = bench.GaussianDiffusion(4, shape=(1, 2, 2), num_steps=6, schedule="log-snr", variance="posterior",
                                    channels=8, multipliers=(1,), attention=False).double()
    for p in model.parameters():  # away from the zero-initialised output, so that every term depends on the network
        p.data.normal_(0, 0.3)
    x = torch.randint(0, 256, (5, 4), generator=torch.Generator().manual_seed(1)).double() / 255
    terms = bench.bound_terms(model, x, seed=3)
    assert terms.shape == (7,) and bool((terms[1:] > 0).all())
    assert math.isclose(terms.sum().item(), model.nll_bound(x, seed=3).mean().item(), rel_tol=1e-12)


@pytest.mark.slow
def test_a_long_diffusion_resumed_call_by_call_matches_an_unbroken_run(tmp_path):
    bench = _bench()
    x = load_dataset("digits", "train").x[:150]
    cfg = {"model": {"num_steps": 20, "schedule": "cosine", "hidden": [32]}, "epochs": 3, "rows_per_epoch": 64,
           "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1, "clip_norm": None, "valid_rows": 30, "valid_draws": 4,
           "test_draws": 20}
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=20)
    calls = []
    for runs, minutes in ((tmp_path / "broken", [1e-9] * 3), (tmp_path / "unbroken", [10.0])):
        for max_minutes in minutes:  # 1e-9: one epoch per call
            args.runs, args.max_minutes = runs, max_minutes
            calls.append(bench.long_diffusion(args, "binary", x[:100], x[100:130], x[130:], cfg))
    (first, second, broken), unbroken = calls[:3], calls[3]
    assert [first["epochs"], second["epochs"], broken["epochs"]] == [1, 2, 3]
    assert second["status"].startswith("partial") and "test_bound_nats" not in second
    curves = [json.loads((tmp_path / run / "binary" / "curve.json").read_text())["epochs"]
              for run in ("broken", "unbroken")]
    assert [e["steps"] for e in curves[0]] == [2, 4, 6]  # 64 random rows in batches of 32: resumed, not restarted
    # the random rows and steps come from fit's seeded, checkpointed random state: three calls train what one does
    for key in ("train_loss", "valid_bound_nats"):
        assert [e[key] for e in curves[0]] == [e[key] for e in curves[1]]
    saved = [load_checkpoint(tmp_path / run / "binary" / "checkpoint" / CHECKPOINT_NAME)["params"]
             for run in ("broken", "unbroken")]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    assert broken["status"] == unbroken["status"] == "complete"
    # test_draws = T: the bound itself, every term summed once per row, of the trained model
    model = bench.BinaryDiffusion(784, **cfg["model"])
    model.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved[0].items()}, strict=False)
    expected = bench.bound_estimate(model, x[130:], 20)
    assert broken["test_rows"] == 20 and broken["test_bound_nats"] == pytest.approx(expected.mean().item(), rel=1e-9)
    assert broken["test_bits_per_dim"] == pytest.approx(broken["test_bound_nats"] / (784 * math.log(2)))
    assert broken["quality_ancestral"]["samples"] == 20


def test_a_long_run_with_ema_scores_the_averages_and_the_trained_parameters(tmp_path):
    """cfg["ema"]: the curve's bound is the moving averages' and ``valid_bound_nats_trained`` the trained
    parameters' (both recomputed here from the checkpoint, which holds the two), and the model keeps the averages."""
    bench = _bench()
    x = load_dataset("digits", "train").x[:130]
    cfg = {"model": {"num_steps": 20, "schedule": "cosine", "hidden": [32]}, "epochs": 2, "rows_per_epoch": 64,
           "batch_size": 32, "lr": 1e-2, "warmup_epochs": 1, "clip_norm": None, "valid_rows": 30, "valid_draws": 4,
           "test_draws": 20, "ema": 0.5}
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=20, runs=tmp_path, max_minutes=10.0)
    bench.long_diffusion(args, "binary", x[:100], x[100:130], None, cfg)
    last = json.loads((tmp_path / "binary" / "curve.json").read_text())["epochs"][-1]
    saved = load_checkpoint(tmp_path / "binary" / "checkpoint" / CHECKPOINT_NAME)
    figures = {}
    for key in ("params", "averages"):
        model = bench.BinaryDiffusion(784, **cfg["model"])
        model.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved[key].items()}, strict=False)
        figures[key] = bench.bound_estimate(model, x[100:130], 4).mean().item()
    assert last["valid_bound_nats"] == pytest.approx(figures["averages"], rel=1e-9)
    assert last["valid_bound_nats_trained"] == pytest.approx(figures["params"], rel=1e-9)
    assert figures["averages"] != pytest.approx(figures["params"], rel=1e-6)  # two sets of parameters
    # a call that trains nothing (the schedule is done) scores the checkpoint's averages on the test rows
    args.max_minutes = 0
    row = bench.long_diffusion(args, "binary", x[:100], x[100:130], x[100:120], cfg)
    model = bench.load_fitted(bench.BinaryDiffusion(784, **cfg["model"]), tmp_path / "binary" / "checkpoint")
    assert row["test_bound_nats"] == pytest.approx(bench.bound_estimate(model, x[100:120], 20).mean().item(), rel=1e-9)


def test_the_paper_preset_builds_its_models_and_keeps_its_own_settings():
    """As for the flows: the GPU preset's models build, and their settings are not cpu-long's."""
    bench = _bench()
    for name, cfg in bench.PAPER.items():
        model = (bench.GaussianDiffusion if name == "gaussian" else bench.BinaryDiffusion)(784, **cfg["model"])
        assert model.num_parameters > 0 and cfg != bench.LONG[name] and cfg["ema"], name
    assert set(bench.LONGS) == {"cpu-long", "paper"}


def test_an_evaluation_stopped_part_way_goes_on_where_it_stopped(tmp_path):
    """The test bound and the samples of a long run take hours on a CPU, and a session's end stops them: each piece
    is kept as it is done, so that the next call computes only the pieces still missing, and its figures are the
    ones an unbroken call gives."""
    long_run = load_script("benchmarks/long_run.py")
    run = long_run.LongRun(tmp_path / "run", {"epochs": 1})
    calls = []

    def compute(k, fail_at=None):
        calls.append(k)
        if k == fail_at:
            raise KeyboardInterrupt  # the session ends here
        return torch.full((3,), float(k)) + torch.randn(3, generator=torch.Generator().manual_seed(k))

    with pytest.raises(KeyboardInterrupt):
        run.pieces("bound", 4, lambda k: compute(k, fail_at=2))
    assert calls == [0, 1, 2]
    calls.clear()
    resumed = torch.cat(run.pieces("bound", 4, compute))
    assert calls == [2, 3]  # the two kept pieces are read, not computed again
    unbroken = torch.cat(long_run.LongRun(tmp_path / "other", {"epochs": 1}).pieces("bound", 4, compute))
    assert torch.equal(resumed, unbroken)
