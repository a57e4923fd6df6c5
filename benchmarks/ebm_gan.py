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
    OMP_NUM_THREADS=1 python benchmarks/ebm_gan.py --root ../shared/data --preset cpu-long --models rbm \
        --runs ~/ppgen-runs/ebm_gan-long --max-minutes 100    # resumable: run it again to continue

The ``cpu-long`` preset trains in a run folder per model (``--runs``: checkpoint, ``curve.json`` and a
sample grid written every few epochs) and resumes it when called again with the same command; once the
schedule is done it evaluates on all 10,000 test rows and writes ``result.json`` there and a row in
``--out``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ppgen
from ppgen import load_dataset, log_likelihood
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.inference.sample_quality import sample_quality
from ppgen.models.energy import RBM, ContrastiveDivergence
from ppgen.models.energy.ais import ais_log_partition, base_visible_bias
from ppgen.models.implicit import GAN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import train_for  # noqa: E402  (epochs within a time budget, resuming so Adam's state carries)

PRESETS = {"cpu": {"hidden": 500, "test_rows": 1000, "ais_temperatures": 3000},
           "gpu": {"hidden": 500, "test_rows": 10000, "ais_temperatures": 14500}}

# The long RBM: 500 hidden units on the 50,000 static training rows, persistent CD (Tieleman 2008) with
# Adam at lr 1e-3 for the first third of the epochs, then decayed linearly towards 0 (Tieleman's PCD
# decays its learning rate to 0; persistent chains need small late steps to stay near the model).
# The curve's log-likelihoods use a cheap AIS (100 chains, 2,000 temperatures) on the validation rows,
# which errs high (too few temperatures); the final figure uses Salakhutdinov & Murray's 100 chains and
# 14,500 temperatures on all test rows, with the RAISE bracket on the first 20.
RBM_LONG = {"hidden": 500, "k": 1, "persistent": True, "lr": 1e-3, "epochs": 350, "batch_size": 100,
            "eval_every": 10, "curve_temperatures": 2000, "ais_temperatures": 14500, "ais_chains": 100,
            "raise_rows": 20, "raise_chains": 5}


def rbm_lr(epoch: int, epochs: int, lr: float) -> float:
    """``lr`` for the first third of the epochs, then linearly down to lr / (2 epochs / 3) at the last."""
    third = epochs // 3
    return lr if epoch <= third else lr * (epochs - epoch + 1) / (epochs - third)


