"""RBM, GAN and VAE on binarized MNIST: log-likelihood (AIS) and sample quality, within a CPU budget.

- RBM (784 visible, ``--hidden`` units) trained by persistent CD; its test log-likelihood with
  log Z by AIS (and the RAISE/AIS bracket on the first 100 test rows). Salakhutdinov & Murray (2008)
  report about -86 nats for 500 hidden units trained with CD-25 for far longer than this budget.
- GAN (non-saturating, MLP 64-256-256-784) and a VAE (784-200-20) trained for the same budget;
  the GAN's log-likelihood by AIS over its latents under a Bernoulli observation model (Wu et al.
  2017; a stochastic lower bound), the VAE's by IWAE and, on the GAN's rows, by the same AIS.
- For all three: FID, KID, precision and recall in the shipped digit classifier's features,
  from 1,000 samples against the test rows.

    python benchmarks/ebm_gan.py --root ../shared/data --minutes 3
    python benchmarks/ebm_gan.py --root DATA --preset gpu --device cuda   # where a GPU is lent
"""

import argparse
import sys
from pathlib import Path

import torch

import ppgen
from ppgen import load_dataset, log_likelihood
from ppgen.cli import sample_quality
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.energy import RBM
from ppgen.models.implicit import GAN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import train_for  # noqa: E402  (epochs within a time budget, resuming so Adam's state carries)

PRESETS = {"cpu": {"hidden": 500, "test_rows": 1000, "ais_temperatures": 3000},
           "gpu": {"hidden": 500, "test_rows": 10000, "ais_temperatures": 14500}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ebm_gan.json")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    torch.manual_seed(0)
    train, valid, test = (load_dataset("binarized_mnist", s, root=args.root) for s in ("train", "valid", "test"))
    rows = test.x[: preset["test_rows"]]
    results = {"preset": args.preset, "minutes": args.minutes, "device": args.device}

    rbm = RBM(784, hidden=preset["hidden"])
    trained = train_for(rbm, train.x, 60 * args.minutes, batch_size=100, lr=1e-3, device=args.device)
    rbm.ais_temperatures = preset["ais_temperatures"]
    ll = log_likelihood(rbm.cpu(), rows, num_samples=100)
    results["rbm"] = {**trained, "log_likelihood": ll.to_dict(), "num_parameters": rbm.num_parameters,
                      "sample_quality": sample_quality(rbm, test.x, 1000)}

    vae = ppgen.VAE(784, z_dim=20, hidden=200)
    trained = train_for(vae, train.x, 60 * args.minutes, batch_size=100, lr=1e-3, device=args.device)
    ll = log_likelihood(vae.cpu(), rows, num_samples=1000)
    results["vae"] = {**trained, "log_likelihood": ll.to_dict(), "num_parameters": vae.num_parameters,
                      "sample_quality": sample_quality(vae, test.x, 1000)}

    gan = GAN(784, z_dim=64, hidden=[256, 256])
    trained = train_for(gan, train.x, 60 * args.minutes, batch_size=100, lr=2e-4, device=args.device)
    ais_rows = 20 if args.preset == "cpu" else 1000  # AIS with HMC costs ~5,000 decoder gradients per chain
    ll = log_likelihood(gan.cpu(), rows[:ais_rows], num_samples=8)
    results["gan"] = {**trained, "log_likelihood": ll.to_dict(),
                      "num_parameters": sum(p.numel() for p in gan.generator.parameters()),  # the sampler's
                      "log_likelihood_rows": ais_rows, "sample_quality": sample_quality(gan, test.x, 1000)}
    # the VAE's decoder on the GAN's footing: AIS over z, no guide, the same rows and chains
    vae_ais = log_likelihood(vae, rows[:ais_rows], num_samples=8, method="ais")
    vae_iwae = log_likelihood(vae, rows[:ais_rows], num_samples=1000)
    results["vae"]["decoder_ais"] = {"rows": ais_rows, "ais": vae_ais.to_dict(), "iwae_same_rows": vae_iwae.to_dict()}

    write_json_atomic(results, args.out)
    print("| model | epochs | test log-lik (nats) | how | FID | KID | precision | recall |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name in ("rbm", "vae", "gan"):
        r, q = results[name], results[name]["sample_quality"]
        ll = r["log_likelihood"]
        how = ll["method"] + (f", bracket {ll['bracket'][0]:.1f} .. {ll['bracket'][1]:.1f}" if ll.get("bracket") else "")
        print(f"| {name} | {r['epochs']} | {ll['log_likelihood']:.2f} ± {ll['stderr']:.2f} | {how} | {q['fid']:.2f} | "
              f"{q['kid']:.4f} ± {q['kid_stderr']:.4f} | {q['precision']:.2f} | {q['recall']:.2f} |")
    ais, iwae = results["vae"]["decoder_ais"]["ais"], results["vae"]["decoder_ais"]["iwae_same_rows"]
    print(f"VAE decoder by AIS on the GAN's {ais_rows} rows: {ais['log_likelihood']:.2f} ± {ais['stderr']:.2f} "
          f"(IWAE K=1000 on the same rows: {iwae['log_likelihood']:.2f} ± {iwae['stderr']:.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
