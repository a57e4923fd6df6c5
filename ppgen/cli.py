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
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ppgen._lazy import LazyObject
from ppgen.checks import non_negative_int, positive_int

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
RealNVP, Glow, MAF, NSF, Flow, prepare_data = (LazyObject("ppgen.models.flows", n)
                                           for n in ("RealNVP", "Glow", "MAF", "NSF", "Flow", "prepare_data"))
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
    # NSF smaller than MAF: at 5 x [512, 512] its 784-wide spline MADEs take 42 s a step on one CPU thread and 20
    # samples (784 inverse passes each) 6 minutes; at 2 x [64, 64], 1.8 s and 100 samples in 50 s
    "nsf": (NSF, {"transforms": 2, "hidden": [64, 64]}),
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

# What `evaluate` and `train` spend by default where the whole test split would take many minutes for the command's
# default model on one CPU thread: the rows the log-likelihood scores (test_rows; default all), its draws per row
# (num_samples: the RBM's AIS chains), its AIS's settings (the RBM's temperatures and RAISE's rows), and the
# samples drawn for sample quality. Measured CPU time, one thread: the RBM's AIS (100 chains) and RAISE (20 rows, 5
# chains each) cost 14 ms a temperature each; the diffusion bound and sampler about 10 s a row (1,000 U-Net passes),
# the binary one's 0.25 s. Every other model scores all rows (with 1,000 importance samples where it has latents)
# and draws 500 samples. --test-rows, --num-samples, --ais-temperatures and --quality-samples override them.
BUDGETS: dict[str, dict] = {
    "rbm": {"num_samples": 100, "ais": {"num_temperatures": 1000, "raise_rows": 20}},
    "diffusion": {"test_rows": 10, "quality_samples": 0},
    # autoregressive samplers, a network pass per pixel: MAF's 200 samples about 70 s, NSF's 100 about 50 s,
    # PixelCNN's 50 about 60 s
    "maf": {"quality_samples": 200},
    "nsf": {"quality_samples": 100},
    "pixelcnn": {"quality_samples": 50},
    "binary-diffusion": {"test_rows": 200, "quality_samples": 200},
    # the text models' test plays: the LSTM's 3,731 rows of 100 characters took 3.8 min, the Transformer's 1,457
    # of 256 about 3 min (wall, the machine loaded 4-5 on 2 cores)
    "char-lstm": {"test_rows": 1000},
    "char-transformer": {"test_rows": 500},
}
# `train` without --epochs: 20 epochs, or 2 minutes where they take longer (one CPU thread: a VAE's 20 epochs take
# 20 s, a RealNVP's 23 min, a PixelCNN's 66 min, a Gaussian diffusion's 80 min, a char-transformer's one epoch 1.7 h)
TRAIN_EPOCHS, TRAIN_MINUTES = 20, 2.0
IMPORTANCE_SAMPLES = 1000  # K per row of IWAE when neither --num-samples nor a budget says otherwise
QUALITY_SAMPLES = 500  # samples for sample quality when neither --quality-samples nor a budget says otherwise


# the FitConfig fields a run folder records in config.json
RECORDED = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "elbo", "num_particles", "patience", "seed",
            "precision", "clip_norm", "ema", "max_minutes")


def build_model(name: str, x_dim, *, seed: int = 0, counts=None, **options) -> torch.nn.Module:
    """A model from the registry, with its defaults updated by the user's ``options`` (checked by
    :func:`check_options`); ``x_dim`` is what the data fix: the values per row, or for a text model the
    data's Vocabulary. ``seed`` (``--seed``) and ``counts`` (the n-gram's training text) are the command's."""
    check_options(name, options)
    make, defaults = MODELS[name]
    return make(x_dim, **{**defaults, **options}, seed=seed, **({} if counts is None else {"counts": counts}))


# the constructors' arguments that the command sets itself, never -o; and where a constructor's **keywords go
SET_BY_COMMAND = {"x_dim": "the data (--data)", "vocabulary": "the data (--data)", "seed": "--seed",
                  "counts": "the training text"}
KEYWORDS_GO_TO = {"pixelcnn": PixelCNN, "diffusion": LazyObject("ppgen.models.diffusion", "UNet")}


