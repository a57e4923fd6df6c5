"""The embedded digits and the loaders of the full sets."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from ppgen.data import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_digits_splits(digits):
    sizes = {"train": 10_000, "valid": 1_000, "test": 2_000}
    for split, (x, y) in digits.items():
        assert x.shape == (sizes[split], 784) and x.dtype == torch.float32
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))
    # binarized MNIST's mean pixel is 0.1306 (train); a 10,000-row subsample is within 0.003
    assert abs(digits["train"].x.mean().item() - 0.1306) < 0.003


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="the MNIST idx files are not beside the repo")
def test_embedded_digits_are_what_the_script_derives():
    derived = load_script("scripts/make_digits.py").derive(SHARED / "MNIST" / "raw")
    from importlib import resources

    with resources.files("ppgen.data").joinpath("digits.npz").open("rb") as f, np.load(f) as shipped:
        assert sorted(shipped.files) == sorted(derived)
        for key, value in derived.items():
            assert np.array_equal(shipped[key], value), key


@pytest.mark.skipif(not (SHARED / "binarized_mnist.npz").is_file(), reason="binarized MNIST is not beside the repo")
def test_binarized_mnist_from_root(monkeypatch):
    x, y = load_dataset("binarized_mnist", "valid", root=SHARED)
    assert x.shape == (10_000, 784) and y is None
    assert abs(x.mean().item() - 0.131127) < 1e-6  # the value in the data README
    monkeypatch.setenv("PPGEN_DATA", str(SHARED))
    assert torch.equal(load_dataset("binarized_mnist", "valid").x, x)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="the MNIST idx files are not beside the repo")
def test_mnist_static_and_dynamic_binarization():
    x, y = load_dataset("mnist", "train", root=SHARED)
    assert x.shape == (50_000, 784) and y[:5].tolist() == [5, 0, 4, 1, 9]
    dynamic, _ = load_dataset("mnist", "valid", root=SHARED, binarize="dynamic")
    idx = torch.arange(100)
    first, second = dynamic[idx], dynamic[idx]
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    # Bernoulli(intensity): the mean of the draws matches the mean intensity (0.13) closely
    assert abs(first.mean().item() - dynamic.intensities[:100].mean().item()) < 0.01


def test_missing_files_say_which_file_and_where(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"binarized_mnist\.npz not found \(looked in root="):
        load_dataset("binarized_mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte not found"):
        load_dataset("mnist", root=tmp_path)
    monkeypatch.delenv("PPGEN_DATA", raising=False)
    with pytest.raises(ValueError, match="pass root=FOLDER or set PPGEN_DATA"):
        load_dataset("binarized_mnist")
