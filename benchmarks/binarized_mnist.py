"""Autoregressive and latent-variable models on statically binarized MNIST: test NLL against the published table, and speed.

Trains each model with ``ppgen.fit`` (Adam; validation early stopping on the 10,000 validation rows, but for
the paper preset's VAE and IWAE, which train their whole schedule as Burda et al. do) in a
run folder (``--runs``; checkpoint, ``curve.json`` written every epoch, ``result.json``) for at most
``--epochs`` epochs or ``--max-minutes`` minutes per call; a second call resumes the same runs. It reports the test NLL (nats and bits/dim), the
learning curve, log-likelihood throughput (examples/s) and the seconds to draw 100 images.
The NLL is exact for the autoregressive models; for the VAE and IWAE it is the importance-sampled
estimate with ``--num-samples`` samples per example (Burda et al. 2016 use 5,000).

    python benchmarks/binarized_mnist.py --root ../shared/data --preset cpu --max-minutes 2 --train-rows 10000
    python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --models fvsbn,made,nade,vae \
        --max-minutes 30 --threads 1          # resumable: run it again to continue the same run folders
    python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --device cuda --max-minutes 120
    python benchmarks/binarized_mnist.py --root ../shared/data --models vae,iwae --preset paper --device cuda \
        --out benchmarks/results/binarized_mnist_latent.json

Writes ``benchmarks/results/binarized_mnist.json`` (``binarized_mnist_paper.json`` for the paper preset), keeping
the rows of earlier calls for the models this call does not run.
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
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.autoregressive import FVSBN, MADE, NADE, PixelCNN
from ppgen.models.latent import VAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leaderboard import PUBLISHED as LEADERBOARD, RESULTS  # noqa: E402  (one table of published figures)

# how fit() trains the models that do not use its defaults
FIT_OPTIONS = {
    # pytorch-made's Adam weight decay 1e-4 on a per-example loss is 1e-4 * 50,000 on fit's whole-data loss
    "made": {"weight_decay": 5.0},
    "made-direct": {"weight_decay": 5.0},
    "vae": {"elbo": "trace", "num_particles": 1},
    "iwae": {"elbo": "iwae", "num_particles": 50},
}
PER_ROW = "per row (the rows come from several calls; each records the call that finished it)"
PAPER_FIT_OPTIONS = {"made-32": {"optimizer": "adagrad"}}  # the authors' MADE command: Adagrad, lr 0.01
# Burda et al. train the VAE and IWAE for their whole schedule and report the last parameters, with no early
# stopping and no regularisation, on this static split too (their code's README: the models overfit by about
# 3.5 nats and score about 2 nats below the dynamic split's). Their validation ELBO can worsen while the
# likelihood still improves (the guide overfits first), so it is no stopping rule for them.
PAPER_PATIENCE = {"vae": None, "iwae": None}
VALID_LL_ROWS, VALID_LL_SAMPLES = 1_000, 100  # --valid-ll-every: its estimate, on the first validation rows


def constant(lr: float):
    return lambda epoch: lr


def step_down(lr: float, epochs: int, factor: float = 0.1):
    """``lr`` for ``epochs`` epochs, then ``lr * factor`` (pytorch-made's StepLR for MADE)."""
    return lambda epoch: lr if epoch <= epochs else lr * factor


def burda_schedule(epoch: int) -> float:
    """Burda et al.'s schedule (their code): 8 stages, stage i runs 3^(i-1) epochs at 1e-4 * round(10^(1 - (i-1)/7), 1)."""
    stage, last = 1, 1
    while epoch > last:
        stage += 1
        last += 3 ** (stage - 1)
    return 1e-4 * round(10 ** (1 - (stage - 1) / 7), 1)


BURDA_EPOCHS = sum(3 ** i for i in range(8))  # 3,280

PRESETS = {  # name -> (constructor, repr for the report, batch size, lr schedule, max epochs)
    "paper": {
        "fvsbn": (lambda: FVSBN(784), "FVSBN(784)", 100, constant(1e-3), 500),
        "nade": (lambda: NADE(784, hidden=500), "NADE(784, hidden=500)", 100, constant(1e-3), 500),
        # pytorch-made's recipe, which reaches the paper's Figure 2 point for this network: one random
        # ordering, Adam 1e-3 then 1e-4 after 45 epochs, 100 epochs, weight decay (see FIT_OPTIONS)
        "made": (lambda: MADE(784, hidden_sizes=(500,), order="random"),
                 "MADE(784, hidden_sizes=(500,), order='random')", 100, step_down(1e-3, 45), 100),
        "made-direct": (lambda: MADE(784, hidden_sizes=(500,), order="random", direct=True),
                        "MADE(784, hidden_sizes=(500,), order='random', direct=True)", 100, step_down(1e-3, 45), 100),
        # the authors' command (README of their code): 32 masks, each with its own ordering and connectivity
        # ("Full" shuffling), the direct connection, Adagrad 0.01 (PAPER_FIT_OPTIONS)
        "made-32": (lambda: MADE(784, hidden_sizes=(8000,), num_masks=32, order="random", direct=True),
                    "MADE(784, hidden_sizes=(8000,), num_masks=32, order='random', direct=True)", 100,
                    constant(1e-2), 500),
        "pixelcnn": (lambda: PixelCNN(channels=64, layers=12, kernel=7), "PixelCNN(channels=64, layers=12, kernel=7)",
                     64, constant(1e-3), 500),
        # Burda et al.: 784-200-200-50 with tanh, batch 20, Adam on their 3,280-epoch schedule
        "vae": (lambda: VAE(784, z_dim=50, hidden=(200, 200), activation="tanh"),
                "VAE(784, z_dim=50, hidden=(200, 200), activation='tanh')", 20, burda_schedule, BURDA_EPOCHS),
        "iwae": (lambda: VAE(784, z_dim=50, hidden=(200, 200), activation="tanh"),
                 "VAE(784, z_dim=50, hidden=(200, 200), activation='tanh'), IWAE k=50", 20, burda_schedule,
                 BURDA_EPOCHS),
    },
    "cpu": {
        "fvsbn": (lambda: FVSBN(784), "FVSBN(784)", 100, constant(3e-3), 500),
        "nade": (lambda: NADE(784, hidden=100), "NADE(784, hidden=100)", 100, constant(3e-3), 500),
        "made": (lambda: MADE(784, hidden_sizes=(500,)), "MADE(784, hidden_sizes=(500,))", 100, constant(1e-3), 500),
        "made-direct": (lambda: MADE(784, hidden_sizes=(500,), direct=True), "MADE(784, hidden_sizes=(500,), direct=True)",
                        100, constant(1e-3), 500),
        "made-32": (lambda: MADE(784, hidden_sizes=(500,), num_masks=32, order="random", direct=True),
                    "MADE(784, hidden_sizes=(500,), num_masks=32, order='random', direct=True)", 100,
                    constant(1e-3), 500),
        "pixelcnn": (lambda: PixelCNN(channels=16, layers=4, kernel=5), "PixelCNN(channels=16, layers=4, kernel=5)",
                     100, constant(3e-3), 500),
        "vae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200))", 100,
                constant(1e-3), 500),
        "iwae": (lambda: VAE(784, z_dim=50, hidden=(200, 200)), "VAE(784, z_dim=50, hidden=(200, 200)), IWAE k=50",
                 100, constant(1e-3), 500),
    },
}