def model_options(name: str) -> dict:
    """The options (-o) of a registry model, name -> type hint (``typing.Any`` where there is none): the keyword
    arguments of its constructor and of what its ``**keywords`` build (:data:`KEYWORDS_GO_TO`), but not those
    the command sets (:data:`SET_BY_COMMAND`) nor a positional one without a default (U-Net's shape)."""
    import inspect
    import typing

    options = {}
    for target in (MODELS[name][0], KEYWORDS_GO_TO.get(name)):
        if target is None:
            continue
        target = target.resolve() if isinstance(target, LazyObject) else target
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
        for p in inspect.signature(target).parameters.values():
            if p.name not in SET_BY_COMMAND and (p.kind == p.KEYWORD_ONLY or (
                    p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)):
                options[p.name] = hints.get(p.name, typing.Any)
    return options


def check_options(name: str, options: dict) -> None:
    """Refuse, in one line naming it, an option (-o KEY=VALUE, parsed as JSON) that a model does not take, that
    the command sets itself, or whose value is not of the type the constructor declares; the values' ranges are
    the constructor's to check."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(MODELS)}")
    if not isinstance(options, dict):
        raise ValueError(f"the options of model {name!r} must be a mapping of names to values, got {options!r}")
    known = model_options(name)
    for key, value in options.items():
        if key in SET_BY_COMMAND:
            raise ValueError(f"option {key!r} is set by {SET_BY_COMMAND[key]}, not by -o")
        if key not in known:
            raise ValueError(f"model {name!r} does not take option {key!r}; its options: {', '.join(known)}")
        if not _fits(value, known[key]):
            raise ValueError(f"model {name!r}: option {key} must be {_words(known[key])}, got {value!r}")


def _fits(value, hint) -> bool:
    """Whether a JSON value is of the type ``hint`` (int, float, bool, str, None, their unions, sequences and
    fixed-length tuples; anything for ``typing.Any``; no JSON value is of another class, a Module say)."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, list) and len(value) == len(args) and all(map(_fits, value, args))
    if origin is not None:  # Sequence[X], list[X]
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and hint in (bool, str, type(None)) and isinstance(value, hint)


