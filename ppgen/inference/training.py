"""What a fit run is configured with, records and returns.

:class:`FitConfig` (the settings, validated), :class:`TrainState` (counters and history, changed
only by its two commit methods), :class:`FitResult`, :class:`EarlyStopping`,
:func:`convergence_message`, and the errors and warning ``fit`` raises. The loop itself is
:class:`ppgen.inference.fit.Trainer`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Callable

import torch

from ppgen.inference.distributed import STRATEGIES
from ppgen.inference.objectives import PRECISIONS
from ppgen.inference.program import ESTIMATORS, ModelCheck
from ppgen.inference.watch import check_log_dir

GRADIENT_OPTIMIZERS = ("adam", "adagrad")  # first-order: any objective, minibatches
OPTIMIZERS = ("auto", *GRADIENT_OPTIMIZERS, "lbfgs")

__all__ = ["FitConfig", "FitResult", "TrainState", "EarlyStopping", "ConvergenceWarning", "NonFiniteLossError",
           "DivergenceError", "convergence_message"]


class DivergenceError(FloatingPointError):
    """Training diverged: the loss grew by orders of magnitude over its first value, or to several
    times the uniform model's, or became non-finite (:class:`NonFiniteLossError`), or the samples of a
    model trained without a loss to judge by (a game, contrastive divergence) became non-finite or
    collapsed to one row (see :class:`FitConfig`'s ``divergence_factor``)."""


class NonFiniteLossError(DivergenceError):
    """The loss or a gradient became NaN or infinite; ``step`` and ``site`` say where."""

    def __init__(self, message: str, step: int, site: str | None):
        super().__init__(message)
        self.step = step
        self.site = site


class ConvergenceWarning(UserWarning):
    """``fit`` ended away from an answer: its objective was still improving faster than the tolerance,
    its parameters were far from a stationary point (:mod:`ppgen.inference.stationarity`), or it
    scores worse than the uniform distribution over the data's levels."""


def _positive_int(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {'a positive int' if minimum == 1 else f'an int >= {minimum}'}, "
                         f"got {value!r}")


def _finite_number(value, name: str, *, zero_allowed: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
        raise ValueError(f"{name} must be a {'non-negative' if zero_allowed else 'positive'} number, got {value!r}")


@dataclasses.dataclass
class FitConfig:
    """How :func:`fit` trains. Every field is also a keyword of :func:`fit`; the CLI builds one.

    Attributes
    ----------
    epochs, batch_size, lr
        Passes over the data, rows per minibatch (a batch of all rows keeps their order, as
        local guides need), the optimiser's learning rate (Adam's and Adagrad's; L-BFGS takes
        the quasi-Newton step, lr 1, scaled by its line search).
    optimizer : {"auto", "adam", "adagrad", "lbfgs"}
        ``torch.optim.Adam`` with the objective's betas (0.9, 0.999; a GAN's are (0.5, 0.9)),
        ``torch.optim.Adagrad``, which Germain et al. trained MADE with (their lr: 0.01), or
        ``torch.optim.LBFGS`` with a strong-Wolfe line search (up to 20 iterations per epoch), for a
        deterministic objective (``"mle"``, or ``"enum"`` with every latent enumerated) over a full
        batch, in one process. ``"auto"`` (the default) picks L-BFGS, as scikit-learn's solvers do,
        for a *classical* fit with a deterministic objective: a model whose exact ``log_prob`` is the
        marginal likelihood over latents its guide samples or the story enumerates (PPCA, factor
        analysis, the mixtures), fitted by one process on a full batch (``batch_size`` >= the rows)
        of an in-memory tensor with rows x parameters <= 10^8; Adam for everything else (every
        minibatch fit included).
    weight_decay : float
        The optimiser's L2 penalty (``weight_decay=`` of torch's optimisers), 0 by default, on every
        parameter (the guide's too). The losses are for the whole data set, so for an exact model
        ``weight_decay`` = λ is MAP estimation under a N(0, 1/λ) prior on each parameter. A
        per-example loss's decay d is λ = N d (pytorch-made's 1e-4 for MADE on 50,000 binarized
        MNIST rows is λ = 5).
    elbo : {"auto", "trace", "meanfield", "enum", "graph", "iwae", "mle"}
        The estimator. ``"auto"``: ``"enum"`` when the model marks sites for enumeration,
        ``"mle"`` (exact maximum likelihood through ``log_prob``, no sampling) for an exact
        model without guide latents and for a classical fit (see ``optimizer``) of an exact model
        with guide latents (PPCA, factor analysis: the marginal likelihood maximised directly, after
        which the guide is set to the exact posterior where the model has one,
        ``set_guide_to_exact_posterior``), else ``"trace"`` (``Trace_ELBO``).
    num_particles : int
        Samples per example, vectorised (the K of ``"iwae"``).
    device : "auto", "cpu", "cuda", "cuda:N"
        ``"auto"`` takes CUDA when available. The model is moved there, and stays.
    seed : int
        Seeds the sampling and the data order: same seed, same result on the same device.
    patience : int, optional
        With validation rows, stop after this many epochs without a better validation score and
        restore the parameters of the best epoch. A Monte Carlo score (an ELBO, a bound) can
        hold its record by luck: before that record stops the run, or is restored after the
        last epoch, the parameters now and the best epoch's are scored again on 8 paired fresh
        seeds, and if the former are better beyond the draws' noise (2 standard errors) they
        become the best and training goes on; within the noise, the fresh scores pick which are
        kept, and a stop that was no decline either gets the end-of-fit checks (and their
        warning) a run without a stop gets.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there after every epoch (atomically), when interrupted, and when
        the loss becomes non-finite.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` when there is one, else start a new
        run there (so a requeued job runs the same command every time).
    progress : bool
        Show a progress bar (only when stderr is a terminal; rank 0 only).
    strategy : {"auto", "single", "ddp"}
        Data-parallel training under ``torchrun`` (see :mod:`ppgen.inference.distributed`).
    num_workers : int
        DataLoader worker processes that prefetch minibatches of a streamed row source.
    precision : {"fp32", "bf16"}
        ``"bf16"`` runs the networks under bfloat16 autocast; densities and losses stay float32.
    convergence_tol : float or None
        Warn (:class:`ConvergenceWarning`) when the training objective still improved by more
        than this fraction per epoch over the last epochs, or when one preconditioned gradient
        step from the returned parameters still raises it by more than this fraction
        (:func:`~ppgen.inference.stationarity.stationarity`, which scores chunks of rows scaled to
        the full data: not run for a story without a data plate or one that subsamples its rows
        itself), or when a guide of global latents only is far from the posterior its importance
        weights give (:func:`~ppgen.inference.posterior.guide_gap`) or, where they cannot say, a
        Gaussian autoguide far from its optimality conditions
        (:func:`~ppgen.inference.posterior.newton_gap`); None turns these checks off.
        (Scoring worse than the uniform distribution warns whatever this is.)
    divergence_factor : float or None
        Stop with :class:`DivergenceError` when the loss per example grows past this many times
        its first value (at least 1 nat), checked every step; and at the end of every epoch, before it
        is committed, when a likelihood or bound of discrete data ends the epoch worse than
        ``UNIFORM_FACTOR`` (3) times both its first value and the uniform model's loss, or when an
        objective with no loss to judge by (``monotone`` False: a GAN's game, contrastive divergence)
        leaves a model of real-valued data whose samples (64, seeded, drawn aside from training's
        random state) are non-finite or all one row while the data's rows differ. None turns every
        check off. (A non-finite loss or gradient stops the run whatever this is:
        :class:`NonFiniteLossError`, a :class:`DivergenceError`.)
    max_minutes : float, optional
        Stop this call after about this many minutes of wall time, at the first step boundary
        past it (with several processes, at the first epoch's end past it), checkpointing there
        when there is a ``checkpoint_dir``; the result says so (``FitResult.out_of_time``) and
        so does a :class:`ConvergenceWarning`. ``resume=True`` continues exactly where it stopped.
    checkpoint_minutes : float, optional
        With a ``checkpoint_dir``, also checkpoint after the first step past this many minutes since
        the last checkpoint, not only at the end of each epoch: a run whose epochs take an hour then
        loses at most these minutes to a stop that leaves no time to write one (a machine taken back,
        SIGKILL). ``resume=True`` continues from it exactly. One process only (with several, the epochs'
        ends are the resume points).
    clip_norm : float, optional
        Scale each parameter group's gradient down where it is longer than this L2 norm per row,
        that is, the gradient of the loss averaged over the rows (the data set's loss divided by
        its N rows), as recurrent networks and Transformers are trained on a mean loss (nanoGPT
        clips at 1.0). The TensorBoard log records the norm of the data set's loss before
        clipping. Not with L-BFGS, whose line search sets its own steps.
    ema : float, optional
        Keep an exponential moving average of the parameters (Polyak averaging; Polyak & Juditsky
        1992), a <- d a + (1 - d) theta after step t of the run, starting at the initial parameters,
        with d = min(ema, (1 + t) / (10 + t)): the decay warms up, as diffusers' and timm's averages
        do, so that the early averages do not hold the initial parameters (0.999 is reached after
        about 9,000 steps; until then the average spans about t / 9 steps). Validation scores the
        averages, and the model leaves ``fit`` holding them (with ``patience``, those of the best
        epoch), as flows and diffusion models are evaluated (0.999 or 0.9999 is usual). The
        checkpoint keeps both, so ``resume=True`` trains on from the trained parameters; a
        checkpoint written without averages starts them at its parameters. Not with L-BFGS.
    log_dir : path, optional
        Write TensorBoard event files there (needs the ``tensorboard`` package: ``pip install
        'ppgen[tensorboard]'``): per step the loss and each parameter group's gradient norm, per
        epoch the training and validation figures and the learning rates, and every few epochs a
        grid of samples from a model of images (:mod:`ppgen.inference.watch`). A resumed run
        continues the same log. ``tensorboard --logdir DIR`` shows it.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "auto"
    weight_decay: float = 0.0
    elbo: str = "auto"
    num_particles: int = 1
    device: Any = "auto"
    seed: int = 0
    patience: int | None = None
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    progress: bool = True
    strategy: str = "auto"
    num_workers: int = 0
    precision: str = "fp32"
    convergence_tol: float | None = 1e-3
    divergence_factor: float | None = 1e3
    max_minutes: float | None = None
    checkpoint_minutes: float | None = None
    clip_norm: float | None = None
    ema: float | None = None
    log_dir: str | Path | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "num_particles"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.num_workers, "num_workers", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _finite_number(self.lr, "lr", zero_allowed=False)
        _finite_number(self.weight_decay, "weight_decay", zero_allowed=True)
        if self.patience is not None:
            _positive_int(self.patience, "patience")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {GRADIENT_OPTIMIZERS}, got {self.optimizer!r} (or 'lbfgs', "
                             "quasi-Newton on a full batch, or 'auto', the default: L-BFGS for a classical "
                             "full-batch fit, else Adam)")
        if self.elbo not in ESTIMATORS:
            raise ValueError(f"elbo must be one of {ESTIMATORS}, got {self.elbo!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("convergence_tol", "divergence_factor", "clip_norm", "max_minutes", "checkpoint_minutes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0 < self.ema < 1):
            raise ValueError(f"ema must be a decay between 0 and 1 (0.999 is usual) or None, got {self.ema!r}")
        if self.ema is not None and self.optimizer == "lbfgs":
            raise ValueError("ema averages the steps of a stochastic optimiser; L-BFGS converges to its point "
                             "(use optimizer='adam' with ema, or ema=None)")
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.log_dir is not None and not isinstance(self.log_dir, (str, Path)):
            raise ValueError(f"log_dir must be a folder path (str or Path) or None, got {self.log_dir!r}")
        check_log_dir(self.log_dir)


@dataclasses.dataclass(repr=False)
class FitResult:
    """What :func:`fit` did. Objective figures are in nats per example (higher is better).

    Attributes
    ----------
    model, guide
        The trained model and guide (the guide is the autoguide ``fit`` built, if any).
    losses : list of float
        The loss of every step, per example of the full data set (the negative ELBO, or the
        exact negative log-likelihood for ``elbo="mle"``).
    train_elbo, valid_elbo : list of float
        Per epoch: the mean training objective over the epoch's steps, and the validation
        objective (empty without ``valid``). For ``"mle"`` both are exact log-likelihoods.
    epochs, steps : int
        Epochs and optimisation steps completed in total (across resumes).
    seconds, examples_per_second : float
        Wall time of this call and training throughput (rows per second of step time).
    total_seconds : float
        Wall time of the whole run: every call that trained it (resumes and interrupted calls
        included) up to its last recorded step; a checkpoint older than this figure counts from
        the resume.
    stopped_early : bool
    best_epoch : int or None
        Epoch (1-based) of the best validation objective, whose parameters the model holds
        when early stopping was on (for a Monte Carlo score, the last epoch instead where it
        scored as well on fresh validation passes: ``patience`` in :class:`FitConfig`).
    device : str
    estimator : str
        The estimator that ran (``"auto"`` resolved), or the custom objective's class name.
    optimizer : str
        The optimiser that ran (``"auto"`` resolved).
    check : ModelCheck
        What :meth:`Program.validate` found on the first batch.
    resumed_from_step : int or None
        The step a resumed run continued from (None for a new run).
    out_of_time : bool
        Whether this call stopped at ``max_minutes`` before its epochs were done.
    unit : str
        What ``train_elbo`` and ``valid_elbo`` are: ``"nats/example"`` for a likelihood or a bound, or
        the objective's name for one that is neither (contrastive divergence, a GAN's game).
    row_bound_guide : tuple of str
        The guide's latents with a parameter per row position (an autoguide's local latents), which
        tie the guide to the rows it was fitted on; empty for an amortised guide.
    fitted_rows : str or None
        With ``row_bound_guide``, a digest of those rows: the posterior tools refuse other data.
    """

    model: Any
    guide: Any
    losses: list[float]
    train_elbo: list[float]
    valid_elbo: list[float]
    epochs: int
    steps: int
    seconds: float
    examples_per_second: float
    total_seconds: float
    stopped_early: bool
    best_epoch: int | None
    device: str
    estimator: str = "trace"
    check: ModelCheck | None = None
    resumed_from_step: int | None = None
    optimizer: str = "adam"
    out_of_time: bool = False
    unit: str = "nats/example"
    row_bound_guide: tuple[str, ...] = ()
    fitted_rows: str | None = None

    def __repr__(self) -> str:
        valid = f", valid {self.valid_elbo[-1]:.3f}" if self.valid_elbo else ""
        train = f"train {self.train_elbo[-1]:.3f}" if self.train_elbo else "no epoch"
        name = type(self.model).__name__ if isinstance(self.model, torch.nn.Module) else \
            getattr(self.model, "__name__", "model")
        return (f"FitResult({name}, {self.estimator}, {self.optimizer}, "
                f"{self.epochs} epochs / {self.steps} steps, {train}{valid} {self.unit}, "
                f"best epoch {self.best_epoch}, {self.seconds:.1f} s on {self.device}"
                f"{', out of time' if self.out_of_time else ''})")

    def to_dict(self) -> dict:
        """The figures as plain numbers and lists (for ``json.dumps``): per-epoch objectives in ``unit``;
        the per-step ``losses`` stay an attribute (``final_loss`` is the last)."""
        return {"model": repr(self).split("(", 1)[1].split(",", 1)[0], "estimator": self.estimator,
                "optimizer": self.optimizer, "epochs": self.epochs, "steps": self.steps,
                "train_elbo": list(self.train_elbo), "valid_elbo": list(self.valid_elbo), "unit": self.unit,
                "final_loss": self.losses[-1] if self.losses else None, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "out_of_time": self.out_of_time, "seconds": self.seconds,
                "total_seconds": self.total_seconds, "examples_per_second": self.examples_per_second,
                "device": self.device, "resumed_from_step": self.resumed_from_step,
                "check": self.check.to_dict() if self.check is not None else None}


@dataclasses.dataclass
class TrainState:
    """The trainer's counters and history: everything a checkpoint needs besides tensors.

    :meth:`~ppgen.inference.fit.Trainer.init` returns it and
    :meth:`~ppgen.inference.fit.Trainer.update` records each step in it. It changes only through
    :meth:`commit_step` and :meth:`commit_epoch`, each of which also records the random-number
    state to resume from, so an interrupt anywhere else leaves it consistent with the parameters.
    """

    epoch: int = 0          # epochs completed
    batch: int = 0          # batches completed in the current epoch
    step: int = 0           # steps completed in total
    losses: list[float] = dataclasses.field(default_factory=list)
    epoch_losses: list[float] = dataclasses.field(default_factory=list)
    train_elbo: list[float] = dataclasses.field(default_factory=list)
    valid_elbo: list[float] = dataclasses.field(default_factory=list)
    best_elbo: float | None = None
    best_epoch: int | None = None
    best_state: dict | None = None
    stopped_early: bool = False
    seconds: float = 0.0    # training wall time of every call so far, at the last commit
    rng: torch.Tensor | None = dataclasses.field(default=None, repr=False)  # to resume from (not in to_dict)

    def commit_step(self, loss_per_example: float, batches_done: int, seconds: float | None = None) -> None:
        self.seconds = self.seconds if seconds is None else seconds
        self.losses.append(loss_per_example)
        self.epoch_losses.append(loss_per_example)
        self.step, self.batch, self.rng = self.step + 1, batches_done, torch.get_rng_state()

    def commit_epoch(self, train: float, valid: float | None, best: dict, seconds: float | None = None) -> None:
        self.seconds = self.seconds if seconds is None else seconds
        self.train_elbo.append(train)
        if valid is not None:
            self.valid_elbo.append(valid)
        self.__dict__.update(best)
        self.epoch_losses, self.epoch, self.batch = [], self.epoch + 1, 0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rng"}


# Paired validation passes (fresh seeds) that check a Monte Carlo score's best epoch before it ends a run
FRESH_PASSES = 8


def rows_digest(args: tuple) -> str:
    """A digest of a story's data arguments (tensors; others by their repr): which rows a guide was fitted on."""
    digest = hashlib.sha256()
    for a in args:
        if isinstance(a, torch.Tensor):
            digest.update(str((a.dtype, tuple(a.shape))).encode())
            values = a.detach().cpu().contiguous()
            digest.update((values.float() if values.dtype == torch.bfloat16 else values).numpy().tobytes())
        else:
            digest.update(repr(a).encode())
    return digest.hexdigest()


