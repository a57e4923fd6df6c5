"""Flows on MNIST with uniform dequantization: test bits/dim, and ppgen's overhead against plain PyTorch.

Published figures, MNIST, uniform dequantization (as listed in Grathwohl et al. 2019, FFJORD,
Table 2): RealNVP 1.06, Glow 1.05, FFJORD (multiscale) 0.99, MAF 1.89 bits/dim.

    python benchmarks/flows.py --root ../shared/data --budget 120          # CPU: a short run per model
    OMP_NUM_THREADS=1 python benchmarks/flows.py --root ../shared/data --preset cpu-long --models maf \
        --runs runs/flows-long --max-minutes 170                          # resumable; call again to continue
    python benchmarks/flows.py --root DATA --preset paper --models glow --device cuda \
        --runs runs/flows-paper --max-minutes 600                         # a GPU's long run, resumable

The ``cpu-long`` preset (:data:`LONG`) trains each model in its run folder (``long_run.LongRun``: ``fit``'s
checkpoint and ``curve.json``, the validation bits/dim after every epoch with the wall and CPU hours) on the
first 50,000 MNIST training images, validating on the other 10,000 (each dequantized once, seed 1), with Adam,
a one-epoch warm-up, a half-cosine decay to lr / 10 and gradient clipping; each call trains for at most
``--max-minutes`` and the same command continues it. Once the planned epochs are done (or with ``--evaluate``,
the checkpoint as it stands) it scores all 10,000 test images (dequantized with seed 0): bits/dim with the
standard error of the test-set mean, sample grids at T = 1.0, 0.8, 0.6 and FID/KID/precision/recall of
``--quality-samples`` samples in the shipped classifier's features beside the real-vs-real floor.
The ``pixelcnn`` entry beside the flows is :class:`ppgen.models.autoregressive.GreyPixelCNN`, a 256-way softmax per
pixel: an exact discrete model, trained on the same training rows' integer levels (no noise) and scored on the same
validation and test rows' integer levels; its bits/dim is -log2 P(x) / 784 exactly, where a flow's figure is an upper
bound on its own model's (E_u log p(x + u) <= log P(x)). Writes benchmarks/results/flows_long.json.
The ``paper`` preset (:data:`PAPER`) is the same long runs at the papers' sizes, for ``--device cuda``; its report
is benchmarks/results/flows_paper.json.

Speed: examples/s of ppgen's ``RealNVP.log_prob`` (forward + backward) against the same layers
driven by a plain PyTorch function (logit, then each layer in turn), in one run, alternating.
Writes benchmarks/results/flows.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import ppgen
from ppgen.inference.checkpoint import load_fitted, write_json_atomic
from ppgen.inference.sample_quality import sample_quality
from ppgen.models.autoregressive import GreyPixelCNN
from ppgen.models.flows import MAF, Dequantized, Glow, RealNVP, VariationalDequantization, dequantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_run import CHECKPOINT_MINUTES, LongRun, save_grid, scheduled_lr, trained_parameters  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "flows.json"
PUBLISHED = {"realnvp": 1.06, "glow": 1.05, "ffjord": 0.99, "maf": 1.89}
PRESETS = {
    "cpu": {"realnvp": dict(num_scales=2, hidden=32, blocks=1), "glow": dict(levels=2, steps=4, hidden=32),
            "maf": dict(transforms=5, hidden=(512, 512))},
}
MODELS = {"realnvp": RealNVP, "glow": Glow, "maf": MAF}
# The cpu-long runs: "model" is the constructor's keywords; an epoch is one pass over the 50,000 training rows
# (fresh dequantization noise each pass) at batch_size, lr by long_run.scheduled_lr, the gradient per row
# clipped to clip_norm (fit's clip_norm: a guard against spikes, above the 3e3-1e4 of the first steps'); the
# curve's valid bits/dim is on the first valid_rows validation rows; with "ema" (fit's Polyak averages, for the
# runs begun after fit had them) it is the averages', and valid_bits_per_dim_trained the trained parameters'.
LONG = {
    "maf": {"model": dict(transforms=5, hidden=[1024, 1024]), "epochs": 80, "batch_size": 100, "lr": 5e-4,
            "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 10_000},
    "glow": {"model": dict(levels=2, steps=8, hidden=64, blocks=1), "epochs": 40, "batch_size": 64, "lr": 1e-3,
             "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 5_000, "ema": 0.999},
    "realnvp": {"model": dict(num_scales=2, hidden=64, blocks=2), "epochs": 30, "batch_size": 64, "lr": 1e-3,
                "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 5_000, "ema": 0.999},
}
# Variational dequantization (Flow++): the same flow with a learned q(u | x), trained on the integer levels by the
# ELBO; the curve's validation figure is that ELBO (one draw per row), the test's an IWAE bound of test_samples.
LONG["maf-vd"] = {**LONG["maf"], "flow": "maf", "dequantizer": dict(transforms=2, hidden=[64]), "test_samples": 64,
                  "ema": 0.999}
# The exact discrete model beside them (issue 28): a gated PixelCNN with a 256-way softmax, on the integer levels.
# One epoch (50,000 rows) took ~65 min on 1 thread (13 rows/s, measured with both cores busy): ~4 h in all.
LONG["pixelcnn"] = {"model": dict(levels=256, channels=64, layers=8, kernel=7, gated=True), "epochs": 4,
                    "batch_size": 64, "lr": 1e-3, "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 5_000,
                    "ema": 0.999}
# The paper preset: the same long runs at the papers' sizes, for a GPU (``--device cuda``). RealNVP as Dinh et al.
# built it (3 scales, 8 residual blocks of 64 channels; the last scale at 7 x 7: 5.3 M parameters), Glow with
# Kingma & Dhariwal's 32 steps a level (2 levels: a third needs 28 x 28 padded) and 256-channel coupling networks,
# whose residual block makes them about as large as Glow's 512-channel ones (43 M parameters; 44 M in their CIFAR-10
# Glow), the MAF of the cpu-long run for longer; Polyak averages throughout.
PAPER = {
    "realnvp": {"model": dict(num_scales=3, hidden=64, blocks=8), "epochs": 200, "batch_size": 64, "lr": 1e-3,
                "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 10_000, "ema": 0.999},
    "glow": {"model": dict(levels=2, steps=32, hidden=256, blocks=1), "epochs": 200, "batch_size": 64, "lr": 1e-3,
             "warmup_epochs": 1, "clip_norm": 1e4, "valid_rows": 10_000, "ema": 0.999},
    "maf": {**LONG["maf"], "epochs": 200, "ema": 0.999},
}
LONGS = {"cpu-long": LONG, "paper": PAPER}
TEMPERATURES = (1.0, 0.8, 0.6)
EVAL_ROWS = 1000  # a long run's test rows are scored and kept this many at a time
CPU_RATE = {"realnvp": 190, "glow": 550, "maf": 650}  # training rows/s of the cpu preset, 1 thread


def plain_log_prob(flow: RealNVP, x: torch.Tensor) -> torch.Tensor:
    """The same network, written directly: logit pre-processing, layers, factor-out, Gaussian."""
    a, k = flow.preprocess.alpha, flow.num_levels
    s = a + (1 - 2 * a) * x / k
    h = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * a) - math.log(k) - torch.log(s) - torch.log1p(-s)).sum(1)
    h, parts = h.view(-1, *flow.shape), []
    for i, level in enumerate(flow.levels):
        for layer in level:
            h, more = layer(h)
            logdet = logdet + more
        if i < len(flow.levels) - 1:
            c = h.shape[1] // 2
            parts.append(h[:, :c].flatten(1))
            h = h[:, c:]
    z = torch.cat(parts + [h.flatten(1)], 1)
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi)) + logdet


def speed_ratio(x: torch.Tensor, rounds: int = 6) -> dict:
    flow = RealNVP(784, **PRESETS["cpu"]["realnvp"])
    times = {"ppgen": 0.0, "plain": 0.0}
    for r in range(rounds + 1):
        for name, fn in (("ppgen", flow.log_prob), ("plain", lambda b: plain_log_prob(flow, b))):
            start = time.perf_counter()
            fn(x).sum().backward()
            if r:  # the first round warms up
                times[name] += time.perf_counter() - start
    rate = {k: rounds * len(x) / v for k, v in times.items()}
    return {"ppgen_examples_per_s": rate["ppgen"], "plain_examples_per_s": rate["plain"],
            "ratio": rate["ppgen"] / rate["plain"], "batch": len(x), "rounds": rounds}


def mnist_levels(root: Path, split: str) -> torch.Tensor:
    """MNIST ``split`` as 8-bit pixel levels 0..255, float rows (N, 784)."""
    return (ppgen.load_dataset("mnist", split, root=root, binarize="dynamic").x.intensities * 255).round()


def scores_levels(name: str, cfg: dict) -> bool:
    """Whether the long run ``name`` is scored on the integer levels themselves: the PixelCNN is exact on them, a
    flow with a learned dequantizer bounds their likelihood with its own noise (not floor(x + u): in float32
    k + u can round up to k + 1)."""
    return name == "pixelcnn" or "dequantizer" in cfg


def long_flow(args, name: str, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
              cfg: dict | None = None) -> dict:
    """Train the long ``name`` (settings ``cfg``, by default :data:`LONG`'s) in ``args.runs / name`` for at most
    ``args.max_minutes`` this call, continuing what earlier calls trained. ``train`` holds integer levels (fresh
    noise every epoch), ``valid`` and ``test`` dequantized rows, or the integer levels where :func:`scores_levels`
    says so. Once the planned epochs are done (or with ``args.evaluate``) evaluate on ``test``: bits/dim, sample
    grids, sample quality. Returns the report's row."""
    cfg = cfg or LONG[name]
    run = LongRun(args.runs / name, cfg)
    flow = None if name == "pixelcnn" else MODELS[cfg.get("flow", name)](784, **cfg["model"])
    settings = dict(batch_size=cfg["batch_size"], device=args.device, seed=0, checkpoint_dir=run.checkpoint_dir,
                    checkpoint_minutes=CHECKPOINT_MINUTES,
                    resume=True, progress=False, convergence_tol=None, clip_norm=cfg["clip_norm"], ema=cfg.get("ema"))
    rows, valid = Dequantized(train), valid[: cfg["valid_rows"]]
    score = dict(batch_size=500, device=args.device)
    if flow is None:  # exact and discrete, on the integer levels; scored in smaller batches (256 logits a pixel)
        model, rows, score["batch_size"] = GreyPixelCNN(**cfg["model"]), train, 100
    elif "dequantizer" in cfg:  # the integer levels themselves, scored by the ELBO
        model = VariationalDequantization(flow, **cfg["dequantizer"])
        rows = train
        score.update(method="iwae", num_samples=1)
    else:
        model = flow
    for epoch in run.epochs(args.max_minutes):
        result = ppgen.fit(model, rows, epochs=epoch, lr=scheduled_lr(epoch, cfg), **settings)
        valid_bpd = ppgen.log_likelihood(model, valid, **score).bits_per_dim
        figures = {"epoch": epoch, "lr": scheduled_lr(epoch, cfg), "steps": result.steps,
                   "train_bits_per_dim": -result.train_elbo[-1] / (784 * math.log(2)), "valid_bits_per_dim": valid_bpd}
        if cfg.get("ema"):  # the figure above is the moving averages'; the trained parameters' beside it
            with trained_parameters(model, run):
                figures["valid_bits_per_dim_trained"] = ppgen.log_likelihood(model, valid, **score).bits_per_dim
        row = run.record(figures)
        print(f"{name} epoch {epoch}/{cfg['epochs']}: bits/dim {row['train_bits_per_dim']:.3f} (train), "
              f"{valid_bpd:.3f} (valid), {row['cpu_seconds'] / 3600:.2f} CPU hours", flush=True)
    if run.rows and not run.trained_now:  # nothing trained in this call: the checkpoint's parameters
        load_fitted(model, run.checkpoint_dir)
    report = {**run.report(), "num_parameters": model.num_parameters, "published": PUBLISHED.get(cfg.get("flow", name)),
              "valid_rows": len(valid), "valid_curve": [(r["epoch"], r["cpu_seconds"], r["valid_bits_per_dim"])
                                                        for r in run.rows]}
    if not run.rows or not (run.complete or args.evaluate):
        return report
    path = run.result_path()
    if path.exists() and json.loads(path.read_text())["test_rows"] == len(test):
        return {**report, **json.loads(path.read_text())}
    start = time.perf_counter()
    if "dequantizer" in cfg:
        score.update(num_samples=cfg["test_samples"], batch_size=max(1, 500 // cfg["test_samples"]))
    # in pieces kept as they are done (up to an hour on a CPU), so that a stop part way loses at most one
    log_p = torch.cat(run.pieces("test-log-prob", math.ceil(len(test) / EVAL_ROWS), lambda k: ppgen.log_likelihood(
        model, test[k * EVAL_ROWS:(k + 1) * EVAL_ROWS], **score).values.double()))
    per_dim = 1 / (784 * math.log(2))
    evaluation = {"test_rows": len(test), "test_bits_per_dim": -log_p.mean().item() * per_dim,
                  "test_bits_per_dim_stderr": log_p.std().item() / math.sqrt(len(test)) * per_dim}
    model.eval()
    for temperature in TEMPERATURES:
        torch.manual_seed(0)
        with torch.no_grad():
            grid = model.sample(64, temperature=temperature)
        save_grid(grid.float() / 256, run.folder / f"samples-T{temperature}.png", rows=8)
    quality = sample_quality(model, test.floor(), args.quality_samples, grey=True, reference=train[-args.quality_samples:])
    evaluation.update(quality=quality, evaluation_seconds=round(time.perf_counter() - start, 1),
                      sample_grids=[str(run.folder / f"samples-T{t}.png") for t in TEMPERATURES])
    write_json_atomic(evaluation, path)
    return {**report, **evaluation}


def long_runs(args) -> None:
    """The ``cpu-long`` and ``paper`` presets: :func:`long_flow` for each of ``args.models``, each row written to
    ``args.out``."""
    runs = LONGS[args.preset]
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name(
        "flows_long.json" if args.preset == "cpu-long" else "flows_paper.json")
    report = json.loads(out.read_text()) if out.exists() else {"preset": args.preset, "models": {}}
    report.update(threads=args.threads, torch=torch.__version__, published_bits_per_dim=PUBLISHED,
                  data="MNIST: training rows 0..49,999, validation 50,000..59,999, all 10,000 test rows")
    train, valid_levels = mnist_levels(args.root, "train"), mnist_levels(args.root, "valid")
    test_levels = mnist_levels(args.root, "test")[: args.test_rows]
    valid, test = dequantize(valid_levels, seed=1), dequantize(test_levels, seed=0)
    for name in args.models:
        if name not in runs:
            raise SystemExit(f"{args.preset} trains: {', '.join(runs)}; got {name!r}")
        scored = (valid_levels, test_levels) if scores_levels(name, runs[name]) else (valid, test)
        report["models"][name] = {**long_flow(args, name, train, *scored, runs[name]),
                                  "command": " ".join(["python", *sys.argv])}
        write_json_atomic(report, out)
        print(name, json.dumps({k: v for k, v in report["models"][name].items() if k != "valid_curve"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--preset", choices=[*sorted(PRESETS), *LONGS], default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runs", type=Path, default=Path("runs/flows-long"), help="cpu-long: the run folders")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="cpu-long: training minutes this call")
    parser.add_argument("--evaluate", action="store_true",
                        help="cpu-long: evaluate the checkpoints as they stand (a partial run)")
    parser.add_argument("--quality-samples", type=int, default=1000, help="cpu-long: samples for FID etc.")
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per model")
    parser.add_argument("--test-rows", type=int, default=None, help="default: 2,000 (cpu), all (cpu-long, paper)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: results/flows.json "
                        "(results/flows_long.json for cpu-long)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # 2 shared cores: more threads than free cores is 10x slower
    if args.preset in LONGS:
        return long_runs(args)
    args.test_rows = args.test_rows or 2000
    scale = torch.tensor(255.0)
    train = (ppgen.load_dataset("mnist", "train", root=args.root, binarize="dynamic").x.intensities * scale).round()
    test = (ppgen.load_dataset("mnist", "test", root=args.root, binarize="dynamic").x.intensities * scale).round()
    test = dequantize(test[: args.test_rows], seed=0)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "published_bits_per_dim": PUBLISHED,
               "speed": speed_ratio(train[:128] + 0.5), "models": {}}
    print(json.dumps(results["speed"]))
    for name in args.models:
        model = MODELS[name](784, **PRESETS[args.preset][name])
        # one pass over as many rows as the budget allows (rows/s measured on this machine, 1 thread)
        epochs, rows = 1, train[: max(256, int(args.budget * CPU_RATE[name]))]
        start = time.perf_counter()
        fit = ppgen.fit(model, Dequantized(rows), epochs=epochs, batch_size=64, lr=1e-3, device=args.device,
                        progress=False)
        result = ppgen.log_likelihood(model, test, device=args.device)
        results["models"][name] = {"bits_per_dim": result.bits_per_dim, "published": PUBLISHED[name],
                                   "train_rows": len(rows), "epochs": epochs, "train_seconds": time.perf_counter() - start,
                                   "num_parameters": model.num_parameters, "preset": PRESETS[args.preset][name],
                                   "examples_per_second": fit.examples_per_second}
        print(name, json.dumps(results["models"][name]))
        write_json_atomic(results, args.out)


if __name__ == "__main__":
    main()
