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
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --root ../shared/data --preset cpu-long --models binary \
        --runs runs/diffusion-long --max-minutes 170                      # resumable; call again to continue
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --root ../shared/data --preset recipes \
        --runs runs/diffusion-long --max-minutes 170                      # the Gaussian recipes side by side
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --root ../shared/data --preset cpu-long --models gaussian \
        --runs runs/diffusion-long --terms 100                            # where its bound goes, step by step
    python benchmarks/diffusion.py --root DATA --preset paper --models gaussian --device cuda \
        --runs runs/diffusion-paper --max-minutes 600                      # a GPU's long run, resumable

The ``cpu-long`` preset (:data:`LONG`) trains each model in its run folder (``long_run.LongRun``: ``fit``'s
checkpoint and ``curve.json``, with the wall and CPU hours) with Adam, a one-epoch warm-up and a half-cosine
decay to lr / 10; an epoch is ``rows_per_epoch`` rows drawn at random (``long_run.RandomRows``) so that a stop
loses minutes at most. The Gaussian model trains on the first 50,000 MNIST training images (intensities k/255)
and validates on the other 10,000; the binary one on the 50,000 statically binarized training rows, validating
on their 10,000 validation rows. After each epoch the curve gets the validation bound of ``valid_rows`` rows,
estimated from ``valid_draws`` steps per row (:func:`bound_estimate`). Once the planned epochs are done (or with
``--evaluate``, the checkpoint as it stands) it scores all 10,000 test rows: the bound from ``test_draws`` steps
per row (all T: the bound itself) with the standard error of its mean, sample grids (ancestral, and DDIM for the
Gaussian model) and FID/KID/precision/recall of ``--quality-samples`` samples beside the real-vs-real floor.
Writes benchmarks/results/diffusion_long.json.

The ``paper`` preset (:data:`PAPER`) is the same long runs at GPU sizes, for ``--device cuda``; its report
is benchmarks/results/diffusion_paper.json.

The ``recipes`` preset (:data:`RECIPES`) is the check before a recipe is kept: Ho et al.'s plain DDPM (L_simple),
the ELBO with fixed variances, Nichol & Dhariwal's learned variances with L_hybrid, and with the importance-sampled
ELBO, each trained as the long Gaussian run for the same rows (so nearly the same CPU time, which the table shows)
and validated as it is. Writes benchmarks/results/diffusion_recipes.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch

import ppgen
from ppgen import load_dataset, log_likelihood
from ppgen.inference.sample_quality import sample_quality
from ppgen.inference.checkpoint import load_fitted, write_json_atomic
from ppgen.models.diffusion import BinaryDiffusion, DiffusionELBO, GaussianDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_vae import train_for  # noqa: E402  (epochs within a time budget, resuming so Adam's state carries)
from long_run import CHECKPOINT_MINUTES, LongRun, RandomRows, save_grid, scheduled_lr, trained_parameters  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "diffusion.json"
PRESETS = {
    "cpu": {"num_steps": 200, "channels": 16, "multipliers": (1, 2, 2), "num_blocks": 1, "attention": True,
            "binary_steps": 200, "binary_hidden": (512, 512), "batch_size": 64, "lr": 1e-3,
            "test_rows": 100, "binary_test_rows": 1000, "sample_rows": 16, "quality_samples": 100},
    "gpu": {"num_steps": 1000, "channels": 64, "multipliers": (1, 2, 2), "num_blocks": 2, "attention": True,
            "binary_steps": 1000, "binary_hidden": (1024, 1024, 1024), "batch_size": 128, "lr": 2e-4,
            "test_rows": 10000, "binary_test_rows": 10000, "sample_rows": 256, "quality_samples": 1000},
}


