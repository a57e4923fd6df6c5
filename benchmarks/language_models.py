"""Language models of Shakespeare as text compressors: ppgen's n-gram, LSTM and Transformer against gzip, bz2, xz, zstd.

Counts Kneser-Ney n-grams on the 32 training plays (seconds), trains a character LSTM and a
character Transformer with ``ppgen.fit`` for ``--minutes`` each (a short budget here; the long runs
use ``--preset nanogpt`` on a GPU), then compresses the three test plays (Henry V, Macbeth, Much Ado
About Nothing: one text of 373,160 characters) with :func:`ppgen.compress`. For each model: the
stream's size in bytes and bits per character (header included), the model's own -log2 p of the
same rows (``model_nll_bits``: the teacher-forced conditionals, not the coder's), and how far the
coded data are from it (target: within 0.5%). Every stream is decoded and checked: the n-grams'
whole, the networks' first ``--decode-chars`` characters (their decoder steps one position at a time).

Side by side, the generic compressors on the same bytes: gzip -9, bz2 -9, xz -9e (Python's lzma,
preset 9 | PRESET_EXTREME) and zstd -19 (the ``zstd`` command where installed: the ``zstandard``
package is not a dependency).

Also the training throughput of the Transformer through ``ppgen.fit`` against the same network in a
hand-written PyTorch loop (the same batches in the same order, Adam with the same settings, the same
summed loss), measured in one run, and how far apart their parameters end up (0 when the arithmetic is the
same: they took the same steps).

    python benchmarks/language_models.py                      # about 10 minutes on one core
    python benchmarks/language_models.py --minutes 0.2 --orders 3 --decode-chars 2000   # a smoke run
    python benchmarks/language_models.py --preset nanogpt --device cuda --minutes 60

Writes ``benchmarks/results/language_models.json``, after every step (a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import bz2
import copy
import gzip
import lzma
import math
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import ppgen
from ppgen.compression import model_nll_bits
from ppgen.compression.container import unpack
from ppgen.data import load_dataset
from ppgen.inference import ConvergenceWarning, fit
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.sequence import CharLSTM, CharNGram, CharTransformer

# the networks: "small" trains a few CPU minutes; "nanogpt" is char-rnn's LSTM and nanoGPT's shakespeare_char
PRESETS = {
    "small": {"lstm": {"length": 100, "hidden_size": 256, "num_layers": 2},
              "transformer": {"context": 128, "num_layers": 4, "num_heads": 4, "width": 128},
              "batch_size": 32, "lr": 2e-3},
    "nanogpt": {"lstm": {"length": 100, "hidden_size": 512, "num_layers": 3},
                "transformer": {"context": 256, "num_layers": 6, "num_heads": 6, "width": 384},
                "batch_size": 64, "lr": 1e-3},
}


def generic(data: bytes) -> dict:
    """Size, bits per byte (a character: the text is ASCII) and seconds of each generic compressor."""
    coders = {
        "gzip -9": lambda: gzip.compress(data, 9),
        "bz2 -9": lambda: bz2.compress(data, 9),
        "xz -9e": lambda: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    }
    if shutil.which("zstd"):
        coders["zstd -19"] = lambda: subprocess.run(["zstd", "-19", "-c", "-q"], input=data, capture_output=True,
                                                    check=True).stdout
    out = {"raw": {"bytes": len(data), "bits_per_char": 8.0, "seconds": 0.0}}
    for name, run in coders.items():
        start = time.perf_counter()
        size = len(run())
        out[name] = {"bytes": size, "bits_per_char": 8 * size / len(data), "seconds": time.perf_counter() - start}
    if "zstd -19" not in out:
        out["zstd -19"] = {"bytes": None, "note": "the zstd command is not installed"}
    return out


def measure(model, text: str, decode_chars: int | None) -> dict:
    """Compress ``text``, check the code length against the model's -log2 p, decode (all or a prefix), time."""
    model = model.cpu().eval()
    start = time.perf_counter()
    data = ppgen.compress(model, text)
    encode_s = time.perf_counter() - start
    header, words = unpack(data)
    nll, _ = model_nll_bits(model, text)
    part = text if decode_chars is None or decode_chars >= len(text) else text[:decode_chars]
    part_data = data if part is text else ppgen.compress(model, part)
    start = time.perf_counter()
    back = ppgen.decompress(model, part_data)
    decode_s = time.perf_counter() - start
    return {
        "method": data.method, "bytes": len(data), "header_bytes": len(data) - 4 * len(words),
        "bits_per_char": 8 * len(data) / len(text), "model_bits_per_char": nll / len(text),
        "code_over_model": 32 * len(words) / nll - 1,  # the coded words against -log2 p, header left out
        "file_over_model": 8 * len(data) / nll - 1,
        "encode_chars_per_s": len(text) / encode_s,
        "decode_chars": len(part), "decode_chars_per_s": len(part) / decode_s,
        "round_trip_exact": back == part, "num_parameters": model.num_parameters,
    }


