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
``--out``. Its models: ``rbm`` (binarized MNIST), and on greyscale MNIST (intensities k / 255 from
``--root``) ``dcgan`` (Radford et al. 2016: the nonsaturating game, Adam 2e-4 with beta1 0.5, batch-normed
networks) and ``ebm`` (a convolutional energy trained by Nijkamp et al.'s short-run MCMC on rows
dequantized as (k + u) / 256; its log-likelihood in bits/dim by AIS over log Z at the end):

    OMP_NUM_THREADS=1 python benchmarks/ebm_gan.py --root ../shared/data --preset cpu-long --models dcgan,ebm \
        --runs ~/ppgen-runs/ebm_gan-long --max-minutes 100
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import ppgen
from ppgen import load_dataset, log_likelihood
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.inference.sample_quality import sample_quality
from ppgen.models.energy import EBM, RBM, ContrastiveDivergence, LangevinContrastiveDivergence
from ppgen.models.energy.ais import ais_log_partition, base_visible_bias
from ppgen.models.implicit import GAN, AdversarialObjective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import train_for  # noqa: E402  (epochs within a time budget, resuming so Adam's state carries)
from long_run import CHECKPOINT_MINUTES, budgeted_epochs, save_grid  # noqa: E402  (a call's epochs; grids)

PRESETS = {"cpu": {"hidden": 500, "test_rows": 1000, "ais_temperatures": 3000},
           "gpu": {"hidden": 500, "test_rows": 10000, "ais_temperatures": 14500}}

# The long RBM: 500 hidden units on the 50,000 static training rows, persistent CD (Tieleman 2008) with
# Adam at lr 1e-3 for the first third of the epochs, then decayed linearly towards 0 (Tieleman's PCD
# decays its learning rate to 0; persistent chains need small late steps to stay near the model).
# The curve's log-likelihoods use a cheap AIS (100 chains, 2,000 temperatures) on the validation rows,
# which errs high (too few temperatures); the final figure uses Salakhutdinov & Murray's 100 chains and
# 14,500 temperatures on all test rows, with the RAISE bracket on the first 20.
# "rbm" is that run (350 epochs: -91.07 nats, its curve still rising at the end); "rbm-long" is the same recipe for
# 1,000 epochs with Hinton's weight decay (his guide's 2e-4 per row and update, so 2e-4 x 50,000 = 10 on fit's
# whole-data loss; Adam supplies the momentum). Its curve is scored every 25 epochs: the cheap AIS costs as
# much as ten epochs of PCD-1. Its RAISE bracket averages 25 chains a row, not 5: the 350-epoch run's was 2.8
# nats wide, and RAISE's Jensen gap (low) shrinks with the chains averaged. Result: -86.91 nats, bracket 1.14.
RBM_LONG = {"rbm": {"hidden": 500, "k": 1, "persistent": True, "lr": 1e-3, "epochs": 350, "batch_size": 100,
                    "eval_every": 10, "curve_temperatures": 2000, "ais_temperatures": 14500, "ais_chains": 100,
                    "raise_rows": 20, "raise_chains": 5}}
RBM_LONG["rbm-long"] = {**RBM_LONG["rbm"], "epochs": 1000, "weight_decay": 10.0, "eval_every": 25,
                        "raise_chains": 25}


def rbm_lr(epoch: int, epochs: int, lr: float) -> float:
    """``lr`` for the first third of the epochs, then linearly down to lr / (2 epochs / 3) at the last."""
    third = epochs // 3
    return lr if epoch <= third else lr * (epochs - epoch + 1) / (epochs - third)


