"""Checkpoints that can be trusted: written atomically (a temporary name, flushed, then renamed
into place), verified by a SHA-256 digest on load, fingerprinted with what the run depends on,
and guarded by a lock file so that two fits never share a folder."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import secrets
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ppgen.models.base import GenerativeModel

__all__ = ["save_atomic", "write_json_atomic", "save_checkpoint", "load_checkpoint", "load_fitted", "export_fitted",
           "Checkpointer",
           "RunLock", "check_folder", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "ppgen-checkpoint-3"
# the fingerprint's keys for the model's configuration, compared by name and skipped where a checkpoint
# lacks them (one written before they were recorded)
MODEL_KEYS = ("model_arguments", "model_legacy_arguments", "model_buffers", "objective_arguments")


def _replace_atomically(path: str | os.PathLike, write, mode: str) -> Path:
    """Write through ``write(file)`` to a temporary name beside ``path``, flushed, then renamed into
    place: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never another writer's file; mode 0o666 less the umask, as for a file written directly
    # (mkstemp would make it private to its owner)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one."""
    return _replace_atomically(path, lambda f: torch.save(obj, f), "wb")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` as indented JSON in ``path``, written atomically like :func:`save_atomic`."""
    def write(f):
        json.dump(obj, f, indent=2)  # streams: a value it cannot encode stops it halfway through the file
        f.write("\n")

    return _replace_atomically(path, write, "w")


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically, with a SHA-256 digest of its contents that
    :func:`load_checkpoint` verifies: a flipped byte anywhere is refused, not loaded."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    envelope = {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(),
                "body": torch.frombuffer(bytearray(body), dtype=torch.uint8)}
    return save_atomic(envelope, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`ppgen.fit` (tensors and plain values only).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is corrupt (its
    digest does not match), truncated, or not a ppgen checkpoint; never unpickles arbitrary
    objects (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")

    def unreadable(err) -> ValueError:
        return ValueError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'no detail'})")

    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise unreadable(err) from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT or "body" not in envelope:
        raise ValueError(f"{path} is not a ppgen checkpoint (expected format {FORMAT!r})")
    body = envelope["body"].numpy().tobytes()
    if hashlib.sha256(body).hexdigest() != envelope.get("sha256"):
        raise ValueError(f"checkpoint {path} is corrupt: its contents do not match their SHA-256 digest")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise unreadable(err) from None


def load_fitted(model, checkpoint_dir: str | os.PathLike, *, averaged: bool = True):
    """Load into ``model`` what a :func:`ppgen.fit` run wrote into ``checkpoint_dir``: its parameters (the moving
    averages, where the run kept them with ``ema`` and ``averaged`` is True; else the trained parameters) and
    its persistent buffers (actnorm's initialised flag, running statistics). Returns ``model``.

    ``model`` is a :class:`~ppgen.models.base.GenerativeModel` built with the run's arguments (``seed`` aside:
    the checkpoint replaces what it sets). Refused, naming the difference: a checkpoint of another model class,
    one built with other arguments, or one whose parameters differ in name or shape. Nothing is loaded then.

    Examples
    --------
    >>> ppgen.fit(model, x, epochs=100, checkpoint_dir="runs/glow", ema=0.999)   # doctest: +SKIP
    >>> later = ppgen.load_fitted(ppgen.Glow(784), "runs/glow")                   # doctest: +SKIP
    """
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"load_fitted loads into a ppgen GenerativeModel, got {type(model).__name__}")
    path, payload, source = _fitted(checkpoint_dir, averaged)
    config, name = payload.get("config", {}), type(model).__name__
    if config.get("model") not in (None, name):
        raise ValueError(f"{path} was written by a fit of {config['model']}, not of {name}")
    differing = _differing_argument(config.get("model_arguments"), dict(model.init_arguments), model.legacy_arguments)
    if differing is not None:
        key, before, now = differing
        raise ValueError(f"{path} was written by a {name} with {key}={before!r}, this one has {key}={now!r}")
    prefix = "owners.0."  # the objective's first module: the model (its own guide inside it)

    def own(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}

    _copy_into(dict(model.named_parameters()), own(source), f"checkpoint {path} parameter")  # names, shapes checked
    model.load_state_dict(own(payload.get("buffers", {})), strict=False)  # the persistent buffers
    return model


def _fitted(checkpoint_dir: str | os.PathLike, averaged: bool) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A fit run's checkpoint (its folder, or the file itself), its payload, and the parameters to load from it:
    the moving averages where the run kept them and ``averaged`` is True, else the trained parameters."""
    folder = Path(checkpoint_dir)
    path = folder / CHECKPOINT_NAME if folder.is_dir() else folder
    payload = load_checkpoint(path)
    return path, payload, payload["averages"] if averaged and "averages" in payload else payload["params"]


def export_fitted(checkpoint_dir: str | os.PathLike, path: str | os.PathLike, *, averaged: bool = True,
                  dtype: torch.dtype | None = None) -> Path:
    """Write what :func:`load_fitted` needs from a :func:`ppgen.fit` run in ``checkpoint_dir`` to the file
    ``path``: the model's class and constructor arguments, its parameters (the moving averages where the run kept
    them and ``averaged`` is True) and persistent buffers; not the optimiser, the data order or the trained
    parameters beside the averages, so it cannot be resumed, only loaded. ``dtype`` (``torch.float16``: half the
    size) stores the floating parameters at that precision; :func:`load_fitted` casts them back to the model's.
    Written atomically with a SHA-256 digest, as a checkpoint is. Returns the path.

    Examples
    --------
    >>> ppgen.export_fitted("runs/glow", "glow.pt", dtype=torch.float16)        # doctest: +SKIP
    >>> glow = ppgen.load_fitted(ppgen.Glow(784), "glow.pt")                     # doctest: +SKIP
    """
    _, payload, params = _fitted(checkpoint_dir, averaged)
    config = payload.get("config", {})
    if "model" not in config:
        raise ValueError(f"{checkpoint_dir} holds no model name: not a checkpoint written by ppgen.fit")

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    exported = {"config": {"model": config["model"], "model_arguments": config.get("model_arguments"),
                           "exported_from": str(Path(checkpoint_dir)), "averaged": params is payload.get("averages")},
                "params": {name: stored(value) for name, value in params.items()},
                "buffers": payload.get("buffers", {})}
    return save_checkpoint(exported, path)


class RunLock:
    """A lock file ``.lock`` in a checkpoint folder, so that two fits never write one folder.

    Created exclusively (``O_EXCL``) with the owner's process id; a lock whose process is gone
    (a killed run) is taken over. Released by :meth:`release`.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.held = False

    def acquire(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise ValueError(f"{self.path.parent} is in use by another fit (process {owner}); wait for it, "
                                     "or choose another checkpoint_dir") from None
                self.path.unlink(missing_ok=True)  # left by a run that was killed: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise ValueError(f"could not take the lock {self.path}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_folder(folder: Path) -> None:
    """Refuse, before training, a checkpoint folder that is a file, lies under a file, or is not writable."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"checkpoint_dir {folder} cannot be used: {parent} is a file, not a folder")
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as err:
        raise ValueError(f"checkpoint_dir {folder} is not writable ({err.strerror or err})") from None


class Checkpointer:
    """Saves and restores a training run: named parameters, optimiser states, every rank's
    random-number state, the trainer's counters and history (a plain dict), the modules' buffers
    (running statistics, actnorm's flag) and the objective's own state
    (:meth:`~ppgen.models.objective.Objective.checkpoint_state`: persistent chains, a replay buffer).

    Buffers and the objective's state change inside a step, before its update is applied, so what is
    saved is the copy :meth:`commit` took at the last committed step or epoch. ``path`` None keeps
    nothing (the gathering of random states still runs on every rank, as it is a collective). Only
    rank 0 is given a path.

    ``config`` is the run's fingerprint; a resume must match it. Its keys ``model_arguments`` (the
    model's ``init_arguments``), ``model_buffers`` (digests of the buffers that are configuration) and
    ``objective_arguments`` (the objective's ``init_arguments``) are compared by name; a checkpoint without
    them (written before they were recorded) is not refused for their sake, and one without ``buffers`` or
    ``objective`` restores none. A model argument a checkpoint does not record counts as written with its
    value in ``model_legacy_arguments`` (the model's ``legacy_arguments``), if there.
    """

    def __init__(self, path: Path | None, params: dict[str, torch.Tensor], optimizers: dict, config: dict,
                 cluster, settings: dict | None = None, buffers: dict[str, torch.Tensor] | None = None,
                 objective=None, averages: dict[str, torch.Tensor] | None = None):
        self.path, self.params, self.optimizers, self.config, self.cluster = path, params, optimizers, config, cluster
        self.settings = settings or {}  # what a resume may change and report (lr, weight_decay, epochs, patience)
        self.buffers = buffers or {}
        self.averages = averages  # fit(ema=...)'s moving averages of the parameters, by parameter name
        self.objective = objective
        self.committed: dict[str, Any] = {}
        self.commit()

    def commit(self) -> None:
        """Copy the buffers and the objective's state as they are now: what :meth:`save` writes, until
        the next commit. The trainer calls it when it commits a step or an epoch."""
        state = self.objective.checkpoint_state() if self.objective is not None else {}
        self.committed = {"buffers": {name: b.detach().clone() for name, b in self.buffers.items()},
                          "objective": _map_tensors(state, lambda t: t.detach().clone()),
                          "averages": None if self.averages is None else
                          {name: a.detach().clone() for name, a in self.averages.items()}}

    def snapshot(self, averaged: bool = False) -> dict[str, torch.Tensor]:
        """A copy of the parameters (``averaged``: of their moving averages, where kept) on the CPU."""
        source = self.averages if averaged and self.averages is not None else self.params
        return {name: p.detach().clone().cpu() for name, p in source.items()}

    def load_params(self, saved: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        _copy_into(self.params, saved, f"{source} parameter")

    def save(self, state: dict, rng: torch.Tensor | None = None) -> None:
        rngs = self.cluster.gather((torch.get_rng_state() if rng is None else rng,
                                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []))
        if self.path is None:
            return
        payload = {
            "config": self.config,
            "settings": self.settings,
            "params": self.snapshot(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "rng": [cpu for cpu, _ in rngs],
            "cuda_rng": [cuda for _, cuda in rngs],
            "state": state,
            "buffers": _map_tensors(self.committed["buffers"], torch.Tensor.cpu),
            "objective": _map_tensors(self.committed["objective"], torch.Tensor.cpu),
        }
        if self.committed["averages"] is not None:
            payload["averages"] = _map_tensors(self.committed["averages"], torch.Tensor.cpu)
        save_checkpoint(payload, self.path)

    def restore(self) -> tuple[dict, list[str]]:
        """Load the checkpoint at ``path`` into the parameters, optimisers, buffers, the objective's
        state and the RNG. Returns the trainer's state dict and the settings this call changed (lr,
        weight_decay, epochs, patience: applied).
        Refuses a checkpoint of another run (its fingerprint differs: other data, settings, or a model
        built with other arguments), an incomplete one, and one holding non-finite parameters, each
        naming what is wrong."""
        payload = load_checkpoint(self.path)
        for key in ("config", "settings", "params", "optimizers", "rng", "cuda_rng", "state"):
            if key not in payload:
                raise ValueError(f"checkpoint {self.path} lacks {key!r}: it is incomplete")
        written = {"optimizer": "adam", **payload["config"]}  # checkpoints older than the choice used Adam
        if written.get("model") == self.config.get("model"):  # the same class: name the argument that differs
            self._refuse_another_model(written)
        for key, value in self.config.items():
            if key not in MODEL_KEYS and written.get(key) != value:
                raise ValueError(f"cannot resume from {self.path}: it was written with {key}="
                                 f"{written.get(key)!r}, this call has {key}={value!r}")
        for name, value in payload["params"].items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"checkpoint {self.path} holds non-finite values in parameter {name!r}; "
                                 "resume from an earlier checkpoint or start a new run")
        self.load_params(payload["params"], f"checkpoint {self.path}")
        self._load_buffers(payload.get("buffers", {}))
        started_averages = self.averages is not None and "averages" not in payload
        if self.averages is not None:  # none saved: they start at the checkpoint's parameters
            _copy_into(self.averages, payload.get("averages", payload["params"]), f"checkpoint {self.path} average")
        if self.objective is not None and payload.get("objective"):
            self.objective.load_checkpoint_state(payload["objective"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(copy.deepcopy(payload["optimizers"][name]))
        before = {"weight_decay": 0.0, **payload["settings"]}  # checkpoints older than weight_decay had none
        changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in self.settings.items() if before.get(k) != v]
        if started_averages:
            changed.append("ema: moving averages started at the checkpoint's parameters")
        for opt in self.optimizers.values():  # load_state_dict restored the saved lr and weight decay
            for group in opt.param_groups:
                group.update({k: v for k, v in self.settings.items() if k in ("lr", "weight_decay")})
        rank = self.cluster.rank
        torch.set_rng_state(payload["rng"][rank])
        if payload["cuda_rng"][rank]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"][rank])
        self.commit()
        return payload["state"], changed

    def _refuse_another_model(self, written: dict) -> None:
        """Refuse a checkpoint whose model was built with other arguments (``seed`` aside: the checkpoint
        replaces what it sets), holds other configuration buffers, or was trained by an objective with other
        settings; absent on either side: unknown."""
        before, now = written.get("model_arguments"), self.config.get("model_arguments")
        differing = _differing_argument(before, now, self.config.get("model_legacy_arguments"))
        if differing is not None:
            name, was, value = differing
            raise ValueError(f"cannot resume from {self.path}: it was written with {name}={was!r}, "
                             f"this model has {name}={value!r}")
        trained, training = written.get("objective_arguments"), self.config.get("objective_arguments")
        if trained and training:  # empty: an objective of a class that records nothing
            for name, value in training.items():
                if name != "precision" and name in trained and trained[name] != value:
                    raise ValueError(f"cannot resume from {self.path}: it was trained by {trained.get('objective')} "
                                     f"with {name}={trained[name]!r}, this call's objective has {name}={value!r}")
        digests, ours = written.get("model_buffers"), self.config.get("model_buffers")
        if digests is not None and ours is not None and digests != ours:
            name = min(n for n in set(digests) | set(ours) if digests.get(n) != ours.get(n))
            seeds = "" if before is None or now is None or before.get("seed") == now.get("seed") else \
                f"; it was built with seed={before.get('seed')!r}, this model with seed={now.get('seed')!r}"
            raise ValueError(f"cannot resume from {self.path}: it was written by a model whose buffer {name!r} was "
                             f"{digests.get(name, 'absent')}, this model's is {ours.get(name, 'absent')} (another "
                             f"configuration{seeds})")

    def _load_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        """Copy the saved buffers into the model's (none saved: a checkpoint from before they were)."""
        if saved:
            _copy_into(self.buffers, saved, f"checkpoint {self.path} buffer")


def _differing_argument(written: dict | None, now: dict | None,
                        legacy: Mapping[str, Any] | None = None) -> tuple[str, Any, Any] | None:
    """The first constructor argument (name, written, now) on which a checkpoint's model and this one differ,
    ``seed`` aside (the checkpoint replaces what it sets); None where they agree or either is unknown. An
    argument the checkpoint does not record counts as written with its value in ``legacy`` (the model class's
    ``legacy_arguments``: arguments added later, and what models built before behaved as), else as unknown."""
    if written is None or now is None:
        return None
    written = {**(legacy or {}), **written}
    return next(((name, written[name], value) for name, value in now.items()
                 if name != "seed" and name in written and written[name] != value), None)


def _copy_into(targets: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``saved`` into the tensors ``targets`` by name, refusing (naming ``what``: "checkpoint X
    parameter") other names or shapes before anything is copied."""
    missing = [n for n in targets if n not in saved]
    if missing or len(saved) != len(targets):
        raise ValueError(f"{what}s do not match the model: missing {missing[:5]}, "
                         f"unexpected {sorted(set(saved) - set(targets))[:5]}")
    for name, target in targets.items():
        if saved[name].shape != target.shape:
            raise ValueError(f"{what} {name!r} has shape {tuple(saved[name].shape)}, the model's has "
                             f"{tuple(target.shape)}")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(saved[name])


def _map_tensors(value, fn):
    """``value`` (tensors and plain values, in dicts and lists) with ``fn`` applied to every tensor."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value
