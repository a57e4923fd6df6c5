"""The ppgen command, with tiny arguments (Pyro's test_examples habit)."""

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppgen.cli
from conftest import load_script
from ppgen import ConvergenceWarning, log_likelihood
from ppgen.cli import NO_DENSITY, load_run, main
from ppgen.data import load_dataset


def few_rows(name, split="train", **kwargs):
    """A data set cut to 64 rows a split, for ppgen.cli's load_dataset (a full epoch of even a 4-channel RealNVP on
    10,000 rows takes minutes on a loaded CPU)."""
    data = load_dataset(name, split, **kwargs)
    return data._replace(x=data.x[:64], y=None if data.y is None else data.y[:64])


def test_demo_writes_its_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--num-samples", "20", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"independent", "vae"}
    for name, m in metrics.items():
        assert {"log_likelihood", "elbo", "bits_per_dim", "exact", "num_parameters", "train_seconds"} <= set(m)
    assert metrics["independent"]["exact"] and not metrics["vae"]["exact"]
    assert metrics["independent"]["num_parameters"] == 784 and metrics["independent"]["elbo"] is None
    assert metrics["vae"]["elbo"] <= metrics["vae"]["log_likelihood"]
    for png in ("elbo_curves.png", "samples_vae.png", "samples_independent.png", "reconstructions_vae.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| vae |" in capsys.readouterr().out


def test_train_evaluate_sample_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), "--epochs", "1",
                 "-o", "z_dim=3", "-o", "hidden=[16]", "--num-samples", "10", "--weight-decay", "0.5",
                 "--optimizer", "adagrad", "--ema", "0.9"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["options"] == {"z_dim": 3, "hidden": [16]}
    assert config["weight_decay"] == 0.5 and config["optimizer"] == "adagrad" and config["ema"] == 0.9
    assert main(["evaluate", str(run), "--num-samples", "10", "--split", "valid", "--report-rows", "50"]) == 0
    assert json.loads((run / "metrics.json").read_text())["split"] == "valid"
    report = capsys.readouterr().out
    assert "active units" in report.lower() and "kl" in report.lower()  # the VAE's ELBO report
    assert main(["sample", str(run), "-n", "8"]) == 0
    assert (run / "samples.png").is_file()



def test_a_cvae_trains_evaluates_and_samples_for_labels(tmp_path, monkeypatch):
    """The command's sample quality and grid give a conditional model labels: the real rows' for FID, the classes
    in turn for the grid (it once stopped both with "needs the labels y")."""
    from ppgen.models import ConditionalVAE

    drawn = []
    sample = ConditionalVAE.sample
    monkeypatch.setattr(ConditionalVAE, "sample", lambda self, n, y=None: drawn.append((n, y)) or sample(self, n, y))
    run = tmp_path / "cvae"
    assert main(["train", "cvae", "--data", "digits", "--out", str(run), "--epochs", "1", "-o", "z_dim=3",
                 "-o", "hidden=[16]", "--num-samples", "10", "--quality-samples", "40", "--device", "cpu"]) == 0
    test_labels = load_dataset("digits", "test").y
    chosen = torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(0))[:40]  # sample_quality's
    assert torch.equal(drawn[-1][1], test_labels[chosen])  # the labels of the 40 real rows it is compared with
    assert json.loads((run / "metrics.json").read_text())["sample_quality"]["samples"] == 40
    assert main(["sample", str(run), "-n", "12"]) == 0
    assert drawn[-1][0] == 12 and torch.equal(drawn[-1][1], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"

@pytest.mark.parametrize("argv, message", [
    (["train", "transformer", "--out", "{tmp}/x"], "ppgen train: error: unknown model 'transformer'; choices: independent, vae, cvae, fvsbn, nade, made, pixelcnn"),
    (["train", "vae", "--data", "cifar", "--out", "{tmp}/x"], "unknown data set 'cifar'"),
    (["train", "vae", "--batch-size", "0", "--out", "{tmp}/x"], "batch_size must be a positive int, got 0"),
    (["evaluate", "{tmp}/nothing"], "is not a finished run folder: config.json is missing"),
])
def test_bad_arguments_get_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_inputs_of_each_command_get_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "independent", "--out", str(run), "--epochs", "1", "--device", "cpu"]) == 0
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["sample", str(run), "-n", "1000000000"], "-n must be between 1 and 10,000"),
        (["train", "independent", "--out", str(tmp_path / "a_file"), "--epochs", "1"], "a_file is a file"),
        (["train", "independent", "--out", str(tmp_path / "a_file" / "below"), "--epochs", "1"], "a_file is a file"),
        (["evaluate", str(run), "--device", "meta"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'meta'"),
        (["train", "vae", "--out", str(tmp_path / "v"), "-o", "hidden={}"], "hidden must be an int or a list of ints"),
        (["train", "vae", "--out", str(tmp_path / "w"), "-o", "bogus=1"],
         "model 'vae' does not take option 'bogus'; its options: z_dim, hidden, likelihood, architecture, channels"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    config = json.loads((run / "config.json").read_text())
    del config["options"]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(run)]) == 2
    assert "lacks 'options': it was not written by `ppgen train`" in capsys.readouterr().err


def test_sample_needs_no_data_and_reports_the_file_it_wrote(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "independent", "--out", str(run), "--epochs", "1", "--device", "cpu"]) == 0
    monkeypatch.setattr("ppgen.data.load_dataset", lambda *a, **k: pytest.fail("sample must not load data"))
    monkeypatch.setattr("ppgen.cli.load_dataset", lambda *a, **k: pytest.fail("sample must not load data"))
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "grid")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'grid.png'}"
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_a_npy_file_has_no_test_split_and_metrics_say_so(tmp_path):
    import numpy as np

    rows = np.random.default_rng(0).random((300, 16)) < 0.3
    np.save(tmp_path / "rows.npy", rows.astype(np.uint8))
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", str(tmp_path / "rows.npy"), "--out", str(run), "--epochs", "1"]) == 0
    assert json.loads((run / "metrics.json").read_text())["split"] == "train (the data file has no test split)"