def long_rbm(args, name, train, valid, test) -> dict:
    """Train the long RBM ``name`` (settings ``RBM_LONG[name]``) in ``args.runs / name`` for at most
    ``args.max_minutes`` this call; evaluate once its schedule is done. Returns the row for the report
    (``status`` says partial or complete)."""
    cfg, run = RBM_LONG[name], args.runs / name
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"config": cfg, "epochs": []}
    rbm = RBM(784, hidden=cfg["hidden"])
    base = base_visible_bias(train.x, 784)
    settings = dict(batch_size=cfg["batch_size"], device=args.device, seed=0, checkpoint_dir=run / "checkpoint",
                    checkpoint_minutes=CHECKPOINT_MINUTES,
                    progress=False, convergence_tol=None, weight_decay=cfg.get("weight_decay", 0.0),
                    objective=lambda program: ContrastiveDivergence(program, k=cfg["k"], persistent=cfg["persistent"]))
    start, done = time.perf_counter(), len(curve["epochs"])
    seconds_before = curve["epochs"][-1]["seconds"] if done else 0.0
    for epoch in budgeted_epochs(done, cfg["epochs"], args.max_minutes):
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
            print(f"{name} epoch {epoch}: lr {lr:.2e}, valid log-lik (AIS {cfg['curve_temperatures']} temperatures) "
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
    if epochs < cfg["epochs"] and not args.evaluate:
        return row
    # a finished schedule's figures, or (--evaluate) those of the checkpoint as it stands, named by its epoch
    result_path = run / ("result.json" if epochs >= cfg["epochs"] else f"result-epoch{epochs}.json")
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
                  "sample_quality": sample_quality(rbm, test.x, 1000, reference=valid.x)}
    write_json_atomic(evaluation, result_path)
    return {**row, **evaluation}


# The long image models on greyscale MNIST, each in its run folder like the RBM's. "model" and "objective"
# are the constructors' keywords; an epoch is a pass over the first train_rows training rows; every eval_every
# epochs the curve gets the sample quality of curve_samples samples (FID etc. against the validation rows) and
# the folder a sample grid. The DCGAN: Radford et al.'s recipe at 28x28 (batch norm in both networks, Adam
# 2e-4 with betas (0.5, 0.999), batch 64); on one loaded CPU thread a step takes about 0.6 s, an epoch 8 minutes.
# The EBM: Nijkamp et al.'s short-run MCMC (K = 100 Langevin steps from uniform noise per update, lambda = 1/4
# and sigma = 0.005 on [0, 1], data noise 0.015, Adam 1e-4) with a small convolutional energy (c = 16); an
# update of 32 rows costs 3,200 energy gradients, about 3 s, so an epoch of 5,000 rows takes about 8 minutes.
LONG = {
    "dcgan": {"model": {"z_dim": 64, "architecture": "dcgan", "channels": 64},
              "objective": {"loss": "nonsaturating", "betas": (0.5, 0.999)},
              "lr": 2e-4, "batch_size": 64, "epochs": 25, "train_rows": 50_000, "eval_every": 1, "curve_samples": 500,
              "quality_samples": 1000},
    # the measured option of issue 29: the same DCGAN with a spectrally normalised critic (Miyato et al. 2018) in
    # place of its batch norm, for the same epochs (so nearly the same CPU time)
    "dcgan-sn": {"model": {"z_dim": 64, "architecture": "dcgan", "channels": 64, "discriminator_norm": "spectral"},
                 "objective": {"loss": "nonsaturating", "betas": (0.5, 0.999)},
                 "lr": 2e-4, "batch_size": 64, "epochs": 25, "train_rows": 50_000, "eval_every": 1,
                 "curve_samples": 500, "quality_samples": 1000},
    "ebm": {"model": {"architecture": "conv", "channels": 16, "steps": 100, "step_size": 0.25, "noise": 0.005},
            "objective": {"data_noise": 0.015},
            "lr": 1e-4, "batch_size": 32, "epochs": 40, "train_rows": 5_000, "eval_every": 2, "curve_samples": 500,
            "quality_samples": 1000, "ais_rows": 1000, "ais_chains": 100, "ais_temperatures": 2000},
    # the VAE beside them for scale (issue 29 asks for the GAN's FID within 1.5x of the VAE's on the same data):
    # a Gaussian decoder on the dequantized grey levels (as the EBM's; on the levels themselves a learned scale
    # shrinks to 0 on the always-black pixels), its samples the decoder's means, as VAEs are shown
    "vae": {"model": {"z_dim": 20, "hidden": [400], "likelihood": "gaussian"},
            "lr": 1e-3, "batch_size": 100, "epochs": 50, "train_rows": 50_000, "eval_every": 5, "curve_samples": 500,
            "quality_samples": 1000, "iwae_rows": 1000, "iwae_samples": 1000},
}
# The spectral-norm DCGAN with Polyak averages of the weights (fit's ema; Yazici et al. 2019 find averaging curbs a
# GAN's cycling): the spectral-norm run's FID swung between 33 and 52 over its last eight epochs and its largest
# class between 0.12 and 0.15, a generator still orbiting; this run's samples and curve are the averages'.
LONG["dcgan-sn-ema"] = {**LONG["dcgan-sn"], "ema": 0.999}


