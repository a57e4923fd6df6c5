"""Atomic checkpoint files: written to a temporary name, flushed, then renamed into place."""

from __future__ import annotations

import copy
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic", "load_checkpoint", "Checkpointer", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "ppgen-checkpoint-2"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`ppgen.fit` (tensors and plain values only).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is corrupt or
    not a ppgen checkpoint; never unpickles arbitrary objects (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ppgen checkpoint (expected format {FORMAT!r})")
    return payload


class Checkpointer:
    """Saves and restores a training run: named parameters, optimiser states, every rank's
    random-number state and the trainer's counters and history (a plain dict).

    ``path`` None keeps nothing (the gathering of random states still runs on every rank, as it
    is a collective). Only rank 0 is given a path.
    """

    def __init__(self, path: Path | None, params: dict[str, torch.Tensor], optimizers: dict, config: dict,
                 cluster):
        self.path, self.params, self.optimizers, self.config, self.cluster = path, params, optimizers, config, cluster

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the parameters on the CPU."""
        return {name: p.detach().clone().cpu() for name, p in self.params.items()}

    def load_params(self, saved: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        missing = [n for n in self.params if n not in saved]
        if missing or len(saved) != len(self.params):
            raise ValueError(f"{source} parameters do not match the model: missing {missing[:5]}, "
                             f"unexpected {sorted(set(saved) - set(self.params))[:5]}")
        with torch.no_grad():
            for name, p in self.params.items():
                if saved[name].shape != p.shape:
                    raise ValueError(f"{source} parameter {name!r} has shape {tuple(saved[name].shape)}, "
                                     f"the model's has {tuple(p.shape)}")
                p.copy_(saved[name])

    def save(self, state: dict, rng: torch.Tensor | None = None) -> None:
        rngs = self.cluster.gather((torch.get_rng_state() if rng is None else rng,
                                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []))
        if self.path is None:
            return
        payload = {
            "format": FORMAT,
            "config": self.config,
            "params": self.snapshot(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "rng": [cpu for cpu, _ in rngs],
            "cuda_rng": [cuda for _, cuda in rngs],
            "state": state,
        }
        save_atomic(payload, self.path)

    def restore(self) -> dict:
        """Load the checkpoint at ``path`` into the parameters, optimisers and RNG; return the
        trainer's state dict. Refuses a checkpoint written with other settings."""
        payload = load_checkpoint(self.path)
        for key in ("config", "params", "optimizers", "rng", "cuda_rng", "state"):
            if key not in payload:
                raise ValueError(f"checkpoint {self.path} lacks {key!r}: it is incomplete")
        for key, value in self.config.items():
            if payload["config"].get(key) != value:
                raise ValueError(f"cannot resume from {self.path}: it was written with {key}="
                                 f"{payload['config'].get(key)!r}, this call has {key}={value!r}")
        self.load_params(payload["params"], f"checkpoint {self.path}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(copy.deepcopy(payload["optimizers"][name]))
        rank = self.cluster.rank
        torch.set_rng_state(payload["rng"][rank])
        if payload["cuda_rng"][rank]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"][rank])
        return payload["state"]