def train_within(model, text_data, seconds: float, batch_size: int, lr: float, device: str, seed: int) -> dict:
    """``ppgen.fit`` for about ``seconds``: a first epoch on a few rows gives the rate of its steps; then one epoch
    on as many rows as the rest of the time allows, windows of the model's length at random offsets of the
    training text."""
    length = model.x_dim
    generator = torch.Generator().manual_seed(seed)

    def rows(n: int) -> torch.Tensor:
        starts = torch.randint(len(text_data.ids) - length, (n,), generator=generator)
        return text_data.ids[starts[:, None] + torch.arange(length)]

    start = time.perf_counter()  # a time budget stops training early: no convergence diagnostic
    probe = fit(model, rows(4 * batch_size), epochs=1, batch_size=batch_size, lr=lr, seed=seed, device=device,
                progress=False, convergence_tol=None)
    n = max(batch_size, int(0.9 * probe.examples_per_second * (seconds - (time.perf_counter() - start))))
    result = fit(model, rows(n), epochs=1, batch_size=batch_size, lr=lr, seed=seed + 1, device=device,
                 progress=False, convergence_tol=None)
    return {"train_seconds": time.perf_counter() - start, "train_rows": 4 * batch_size + n, "row_length": length,
            "train_loss_first": probe.losses[0], "train_loss_last": result.losses[-1]}


def throughput(make, rows: torch.Tensor, batch_size: int, lr: float, seed: int, repeats: int = 2) -> dict:
    """Steps per second of one epoch over ``rows`` through ``ppgen.fit`` and through a hand-written loop of the
    same batches (fit's permutation for epoch 0), loss (the negative log-likelihood summed over the batch, scaled
    to all rows, as fit's) and Adam; each from the same initial network, alternated ``repeats`` times, the best
    time of each kept. ``fit`` is timed as called (its checks of the model on the first batch and its
    convergence diagnostic after the last included), without the convergence diagnostic, and over its
    steps alone (``FitResult.examples_per_second``)."""
    n = len(rows)
    batches = list(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003)).split(batch_size))

    def by_hand(model):
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
        for idx in batches:
            x = rows[idx]
            logits = model.conditional_logits(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum") * n / len(idx)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    def with_fit(model, **options):
        result = fit(model, rows, epochs=1, batch_size=batch_size, lr=lr, seed=seed, device="cpu", progress=False,
                     **options)
        best["fit steps only"] = min(best["fit steps only"], n / result.examples_per_second)

    runs = {"hand": by_hand, "fit": with_fit, "fit without the convergence diagnostic":
            lambda model: with_fit(model, convergence_tol=None)}
    best, models = dict.fromkeys([*runs, "fit steps only"], math.inf), {}
    for _ in range(repeats):
        for name, run in runs.items():
            models[name] = make()
            start = time.perf_counter()
            run(models[name])
            best[name] = min(best[name], time.perf_counter() - start)
    diff = max((a - b).abs().max().item() for a, b in zip(models["hand"].parameters(), models["fit"].parameters()))
    return {"steps": len(batches), "batch_size": batch_size, "row_length": rows.shape[1],
            "num_parameters": models["hand"].num_parameters,
            "steps_per_s": {name: len(batches) / seconds for name, seconds in best.items()},
            "time_over_hand": {name: seconds / best["hand"] for name, seconds in best.items() if name != "hand"},
            "max_parameter_difference": diff}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="5,7", help="n-gram orders to count (default: %(default)s)")
    parser.add_argument("--preset", default="small", choices=PRESETS)
    parser.add_argument("--minutes", type=float, default=1.5,
                        help="training budget of the LSTM and of the Transformer (default: %(default)s)")
    parser.add_argument("--decode-chars", type=int, default=20_000,
                        help="characters the networks' streams are decoded and checked on (0: all)")
    parser.add_argument("--throughput-rows", type=int, default=512, help="rows of the fit-versus-loop comparison")
    parser.add_argument("--device", default="cpu", help="where the networks train (coding runs on the CPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "language_models.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    train, test = load_dataset("shakespeare", "train"), load_dataset("shakespeare", "test")
    results = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
               "threads": args.threads, "torch": torch.__version__, "preset": args.preset, "minutes": args.minutes,
               "test_plays": list(test.plays), "test_characters": len(test.text), "generic": {}, "models": {}}

    def save():
        write_json_atomic(results, args.out)

    results["generic"] = generic(test.text.encode("utf-8"))
    save()
    decode = args.decode_chars or None
    for order in (int(o) for o in args.orders.split(",") if o):
        start = time.perf_counter()
        model = CharNGram.fit_counts(train.ids[None], train.vocabulary, order, length=256)
        row = {"fit_seconds": time.perf_counter() - start, "contexts": len(model.keys)}
        row.update(measure(model, test.text, None))
        results["models"][f"ngram-{order}"] = row
        save()
        print(f"ngram-{order}: {row['bits_per_char']:.4f} bits/char", flush=True)
    for name, cls in (("lstm", CharLSTM), ("transformer", CharTransformer)):
        model = cls(train.vocabulary, **preset[name], seed=args.seed)
        row = train_within(model, train, 60 * args.minutes, preset["batch_size"], preset["lr"], args.device, args.seed)
        row.update(measure(model, test.text, decode))
        results["models"][name] = row
        save()
        print(f"{name}: {row['bits_per_char']:.4f} bits/char", flush=True)
    make = lambda: CharTransformer(train.vocabulary, **preset["transformer"], seed=args.seed)
    rows = train.windows(preset["transformer"]["context"])[:args.throughput_rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results["throughput"] = throughput(make, rows, preset["batch_size"], preset["lr"], args.seed)
    save()
    print("time over the hand-written loop's: " + ", ".join(f"{name} {ratio:.3f}" for name, ratio in
                                                            results["throughput"]["time_over_hand"].items()))
    return results


if __name__ == "__main__":
    main()
