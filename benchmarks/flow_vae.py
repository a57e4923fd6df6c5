"""Flows inside a VAE (issue 13 section 4): how much a MAF prior or an IAF guide tightens the ELBO and the IWAE
log-likelihood against the plain VAE, each trained for the same wall-clock budget on the same digits rows.

    python benchmarks/flow_vae.py --budget 180            # CPU, 1 thread: 3 minutes per model
    python benchmarks/flow_vae.py --epochs 20 --out benchmarks/results/flow_vae_epochs.json   # equal epochs instead

Embedded digits (binary, 10,000 training rows), seed 0, batch 128, Adam lr 1e-3, trace ELBO with one
particle; scored on the first ``--test-rows`` test rows: the ELBO and the IWAE estimate (K = 1000) from the
same draws, both in nats per example. Writes benchmarks/results/flow_vae.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ppgen
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.latent import IAFVAE, VAE, FlowPriorVAE

NETWORK = dict(z_dim=16, hidden=256)
MODELS = {
    "vae": lambda: VAE(784, **NETWORK),
    "vae + MAF prior": lambda: FlowPriorVAE(784, **NETWORK, prior_transforms=2, prior_hidden=64),
    "vae + IAF guide": lambda: IAFVAE(784, **NETWORK, iaf_steps=2, iaf_hidden=64, context_dim=16),
}


def train_for(model, x, seconds: float, max_epochs: int | None = None, **options) -> dict:
    """Fit one epoch at a time (resuming from a checkpoint, so Adam's state carries over) until
    ``seconds`` of wall-clock time are spent (or ``max_epochs`` are done); returns epochs, seconds and the
    last training objective."""
    start, epochs, result = time.perf_counter(), 0, None
    with tempfile.TemporaryDirectory() as folder:
        while time.perf_counter() - start < seconds and (max_epochs is None or epochs < max_epochs):
            epochs += 1
            result = ppgen.fit(model, x, epochs=epochs, checkpoint_dir=folder, resume=True, progress=False,
                               convergence_tol=None, **options)
    return {"epochs": epochs, "train_seconds": time.perf_counter() - start,
            "train_objective": result.train_elbo[-1]}


def save_row(results: dict, name: str, row: dict, out: Path) -> None:
    """Record one model's row in ``results["models"]``, print it, and rewrite ``out`` (so a killed run keeps
    the rows it finished)."""
    results["models"][name] = row
    print(name, json.dumps(row), flush=True)
    write_json_atomic(results, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per model")
    parser.add_argument("--epochs", type=int, help="train exactly this many epochs instead (no time budget)")
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the IWAE estimate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow_vae.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = ppgen.load_dataset("digits", "train").x
    test = ppgen.load_dataset("digits", "test").x[: args.test_rows]
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "network": NETWORK, "models": {}}
    for name, build in MODELS.items():
        model = build()
        budget = float("inf") if args.epochs else args.budget
        row = train_for(model, train, budget, args.epochs, batch_size=128, lr=1e-3, seed=0, device="cpu")
        ll = ppgen.log_likelihood(model, test, num_samples=args.num_samples, device="cpu")
        row.update(elbo=ll.elbo, log_likelihood=ll.mean, stderr=ll.stderr, gap=ll.mean - ll.elbo,
                   num_parameters=model.num_parameters)
        save_row(results, name, row, args.out)


if __name__ == "__main__":
    main()
