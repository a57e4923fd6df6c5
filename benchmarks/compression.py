"""Lossless compression of the binarized MNIST test set: ppgen models against gzip, bz2, lzma and PNG.

Trains each model on binarized MNIST training rows within a few CPU minutes (``ppgen.fit``, Adam,
validation early stopping), or loads it from a run folder (``--run NAME=DIR``), then compresses
the 10,000 static test rows with :func:`ppgen.compress` and reports bits/dim (the whole ``.ppz``
file, header included) next to the model's own NLL (exact models) or -ELBO (VAE) in bits/dim,
and images/s to encode and decode. Every decode is checked to reproduce its input exactly.
Decoding runs the model's sequential sampler; for MADE and PixelCNN that costs one network pass
per pixel, so they are decoded on the first ``--decode-rows`` test rows (a separate stream).

Generic compressors get the test set as ``numpy.packbits`` bytes (one bit per pixel, 98,000
bytes): gzip -9, bz2 -9, lzma -9e; PNG is a 1-bit image, per digit (10,000 files) and as one
28 x 280,000 strip.

    python benchmarks/compression.py --root ../shared/data --minutes 2 --train-rows 10000

Writes ``benchmarks/results/compression.json``.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ppgen
from ppgen.compression import model_nll_bits
from ppgen.data import load_dataset
from ppgen.inference import fit
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models import FVSBN, MADE, NADE, VAE, BayesNet, IndependentBernoulli, PixelCNN

SIDE = 28
# name -> (constructor, description, batch size, learning rate, rows to decode (None: all))
MODELS = {
    "independent": (None, "IndependentBernoulli(784), frequencies", None, None, None),
    "bayesnet": (None, "BayesNet, parents: up-left, up, up-right, left neighbours; counts + 1", None, None, None),
    "fvsbn": (lambda: FVSBN(784), "FVSBN(784)", 100, 1e-3, None),
    "nade": (lambda: NADE(784, hidden=100), "NADE(784, hidden=100)", 100, 1e-3, None),
    "made": (lambda: MADE(784, hidden_sizes=(500,)), "MADE(784, hidden_sizes=(500,))", 100, 1e-3, 1000),
    "pixelcnn": (lambda: PixelCNN(channels=16, layers=4, kernel=5), "PixelCNN(channels=16, layers=4, kernel=5)",
                 100, 1e-3, 100),
    "vae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200)), BB-ANS",
            100, 1e-3, None),
}
REFERENCE = {"bb-ans (VAE)": 0.19, "gzip": 0.33}  # Townsend et al. 2019, Table 2, stochastically binarized MNIST


def raster_bayesnet(train: torch.Tensor) -> BayesNet:
    """Pixel (r, c) depends on its up-left, up, up-right and left neighbours (those that exist): a DAG in
    raster order, CPTs by counting with pseudo-count 1."""
    names = [f"p{r}_{c}" for r in range(SIDE) for c in range(SIDE)]
    parents = {}
    for r in range(SIDE):
        for c in range(SIDE):
            near = [(r - 1, c - 1), (r - 1, c), (r - 1, c + 1), (r, c - 1)]
            parents[names[r * SIDE + c]] = [names[i * SIDE + j] for i, j in near if 0 <= i and 0 <= j < SIDE]
    net = BayesNet({n: ["0", "1"] for n in names}, parents)
    return net.fit_mle(train, pseudo_count=1.0)


def train(model, train_x, valid_x, *, minutes: float, batch_size: int, lr: float, seed: int) -> tuple[int, float]:
    """fit() one epoch per call (resuming from a checkpoint) until the time or the patience runs out."""
    start, epoch = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*had not converged")  # a time budget stops training early
        for epoch in range(1, 10_000):
            result = fit(model, train_x, epochs=epoch, batch_size=batch_size, lr=lr, seed=seed, valid=valid_x,
                         patience=3, checkpoint_dir=folder, resume=epoch > 1, progress=False)
            elapsed = time.perf_counter() - start
            if result.stopped_early or elapsed * (epoch + 1) / epoch > minutes * 60:
                break
    return epoch, time.perf_counter() - start


def generic(test: np.ndarray) -> dict:
    """bits/dim and seconds of the generic compressors on the same test digits."""
    from PIL import Image

    dims, packed = test.size, np.packbits(test, axis=None).tobytes()

    def png(image: np.ndarray) -> int:
        buffer = io.BytesIO()
        Image.fromarray(image.astype(bool)).save(buffer, format="PNG", optimize=True)
        return len(buffer.getvalue())

    coders = {
        "gzip -9": lambda: len(gzip.compress(packed, 9)),
        "bz2 -9": lambda: len(bz2.compress(packed, 9)),
        "lzma -9e": lambda: len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)),
        "PNG per image": lambda: sum(png(image) for image in test.reshape(-1, SIDE, SIDE)),
        "PNG strip": lambda: png(test.reshape(-1, SIDE)),
    }
    out = {"packbits (raw)": {"bytes": len(packed), "bits_per_dim": 8 * len(packed) / dims, "seconds": 0.0}}
    for name, run in coders.items():
        start = time.perf_counter()
        size = run()
        out[name] = {"bytes": size, "bits_per_dim": 8 * size / dims, "seconds": time.perf_counter() - start}
    return out


def measure(model, test_x: torch.Tensor, decode_rows: int | None, batch_size: int) -> dict:
    """Compress all test rows, decompress (all or the first ``decode_rows``), check, time."""
    dims = test_x.numel()
    start = time.perf_counter()
    data = ppgen.compress(model, test_x, batch_size=batch_size)
    encode_s = time.perf_counter() - start
    nll_bits, kind = model_nll_bits(model, test_x)
    part = test_x if decode_rows is None or decode_rows >= len(test_x) else test_x[:decode_rows]
    part_data = data if part is test_x else ppgen.compress(model, part, batch_size=batch_size)
    start = time.perf_counter()
    back = ppgen.decompress(model, part_data, batch_size=batch_size)
    decode_s = time.perf_counter() - start
    return {
        "bytes": len(data), "bits_per_dim": 8 * len(data) / dims,
        "model_bound": kind, "model_bits_per_dim": nll_bits / dims, "model_nats_per_image": nll_bits * math.log(2) / len(test_x),
        "code_over_model": 8 * len(data) / nll_bits - 1,
        "encode_images_per_s": len(test_x) / encode_s, "encode_seconds": encode_s,
        "decode_rows": len(part), "decode_images_per_s": len(part) / decode_s, "decode_seconds": decode_s,
        "round_trip_exact": bool(torch.equal(back, part)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="folder of binarized_mnist.npz (or $PPGEN_DATA)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="take model NAME from a run folder instead of training it")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per model (default 2)")
    parser.add_argument("--vae-minutes", type=float, default=None, help="training budget of the VAE (default --minutes)")
    parser.add_argument("--train-rows", type=int, default=10_000, help="training rows for the networks")
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=500, help="rows per network call when coding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compression.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = dict(item.split("=", 1) for item in args.run)

    train_all = load_dataset("binarized_mnist", "train", root=args.root).x
    valid_x = load_dataset("binarized_mnist", "valid", root=args.root).x
    test_x = load_dataset("binarized_mnist", "test", root=args.root).x[:args.test_rows]
    train_x = train_all[:args.train_rows]
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "test_rows": len(test_x), "train_rows": args.train_rows, "reference_townsend_2019": REFERENCE,
        "generic": generic(test_x.numpy().astype(np.uint8)), "models": {},
    }
    print(json.dumps(report["generic"], indent=1), flush=True)
    for name in args.models.split(","):
        make, description, batch_size, lr, decode_rows = MODELS[name]
        torch.manual_seed(args.seed)
        start, epochs = time.perf_counter(), None
        if name in runs:
            from ppgen.cli import load_run

            model, _ = load_run(Path(runs[name]))
            description += f" (from {runs[name]})"
        elif name == "independent":
            model = IndependentBernoulli.from_frequencies(train_all, pseudo_count=1.0)
        elif name == "bayesnet":
            model = raster_bayesnet(train_all)
        else:
            model = make()
            minutes = args.vae_minutes if name == "vae" and args.vae_minutes else args.minutes
            epochs, _ = train(model, train_x, valid_x, minutes=minutes, batch_size=batch_size, lr=lr, seed=args.seed)
        train_s = time.perf_counter() - start
        row = {"model": description, "parameters": model.num_parameters, "epochs": epochs, "train_seconds": train_s,
               **measure(model, test_x, decode_rows, args.batch_size)}
        report["models"][name] = row
        print(name, json.dumps(row), flush=True)
        write_json_atomic(report, args.out)

    best_generic = min(report["generic"].items(), key=lambda kv: kv[1]["bits_per_dim"])
    best_model = min(report["models"].items(), key=lambda kv: kv[1]["bits_per_dim"])
    report["summary"] = {
        "best_generic": best_generic[0], "best_generic_bits_per_dim": best_generic[1]["bits_per_dim"],
        "best_model": best_model[0], "best_model_bits_per_dim": best_model[1]["bits_per_dim"],
        "ratio": best_generic[1]["bits_per_dim"] / best_model[1]["bits_per_dim"],
        "best_model_code_over_model": best_model[1]["code_over_model"],
    }
    print(json.dumps(report["summary"], indent=1))
    write_json_atomic(report, args.out)
    return report


if __name__ == "__main__":
    main()
