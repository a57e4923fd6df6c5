"""benchmarks/flows.py --preset cpu-long and its run folder (benchmarks/long_run.py): a run resumed call by call
continues its curve exactly where the last call stopped, a folder is never continued with other settings, and the
evaluation is the flow's own exact log-likelihood of the test rows."""

import argparse
import json
import math

import pytest
import torch

from ppgen import load_dataset
from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint

from conftest import load_script

CFG = {"model": {"transforms": 1, "hidden": [16]}, "epochs": 3, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1,
       "clip_norm": 1e4, "valid_rows": 50}


def _rows():
    levels = load_dataset("digits_grey", "train").x[:160]  # integer levels 0..255
    bench = load_script("benchmarks/flows.py")
    return bench, levels[:64], bench.dequantize(levels[64:114], seed=1), bench.dequantize(levels[114:160], seed=0)


@pytest.mark.slow
def test_a_long_flow_resumed_call_by_call_matches_an_unbroken_run(tmp_path):
    bench, train, valid, test = _rows()
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=20)
    calls = []
    for runs, minutes in ((tmp_path / "broken", [1e-9] * 3), (tmp_path / "unbroken", [10.0])):
        for max_minutes in minutes:  # 1e-9: one epoch per call
            args.runs, args.max_minutes = runs, max_minutes
            calls.append(bench.long_flow(args, "maf", train, valid, test, CFG))
    (first, second, broken), unbroken = calls[:3], calls[3]
    assert [first["epochs"], second["epochs"], broken["epochs"]] == [1, 2, 3]
    assert second["status"].startswith("partial") and "test_bits_per_dim" not in second
    curves = [json.loads((tmp_path / run / "maf" / "curve.json").read_text())["epochs"] for run in ("broken", "unbroken")]
    # 64 rows in batches of 32: each call's fit resumed at the last step, it did not start over
    assert [e["steps"] for e in curves[0]] == [2, 4, 6]
    assert [e["lr"] for e in curves[0]] == pytest.approx([1e-3, 5.5e-4, 1e-4])  # warm-up, mid-cosine, lr / 10
    # the dequantization noise comes from fit's seeded, checkpointed random state: three calls train what one does
    for key in ("train_bits_per_dim", "valid_bits_per_dim"):
        assert [e[key] for e in curves[0]] == [e[key] for e in curves[1]]
    assert curves[0][-1]["cpu_seconds"] >= curves[0][0]["cpu_seconds"] > 0  # hours add up over the calls
    saved = [load_checkpoint(tmp_path / run / "maf" / "checkpoint" / CHECKPOINT_NAME)["params"]
             for run in ("broken", "unbroken")]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    assert broken["status"] == unbroken["status"] == "complete"
    # the evaluation is the trained flow's exact log-density of the dequantized test rows, in bits per pixel
    flow = bench.MAF(784, **CFG["model"])
    loaded = flow.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved[0].items()}, strict=False)
    assert set(loaded.missing_keys) <= dict(flow.named_buffers()).keys()  # buffers (masks, orders) are built, not saved
    with torch.no_grad():
        log_density = flow.log_prob(test).double()
    assert broken["test_rows"] == len(test)
    assert broken["test_bits_per_dim"] == pytest.approx(-log_density.mean().item() / (784 * math.log(2)), rel=1e-6)
    assert broken["test_bits_per_dim_stderr"] == pytest.approx(
        log_density.std().item() / math.sqrt(len(test)) / (784 * math.log(2)), rel=1e-4)
    assert all((tmp_path / "broken" / "maf" / f"samples-T{t}.png").exists() for t in bench.TEMPERATURES)
    quality = broken["quality"]
    assert quality["samples"] == 20 and quality["fid"] > quality["real_vs_real"]["fid"]  # an untrained flow's noise


def test_a_run_folder_is_not_continued_with_other_settings(tmp_path):
    bench, train, valid, test = _rows()
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=20, runs=tmp_path, max_minutes=1e-9)
    bench.long_flow(args, "maf", train, valid, test, CFG)
    with pytest.raises(SystemExit, match=r"written with the settings .*'lr': 0.001.* but this run's are .*'lr': 0.002"):
        bench.long_flow(args, "maf", train, valid, test, {**CFG, "lr": 2e-3})


def test_a_long_flow_with_a_learned_dequantizer_trains_on_levels_and_reports_its_iwae_bound(tmp_path):
    bench, train, _, _ = _rows()
    levels = load_dataset("digits_grey", "train").x[64:160]  # the discrete models score the levels themselves
    valid, test = levels[:50], levels[50:]
    cfg = {**CFG, "epochs": 1, "flow": "maf", "dequantizer": {"transforms": 1, "hidden": [8]}, "test_samples": 4}
    args = argparse.Namespace(device="cpu", evaluate=False, quality_samples=20, runs=tmp_path, max_minutes=10.0)
    row = bench.long_flow(args, "maf-vd", train, valid, test, cfg)
    assert row["status"] == "complete" and row["published"] == bench.PUBLISHED["maf"]
    # the figure is the IWAE bound (K = 4) of the integer test levels, recomputed from the checkpoint
    model = bench.VariationalDequantization(bench.MAF(784, **cfg["model"]), **cfg["dequantizer"])
    saved = load_checkpoint(tmp_path / "maf-vd" / "checkpoint" / CHECKPOINT_NAME)["params"]
    loaded = model.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved.items()}, strict=False)
    assert set(loaded.missing_keys) <= dict(model.named_buffers()).keys() and not loaded.unexpected_keys
    expected = bench.ppgen.log_likelihood(model, test, method="iwae", num_samples=4, batch_size=125)
    assert row["test_bits_per_dim"] == pytest.approx(expected.bits_per_dim, rel=1e-6)


def test_the_paper_preset_builds_its_models_and_keeps_its_own_settings():
    """The GPU preset is run when a GPU is lent, minutes at a time: its models must build (a wrong keyword or a
    shape that does not squeeze would cost that time), and its settings must differ from cpu-long's, since a run
    folder is continued only with its own."""
    bench = load_script("benchmarks/flows.py")
    assert set(bench.PAPER) <= set(bench.MODELS)
    for name, cfg in bench.PAPER.items():
        model = bench.MODELS[name](784, **cfg["model"])
        assert model.num_parameters > 0 and cfg != bench.LONG[name] and cfg["ema"], name
