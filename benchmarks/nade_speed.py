"""NADE's exact log-likelihood and training speed against MADE's, in one run (issue 17).

NADE's conditionals cost O(DH) per example, the order of one 784-500-784 MADE pass, but as a
cumulative sum over an (N, D, H) tensor (``NADE._dense_logits``) they are memory-bound;
``NADE.conditional_logits`` shares each pre-activation between consecutive 1s, in blocks of pixels.
This measures examples/s on binarized MNIST test rows, 1 torch thread:

    python benchmarks/nade_speed.py --root ../shared/data

The target: NADE (H = 500) at least 1/4 of MADE's examples/s. Writes benchmarks/results/nade_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import torch

from ppgen.data import load_dataset
from ppgen.models.autoregressive import MADE, NADE


def examples_per_second(step, rows: int, repeats: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return repeats * rows / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding binarized_mnist.npz (default $PPGEN_DATA)")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "nade_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = load_dataset("binarized_mnist", "test", root=args.root).x[: args.rows]
    nade, made = NADE(784, hidden=500), MADE(784, hidden_sizes=(500,))

    def train_step(model, log_prob):
        def step():
            model.zero_grad()
            for batch in x.split(100):
                (-log_prob(batch).mean()).backward()
        return step

    rates = {}
    with torch.no_grad():
        rates["made_log_prob"] = examples_per_second(lambda: made.log_prob(x), len(x), args.repeats)
        rates["nade_log_prob"] = examples_per_second(lambda: nade.log_prob(x), len(x), args.repeats)
        rates["nade_dense_log_prob"] = examples_per_second(lambda: nade._dense_logits(x), len(x), 1)
    rates["made_train"] = examples_per_second(train_step(made, made.log_prob), len(x), 1)
    rates["nade_train"] = examples_per_second(train_step(nade, nade.log_prob), len(x), 1)
    rates["nade_dense_train"] = examples_per_second(
        train_step(nade, lambda b: -torch.nn.functional.binary_cross_entropy_with_logits(
            nade._dense_logits(b), b, reduction="none").sum(-1)), len(x), 1)
    report = {"command": "python benchmarks/nade_speed.py " + " ".join(sys.argv[1:] if argv is None else argv), "threads": args.threads,
              "rows": len(x), "torch": torch.__version__, "examples_per_s": {k: round(v) for k, v in rates.items()},
              "nade_over_made_log_prob": rates["nade_log_prob"] / rates["made_log_prob"],
              "nade_over_made_train": rates["nade_train"] / rates["made_train"],
              "block_over_dense_log_prob": rates["nade_log_prob"] / rates["nade_dense_log_prob"],
              "block_over_dense_train": rates["nade_train"] / rates["nade_dense_train"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
