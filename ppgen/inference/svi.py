"""fit(): stochastic variational inference for every ppgen model and for plain Pyro programs."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ppgen.inference._programs import (
    Program,
    ScaleDataPlate,
    as_program,
    as_xy,
    batch_rows,
    call_args,
    log_weights,
    logmeanexp,
    max_plate_nesting,
    resolve_device,
    sample_sites,
)
from ppgen.inference.checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, save_atomic
from ppgen.inference.distributed import Cluster, join
from ppgen.models.base import at_least_float32

__all__ = ["fit", "FitResult", "NonFiniteLossError", "Objective", "ELBOS"]

ELBOS = ("trace", "meanfield", "enum", "graph", "iwae")
PRECISIONS = ("fp32", "bf16")


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; ``step`` and ``site`` say where."""

    def __init__(self, message: str, step: int, site: str | None):
        super().__init__(message)
        self.step = step
        self.site = site


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` did. ELBO figures are in nats per example (higher is better).

    Attributes
    ----------
    model, guide
        The trained model and guide (the guide is the autoguide ``fit`` built, if any).
    losses : list of float
        Negative ELBO estimate of every step, per example of the full data set.
    train_elbo, valid_elbo : list of float
        Per epoch: the mean training ELBO over the epoch's steps, and the validation ELBO
        (empty without ``valid``).
    epochs, steps : int
        Epochs and optimisation steps completed in total (across resumes).
    seconds, examples_per_second : float
        Wall time of this call and training throughput (rows per second of step time).
    stopped_early : bool
    best_epoch : int or None
        Epoch (1-based) of the best validation ELBO, whose parameters the model holds when
        early stopping was on.
    device : str
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
    stopped_early: bool
    best_epoch: int | None
    device: str


class Objective(nn.Module):
    """Negative ELBO of a minibatch, scaled to the full data set.

    An ``nn.Module`` owning the model's and guide's parameters, so a plain PyTorch optimiser
    (or ``DistributedDataParallel``) can drive it. ``forward(x, y=None, scale=None)`` returns
    a scalar tensor; ``scale`` defaults to ``data_size / len(x)``.
    """

    def __init__(self, program: Program, elbo: str = "trace", num_particles: int = 1, data_size: int = 1,
                 precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if elbo not in ELBOS:
            raise ValueError(f"elbo must be one of {ELBOS}, got {elbo!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        self.program = program
        self.owners = nn.ModuleList(program.modules)
        self.elbo_name = elbo
        self.num_particles = num_particles
        self.data_size = data_size
        vectorize = num_particles > 1 and elbo in ("trace", "meanfield", "graph", "enum")
        self._pyro_elbo = {
            "trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO,
            "enum": TraceEnum_ELBO, "graph": TraceGraph_ELBO,
        }.get(elbo, Trace_ELBO)(num_particles=num_particles, vectorize_particles=vectorize)
        self._nesting: int | None = None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        # bf16: the networks' matrix products run in bfloat16 (autocast); ppgen's models hand
        # float32 outputs to their distributions, so log-densities and the ELBO stay float32
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return at_least_float32(self._loss(x, y, scale))

    def _loss(self, x: torch.Tensor, y: torch.Tensor | None, scale: float | None) -> torch.Tensor:
        scale = self.data_size / x.shape[0] if scale is None else scale
        if self._nesting is None:
            self._nesting = max_plate_nesting(self.program, x, y)
            # Pyro counts the vectorised particle plate in max_plate_nesting
            self._pyro_elbo.max_plate_nesting = self._nesting + int(self._pyro_elbo.vectorize_particles)
        if self.elbo_name == "iwae":
            log_w = log_weights(self.program, x, y, self.num_particles, self._nesting)  # (K, B)
            return -scale * logmeanexp(log_w).sum()
        model = ScaleDataPlate(scale)(self.program.model)
        guide = ScaleDataPlate(scale)(self.program.guide)
        if self.elbo_name == "graph":
            # TraceGraph_ELBO has no differentiable_loss: take the loss value from the ELBO and
            # the gradient from its surrogate (which includes the score-function terms).
            elbo, surrogate = self._pyro_elbo._loss_and_surrogate_loss(model, guide, call_args(x, y), {})
            surrogate = torch.as_tensor(surrogate)
            return surrogate - surrogate.detach() - torch.as_tensor(elbo).detach()
        return self._pyro_elbo.differentiable_loss(model, guide, *call_args(x, y))


def fit(
    model,
    data,
    *,
    guide=None,
    elbo: str = "trace",
    num_particles: int = 1,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    valid=None,
    patience: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    strategy: str = "auto",
    num_workers: int = 0,
    precision: str = "fp32",
) -> FitResult:
    """Fit a generative model by stochastic variational inference (Adam on the negative ELBO).

    Parameters
    ----------
    model : GenerativeModel or callable
        A ppgen model, or a plain Pyro model function ``model(x[, y])`` whose observations sit
        in ``pyro.plate("data", len(x))``.
    data : Tensor (N, D), array, row source, or (x, y)
        Training rows (and labels or conditions ``y``, passed to the model as its second
        argument). ``ppgen.data.load_dataset`` output is accepted as it is. Data larger than
        memory: a :class:`ppgen.data.NpyRows` (or a ``numpy.load(..., mmap_mode="r")`` array,
        read the same way) or any ``torch.utils.data.Dataset`` of rows streams minibatches
        from disk; their rows are checked batch by batch.
    guide : None, callable or str
        The model's own guide (default), a guide function or module, or an autoguide name
        (``"auto_normal"``, ``"auto_delta"``, ...).
    elbo : {"trace", "meanfield", "enum", "graph", "iwae"}
        ``Trace_ELBO``, ``TraceMeanField_ELBO`` (analytic KL where known), ``TraceEnum_ELBO``
        (discrete latents summed out), ``TraceGraph_ELBO`` (score-function terms with
        Rao-Blackwellisation), or the importance-weighted bound of Burda et al. (2016) per
        example with ``num_particles`` samples.
    num_particles : int
        Samples per example (vectorised).
    epochs, batch_size, lr
        Passes over the data, rows per minibatch (a batch of all rows keeps their order, as local
        guides need), Adam learning rate. Each minibatch's ELBO is
        scaled by N / batch size inside the ``"data"`` plate only, so it estimates the full
        data set's ELBO without bias even with global latent variables.
    device : "auto", "cpu", "cuda", ...
        ``"auto"`` takes CUDA when available. The model is moved there.
    seed : int
        Seeds the sampling and the data order. Same seed, same result on the same device.
    valid : Tensor or (x, y), optional
        Held-out rows: their ELBO is recorded after every epoch.
    patience : int, optional
        With ``valid``, stop after this many epochs without a better validation ELBO and
        restore the parameters of the best epoch.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there after every epoch (atomically), when interrupted, and
        when the loss becomes non-finite.
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir``: the final parameters equal those
        of an uninterrupted run (on the same device).
    progress : bool
        Show a progress bar (only when stderr is a terminal; rank 0 only).
    strategy : {"auto", "single", "ddp"}
        Data-parallel training over a ``torch.distributed`` process group (see
        :mod:`ppgen.inference.distributed`): ``"auto"`` when launched by ``torchrun`` with more
        than one process. ``batch_size`` is then the global batch; only rank 0 writes
        checkpoints and shows progress, and every rank returns the same result.
    num_workers : int
        DataLoader worker processes that prefetch minibatches of a streamed row source.
    precision : {"fp32", "bf16"}
        ``"bf16"`` runs the networks' matrix products in bfloat16 (``torch.autocast``; fastest on
        GPUs with bf16 tensor cores) while the log-densities and the ELBO stay in float32.

    Returns
    -------
    FitResult

    Raises
    ------
    NonFiniteLossError
        When the loss or a gradient becomes NaN or infinite; the parameters keep their last
        finite values and the message names the step and the site.

    Examples
    --------
    >>> from ppgen.models import IndependentBernoulli
    >>> x = torch.bernoulli(torch.full((100, 3), 0.25), generator=torch.Generator().manual_seed(0))
    >>> result = fit(IndependentBernoulli(3), x, epochs=30, batch_size=100, lr=0.1, progress=False)
    >>> len(result.losses), result.epochs
    (30, 30)
    """
    _check_positive_int(epochs, "epochs")
    _check_positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if patience is not None:
        _check_positive_int(patience, "patience")
        if valid is None:
            raise ValueError("patience (early stopping) needs valid= data")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (where the checkpoint is)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")

    program = as_program(model, guide)
    x, y = as_xy(data, program, "data")
    valid_xy = as_xy(valid, program, "valid") if valid is not None else None
    device = resolve_device(device)
    cluster = join(strategy, device)
    result = _fit(program, model, x, y, valid_xy, cluster, cluster.device(device), elbo=elbo,
                  num_particles=num_particles, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  patience=patience, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                  num_workers=num_workers, precision=precision)
    cluster.close()  # on success only: see Cluster.close
    return result


def _fit(program: Program, model, x, y, valid_xy, cluster: Cluster, device: torch.device, *, elbo, num_particles,
         epochs, batch_size, lr, seed, patience, checkpoint_dir, resume, progress, num_workers,
         precision) -> FitResult:
    if batch_size < cluster.world_size:
        raise ValueError(f"batch_size ({batch_size}) is the global batch and must be at least the number "
                         f"of processes ({cluster.world_size})")
    program.to(device)
    n_rows = x.shape[0]
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint_path is not None and checkpoint_path.exists() and not resume:
        raise ValueError(f"{checkpoint_path} already exists; pass resume=True to continue that run, "
                         "or choose another checkpoint_dir")
    config = {"num_rows": n_rows, "batch_size": batch_size, "seed": seed, "elbo": elbo,
              "num_particles": num_particles, "world_size": cluster.world_size}

    start = time.perf_counter()
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with program.param_scope(), torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed + cluster.rank)  # each rank its own (reproducible) sampling noise
        objective = Objective(program, elbo, num_particles, n_rows, precision)
        first_batch = batch_rows(x, y, cluster.shard(torch.arange(min(batch_size, n_rows))), device)
        params = _collect_params(objective, *first_batch)
        if batch_size < n_rows:
            _refuse_minibatched_local_guide(program, *first_batch)
        if cluster.parallel and len(params) != len([p for p in objective.parameters() if p.requires_grad]):
            raise ValueError("strategy='ddp' synchronises module parameters only; this model has plain "
                             "pyro.param sites: write it as a GenerativeModel or a PyroModule")
        module = cluster.wrap(objective, device)  # DDP broadcasts rank 0's parameters here
        optimizer = torch.optim.Adam(params, lr=lr)
        state = _TrainState()
        if resume:
            state = _restore(checkpoint_path, objective, params, optimizer, config, cluster)
        if not cluster.is_main:
            checkpoint_path = None  # rank 0 writes; the others only take part in gathering state
        saver = _Saver(checkpoint_path, objective, params, optimizer, config, cluster)

        batches_per_epoch = len(_global_batches(torch.arange(n_rows), batch_size, cluster.world_size))
        bar = tqdm(total=epochs * batches_per_epoch, initial=state.step, unit="step", leave=False,
                   disable=not (progress and cluster.is_main and sys.stderr.isatty()), desc=_describe(program))
        step_seconds = 0.0
        rows_seen = 0
        step_rng = torch.get_rng_state()
        stopped_early = False
        try:
            for epoch in range(state.epoch, epochs):
                order = (torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
                         if batch_size < n_rows else torch.arange(n_rows))  # full batch: rows keep their place
                batches = _global_batches(order, batch_size, cluster.world_size)
                todo = [cluster.shard(idx) for idx in batches[state.batch:]]  # resumed mid-epoch: skip done ones
                for b, (idx, (xb, yb)) in enumerate(zip(todo, _stream(x, y, todo, device, num_workers)),
                                                    start=state.batch):
                    if not isinstance(x, torch.Tensor):
                        xb = program.check_data(xb, f"data rows {idx[:3].tolist()}...")
                    step_rng = torch.get_rng_state()  # an interrupted step restarts from here
                    t0 = time.perf_counter()
                    scale = cluster.world_size * n_rows / len(batches[b])  # DDP averages over ranks
                    loss_value = _step(module, optimizer, params, xb, yb, scale, state, saver, epoch, b)
                    step_seconds += time.perf_counter() - t0
                    rows_seen += len(idx)
                    state.losses.append(loss_value / n_rows)
                    state.epoch_losses.append(loss_value / n_rows)
                    state.step += 1
                    state.batch = b + 1
                    bar.update()
                    if state.step % 25 == 0:
                        bar.set_postfix(elbo=f"{-loss_value / n_rows:.3f}", refresh=False)
                state.train_elbo.append(-sum(state.epoch_losses) / len(state.epoch_losses))
                state.epoch_losses = []
                state.epoch, state.batch = epoch + 1, 0
                if valid_xy is not None:
                    state.valid_elbo.append(_evaluate(objective, *valid_xy, batch_size, device, seed + epoch + 1,
                                                      cluster))
                    if state.best_elbo is None or state.valid_elbo[-1] > state.best_elbo:
                        state.best_elbo, state.best_epoch = state.valid_elbo[-1], epoch + 1
                        if patience is not None:
                            state.best_state = _state_dicts(objective, params)
                    elif patience is not None and epoch + 1 - state.best_epoch >= patience:
                        stopped_early = True
                saver.save(state)
                if stopped_early:
                    break
        except KeyboardInterrupt:
            if not cluster.parallel:  # with several ranks, the epoch checkpoints are the resume points
                saver.save(state, rng=step_rng)
            raise
        finally:
            bar.close()
        if patience is not None and state.best_state is not None:
            _load_state_dicts(objective, params, state.best_state)

    return FitResult(
        model=model,
        guide=program.guide_module if program.guide_module is not None else program.guide,
        losses=state.losses,
        train_elbo=state.train_elbo,
        valid_elbo=state.valid_elbo,
        epochs=state.epoch,
        steps=state.step,
        seconds=time.perf_counter() - start,
        examples_per_second=cluster.world_size * rows_seen / step_seconds if step_seconds > 0 else float("nan"),
        stopped_early=stopped_early,
        best_epoch=state.best_epoch,
        device=str(device),
    )


@dataclasses.dataclass
class _TrainState:
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


def _step(module, optimizer, params, xb, yb, scale, state, saver, epoch, b) -> float:
    """One optimisation step; refuses to apply a non-finite loss or gradient."""
    rng = torch.get_rng_state()
    loss = module(xb, yb, scale=scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP, the gradients are averaged over the ranks here
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    # every rank gets the mean loss and the same (synchronised) gradient norm
    loss_value, norm_value = saver.cluster.mean(torch.stack([loss.detach(), grad_norm.to(loss.dtype)])).tolist()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        saver.save(state)
        torch.set_rng_state(rng)
        objective = module.module if isinstance(module, DistributedDataParallel) else module
        site = _find_non_finite(objective, params, xb, yb, scale)
        what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else \
            f"the gradient norm became {norm_value} (loss {loss_value:.6g})"
        saved = f"; a checkpoint of that state is in {saver.path}" if saver.path else ""
        raise NonFiniteLossError(
            f"{what} at step {state.step + 1} (epoch {epoch + 1}, batch {b + 1}); first non-finite: "
            f"{site or 'not found when re-run'}. The parameters are kept as they were after step "
            f"{state.step}{saved}. Try a smaller lr, or check the data and the model's scales.",
            step=state.step + 1, site=site)
    optimizer.step()
    return loss_value


def _find_non_finite(objective: Objective, params, x, y, scale: float) -> str | None:
    """Name the first parameter, gradient, sample or log-density that is not finite."""
    names = {id(p): n for n, p in objective.owners.named_parameters()}
    for p in params:
        if not torch.isfinite(p).all():
            return f"parameter {names.get(id(p), '?')!r}"
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"gradient of parameter {names.get(id(p), '?')!r}"
    program = objective.program
    model, guide = ScaleDataPlate(scale)(program.model), ScaleDataPlate(scale)(program.guide)
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*call_args(x, y))
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*call_args(x, y))
    for where, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in sample_sites(trace):
            if not torch.isfinite(site["value"]).all():
                return f"value of site {site['name']!r} in the {where}"
            if not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                return f"log-density of site {site['name']!r} in the {where}"
    return None


def _collect_params(objective: Objective, x, y) -> list[torch.Tensor]:
    """The tensors to optimise: the modules' parameters, then plain ``pyro.param`` sites.

    Runs the objective once so that lazily created parameters (autoguides, ``pyro.param``)
    exist before the optimiser is built.
    """
    with poutine.trace(param_only=True) as capture:
        objective(x, y)
    params = [p for p in objective.parameters() if p.requires_grad]
    known = {id(p) for p in params}
    for site in capture.trace.nodes.values():
        value = site["value"]
        unconstrained = value.unconstrained() if hasattr(value, "unconstrained") else value
        if id(unconstrained) not in known and unconstrained.requires_grad:
            known.add(id(unconstrained))
            params.append(unconstrained)
    if not params:
        raise ValueError("the model and guide have no parameters to fit")
    return params


def _refuse_minibatched_local_guide(program: Program, x, y) -> None:
    """An autoguide with a latent per row keeps one parameter per row *position*; shuffled
    minibatches would pair those parameters with different rows at every step."""
    if not isinstance(program.guide_module, AutoGuide):
        return
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(program.guide).get_trace(*call_args(x, y))
    for site in sample_sites(trace):
        if any(f.name == "data" and f.size == f.full_size for f in site["cond_indep_stack"]):
            raise ValueError(
                f"the autoguide has a local latent {site['name']!r} per row, which minibatches cannot "
                "train: use batch_size >= the number of rows, an amortised guide (a GenerativeModel), or "
                "pyro.plate('data', N, subsample=...) in the model")


def _evaluate(objective: Objective, x, y, batch_size: int, device, seed: int, cluster: Cluster) -> float:
    """ELBO per example on held-out rows (with a fixed seed, so it does not disturb training);
    each rank scores its share of every batch and the totals are summed."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed + cluster.rank)
        for idx in torch.arange(x.shape[0]).split(batch_size):
            idx = cluster.shard(idx)
            if len(idx):
                total += objective(*batch_rows(x, y, idx, device), scale=1.0).double()
    return -cluster.sum(total).item() / x.shape[0]


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


def _describe(program: Program) -> str:
    if program.generative_model is not None:
        return f"fit {type(program.generative_model).__name__}"
    return f"fit {getattr(program.model, '__name__', 'model')}"


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --- checkpoints ------------------------------------------------------------------------------

def _param_names(objective: Objective, params) -> list[str]:
    names = {id(p): n for n, p in objective.owners.named_parameters()}
    store = pyro.get_param_store()
    return [names.get(id(p)) or f"pyro.param:{store.param_name(p)}" for p in params]


def _state_dicts(objective: Objective, params) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().cpu() for name, p in zip(_param_names(objective, params), params)}


def _load_state_dicts(objective: Objective, params, saved: dict[str, torch.Tensor]) -> None:
    names = _param_names(objective, params)
    missing = [n for n in names if n not in saved]
    if missing or len(saved) != len(names):
        raise ValueError(f"checkpoint parameters do not match the model: missing {missing[:5]}, "
                         f"unexpected {sorted(set(saved) - set(names))[:5]}")
    with torch.no_grad():
        for name, p in zip(names, params):
            if saved[name].shape != p.shape:
                raise ValueError(f"checkpoint parameter {name!r} has shape {tuple(saved[name].shape)}, "
                                 f"the model's has {tuple(p.shape)}")
            p.copy_(saved[name])


@dataclasses.dataclass
class _Saver:
    """Writes checkpoints (rank 0) holding every rank's random-number state."""

    path: Path | None
    objective: Objective
    params: list
    optimizer: torch.optim.Optimizer
    config: dict
    cluster: Cluster

    def save(self, state: _TrainState, rng: torch.Tensor | None = None) -> None:
        rngs = self.cluster.gather((torch.get_rng_state() if rng is None else rng,
                                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []))
        if self.path is None:
            return
        payload = {
            "format": FORMAT,
            "config": self.config,
            "params": _state_dicts(self.objective, self.params),
            "optimizer": self.optimizer.state_dict(),
            "rng": [cpu for cpu, _ in rngs],
            "cuda_rng": [cuda for _, cuda in rngs],
            "state": {k: v for k, v in dataclasses.asdict(state).items() if k != "best_state"},
            "best_state": state.best_state,
        }
        save_atomic(payload, self.path)


def _restore(path: Path, objective, params, optimizer, config, cluster: Cluster) -> _TrainState:
    payload = load_checkpoint(path)
    for key, value in config.items():
        if payload["config"].get(key, 1 if key == "world_size" else None) != value:
            raise ValueError(f"cannot resume from {path}: it was written with {key}="
                             f"{payload['config'].get(key)!r}, this call has {key}={value!r}")
    _load_state_dicts(objective, params, payload["params"])
    optimizer.load_state_dict(copy.deepcopy(payload["optimizer"]))
    torch.set_rng_state(payload["rng"][cluster.rank])
    if payload["cuda_rng"][cluster.rank]:
        torch.cuda.set_rng_state_all(payload["cuda_rng"][cluster.rank])
    state = _TrainState(**payload["state"])
    state.best_state = payload["best_state"]
    return state
