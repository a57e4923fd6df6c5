"""Language models of Shakespeare as text compressors: ppgen's n-gram, LSTM and Transformer against gzip, bz2, xz, zstd.

Counts Kneser-Ney n-grams on the 32 training plays (seconds), trains a character LSTM and a
character Transformer with ``ppgen.fit`` for ``--minutes`` each (a short budget here; the long runs:
``--preset cpu-long`` below, or ``--preset nanogpt`` on a GPU), then compresses the three test plays
(Henry V, Macbeth, Much Ado About Nothing: one text of 373,160 characters) with :func:`ppgen.compress`.
For each model: the stream's size in bytes and bits per character (header included), the model's own
-log2 p of the same rows (``model_nll_bits``: the teacher-forced conditionals, not the coder's), and how far the
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

The ``cpu-long`` preset trains the LSTM and the Transformer for hours on one core, resumably, as
``benchmarks/ebm_gan.py``'s does: a run folder per model (``--runs``) holds ``fit``'s checkpoint, a
``curve.json`` written after every epoch (the validation bits/char every few epochs, with the seconds
and CPU seconds so far) and, once the planned epochs are done, ``result.json``: the test bits/char and
the compression row on all three test plays. Each call trains at most ``--max-minutes`` per model; the
same command continues the run; ``--evaluate`` scores the checkpoint as it stands:

    OMP_NUM_THREADS=1 python benchmarks/language_models.py --preset cpu-long --models lstm,transformer \
        --runs ~/ppgen-runs/language_models-long --max-minutes 100    # run it again to continue
    OMP_NUM_THREADS=1 python benchmarks/language_models.py --preset cpu-long --models lstm --runs /tmp/lm \
        --max-minutes 0.5 --evaluate --test-chars 5000 --decode-chars 500 --out /tmp/lm.json   # a smoke run

It writes ``benchmarks/results/language_models_long.json`` (``--out``): a row per model with its status
(partial or complete), hours, epochs and validation curve, and the evaluation once there is one.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
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
from ppgen.compression.text import text_rows
from ppgen.data import load_dataset
from ppgen.inference import ConvergenceWarning, fit
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.sequence import CharLSTM, CharNGram, CharTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_run import CHECKPOINT_MINUTES, budgeted_epochs, scheduled_lr  # noqa: E402  (a long run's epochs, lr)

# the networks: "small" trains a few CPU minutes; "nanogpt" is char-rnn's LSTM and nanoGPT's shakespeare_char
PRESETS = {
    "small": {"lstm": {"length": 100, "hidden_size": 256, "num_layers": 2},
              "transformer": {"context": 128, "num_layers": 4, "num_heads": 4, "width": 128},
              "batch_size": 32, "lr": 2e-3},
    "nanogpt": {"lstm": {"length": 100, "hidden_size": 512, "num_layers": 3},
                "transformer": {"context": 256, "num_layers": 6, "num_heads": 6, "width": 384},
                "batch_size": 64, "lr": 1e-3},
}

# The long runs (--preset cpu-long), each on one core: rows of 256 characters for both networks (nanoGPT's context),
# so that both are scored on the same rows. An epoch is rows_per_epoch windows at random offsets of the training
# plays (RandomWindows): about 1.6 CPU minutes of the LSTM, 1.75 of the Transformer, so the LSTM's 150 epochs
# take about 4 CPU hours and the Transformer's 270 about 8 (the long run is the Transformer's). The
# learning rate warms up linearly over warmup_epochs, then falls along a half cosine to a tenth at the last
# epoch (scheduled_lr). Every eval_every epochs the curve gets the bits/char of the first valid_chars characters
# of the validation plays. Sizes: a pilot on one thread of the loaded machine (200 CPU seconds each, batches of
# 16 rows of 256) left the smallest ahead (LSTM 2x256 2.45 bits/char on validation, 2x384 2.62; Transformer
# 4x128 3.34, 4x192 3.49), but a budget 70-140 times longer moves the best size up by about the square root of
# that (compute-optimal scaling): these are the larger ones, 2.4 M and 2.7 M parameters, which see 64 M and
# 90 M training characters, 15 and 21 passes over the 4.25 M. The LSTM ran without dropout (it began before fit
# checked and validated in evaluation mode) and overfits: training 1.59 bits/char at epoch 135 against 1.89 on
# validation, flat since epoch 100. The Transformer has nanoGPT's shakespeare_char regularisation: dropout 0.2 and
# gradients clipped to norm 1.
LONG = {
    "lstm": {"model": {"length": 256, "hidden_size": 384, "num_layers": 2}, "batch_size": 16, "lr": 2e-3,
             "warmup_epochs": 3, "epochs": 150, "rows_per_epoch": 1600, "eval_every": 5, "valid_chars": 51_200},
    "transformer": {"model": {"context": 256, "num_layers": 6, "num_heads": 6, "width": 192, "dropout": 0.2},
                    "batch_size": 16, "lr": 1.5e-3, "warmup_epochs": 3, "epochs": 270, "rows_per_epoch": 1280,
                    "clip_norm": 1.0, "eval_every": 5, "valid_chars": 51_200},
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


class RandomWindows:
    """``rows`` windows of ``length`` consecutive ids of the text ``ids`` (T,), as ``fit``'s training rows: each
    indexed row is a window at a uniform random offset, drawn afresh from torch's global generator (as
    :class:`ppgen.data.DynamicBinarization` draws its pixels). ``fit`` seeds that generator and keeps its
    state in the checkpoint, so every epoch trains on new windows, and a resumed run on the ones an
    unbroken run would have drawn."""

    def __init__(self, ids: torch.Tensor, length: int, rows: int):
        if len(ids) < length:
            raise ValueError(f"ids holds {len(ids)} characters, fewer than a window's length ({length})")
        self.ids, self.length, self.shape = ids, length, torch.Size((rows, length))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        starts = torch.randint(len(self.ids) - self.length + 1, (torch.as_tensor(idx).numel(),))
        return self.ids[starts[:, None] + torch.arange(self.length)]

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and dim != self.length:
            raise ValueError(f"{name} has windows of {self.length} characters, but the model's rows have {dim}")


@torch.no_grad()
def text_bits_per_char(model, ids: torch.Tensor) -> float:
    """-log2 p of the text ``ids`` (T,) per character, its rows cut as ``compress`` codes them and
    ``model_nll_bits`` scores them (consecutive rows of the model's length, each read from the start symbol),
    with dropout off."""
    training = model.training
    model.eval()
    nats = sum(-model.log_prob(rows).sum().item() for group in text_rows(ids, model.x_dim) for rows in group.split(64))
    model.train(training)
    return nats / (len(ids) * math.log(2))


def long_lm(args, name: str, train, valid, test, cfg: dict | None = None) -> dict:
    """Train the long ``name`` ("lstm" or "transformer", settings ``cfg``, by default :data:`LONG`'s) in
    ``args.runs / name`` for at most ``args.max_minutes`` this call, resuming what earlier calls trained; evaluate
    once the planned epochs are done (or, with ``args.evaluate``, the checkpoint as it stands): the test plays'
    bits/char (their first ``args.test_chars`` characters where given) and their compression. Returns the row for
    the report."""
    cfg, run = cfg or LONG[name], args.runs / name
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"config": cfg, "epochs": []}
    if curve["config"] != json.loads(json.dumps(cfg)):
        raise SystemExit(f"{curve_path} was written with the settings {curve['config']}, but this run's are {cfg}: "
                         "continue with those settings, or start a new run in another --runs folder")
    model = (CharLSTM if name == "lstm" else CharTransformer)(train.vocabulary, **cfg["model"], seed=args.seed)
    rows = RandomWindows(train.ids, model.x_dim, cfg["rows_per_epoch"])
    valid_ids = valid.ids[: cfg["valid_chars"]]
    settings = dict(batch_size=cfg["batch_size"], device=args.device, seed=args.seed, checkpoint_dir=run / "checkpoint",
                    checkpoint_minutes=CHECKPOINT_MINUTES, resume=True, progress=False,
                    convergence_tol=None,  # a time budget: no convergence diagnostic
                    clip_norm=cfg.get("clip_norm"))
    start, cpu_start, done = time.perf_counter(), time.process_time(), len(curve["epochs"])
    before = curve["epochs"][-1] if done else {"seconds": 0.0, "cpu_seconds": 0.0}
    for epoch in budgeted_epochs(done, cfg["epochs"], args.max_minutes):
        lr = scheduled_lr(epoch, cfg)
        result = fit(model.train(), rows, epochs=epoch, lr=lr, **settings)
        row = {"epoch": epoch, "lr": lr, "steps": result.steps,
               "train_bits_per_char": -result.train_elbo[-1] / (model.x_dim * math.log(2)),
               "seconds": round(before["seconds"] + time.perf_counter() - start, 1),
               "cpu_seconds": round(before["cpu_seconds"] + time.process_time() - cpu_start, 1)}
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
            row["valid_bits_per_char"] = text_bits_per_char(model, valid_ids)
            print(f"{name} epoch {epoch}/{cfg['epochs']}: lr {lr:.2e}, bits/char {row['train_bits_per_char']:.3f} "
                  f"(train), {row['valid_bits_per_char']:.3f} (valid), {row['cpu_seconds'] / 3600:.2f} CPU hours",
                  flush=True)
        curve["epochs"].append(row)
        write_json_atomic(curve, curve_path)
    epochs = len(curve["epochs"])
    if done and not curve["epochs"][done:]:  # nothing trained in this call: load the checkpoint's parameters
        fit(model, rows, epochs=done, lr=scheduled_lr(done, cfg), **settings)
    last = curve["epochs"][-1] if epochs else before
    report = {"status": "complete" if epochs >= cfg["epochs"] else "partial: stopped by the time budget",
              "epochs": epochs, "planned_epochs": cfg["epochs"], "train_hours": round(last["seconds"] / 3600, 2),
              "cpu_hours": round(last["cpu_seconds"] / 3600, 2), "config": cfg, "num_parameters": model.num_parameters,
              "valid_characters": len(valid_ids),
              "valid_curve": [(e["epoch"], e["seconds"], e["cpu_seconds"], e["valid_bits_per_char"])
                              for e in curve["epochs"] if "valid_bits_per_char" in e]}
    if epochs < cfg["epochs"] and not args.evaluate:
        return report
    # a finished schedule's figures, or (--evaluate) those of the checkpoint as it stands, named by its epoch
    text = test.text[: args.test_chars] if args.test_chars else test.text
    result_path = run / ("result.json" if epochs >= cfg["epochs"] else f"result-epoch{epochs}.json")
    if result_path.exists() and json.loads(result_path.read_text())["test_characters"] == len(text):
        return {**report, **json.loads(result_path.read_text())}
    t0 = time.perf_counter()
    coded = measure(model, text, args.decode_chars or None)
    evaluation = {"test_characters": len(text), "test_bits_per_char": coded["model_bits_per_char"],
                  "compression": coded, "evaluation_seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(evaluation, result_path)
    return {**report, **evaluation}


def long_runs(args) -> dict:
    """The ``cpu-long`` preset: :func:`long_lm` for each of ``args.models``, each row written into ``args.out``
    as it comes; beside the evaluated rows, the generic compressors and the short run's n-grams on the same text."""
    out = args.out or Path(__file__).parent / "results" / "language_models_long.json"
    report = json.loads(out.read_text()) if out.exists() else {"preset": "cpu-long", "models": {}}
    report.update(machine=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__)
    train, valid, test = (load_dataset("shakespeare", split) for split in ("train", "valid", "test"))
    for name in args.models.split(","):
        if name not in LONG:
            raise SystemExit(f"cpu-long trains: {', '.join(LONG)}; got {name!r}")
        row = report["models"][name] = {**long_lm(args, name, train, valid, test),
                                        "command": " ".join(["python", *sys.argv])}
        if "test_characters" in row and report.get("test_characters") != row["test_characters"]:
            text = test.text[: row["test_characters"]]
            report.update(test_characters=len(text), generic=generic(text.encode("utf-8")),
                          ngrams=short_run_ngrams(len(text)))
        write_json_atomic(report, out)
        shown = {field: value for field, value in row.items() if field not in ("config", "valid_curve")}
        print(json.dumps(shown, indent=1), flush=True)
    return report


def short_run_ngrams(characters: int) -> dict:
    """The n-grams' rows of the short run's report (``results/language_models.json``), where it scored the same
    ``characters`` characters of the test plays: their bits/char, the long runs' first targets."""
    path = Path(__file__).parent / "results" / "language_models.json"
    short = json.loads(path.read_text()) if path.exists() else {}
    if short.get("test_characters") != characters:
        return {}
    return {name: {"bits_per_char": row["bits_per_char"], "model_bits_per_char": row["model_bits_per_char"]}
            for name, row in short["models"].items() if name.startswith("ngram")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="5,7", help="n-gram orders to count (default: %(default)s)")
    parser.add_argument("--preset", default="small", choices=[*PRESETS, "cpu-long"])
    parser.add_argument("--minutes", type=float, default=1.5,
                        help="training budget of the LSTM and of the Transformer (default: %(default)s)")
    parser.add_argument("--decode-chars", type=int, default=20_000,
                        help="characters the networks' streams are decoded and checked on (0: all)")
    parser.add_argument("--throughput-rows", type=int, default=512, help="rows of the fit-versus-loop comparison")
    parser.add_argument("--device", default="cpu", help="where the networks train (coding runs on the CPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the report (default: results/language_models.json, "
                        "results/language_models_long.json for cpu-long)")
    parser.add_argument("--models", default="lstm,transformer", help="cpu-long: the networks to train, comma-separated")
    parser.add_argument("--runs", type=Path, default=Path("runs/language_models-long"), help="cpu-long: run folders")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="cpu-long: training minutes per model this call")
    parser.add_argument("--evaluate", action="store_true",
                        help="cpu-long: evaluate the checkpoint as it stands, even before the schedule is done")
    parser.add_argument("--test-chars", type=int, default=0,
                        help="cpu-long: the evaluation's characters of the test plays, from the start (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.preset == "cpu-long":
        return long_runs(args)
    args.out = args.out or Path(__file__).parent / "results" / "language_models.json"
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
