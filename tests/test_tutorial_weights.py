"""The long runs' weights that the tutorials load (tutorials/weights/): each file is the one its README names (by
SHA-256), loads into the model built with the stated arguments, and scores test digits as a trained model does."""

import hashlib
import math
import re
from pathlib import Path

import pytest
import torch

import ppgen
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
    glow = ppgen.load_fitted(ppgen.Glow(784, levels=2, steps=8, hidden=64, blocks=1), WEIGHTS / "glow_mnist.pt")
    x = dequantize(ppgen.load_dataset("digits_grey", "test").x[:200], seed=0)
    with torch.no_grad():
        bits = -glow.eval().log_prob(x).mean().item() / (784 * math.log(2))
    assert bits == pytest.approx(1.43, abs=0.1)