def dequantized(intensities: torch.Tensor, seed: int) -> torch.Tensor:
    """Grey levels k = 255 x (intensities k / 255) as (k + u) / 256, u ~ U(0, 1) drawn once with ``seed``: the
    EBM's data on its box [0, 1], so that log p(levels) >= E_u log p((k + u) / 256) - D log 256."""
    levels = (intensities * 255).round()
    return (levels + torch.rand(levels.shape, generator=torch.Generator().manual_seed(seed))) / 256


def build_long(name: str, cfg: dict):
    """The model and the objective (a function of the program) of the long run ``name``."""
    if name.startswith("dcgan"):
        return GAN(784, **cfg["model"]), lambda program: AdversarialObjective(program, **cfg["objective"])
    if name == "vae":
        return ppgen.VAE(784, **cfg["model"]), None  # fit's default: the ELBO
    return EBM(784, **cfg["model"]), lambda program: LangevinContrastiveDivergence(program, **cfg["objective"])


def shown(model, n: int, seed: int):
    """What a model's samples are shown as: the model itself (``sample_quality`` draws from it), or for a VAE
    ``n`` decoder means at prior draws of z (seeded), as VAE samples are shown."""
    if not isinstance(model, ppgen.VAE):
        return model
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    return model.decode(z.to(next(model.parameters()).device))