# The cpu-long runs: "model" is the constructor's keywords, "objective" DiffusionELBO's (None: the model's own loss;
# importance-sampled steps for the binary model); an epoch is rows_per_epoch random training rows; the curve's
# validation bound uses valid_draws steps per row, the test's test_draws (T: the bound itself). GAUSSIAN_BASE is
# the Gaussian runs' network, data, optimiser and validation, shared by the recipes below. Its first long recipe
# (cosine, learned variances, the importance-sampled ELBO: Nichol & Dhariwal's best likelihoods) stood at 21.0
# bits/dim after 20,000 rows; in the recipes' side-by-side run (RECIPES, 20,000 rows each) it reached 34.1 where Ho
# et al.'s plain one (linear betas, sigma^2 = beta, L_simple) reached 2.27, the best of the five, and its long run
# ("gaussian-plain") followed. That run's bound stalled near 1.9, most of it in the decoder and the smallest steps:
# its first step's noise is wider than a pixel level. Kingma et al.'s log-SNR schedule ("log-snr" recipe) has no
# such floor, and with the posterior variances its L_simple is the ELBO; it beat the plain recipe within 20,000
# rows and still fell fast: the long "gaussian" run is it, with EMA.
GAUSSIAN_BASE = {"model": dict(num_steps=1000, schedule="cosine", variance="learned", loss="elbo", channels=32,
                               multipliers=[1, 2, 2], num_blocks=1, attention=True),
                 "objective": {"importance_sampling": True},
                 "epochs": 100, "rows_per_epoch": 10_000, "batch_size": 64, "lr": 5e-4, "warmup_epochs": 1,
                 "clip_norm": None, "valid_rows": 500, "valid_draws": 20, "test_draws": 50}
LONG = {
    "gaussian": {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], "schedule": "log-snr", "variance": "posterior",
                                            "loss": "simple"},
                 "objective": None, "ema": 0.999},
    "gaussian-plain": {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], "schedule": "linear", "variance": "beta",
                                                  "loss": "simple"},
                       "objective": None, "ema": 0.999},
    "binary": {"model": dict(num_steps=1000, schedule="cosine", hidden=[1024, 1024, 1024]),
               "objective": {"importance_sampling": True},
               "epochs": 100, "rows_per_epoch": 50_000, "batch_size": 100, "lr": 5e-4, "warmup_epochs": 1,
               "clip_norm": None, "valid_rows": 1000, "valid_draws": 100, "test_draws": 1000},
}
# The recipes of issue 28 against the plain one, at equal rows (and so nearly equal CPU time): the long Gaussian
# run's network and data, each for RECIPE_EPOCHS epochs of RECIPE_ROWS rows, validated as the long run is.
# "model": GaussianDiffusion's keywords over LONG's; "objective": DiffusionELBO's (None: the model's own loss).
RECIPES = {
    "plain": {"model": dict(schedule="linear", variance="beta", loss="simple"), "objective": None,
              "label": "Ho et al. 2020: linear betas, sigma^2 = beta, L_simple"},
    "plain-cosine": {"model": dict(schedule="cosine", variance="beta", loss="simple"), "objective": None,
                     "label": "cosine betas, sigma^2 = beta, L_simple"},
    "elbo": {"model": dict(schedule="cosine", variance="beta", loss="elbo"), "objective": None,
             "label": "cosine, sigma^2 = beta, the ELBO (t uniform)"},
    "hybrid": {"model": dict(schedule="cosine", variance="learned", loss="hybrid"), "objective": None,
               "label": "Nichol & Dhariwal 2021: cosine, learned sigma, L_hybrid"},
    "elbo-is": {"model": dict(schedule="cosine", variance="learned", loss="elbo"),
                "objective": {"importance_sampling": True},
                "label": "Nichol & Dhariwal 2021: cosine, learned sigma, the ELBO with importance-sampled t"},
    "log-snr": {"model": dict(schedule="log-snr", variance="posterior", loss="simple"), "objective": None,
                "label": "Kingma et al. 2021: log SNR linear in t, sigma^2 = posterior, L_simple (the ELBO's weights)"},
    "log-snr-fourier": {"model": dict(schedule="log-snr", variance="posterior", loss="simple", fourier=[7, 8]),
                        "objective": None, "label": "the same with Fourier features of x_t (n = 7, 8), as VDM"},
}
RECIPE_EPOCHS, RECIPE_ROWS = 4, 5_000
# The paper preset: the long runs at GPU sizes (``--device cuda``), the same code and run folders' format. The
# Gaussian model as Kingma et al. trained theirs for likelihood (the log-SNR schedule, whose L_simple is the ELBO,
# Fourier features of x_t; EMA 0.9999) on Ho et al.'s U-Net width for 32x32 (128, multipliers 1, 2, 2, two blocks
# a level); the binary one as the cpu-long run, which met its target, for three times the epochs with EMA.
PAPER = {
    "gaussian": {"model": dict(num_steps=1000, schedule="log-snr", variance="posterior", loss="simple", channels=128,
                               multipliers=[1, 2, 2], num_blocks=2, attention=True, fourier=[7, 8]),
                 "objective": None,
                 "epochs": 500, "rows_per_epoch": 50_000, "batch_size": 128, "lr": 1e-4, "warmup_epochs": 1,
                 "clip_norm": None, "valid_rows": 1000, "valid_draws": 50, "test_draws": 1000, "ema": 0.9999},
    "binary": {**LONG["binary"], "epochs": 300, "ema": 0.9999},
}
LONGS = {"cpu-long": LONG, "paper": PAPER}
# a long run's evaluation is kept in pieces of this many test rows and samples (the width-32 U-Net on one CPU thread:
# about 4 and 7 minutes each)
EVAL_ROWS, EVAL_SAMPLES = 500, 50
PUBLISHED_LONG = {"gaussian": "no MNIST figure for DDPM found; the issue's target is <= 1.20 bits/dim",
                  "binary": "no published figure on these rows; the issue's target is <= 95 nats"}
