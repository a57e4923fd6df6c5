"""Evaluation that is affordable and visible (issue 32, item 3): `--test-rows`, `--ais-temperatures` and
`--num-samples` reach the estimator, bad values get one line, and long estimators report their progress."""

import json
import re
import types

import pytest
import torch

import ppgen.cli
import ppgen.inference.progress
from ppgen import log_likelihood
from ppgen.cli import load_run, main
from ppgen.data import load_dataset
from ppgen.inference.progress import Progress


def few_rows(name, split="train", **kwargs):
    """64 rows a split (as tests/test_cli.py's): the command's runs take seconds."""
    data = load_dataset(name, split, **kwargs)
    return data._replace(x=data.x[:64], y=None if data.y is None else data.y[:64])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An exact model's run and an RBM's whose log Z is not enumerable (30 hidden units: AIS), on 64 rows."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppgen.cli, "load_dataset", few_rows)
        for name, options in (("independent", []), ("rbm", ["-o", "hidden=30", "--ais-temperatures", "10"])):
            assert main(["train", name, "--out", str(folder / name), "--epochs", "1", "--device", "cpu",
                         "--quality-samples", "0", "--test-rows", "2", *options]) == 0
    return folder


class Clock:
    """A fake time.monotonic: each reading is ``step`` seconds after the last."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


def test_test_rows_scores_the_first_rows_and_says_so(runs, monkeypatch, capsys):
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    assert main(["evaluate", str(runs / "independent"), "--test-rows", "10", "--quality-samples", "0"]) == 0
    metrics = json.loads((runs / "independent" / "metrics.json").read_text())
    model, _ = load_run(runs / "independent")
    # the same rows scored in Python: an exact figure, the same float32 arithmetic
    assert metrics["num_examples"] == 10 and metrics["rows"] == 64
    assert metrics["log_likelihood"] == pytest.approx(log_likelihood(model, few_rows("digits", "test").x[:10]).mean,
                                                      rel=1e-6)
    assert "on 10 of 64 rows" in capsys.readouterr().out
    # without the option: every row, and no note
    assert main(["evaluate", str(runs / "independent"), "--quality-samples", "0"]) == 0
    assert json.loads((runs / "independent" / "metrics.json").read_text())["num_examples"] == 64
    assert " rows |" not in capsys.readouterr().out


def test_ais_temperatures_reach_the_estimator(runs, monkeypatch, capsys):
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    assert main(["evaluate", str(runs / "rbm"), "--ais-temperatures", "200", "--test-rows", "10",
                 "--quality-samples", "0"]) == 0
    metrics = json.loads((runs / "rbm" / "metrics.json").read_text())
    model, _ = load_run(runs / "rbm")
    rows = few_rows("digits", "test").x[:10]
    budget = ppgen.cli.BUDGETS["rbm"]  # the chains and RAISE rows the command spends on an RBM by default
    direct = log_likelihood(model, rows, num_samples=budget["num_samples"], num_temperatures=200,
                            raise_rows=budget["ais"]["raise_rows"], seed=0)
    # the same seeded chains in float64 on the CPU: the same number, whatever AIS's error
    assert metrics["log_likelihood"] == pytest.approx(direct.mean, rel=1e-9) and metrics["bracket"] == pytest.approx(
        list(direct.bracket), rel=1e-9)
    assert metrics["likelihood_options"]["num_temperatures"] == 200 and metrics["num_samples"] == budget["num_samples"]
    assert "200 temperatures, on 10 of 64 rows" in capsys.readouterr().out
    assert budget["ais"]["num_temperatures"] != 200  # so the figure is the option's, not the default's


@pytest.mark.parametrize("option", ["--test-rows", "--num-samples", "--ais-temperatures", "--quality-samples"])
@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5"])
def test_a_bad_budget_gets_one_line_naming_the_option(runs, tmp_path, capsys, option, value):
    if option == "--quality-samples" and value == "0":
        return  # no sample quality: allowed
    expected = "a non-negative int" if option == "--quality-samples" else "a positive int"
    for argv in (["evaluate", str(runs / "rbm")], ["train", "rbm", "--out", str(tmp_path / "new"), "-o", "hidden=30"]):
        capsys.readouterr()
        assert main([*argv, option, value]) == 2
        err = capsys.readouterr().err
        assert f"error: {option} must be {expected}, got " in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()  # refused before training


@pytest.mark.parametrize("name, how", [("independent", "is scored exactly"), ("vae", "is scored by IWAE"),
                                       ("binary-diffusion", "is scored by its ELBO"),
                                       ("gan", "gets no log-likelihood here")])
def test_ais_temperatures_are_refused_for_a_model_without_ais(tmp_path, capsys, name, how):
    assert main(["train", name, "--out", str(tmp_path / name), "--ais-temperatures", "100"]) == 2
    err = capsys.readouterr().err
    assert "--ais-temperatures is for a model scored by AIS" in err and how in err and err.count("\n") == 1
    assert not (tmp_path / name).exists()  # before anything was trained


def test_progress_prints_the_time_left_only_for_a_long_job():
    lines = []
    stream = types.SimpleNamespace(write=lambda text: lines.append(text) if text != "\n" else None, flush=lambda: None)
    clock = Clock(1.0)  # 1 s per reading: the first line once 3 s have passed, then one per 10 s
    progress = Progress("AIS", "temperatures", clock=clock.monotonic, stream=stream)
    for done in range(1, 41):
        progress(done, 40)
    # at reading k (k = 0 when made) k s have passed and done = k: the time left is k (40 - k) / k = 40 - k
    assert lines == ["AIS: 3/40 temperatures, 3 s, about 37 s left", "AIS: 13/40 temperatures, 13 s, about 27 s left",
                     "AIS: 23/40 temperatures, 23 s, about 17 s left", "AIS: 33/40 temperatures, 33 s, about 7 s left",
                     "AIS: 40/40 temperatures in 40 s"]
    lines.clear()
    quick = Progress("AIS", "temperatures", clock=Clock(0.05).monotonic, stream=stream)
    for done in range(1, 41):  # 2 s in all
        quick(done, 40)
    assert lines == []


def _tiny(kind: str):
    """(model, rows, options) of each long estimator of log_likelihood, tiny."""
    from ppgen.models import VAE
    from ppgen.models.diffusion import BinaryDiffusion
    from ppgen.models.energy import EBM, RBM

    binary = torch.bernoulli(torch.full((12, 6), 0.4))
    return {"rbm": (RBM(6, hidden=21), binary, {"num_temperatures": 30, "raise_rows": 4}),
            "ebm": (EBM(6, hidden=4, steps=2), binary.clamp(0.1, 0.9), {"num_temperatures": 30}),
            "diffusion": (BinaryDiffusion(6, num_steps=30, hidden=[4]), binary, {"repeats": 3}),
            "iwae": (VAE(6, z_dim=2, hidden=4), binary, {"batch_size": 2}),
            "decoder-ais": (VAE(6, z_dim=2, hidden=4), binary, {"method": "ais", "num_temperatures": 30,
                                                                 "leapfrog": 2})}[kind]


@pytest.mark.parametrize("kind, what, total", [
    ("rbm", "AIS", "60 temperatures"),  # AIS's 30 temperatures, then RAISE's
    ("ebm", "AIS", "30 temperatures"),
    ("diffusion", "ELBO", "90 steps"),  # 30 steps of the one batch, 3 repeats
    ("iwae", "IWAE", "12 rows"),
    ("decoder-ais", "AIS", "30 temperatures"),
])
def test_each_long_estimator_reports_its_progress_when_asked(kind, what, total, monkeypatch, capsys):
    model, rows, options = _tiny(kind)
    monkeypatch.setattr(ppgen.inference.progress, "time", Clock(1.0))  # every reading 1 s after the last
    quiet = log_likelihood(model, rows, num_samples=4, **options)
    assert capsys.readouterr().err == ""  # progress=False, the default: silent
    shown = log_likelihood(model, rows, num_samples=4, progress=True, **options)
    assert torch.equal(shown.values, quiet.values)  # reporting changes nothing drawn
    err = capsys.readouterr().err.splitlines()
    count, unit = total.split()
    assert len(err) >= 2, err
    assert all(re.fullmatch(rf"{what}: \d+/{count} {unit}, \d+ s, about \d+ s left", text) for text in err[:-1]), err
    assert re.fullmatch(rf"{what}: {count}/{count} {unit} in \d+ s", err[-1]), err


def _samplers():
    """(model, steps its sampler reports) of each model whose sample draws a long chain, tiny."""
    from ppgen.models.diffusion import BinaryDiffusion, GaussianDiffusion
    from ppgen.models.energy import EBM, RBM

    from ppgen.models import MADE

    rbm = RBM(784, hidden=3)
    rbm.steps = 5  # its Gibbs chain's length (1,000 by default)
    return {"binary-diffusion": (BinaryDiffusion(784, num_steps=7, hidden=[4]), 7),
            "diffusion": (GaussianDiffusion(784, num_steps=6, channels=4), 6),
            "rbm": (rbm, 5), "ebm": (EBM(784, hidden=4, steps=4), 4),
            "made": (MADE(784, hidden_sizes=[4]), 784)}  # a pixel a step


@pytest.mark.parametrize("kind", ["binary-diffusion", "diffusion", "rbm", "ebm", "made"])
def test_sample_quality_reports_the_sampler_steps(kind, monkeypatch, capsys):
    from ppgen.inference.sample_quality import sample_quality

    model, steps = _samplers()[kind]
    real = torch.bernoulli(torch.full((40, 784), 0.3), generator=torch.Generator().manual_seed(0))
    quiet = sample_quality(model, real, 8, seed=1)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(ppgen.inference.progress, "time", Clock(1.0))  # every reading 1 s after the last
    shown = sample_quality(model, real, 8, seed=1, progress=True)
    assert shown == quiet  # reporting changes nothing drawn
    err = capsys.readouterr().err.splitlines()
    assert all(re.fullmatch(rf"drawing 8 samples: \d+/{steps} steps, [\d.]+ (s|min), about [\d.]+ (s|min) left", t) for t in err[:-1]), err
    assert len(err) >= 2 and re.fullmatch(rf"drawing 8 samples: {steps}/{steps} steps in [\d.]+ (s|min)", err[-1]), err


def test_sample_quality_of_a_model_without_a_long_sampler_is_silent(capsys):
    from ppgen.inference.sample_quality import sample_quality
    from ppgen.models import IndependentBernoulli

    real = torch.bernoulli(torch.full((40, 784), 0.3), generator=torch.Generator().manual_seed(0))
    sample_quality(IndependentBernoulli(784), real, 8, progress=True)
    assert capsys.readouterr().err == ""


def test_a_flow_reports_rows_decoded_and_draws_the_same():
    from ppgen.models import MAF

    model, calls = MAF(6, transforms=1, hidden=[4]), []
    torch.manual_seed(0)
    quiet = model.sample(600)
    torch.manual_seed(0)
    shown = model.sample(600, progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(shown, quiet)
    assert calls == [(done, 600) for done in (*range(64, 600, 64), 600)]  # decoded 64 rows at a time
