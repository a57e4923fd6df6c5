"""The ``ppgen`` command: demo, train, evaluate, sample and restore, on run folders.

A run folder holds ``config.json`` (model name and arguments, data set, training settings),
``model.pt`` (the trained weights), ``checkpoints/`` (for ``--resume``), ``history.json``,
``metrics.json`` and figures. This module parses arguments and reads and writes run folders; what
it computes is the library's: ``fit``, ``log_likelihood``, ``sample_quality``
(:mod:`ppgen.inference.sample_quality`), ``restore``, ``compress``, and the figures of
:mod:`ppgen.plots` and :mod:`ppgen.demo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ppgen._lazy import LazyObject

# `ppgen --help` answers without importing torch: these names import their module on first use.
torch = LazyObject("torch")
load_dataset, Dataset = (LazyObject("ppgen.data", n) for n in ("load_dataset", "Dataset"))
FitConfig, fit, log_likelihood = (LazyObject("ppgen.inference", n) for n in ("FitConfig", "fit", "log_likelihood"))
save_atomic, write_json_atomic = (LazyObject("ppgen.inference.checkpoint", n)
                                   for n in ("save_atomic", "write_json_atomic"))
elbo_report, format_report = (LazyObject("ppgen.inference.diagnostics", n) for n in ("elbo_report", "format_report"))
FVSBN, MADE, NADE, VAE, ConditionalVAE, IndependentBernoulli, PixelCNN = (LazyObject("ppgen.models", name) for name in (
    "FVSBN", "MADE", "NADE", "VAE", "ConditionalVAE", "IndependentBernoulli", "PixelCNN"))
image_grid = LazyObject("ppgen.plots", "image_grid")
check_out, demo_figures, figure_path = (LazyObject("ppgen.demo", n)
                                       for n in ("check_out", "demo_figures", "figure_path"))
draw, sample_quality = (LazyObject("ppgen.inference.sample_quality", n) for n in ("draw", "sample_quality"))
RealNVP, Glow, MAF, prepare_data = (LazyObject("ppgen.models.flows", n) for n in ("RealNVP", "Glow", "MAF", "prepare_data"))
DATASETS = ("digits", "digits_grey", "digits_colour", "binarized_mnist", "mnist")  # ppgen.data.DATASETS (tests/test_startup.py checks)
TEXT_DATASETS = ("shakespeare",)  # ppgen.data.TEXT_DATASETS
CharLSTM, CharNGram, CharTransformer = (LazyObject("ppgen.models.sequence", n)
                                        for n in ("CharLSTM", "CharNGram", "CharTransformer"))
Vocabulary, as_text = (LazyObject("ppgen.data.text", n) for n in ("Vocabulary", "as_text"))
restore, restore_grid, restore_summary, make_operator, image_shape_of = (LazyObject("ppgen.inverse", n) for n in (
    "restore", "restore_grid", "restore_summary", "make_operator", "image_shape_of"))
RESTORE_TASKS = ("inpaint", "colourise", "upsample", "denoise")  # ppgen.inverse.TASKS (kept literal: --help imports no torch)
MASKS = ("bottom", "top", "right", "centre", "random")  # ppgen.inverse.MASKS
ESTIMATORS = ("auto", "trace", "meanfield", "enum", "graph", "iwae", "mle")  # ppgen.inference.program.ESTIMATORS

def _pixelcnn(x_dim: int, **kwargs) -> PixelCNN:
    model = PixelCNN(**kwargs)
    if model.x_dim != x_dim:
        raise ValueError(f"PixelCNN of {model.height}x{model.width} pixels cannot model {x_dim}-dimensional data")
    return model


def _ngram(vocabulary, *, order: int, length: int, discount: float | None = None, counts=None, seed: int = 0):
    """The Kneser-Ney n-gram counted on the ids ``counts`` (T,) (``train_run`` passes the training text);
    without them, one of that order whose table ``load_run`` fills from model.pt. ``seed``: unused (counting
    draws nothing)."""
    ids = torch.zeros(1, 1, dtype=torch.long) if counts is None else counts[None]
    return CharNGram.fit_counts(ids, vocabulary, order, discount=discount, length=length)


# name -> (constructor taking x_dim first, or a text data set's Vocabulary, default keyword arguments);
# -o KEY=VALUE overrides them.
MODELS: dict[str, tuple[Callable, dict]] = {
    "independent": (IndependentBernoulli, {}),
    "vae": (VAE, {"z_dim": 50, "hidden": 400}),  # -o architecture=conv for the convolutional one
    "cvae": (ConditionalVAE, {"y_dim": 10, "z_dim": 20, "hidden": 400}),  # needs labels: digits, mnist
    "fvsbn": (FVSBN, {}),
    "nade": (NADE, {"hidden": 500}),
    "made": (MADE, {"hidden_sizes": [500], "num_masks": 1}),
    "pixelcnn": (_pixelcnn, {"channels": 32, "layers": 5, "kernel": 5, "gated": True}),
    # flows: --data digits_grey (0..255, dequantized here); -o num_levels=2 for binary digits
    "realnvp": (RealNVP, {"num_scales": 2, "hidden": 32, "blocks": 1}),
    "glow": (Glow, {"levels": 2, "steps": 4, "hidden": 32, "blocks": 1}),
    "maf": (MAF, {"transforms": 5, "hidden": [512, 512]}),
    # energy-based and implicit: log-likelihood by AIS (rbm) or none (ebm, gan); all get sample quality
    "rbm": (LazyObject("ppgen.models.energy", "RBM"), {"hidden": 500}),
    "ebm": (LazyObject("ppgen.models.energy", "EBM"), {"hidden": [256, 256]}),
    "gan": (LazyObject("ppgen.models.implicit", "GAN"), {"z_dim": 64, "hidden": [256, 256]}),
    # diffusion: --data digits_grey (scaled to [0, 1] here) or digits_colour; the binary one on digits/binarized_mnist
    "diffusion": (LazyObject("ppgen.models.diffusion", "GaussianDiffusion"), {"num_steps": 1000, "channels": 32}),
    "binary-diffusion": (LazyObject("ppgen.models.diffusion", "BinaryDiffusion"),
                         {"num_steps": 1000, "hidden": [512, 512]}),
    # text: --data shakespeare, in rows of the model's length (the Transformer's: its context); char-rnn's LSTM,
    # nanoGPT's shakespeare_char Transformer, and an n-gram counted (not fitted: seconds, --epochs unused)
    "char-lstm": (CharLSTM, {"length": 100, "hidden_size": 512, "num_layers": 3}),
    "char-transformer": (CharTransformer, {"context": 256, "num_layers": 6, "num_heads": 6, "width": 384}),
    "ngram": (_ngram, {"order": 5, "length": 256}),
}
TEXT_MODELS = ("char-lstm", "char-transformer", "ngram")
NO_DENSITY = ("ebm", "gan")  # an unnormalised energy without an estimate of Z, and a sampler


# the FitConfig fields a run folder records in config.json
RECORDED = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "elbo", "num_particles", "patience", "seed",
            "precision")


def build_model(name: str, x_dim, **overrides) -> torch.nn.Module:
    """A model from the registry, with its defaults updated by ``overrides``; ``x_dim`` is what the data
    fix: the values per row, or for a text model the data's Vocabulary."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(MODELS)}")
    make, defaults = MODELS[name]
    try:
        return make(x_dim, **{**defaults, **overrides})
    except TypeError as err:  # an option the constructor does not take: the user's -o, not a bug
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"model {name!r} does not take that option ({err}); its defaults are {defaults}") from None


