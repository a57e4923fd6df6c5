"""fit(): one small trainer for every objective, over explicit state.

:class:`Trainer` has the pieces of NumPyro's ``SVI.init/update/run``: :meth:`Trainer.init`
checks the story on the first batch (:meth:`Program.validate`), builds the objective and its
optimisers, restores a checkpoint and returns the :class:`TrainState`;
``state, loss = trainer.update(state, batch)`` takes one minibatch;
:meth:`Trainer.evaluate` scores held-out rows; :meth:`Trainer.run` loops over epochs with early
stopping (:class:`EarlyStopping`), atomic checkpoints (:class:`~ppgen.inference.checkpoint.Checkpointer`),
data-parallel ranks (:mod:`ppgen.inference.distributed`), a TensorBoard log
(:mod:`ppgen.inference.watch`), and at the end the checks that the result is an answer: the
slope (:func:`convergence_message`), stationarity and the uniform model
(:mod:`ppgen.inference.stationarity`). The optimiser is Adam, Adagrad, or L-BFGS for a classical
full-batch fit (:mod:`ppgen.inference.optimizers`). :func:`fit` is the one-call front end,
configured by a :class:`FitConfig`.

Longer than 500 lines: the loop with its interrupt and checkpoint handling, which must be read
together to see that every state change is committed atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro import poutine
from torch.utils.data import DataLoader

from ppgen.inference.checkpoint import CHECKPOINT_NAME, Checkpointer, RunLock, check_folder
from ppgen.inference.distributed import join
from ppgen.inference.signals import DeferredSignals
from ppgen.inference.training import (
    FRESH_PASSES, ConvergenceWarning, DivergenceError, EarlyStopping, FitConfig, FitResult, NonFiniteLossError,
    TrainState, convergence_message, rows_digest, significantly_better,
)
from ppgen.inference.objectives import Objective, make_objective
from ppgen.inference.optimizers import make_optimizer
from ppgen.inference.program import (ESTIMATORS, ModelCheck, Program, batch_rows, call_args, resolve_device,
                                     sample_sites)
from ppgen.inference.stationarity import stationarity, uniform_baseline_message
from ppgen.inference.watch import IMAGE_EVERY, TrainingLog, epoch_line

__all__ = ["fit", "FitConfig", "FitResult", "Trainer", "TrainState", "EarlyStopping", "ConvergenceWarning",
           "NonFiniteLossError", "DivergenceError", "convergence_message"]

CLASSICAL_SIZE = 10**8  # rows x parameters of the largest fit that optimizer="auto" gives to L-BFGS
# An epoch whose loss per example passes this many times both the run's first loss and the uniform model's
# has diverged: at a sound lr the loss stays under its first value. Measured on 16 binary columns, an RBM with
# exact Z at Adam lr 1 peaks at 2.4 times the uniform model's loss in its first epoch and recovers; at lr 10
# it reaches 16-22 times, and with PCD 29 times
UNIFORM_FACTOR = 3.0
SAMPLE_CHECK_ROWS = 64  # samples drawn after each epoch of an objective with no loss to judge by
GLOBAL_DRAWS = 8  # Monte Carlo draws per chunk in the stationarity check of a guide with global latents
# the guide's draws weighed against the posterior at the end of a fit of global latents (guide_gap), and the most
# rows times draws that check scores (a story of 4,000 rows gets the 1,000 draws; one of more than 20,000, none)
GAP_DRAWS, GAP_BUDGET = 1000, 4_000_000
GAP_SECONDS = 5.0  # and the time it may take, or a fifth of the training's where that is more


class Trainer:
    """Fits one program with one objective: ``state = init(x, y)``, then
    ``state, loss = update(state, batch)`` per minibatch (NumPyro's ``SVI.init/update``), or :meth:`run`.

    Parameters
    ----------
    program : Program
    config : FitConfig
    objective : Objective or callable, optional
        An objective built on ``program`` (or a function of the program that builds one);
        by default the built-in objective named by ``config.elbo``.

    Attributes
    ----------
    program, config
        As given.
    cluster, device
        The data-parallel ranks (one process without ``torchrun``) and this rank's device.
    lock : RunLock
        Held on the checkpoint folder from :meth:`init` to the end of :meth:`run`.
    signals : DeferredSignals
        Defers SIGINT and SIGTERM to the loop's safe points while :meth:`run` trains.
    objective, check, num_rows, params, optimizers, module, checkpoints, resumed_from_step
        Built by :meth:`init` on the first batch (None or empty before): the objective, what
        :meth:`Program.validate` found, the rows of the data, the parameters, one optimiser per
        parameter group, the objective as the ranks run it, the checkpoints, and the step a
        resumed run continued from.
    optimizer_name, classical : str, bool
        Also set by :meth:`init`: the optimiser (``config.optimizer`` with ``"auto"`` resolved), and
        whether the fit is a classical one (see :class:`FitConfig`'s ``optimizer``).
    log : TrainingLog or None
        The TensorBoard log while :meth:`run` trains with ``config.log_dir`` set (rank 0).
    """

    def __init__(self, program: Program, config: FitConfig, objective=None):
        self.program, self.config = program, config
        self.cluster = join(config.strategy, resolve_device(config.device))
        self.device = self.cluster.device(resolve_device(config.device))
        if config.batch_size < self.cluster.world_size:
            raise ValueError(f"batch_size ({config.batch_size}) is the global batch and must be at least the "
                             f"number of processes ({self.cluster.world_size})")
        self.lock = RunLock(Path(config.checkpoint_dir or "."))
        self.signals = DeferredSignals()
        self._custom = objective  # built into self.objective by init(), on the device, with the seeded RNG
        self.objective: Objective | None = None
        self.check: ModelCheck | None = None
        self.num_rows = 0
        self.params: list[torch.Tensor] = []
        self.averages: dict[str, torch.Tensor] | None = None  # the moving averages of fit(ema=...), by name
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.module: torch.nn.Module | None = None
        self.checkpoints: Checkpointer | None = None
        self.resumed_from_step: int | None = None
        self.optimizer_name = config.optimizer
        self.classical = False
        self.positional: list[str] = []  # guide sites with a parameter per row position (see init)
        self.log: TrainingLog | None = None
        self._whole_numbers = False  # a dequantized density fitted on whole-number rows (checked on the first batch)
        self._data_spread: torch.Tensor | None = None  # the first batch's spread per column, against collapse
        self._stepped = False  # whether a step ran (Pyro's argument checks run on the first only)
        self._pending: tuple[float, int] | None = None  # the record of a step whose update may be applied
        self._clock_zero: float | None = None  # perf_counter() at which this run's training time would be zero
        self._stop_in_doubt: str | None = None  # an early stop that was no decline beyond noise, in words

    # --- init ---------------------------------------------------------------------------------

    def init(self, x, y=None) -> TrainState:
        """Check the story on the first batch, build the objective and optimisers, restore a
        checkpoint when resuming; return the state to continue from. Call inside
        ``program.param_scope()`` with the seeded RNG (as :meth:`run` does)."""
        config, cluster = self.config, self.cluster
        if config.checkpoint_dir is not None and cluster.is_main:
            check_folder(Path(config.checkpoint_dir))
            self.lock.acquire()
        try:
            return self._init(x, y)
        except BaseException:
            self.lock.release()
            raise

    def _init(self, x, y) -> TrainState:
        config, cluster, program = self.config, self.cluster, self.program
        self.num_rows = x.shape[0]
        program.to(self.device)
        first = batch_rows(x, y, cluster.shard(torch.arange(min(config.batch_size, self.num_rows))), self.device)
        if not isinstance(x, torch.Tensor):
            first = (program.check_data(first[0], "the first batch of data"), first[1])
        objective = self._objective()
        if objective is None and config.elbo == "auto" and program.generative_model is not None:
            objective = program.generative_model.default_objective(program, config.num_particles, config.precision)
        if objective is None:
            estimator = config.elbo
        else:  # a built-in estimator is checked as such; any other objective for its structure only
            estimator = objective.estimator if objective.estimator in ESTIMATORS else "custom"
        with program.mode(False):  # checked as it will be scored: without dropout's noise
            self.check = program.validate(*first, num_rows=self.num_rows if cluster.world_size == 1 else
                                          self.num_rows // cluster.world_size + 1,
                                          estimator=estimator,
                                          num_particles=config.num_particles)
        self.classical = objective is None and self._is_classical(x)
        if self.classical and config.elbo == "auto" and self.check.estimator == "trace":
            self.check = dataclasses.replace(self.check, estimator="mle")  # PPCA, FA: the exact marginal itself
        self.objective = objective or make_objective(program, self.check.estimator, config.num_particles,
                                                     precision=config.precision)
        # guide parameters per row position (an autoguide's local latents): nothing for other rows; looked at in
        # evaluation mode, so that a guide's batch statistics are not moved by the look
        with program.mode(False):
            self.positional = program.positional_guide_sites(*first) if program.data_plate is not None else []
        if config.batch_size < self.num_rows and self.positional:
            raise ValueError(
                f"the guide has a parameter per row position for its local latent {self.positional[0]!r} (an "
                "autoguide's local latents, or a pyro.param of len(x) values), which shuffled minibatches cannot "
                f"train: use batch_size >= {self.num_rows}, an amortised guide (a network of x, or a "
                f"GenerativeModel), or pyro.plate({program.data_plate!r}, N, subsample=...) in the model")
        groups = self.objective.collect_parameters(*first)
        if not any(groups.values()):
            raise ValueError(f"{program.name} and its guide have no parameters to fit")
        self.optimizer_name = self._resolve_optimizer(len(groups))
        gm = program.generative_model
        self._whole_numbers = bool(program.exact and gm.num_levels is not None
                                   and torch.equal(first[0], first[0].round()))
        self._data_spread = first[0].double().std(0) if gm is not None and len(first[0]) > 1 else None
        if cluster.parallel and sum(map(len, groups.values())) != len([p for p in self.objective.parameters()
                                                                       if p.requires_grad]):
            raise ValueError("strategy='ddp' synchronises module parameters only; this model has plain "
                             "pyro.param sites: write it as a GenerativeModel or a PyroModule")
        self.params = [p for group in groups.values() for p in group]
        self.module = cluster.wrap(self.objective, self.device, find_unused=len(groups) > 1)
        self.optimizers = {name: make_optimizer(self.optimizer_name, group, lr=config.lr,
                                                weight_decay=config.weight_decay, adam_betas=self.objective.adam_betas)
                           for name, group in groups.items()}
        path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir is not None else None
        if path is not None and path.exists() and not config.resume:
            raise ValueError(f"{path} already exists; pass resume=True to continue that run, "
                             "or choose another checkpoint_dir")
        named = _named(self.objective, self.params)
        buffers, configuration = _buffers(self.objective)
        fingerprint = {"model": program.name, "parameters": sorted((n, tuple(p.shape)) for n, p in named.items()),
                       "data": _data_fingerprint(x), "num_rows": self.num_rows, "batch_size": config.batch_size,
                       "seed": config.seed, "estimator": self.estimator_name, "num_particles": config.num_particles,
                       "world_size": cluster.world_size, "optimizer": self.optimizer_name,
                       "model_buffers": configuration}
        if gm is not None:  # a plain Pyro function has no constructor arguments
            fingerprint["model_arguments"] = dict(gm.init_arguments)
            fingerprint["model_legacy_arguments"] = dict(gm.legacy_arguments)
        fingerprint["objective_arguments"] = dict(self.objective.init_arguments)
        settings = {"lr": 1.0 if self.optimizer_name == "lbfgs" else config.lr, "weight_decay": config.weight_decay,
                    "epochs": config.epochs, "patience": config.patience, "ema": config.ema}
        self.averages = {n: p.detach().clone() for n, p in named.items()} if config.ema is not None else None
        self.checkpoints = Checkpointer(path if cluster.is_main else None, named, self.optimizers, fingerprint,
                                        cluster, settings, buffers=buffers, objective=self.objective,
                                        averages=self.averages)
        self.resumed_from_step, self._stepped, self._pending, self._clock_zero = None, False, None, None
        if path is not None and config.resume and path.exists():
            self.checkpoints.path = path  # every rank reads the checkpoint
            saved, changed = self.checkpoints.restore()
            state = TrainState(**saved, rng=torch.get_rng_state())
            self.checkpoints.path = path if cluster.is_main else None
            self.resumed_from_step = state.step
            self._say(f"resuming from {path} at epoch {state.epoch + 1}, step {state.step}"
                      + (f"; changed: {', '.join(changed)}" if changed else ""))
            return state
        if config.resume:
            self._say(f"no checkpoint in {config.checkpoint_dir}: starting a new run there")
        return TrainState(rng=torch.get_rng_state())

    def _is_classical(self, x) -> bool:
        """A full-batch fit, by one process, of an in-memory tensor, of a small model whose exact
        ``log_prob`` is the marginal likelihood over latents its guide samples or the story enumerates
        (PPCA, factor analysis, the mixtures): what scikit-learn fits with a quasi-Newton solver."""
        program, check = self.program, self.check
        return (program.exact and bool(check.latent or check.enumerated) and isinstance(x, torch.Tensor)
                and self.config.batch_size >= self.num_rows and self.cluster.world_size == 1
                and self.num_rows * sum(p.numel() for p in program.generative_model.parameters()) <= CLASSICAL_SIZE)

    def _deterministic(self) -> bool:
        """Whether the objective has no Monte Carlo noise: exact maximum likelihood, or an ELBO with
        every latent enumerated."""
        return self.objective.estimator == "mle" or (self.objective.estimator == "enum" and not self.check.latent)

    def _resolve_optimizer(self, num_groups: int) -> str:
        """``config.optimizer`` with "auto" resolved: L-BFGS for a classical fit whose objective is
        deterministic (exact maximum likelihood, or every latent enumerated), else Adam."""
        deterministic = self._deterministic()
        if self.config.optimizer == "auto":
            return "lbfgs" if (self.classical and deterministic and self.config.clip_norm is None
                               and self.config.ema is None) else "adam"
        if self.config.optimizer == "lbfgs" and self.config.clip_norm is not None:
            raise ValueError(f"clip_norm={self.config.clip_norm:g} clips gradient steps; L-BFGS's line search sets its "
                             "own (use optimizer='adam' to clip, or clip_norm=None)")
        if self.config.optimizer == "lbfgs" and not (deterministic and num_groups == 1 and self.cluster.world_size == 1
                                                     and self.config.batch_size >= self.num_rows):
            raise ValueError(
                "optimizer='lbfgs' needs a deterministic objective (elbo='mle', or 'enum' with every latent "
                f"enumerated; this fit's is {self.estimator_name!r}) of one parameter group over a full batch "
                f"(batch_size >= the {self.num_rows} rows; got {self.config.batch_size}) in one process")
        return self.config.optimizer

    @property
    def estimator_name(self) -> str:
        obj = self.objective
        return obj.estimator if obj.estimator != "custom" else type(obj).__name__

    def _objective(self) -> Objective | None:
        custom = self._custom
        if custom is None:
            return None
        if not isinstance(custom, Objective):
            custom = custom(self.program)
        if not isinstance(custom, Objective):
            raise TypeError(f"objective must be a ppgen Objective or a function returning one, got "
                            f"{type(custom).__name__}")
        if custom.program is not self.program:
            raise ValueError("the objective was built on another Program than the one being fitted")
        return custom

    # --- update and evaluate ------------------------------------------------------------------

    def update(self, state: TrainState, batch, *, scale: float | None = None) -> tuple[TrainState, float]:
        """One optimisation step on ``batch`` (rows ``x`` or ``(x, y)`` on :attr:`device`):
        ``(state, loss)``, as NumPyro's ``SVI.update``.

        ``state`` is the one :meth:`init` returned, with the step recorded in it (in place, at once,
        so that an interrupt anywhere leaves it consistent with the parameters); ``loss`` is the
        first parameter group's, summed over the batch and scaled to the full data. ``scale``
        multiplies the log-densities inside the data plate: by default the number of rows of the
        data over the batch's. Call inside ``program.param_scope()``, as :meth:`init`.
        """
        if self.objective is None:
            raise RuntimeError("Trainer.update before Trainer.init: init(x, y) builds the objective and optimisers")
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        return state, self.step(state, x, y, self.num_rows / x.shape[0] if scale is None else scale)

    def step(self, state: TrainState, x, y, scale: float) -> float:
        """What :meth:`update` runs: one optimisation step per parameter group, recorded in
        ``state``; returns the first group's loss. Refuses to apply a non-finite loss or gradient,
        and stops a run whose loss grew by orders of magnitude."""
        rng = torch.get_rng_state()  # to re-run this step's forward pass if it fails
        first_value = None
        self._pending = None
        # Pyro's and torch's argument checks run on the first step only: the story was checked on
        # this batch's shape by validate(), and per-step checks cost a few percent of a step
        check_args = not self._stepped
        self._stepped = True
        norms = {}
        for group in self.objective.groups:
            with contextlib.nullcontext() if check_args else pyro.validation_enabled(False):
                loss = self.module(x, y, scale=scale, group=group)
            optimizer = self.optimizers[group]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP, the gradients are averaged over the ranks here
            stepped = [p for group_params in optimizer.param_groups for p in group_params["params"]
                       if p.grad is not None]
            grads = [p.grad for p in stepped]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
            loss_value, norm_value = self.cluster.mean(torch.stack([loss.detach(), grad_norm.to(loss.dtype)])).tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                self._non_finite(state, rng, x, y, scale, loss_value, norm_value, group)
            first_value = loss_value if first_value is None else first_value
            norms[group] = norm_value
            if self.config.clip_norm is not None:
                # the loss is for all num_rows rows; clip_norm bounds the gradient per row (of the mean loss)
                torch.nn.utils.clip_grads_with_norm_(stepped, self.config.clip_norm * self.num_rows, grad_norm)
            self._pending = (first_value / self.num_rows, state.batch + 1)
            if isinstance(optimizer, torch.optim.LBFGS):
                self._lbfgs_step(optimizer, state, x, y, scale, group)
            else:
                optimizer.step()
        if self.averages is not None:
            t = state.step + 1  # this step's number in the whole run, so a resume averages as the unbroken run
            decay = min(self.config.ema, (1 + t) / (10 + t))  # warm-up: the first steps do not keep the initial values
            with torch.no_grad():  # a <- decay a + (1 - decay) theta
                torch._foreach_lerp_(list(self.averages.values()), self._averaged_params(), 1 - decay)
        state.commit_step(*self._pending, seconds=self._seconds(state))
        self.checkpoints.commit()
        if self.log is not None:
            self.log.step(state.step, state.losses[-1], norms)
        self._check_divergence(state)
        return first_value

    def _lbfgs_step(self, optimizer: torch.optim.LBFGS, state: TrainState, x, y, scale: float, group: str) -> None:
        """One L-BFGS step (up to 20 iterations, each with a strong-Wolfe line search) on the loss
        per example of the full data plus the L2 penalty ``weight_decay / 2 |theta|^2`` (whose
        gradient Adam adds); parameters its line search left non-finite are put back and refused."""
        params = optimizer.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        decay = self.config.weight_decay

        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = self.module(x, y, scale=scale, group=group)
            if decay:
                loss = loss + decay / 2 * sum(p.pow(2).sum() for p in params)
            (loss / self.num_rows).backward()
            return loss.detach() / self.num_rows

        with pyro.validation_enabled(False):  # the story was checked on this batch by the step's first pass
            optimizer.step(closure)
        if not all(torch.isfinite(p).all() for p in params):
            with torch.no_grad():
                for p, value in zip(params, before):
                    p.copy_(value)
            raise NonFiniteLossError(
                f"L-BFGS's line search reached non-finite parameters at step {state.step + 1}; the parameters are "
                f"kept as they were after step {state.step}. Try optimizer='adam' with a small lr, or start from "
                "better parameters", step=state.step + 1, site=None)

    def _check_divergence(self, state: TrainState) -> None:
        factor = self.config.divergence_factor
        if factor is None or len(state.losses) < 2:
            return
        first, last = state.losses[0], state.losses[-1]
        if last > first and abs(last) > factor * max(abs(first), 1.0):
            raise _divergence(f"the loss grew from {first:.4g} to {last:.4g} nats per example by step {state.step} "
                              f"(more than {factor:g} times its first value)")

    def _check_epoch(self, state: TrainState, loss: float) -> None:
        """What :meth:`_check_divergence` cannot see, at the end of an epoch whose mean loss per example is
        ``loss``, before the epoch is committed: on discrete data, a loss past :data:`UNIFORM_FACTOR` times
        both its first value and the uniform model's, where the loss is a likelihood or bound, or the
        loss of an objective with no scale of its own (``monotone`` False: contrastive divergence's
        F(x) - F(x~) = log p(x~) - log p(x), without its energy penalty, is at most the NLL on discrete
        data); and, for such an objective
        on real-valued data, samples that are non-finite, or one row repeated while the data's rows differ."""
        gm, epoch = self.program.generative_model, state.epoch + 1
        if self.config.divergence_factor is None or gm is None:
            return
        levels = self._levels()
        if levels is not None and (self._whole_numbers or self.objective.estimator in ESTIMATORS
                                   or not self.objective.monotone) and state.losses:
            uniform = gm.x_dim * math.log(levels)
            if loss > UNIFORM_FACTOR * max(state.losses[0], uniform):
                raise _divergence(f"epoch {epoch} ended at {loss:.5g} nats per example, more than {UNIFORM_FACTOR:g} "
                                  f"times both the first step's {state.losses[0]:.5g} and the uniform model's "
                                  f"{uniform:.5g}")
        if self.objective.monotone or gm.data_support != "real" or self._data_spread is None \
                or not self._data_spread.max() > 0:
            return
        samples = self._samples(SAMPLE_CHECK_ROWS).double()
        if not torch.isfinite(samples).all():
            raise _divergence(f"after epoch {epoch}, {int((~torch.isfinite(samples)).any(-1).sum())} of "
                              f"{len(samples)} samples of {self.program.name} hold NaN or inf")
        spread = samples.std(0)
        if spread.max() <= 1e-6 * self._data_spread.max():
            raise _divergence(f"after epoch {epoch}, all {len(samples)} samples of {self.program.name} are one row "
                              f"(their spread is at most {spread.max().item():.3g} in every column, the data's up to "
                              f"{self._data_spread.max().item():.3g}): it collapsed")

    def _samples(self, n: int) -> torch.Tensor:
        """``n`` samples of the model, seeded, drawn aside from training's random state and leaving the
        buffers (running statistics) as they were."""
        buffers = [(b, b.clone()) for b in self.objective.buffers()]
        try:
            with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
                torch.manual_seed(self.config.seed)
                return self.program.generative_model.sample(n)
        finally:
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)

    def _levels(self) -> int | None:
        """K, the levels per dimension of discrete data (binary data: 2), whose uniform model scores
        x_dim log K nats per example; None for real-valued data."""
        gm = self.program.generative_model
        return None if gm is None else gm.num_levels or (2 if gm.data_support == "binary" else None)

    def _non_finite(self, state, rng, x, y, scale, loss_value, norm_value, group) -> None:
        self.checkpoints.save(state.to_dict(), rng=state.rng)
        torch.set_rng_state(rng)
        site = _find_non_finite(self.objective, self.params, x, y, scale)
        what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else \
            f"the gradient norm became {norm_value} (loss {loss_value:.6g})"
        if len(self.objective.groups) > 1:
            what += f" in group {group!r}"
        saved = f"; a checkpoint of that state is in {self.checkpoints.path}" if self.checkpoints.path else ""
        batches = math.ceil(self.num_rows / self.config.batch_size)
        raise NonFiniteLossError(
            f"{what} at step {state.step + 1} (epoch {state.step // batches + 1}, batch {state.batch + 1}); "
            f"first non-finite: {site}. The parameters are kept as they were after "
            f"step {state.step}{saved}. Try a smaller lr, or check the data and the model's scales.",
            step=state.step + 1, site=site)

    @torch.no_grad()
    def evaluate(self, x, y=None, *, seed: int = 0, averaged: bool = True) -> float | None:
        """The objective's score per example on held-out rows (with a fixed seed, so that it does
        not disturb training); each rank scores its share of every batch and the totals are summed.
        None when the objective has no normalised score (:meth:`Objective.score` returns None).
        ``averaged=False``: the parameters as they are, not their moving averages."""
        cluster, device = self.cluster, self.device
        total = torch.zeros((), dtype=torch.float64, device=device)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                self.program.mode(False, self.objective), self._averaged() if averaged else contextlib.nullcontext():
            torch.manual_seed(seed + cluster.rank)
            for idx in torch.arange(x.shape[0]).split(self.config.batch_size):
                self.signals.check()
                idx = cluster.shard(idx)
                if len(idx):
                    score = self.objective.score(*batch_rows(x, y, idx, device))
                    if score is None:
                        return None
                    total += score.double()
        return cluster.sum(total).item() / x.shape[0]

    @contextlib.contextmanager
    def _averaged(self):
        """Inside: the parameters hold their moving averages (``ema``), restored after; without ``ema``, nothing."""
        if self.averages is None:
            yield
            return
        with _swapped(self._averaged_params(), list(self.averages.values())):
            yield

    def _holding(self, saved: dict[str, torch.Tensor]):
        """Inside: the parameters hold ``saved`` (a snapshot of them all, by name), restored after."""
        params = self.checkpoints.params
        return _swapped(list(params.values()), [saved[name].to(p.device) for name, p in params.items()])

    def _averaged_params(self) -> list[torch.Tensor]:
        """The parameters in the order of their moving averages (``self.averages``)."""
        return [self.checkpoints.params[name] for name in self.averages]

    @torch.no_grad()
    def _hold_averages(self) -> None:
        torch._foreach_copy_(self._averaged_params(), list(self.averages.values()))

    # --- run ----------------------------------------------------------------------------------

    def run(self, x, y=None, valid=None) -> FitResult:
        """Train for ``config.epochs`` epochs (or until early stopping) and return the result.

        An interrupt (Ctrl-C, SIGTERM, or a ``KeyboardInterrupt`` raised anywhere in this loop)
        writes one consistent checkpoint (a step is either recorded with its parameters or not
        applied at all) and re-raises ``KeyboardInterrupt``; ``resume=True`` then continues to the
        parameters an uninterrupted run reaches.
        """
        config, cluster, program = self.config, self.cluster, self.program
        start = time.perf_counter()
        cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self.signals = DeferredSignals()  # a fresh one: a signal left over from an earlier run is not this run's
        with program.param_scope(), torch.random.fork_rng(devices=cuda_devices), self.signals as signals, \
                contextlib.ExitStack() as modes:
            torch.manual_seed(config.seed + cluster.rank)  # each rank its own (reproducible) sampling noise
            state = self.init(x, y)
            if valid is not None and self.positional:
                raise ValueError(
                    f"the guide has a parameter per training row for its local latent {self.positional[0]!r} (an "
                    "autoguide's local latents, or a pyro.param of len(x) values) and none for held-out rows: "
                    "valid= cannot be scored. Fit without valid= (the ELBO of the training rows is the figure), "
                    "or use an amortised guide (a network of x)")
            # steps in training mode (dropout, batch statistics), scores and checks in evaluation mode; the
            # modules' own modes come back at the end
            modes.enter_context(program.mode(True, self.objective))
            self._clock_zero = start - state.seconds  # earlier calls' time counts too
            if config.log_dir is not None and cluster.is_main:
                self.log = TrainingLog(config.log_dir, state.step)
            n_rows, batch_size = self.num_rows, config.batch_size
            batches_per_epoch = len(_global_batches(torch.arange(n_rows), batch_size, cluster.world_size))
            bar = _progress_bar(config.progress and cluster.is_main, config.epochs * batches_per_epoch, state.step,
                                f"fit {program.name}")
            step_seconds, rows_seen, out_of_time = 0.0, 0, False
            deadline = start + 60 * config.max_minutes if config.max_minutes is not None else None
            save_every = 60 * config.checkpoint_minutes if config.checkpoint_minutes is not None \
                and config.checkpoint_dir is not None and not cluster.parallel else None
            last_save = time.perf_counter()
            try:
                signals.check()
                for epoch in range(state.epoch, config.epochs):
                    order = (torch.randperm(n_rows, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
                             if batch_size < n_rows else torch.arange(n_rows))  # full batch: rows keep their place
                    batches = _global_batches(order, batch_size, cluster.world_size)
                    todo = [cluster.shard(idx) for idx in batches[state.batch:]]  # resumed mid-epoch: skip done ones
                    rows = _stream(x, y, todo, self.device, config.num_workers)
                    for b, idx in enumerate(todo, start=state.batch):
                        signals.check()
                        xb, yb = next(rows)
                        if not isinstance(x, torch.Tensor):
                            xb = program.check_data(xb, f"data rows {idx[:3].tolist()}...")
                        t0 = time.perf_counter()
                        scale = cluster.world_size * n_rows / len(batches[b])  # DDP averages over ranks
                        state, _ = self.update(state, (xb, yb), scale=scale)
                        step_seconds += time.perf_counter() - t0
                        rows_seen += len(idx)
                        if bar is not None:
                            bar.update()
                            if state.step % 25 == 0:
                                bar.set_postfix(objective=f"{-state.losses[-1]:.3f}", refresh=False)
                        if deadline is not None and not cluster.parallel and time.perf_counter() > deadline \
                                and b + 1 < len(batches):
                            raise _OutOfTime
                        if save_every is not None and time.perf_counter() - last_save > save_every \
                                and b + 1 < len(batches):
                            self.checkpoints.save(state.to_dict(), rng=state.rng)
                            last_save = time.perf_counter()
                    self._finish_epoch(state, valid)
                    last_save = time.perf_counter()
                    if bar is not None:  # a terminal: a line per epoch above the bar
                        bar.write(epoch_line(state.epoch, config.epochs, state.train_elbo[-1],
                                             state.valid_elbo[-1] if valid is not None and state.valid_elbo else None,
                                             state.best_epoch, self._seconds(state), self._unit()), file=sys.stderr)
                    signals.check()
                    if state.stopped_early:
                        break
                    if deadline is not None and state.epoch < config.epochs \
                            and cluster.sum(torch.tensor(float(time.perf_counter() > deadline), device=self.device)) > 0:
                        raise _OutOfTime  # at an epoch's end, where every rank agrees to stop
            except _OutOfTime:
                out_of_time = True
                if not cluster.parallel:  # mid-epoch; with several ranks the epoch's checkpoint was just written
                    self.checkpoints.save(state.to_dict(), rng=state.rng)
            except KeyboardInterrupt:
                if not cluster.parallel:  # with several ranks, the epoch checkpoints are the resume points
                    self._record_applied_step(state)
                    self.checkpoints.save(state.to_dict(), rng=state.rng)
                raise
            finally:
                if bar is not None:
                    bar.close()
                if self.log is not None:
                    self.log.close()
                    self.log = None
                self.lock.release()
                self._clock_zero = None
            if config.patience is not None and state.best_state is not None:
                self.checkpoints.load_params(state.best_state, "best epoch")  # averaged, with ema
            elif self.averages is not None:
                self._hold_averages()
            if self.classical and self.objective.estimator == "mle" and self.check.latent \
                    and not program.generative_model.set_guide_to_exact_posterior():
                self._say("the exact marginal likelihood trained the model, not its guide: the guide is as it was")
            messages = self._verdicts(state, x, y, out_of_time) if cluster.is_main else []
        for message in messages:
            # attributed to the caller's line, past ppgen's own frames (lazy wrappers, the CLI)
            warnings.warn(f"fit {program.name}: {message}", ConvergenceWarning,
                          skip_file_prefixes=(str(Path(__file__).resolve().parents[1]),))
        return FitResult(
            model=program.source,
            guide=program.guide_module if program.guide_module is not None else program.guide,
            losses=state.losses, train_elbo=state.train_elbo, valid_elbo=state.valid_elbo,
            epochs=state.epoch, steps=state.step, seconds=time.perf_counter() - start, total_seconds=state.seconds,
            examples_per_second=cluster.world_size * rows_seen / step_seconds if step_seconds > 0 else float("nan"),
            stopped_early=state.stopped_early, best_epoch=state.best_epoch, device=str(self.device),
            estimator=self.estimator_name, check=self.check, resumed_from_step=self.resumed_from_step,
            optimizer=self.optimizer_name, out_of_time=out_of_time, unit=self._unit(),
            row_bound_guide=tuple(self.positional),
            fitted_rows=rows_digest(call_args(x, y)) if self.positional and isinstance(x, torch.Tensor) else None,
        )

    def _unit(self) -> str:
        """What the per-epoch figures are: nats per example for a likelihood or its bound, else the objective's."""
        objective = self.objective
        return "nats/example" if objective.likelihood else f"{type(objective).__name__} objective (not a likelihood)"

    def _verdicts(self, state: TrainState, x, y, out_of_time: bool = False) -> list[str]:
        """What the end of a run warns about, in words: a call stopped at ``max_minutes``; else the
        objective still rising over the last epochs (:func:`convergence_message`) or, failing that,
        parameters far from a stationary point (:func:`~ppgen.inference.stationarity.stationarity`,
        for a built-in estimator in one process) or, failing that, a guide of global latents far from
        the posterior its importance weights give (:func:`~ppgen.inference.posterior.guide_gap`), or where
        they cannot say, a Gaussian guide far from its optimality conditions
        (:func:`~ppgen.inference.posterior.newton_gap`); and a figure worse than the uniform model's
        (:func:`uniform_baseline_message`)."""
        config, objective, gm = self.config, self.objective, self.program.generative_model
        messages = []
        if out_of_time:
            total = config.epochs * len(_global_batches(torch.arange(self.num_rows), config.batch_size,
                                                         self.cluster.world_size))
            messages.append(f"stopped at max_minutes={config.max_minutes:g} after step {state.step:,} of {total:,} "
                            f"({state.epoch} of {config.epochs} epochs done): the run has not reached its end. "
                            + ("resume=True with the same checkpoint_dir continues it" if config.checkpoint_dir
                               is not None else "Give a checkpoint_dir to be able to continue a run"))
        elif config.convergence_tol is not None and objective.monotone:
            # a stop on a validation score that fell beyond its noise ends where it should, as far as the
            # objective's course can tell; the guide of global latents is still weighed against the posterior
            settled = state.stopped_early and self._stop_in_doubt is None
            advice = self._stop_in_doubt or (
                f"It stopped early after epoch {state.epoch}, on a validation score that fell: raise patience"
                if settled else self._advice())
            message = None if settled else convergence_message(state.train_elbo, config.convergence_tol,
                                                                advice=advice)
            # both checks below score rows of our choosing with a built-in estimator in one process: not a model
            # that subsamples its rows itself, nor a guide with a parameter per row position (it has none for
            # other rows); the stationarity check's chunks are scaled to the full data, which needs a data plate
            # (without one its chunks would score another objective)
            rescorable = objective.estimator in ESTIMATORS and self.cluster.world_size == 1 \
                and not self.program.subsampling and not self.positional
            if message is None and not settled and rescorable and self.program.data_plate is not None:
                # the rows it looks at, so that it costs at most about a tenth of the training: a sixteenth of
                # the rows the run trained on (at least 128), up to 2048
                found = self._stationarity(x, y, min(2048, max(128, state.step * config.batch_size // 16)))
                message = found.message(config.convergence_tol, advice) if found is not None else None
            if message is None and rescorable and self.program.global_latents and isinstance(x, torch.Tensor):
                gap = self._guide_gap(x, y, state)
                message = gap.message(advice) if gap is not None and gap.far else None
                if gap is None:  # the weights cannot say (a guide narrower than the posterior): a Gaussian guide's
                    gap = self._guide_gap(x, y, state, newton=True)  # optimality conditions can
                    message = gap.message(advice) if gap is not None and gap.far else None
            messages += [message] if message else []
        levels = self._levels() if self._whole_numbers or objective.estimator in ESTIMATORS else None
        if levels is not None and state.train_elbo:
            message = uniform_baseline_message(state.train_elbo[-1], gm.x_dim, levels,
                                               whole_numbers=self._whole_numbers, bound=objective.estimator != "mle")
            messages += [message] if message else []
        return messages

    def _stationarity(self, x, y, sample: int):
        """:func:`~ppgen.inference.stationarity.stationarity` at the parameters, quietly (a chunk of
        rows may lack a site that the minibatches had, and Pyro would say so), leaving the buffers
        (running statistics) as they were."""
        objective = self.objective
        buffers = [(b, b.clone()) for b in objective.buffers()]
        try:
            with warnings.catch_warnings(), self.program.mode(False, objective):
                warnings.simplefilter("ignore")
                return stationarity(lambda xb, yb, scale: objective(xb, yb, scale=scale), self.params,
                                    lambda idx: batch_rows(x, y, idx, self.device), self.num_rows, sample=sample,
                                    weight_decay=self.config.weight_decay, exact=self._deterministic(),
                                    seed=self.config.seed, draws=GLOBAL_DRAWS if self.program.global_latents else 1)
        finally:
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)

    def _guide_gap(self, x, y, state: TrainState, newton: bool = False):
        """:func:`~ppgen.inference.posterior.guide_gap` on all the rows, where they times its draws fit GAP_BUDGET
        (at least 200 draws), in evaluation mode, within a fifth of the training's time (at least GAP_SECONDS);
        None otherwise, and for a story that does not broadcast over draws scored at once (one at a time would
        cost more than the fit). With ``newton``, :func:`~ppgen.inference.posterior.newton_gap` the same way."""
        from ppgen.inference.posterior import guide_gap, newton_gap  # with ArviZ's PSIS: not at ppgen.fit's import

        draws = min(GAP_DRAWS, GAP_BUDGET // self.num_rows)
        if draws < 200:
            return None
        args = call_args(*batch_rows(x, y, torch.arange(self.num_rows), self.device))
        seconds = max(GAP_SECONDS, self._seconds(state) / 5)
        try:  # quietly: PSIS says when its tail is heavy, which here only means that the weights cannot tell
            with warnings.catch_warnings(), self.program.mode(False, self.objective):
                warnings.simplefilter("ignore")
                if newton:
                    return newton_gap(self.program, args, seed=self.config.seed, max_seconds=seconds)
                return guide_gap(self.program, args, draws, seed=self.config.seed,
                                 max_samples=GAP_BUDGET // self.num_rows, one_by_one=False, max_seconds=seconds)
        except (RuntimeError, ValueError, IndexError, NotImplementedError):  # ModelCheckError is a ValueError
            return None

    def _advice(self) -> str:
        """What to do about a fit far from a stationary point."""
        if self.optimizer_name == "lbfgs":
            return ("L-BFGS stopped where its line search found no progress, as on badly scaled data in float32: "
                    "standardise the data's columns, or fit in float64 (model.double() and float64 rows)")
        if self.program.exact and (self.check.latent or self.check.enumerated):
            return (f"Raise epochs or lr, or fit a full batch (batch_size >= {self.num_rows}), where optimizer='auto' "
                    "runs L-BFGS, which reaches the maximum likelihood in a few epochs")
        return "Raise epochs or lr"

    def _finish_epoch(self, state: TrainState, valid) -> None:
        """Score the epoch, decide on early stopping, and commit all of it at once, then checkpoint.
        Interrupted before the commit, a resumed run finishes the same epoch again (validation is
        seeded, so it gives the same figures)."""
        train = -sum(state.epoch_losses) / len(state.epoch_losses)
        self._check_epoch(state, -train)
        score = self.evaluate(*valid, seed=self.config.seed + state.epoch + 1) if valid is not None else None
        if score is None and valid is not None and state.epoch == 0:
            self._say(f"{self.estimator_name} has no normalised validation score: no best epoch, no early stopping")
        best = EarlyStopping(self.config.patience).decide(
            state, score, lambda: self.checkpoints.snapshot(averaged=True))  # what was scored
        best = self._second_look(state, best, valid)
        state.commit_epoch(train, score, best, seconds=self._seconds(state))
        self.checkpoints.commit()  # the buffers as the epoch left them (validation runs in evaluation mode)
        self.checkpoints.save(state.to_dict())
        if self.log is not None:
            self.log.epoch(state.step, train, score, {g: o.param_groups[0]["lr"] for g, o in self.optimizers.items()})
            gm = self.program.generative_model
            if gm is not None and (state.epoch % IMAGE_EVERY == 0 or state.epoch == self.config.epochs
                                   or state.stopped_early):
                self.log.samples(state.step, gm, seed=self.config.seed)

    def _second_look(self, state: TrainState, best: dict, valid) -> dict:
        """``best`` (:meth:`EarlyStopping.decide`'s changes), looked at again where the best epoch's record would
        end the run (a stop after ``patience`` epochs, or its parameters restored after the last epoch). A Monte
        Carlo score's record is the best of many noisy draws and can be luck while the model still improves;
        so the parameters now and the best epoch's are scored again on FRESH_PASSES paired fresh seeds. Better
        beyond the noise (:func:`significantly_better`), the parameters now take the record and a stop is
        called off; within it, the fresh scores (fairer than a record chosen for being high) pick which are
        kept, and a stop that was no decline either has the end-of-fit verdict look at the parameters."""
        epoch, config = state.epoch + 1, self.config
        ending = best.get("stopped_early") or (epoch == config.epochs and "best_epoch" not in best)
        if not ending or state.best_state is None or self._deterministic():
            return best
        seeds = [config.seed + 1_000_003 * (k + 1) + epoch for k in range(FRESH_PASSES)]
        now = torch.tensor([self.evaluate(*valid, seed=seed) for seed in seeds])
        with self._holding(state.best_state):
            then = torch.tensor([self.evaluate(*valid, seed=seed, averaged=False) for seed in seeds])
        difference = now - then
        gap, stderr = difference.mean().item(), difference.std().item() / FRESH_PASSES ** 0.5
        better = significantly_better(difference)
        stop = bool(best.get("stopped_early")) and not better
        kept = epoch if gap > 0 else state.best_epoch
        if best.get("stopped_early") and better:
            self._say(f"epoch {epoch} scores {gap:.4g} ± {stderr:.2g} per example above the best record (epoch "
                      f"{state.best_epoch}) on {FRESH_PASSES} fresh validation passes: that record was the draws' "
                      "luck, and training goes on")
        elif stop and not significantly_better(-difference):
            self._stop_in_doubt = (
                f"It stopped early after epoch {epoch}, {config.patience} epochs after its best record (epoch "
                f"{state.best_epoch}), but the two scored within the draws' noise of each other ({gap:+.3g} ± "
                f"{stderr:.2g} nats per example on {FRESH_PASSES} fresh validation passes; it holds epoch {kept}'s "
                "parameters), not a decline: raise patience, or validate on more rows")
        if kept == state.best_epoch:
            return {**best, "stopped_early": stop}
        return {"best_elbo": now.mean().item(), "best_epoch": epoch,
                "best_state": self.checkpoints.snapshot(averaged=True), "stopped_early": stop}

    def _record_applied_step(self, state: TrainState) -> None:
        """After an interrupt between a step's parameter update and its record, record it: the
        optimiser's own step count says whether the update was applied."""
        optimizer = self.optimizers[self.objective.groups[0]]
        applied = max((int(s["step"]) for s in optimizer.state.values() if "step" in s), default=0)
        if applied > state.step and self._pending is not None:
            state.commit_step(*self._pending, seconds=self._seconds(state))
            self.checkpoints.commit()

    def _seconds(self, state: TrainState) -> float:
        """The run's training time now, earlier calls included (outside :meth:`run`: the last recorded)."""
        return state.seconds if self._clock_zero is None else time.perf_counter() - self._clock_zero

    def _say(self, message: str) -> None:
        if self.config.progress and self.cluster.is_main:
            print(f"ppgen.fit: {message}", file=sys.stderr)


class _OutOfTime(Exception):
    """Raised inside :meth:`Trainer.run`'s loop when ``max_minutes`` ran out."""


def fit(model, data, config: FitConfig | None = None, *, guide=None, valid=None, objective=None,
        data_plate: str | None = None, **options) -> FitResult:
    """Fit a generative model: the ELBO family, exact maximum likelihood, or any :class:`Objective`.

    Parameters
    ----------
    model : GenerativeModel, callable or Program
        A ppgen model, or a plain Pyro model function ``model(x[, y])`` whose observations sit
        in a plate over the data rows (found whatever its name; see :meth:`Program.validate`).
    data : Tensor, array, row source, or (x, y)
        Training rows, the first dimension indexing them (and labels or conditions ``y``, passed
        to the model as its second argument). A ``GenerativeModel`` takes (N, D) rows in its
        support; a plain Pyro program rows of any shape. Data larger than memory: a
        :class:`ppgen.data.NpyRows` (or a ``numpy.load(..., mmap_mode="r")`` array) or any
        ``torch.utils.data.Dataset`` of rows streams minibatches from disk.
    config : FitConfig, optional
        The settings; keywords named like its fields (``epochs=``, ``lr=``, ...) override it.
    guide : None, callable or str
        The model's own guide (default), a guide function or module, or an autoguide name.
    valid : Tensor or (x, y), optional
        Held-out rows, scored after every epoch (needed for ``patience``).
    objective : Objective or callable, optional
        A custom objective built on a :class:`Program` of this model (or a function of the
        program returning one); overrides ``elbo``.
    data_plate : str, optional
        The plate over the data rows, when it cannot be found on its own.
    **options
        Fields of :class:`FitConfig`.

    Returns
    -------
    FitResult

    Raises
    ------
    ModelCheckError
        When the story cannot be fitted correctly as written (the message names the site).
    NonFiniteLossError
        When the loss or a gradient becomes NaN or infinite; the parameters keep their last
        finite values and the message names the step and the site.

    Warns
    -----
    ConvergenceWarning
        When the objective was still improving faster than ``convergence_tol`` at the end; when
        the parameters are far from a stationary point of a built-in estimator's objective (one
        more step would still gain, or the gradient is far from zero: :mod:`ppgen.inference.stationarity`);
        and when the fit scores worse than the uniform distribution over discrete data's levels.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> x = torch.bernoulli(torch.full((100, 3), 0.25), generator=torch.Generator().manual_seed(0))
    >>> result = fit(IndependentBernoulli(3), x, epochs=100, batch_size=100, lr=0.2, progress=False)
    >>> result.estimator, result.epochs  # an exact model without latents: exact maximum likelihood
    ('mle', 100)
    >>> best = IndependentBernoulli.from_frequencies(x).log_prob(x).mean()  # the closed-form MLE
    >>> round(result.train_elbo[-1], 3) == round(best.item(), 3)
    True
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(FitConfig)})
    if unknown:
        raise TypeError(f"fit() got unknown options {unknown}; the settings are the fields of FitConfig: "
                        f"{', '.join(f.name for f in dataclasses.fields(FitConfig))}")
    if config is not None and not isinstance(config, FitConfig):
        hint = ("; labels or conditions go with the rows as one argument, fit(model, (x, y))"
                if hasattr(config, "shape") else "")
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}{hint}")
    config = dataclasses.replace(config or FitConfig(), **options)
    if config.patience is not None and valid is None:
        raise ValueError("patience (early stopping) needs valid= data")
    if config.resume and config.checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (where the checkpoint is)")
    if objective is not None and config.elbo != "auto":
        raise ValueError(f"pass either objective= or elbo= (got elbo={config.elbo!r} too)")
    program = model if isinstance(model, Program) else Program(model, guide, data_plate=data_plate)
    if isinstance(model, Program) and (guide is not None or data_plate is not None):
        raise ValueError("guide= and data_plate= belong to the Program; it already has them")
    x, y = program.rows(data, "data")
    valid_xy = program.rows(valid, "valid") if valid is not None else None
    trainer = Trainer(program, config, objective)
    result = trainer.run(x, y, valid_xy)
    trainer.cluster.close()  # on success only: see Cluster.close
    return result


def _divergence(what: str) -> DivergenceError:
    return DivergenceError(f"{what}: training diverged. The last epoch's checkpoint, if any, is unchanged. Try a "
                           "smaller lr (or set divergence_factor=None to allow it)")


def _data_fingerprint(x) -> str:
    """A cheap fingerprint of the training rows: shape, dtype and a digest of up to 64 evenly
    spaced rows (a resume on other data of the same shape is refused)."""
    idx = torch.linspace(0, x.shape[0] - 1, min(64, x.shape[0])).round().long().unique()
    rows = x[idx]
    rows = rows.detach().cpu().contiguous() if isinstance(rows, torch.Tensor) else torch.as_tensor(rows)
    digest = hashlib.sha256(rows.flatten().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]  # any dtype's bytes
    return f"{tuple(x.shape)} {rows.dtype} {digest}"


def _buffers(objective: Objective) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The modules' buffers by checkpoint name: the persistent ones (what ``state_dict`` saves: running
    statistics, actnorm's flag, masks and orders), which the checkpoint carries beside the parameters; and
    digests of the others, configuration derived from the constructor's arguments (noise schedules,
    index tables), which the fingerprint holds."""
    persistent = objective.state_dict(keep_vars=True)
    buffers, digests = {}, {}
    for name, buffer in objective.named_buffers():
        if name in persistent:
            buffers[name] = buffer
        else:
            raw = buffer.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            digests[name] = f"{tuple(buffer.shape)} {buffer.dtype} {hashlib.sha256(raw).hexdigest()[:16]}"
    return buffers, digests


def _named(objective: Objective, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names: module paths, or ``pyro.param:<name>`` for plain Pyro parameters."""
    names = {id(p): n for n, p in objective.named_parameters()}
    store = pyro.get_param_store()
    return {(names.get(id(p)) or f"pyro.param:{store.param_name(p)}"): p for p in params}


def _find_non_finite(objective: Objective, params, x, y, scale: float) -> str | None:
    """Name the first parameter, gradient, sample or log-density that is not finite."""
    names = {id(p): n for n, p in _named(objective, params).items()}
    for p in params:
        if not torch.isfinite(p).all():
            return f"parameter {names.get(id(p), '?')!r}"
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"gradient of parameter {names.get(id(p), '?')!r}"
    with torch.no_grad(), poutine.block():
        guide_trace, model_trace = objective.program.trace(x, y, scale=scale)
    for where, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in sample_sites(trace):
            if not torch.isfinite(site["value"]).all():
                return f"value of site {site['name']!r} in the {where}"
            if not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                return f"log-density of site {site['name']!r} in the {where}"
    # nothing is non-finite on its own: a sum overflowed. Name the largest terms instead.
    sites = [(site["fn"].log_prob(site["value"]).abs().max().item(), f"log-density of site {site['name']!r} in the {where}")
             for where, trace in (("guide", guide_trace), ("model", model_trace)) for site in sample_sites(trace)]
    largest_site = max(sites, default=(0.0, "no site"))
    largest_param = max(((p.detach().abs().max().item(), names.get(id(p), "?")) for p in params if p.numel()),
                        default=(0.0, "?"))
    return (f"none on its own (a sum overflowed); the largest terms are the {largest_site[1]} "
            f"(|value| up to {largest_site[0]:.3g}) and parameter {largest_param[1]!r} (|value| up to "
            f"{largest_param[0]:.3g})")


@contextlib.contextmanager
def _swapped(params: list[torch.Tensor], values: list[torch.Tensor]):
    """Inside: ``params`` hold ``values``; their own values come back after (kept on their device: no round trip)."""
    trained = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, values)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, trained)


def _global_batches(order: torch.Tensor, batch_size: int, world_size: int) -> list[torch.Tensor]:
    """Minibatches of ``order``; with several ranks, a last batch too small to give every rank a
    row joins the one before it."""
    batches = list(order.split(batch_size))
    if world_size > 1 and len(batches) > 1 and len(batches[-1]) < world_size:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _stream(x, y, batches: list[torch.Tensor], device, num_workers: int):
    """The rows of each batch, in order: indexed directly, or prefetched by DataLoader workers
    (with pinned memory for a GPU) for a row source on disk."""
    if num_workers == 0 or isinstance(x, torch.Tensor):
        return (batch_rows(x, y, idx, device) for idx in batches)
    loader = DataLoader(_Rows(x, y), sampler=batches, batch_size=None, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    return ((xb.to(device, non_blocking=True), yb if yb is None else yb.to(device, non_blocking=True))
            for xb, yb in loader)


class _Rows(torch.utils.data.Dataset):
    """Rows ``idx`` of ``x`` and ``y`` per item: a batch sampler's unit for DataLoader workers."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __getitem__(self, idx):
        return self.x[idx], (self.y[idx] if self.y is not None else None)


def _progress_bar(show: bool, total: int, initial: int, desc: str):
    if not (show and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", leave=False, desc=desc)
