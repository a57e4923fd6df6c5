"""The DCGAN through ``ppgen.fit`` against the same networks in a hand-written PyTorch GAN loop (issue 29, item 6).

The hand-written loop is PyTorch's DCGAN example (pytorch/examples, dcgan/main.py) in shape: per batch, draw z,
fake = G(z); the discriminator steps on the non-saturating loss of the real rows and ``fake.detach()``; then the
generator steps on D(fake) through the updated discriminator, reusing the same fake batch. Both use the networks
of ``GAN(784, **ebm_gan.LONG["dcgan"]["model"])``, Adam 2e-4 with betas (0.5, 0.999), batch 64, on MNIST grey
digits, one thread.

- Throughput: training steps per second of each, in alternating rounds of ``--steps`` steps from the same
  initial networks, in one run (``fit`` timed as called, and over its steps alone).
- Quality at equal CPU time: each trains for ``--minutes`` of CPU time (``fit``: epochs of ``--rows`` rows until
  the time is spent; the hand loop the same rows and CPU seconds), then FID, KID, precision, recall and the largest
  class share of ``--samples`` samples against the test digits, beside the real-vs-real floor.

    OMP_NUM_THREADS=1 python benchmarks/dcgan_by_hand.py --root ../shared/data --minutes 10

Writes benchmarks/results/dcgan_by_hand.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ppgen
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.inference.sample_quality import sample_quality
from ppgen.models.implicit import GAN
from ppgen.models.implicit.gan import AdversarialObjective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ebm_gan import LONG  # noqa: E402  (the long DCGAN's settings)

CFG = LONG["dcgan"]


def hand_loop(gan: GAN, rows: torch.Tensor, batch_size: int, *, steps: int | None = None,
              cpu_seconds: float | None = None, seed: int = 0) -> int:
    """Train ``gan`` on ``rows`` as PyTorch's DCGAN example does, for ``steps`` steps or ``cpu_seconds`` of CPU
    time (epochs of shuffled batches); returns the steps taken."""
    generator = torch.Generator().manual_seed(seed)
    lr, betas = CFG["lr"], CFG["objective"]["betas"]
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=betas)
    gan.train()
    done, start = 0, time.process_time()
    while True:
        for idx in torch.randperm(len(rows), generator=generator).split(batch_size):
            if (steps is not None and done >= steps) or (cpu_seconds is not None
                                                        and time.process_time() - start >= cpu_seconds):
                return done
            real = rows[idx]
            fake = gan.generate(gan.latents(len(real)))
            d_loss = (F.softplus(-gan.discriminator(real)).mean()
                      + F.softplus(gan.discriminator(fake.detach())).mean())
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.softplus(-gan.discriminator(fake)).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            done += 1


def with_fit(gan: GAN, rows: torch.Tensor, batch_size: int, *, epochs: int = 1, max_minutes=None, folder=None):
    """``ppgen.fit`` of the DCGAN's adversarial objective, as the long run trains it."""
    return ppgen.fit(gan, rows, epochs=epochs, batch_size=batch_size, lr=CFG["lr"], seed=0, progress=False,
                     convergence_tol=None, max_minutes=max_minutes, checkpoint_dir=folder, resume=folder is not None,
                     objective=lambda program: AdversarialObjective(program, **CFG["objective"]))


def throughput(rows: torch.Tensor, steps: int, rounds: int) -> dict:
    """Steps per second of fit and of the hand loop over ``steps`` batches each, alternated ``rounds`` times after a
    warm-up round, from copies of the same initial GAN; the best round of each kept."""
    batch = CFG["batch_size"]
    sub = rows[: steps * batch]
    torch.manual_seed(0)
    initial = GAN(784, **CFG["model"])
    best = {"fit": float("inf"), "fit steps only": float("inf"), "hand": float("inf")}
    for r in range(rounds + 1):
        gan = copy.deepcopy(initial)
        start = time.perf_counter()
        result = with_fit(gan, sub, batch)
        fit_seconds = time.perf_counter() - start
        gan = copy.deepcopy(initial)
        start = time.perf_counter()
        hand_loop(gan, sub, batch, steps=steps)
        hand_seconds = time.perf_counter() - start
        if r:  # the first round warms up
            best["fit"] = min(best["fit"], fit_seconds)
            best["fit steps only"] = min(best["fit steps only"], len(sub) / result.examples_per_second)
            best["hand"] = min(best["hand"], hand_seconds)
    rate = {k: steps / v for k, v in best.items()}
    return {"steps_per_second": rate, "fit_over_hand": rate["fit"] / rate["hand"],
            "fit_steps_only_over_hand": rate["fit steps only"] / rate["hand"], "steps": steps, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU minutes of training each, for quality")
    parser.add_argument("--steps", type=int, default=40, help="throughput: steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: timed rounds after a warm-up round")
    parser.add_argument("--rows", type=int, default=50_000, help="training rows")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dcgan_by_hand.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, valid, test = (ppgen.load_dataset("mnist", s, root=args.root, binarize="dynamic").x.intensities
                          for s in ("train", "valid", "test"))
    train = train[: args.rows]
    report = {"settings": vars(args) | {"root": str(args.root), "out": str(args.out)}, "config": CFG,
              "throughput": throughput(train, args.steps, args.rounds)}
    print(json.dumps(report["throughput"]), flush=True)
    write_json_atomic(report, args.out)
    if args.minutes <= 0:
        return
    torch.manual_seed(0)
    initial = GAN(784, **CFG["model"])
    fitted, cpu_start = copy.deepcopy(initial), time.process_time()
    result = with_fit(fitted, train, CFG["batch_size"], epochs=1000, max_minutes=args.minutes)
    fit_cpu = time.process_time() - cpu_start
    by_hand = copy.deepcopy(initial)
    hand_steps = hand_loop(by_hand, train, CFG["batch_size"], cpu_seconds=fit_cpu)
    report["quality"] = {}
    for name, gan, steps in (("fit", fitted, result.steps), ("hand", by_hand, hand_steps)):
        gan.eval()
        quality = sample_quality(gan, test, args.samples, reference=valid)
        report["quality"][name] = {"steps": steps, "cpu_seconds": round(fit_cpu, 1), **quality}
        print(name, json.dumps(report["quality"][name]), flush=True)
    write_json_atomic(report, args.out)


if __name__ == "__main__":
    main()