PUBLISHED_LONG["gaussian-plain"] = PUBLISHED_LONG["gaussian"]


@torch.no_grad()
def bound_estimate(model, x: torch.Tensor, draws: int, *, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """The negative ELBO per row of ``x`` (nats, float64) in evaluation mode, from ``draws`` steps per row, one
    from each of ``draws`` equal strata of 1..T (``model.nll_bound(strata=draws)``, unbiased; ``draws`` = T: every
    term summed), in batches of ``batch_size`` rows that share one seeded stream of draws."""
    training = model.training
    model.eval()
    generator = torch.Generator(x.device).manual_seed(seed)
    bound = torch.cat([model.nll_bound(rows, strata=draws, seed=generator) for rows in x.split(batch_size)])
    model.train(training)
    return bound


@torch.no_grad()
def bound_terms(model, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Where the bound goes: the mean over the rows of ``x`` of each of its terms, nats, (T + 1,) float64. Index
    0 holds the prior's L_T, index t the term of step t (the decoder's -log p(x_0 | x_1) at t = 1); they sum to
    the rows' mean bound (one draw of x_t per row and step, from a generator seeded with ``seed``)."""
    training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x0 = model.to_chain(model.check_data(x))
    terms = [model.prior_term(x0).double().mean()]
    for step in range(1, model.num_steps + 1):
        t = torch.full((len(x0),), step, device=x0.device)
        terms.append(model.step_term(x0, t, model.step_draw(x0, t, generator)).double().mean())
    model.train(training)
    return torch.stack(terms).cpu()


TERM_RANGES = ((1, 1), (2, 5), (6, 20), (21, 100), (101, 300), (301, 1000))


def terms_report(args) -> None:
    """``--terms ROWS``: :func:`bound_terms` of each cpu-long run's checkpoint (its averages and its trained
    parameters) on ROWS random test rows, in bits/dim by ranges of t; written to the run folder's terms.json."""
    test = load_dataset("mnist", "test", root=args.root, binarize="dynamic").x.intensities
    rows = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.terms]]
    for name in args.models.split(","):
        if name not in LONG or name == "binary":
            raise SystemExit(f"--terms reads the Gaussian runs ({', '.join(n for n in LONG if n != 'binary')}); "
                             f"got {name!r}")
        folder = args.runs / name
        model = GaussianDiffusion(784, **LONG[name]["model"])
        curve = json.loads((folder / "curve.json").read_text())["epochs"]
        per_dim, out = 1 / (784 * math.log(2)), {"rows": args.terms, "epoch": curve[-1]["epoch"] if curve else 0}
        for kind in ("averages", "trained"):
            load_fitted(model, folder / "checkpoint", averaged=kind == "averages")
            terms = bound_terms(model, rows) * per_dim
            T = len(terms) - 1
            out[kind] = {"total": terms.sum().item(), "prior": terms[0].item(),
                         **{f"t={a}" if a == b else f"t={a}-{b}": terms[a:b + 1].sum().item()
                            for a, b in TERM_RANGES if b <= T},
                         "per_step": terms.tolist()}
            print(name, kind, json.dumps({k: round(v, 4) for k, v in out[kind].items() if k != "per_step"}),
                  flush=True)
        write_json_atomic(out, folder / "terms.json")