# model -> (published test NLL on this split or None, its source), for the presets' models
PUBLISHED = {name: LEADERBOARD[name][1:] for name in PRESETS["paper"]}


def train(model, train_x, valid_x, run: Path, *, schedule, max_epochs: int, max_minutes: float, batch_size: int,
          device: str, seed: int, patience: int | None, elbo: str = "trace", num_particles: int = 1,
          optimizer: str = "adam", weight_decay: float = 0.0, valid_ll_every: int = 0) -> dict:
    """fit() one epoch per call in ``run``, resuming from its checkpoint, until ``max_epochs``, the patience
    (None: no early stopping, the last parameters) or this call's ``max_minutes`` run out. ``run/curve.json``
    gets a row per epoch as it goes, so an interrupted run resumes where its last checkpoint left it, with its
    curve and its hours. Every ``valid_ll_every`` epochs a row also gets ``valid_ll_nll``: the importance-sampled
    NLL of the first ``VALID_LL_ROWS`` validation rows (a latent-variable model's; its ELBO is ``valid_nll``)."""
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"epochs": [], "stopped_early": False}
    done = len(curve["epochs"])
    if done and not (run / "checkpoint").exists():
        raise RuntimeError(f"{run} has a curve but no checkpoint; delete the folder to start again")
    settings = dict(batch_size=batch_size, device=device, seed=seed, elbo=elbo, num_particles=num_particles,
                    optimizer=optimizer, weight_decay=weight_decay, valid=valid_x, patience=patience, checkpoint_dir=run / "checkpoint",
                    progress=False, convergence_tol=None)
    start, evaluating = time.perf_counter(), 0.0
    seconds_before = curve["epochs"][-1]["seconds"] if done else 0.0
    for epoch in range(done + 1, max_epochs + 1):
        if curve["stopped_early"] or (epoch > done + 1 and (time.perf_counter() - start) * (epoch - done) / (
                epoch - done - 1) > max_minutes * 60):
            break
        lr = schedule(epoch)
        result = fit(model, train_x, epochs=epoch, lr=lr, resume=epoch > 1, **settings)
        row = {"epoch": epoch, "lr": lr, "train_nll": -result.train_elbo[-1], "valid_nll": -result.valid_elbo[-1],
               "seconds": round(seconds_before + time.perf_counter() - start - evaluating, 1)}
        if valid_ll_every and epoch % valid_ll_every == 0:
            clock = time.perf_counter()
            row["valid_ll_nll"] = -log_likelihood(model, valid_x[:VALID_LL_ROWS], batch_size=500, device=device,
                                                  num_samples=VALID_LL_SAMPLES).mean
            evaluating += time.perf_counter() - clock  # kept off the training hours
        curve["epochs"].append(row)
        curve["stopped_early"], curve["best_epoch"] = result.stopped_early, result.best_epoch
        write_json_atomic(curve, curve_path)
    if done and not curve["epochs"][done:]:  # nothing trained in this call: load the checkpoint's parameters
        fit(model, train_x, epochs=done, lr=schedule(done), resume=True, **settings)
    curve["complete"] = curve["stopped_early"] or len(curve["epochs"]) >= max_epochs
    return curve


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


