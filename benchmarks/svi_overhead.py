"""Seconds per SVI step: ppgen.fit against hand-written Pyro and PyTorch loops of the same VAE.

The VAE is 784-400-50 (Bernoulli decoder), batch 128, on the embedded digits. The three loops
optimise the same negative ELBO (one reparameterised sample, data term scaled by N / B) with
Adam at the same learning rate:

- ``ppgen``: ``ppgen.fit(model, x, epochs=E, ...)``, timed as a whole call: its set-up (the story
  checked on the first batch, parameters collected) is included, amortised over E epochs;
- ``pyro``: ``pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam, Trace_ELBO()).step``;
- ``torch``: the ELBO written by hand with ``torch.distributions`` and ``torch.optim.Adam``.

Rounds interleave the three (E epochs each, 3 by default: steady state) so machine noise hits
them alike; the figures are medians over rounds and the ratios are taken within this one run.
Target: ppgen / pyro <= 1.05; goal: ppgen / torch <= 1.10.

    python benchmarks/svi_overhead.py [--rounds 7] [--epochs 3] [--threads 1] [--device cpu]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

import ppgen
from ppgen.data import load_dataset
from ppgen.models import VAE

BATCH, LR = 128, 1e-3
EPOCHS = 3


def fresh_vae(device):
    return VAE(784, z_dim=50, hidden=400, seed=0).to(device)


def epoch_ppgen(x, device, seed):
    model = fresh_vae(device)
    start = time.perf_counter()
    result = ppgen.fit(model, x, epochs=EPOCHS, batch_size=BATCH, lr=LR, device=device, seed=seed, progress=False,
                       convergence_tol=None)
    return time.perf_counter() - start, result.steps


def epoch_pyro(x, device, seed):
    model = fresh_vae(device)
    pyro.clear_param_store()
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    n = len(x)
    start = time.perf_counter()
    steps = 0
    for epoch in range(EPOCHS):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for idx in order.split(BATCH):
            with pyro.poutine.scale(scale=n / len(idx)):  # what a Pyro user writes for minibatches
                svi.step(x[idx].to(device))
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, steps


def epoch_torch(x, device, seed):
    model = fresh_vae(device)
    encoder, decoder = model.encoder, model.decoder
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    n = len(x)
    start = time.perf_counter()
    steps = 0
    for idx in [i for epoch in range(EPOCHS)
                for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).split(BATCH)]:
        xb = x[idx].to(device)
        loc, raw = encoder(xb).chunk(2, -1)
        scale = F.softplus(raw) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_p_x = -F.binary_cross_entropy_with_logits(decoder(z), xb, reduction="none").sum(-1)
        loss = -(n / len(idx)) * (log_p_x + log_p_z - log_q).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the other two loops read the loss every step too
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, steps


def main():
    global EPOCHS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop and round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "svi_overhead.json")
    args = parser.parse_args()
    EPOCHS = args.epochs
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, _ = load_dataset("digits", "train")
    loops = {"ppgen": epoch_ppgen, "pyro": epoch_pyro, "torch": epoch_torch}
    for loop in loops.values():  # warm-up: imports, allocator, first-call costs
        loop(x[:1024], device, 0)
    per_step = {name: [] for name in loops}
    for r in range(args.rounds):
        for name, loop in loops.items():
            seconds, steps = loop(x, device, r)
            per_step[name].append(seconds / steps)
    median = {name: statistics.median(v) for name, v in per_step.items()}
    figures = {
        "device": str(device), "threads": args.threads, "rounds": args.rounds, "epochs": EPOCHS, "batch_size": BATCH,
        "rows": len(x), "seconds_per_step_median": median,
        "ratio_ppgen_over_pyro": median["ppgen"] / median["pyro"],
        "ratio_ppgen_over_torch": median["ppgen"] / median["torch"],
        "seconds_per_step_all": per_step,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"| loop | ms per step (median of {args.rounds}) | ratio to ppgen.fit |")
    print("|---|---:|---:|")
    for name in loops:
        print(f"| {name} | {1e3 * median[name]:.2f} | {median['ppgen'] / median[name]:.3f} |")
    print(f"\nppgen / pyro = {figures['ratio_ppgen_over_pyro']:.3f} (target <= 1.05); "
          f"ppgen / torch = {figures['ratio_ppgen_over_torch']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
