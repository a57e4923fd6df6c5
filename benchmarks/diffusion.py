"""Diffusion models: test NLL bounds (greyscale bits/dim, binarized nats) and sampling speed.

- GaussianDiffusion (DDPM, discretised 256-level decoder) on greyscale digits: the embedded
  ``digits_grey`` rows by default, full MNIST intensities with ``--mnist`` (from ``--root``). Test
  bound in bits/dim with all T terms summed; samples/s of ancestral sampling (T steps) against DDIM
  (``--ddim-steps``); FID/KID/precision/recall of both in the shipped digit classifier's features.
- BinaryDiffusion (bit flips, D3PM's Bernoulli case) on the statically binarized MNIST of
  Larochelle & Murray (from ``--root``; the embedded ``digits`` with ``--embedded-binary``): test
  ELBO in nats, comparable with the FVSBN/NADE/MADE/VAE figures on the same rows.

Training is ``ppgen.fit`` with the model's own objective (``--loss elbo`` or ``simple`` for the
Gaussian model), epoch by epoch until the budget is spent (``flow_vae.train_for``; no gradient
clipping, which Ho et al. 2020 use and ``fit`` does not offer). For reference, Ho et al. (2020, Table 1) report <= 3.70 bits/dim on
CIFAR-10 (T = 1000, 35.7M parameters, 800k steps); no MNIST figure is quoted here.

    python benchmarks/diffusion.py --root ../shared/data --minutes 3
    python benchmarks/diffusion.py --root DATA --preset gpu --device cuda --minutes 20 --mnist
    python benchmarks/diffusion.py --minutes 0.5 --embedded-binary     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ppgen import load_dataset, log_likelihood
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.diffusion import BinaryDiffusion, GaussianDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import train_for  # noqa: E402  (epochs within a time budget, resuming so Adam's state carries)

PRESETS = {
    "cpu": {"num_steps": 200, "channels": 16, "multipliers": (1, 2, 2), "num_blocks": 1, "attention": True,
            "binary_steps": 200, "binary_hidden": (512, 512), "batch_size": 64, "lr": 1e-3,
            "test_rows": 100, "binary_test_rows": 1000, "sample_rows": 16, "quality_samples": 100},
    "gpu": {"num_steps": 1000, "channels": 64, "multipliers": (1, 2, 2), "num_blocks": 2, "attention": True,
            "binary_steps": 1000, "binary_hidden": (1024, 1024, 1024), "batch_size": 128, "lr": 2e-4,
            "test_rows": 10000, "binary_test_rows": 10000, "sample_rows": 256, "quality_samples": 1000},
}


def fit_within(model, x, seconds: float, batch_size: int, lr: float, device) -> dict:
    """``ppgen.fit`` with the model's own objective (its ``loss=``), epoch by epoch until ``seconds`` pass."""
    row = train_for(model, x, seconds, batch_size=batch_size, lr=lr, seed=0, device=str(device))
    row["steps"] = row["epochs"] * math.ceil(len(x) / batch_size)
    return row


