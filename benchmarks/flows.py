"""Flows on MNIST with uniform dequantization: test bits/dim, and ppgen's overhead against plain PyTorch.

Published figures, MNIST, uniform dequantization (as listed in Grathwohl et al. 2019, FFJORD,
Table 2): RealNVP 1.06, Glow 1.05, FFJORD (multiscale) 0.99, MAF 1.89 bits/dim.

    python benchmarks/flows.py --root ../shared/data --budget 120          # CPU: a short run per model
    python benchmarks/flows.py --root DATA --preset paper --device cuda     # for a GPU (not run here)

Speed: examples/s of ppgen's ``RealNVP.log_prob`` (forward + backward) against the same layers
driven by a plain PyTorch function (logit, then each layer in turn), in one run, alternating.
Writes benchmarks/results/flows.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import ppgen
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.flows import MAF, Dequantized, Glow, RealNVP, dequantize

PUBLISHED = {"realnvp": 1.06, "glow": 1.05, "ffjord": 0.99, "maf": 1.89}
PRESETS = {
    "cpu": {"realnvp": dict(num_scales=2, hidden=32, blocks=1), "glow": dict(levels=2, steps=4, hidden=32),
            "maf": dict(transforms=5, hidden=(512, 512))},
    "paper": {"realnvp": dict(num_scales=3, hidden=64, blocks=8), "glow": dict(levels=2, steps=16, hidden=256, blocks=2),
              "maf": dict(transforms=5, hidden=(1024, 1024))},
}
MODELS = {"realnvp": RealNVP, "glow": Glow, "maf": MAF}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per model")
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flows.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # 2 shared cores: more threads than free cores is 10x slower
    scale = torch.tensor(255.0)
    train = (ppgen.load_dataset("mnist", "train", root=args.root, binarize="dynamic").x.intensities * scale).round()
    test = (ppgen.load_dataset("mnist", "test", root=args.root, binarize="dynamic").x.intensities * scale).round()
    test = dequantize(test[: args.test_rows], seed=0)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "published_bits_per_dim": PUBLISHED,
               "speed": speed_ratio(train[:128] + 0.5), "models": {}}
    print(json.dumps(results["speed"]))
    for name in args.models:
        model = MODELS[name](784, **PRESETS[args.preset][name])
        epochs = 1 if args.preset == "cpu" else 100
        # CPU: one pass over as many rows as the budget allows (rows/s measured on this machine, 1 thread)
        rows = train if args.preset == "paper" else train[: max(256, int(args.budget * CPU_RATE[name]))]
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