def plot_curves(runs: Path, out: Path) -> None:
    """Validation NLL against training hours for every run folder under ``runs`` (from curve.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for curve_path in sorted(runs.glob("*/curve.json")):
        epochs = json.loads(curve_path.read_text())["epochs"]
        hours = [e["seconds"] / 3600 for e in epochs]
        line, = ax.plot(hours, [e["valid_nll"] for e in epochs], marker=".", label=curve_path.parent.name)
        scored = [(e["seconds"] / 3600, e["valid_ll_nll"]) for e in epochs if "valid_ll_nll" in e]
        if scored:  # a latent-variable model's likelihood beside its ELBO
            ax.plot(*zip(*scored), ls="--", color=line.get_color(),
                    label=f"{curve_path.parent.name}: NLL of {VALID_LL_ROWS:,} rows, K = {VALID_LL_SAMPLES}")
        published = PUBLISHED.get(curve_path.parent.name, (None,))[0]
        if published is not None:
            ax.axhline(published, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("training hours (this machine)")
    ax.set_ylabel("validation NLL, nats (VAE: its -ELBO; dashed: IWAE estimate)")
    ax.set_ylim(top=130)
    ax.set_title("binarized MNIST, paper preset; dotted: published test NLL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding binarized_mnist.npz (default $PPGEN_DATA)")
    parser.add_argument("--models", default=",".join(PUBLISHED), help=f"comma-separated, from {list(PUBLISHED)}")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="architectures: published or CPU-sized")
    parser.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default: the preset's)")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="training time per model in this call; a later call with the same --runs resumes")
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N rows only")
    parser.add_argument("--test-rows", type=int, default=None, help="evaluate on the first N test rows only")
    parser.add_argument("--num-samples", type=int, default=5000,
                        help="importance samples per example for latent-variable models' test NLL")
    parser.add_argument("--patience", type=int, default=None,
                        help="epochs without a better validation score before stopping; 0: none, the last parameters "
                             "(default: cpu 5, paper 30, paper vae and iwae none, as Burda et al.)")
    parser.add_argument("--valid-ll-every", type=int, default=0,
                        help=f"latent-variable models: every N epochs, record in the curve the importance-sampled "
                             f"NLL ({VALID_LL_SAMPLES} samples) of the first {VALID_LL_ROWS:,} validation rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=None,
                        help="run folders, one per model: checkpoint, curve.json, result.json "
                             "(default: runs/binarized_mnist-PRESET; a temporary folder for --preset cpu)")
    parser.add_argument("--out", default=None,
                        help="the report; rows of earlier calls with the same preset are kept, this call's replace "
                             "theirs (default: benchmarks/results/binarized_mnist.json, or binarized_mnist_paper.json "
                             "for the paper preset)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(PUBLISHED))
    if unknown:
        parser.error(f"unknown models {unknown}; choices: {list(PUBLISHED)}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    scratch = tempfile.TemporaryDirectory() if args.runs is None and args.preset == "cpu" else None
    runs = Path(scratch.name if scratch else args.runs or f"runs/binarized_mnist-{args.preset}")

    out = Path(args.out or RESULTS / f"binarized_mnist{'_paper' if args.preset == 'paper' else ''}.json")
    earlier = json.loads(out.read_text()) if out.exists() else {"preset": args.preset, "models": {}}
    if earlier.get("preset") != args.preset:
        parser.error(f"{out} holds the {earlier.get('preset')!r} preset's rows, not {args.preset!r}: "
                     "give another --out")
    for row in earlier["models"].values():  # rows from before they recorded these: their report's
        row.setdefault("test_rows", earlier.get("test_rows", 10_000))  # before --test-rows: all 10,000
        if earlier.get("command") != PER_ROW:
            row.setdefault("command", earlier.get("command"))

    train_x = load_dataset("binarized_mnist", "train", root=args.root).x[: args.train_rows]
    valid_x = load_dataset("binarized_mnist", "valid", root=args.root).x
    test_x = load_dataset("binarized_mnist", "test", root=args.root).x[: args.test_rows]
    command = "python benchmarks/binarized_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from_other_calls = set(earlier["models"]) - set(names)
    report = {"command": PER_ROW if from_other_calls else command,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                         + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else
                            f", {torch.get_num_threads()} torch threads"),
              "torch": torch.__version__, "device": device, "preset": args.preset,
              "train_rows": len(train_x), "test_rows": len(test_x), "models": earlier["models"]}
    for name in names:
        build, description, batch_size, schedule, max_epochs = PRESETS[args.preset][name]
        torch.manual_seed(args.seed)
        model = build()
        options = {**FIT_OPTIONS.get(name, {}), **(PAPER_FIT_OPTIONS.get(name, {}) if args.preset == "paper" else {})}
        if args.patience is not None:
            patience = args.patience or None
        else:
            patience = PAPER_PATIENCE.get(name, 30) if args.preset == "paper" else 5
        latent = isinstance(model, VAE)
        curve = train(model, train_x, valid_x, runs / name, schedule=schedule,
                      max_epochs=args.epochs or max_epochs, max_minutes=args.max_minutes, batch_size=batch_size,
                      device=device, seed=args.seed, patience=patience,
                      valid_ll_every=args.valid_ll_every if latent else 0, **options)
        test = log_likelihood(model, test_x, batch_size=500, device=device, num_samples=args.num_samples)
        examples_per_s, sample_seconds = throughput(model, test_x[:2000], device, args.num_samples)
        published, source = PUBLISHED[name]
        epochs = curve["epochs"]
        row = {
            "model": description, "parameters": model.num_parameters, "batch_size": batch_size,
            "lr_first": schedule(1), "lr_last": epochs[-1]["lr"], "patience": patience,
            "status": "complete" if curve["complete"] else "partial: stopped by the time budget",
            "epochs": len(epochs), "best_epoch": curve.get("best_epoch"), "train_seconds": epochs[-1]["seconds"],
            "test_rows": len(test_x),
            "test_nll_nats": -test.mean, "test_bits_per_dim": test.bits_per_dim, "test_nll_exact": test.exact,
            "test_nll_stderr": test.stderr, "test_num_samples": test.num_samples,
            "test_elbo_nats": test.elbo, **options,
            "published_nll_nats": published, "published_source": source,
            "gap_to_published_nats": None if published is None else -test.mean - published,
            "valid_nll_curve": [e["valid_nll"] for e in epochs], "train_nll_curve": [e["train_nll"] for e in epochs],
            "log_likelihood_examples_per_s": examples_per_s, "sample_100_seconds": sample_seconds,
            "device": report["machine"], "run": str(runs / name), "command": command,
        }
        report["models"][name] = row
        write_json_atomic({**row, "torch": torch.__version__}, runs / name / "result.json")
        write_json_atomic(report, out)
        versus = f"published {published:.2f}" if published is not None else source
        print(f"{name:9s} {description:45s} test NLL {-test.mean:7.2f} nats ({test.bits_per_dim:.4f} bits/dim), "
              f"{versus}; {len(epochs)} epochs in {epochs[-1]['seconds']:.0f}s ({row['status']}); "
              f"{examples_per_s:.0f} ex/s; sample 100 in {sample_seconds:.1f}s", flush=True)
    if scratch:
        scratch.cleanup()
    else:
        plot_curves(runs, out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
