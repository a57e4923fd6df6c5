"""Derive ppgen's embedded ``digits`` set from the MNIST idx files.

The recipe behind the standard binarized MNIST (Larochelle & Murray 2011): each pixel is
sampled once from Bernoulli(intensity / 255) with a fixed seed, and the sample is kept.
``train`` and ``valid`` are disjoint random subsets of the MNIST training images, ``test`` a
random subset of the MNIST test images. Pixels are stored bit-packed (98 bytes per image).
``digits_grey.npz`` holds the same rows in greyscale: the MNIST intensities 0..255 (uint8) of
the images the binarized rows were sampled from (``digits_grey``, for continuous models).

    python scripts/make_digits.py --mnist ../shared/data/MNIST/raw --out ppgen/data/digits.npz

The output is deterministic: ``tests/test_data.py`` re-derives it when the MNIST files are
present and checks it equals the shipped file byte for byte in its arrays (``tests/test_flows.py``
does the same for ``digits_grey.npz``).
"""

import argparse
from pathlib import Path

import numpy as np

SEED = 20111
SIZES = {"train": 10_000, "valid": 1_000, "test": 2_000}


def read_idx(path: Path, header: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8, offset=header)


def derive(mnist_raw: Path) -> dict[str, np.ndarray]:
    """The embedded set's arrays, from the directory holding the four MNIST idx files."""
    train_images = read_idx(mnist_raw / "train-images-idx3-ubyte", 16).reshape(-1, 784)
    train_labels = read_idx(mnist_raw / "train-labels-idx1-ubyte", 8)
    test_images = read_idx(mnist_raw / "t10k-images-idx3-ubyte", 16).reshape(-1, 784)
    test_labels = read_idx(mnist_raw / "t10k-labels-idx1-ubyte", 8)

    rng = np.random.default_rng(SEED)
    train_pool = rng.permutation(len(train_images))
    test_pool = rng.permutation(len(test_images))
    indices = {
        "train": np.sort(train_pool[: SIZES["train"]]),
        "valid": np.sort(train_pool[SIZES["train"] : SIZES["train"] + SIZES["valid"]]),
        "test": np.sort(test_pool[: SIZES["test"]]),
    }
    arrays = {}
    for split, idx in indices.items():
        images, labels = (test_images, test_labels) if split == "test" else (train_images, train_labels)
        intensity = images[idx].astype(np.float64) / 255.0
        pixels = (rng.random(intensity.shape) < intensity).astype(np.uint8)  # Bernoulli(intensity)
        arrays[f"{split}_x"] = np.packbits(pixels, axis=1)
        arrays[f"{split}_y"] = labels[idx].astype(np.uint8)
        arrays[f"{split}_mnist_index"] = idx.astype(np.int32)
    return arrays


def derive_grey(mnist_raw: Path, arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The greyscale rows (uint8 0..255, (N, 784)) of the images behind ``derive``'s binarized rows."""
    arrays = derive(mnist_raw) if arrays is None else arrays
    train_images = read_idx(mnist_raw / "train-images-idx3-ubyte", 16).reshape(-1, 784)
    test_images = read_idx(mnist_raw / "t10k-images-idx3-ubyte", 16).reshape(-1, 784)
    return {f"{split}_x": (test_images if split == "test" else train_images)[arrays[f"{split}_mnist_index"]]
            for split in SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path("../shared/data/MNIST/raw"))
    parser.add_argument("--out", type=Path, default=Path("ppgen/data/digits.npz"))
    args = parser.parse_args()
    arrays = derive(args.mnist)
    np.savez_compressed(args.out, **arrays)
    grey = args.out.with_name(args.out.stem + "_grey.npz")
    np.savez_compressed(grey, **derive_grey(args.mnist, arrays))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          + ", ".join(f"{s} {len(arrays[s + '_y'])}" for s in SIZES))


if __name__ == "__main__":
    main()
