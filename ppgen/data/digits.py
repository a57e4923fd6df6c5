"""The embedded digits (binarized and greyscale) and the row container every loader returns.

A module of its own so that the loaders built on the digits (:mod:`ppgen.data.colour`) import it
without importing :mod:`ppgen.data`, which dispatches to them.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Dataset", "load_digits"]


class Dataset(NamedTuple):
    """Rows ``x`` (N, D) and labels ``y`` (N,) or None. Unpacks as ``x, y = dataset``."""

    x: torch.Tensor
    y: torch.Tensor | None


def load_digits(split: str, grey: bool = False) -> Dataset:
    """The shipped digits of ``split``: 0/1 pixels, or with ``grey`` the intensities 0..255 as floats."""
    with resources.files("ppgen.data").joinpath("digits.npz").open("rb") as f, np.load(f) as arrays:
        pixels = np.unpackbits(arrays[f"{split}_x"], axis=1, count=784)
        labels = arrays[f"{split}_y"]
    if grey:
        with resources.files("ppgen.data").joinpath("digits_grey.npz").open("rb") as f, np.load(f) as arrays:
            pixels = arrays[f"{split}_x"]
    return Dataset(torch.from_numpy(pixels).float(), torch.from_numpy(labels.astype(np.int64)))