def samples_per_second(draw, n: int, device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    samples = draw(n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples, n / (time.perf_counter() - start)


def quality(samples: torch.Tensor, real: torch.Tensor) -> dict:
    """FID, KID, precision and recall in the shipped digit classifier's features (rows in [0, 1])."""
    from ppgen.inference.sample_quality import digit_features, frechet_distance, kernel_distance, precision_recall

    fake_f, real_f = digit_features(samples.cpu().float()), digit_features(real.cpu().float())
    kid = kernel_distance(real_f, fake_f, subsets=10, subset_size=min(len(real), len(samples), 1000) // 2, seed=0)
    precision, recall = precision_recall(real_f, fake_f)
    return {"samples": len(samples), "fid": frechet_distance(real_f, fake_f), "kid": kid.mean,
            "kid_stderr": kid.stderr, "precision": precision, "recall": recall}


def grey_rows(args, split: str) -> torch.Tensor:
    if args.mnist:  # torchvision's MNIST intensities k/255, through the loader's dynamic binarization
        return load_dataset("mnist", split, root=args.root, binarize="dynamic").x.intensities
    return load_dataset("digits_grey", split).x / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss", choices=("elbo", "simple"), default="elbo", help="the Gaussian model's objective")
    parser.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    parser.add_argument("--num-steps", type=int, help="T (default: the preset's)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--mnist", action="store_true", help="greyscale MNIST from --root instead of digits_grey")
    parser.add_argument("--embedded-binary", action="store_true",
                        help="the embedded binarized digits instead of binarized MNIST from --root")
    parser.add_argument("--test-rows", type=int, help="rows of the test bound (default: the preset's)")
    parser.add_argument("--skip", choices=("gaussian", "binary"), action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = dict(PRESETS[args.preset])
    device = torch.device(args.device)
    num_steps = args.num_steps or preset["num_steps"]
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "preset": {k: str(v) for k, v in preset.items()}}

    def save():
        write_json_atomic(results, args.out)

    if "gaussian" not in args.skip:
        train, test = grey_rows(args, "train"), grey_rows(args, "test")
        rows = test[: args.test_rows or preset["test_rows"]]
        model = GaussianDiffusion(784, num_steps=num_steps, schedule=args.schedule, loss=args.loss,
                                  channels=preset["channels"], multipliers=preset["multipliers"],
                                  num_blocks=preset["num_blocks"], attention=preset["attention"]).to(device)
        row = {"data": "mnist" if args.mnist else "digits_grey", "num_steps": num_steps, "schedule": args.schedule,
               "num_parameters": model.num_parameters}
        row["loss"] = args.loss
        row.update(fit_within(model, train, 60 * args.minutes, preset["batch_size"], preset["lr"], device))
        start = time.perf_counter()
        bound = log_likelihood(model, rows.to(device))  # the model's own bound, all T terms summed
        row["test_bound"] = {**bound.to_dict(), "rows": len(rows), "seconds": time.perf_counter() - start}
        n = preset["sample_rows"]
        with torch.no_grad():
            _, ancestral_rate = samples_per_second(lambda k: model.sample(k, seed=0), n, device)
            _, ddim_rate = samples_per_second(lambda k: model.sample(k, method="ddim", steps=args.ddim_steps, seed=0),
                                              n, device)
            q = preset["quality_samples"]
            ancestral = torch.cat([model.sample(min(256, q - i), seed=i) for i in range(0, q, 256)])
            ddim = torch.cat([model.sample(min(256, q - i), method="ddim", steps=args.ddim_steps, seed=i)
                              for i in range(0, q, 256)])
        row["samples_per_second"] = {"ancestral": ancestral_rate, f"ddim_{args.ddim_steps}": ddim_rate,
                                     "rows": n, "speedup": ddim_rate / ancestral_rate}
        row["sample_quality"] = {"ancestral": quality(ancestral, test[:max(q, 2)]),
                                 f"ddim_{args.ddim_steps}": quality(ddim, test[:max(q, 2)])}
        results["gaussian"] = row
        print("gaussian", json.dumps(row), flush=True)
        save()

    if "binary" not in args.skip:
        if args.embedded_binary:
            train, test = (load_dataset("digits", s).x for s in ("train", "test"))
        else:
            train, test = (load_dataset("binarized_mnist", s, root=args.root).x for s in ("train", "test"))
        rows = test[: args.test_rows or preset["binary_test_rows"]]
        model = BinaryDiffusion(784, num_steps=preset["binary_steps"], hidden=preset["binary_hidden"]).to(device)
        row = {"data": "digits" if args.embedded_binary else "binarized_mnist", "num_steps": model.num_steps,
               "num_parameters": model.num_parameters}
        row.update(fit_within(model, train, 60 * args.minutes, preset["batch_size"], preset["lr"], device))
        start = time.perf_counter()
        estimate = model.estimate_log_likelihood(rows.to(device), batch_size=1000)
        values, stderr = estimate.values, estimate.stderr
        row["test_elbo_nats"] = {"mean": values.mean().item(), "stderr": stderr, "rows": len(rows),
                                 "bits_per_dim": -values.mean().item() / (784 * math.log(2)),
                                 "seconds": time.perf_counter() - start}
        with torch.no_grad():
            samples, rate = samples_per_second(lambda k: model.sample(k, seed=0), preset["sample_rows"], device)
            q = preset["quality_samples"]
            drawn = torch.cat([model.sample(min(256, q - i), seed=i) for i in range(0, q, 256)])
        row["samples_per_second"] = {"ancestral": rate, "rows": preset["sample_rows"]}
        row["sample_quality"] = quality(drawn, test[:max(q, 2)])
        results["binary"] = row
        print("binary", json.dumps(row), flush=True)
        save()

    print("| model | data | T | params | steps | test bound | ± | bits/dim | samples/s (ancestral / DDIM) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    if "gaussian" in results:
        r = results["gaussian"]
        b, s = r["test_bound"], r["samples_per_second"]
        print(f"| GaussianDiffusion ({r['loss']}) | {r['data']} | {r['num_steps']} | {r['num_parameters']} | "
              f"{r['steps']} | {b['log_likelihood']:.1f} nats | {b['stderr']:.1f} | {b['bits_per_dim']:.3f} | "
              f"{s['ancestral']:.2f} / {s[f'ddim_{args.ddim_steps}']:.2f} |")
    if "binary" in results:
        r = results["binary"]
        b = r["test_elbo_nats"]
        print(f"| BinaryDiffusion | {r['data']} | {r['num_steps']} | {r['num_parameters']} | {r['steps']} | "
              f"{b['mean']:.2f} nats | {b['stderr']:.2f} | {b['bits_per_dim']:.3f} | "
              f"{r['samples_per_second']['ancestral']:.2f} / — |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