MAX_SAMPLES = 10_000  # `ppgen sample` draws one grid image; more belongs in a script, in batches


def train_run(model_name: str, data: str, out: Path, *, root=None, options=None, fit_config: FitConfig | None = None
              ) -> dict:
    """Train one model into the run folder ``out`` (checkpoints in ``out/checkpoints``); return its config.
    A text model trains on rows of its length cut from the text; the n-gram is counted on the whole text."""
    fit_config = dataclasses.replace(fit_config or FitConfig(), checkpoint_dir=str(out / "checkpoints"))
    check_out(out)
    text = is_text(model_name, data)
    train = unit_interval(model_name, load_dataset(data, "train", root=root))
    # a .npy file has no splits: validating on its own rows would be training data called "valid"
    valid = unit_interval(model_name, load_dataset(data, "valid", root=root)) if has_splits(data) else None
    if valid is None:
        fit_config = dataclasses.replace(fit_config, patience=None)  # nothing to stop early on
    start = time.perf_counter()
    counts = {"counts": train.ids} if model_name == "ngram" else {}
    model = build_model(model_name, train.vocabulary if text else train.x.shape[1], seed=fit_config.seed,
                        **(options or {}), **counts)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": model_name, "options": options or {}, "data": str(data), "root": str(root) if root else None,
              "x_dim": model.x_dim, **{k: v for k, v in dataclasses.asdict(fit_config).items() if k in RECORDED}}
    if text:
        config["vocabulary"] = train.vocabulary.characters
        train, valid = (Dataset(data.windows(model.x_dim), None) for data in (train, valid))
    if counts:  # counted as it was built: nothing to fit
        config.update(train_seconds=time.perf_counter() - start, device="cpu")
        history = {"counted_characters": len(counts["counts"])}
    else:
        train = prepare_data(model, train, fresh=True)
        valid = valid and prepare_data(model, valid, seed=fit_config.seed)
        result = fit(model, train, fit_config, valid=valid)
        config["train_seconds"] = result.total_seconds  # a resumed run: all its calls
        config["device"] = result.device
        history = {"losses": result.losses, "train_elbo": result.train_elbo, "valid_elbo": result.valid_elbo,
                   "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                   "examples_per_second": result.examples_per_second}
    if not is_main_process():
        return config  # under torchrun every rank trains; rank 0 writes the run folder
    save_atomic(model.state_dict(), out / "model.pt")
    write_json_atomic(config, out / "config.json")
    write_json_atomic(history, out / "history.json")
    return config


def is_text(model_name: str, data) -> bool:
    """Whether a run models text (a text model on a text data set); a text model on images, or an image
    model on text, is refused."""
    text = model_name in TEXT_MODELS
    if text != (str(data) in TEXT_DATASETS):
        hint = f"use --data {' or '.join(TEXT_DATASETS)}" if text else f"its models: {', '.join(TEXT_MODELS)}"
        raise ValueError(f"model {model_name!r} models {'text' if text else 'images'}, but --data {data} is "
                         f"{'not text' if text else 'text'}: {hint}")
    return text


def unit_interval(model_name: str, dataset):
    """A Gaussian diffusion model and a deep EBM take pixels in [0, 1]; digits_grey stores 0..255."""
    if model_name in ("diffusion", "ebm") and dataset.x.max() > 1:
        return dataset._replace(x=dataset.x / 255)
    return dataset


def has_splits(data) -> bool:
    """Whether a data set name has train/valid/test splits (a .npy file has one set of rows)."""
    return not str(data).endswith(".npy")


def is_main_process() -> bool:
    """False on the ranks other than 0 of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


def load_run(run: Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a run folder and its config."""
    config_path, weights = run / "config.json", run / "model.pt"
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{run} is not a finished run folder: {path.name} is missing "
                                    "(train one with `ppgen train MODEL --data NAME --out DIR`)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    text = config.get("model") in TEXT_MODELS
    missing = [key for key in ("model", "options", "data", "root") + ("vocabulary",) * text if key not in config]
    if missing:
        raise ValueError(f"{config_path} lacks {', '.join(map(repr, missing))}: it was not written by `ppgen train`")
    if text:  # a text model is built on the characters it was trained on
        x_dim = Vocabulary(config["vocabulary"])
    else:  # run folders record x_dim; older ones are sized from their data set
        x_dim = config.get("x_dim") or load_dataset(config["data"], "valid", root=config["root"]).x.shape[1]
    model = build_model(config["model"], x_dim, **config["options"])
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises several types for bad files
        raise ValueError(f"{weights} could not be loaded into a {config['model']!r} model: "
                         f"{str(err).splitlines()[0]}") from None
    return model, config


def evaluate_run(run: Path, split="test", num_samples=1000, device="auto", seed=0, quality_samples=500) -> dict:
    """Test metrics of a run, in nats per example (a text model: per row of its length, and bits per
    character), and sample quality for 28x28 digits; also written to ``metrics.json``."""
    model, config = load_run(run)
    text = config["model"] in TEXT_MODELS
    if not has_splits(config["data"]) and split != "train":
        split = "train"  # the only rows there are; metrics.json says so
    raw = unit_interval(config["model"], load_dataset(config["data"], split, root=config["root"]))
    if text:  # the rows the model was trained on, cut from the text
        raw = Dataset(raw.windows(model.x_dim), None)
    metrics = {"log_likelihood": None, "stderr": None, "elbo": None, "bits_per_dim": None, "exact": False,
               "num_samples": 0, "kind": None, "label": None}
    if config["model"] not in NO_DENSITY:
        data = prepare_data(model, raw, seed=seed)
        result = log_likelihood(model, data, num_samples=num_samples, device=device, seed=seed)
        metrics.update(result.to_dict())  # the figures and what they are: kind, errs, label
    if text:
        metrics.update({"bits_per_character": result.bits_per_dim, "characters": raw.x.numel()})
    metrics.update({
        "num_parameters": model.num_parameters,
        "rows": len(raw.x),
        "train_seconds": config.get("train_seconds"),
        "split": split if has_splits(config["data"]) else "train (the data file has no test split)",
    })
    if quality_samples and model.x_dim == 784 and not text:
        # the floor: real rows of another split against the same rows (without splits: the rows after the first n)
        reference = None
        if has_splits(config["data"]):
            other = load_dataset(config["data"], "test" if split == "train" else "train", root=config["root"])
            reference = unit_interval(config["model"], other).x
        metrics["sample_quality"] = sample_quality(model, raw.x, quality_samples, grey=raw.x.max() > 1,
                                                   seed=seed, labels=raw.y, reference=reference)
    write_json_atomic(metrics, run / "metrics.json")
    return metrics


def demo(out: Path, *, epochs=30, num_samples=1000, device="auto", seed=0, progress=True) -> dict:
    """Fit the fully factorised model and a VAE on the embedded digits into run folders under ``out``,
    evaluate them, and draw their comparison (:func:`ppgen.demo.demo_figures`)."""
    metrics, histories, models = {}, {}, {}
    for name, lr in (("independent", 5e-2), ("vae", 1e-3)):
        run = out / name
        train_run(name, "digits", run, fit_config=FitConfig(  # a second demo continues the first one's runs
            epochs=epochs, lr=lr, patience=5, device=device, seed=seed, progress=progress, resume=True))
        metrics[name] = evaluate_run(run, num_samples=num_samples, device=device, seed=seed)
        histories[name] = json.loads((run / "history.json").read_text())
        models[name], _ = load_run(run)
    demo_figures(models, histories, metrics, out, seed=seed)
    write_json_atomic(metrics, out / "metrics.json")
    return metrics


def format_table(metrics: dict) -> str:
    """One row per run; sample quality beside its real-vs-real floor (test rows against train rows) in brackets."""
    rows = ["| model | test log-lik (nats) | ± (MC s.e.) | ELBO | bits/dim | figure | parameters | train s | "
            "FID (real) | KID (real) | P / R (real) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]

    def number(value, spec):
        return "—" if value is None else format(value, spec)

    def quality(q, spec, *keys):
        if not q:
            return "—"
        floor = q.get("real_vs_real") or {}
        shown = " / ".join(format(q[k], spec) for k in keys)
        return shown + (f" ({' / '.join(format(floor[k], spec) for k in keys)})" if floor else "")

    for name, m in metrics.items():
        elbo = f"{m['elbo']:.2f}" if m.get("elbo") is not None else ("=" if m.get("exact") else "—")
        q = m.get("sample_quality") or {}
        rows.append(f"| {name} | {number(m['log_likelihood'], '.2f')} | {number(m['stderr'], '.2f')} | {elbo} | "
                    f"{number(m['bits_per_dim'], '.4f')} | {m.get('label') or '—'} | {m['num_parameters']:,} | "
                    f"{number(m.get('train_seconds'), '.1f')} | {quality(q, '.2f', 'fid')} | "
                    f"{quality(q, '.4f', 'kid')} | {quality(q, '.2f', 'precision', 'recall')} |")
    notes = [f"{name}: {m['bits_per_character']:.4f} bits per character ({m['characters']:,} characters of the "
             f"{m['split']} split)" for name, m in metrics.items() if m.get("bits_per_character") is not None]
    if any((m.get("sample_quality") or {}).get("real_vs_real") for m in metrics.values()):
        notes.append("(real): the same scores for real rows against real rows of another split, as many: the floor")
    return "\n".join(rows + [""] * bool(notes) + notes)


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def restore_run(run: Path, task: str, *, mask: str = "bottom", factor: int = 2, sigma: float = 0.1, rows: int = 8,
                num_samples: int = 8, seed: int = 0, out: Path | None = None) -> tuple[dict, Path]:
    """Measure ``rows`` test images of a run's data set with the task's operator, restore them with the
    run's model (``ppgen.inverse.restore``), and write a before/after grid (PNG) and its numbers (JSON)."""
    if not 1 <= rows <= 64 or not 1 <= num_samples <= 64:
        raise ValueError(f"--rows and -n must be between 1 and 64 (one grid image), got {rows} and {num_samples}")
    out = figure_path(out, run / f"restore_{task}.png")
    model, config = load_run(run)
    shape = image_shape_of(model.x_dim)
    if task == "colourise" and shape[0] != 3:
        raise ValueError(f"colourise needs a model of colour images (3 x H x W rows); {run} models "
                         f"{model.x_dim} grey pixels (train one with --data digits_colour)")
    split = "test" if has_splits(config["data"]) else "train"
    truth = load_dataset(config["data"], split, root=config["root"]).x[:rows]
    if truth.max() > 1:  # 8-bit grey levels (digits_grey): restorations live on [0, 1]
        truth = truth / 255
    operator = make_operator(task, shape, mask=mask, factor=factor, sigma=sigma, seed=seed)
    y = operator(truth, generator=torch.Generator().manual_seed(seed))
    result = restore(model, y, operator, num_samples, seed=seed)
    summary = {"run": str(run), "split": split, **restore_summary(result, truth)}
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_grid(None, result, truth, shape, max_rows=rows, path=out)
    write_json_atomic(summary, out.with_suffix(".json"))
    return summary, out


def sample_text(model, n: int, prompt: str | None = None, *, temperature: float = 1.0, seed: int = 0) -> str:
    """``n`` characters drawn from a text model after ``prompt`` (which leads the text returned)."""
    torch.manual_seed(seed)
    return model.eval().vocabulary.decode(model.sample(1, n, prompt=prompt, temperature=temperature)[0])


def compress_run(run: Path, source: Path, target: Path, *, decompress: bool = False) -> str:
    """Compress the images of the ``.npy`` file ``source`` with a run's model into ``target`` (``.ppz``), or
    decompress ``source`` (``.ppz``) into ``target`` (``.npy``); with a text model, a UTF-8 text file (read and
    written byte for byte). Returns a line comparing bits/dim (bits/char) with the model's bound."""
    import numpy as np

    from ppgen.compression import compress, decompress as decode, model_nll_bits

    model, config = load_run(run)
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if decompress:
        data = source.read_bytes()
        x = decode(model, data)
        if isinstance(x, str):
            target.write_bytes(x.encode("utf-8"))
        else:
            x = x.numpy()
            np.save(target, x)
    else:
        x = as_text(source.read_bytes(), str(source)) if config["model"] in TEXT_MODELS else \
            np.load(source, allow_pickle=False)
        data = compress(model, x)
        target.write_bytes(data)
    if isinstance(x, str):
        what, units, per = f"{len(x):,} characters", len(x), "bits/char"
    else:
        what, units, per = f"{len(x):,} images ({x.size:,} values)", max(x.size, 1), "bits/dim"
    line = (f"{'decompressed' if decompress else 'compressed'} {what} {'from' if decompress else 'into'} "
            f"{len(data):,} bytes: {8 * len(data) / units:.4f} {per}")
    if len(x):
        bits, kind = model_nll_bits(model, x)
        line += f"; model {kind} {bits / units:.4f} {per}"
    return line + f"; wrote {target}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppgen", description="Deep generative models as Pyro programs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, out_default=None):
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
        p.add_argument("--seed", type=int, default=0)
        if out_default is not None:
            p.add_argument("--out", type=Path, default=Path(out_default), help="run folder (default: %(default)s)")

    p = sub.add_parser("demo", help="fit the fully factorised model and a VAE on the embedded digits")
    common(p, "runs/demo")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples for the VAE's log-likelihood")

    p = sub.add_parser("train", help="train a model on a data set into a run folder")
    p.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--data", default="digits", help=f"one of: {', '.join(DATASETS + TEXT_DATASETS)} "
                                                    f"(text: {', '.join(TEXT_MODELS)}) (default: %(default)s)")
    p.add_argument("--root", type=Path, help="folder of the data files (or set PPGEN_DATA)")
    common(p, "runs/train")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="auto",
                   help="auto (L-BFGS for a classical full-batch fit, else Adam), adam (the objective's betas), "
                        "adagrad or lbfgs")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="the optimiser's L2 penalty on the loss of all rows: a N(0, 1/weight_decay) prior on each "
                        "parameter")
    p.add_argument("--elbo", default="auto",
                   help=f"auto (the model's own: exact MLE, enumeration or Trace_ELBO), {', '.join(ESTIMATORS[1:])}")
    p.add_argument("--num-particles", type=int, default=1)
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("-o", "--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="model argument, e.g. -o z_dim=20 -o hidden=[400,400]")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--precision", default="fp32", help="fp32, or bf16 for the networks' matrix products")
    p.add_argument("--log-dir", type=Path, help="write TensorBoard event files there (pip install "
                                                 "'ppgen[tensorboard]'; view: tensorboard --logdir DIR)")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples for the test log-likelihood")
    p.add_argument("--quality-samples", type=int, default=500,
                   help="samples for FID/KID/precision/recall in the digit classifier's features (0: skip)")

    p = sub.add_parser("evaluate", help="test log-likelihood of a run (writes metrics.json)")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples for latent models")
    p.add_argument("--quality-samples", type=int, default=500,
                   help="samples for FID/KID/precision/recall in the digit classifier's features (0: skip)")
    p.add_argument("--report-rows", type=int, default=1000, help="rows for a latent model's ELBO report")
    common(p)

    p = sub.add_parser("sample", help="draw samples from a run's model into a PNG grid (a text model's: printed)")
    p.add_argument("run", type=Path)
    p.add_argument("-n", type=int, help="number of samples (default 64), or of characters for a text model (500)")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="text models: the text to continue (it leads the output)")
    p.add_argument("--temperature", type=float, default=1.0, help="text models: below 1 sharper, above 1 flatter")
    p = sub.add_parser("restore", help="inverse problems: restore measured test images with a run's model "
                                       "into a PNG grid (truth | measurement | samples | mean | variance)")
    p.add_argument("run", type=Path)
    p.add_argument("--task", required=True, choices=RESTORE_TASKS)
    p.add_argument("--mask", default="bottom", choices=MASKS, help="inpaint: which pixels are hidden (default: %(default)s)")
    p.add_argument("--factor", type=int, default=2, help="upsample: the average-pooling factor (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=0.1, help="denoise: noise std on the [0, 1] scale (default: %(default)s)")
    p.add_argument("--rows", type=int, default=8, help="test images to restore (default: %(default)s)")
    p.add_argument("-n", "--num-samples", type=int, default=8, help="restorations per image (default: %(default)s)")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN/restore_TASK.png; its numbers beside it as .json)")
    p.add_argument("--seed", type=int, default=0)

    for name, what, src, dst in (("compress", "losslessly compress a .npy of images (a text file, with a text "
                                              "model) with a run's model", "in.npy|in.txt", "out.ppz"),
                                 ("decompress", "restore the .npy (or text) that `ppgen compress` coded", "in.ppz",
                                  "out.npy|out.txt")):
        p = sub.add_parser(name, help=what)
        p.add_argument("run", type=Path)
        p.add_argument("source", type=Path, metavar=src)
        p.add_argument("target", type=Path, metavar=dst)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # after parsing: --help never imports torch
    from ppgen.inference import DivergenceError, ModelCheckError, NonFiniteLossError

    try:
        if args.command == "demo":
            start = time.perf_counter()
            metrics = demo(args.out, epochs=args.epochs, num_samples=args.num_samples, device=args.device,
                           seed=args.seed, progress=True)
            print(format_table(metrics))
            print(f"\nwrote {args.out}/: metrics.json, elbo_curves.png, samples_*.png, reconstructions_vae.png, "
                  f"and one run folder per model ({time.perf_counter() - start:.0f} s)")
        elif args.command == "train":
            train_run(args.model, args.data, args.out, root=args.root, options=dict(args.option),
                      fit_config=FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                           optimizer=args.optimizer, weight_decay=args.weight_decay,
                                           elbo=args.elbo, num_particles=args.num_particles, patience=args.patience,
                                           device=args.device, seed=args.seed, resume=args.resume,
                                           precision=args.precision, log_dir=args.log_dir))
            if not is_main_process():
                return 0
            metrics = evaluate_run(args.out, split="test", num_samples=args.num_samples, device=args.device,
                                   seed=args.seed, quality_samples=args.quality_samples)
            print(format_table({args.model: metrics}))
            print(f"\nwrote {args.out}/")
        elif args.command == "evaluate":
            metrics = evaluate_run(args.run, split=args.split, num_samples=args.num_samples,
                                   device=args.device, seed=args.seed, quality_samples=args.quality_samples)
            print(format_table({args.run.name: metrics}))
            if metrics.get("method") == "iwae":  # a latent model: where its ELBO goes, and whether to trust it
                model, config = load_run(args.run)
                data = load_dataset(config["data"], args.split, root=config["root"])
                rows = slice(args.report_rows)
                report = elbo_report(model, (data.x[rows], None if data.y is None else data.y[rows]),
                                     iwae_samples=min(args.num_samples, 1000), device=args.device, seed=args.seed)
                print("\n" + format_report(report))
        elif args.command == "sample":
            model, config = load_run(args.run)
            text = config["model"] in TEXT_MODELS
            n = args.n if args.n is not None else 500 if text else 64
            if not 1 <= n <= MAX_SAMPLES:
                raise ValueError(f"-n must be between 1 and {MAX_SAMPLES:,} (one grid image, or text); draw more "
                                 "with model.sample in batches from Python")
            if text:
                print(sample_text(model, n, args.prompt, temperature=args.temperature, seed=args.seed))
            elif args.prompt is not None or args.temperature != 1.0:
                raise ValueError(f"--prompt and --temperature are for text models; {args.run} holds a "
                                 f"{config['model']!r} model of images")
            else:
                out = figure_path(args.out, args.run / "samples.png")
                torch.manual_seed(args.seed)
                out.parent.mkdir(parents=True, exist_ok=True)
                classes = " of the classes in turn" if model.y_dim else ""
                image_grid(draw(model, n), out, title=f"{args.run.name}: {n} samples{classes}")
                print(f"wrote {out}")
        elif args.command == "restore":
            summary, out = restore_run(args.run, args.task, mask=args.mask, factor=args.factor, sigma=args.sigma,
                                       rows=args.rows, num_samples=args.num_samples, seed=args.seed, out=args.out)
            numbers = ", ".join(f"{key} {summary[key]:.4g}" for key in ("mse_mean", "mse_sample", "diversity",
                                                                       "consistency", "ess_median") if key in summary)
            print(f"{summary['operator']}: {summary['method']}; {numbers}")
            print(f"wrote {out} and {out.with_suffix('.json')}")
        elif args.command in ("compress", "decompress"):
            print(compress_run(args.run, args.source, args.target, decompress=args.command == "decompress"))
    except (ValueError, ModelCheckError, FileNotFoundError, IsADirectoryError, NonFiniteLossError,
            DivergenceError) as err:
        # the user's input was refused, with a message that says why; anything else is a bug: a traceback
        print(f"ppgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (continue with the same command and --resume)" if args.command == "train" else ""
        print(f"ppgen {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    return 0