def _words(hint) -> str:
    """A type hint as :func:`_fits` reads it, in words: ``int | None`` -> "an int or null"."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    plural = {int: "ints", float: "numbers", str: "strings", bool: "booleans"}
    if origin in (typing.Union, types.UnionType):
        return " or ".join(map(_words, args))
    if origin is tuple:
        return f"a list of {len(args)} {plural.get(args[0], 'values')}"
    if origin is not None:
        return f"a list of {plural.get(args[0], 'values')}"
    named = {int: "an int", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return named.get(hint, f"a {getattr(hint, '__name__', hint)} (not settable by -o)")


MAX_SAMPLES = 10_000  # `ppgen sample` draws one grid image; more belongs in a script, in batches


def train_length(epochs: int | None, max_minutes: float | None) -> tuple[int, float | None]:
    """``train``'s --epochs and --max-minutes as given, or by default :data:`TRAIN_EPOCHS` within
    :data:`TRAIN_MINUTES` (an --epochs alone has no time limit)."""
    if epochs is None and max_minutes is None:
        return TRAIN_EPOCHS, TRAIN_MINUTES
    return (TRAIN_EPOCHS if epochs is None else epochs), max_minutes


def train_run(model_name: str, data: str, out: Path, *, root=None, options=None, fit_config: FitConfig | None = None,
              budget: dict | None = None) -> dict:
    """Train one model into the run folder ``out`` (checkpoints in ``out/checkpoints``); return its config.
    A text model trains on rows of its length cut from the text; the n-gram is counted on the whole text.
    ``budget``, the keyword arguments of :func:`evaluation_budget` that its evaluation will take, is
    checked against the model before it trains."""
    fit_config = dataclasses.replace(fit_config or FitConfig(), checkpoint_dir=str(out / "checkpoints"))
    check_out(out)
    text = is_text(model_name, data)
    check_options(model_name, options or {})  # before any data is read
    unit = model_name in UNIT_INTERVAL
    train = load_rows(data, "train", root, unit_interval=unit)
    # a .npy file has no splits: validating on its own rows would be training data called "valid"
    valid = load_rows(data, "valid", root, unit_interval=unit) if has_splits(data) else None
    if valid is None:
        fit_config = dataclasses.replace(fit_config, patience=None)  # nothing to stop early on
    start = time.perf_counter()
    counts = {"counts": train.ids} if model_name == "ngram" else {}
    model = build_model(model_name, train.vocabulary if text else train.x.shape[1], seed=fit_config.seed,
                        **(options or {}), **counts)
    if model.y_dim is not None and train.y is None:
        raise ValueError(f"model {model_name!r} draws rows for labels, but --data {data} has none: use digits, "
                         "digits_grey or mnist")
    check_estimator(model_name, model, fit_config)
    evaluation_budget(model_name, model, **(budget or {}))  # refused now, not after training
    out.mkdir(parents=True, exist_ok=True)
    # the options given, and with them the command's defaults and the arguments whose default has changed (the
    # model's legacy_arguments), so that a later default does not change the run
    known = model_options(model_name)
    arguments = {**{k: v for k, v in MODELS[model_name][1].items() if k in known},
                 **{k: model.init_arguments[k] for k in model.legacy_arguments if k in model.init_arguments},
                 **(options or {})}
    config = {"model": model_name, "options": options or {}, "arguments": arguments,
              "data": str(data), "root": str(root) if root else None,
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
        config["out_of_time"] = result.out_of_time  # stopped at --max-minutes: --resume continues it
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


UNIT_INTERVAL = ("diffusion", "ebm")  # a Gaussian diffusion model and a deep EBM take pixels in [0, 1]


def load_rows(data, split: str, root=None, *, unit_interval: bool = False):
    """A split of a data set as the command takes it: a ``.npy`` file's rows read into memory (evaluation,
    figures and a flow's dequantization take a tensor; only ``ppgen.fit`` streams
    :class:`~ppgen.data.NpyRows`), and with ``unit_interval`` 8-bit pixels (digits_grey's 0..255) divided by 255."""
    dataset = load_dataset(data, split, root=root)
    if hasattr(dataset.x, "check_rows"):  # NpyRows
        dataset = dataset._replace(x=dataset.x[:])
    if unit_interval and dataset.x.max() > 1:
        dataset = dataset._replace(x=dataset.x / 255)
    return dataset


def check_estimator(model_name: str, model, fit_config) -> None:
    """Refuse ``--elbo`` and ``--num-particles`` for a model that trains with an objective of its own (a
    diffusion model's bound, a GAN's game, contrastive divergence) or is counted (the n-gram): its family's
    objective would be replaced by an estimator on its Pyro trace, or the flag ignored."""
    if fit_config.elbo == "auto" and fit_config.num_particles == 1:
        return
    from ppgen.inference import Program

    own = "counting" if model_name == "ngram" else model.default_objective(Program(model))
    if own is not None:
        given = " and ".join(flag for flag, default in ((f"--elbo {fit_config.elbo}", fit_config.elbo == "auto"),
                                                        (f"--num-particles {fit_config.num_particles}",
                                                         fit_config.num_particles == 1)) if not default)
        own = own if isinstance(own, str) else type(own).__name__
        raise ValueError(f"{given}: model {model_name!r} trains by {own}, its own objective, not by an estimator of "
                         "fit's (leave --elbo at auto, --num-particles at 1)")


def has_splits(data) -> bool:
    """Whether a data set name has train/valid/test splits (a .npy file has one set of rows)."""
    return not str(data).endswith(".npy")


def is_main_process() -> bool:
    """False on the ranks other than 0 of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def removed_on_failure(path: Path):
    """Run the body; if it raises, remove the topmost of ``path`` and its parents that did not exist before,
    with all under it: what the failed run created, and nothing else. An interrupt keeps it (its checkpoint
    resumes); so does a resume (its folder existed)."""
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        yield
    except Exception:
        if created is not None and created.exists() and is_main_process():
            shutil.rmtree(created)
        raise


def first_line(err: BaseException) -> str:
    """The first line of an error's message (Pyro appends the trace's shapes to an error raised inside a
    model), or the name of its class where it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_run(run: Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a run folder and its config."""
    config_path, weights = run / "config.json", run / "model.pt"
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{run} is not a finished run folder: {path.name} is missing "
                                    "(train one with `ppgen train MODEL --data NAME --out DIR`)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds {json.dumps(config)[:40]}, not a run's settings: it was not written "
                         "by `ppgen train`")
    text = config.get("model") in TEXT_MODELS
    missing = [key for key in ("model", "options", "data", "root") + ("vocabulary",) * text if key not in config]
    if missing:
        raise ValueError(f"{config_path} lacks {', '.join(map(repr, missing))}: it was not written by `ppgen train`")
    arguments = config.get("arguments", config["options"])  # folders before "arguments": options over the defaults
    # an argument added since the folder was written: the value models built before behaved as
    legacy = getattr(MODELS[config["model"]][0], "legacy_arguments", {}) if config["model"] in MODELS else {}
    arguments = {**legacy, **arguments}
    try:
        check_options(config["model"], config["options"])
        check_options(config["model"], arguments)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    if text:  # a text model is built on the characters it was trained on
        x_dim = Vocabulary(config["vocabulary"])
    else:  # run folders record x_dim; older ones are sized from their data set
        x_dim = config.get("x_dim") or load_dataset(config["data"], "valid", root=config["root"]).x.shape[1]
    model = build_model(config["model"], x_dim, **arguments)
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises several types for bad files
        why = "the file is empty" if weights.stat().st_size == 0 else first_line(err)
        raise ValueError(f"{weights} could not be loaded into a {config['model']!r} model: {why}") from None
    return model, config


def evaluation_budget(model_name: str, model, *, test_rows: int | None = None, num_samples: int | None = None,
                      ais_temperatures: int | None = None, quality_samples: int | None = None) -> dict:
    """What a run's evaluation spends: the rows its log-likelihood scores (``test_rows``, None: all), its
    draws per row (``num_samples``), its estimator's ``options`` (AIS's, where the model is scored by AIS)
    and the samples for sample quality (``quality_samples``); those given, else the model's :data:`BUDGETS`.
    ``ais_temperatures`` is refused for a model the command does not score by AIS."""
    budget = BUDGETS.get(model_name, {})
    by_ais = model_name not in NO_DENSITY and not model.has_exact_likelihood and model.likelihood_method == "ais"
    options = dict(budget.get("ais", {})) if by_ais else {}  # an RBM small enough to be exact takes none
    if ais_temperatures is not None:
        if not by_ais:
            how = ("gets no log-likelihood here" if model_name in NO_DENSITY else "is scored exactly"
                   if model.has_exact_likelihood else
                   f"is scored by {'its ELBO' if model.likelihood_method == 'elbo' else 'IWAE'}")
            raise ValueError(f"--ais-temperatures is for a model scored by AIS (an rbm whose log Z is not "
                             f"enumerable); this {model_name!r} model {how}")
        options["num_temperatures"] = ais_temperatures
    given = {"test_rows": test_rows, "num_samples": num_samples, "quality_samples": quality_samples}
    defaults = {"test_rows": None, "num_samples": IMPORTANCE_SAMPLES, "quality_samples": QUALITY_SAMPLES}
    return {name: budget.get(name, default) if given[name] is None else given[name]
            for name, default in defaults.items()} | {"options": options}


def evaluate_run(run: Path, split="test", num_samples=None, device="auto", seed=0, quality_samples=None, *,
                 test_rows=None, ais_temperatures=None, progress=False) -> dict:
    """Test metrics of a run, in nats per example (a text model: per row of its length, and bits per
    character), and sample quality for 28x28 digits; also written to ``metrics.json``. The log-likelihood
    scores the first ``test_rows`` rows with ``num_samples`` draws per row, and ``quality_samples`` are
    drawn (by default the model's :data:`BUDGETS`: :func:`evaluation_budget`); the log-likelihood prints
    its ``progress`` to standard error."""
    model, config = load_run(run)
    budget = evaluation_budget(config["model"], model, test_rows=test_rows, num_samples=num_samples,
                               ais_temperatures=ais_temperatures, quality_samples=quality_samples)
    test_rows, quality_samples, options = budget["test_rows"], budget["quality_samples"], budget["options"]
    text = config["model"] in TEXT_MODELS
    if not has_splits(config["data"]) and split != "train":
        split = "train"  # the only rows there are; metrics.json says so
    raw = load_rows(config["data"], split, config["root"], unit_interval=config["model"] in UNIT_INTERVAL)
    if text:  # the rows the model was trained on, cut from the text
        raw = Dataset(raw.windows(model.x_dim), None)
    metrics = {"log_likelihood": None, "stderr": None, "elbo": None, "bits_per_dim": None, "exact": False,
               "num_samples": 0, "kind": None, "label": None}
    scored = raw if test_rows is None else raw._replace(x=raw.x[:test_rows],
                                                        y=None if raw.y is None else raw.y[:test_rows])
    if config["model"] not in NO_DENSITY:
        data = prepare_data(model, scored, seed=seed)
        result = log_likelihood(model, data, num_samples=budget["num_samples"], device=device, seed=seed,
                                progress=progress, **options)
        metrics.update(result.to_dict())  # the figures and what they are: kind, errs, label
        metrics["likelihood_options"] = options  # the estimator's settings beyond num_samples (AIS temperatures)
    if text:
        metrics.update({"bits_per_character": result.bits_per_dim, "characters": scored.x.numel()})
    metrics.update({
        "num_parameters": model.num_parameters,
        "rows": len(raw.x),
        "train_seconds": config.get("train_seconds"),
        "split": split if has_splits(config["data"]) else "train (the data file has no test split)",
    })
    if quality_samples and model.x_dim == 784 and not text:
        # the floor: real rows of another split against the same rows (without splits: rows of this one not drawn)
        reference = None
        if has_splits(config["data"]):
            reference = load_rows(config["data"], "test" if split == "train" else "train", config["root"],
                                  unit_interval=config["model"] in UNIT_INTERVAL).x
        metrics["sample_quality"] = sample_quality(model, raw.x, quality_samples, grey=raw.x.max() > 1,
                                                   seed=seed, labels=raw.y, reference=reference, progress=progress)
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
        metrics[name] = evaluate_run(run, num_samples=num_samples, device=device, seed=seed, progress=progress)
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

    def figure(m):  # what the figure is, its AIS temperatures, and its rows when not the whole split
        temperatures = (m.get("likelihood_options") or {}).get("num_temperatures")
        scored, split = m.get("num_examples"), m.get("rows")
        return ((m.get("label") or "—") + (f", {temperatures:,} temperatures" if temperatures else "")
                + (f", on {scored:,} of {split:,} rows" if scored and split and scored < split else ""))

    for name, m in metrics.items():
        elbo = f"{m['elbo']:.2f}" if m.get("elbo") is not None else ("=" if m.get("exact") else "—")
        q = m.get("sample_quality") or {}
        rows.append(f"| {name} | {number(m['log_likelihood'], '.2f')} | {number(m['stderr'], '.2f')} | {elbo} | "
                    f"{number(m['bits_per_dim'], '.4f')} | {figure(m)} | {m['num_parameters']:,} | "
                    f"{number(m.get('train_seconds'), '.1f')} | {quality(q, '.2f', 'fid')} | "
                    f"{quality(q, '.4f', 'kid')} | {quality(q, '.2f', 'precision', 'recall')} |")
    notes = [f"{name}: {m['bits_per_character']:.4f} bits per character ({m['characters']:,} characters of the "
             f"{m['split']} split)" for name, m in metrics.items() if m.get("bits_per_character") is not None]
    if any((m.get("sample_quality") or {}).get("real_vs_real") for m in metrics.values()):
        notes.append("(real): the same scores for real rows against real rows of another split, as many: the floor")
    return "\n".join(rows + [""] * bool(notes) + notes)


def budget_arguments(args: argparse.Namespace) -> dict:
    """``--test-rows``, ``--num-samples``, ``--ais-temperatures`` and ``--quality-samples`` as the keyword
    arguments of :func:`evaluation_budget` (None where not given); a ValueError naming the option for
    anything but a positive int (a non-negative one for ``--quality-samples``)."""
    counts = {}
    for name in ("test_rows", "num_samples", "ais_temperatures", "quality_samples"):
        value = getattr(args, name)
        with contextlib.suppress(TypeError, ValueError):
            value = int(value)
        check = non_negative_int if name == "quality_samples" else positive_int  # 0 samples: no sample quality
        counts[name] = None if value is None else check(value, "--" + name.replace("_", "-"))
    return counts


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
    truth = load_rows(config["data"], split, config["root"], unit_interval=True).x[:rows]  # restorations: [0, 1]
    operator = make_operator(task, shape, mask=mask, factor=factor, sigma=sigma, seed=seed)
    y = operator(truth, generator=torch.Generator().manual_seed(seed))
    result = restore(model, y, operator, num_samples, seed=seed)
    summary = {"run": str(run), "split": split, **restore_summary(result, truth)}
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_grid(None, result, truth, shape, max_rows=rows, path=out)
    write_json_atomic(summary, out.with_suffix(".json"))
    return summary, out


def sample_grid(run: Path, model, n: int, out: Path | None = None, *, temperature: float = 1.0, seed: int = 0
                ) -> Path:
    """Draw ``n`` samples of a run's image model into a PNG grid (``out``, default ``RUN/samples.png``) of its
    rows' image shape (square, grey or colour: :func:`ppgen.checks.image_shape_of`; other rows are refused), a
    flow's pixels on [0, num_levels] shown on [0, 1]; ``temperature`` for a model whose ``sample`` takes one (the
    flows: z ~ N(0, T^2 I)). Returns the path written."""
    import inspect

    try:
        shape = image_shape_of(model.x_dim)
    except ValueError:
        raise ValueError(f"{run} models rows of {model.x_dim} values, which are not square grey or colour images: no "
                         "grid to draw (draw them with model.sample from Python)") from None
    tempered = "temperature" in inspect.signature(model.sample).parameters
    if temperature != 1.0 and not tempered:
        raise ValueError(f"--temperature is for models whose sample takes one (flows and text models); "
                         f"{type(model).__name__}.sample takes none")
    out = figure_path(out, run / "samples.png")
    torch.manual_seed(seed)
    x = model.sample(n, temperature=temperature) if tempered else draw(model, n)
    if isinstance(model, Flow.resolve()) and model.num_levels is not None:
        x = x / model.num_levels
    notes = " of the classes in turn" * (model.y_dim is not None) + f" at temperature {temperature:g}" * tempered
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(x, out, shape=shape, title=f"{run.name}: {n} samples{notes}")
    return out


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
    from ppgen.compression.text import ESCAPE_BITS, text_ids

    model, config = load_run(run)
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder: give the path of the file to write "
                                f"({'out.npy or out.txt' if decompress else 'out.ppz'})")
    if decompress:
        data = source.read_bytes()
        x = decode(model, data)
        if isinstance(x, str):
            target.write_bytes(x.encode("utf-8"))
        else:
            x = x.numpy()
            with open(target, "wb") as file:  # at that path: np.save(path) would append .npy
                np.save(file, x)
    else:
        if config["model"] in TEXT_MODELS:
            x = as_text(source.read_bytes(), str(source))
        else:
            try:
                x = np.load(source, allow_pickle=False)
            except (ValueError, EOFError) as err:  # pickles are refused; what else is not a .npy fails to parse
                raise ValueError(f"{source} is not a .npy array of images: {first_line(err)}") from None
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
    if isinstance(x, str) and (unknown := len(text_ids(model, x)[2])):  # the code points coded after the rows
        line += (f" ({unknown:,} character(s) outside its vocabulary, coded by code point at "
                 f"{ESCAPE_BITS:.1f} bits each)")
    return line + f"; wrote {target}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppgen", description="Deep generative models as Pyro programs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def budget(p):  # the evaluation's: read as text, checked by budget_arguments (one line per mistake)
        def defaults(key):
            return "; ".join(f"{name}: {b[key]:,}" for name, b in BUDGETS.items() if key in b)

        p.add_argument("--test-rows", metavar="N",
                       help=f"score the first N rows of the split (default: all; {defaults('test_rows')})")
        p.add_argument("--num-samples", metavar="K", help=f"draws per row: importance samples of a latent model "
                                                          f"(default {IMPORTANCE_SAMPLES:,}), AIS chains of an rbm "
                                                          f"({BUDGETS['rbm']['num_samples']})")
        p.add_argument("--ais-temperatures", metavar="K",
                       help=f"AIS temperatures of an rbm whose log Z is not enumerable (default "
                            f"{BUDGETS['rbm']['ais']['num_temperatures']:,}; Salakhutdinov & Murray used "
                            "14,500: fewer err higher)")
        p.add_argument("--quality-samples", metavar="N",
                       help=f"samples for FID/KID/precision/recall in the digit classifier's features, 0: skip "
                            f"(default {QUALITY_SAMPLES}; {defaults('quality_samples')})")

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
    p.add_argument("--epochs", type=int, help=f"passes over the data (default {TRAIN_EPOCHS}, within --max-minutes)")
    p.add_argument("--max-minutes", type=float,
                   help=f"stop training after about this many minutes, checkpointed (--resume continues); default "
                        f"{TRAIN_MINUTES:g} when --epochs is not given, else no limit")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="checkpoint this often within an epoch too, so that a run stopped without warning (a "
                        "machine taken back) loses at most these minutes; --resume continues (default %(default)s)")
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
    p.add_argument("--clip-norm", type=float, help="scale each gradient down to this L2 norm per row (of the "
                                                   "loss averaged over the rows) where longer (language models: 1.0)")
    p.add_argument("--ema", type=float, help="keep a moving average of the parameters with this decay (0.999), "
                                             "validated and saved as the model (Polyak averaging)")
    p.add_argument("-o", "--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="model argument, e.g. -o z_dim=20 -o hidden=[400,400]")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--precision", default="fp32", help="fp32, or bf16 for the networks' matrix products")
    p.add_argument("--log-dir", type=Path, help="write TensorBoard event files there (pip install "
                                                 "'ppgen[tensorboard]'; view: tensorboard --logdir DIR)")
    budget(p)

    p = sub.add_parser("evaluate", help="test log-likelihood of a run (writes metrics.json)")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    budget(p)
    p.add_argument("--report-rows", type=int, default=1000, help="rows for a latent model's ELBO report")
    common(p)

    p = sub.add_parser("sample", help="draw samples from a run's model into a PNG grid (a text model's: printed)")
    p.add_argument("run", type=Path)
    p.add_argument("-n", type=int, help="number of samples (default 64), or of characters for a text model (500)")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="text models: the text to continue (it leads the output)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="flows and text models: below 1 sharper, above 1 more diverse")
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


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command shows it: its kind and its message, no file path or source line (which
    would point into ppgen, not at anything the user wrote)."""
    return f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.formatwarning = _plain_warning
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
            budget = budget_arguments(args)
            with removed_on_failure(args.out / "checkpoints"):
                epochs, max_minutes = train_length(args.epochs, args.max_minutes)
                fit_config = FitConfig(epochs=epochs, max_minutes=max_minutes, batch_size=args.batch_size, lr=args.lr,
                                       checkpoint_minutes=args.checkpoint_minutes, optimizer=args.optimizer,
                                       weight_decay=args.weight_decay, elbo=args.elbo,
                                       num_particles=args.num_particles, patience=args.patience, device=args.device,
                                       seed=args.seed, resume=args.resume, precision=args.precision,
                                       log_dir=args.log_dir, clip_norm=args.clip_norm, ema=args.ema)
                config = train_run(args.model, args.data, args.out, root=args.root, options=dict(args.option),
                                   budget=budget, fit_config=fit_config)
            if not is_main_process():
                return 0
            if config.get("out_of_time"):
                again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
                print(f"training stopped at --max-minutes {max_minutes:g} and is scored below as it stands; "
                      f"continue it with: ppgen {' '.join(map(shlex.quote, again))} --resume", file=sys.stderr)
            metrics = evaluate_run(args.out, split="test", device=args.device, seed=args.seed, progress=True,
                                   **budget)
            print(format_table({args.model: metrics}))
            print(f"\nwrote {args.out}/")
        elif args.command == "evaluate":
            positive_int(args.report_rows, "--report-rows")
            budget = budget_arguments(args)
            metrics = evaluate_run(args.run, split=args.split, device=args.device, seed=args.seed, progress=True,
                                   **budget)
            print(format_table({args.run.name: metrics}))
            if metrics.get("method") == "iwae":  # a latent model: where its ELBO goes, and whether to trust it
                model, config = load_run(args.run)
                data = load_rows(config["data"], args.split, config["root"])
                rows = slice(args.report_rows)
                report = elbo_report(model, (data.x[rows], None if data.y is None else data.y[rows]),
                                     iwae_samples=min(budget["num_samples"] or IMPORTANCE_SAMPLES, 1000),
                                     device=args.device, seed=args.seed)
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
            elif args.prompt is not None:
                raise ValueError(f"--prompt is for text models; {args.run} holds a {config['model']!r} model of "
                                 "images")
            else:
                out = sample_grid(args.run, model, n, args.out, temperature=args.temperature, seed=args.seed)
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
        print(f"ppgen {args.command}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (continue with the same command and --resume)" if args.command == "train" else ""
        print(f"ppgen {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    return 0