def long_rbm(args, train, valid, test) -> dict:
    """Train the long RBM in ``args.runs / "rbm"`` for at most ``args.max_minutes`` this call; evaluate
    once its schedule is done. Returns the row for the report (``status`` says partial or complete)."""
    cfg, run = RBM_LONG, args.runs / "rbm"
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"config": cfg, "epochs": []}
    rbm = RBM(784, hidden=cfg["hidden"])
    base = base_visible_bias(train.x, 784)
    settings = dict(batch_size=cfg["batch_size"], device=args.device, seed=0, checkpoint_dir=run / "checkpoint",
                    progress=False, convergence_tol=None,
                    objective=lambda program: ContrastiveDivergence(program, k=cfg["k"], persistent=cfg["persistent"]))
    start, done = time.perf_counter(), len(curve["epochs"])
    seconds_before = curve["epochs"][-1]["seconds"] if done else 0.0
    for epoch in range(done + 1, cfg["epochs"] + 1):
        elapsed = time.perf_counter() - start
        if epoch > done + 1 and elapsed * (epoch - done) / (epoch - done - 1) > args.max_minutes * 60:
            break
        lr = rbm_lr(epoch, cfg["epochs"], cfg["lr"])
        result = ppgen.fit(rbm, train.x, epochs=epoch, lr=lr, resume=epoch > 1, **settings)
        row = {"epoch": epoch, "lr": lr, "train_free_energy": -result.train_elbo[-1],
               "seconds": round(seconds_before + time.perf_counter() - start, 1)}
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
            with torch.no_grad():
                log_z = ais_log_partition(rbm, num_chains=100, num_temperatures=cfg["curve_temperatures"],
                                          base_bias=base, seed=epoch)
                row["valid_ll_ais"] = (-rbm.free_energy(valid.x).double() - log_z.log_z).mean().item()
            save_grid(rbm.sample(100, steps=1000), run / "samples.png")
            print(f"rbm epoch {epoch}: lr {lr:.2e}, valid log-lik (AIS {cfg['curve_temperatures']} temperatures) "
                  f"{row['valid_ll_ais']:.2f}, {row['seconds'] / 3600:.2f} h", flush=True)
        curve["epochs"].append(row)
        write_json_atomic(curve, curve_path)
    if done and not curve["epochs"][done:]:  # nothing trained in this call: load the checkpoint's parameters
        ppgen.fit(rbm, train.x, epochs=done, lr=rbm_lr(done, cfg["epochs"], cfg["lr"]), resume=True, **settings)
    epochs = len(curve["epochs"])
    row = {"status": "complete" if epochs >= cfg["epochs"] else "partial: stopped by the time budget",
           "epochs": epochs, "train_hours": round(curve["epochs"][-1]["seconds"] / 3600, 2), "config": cfg,
           "num_parameters": rbm.num_parameters,
           "valid_ll_curve": [(e["epoch"], e["seconds"], e["valid_ll_ais"]) for e in curve["epochs"]
                              if "valid_ll_ais" in e]}
    if epochs < cfg["epochs"]:
        return row
    result_path = run / "result.json"
    if result_path.exists():
        return {**row, **json.loads(result_path.read_text())}
    rbm.ais_temperatures = cfg["ais_temperatures"]
    t0 = time.perf_counter()
    estimate = rbm.estimate_log_likelihood(test.x, num_samples=cfg["ais_chains"], seed=0,
                                           raise_rows=cfg["raise_rows"], raise_chains=cfg["raise_chains"])
    values = estimate.values
    evaluation = {"test_rows": len(test.x), "log_likelihood": values.mean().item(), "log_z_stderr": estimate.stderr,
                  "rows_stderr": (values.std() / len(values) ** 0.5).item(), "raise_ais_bracket": estimate.bracket,
                  "ais_chains": cfg["ais_chains"], "ais_temperatures": cfg["ais_temperatures"],
                  "evaluation_seconds": round(time.perf_counter() - t0, 1),
                  "sample_quality": sample_quality(rbm, test.x, 1000)}
    write_json_atomic(evaluation, result_path)
    return {**row, **evaluation}


def save_grid(images: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(len(images) ** 0.5)
    grid = images[: n * n].reshape(n, n, 28, 28).permute(0, 2, 1, 3).reshape(n * 28, n * 28)
    plt.imsave(path, grid.cpu().numpy(), cmap="gray_r")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "cpu-long"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="the report (default: results/ebm_gan.json, "
                        "results/ebm_gan_long.json for cpu-long)")
    parser.add_argument("--models", default="rbm", help="cpu-long: the models to train, comma-separated (rbm)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ebm_gan-long"), help="cpu-long: run folders")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="cpu-long: training minutes this call")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, valid, test = (load_dataset("binarized_mnist", s, root=args.root) for s in ("train", "valid", "test"))
    if args.preset == "cpu-long":
        out = args.out or Path(__file__).parent / "results" / "ebm_gan_long.json"
        report = json.loads(out.read_text()) if out.exists() else {"preset": "cpu-long", "models": {}}
        for name in args.models.split(","):
            if name != "rbm":
                raise SystemExit(f"cpu-long trains: rbm; got {name!r}")
            report["models"][name] = long_rbm(args, train, valid, test)
            report["models"][name]["command"] = " ".join(["python", *sys.argv])
            write_json_atomic(report, out)
        print(json.dumps({k: {f: v for f, v in row.items() if f != "valid_ll_curve"}
                          for k, row in report["models"].items()}, indent=1))
        return
    args.out = args.out or Path(__file__).parent / "results" / "ebm_gan.json"
    preset = PRESETS[args.preset]
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
