"""Flows on binary data (issue 13 section 5): a dequantized flow's lower bound on the discrete likelihood of
binarized digits, beside FVSBN, NADE, MADE and the VAE on the same test rows. Budget runs, not converged.

    python benchmarks/flow_binary.py --budget 90          # CPU, 1 thread: 90 s of training per model
    python benchmarks/flow_binary.py --dataset binarized_mnist --root ../shared/data --models "RealNVP (dequantized)"

A flow with ``num_levels=2`` models y = x + u, u ~ U[0, 1)^D, as a density on [0, 2]^D with unit bins, so
log P(x) >= E_u log p(x + u) (Theis et al. 2016): its figure is that bound, averaged over ``--noise-draws``
seeded draws of u, in nats per example. FVSBN, NADE and MADE give the exact log P(x); the VAE gives the
IWAE estimate (K = 1000). All on the first ``--test-rows`` rows of the embedded digits' test split, trained
on the 10,000 training rows (NADE: the first 2,000, so that an epoch fits the budget; seed 0, batch 128,
Adam lr 1e-3; flows see fresh noise every epoch).
Writes benchmarks/results/flow_binary.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

import ppgen
from ppgen.models import FVSBN, MADE, MAF, NADE, VAE, RealNVP
from ppgen.models.flows import Dequantized, dequantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import save_row, train_for  # noqa: E402

TRAIN_ROWS = {"NADE": 2000}  # an epoch of NADE on 10,000 rows outlasts the budget (its sequential pass)
MODELS = {
    "FVSBN": lambda: FVSBN(784),
    "NADE": lambda: NADE(784, hidden=100),  # 500 units: ~8 s per batch of 128 on this CPU
    "MADE": lambda: MADE(784, hidden_sizes=(500,)),
    "VAE": lambda: VAE(784, z_dim=16, hidden=256),
    "RealNVP (dequantized)": lambda: RealNVP(784, num_levels=2, num_scales=2, hidden=32, blocks=1),
    "MAF (dequantized)": lambda: MAF(784, num_levels=2, transforms=5, hidden=(512, 512)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per model")
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--noise-draws", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", choices=["digits", "binarized_mnist"], default="digits",
                        help="the embedded digits, or binarized MNIST from --root (for benchmarks/leaderboard.py)")
    parser.add_argument("--root", default=None, help="folder holding binarized_mnist.npz")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/flow_binary.json (flow_binary_mnist.json for binarized_mnist)")
    args = parser.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / (
        "flow_binary.json" if args.dataset == "digits" else "flow_binary_mnist.json")
    torch.set_num_threads(args.threads)
    train = ppgen.load_dataset(args.dataset, "train", root=args.root).x
    test = ppgen.load_dataset(args.dataset, "test", root=args.root).x[: args.test_rows]
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    for name in args.models:
        model = MODELS[name]()
        is_flow = getattr(model, "num_levels", None) == 2
        rows = train[: TRAIN_ROWS.get(name, len(train))]
        row = train_for(model, Dequantized(rows, 2) if is_flow else rows, args.budget,
                        batch_size=128, lr=1e-3, seed=0, device="cpu")
        if is_flow:
            draws = torch.stack([ppgen.log_likelihood(model, dequantize(test, 2, seed=s), device="cpu").values
                                 for s in range(args.noise_draws)])  # (draws, N): log p(x + u)
            values = draws.mean(0)
            row.update(kind="lower bound E_u log p(x+u)", noise_draws=args.noise_draws)
        else:
            ll = ppgen.log_likelihood(model, test, num_samples=1000, device="cpu")
            values = ll.values
            row.update(kind="exact" if ll.exact else "IWAE K=1000", elbo=ll.elbo)
        row.update(train_rows=len(rows), log_likelihood=values.mean().item(),
                   stderr=values.std().item() / math.sqrt(len(values)),
                   bits_per_dim=-values.mean().item() / (784 * math.log(2)), num_parameters=model.num_parameters)
        save_row(results, name, row, args.out)


if __name__ == "__main__":
    main()