def long_diffusion(args, name: str, train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor | None,
                   cfg: dict | None = None, folder: Path | None = None) -> dict:
    """Train the long ``name`` ("gaussian", "gaussian-plain" or "binary", settings ``cfg``, by default
    :data:`LONG`'s) in ``folder`` (default ``args.runs / name``) for at most ``args.max_minutes`` this call,
    continuing what earlier calls trained; once the planned epochs are done (or with ``args.evaluate``) evaluate
    it on ``test`` (None: not at all). Returns the report's row."""
    cfg = cfg or LONG[name]
    run = LongRun(folder or args.runs / name, cfg)
    model = (BinaryDiffusion if name == "binary" else GaussianDiffusion)(784, **cfg["model"])
    objective = functools.partial(DiffusionELBO, **cfg["objective"]) if cfg.get("objective") else None
    settings = dict(batch_size=cfg["batch_size"], device=args.device, seed=0, checkpoint_dir=run.checkpoint_dir,
                    checkpoint_minutes=CHECKPOINT_MINUTES,
                    resume=True, progress=False, convergence_tol=None, clip_norm=cfg["clip_norm"], objective=objective,
                    ema=cfg.get("ema"))
    rows, valid = RandomRows(train, cfg["rows_per_epoch"]), valid[: cfg["valid_rows"]]
    per_dim = 1 / (784 * math.log(2))
    for epoch in run.epochs(args.max_minutes):
        result = ppgen.fit(model, rows, epochs=epoch, lr=scheduled_lr(epoch, cfg), **settings)
        bound = bound_estimate(model, valid, cfg["valid_draws"]).mean().item()
        figures = {"epoch": epoch, "lr": scheduled_lr(epoch, cfg), "steps": result.steps,
                   "train_loss": -result.train_elbo[-1], "valid_bound_nats": bound, "valid_bits_per_dim": bound * per_dim}
        if cfg.get("ema"):  # the bound above is the averages'; the trained parameters' beside it (same noise)
            with trained_parameters(model, run):
                figures["valid_bound_nats_trained"] = bound_estimate(model, valid, cfg["valid_draws"]).mean().item()
        row = run.record(figures)
        print(f"{name} epoch {epoch}/{cfg['epochs']}: valid bound {bound:.2f} nats ({bound * per_dim:.3f} bits/dim), "
              f"{row['cpu_seconds'] / 3600:.2f} CPU hours", flush=True)
    if run.rows and not run.trained_now:  # nothing trained in this call: the checkpoint's parameters
        load_fitted(model, run.checkpoint_dir)
    report = {**run.report(), "num_parameters": model.num_parameters, "published": PUBLISHED_LONG[name],
              "valid_rows": len(valid), "valid_curve": [(r["epoch"], r["cpu_seconds"], r["valid_bound_nats"])
                                                        for r in run.rows]}
    if test is None or not run.rows or not (run.complete or args.evaluate):
        return report
    path = run.result_path()
    if path.exists() and json.loads(path.read_text())["test_rows"] == len(test):
        return {**report, **json.loads(path.read_text())}
    start = time.perf_counter()
    # in pieces kept as they are done (hours of evaluation on a CPU), each with its own seeded draws
    bound = torch.cat(run.pieces("test-bound", math.ceil(len(test) / EVAL_ROWS), lambda k: bound_estimate(
        model, test[k * EVAL_ROWS:(k + 1) * EVAL_ROWS], cfg["test_draws"], seed=k)))
    stderr = bound.std().item() / math.sqrt(len(bound))
    evaluation = {"test_rows": len(test), "test_draws": cfg["test_draws"], "test_bound_nats": bound.mean().item(),
                  "test_bound_nats_stderr": stderr, "test_bits_per_dim": bound.mean().item() * per_dim,
                  "test_bits_per_dim_stderr": stderr * per_dim}
    samplers = {"ancestral": {}} if name == "binary" else {"ancestral": {}, "ddim100": dict(method="ddim", steps=min(100, model.num_steps))}
    grey = name != "binary"
    for sampler, options in samplers.items():
        with torch.no_grad():
            drawn = torch.cat(run.pieces(f"samples-{sampler}", math.ceil(args.quality_samples / EVAL_SAMPLES),
                                         lambda k, options=options: model.sample(
                                             min(EVAL_SAMPLES, args.quality_samples - k * EVAL_SAMPLES),
                                             seed=k * EVAL_SAMPLES, **options)))
        save_grid(drawn[:64], run.folder / f"samples-{sampler}.png", rows=8)
        scale = 255 if grey else 1  # sample_quality takes grey levels 0..255 with grey=True
        evaluation[f"quality_{sampler}"] = sample_quality(drawn * scale, test * scale, args.quality_samples,
                                                          grey=grey, reference=train[-args.quality_samples:] * scale)
    evaluation.update(evaluation_seconds=round(time.perf_counter() - start, 1),
                      sample_grids=[str(run.folder / f"samples-{s}.png") for s in samplers])
    write_json_atomic(evaluation, path)
    return {**report, **evaluation}