def test_a_gan_trains_and_is_judged_by_its_samples(tmp_path, capsys):
    run = tmp_path / "gan"
    assert main(["train", "gan", "--out", str(run), "--epochs", "1", "-o", "hidden=[32]", "-o", "z_dim=4",
                 "--quality-samples", "50", "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["log_likelihood"] is None  # a sampler has no density
    quality = metrics["sample_quality"]
    assert quality["fid"] > 0 and 0 <= quality["precision"] <= 1 and 0 <= quality["recall"] <= 1
    assert "| gan | — |" in capsys.readouterr().out


def test_corrupt_weights_are_refused(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "independent", "--out", str(run), "--epochs", "1"]) == 0
    (run / "model.pt").write_bytes(b"garbage")
    assert main(["evaluate", str(run)]) == 2


def test_console_script_help():
    for command in ([], ["demo"], ["train"], ["evaluate"], ["sample"]):
        done = subprocess.run([sys.executable, "-m", "ppgen", *command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: ppgen" in done.stdout


def test_train_evaluate_sample_a_flow_on_grey_digits(tmp_path, monkeypatch, capsys):
    """`ppgen train realnvp --data digits_grey` with tiny arguments, on 64 rows per split."""
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    run = tmp_path / "realnvp"
    assert main(["train", "realnvp", "--data", "digits_grey", "--out", str(run), "--epochs", "1", "--batch-size", "32",
                 "-o", "hidden=4", "--device", "cpu"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "realnvp" and config["data"] == "digits_grey" and config["options"] == {"hidden": 4}
    metrics = json.loads((run / "metrics.json").read_text())
    # a dequantized density of 8-bit pixels: E_u log p(x + u), a lower bound on the discrete log-likelihood, one
    # draw of u per row, so its Monte Carlo error is the spread over the 64 test rows / sqrt(64)
    assert not metrics["exact"] and (metrics["kind"], metrics["errs"], metrics["method"]) == ("bound", "low", "exact")
    assert metrics["stderr"] == pytest.approx(metrics["row_std"] / 8) and metrics["label"].startswith("dequantized")
    # pixel units: bits/dim is -log p / (784 ln 2), on the 8-bit scale (uniform noise would give exactly 8)
    assert abs(metrics["bits_per_dim"] + metrics["log_likelihood"] / (784 * 0.6931471805599453)) < 1e-6
    assert 0 < metrics["bits_per_dim"] < 12
    assert "| realnvp |" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"
def test_restore_inpaints_a_run_and_refuses_what_it_cannot(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--out", str(run), "--epochs", "1", "--device", "cpu", "--num-samples", "10",
                 "--quality-samples", "50"]) == 0
    assert main(["restore", str(run), "--task", "inpaint", "--rows", "2", "-n", "3"]) == 0
    summary = json.loads((run / "restore_inpaint.json").read_text())
    assert summary["method"] == "exact conditionals" and summary["consistency"] == 0
    assert (run / "restore_inpaint.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["restore", str(run), "--task", "upsample"]) == 2
    assert "FVSBN cannot restore for task 'upsample'" in capsys.readouterr().err
    assert main(["restore", str(run), "--task", "colourise"]) == 2
    assert "colourise needs a model of colour images" in capsys.readouterr().err


# every model of the `ppgen` command, tiny, with the data it trains on
TINY_MODELS = {
    "independent": ("digits", []),
    "vae": ("digits", ["z_dim=3", "hidden=[16]"]),
    "cvae": ("digits", ["z_dim=3", "hidden=16"]),
    "fvsbn": ("digits", []),
    "nade": ("digits", ["hidden=16", "order=random"]),
    "made": ("digits", ["hidden_sizes=[32]", "num_masks=2", "order=random", "direct=true"]),
    "pixelcnn": ("digits", ["channels=8", "layers=2", "kernel=3"]),
    "realnvp": ("digits_grey", ["hidden=4"]),
    "glow": ("digits_grey", ["hidden=4", "steps=1"]),
    "maf": ("digits_grey", ["transforms=1", "hidden=[16]"]),
    "nsf": ("digits_grey", ["transforms=1", "hidden=[16]", "bins=4"]),
    "rbm": ("digits", ["hidden=16"]),
    "ebm": ("digits", ["hidden=[16]", "steps=5"]),
    "gan": ("digits", ["hidden=[16]", "z_dim=4"]),
    "diffusion": ("digits_grey", ["num_steps=10", "channels=8"]),
    "binary-diffusion": ("digits", ["num_steps=10", "hidden=[32]"]),
}
EXACT_BINARY = ("independent", "fvsbn", "nade", "made", "pixelcnn")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_model_of_the_command_trains_evaluates_and_samples(name, device, tmp_path, monkeypatch):
    """`ppgen train NAME` on 64 rows a split; an exact model's test log-likelihood in metrics.json equals
    log_likelihood of the weights it saved, on the CPU (computed on the GPU where device is cuda)."""
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    data, options = TINY_MODELS[name]
    run = tmp_path / name
    argv = ["train", name, "--data", data, "--out", str(run), "--epochs", "1", "--batch-size", "32", "--device", device,
            "--num-samples", "10", "--quality-samples", "32"]
    assert main(argv + [item for option in options for item in ("-o", option)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sample_quality"]["samples"] == 32
    if name in NO_DENSITY:
        assert metrics["log_likelihood"] is None
    else:
        assert math.isfinite(metrics["log_likelihood"]) and metrics["log_likelihood"] < 0
    if name in EXACT_BINARY:
        model, _ = load_run(run)  # on the CPU
        on_cpu = log_likelihood(model, few_rows("digits", "test").x).mean
        # the same arithmetic on the CPU; on the GPU, float32 sums in another order (log_likelihood turns TF32 off)
        assert metrics["log_likelihood"] == pytest.approx(on_cpu, rel=1e-6 if device == "cpu" else 1e-4)
    assert main(["sample", str(run), "-n", "4"]) == 0


def test_the_command_names_the_estimators_of_the_core():
    from ppgen.inference.program import ESTIMATORS

    assert ppgen.cli.ESTIMATORS == ESTIMATORS  # spelt out there so that --help imports no torch


def test_sample_quality_is_seeded_leaves_the_global_random_state_alone_and_is_zero_for_the_data_itself(digits):
    from ppgen.inference.sample_quality import sample_quality
    from ppgen.models import IndependentBernoulli

    model, real = IndependentBernoulli.from_frequencies(digits["train"].x), digits["test"].x
    state = torch.get_rng_state()
    first = sample_quality(model, real, 40, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert sample_quality(model, real, 40, seed=3) == first  # the same seed, the same samples

    class Replay:  # "samples" that are the real rows themselves
        y_dim, device = None, torch.device("cpu")

        def sample(self, n):
            return real[:n]

    same = sample_quality(Replay(), real, len(real), reference=digits["train"].x)  # all the real rows
    # one set against itself (in another order: float32 sums of 2,000 rows round differently, ~1e-6): the Frechet
    # distance is 0 and every row lies in the other set's balls
    assert same["fid"] == pytest.approx(0.0, abs=1e-4) and same["precision"] == same["recall"] == 1.0
    assert first["fid"] > 1.0  # and independent pixels are far from digits


def test_sample_quality_scores_a_random_n_of_the_real_rows_not_the_first_n(digits):
    """A split stored sorted by class (as the static binarized MNIST's test rows are) must not make its first n
    rows, all zeros, the reference: the data's own rows, shuffled, then score near the real-vs-real floor (40 and
    25 here, at n = 200); against the first 200 sorted rows they would score 839."""
    from ppgen.inference.sample_quality import frechet_distance, digit_features, sample_quality

    x, y = digits["test"].x, digits["test"].y
    ordered = x[torch.argsort(y, stable=True)]
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))]
    quality = sample_quality(shuffled, ordered, 200, reference=digits["train"].x)
    assert quality["fid"] < 2 * quality["real_vs_real"]["fid"] < 100
    assert frechet_distance(digit_features(ordered[:200]), digit_features(shuffled[:200])) > 500


# --- text models -------------------------------------------------------------------------------------------------


def few_characters(name, split="train", **kwargs):
    """The first 3,000 characters of a split of a text data set, in the data set's vocabulary."""
    from ppgen.data.text import TextDataset

    data = load_dataset(name, split, **kwargs)
    return TextDataset(data.text[:3000], data.vocabulary, plays=data.plays)


TINY_TEXT_MODELS = {
    "char-lstm": ["hidden_size=16", "num_layers=1", "length=32"],
    "char-transformer": ["context=32", "num_layers=1", "num_heads=2", "width=16"],
    "ngram": ["order=3"],
}


@pytest.mark.parametrize("name", TINY_TEXT_MODELS)
def test_a_text_model_trains_evaluates_samples_and_compresses_a_text_file(name, tmp_path, monkeypatch, capsys):
    """`ppgen train NAME --data shakespeare` on 3,000 characters a split; bits per character against the
    model's own bits_per_character; a sample that continues its prompt, as model.sample draws it; a text file
    compressed and decompressed byte for byte, its line against model_nll_bits."""
    from ppgen.compression import model_nll_bits

    monkeypatch.setattr(ppgen.cli, "load_dataset", few_characters)
    run = tmp_path / name
    options = [item for option in TINY_TEXT_MODELS[name] for item in ("-o", option)]
    assert main(["train", name, "--data", "shakespeare", "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 *options]) == 0
    model, config = load_run(run)
    assert config["vocabulary"] == load_dataset("shakespeare", "train").vocabulary.characters
    metrics = json.loads((run / "metrics.json").read_text())
    test_rows = few_characters("shakespeare", "test").windows(model.x_dim)
    assert metrics["characters"] == test_rows.numel() and metrics["exact"]
    assert metrics["bits_per_character"] == pytest.approx(model.bits_per_character(test_rows), rel=1e-5)
    assert 2.0 < metrics["bits_per_character"] < 7.0  # log2 80 = 6.3 for a uniform model
    assert f"{name}: {metrics['bits_per_character']:.4f} bits per character" in capsys.readouterr().out

    assert main(["sample", str(run), "--prompt", "ROMEO:", "-n", "50", "--seed", "1"]) == 0
    torch.manual_seed(1)
    expected = model.vocabulary.decode(model.sample(1, 50, prompt="ROMEO:")[0])
    assert capsys.readouterr().out == expected + "\n" and expected.startswith("ROMEO:") and len(expected) == 56

    text = load_dataset("shakespeare", "test").text[:1500]
    (tmp_path / "in.txt").write_bytes(text.encode("utf-8"))
    assert main(["compress", str(run), str(tmp_path / "in.txt"), str(tmp_path / "out.ppz")]) == 0
    size, nll = (tmp_path / "out.ppz").stat().st_size, model_nll_bits(model, text)[0] / 1500
    assert capsys.readouterr().out.strip() == (f"compressed 1,500 characters into {size:,} bytes: {8 * size / 1500:.4f} "
                                               f"bits/char; model NLL {nll:.4f} bits/char; wrote {tmp_path / 'out.ppz'}")
    assert main(["decompress", str(run), str(tmp_path / "out.ppz"), str(tmp_path / "back.txt")]) == 0
    assert "decompressed 1,500 characters from" in capsys.readouterr().out
    assert (tmp_path / "back.txt").read_bytes() == (tmp_path / "in.txt").read_bytes()

    # characters the plays never use come back too, each coded by its code point after the unknown symbol
    odd = "a café, {at} noon \U0001F600\n"
    (tmp_path / "odd.txt").write_bytes(odd.encode("utf-8"))
    unknown = int((model.vocabulary.encode(odd, errors="replace") == 0).sum())
    assert unknown == 4  # é { } and the emoji
    assert main(["compress", str(run), str(tmp_path / "odd.txt"), str(tmp_path / "odd.ppz")]) == 0
    assert "(4 character(s) outside its vocabulary, coded by code point at 20.1 bits each)" in capsys.readouterr().out
    assert main(["decompress", str(run), str(tmp_path / "odd.ppz"), str(tmp_path / "odd-back.txt")]) == 0
    assert (tmp_path / "odd-back.txt").read_bytes() == odd.encode("utf-8")


def test_text_commands_refuse_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_characters)
    run, images = tmp_path / "ngram", tmp_path / "independent"
    assert main(["train", "ngram", "--data", "shakespeare", "--out", str(run), "-o", "order=2"]) == 0
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    assert main(["train", "independent", "--out", str(images), "--epochs", "1", "--quality-samples", "0"]) == 0
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    out = str(tmp_path / "out.ppz")
    cases = [
        (["compress", str(run), str(tmp_path / "latin1.txt"), out],
         "latin1.txt is bytes that are not UTF-8 text: byte 0xe9 at offset 3"),
        (["compress", str(run), str(tmp_path / "empty.txt"), out], "empty.txt is empty"),
        (["decompress", str(run), str(tmp_path / "latin1.txt"), out], "not a ppgen compressed stream"),
        (["sample", str(run), "--prompt", "ROMEO é"], "prompt holds 1 character(s) outside the vocabulary: 'é'"),
        (["sample", str(run), "--prompt", ""], "prompt is empty"),
        (["sample", str(images), "--prompt", "ROMEO:"], "--prompt is for text models"),
        (["train", "char-lstm", "--out", str(tmp_path / "x")],
         "model 'char-lstm' models text, but --data digits is not text: use --data shakespeare"),
        (["train", "vae", "--data", "shakespeare", "--out", str(tmp_path / "y")],
         "model 'vae' models images, but --data shakespeare is text: its models: char-lstm, char-transformer, ngram"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "out.ppz").exists()


def test_the_command_names_the_text_data_sets_of_the_loader():
    from ppgen import data

    assert ppgen.cli.TEXT_DATASETS == data.TEXT_DATASETS  # spelt out there so that --help imports no torch


# --- no crash and no silent acceptance (issue 32): each case failed before its fix -----------------------------------


def one_line_error(capsys, argv, message):
    """The command refuses ``argv`` with exit status 2 and one line of standard error holding ``message``."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


@pytest.fixture(scope="module")
def independent_run(tmp_path_factory):
    """A finished run folder of the factorised model on the digits, to copy and damage."""
    run = tmp_path_factory.mktemp("independent") / "run"
    assert main(["train", "independent", "--out", str(run), "--epochs", "1", "--quality-samples", "0",
                 "--device", "cpu"]) == 0
    return run


@pytest.mark.parametrize("model, option, message, reads_data", [
    ("realnvp", "x_dim=5", "option 'x_dim' is set by the data (--data), not by -o", False),
    ("realnvp", "seed=1.5", "option 'seed' is set by --seed, not by -o", False),
    ("realnvp", "affine=true", "model 'realnvp' does not take option 'affine'; its options: shape, num_scales, hidden",
     False),
    ("glow", "affine=maybe", "model 'glow': option affine must be true or false, got 'maybe'", False),
    ("ebm", "bounds=5", "model 'ebm': option bounds must be a list of 2 numbers or null, got 5", False),
    ("binary-diffusion", "hidden=0", "model 'binary-diffusion': option hidden must be a list of ints, got 0", False),
    ("made", "direct=yes", "model 'made': option direct must be true or false, got 'yes'", False),
    ("ebm", "bounds=[1,0]", "bounds must be None or (low, high) with finite low < high, got [1, 0]", True),
    ("ebm", "channels=0", "channels must be a positive int, got 0", True),
    ("gan", "channels=-8", "channels must be a positive int, got -8", True),
    ("diffusion", "channels=0", "channels must be a positive int, got 0", True),
    ("diffusion", "multipliers=[]", "multipliers must be a non-empty sequence of positive ints, got []", True),
    ("maf", "transforms=0", "transforms must be a positive int, got 0", True),
    ("nsf", "bins=0", "bins must be a positive int, got 0", True),
])
def test_options_are_checked_against_the_constructor_in_one_line(model, option, message, reads_data, tmp_path,
                                                                 monkeypatch, capsys):
    """-o KEY=VALUE: a name the constructor lacks or the command sets, or a value of another type than it declares,
    is refused before the data are read; a value out of range by the constructor, before anything is trained or
    written. Before: "got multiple values for argument" tracebacks, raw torch errors (channels=0, bounds=5), and
    affine='maybe', bounds=[1, 0] and an unused channels=0 taken as they were."""
    data, tiny = TINY_MODELS[model]
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows if reads_data else
                        lambda *a, **k: pytest.fail("the data were read before the options were checked"))
    out = tmp_path / "run"
    options = [item for option in [*tiny, option] for item in ("-o", option)]  # the last of a key counts
    one_line_error(capsys, ["train", model, "--data", data, "--out", str(out), "--epochs", "1", "--quality-samples",
                            "0", "--num-samples", "2", *options], message)
    assert not out.exists()


@pytest.mark.parametrize("name", ["made", "realnvp", "glow", "maf", "nsf", "diffusion", "binary-diffusion", "ebm"])
def test_every_family_trains_and_evaluates_on_a_npy_file(name, tmp_path):
    """`ppgen train NAME --data rows.npy` on 64 rows of its kind of data (binary, or 8-bit grey levels as uint8): the
    test log-likelihood in metrics.json equals ppgen.log_likelihood of the saved model on the rows numpy reads from
    the file (scaled to [0, 1] for the Gaussian diffusion, dequantized with the same seed for a flow). Before: "Could
    not infer dtype of slice" (flows) and "'NpyRows' object has no attribute 'max'" (diffusion, EBM), or 'to'
    (binary diffusion)."""
    import numpy as np

    from ppgen.models.flows import prepare_data

    data, options = TINY_MODELS[name]
    np.save(tmp_path / "rows.npy", few_rows(data, "test").x.numpy().astype(np.uint8))
    run = tmp_path / name
    argv = ["train", name, "--data", str(tmp_path / "rows.npy"), "--out", str(run), "--epochs", "1", "--batch-size",
            "32", "--num-samples", "4", "--quality-samples", "16", "--test-rows", "64", "--device", "cpu"]
    assert main(argv + [item for option in options for item in ("-o", option)]) == 0  # every row (budgets: fewer)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sample_quality"]["samples"] == 16 and metrics["rows"] == 64
    if name in NO_DENSITY:
        assert metrics["log_likelihood"] is None
        return
    model, _ = load_run(run)
    x = torch.from_numpy(np.load(tmp_path / "rows.npy")).float() / (255 if name == "diffusion" else 1)
    expected = log_likelihood(model, prepare_data(model, x, seed=0), num_samples=4, seed=0).mean
    assert metrics["log_likelihood"] == pytest.approx(expected, rel=1e-6)  # the same arithmetic, in another process


def test_a_failed_train_removes_what_it_created_and_only_that(tmp_path, monkeypatch, capsys):
    """Before: a refused `ppgen train` left its (empty) run folder behind."""
    out = tmp_path / "runs" / "x"
    one_line_error(capsys, ["train", "independent", "--out", str(out), "--device", "meta"],
                   "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'meta'")
    assert not (tmp_path / "runs").exists()  # both folders it made

    def failing(model, data, config, **kwargs):  # fails after writing a checkpoint
        Path(config.checkpoint_dir).mkdir()
        (Path(config.checkpoint_dir) / "checkpoint.pt").write_bytes(b"half")
        raise failure

    monkeypatch.setattr(ppgen.cli, "fit", failing)
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("the user's")
    failure = ValueError("the fit was refused")
    one_line_error(capsys, ["train", "independent", "--out", str(out)], "the fit was refused")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # what was there before stays
    failure = KeyboardInterrupt()  # an interrupt keeps its checkpoint: --resume continues from it
    assert main(["train", "independent", "--out", str(out)]) == 130
    assert (out / "checkpoints" / "checkpoint.pt").read_bytes() == b"half"


def test_the_readme_names_every_model_of_the_command():
    """Before: the README listed NSF, which `ppgen train` did not know, and left out eight models it did."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = readme[readme.index("Models: `independent`"):readme.index("Data sets: `digits`")]
    assert set(re.findall(r"`([a-z-]+)`", listed)) == set(ppgen.cli.MODELS)


def test_sample_takes_a_temperature_where_the_model_does(tmp_path, monkeypatch, capsys, independent_run):
    """`ppgen sample --temperature T` draws a flow's z ~ N(0, T^2 I), shown on [0, 1] (its pixels lie in
    [0, num_levels]); a model whose sample takes no temperature is refused in one line. Before: refused for all
    but text models, and a flow's grid drawn from [0, 256] on a [0, 1] colour scale (saturated)."""
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    run = tmp_path / "realnvp"
    assert main(["train", "realnvp", "--data", "digits_grey", "--out", str(run), "--epochs", "1", "--batch-size",
                 "32", "-o", "hidden=4", "--quality-samples", "0", "--device", "cpu"]) == 0
    drawn = []
    monkeypatch.setattr(ppgen.cli, "image_grid", lambda images, path, **kwargs: drawn.append((images, kwargs)))
    assert main(["sample", str(run), "-n", "4", "--temperature", "0.5", "--seed", "3"]) == 0
    model, _ = load_run(run)
    torch.manual_seed(3)
    expected = model.sample(4, temperature=0.5) / 256
    images, kwargs = drawn[-1]
    assert torch.equal(images, expected) and kwargs["shape"] == (1, 28, 28) and "temperature 0.5" in kwargs["title"]
    one_line_error(capsys, ["sample", str(independent_run), "--temperature", "0.5"],
                   "--temperature is for models whose sample takes one (flows and text models); "
                   "IndependentBernoulli.sample takes none")
    one_line_error(capsys, ["sample", str(run), "--temperature", "0"], "temperature must be a finite number > 0")


def test_sample_draws_the_grid_in_the_model_image_shape(tmp_path, monkeypatch, capsys):
    """Rows of 16 values are drawn as 4x4 images; rows of 15, which are no square image, are refused in one line.
    Before: both crashed in reshape(-1, 28, 28)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for width in (16, 15):
        np.save(tmp_path / f"w{width}.npy", (rng.random((64, width)) < 0.3).astype(np.uint8))
        assert main(["train", "fvsbn", "--data", str(tmp_path / f"w{width}.npy"), "--out", str(tmp_path / str(width)),
                     "--epochs", "1", "--device", "cpu"]) == 0
    drawn = []
    monkeypatch.setattr(ppgen.cli, "image_grid", lambda images, path, **kwargs: drawn.append((images, kwargs)))
    assert main(["sample", str(tmp_path / "16"), "-n", "5", "--seed", "1"]) == 0
    model, _ = load_run(tmp_path / "16")
    torch.manual_seed(1)
    assert torch.equal(drawn[-1][0], model.sample(5)) and drawn[-1][1]["shape"] == (1, 4, 4)
    one_line_error(capsys, ["sample", str(tmp_path / "15"), "-n", "5"],
                   "models rows of 15 values, which are not square grey or colour images: no grid to draw")


def test_a_grid_of_colour_images_keeps_their_colours():
    """image_grid of (3, H, W) rows: image i's pixel (c, h, w) at canvas row 1 + h, column 1 + i (W + 1) + w,
    channel c (before: a (C, H, W) shape was refused in an unpacking error)."""
    from ppgen.plots import image_grid

    rows = torch.rand(3, 3 * 2 * 5)
    canvas = image_grid(rows, shape=(3, 2, 5), ncols=3).axes[0].images[0].get_array()
    for i in range(3):
        assert torch.equal(torch.as_tensor(canvas[1:3, 1 + 6 * i:6 + 6 * i]).float(),
                           rows[i].reshape(3, 2, 5).permute(1, 2, 0))


def _config(run, **changes):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


DAMAGES = {  # a run folder half deleted or damaged -> what the one line says
    "empty model.pt": (lambda run: (run / "model.pt").write_bytes(b""),
                       "model.pt could not be loaded into a 'independent' model: the file is empty"),
    "config.json of null": (lambda run: (run / "config.json").write_text("null"),
                            "config.json holds null, not a run's settings: it was not written by `ppgen train`"),
    "config.json of a list": (lambda run: (run / "config.json").write_text("[1]"), "config.json holds [1]"),
    "options of null": (lambda run: _config(run, options=None),
                        "config.json: the options of model 'independent' must be a mapping of names to values"),
    "an option the command sets": (lambda run: _config(run, options={"x_dim": 3}),
                                   "config.json: option 'x_dim' is set by the data (--data), not by -o"),
    "an unknown model": (lambda run: _config(run, model="transformer"),
                         "config.json: unknown model 'transformer'; choices: independent"),
    "model.pt missing": (lambda run: (run / "model.pt").unlink(),
                         "is not a finished run folder: model.pt is missing"),
    "config.json missing": (lambda run: (run / "config.json").unlink(),
                            "is not a finished run folder: config.json is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_every_command_that_reads_a_run_refuses_a_damaged_one_in_one_line(damage, independent_run, tmp_path, capsys):
    """evaluate, sample, restore, compress and decompress on a half-deleted or damaged run folder (metrics.json is
    read by none of them: the leaderboard test covers it). Before: an empty model.pt ended in an IndexError, a
    config.json of null or a list in an AttributeError, options of null in a TypeError."""
    import shutil

    import numpy as np

    np.save(tmp_path / "in.npy", np.zeros((2, 784), dtype=np.uint8))
    assert main(["compress", str(independent_run), str(tmp_path / "in.npy"), str(tmp_path / "in.ppz")]) == 0
    run = tmp_path / "run"
    shutil.copytree(independent_run, run)
    DAMAGES[damage][0](run)
    for argv in (["evaluate", str(run)], ["sample", str(run)], ["restore", str(run), "--task", "inpaint"],
                 ["compress", str(run), str(tmp_path / "in.npy"), str(tmp_path / "out.ppz")],
                 ["decompress", str(run), str(tmp_path / "in.ppz"), str(tmp_path / "out.npy")]):
        one_line_error(capsys, argv, DAMAGES[damage][1])
    assert not (tmp_path / "out.ppz").exists() and not (tmp_path / "out.npy").exists()


def test_decompress_writes_the_path_it_names_and_refuses_a_folder(independent_run, tmp_path, capsys):
    """Before: `ppgen decompress RUN x.ppz DIR` wrote DIR.npy and printed "wrote DIR"."""
    import numpy as np

    rows = few_rows("digits", "test").x[:3].numpy().astype(np.uint8)
    np.save(tmp_path / "in.npy", rows)
    assert main(["compress", str(independent_run), str(tmp_path / "in.npy"), str(tmp_path / "in.ppz")]) == 0
    (tmp_path / "folder").mkdir()
    for command, source in (("decompress", "in.ppz"), ("compress", "in.npy")):
        one_line_error(capsys, [command, str(independent_run), str(tmp_path / source), str(tmp_path / "folder")],
                       f"{tmp_path / 'folder'} is a folder: give the path of the file to write")
    assert not any((tmp_path / "folder").iterdir()) and not (tmp_path / "folder.npy").exists()
    assert main(["decompress", str(independent_run), str(tmp_path / "in.ppz"), str(tmp_path / "back")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"; wrote {tmp_path / 'back'}")
    assert np.array_equal(np.load(tmp_path / "back"), rows)


def test_bad_values_of_the_command_options_name_the_option(independent_run, tmp_path, capsys):
    """Before: --quality-samples -5 was refused as "n must be a positive int" after training, --report-rows 0 went
    on with no rows, and a .npy that is not one gave numpy's words without the file's name."""
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    cases = [
        (["evaluate", str(independent_run), "--quality-samples", "-5"], "--quality-samples must be a non-negative int, "
                                                                        "got -5"),
        (["train", "independent", "--out", str(tmp_path / "q"), "--quality-samples", "-5"],
         "--quality-samples must be a non-negative int, got -5"),
        (["evaluate", str(independent_run), "--report-rows", "0"], "--report-rows must be a positive int, got 0"),
        (["compress", str(independent_run), str(tmp_path / "junk.npy"), str(tmp_path / "o.ppz")],
         f"{tmp_path / 'junk.npy'} is not a .npy array of images"),
    ]
    for argv, message in cases:
        one_line_error(capsys, argv, message)
    assert not (tmp_path / "q").exists() and not (tmp_path / "o.ppz").exists()


@pytest.mark.parametrize("argv, message", [
    (["binary-diffusion", "--elbo", "iwae"],
     "--elbo iwae: model 'binary-diffusion' trains by DiffusionELBO, its own objective, not by an estimator of fit's"),
    (["gan", "--num-particles", "2"], "--num-particles 2: model 'gan' trains by AdversarialObjective"),
    (["ebm", "--elbo", "trace", "--num-particles", "3"],
     "--elbo trace and --num-particles 3: model 'ebm' trains by LangevinContrastiveDivergence"),
    (["cvae", "--data", "{tmp}/rows.npy"], "model 'cvae' draws rows for labels, but --data {tmp}/rows.npy has none"),
])
def test_what_a_model_cannot_use_is_refused_before_it_trains(argv, message, tmp_path, monkeypatch, capsys):
    """--elbo and --num-particles for a model that trains by an objective of its own (before: binary diffusion
    trained silently by IWAE on its Pyro trace), and a conditional model on rows without labels (before: a
    traceback of Pyro's trace shapes from inside the model, and an empty run folder)."""
    import numpy as np

    np.save(tmp_path / "rows.npy", np.zeros((8, 784), dtype=np.uint8))
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    monkeypatch.setattr(ppgen.cli, "fit", lambda *a, **k: pytest.fail("it trained"))
    out = tmp_path / "run"
    one_line_error(capsys, ["train", *[a.replace("{tmp}", str(tmp_path)) for a in argv], "--out", str(out)],
                   message.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


def test_the_leaderboard_keeps_an_added_run_and_refuses_a_half_deleted_one(tmp_path, monkeypatch):
    """`leaderboard.py --add-run RUN --as independent` (before: accepted, then replaced by compression.py's figure
    in the table); a run folder without metrics.json, or with one of null, is refused naming the file."""
    leaderboard = load_script("benchmarks/leaderboard.py")
    monkeypatch.setattr(leaderboard, "RUNS", tmp_path / "leaderboard_runs.json")
    run = tmp_path / "run"
    run.mkdir()
    files = {"config.json": {"model": "independent", "options": {}, "data": "binarized_mnist", "root": None,
                             "x_dim": 784, "train_seconds": 60.0, "device": "cpu"},
             "metrics.json": {"log_likelihood": -200.5, "stderr": 0.0, "exact": True, "kind": "exact", "errs": None,
                              "method": "exact", "label": "exact", "num_samples": 0, "split": "test", "rows": 10000,
                              "num_parameters": 784},
             "history.json": {"train_elbo": [-210.0, -205.0], "best_epoch": 2}}
    for name, content in files.items():
        (run / name).write_text(json.dumps(content))
    leaderboard.add_run(run, "independent")
    row = leaderboard.collect()["independent"]
    assert (row["source"], row["nll"], row["model"]) == (str(run), 200.5, "IndependentBernoulli(784), by `ppgen train`")
    (run / "metrics.json").write_text("null")
    with pytest.raises(SystemExit, match="metrics.json holds null, not what `ppgen train` writes"):
        leaderboard.add_run(run, "independent")
    (run / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="has no metrics.json: not a finished, evaluated `ppgen train` run"):
        leaderboard.add_run(run, "independent")


@pytest.mark.slow
def test_the_command_shows_a_warning_without_a_file_path_or_a_python_line(tmp_path):
    # one epoch of the factorised model ends far from its optimum: fit warns, and the command shows it plainly
    done = subprocess.run([sys.executable, "-m", "ppgen", "train", "independent", "--data", "digits", "--epochs", "1",
                           "--quality-samples", "0", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert any(line.startswith("ConvergenceWarning: fit IndependentBernoulli") for line in lines), done.stderr
    assert not [line for line in lines if ".py:" in line or "main()" in line], done.stderr


@pytest.mark.parametrize("model, option, message", [
    ("char-transformer", "num_heads=0", "num_heads must be a positive int, got 0"),
    ("char-transformer", "width=0", "width must be a positive int, got 0"),
    ("char-transformer", "context=0", "context must be a positive int, got 0"),
    ("char-lstm", "hidden_size=0", "hidden_size must be a positive int, got 0"),
    ("char-lstm", "length=0", "length must be a positive int, got 0"),
    ("ngram", "counts=[1]", "option 'counts' is set by the training text, not by -o"),
])
def test_the_text_models_options_are_checked_in_one_line(model, option, message, tmp_path, monkeypatch, capsys):
    """Before: a ZeroDivisionError traceback (num_heads=0), "not enough values to unpack" (width=0), torch's
    "input_size must be greater than zero" (hidden_size=0) and "x_dim must be a positive int" (length=0)."""
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_characters)
    options = [item for option in [*TINY_TEXT_MODELS[model], option] for item in ("-o", option)]
    one_line_error(capsys, ["train", model, "--data", "shakespeare", "--out", str(tmp_path / "run"), *options], message)
    assert not (tmp_path / "run").exists()


def test_a_run_keeps_the_defaults_it_was_trained_with(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    assert main(["train", "vae", "--out", str(run), "--epochs", "1", "-o", "hidden=[16]", "--num-samples", "5",
                 "--quality-samples", "0"]) == 0
    assert json.loads((run / "config.json").read_text())["arguments"] == {"z_dim": 50, "hidden": [16]}
    monkeypatch.setitem(ppgen.cli.MODELS, "vae", (ppgen.cli.VAE, {"z_dim": 7, "hidden": 400}))  # a later default
    assert load_run(run)[0].z_dim == 50  # built as it was trained, not with today's defaults
    config = json.loads((run / "config.json").read_text())
    del config["arguments"]  # a folder written before runs recorded them: its options over today's defaults
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(ppgen.cli.MODELS, "vae", (ppgen.cli.VAE, {"z_dim": 50, "hidden": 400}))
    assert load_run(run)[0].z_dim == 50


def test_train_by_default_stops_at_its_time_budget_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    monkeypatch.setattr(ppgen.cli, "TRAIN_MINUTES", 1e-9)  # shorter than a step: one step a call
    argv = ["train", "vae", "--out", str(run), "-o", "hidden=[16]", "--batch-size", "32", "--num-samples", "5",
            "--quality-samples", "0"]
    with pytest.warns(ConvergenceWarning, match=r"stopped at max_minutes=1e-09 after step 1 of 40 \(0 of 20 epochs"):
        assert main(argv) == 0
    assert f"continue it with: ppgen {shlex.join(argv)} --resume" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["out_of_time"] and config["max_minutes"] == 1e-9 and config["epochs"] == 20
    with pytest.warns(ConvergenceWarning, match="after step 2 of 40"):
        assert main(argv + ["--resume"]) == 0
    assert main(argv + ["--resume", "--epochs", "2"]) == 0  # --epochs alone: no time limit
    assert not json.loads((run / "config.json").read_text())["out_of_time"]
    assert json.loads((run / "history.json").read_text())["train_elbo"].__len__() == 2


def test_a_run_folder_records_a_changed_default_and_an_older_one_is_read_as_built(tmp_path, monkeypatch):
    """A glow run records factor_out and scale_map (their defaults changed on 2026-12-07), so a later default
    cannot change the run; a folder written before, without them, is rebuilt as its model was built
    (factor_out="first", scale_map="tanh": Glow's legacy_arguments), not with today's defaults."""
    monkeypatch.setattr(ppgen.cli, "load_dataset", few_rows)
    run = tmp_path / "glow"
    argv = ["train", "glow", "--data", "digits_grey", "--out", str(run), "--epochs", "1", "--batch-size", "32",
            "--num-samples", "4", "--quality-samples", "0", "-o", "hidden=4", "-o", "steps=1"]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["arguments"]["factor_out"] == "second" and load_run(run)[0].factor_out == "second"
    assert config["arguments"]["scale_map"] == "sigmoid" and load_run(run)[0].scale_map == "sigmoid"
    old = tmp_path / "old"  # a run of the model as it was built before the arguments, its folder as then written
    assert main([*argv[:5], str(old), *argv[6:], "-o", "factor_out=first", "-o", "scale_map=tanh"]) == 0
    config = json.loads((old / "config.json").read_text())
    for key in ("arguments", "options"):
        del config[key]["factor_out"], config[key]["scale_map"]
    (old / "config.json").write_text(json.dumps(config))
    model = load_run(old)[0]  # its weights load: no scale parameters were lost or added
    assert (model.factor_out, model.scale_map) == ("first", "tanh")