def long_model(args, name: str, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
               cfg: dict | None = None) -> dict:
    """Train the long ``name`` ("dcgan" or "ebm", settings ``cfg``, by default :data:`LONG`'s) on the grey rows
    ``train`` (intensities in [0, 1]) in ``args.runs / name`` for at most ``args.max_minutes`` this call, as
    :func:`long_rbm` does; evaluate once its schedule is done: sample quality against ``test`` (and the EBM's
    bits/dim by AIS). Returns the row for the report."""
    cfg = cfg or LONG[name]
    run = args.runs / name
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"config": cfg, "epochs": []}
    model, objective = build_long(name, cfg)
    rows = train[: cfg["train_rows"]]
    if name in ("ebm", "vae"):
        rows, valid, test = dequantized(rows, 0), dequantized(valid, 1), dequantized(test, 2)
    settings = dict(batch_size=cfg["batch_size"], lr=cfg["lr"], device=args.device, seed=0,
                    checkpoint_dir=run / "checkpoint", progress=False, convergence_tol=None, objective=objective,
                    ema=cfg.get("ema"))
    start, done = time.perf_counter(), len(curve["epochs"])
    seconds_before = curve["epochs"][-1]["seconds"] if done else 0.0
    for epoch in budgeted_epochs(done, cfg["epochs"], args.max_minutes):
        result = ppgen.fit(model, rows, epochs=epoch, resume=epoch > 1, **settings)
        row = {"epoch": epoch, "steps": result.steps, "train_objective": result.train_elbo[-1],  # minus the loss
               "seconds": round(seconds_before + time.perf_counter() - start, 1)}
        if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
            quality = sample_quality(shown(model, cfg["curve_samples"], epoch), valid, cfg["curve_samples"],
                                     seed=epoch, reference=test)
            row.update({k: quality[k] for k in ("fid", "kid", "precision", "recall", "largest_class_share")})
            torch.manual_seed(0)
            grid = shown(model, 100, 0)
            grid = (grid if isinstance(grid, torch.Tensor) else model.sample(100)).detach().cpu().clamp(0, 1)
            save_grid(grid, run / "samples.png")
            save_grid(grid, run / f"samples_{epoch:03d}.png")
            print(f"{name} epoch {epoch}: FID {row['fid']:.1f} ({cfg['curve_samples']} samples), precision "
                  f"{row['precision']:.2f}, recall {row['recall']:.2f}, top class {row['largest_class_share']:.2f}, "
                  f"{row['seconds'] / 3600:.2f} h", flush=True)
        curve["epochs"].append(row)
        write_json_atomic(curve, curve_path)
    epochs = len(curve["epochs"])
    if done and not curve["epochs"][done:]:  # nothing trained in this call: load the checkpoint's parameters
        ppgen.fit(model, rows, epochs=done, resume=True, **settings)
    report = {"status": "complete" if epochs >= cfg["epochs"] else "partial: stopped by the time budget",
              "epochs": epochs, "train_hours": round(curve["epochs"][-1]["seconds"] / 3600, 2) if epochs else 0.0,
              "config": cfg, "num_parameters": model.num_parameters,
              "fid_curve": [(e["epoch"], e["seconds"], e["fid"]) for e in curve["epochs"] if "fid" in e]}
    if epochs < cfg["epochs"] and not args.evaluate:
        return report
    # a finished schedule's figures, or (--evaluate) those of the checkpoint as it stands, named by its epoch
    n = args.quality_samples or cfg["quality_samples"]
    result_path = run / (("result" if epochs >= cfg["epochs"] else f"result-epoch{epochs}")
                         + ("" if n == cfg["quality_samples"] else f"-{n}samples") + ".json")
    if result_path.exists():
        return {**report, **json.loads(result_path.read_text())}
    t0 = time.perf_counter()
    evaluation = {"sample_quality": sample_quality(shown(model, n, 0), test, n, reference=valid)}
    if name == "vae":  # nats on [0, 1]^784 by IWAE, then bits/dim of the 8-bit levels, as the EBM's below
        scored = log_likelihood(model, test[: cfg["iwae_rows"]], num_samples=cfg["iwae_samples"])
        evaluation["log_likelihood"] = {"rows": cfg["iwae_rows"], "nats_on_the_box": scored.mean,
                                        "stderr": scored.stderr, "iwae_samples": cfg["iwae_samples"],
                                        "bits_per_dim": 8 - scored.mean / (784 * math.log(2)),
                                        "errs": "low (a lower bound on log p: bits/dim errs high)"}
    if name == "ebm":  # nats on [0, 1]^784, then bits/dim of the 8-bit levels: 8 - log p / (784 log 2)
        estimate = model.estimate_log_likelihood(test[: cfg["ais_rows"]], num_samples=cfg["ais_chains"],
                                                 num_temperatures=cfg["ais_temperatures"], seed=0)
        mean = estimate.values.mean().item()
        evaluation["log_likelihood"] = {"rows": len(estimate.values), "nats_on_the_box": mean,
                                        "log_z_stderr": estimate.stderr, "bits_per_dim": 8 - mean / (784 * math.log(2)),
                                        "ais_chains": cfg["ais_chains"], "ais_temperatures": cfg["ais_temperatures"],
                                        "errs": "high (log Z by AIS errs low)"}
    evaluation["evaluation_seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(evaluation, result_path)
    return {**report, **evaluation}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "cpu-long"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="the report (default: results/ebm_gan.json, "
                        "results/ebm_gan_long.json for cpu-long)")
    parser.add_argument("--models", default="rbm", help="cpu-long: the models to train, comma-separated (rbm, "
                        "rbm-long, dcgan, dcgan-sn, dcgan-sn-ema, ebm, vae)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ebm_gan-long"), help="cpu-long: run folders")
    parser.add_argument("--evaluate", action="store_true",
                        help="cpu-long: evaluate the checkpoint as it stands, even before the schedule is done")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="cpu-long: training minutes this call")
    parser.add_argument("--quality-samples", type=int,
                        help="cpu-long: samples for the final FID etc. (default: the run's; issue 29 asks for 10,000)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, valid, test = (load_dataset("binarized_mnist", s, root=args.root) for s in ("train", "valid", "test"))
    if args.preset == "cpu-long":
        out = args.out or Path(__file__).parent / "results" / "ebm_gan_long.json"
        report = json.loads(out.read_text()) if out.exists() else {"preset": "cpu-long", "models": {}}
        for name in args.models.split(","):
            if name in RBM_LONG:
                report["models"][name] = long_rbm(args, name, train, valid, test)
            elif name in LONG:
                grey = (load_dataset("mnist", s, root=args.root, binarize="dynamic").x.intensities
                        for s in ("train", "valid", "test"))
                report["models"][name] = long_model(args, name, *grey)
            else:
                raise SystemExit(f"cpu-long trains: {', '.join([*RBM_LONG, *LONG])}; got {name!r}")
            report["models"][name]["command"] = " ".join(["python", *sys.argv])
            write_json_atomic(report, out)
        print(json.dumps({k: {f: v for f, v in row.items() if f not in ("valid_ll_curve", "fid_curve")}
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
