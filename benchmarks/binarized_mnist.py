"""Autoregressive and latent-variable models on statically binarized MNIST: test NLL against the published table, and speed.

Trains each model with ``ppgen.fit`` (Adam, validation early stopping) for at most ``--epochs``
epochs or ``--max-minutes`` minutes, then reports the test NLL (nats and bits/dim), the
learning curve, log-likelihood throughput (examples/s) and the seconds to draw 100 images.
The NLL is exact for the autoregressive models; for the VAE and IWAE it is the importance-sampled
estimate with ``--num-samples`` samples per example (Burda et al. 2016 use 5,000).

    python benchmarks/binarized_mnist.py --root ../shared/data --preset cpu --max-minutes 2 --train-rows 10000
    python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --device cuda --max-minutes 120
    python benchmarks/binarized_mnist.py --root ../shared/data --models vae,iwae --preset paper --device cuda \
        --out benchmarks/results/binarized_mnist_latent.json

Writes ``benchmarks/results/binarized_mnist.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ppgen.data import load_dataset
from ppgen.inference import fit, log_likelihood
from ppgen.models.autoregressive import FVSBN, MADE, NADE, PixelCNN
from ppgen.models.latent import VAE

# published test NLL (nats) on binarized MNIST
PUBLISHED = {
    "fvsbn": (97.45, "Larochelle & Murray 2011"),
    "nade": (88.86, "Larochelle & Murray 2011"),
    "made": (88.40, "Germain et al. 2015, 1 mask"),
    "made-32": (86.64, "Germain et al. 2015, 32 masks"),
    "pixelcnn": (81.30, "van den Oord et al. 2016"),
    "vae": (88.71, "Burda et al. 2016, VAE k=1, 1 stochastic layer"),
    "iwae": (87.10, "Burda et al. 2016, IWAE k=50, 1 stochastic layer"),
}

# how fit() trains the latent-variable models (the others use its defaults: elbo="trace")
FIT_OPTIONS = {
    "vae": {"elbo": "trace", "num_particles": 1},
    "iwae": {"elbo": "iwae", "num_particles": 50},
}

PRESETS = {  # name -> (constructor, repr for the report, batch size, learning rate)
    "paper": {
        "fvsbn": (lambda: FVSBN(784), "FVSBN(784)", 100, 1e-3),
        "nade": (lambda: NADE(784, hidden=500), "NADE(784, hidden=500)", 100, 1e-3),
        "made": (lambda: MADE(784, hidden_sizes=(500,)), "MADE(784, hidden_sizes=(500,))", 100, 1e-3),
        "made-32": (lambda: MADE(784, hidden_sizes=(8000,), num_masks=32),
                    "MADE(784, hidden_sizes=(8000,), num_masks=32)", 100, 1e-3),
        "pixelcnn": (lambda: PixelCNN(channels=64, layers=12, kernel=7), "PixelCNN(channels=64, layers=12, kernel=7)",
                     64, 1e-3),
        # Burda et al.: two deterministic layers of 200 units (tanh there, ReLU here), 50 latent units
        "vae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200))", 20, 1e-3),
        "iwae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200)), IWAE k=50",
                 20, 1e-3),
    },
    "cpu": {
        "fvsbn": (lambda: FVSBN(784), "FVSBN(784)", 100, 3e-3),
        "nade": (lambda: NADE(784, hidden=100), "NADE(784, hidden=100)", 100, 3e-3),
        "made": (lambda: MADE(784, hidden_sizes=(500,)), "MADE(784, hidden_sizes=(500,))", 100, 1e-3),
        "made-32": (lambda: MADE(784, hidden_sizes=(500,), num_masks=32),
                    "MADE(784, hidden_sizes=(500,), num_masks=32)", 100, 1e-3),
        "pixelcnn": (lambda: PixelCNN(channels=16, layers=4, kernel=5), "PixelCNN(channels=16, layers=4, kernel=5)",
                     100, 3e-3),
        "vae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200))", 100, 1e-3),
        "iwae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200)), IWAE k=50",
                 100, 1e-3),
    },
}


def train(model, train_x, valid_x, *, epochs: int, max_minutes: float, batch_size: int, lr: float,
          device: str, seed: int, patience: int, elbo: str = "trace", num_particles: int = 1):
    """fit() one epoch per call (resuming from a checkpoint) until the epochs, the time or the patience run out."""
    start, result = time.perf_counter(), None
    with tempfile.TemporaryDirectory() as folder:
        for epoch in range(1, epochs + 1):
            result = fit(model, train_x, epochs=epoch, batch_size=batch_size, lr=lr, device=device, seed=seed,
                         elbo=elbo, num_particles=num_particles, valid=valid_x, patience=patience, checkpoint_dir=folder, resume=epoch > 1, progress=False)
            elapsed = time.perf_counter() - start
            if result.stopped_early or elapsed * (epoch + 1) / epoch > max_minutes * 60:
                break
    return result, time.perf_counter() - start


def throughput(model, x: torch.Tensor, device: str, num_samples: int) -> tuple[float, float]:
    """Log-likelihood examples/s on ``x`` (exact, or IWAE with ``num_samples``), and seconds to sample 100 images."""
    start = time.perf_counter()
    log_likelihood(model, x, batch_size=500, device=device, num_samples=num_samples)
    examples_per_s = len(x) / (time.perf_counter() - start)
    torch.manual_seed(0)
    start = time.perf_counter()
    model.sample(100)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return examples_per_s, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding binarized_mnist.npz (default $PPGEN_DATA)")
    parser.add_argument("--models", default=",".join(PUBLISHED), help=f"comma-separated, from {list(PUBLISHED)}")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="architectures: published or CPU-sized")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="training time per model")
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N rows only")
    parser.add_argument("--test-rows", type=int, default=None, help="evaluate on the first N test rows only")
    parser.add_argument("--num-samples", type=int, default=5000,
                        help="importance samples per example for latent-variable models' test NLL")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "binarized_mnist.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(PUBLISHED))
    if unknown:
        parser.error(f"unknown models {unknown}; choices: {list(PUBLISHED)}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    train_x = load_dataset("binarized_mnist", "train", root=args.root).x[: args.train_rows]
    valid_x = load_dataset("binarized_mnist", "valid", root=args.root).x
    test_x = load_dataset("binarized_mnist", "test", root=args.root).x[: args.test_rows]
    report = {"command": "python benchmarks/binarized_mnist.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                         + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else
                            f", {torch.get_num_threads()} torch threads"),
              "torch": torch.__version__, "device": device, "preset": args.preset,
              "train_rows": len(train_x), "test_rows": len(test_x), "models": {}}
    for name in names:
        build, description, batch_size, lr = PRESETS[args.preset][name]
        torch.manual_seed(args.seed)
        model = build()
        result, seconds = train(model, train_x, valid_x, epochs=args.epochs, max_minutes=args.max_minutes,
                                batch_size=batch_size, lr=lr, device=device, seed=args.seed, patience=args.patience,
                                **FIT_OPTIONS.get(name, {}))
        test = log_likelihood(model, test_x, batch_size=500, device=device, num_samples=args.num_samples)
        examples_per_s, sample_seconds = throughput(model, test_x[:2000], device, args.num_samples)
        published, source = PUBLISHED[name]
        report["models"][name] = {
            "model": description, "parameters": model.num_parameters, "batch_size": batch_size, "lr": lr,
            "epochs": result.epochs, "best_epoch": result.best_epoch, "train_seconds": round(seconds, 1),
            "test_nll_nats": -test.mean, "test_bits_per_dim": test.bits_per_dim, "test_nll_exact": test.exact,
            "test_nll_stderr": test.stderr, "test_num_samples": test.num_samples,
            "test_elbo_nats": test.elbo, **FIT_OPTIONS.get(name, {}),
            "published_nll_nats": published, "published_source": source,
            "valid_nll_curve": [-v for v in result.valid_elbo], "train_nll_curve": [-v for v in result.train_elbo],
            "log_likelihood_examples_per_s": examples_per_s, "sample_100_seconds": sample_seconds,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"{name:9s} {description:45s} test NLL {-test.mean:7.2f} nats ({test.bits_per_dim:.4f} bits/dim), "
              f"published {published:.2f}; {result.epochs} epochs in {seconds:.0f}s; "
              f"{examples_per_s:.0f} ex/s; sample 100 in {sample_seconds:.1f}s", flush=True)
    return report


if __name__ == "__main__":
    main()