def refuse_other_rows(result: FitResult, args: tuple, what: str) -> None:
    """Refuse ``what`` on data other than the rows ``result``'s guide is tied to (:attr:`FitResult.row_bound_guide`)."""
    if result.fitted_rows is not None and rows_digest(args) != result.fitted_rows:
        raise ValueError(
            f"{what}: the guide has a parameter per row of the data it was fitted on for its local latent "
            f"{result.row_bound_guide[0]!r} (an autoguide's local latents), and these are other rows, for which "
            "it has none. Pass the fitted rows, or use an amortised guide (a network of x) to score new ones")


def significantly_better(differences: torch.Tensor, z: float = 2.0) -> bool:
    """Whether paired score differences (each the parameters now minus the best epoch's, both scored on one
    seed) have a mean more than ``z`` standard errors above zero: better beyond the draws' noise (with 8
    pairs, a one-sided t-test at about 4%). Identical pairs (no noise) count any gain."""
    differences = differences.double()
    mean = differences.mean()
    stderr = differences.std() / math.sqrt(len(differences)) if len(differences) > 1 else torch.tensor(math.inf)
    return bool(mean > z * stderr) if stderr > 0 else bool(mean > 0)


class EarlyStopping:
    """Track the best validation score; say when ``patience`` epochs passed without a better one."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def decide(self, state: TrainState, score: float | None, snapshot: Callable[[], dict]) -> dict:
        """The changes that epoch ``state.epoch + 1``'s score makes to the best-epoch fields and
        ``stopped_early`` (to commit with the epoch); ``snapshot`` copies the parameters of a new best."""
        if score is None:
            return {}
        epoch = state.epoch + 1
        if state.best_elbo is None or score > state.best_elbo:
            return {"best_elbo": score, "best_epoch": epoch,
                    "best_state": snapshot() if self.patience is not None else None}
        return {"stopped_early": self.patience is not None and epoch - state.best_epoch >= self.patience}


def convergence_message(train_elbo: list[float], tol: float, window: int = 5,
                        advice: str = "Raise epochs or lr") -> str | None:
    """Why training had not converged, or None: the least-squares slope of the per-epoch objective over
    the last ``window`` epochs is an improvement of more than ``tol`` (relative, per epoch) and more than
    twice its own standard error (so noise alone does not warn); or, over the last 2, 4, 8, ... times as
    many epochs and over the last half of them, one more than ``tol`` by three standard errors.

    The longer stretches see the slow climb of a noisy objective (small minibatches, one draw of many
    latents), whose last few epochs wander by more than they gain. Their standard error allows for the
    wander's own trend (epochs next to each other correlated, as Adam's steps leave them: the lag-one
    correlation of the residuals, AR(1)'s inflation), and they ask that the climb be faster than the
    tolerance beyond its noise, not only faster and beyond noise: several looks at one curve."""
    if len(train_elbo) < window + 1:
        return None
    half = len(train_elbo) // 2
    spans = [window] + [window * 2 ** k for k in range(1, 32) if window * 2 ** k < half] + [half] * (half > window)
    for span in spans:
        values = torch.tensor(train_elbo[-span:], dtype=torch.float64)
        t = torch.arange(span, dtype=torch.float64)
        t = t - t.mean()
        slope = (t * (values - values.mean())).sum() / (t * t).sum()
        residual = values - values.mean() - slope * t
        stderr = (residual.pow(2).sum() / (span - 2) / (t * t).sum()).sqrt()
        scale = 1.0 + values.abs().mean()
        if span == window:
            climbing = slope > tol * scale and slope > 2 * stderr
        else:
            lag_one = ((residual[1:] * residual[:-1]).sum() / residual.pow(2).sum().clamp_min(1e-300)).clamp(0, 0.9)
            climbing = slope > tol * scale + 3 * stderr * ((1 + lag_one) / (1 - lag_one)).sqrt()
        if climbing:
            return (f"the objective was still improving by {slope.item():.3g} nats per example per epoch over the "
                    f"last {span} epochs (ending at {train_elbo[-1]:.4g}; tolerance {tol:g} x {scale.item():.3g}): "
                    f"training had not converged. {advice} (or set convergence_tol=None)")
    return None