def long_runs(args) -> None:
    """The ``cpu-long`` and ``paper`` presets: :func:`long_diffusion` for each of ``args.models``, each row written
    to the report."""
    runs = LONGS[args.preset]
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name(
        "diffusion_long.json" if args.preset == "cpu-long" else "diffusion_paper.json")
    report = json.loads(out.read_text()) if out.exists() else {"preset": args.preset, "models": {}}
    report.update(threads=args.threads, torch=torch.__version__,
                  data={"gaussian, gaussian-plain": "MNIST intensities k/255: training rows 0..49,999, validation "
                                                    "50,000..59,999, all 10,000 test rows",
                        "binary": "statically binarized MNIST (Larochelle & Murray): 50,000 / 10,000 / 10,000"})
    for name in args.models.split(","):
        if name not in runs:
            raise SystemExit(f"{args.preset} trains: {', '.join(runs)}; got {name!r}")
        if name != "binary":
            train, valid, test = (load_dataset("mnist", s, root=args.root, binarize="dynamic").x.intensities
                                  for s in ("train", "valid", "test"))  # the loader's train: the first 50,000
        else:
            train, valid, test = (load_dataset("binarized_mnist", s, root=args.root).x for s in ("train", "valid", "test"))
        test = test[: args.test_rows] if args.test_rows else test
        report["models"][name] = {**long_diffusion(args, name, train, valid, test, runs[name]),
                                  "command": " ".join(["python", *sys.argv])}
        write_json_atomic(report, out)
        print(name, json.dumps({k: v for k, v in report["models"][name].items() if k != "valid_curve"}), flush=True)


def recipe_runs(args) -> None:
    """The ``recipes`` preset: each of :data:`RECIPES` trained as the long Gaussian run is (its network, data,
    batch, learning rate and validation) for RECIPE_EPOCHS epochs of RECIPE_ROWS rows, in ``args.runs /
    "recipes" / name`` (resumable); the validation bound after each epoch, with the CPU seconds spent."""
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("diffusion_recipes.json")
    train, valid = (load_dataset("mnist", s, root=args.root, binarize="dynamic").x.intensities
                    for s in ("train", "valid"))
    report = json.loads(out.read_text()) if out.exists() else {"recipes": {}}  # other calls' recipes stay
    report.update(data="MNIST intensities k/255: the first 50,000 training rows; validation: the first "
                       f"{GAUSSIAN_BASE['valid_rows']} of the other 10,000",
                  epochs=RECIPE_EPOCHS, rows_per_epoch=RECIPE_ROWS)
    for name in args.models.split(",") if args.models != "gaussian,binary" else RECIPES:
        recipe = RECIPES[name]
        cfg = {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], **recipe["model"]},
               "objective": recipe["objective"], "epochs": RECIPE_EPOCHS, "rows_per_epoch": RECIPE_ROWS}
        row = long_diffusion(args, "gaussian", train, valid, None, cfg, folder=args.runs / "recipes" / name)
        report["recipes"][name] = {"label": recipe["label"], **row, "command": " ".join(["python", *sys.argv])}
        write_json_atomic(report, out)
    print("| recipe | " + " | ".join(f"epoch {e}" for e in range(1, RECIPE_EPOCHS + 1)) + " | CPU s |")
    print("|---|" + "---:|" * (RECIPE_EPOCHS + 1))
    for name, row in report["recipes"].items():
        curve = row["valid_curve"]
        figures = [f"{b / (784 * math.log(2)):.3f}" for _, _, b in curve] + [""] * (RECIPE_EPOCHS - len(curve))
        print(f"| {row['label']} | " + " | ".join(figures) + f" | {curve[-1][1] if curve else 0:.0f} |")
    print(f"wrote {out}")


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
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "cpu-long", "paper", "recipes"], default="cpu")
    parser.add_argument("--models", default="gaussian,binary", help="cpu-long: the models to train, comma-separated")
    parser.add_argument("--runs", type=Path, default=Path("runs/diffusion-long"), help="cpu-long: the run folders")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="cpu-long: training minutes this call")
    parser.add_argument("--evaluate", action="store_true",
                        help="cpu-long: evaluate the checkpoints as they stand (a partial run)")
    parser.add_argument("--quality-samples", type=int, default=500, help="cpu-long: samples for FID etc.")
    parser.add_argument("--terms", type=int, help="cpu-long: where the Gaussian run's bound goes, each of its terms "
                        "on this many random test rows (its checkpoint as it stands; no training)")
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: results/diffusion.json "
                        "(results/diffusion_long.json for cpu-long)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.terms:
        return terms_report(args)
    if args.preset in LONGS:
        return long_runs(args)
    if args.preset == "recipes":
        return recipe_runs(args)
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
