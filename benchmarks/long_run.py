"""A long training run that survives any stop, for the benchmarks' ``cpu-long`` presets.

A run folder holds ``fit``'s checkpoint (``checkpoint/``) and ``curve.json``: the run's settings
and one row per finished epoch, written atomically after each, with the wall and CPU seconds spent
so far over every call. Calling the same command again continues where the last call stopped: the
settings must match the folder's (a run is never silently continued with others), the epochs
already in the curve are skipped, and ``fit(resume=True)`` restores parameters, optimiser and
random state from the checkpoint.

    run = LongRun(folder, config)                  # config: a JSON-able dict with "epochs"
    for epoch in run.epochs(max_minutes):          # the epochs of this call within its budget
        result = ppgen.fit(model, rows, epochs=epoch, lr=scheduled_lr(epoch, config), resume=True,
                           checkpoint_dir=run.checkpoint_dir, ...)
        run.record({"epoch": epoch, ...})          # adds the seconds; writes curve.json
    run.report()                                   # status, epochs, hours, for a results file
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ppgen.inference.checkpoint import load_fitted, save_atomic, write_json_atomic

# fit's checkpoint_minutes for a long run: an epoch of an hour (a PixelCNN's, a Transformer's on one thread) stopped
# without warning (the machine taken back) loses at most this much
CHECKPOINT_MINUTES = 10.0


def scheduled_lr(epoch: int, cfg: dict) -> float:
    """The learning rate of ``epoch`` (1, 2, ...) of a long run planned for E = ``cfg["epochs"]`` epochs:
    lr e / W for the first W = ``cfg["warmup_epochs"]``, then lr (0.1 + 0.45 (1 + cos(pi (e - W) / (E - W)))),
    a half cosine from lr down to lr / 10 at the last epoch."""
    lr, warmup, epochs = cfg["lr"], cfg["warmup_epochs"], cfg["epochs"]
    if epoch <= warmup:
        return lr * epoch / warmup
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))))


def budgeted_epochs(done: int, total: int, max_minutes: float) -> Iterator[int]:
    """The epochs done + 1 .. total of this call: it stops before an epoch that would end past
    ``max_minutes`` at the pace so far (at least one epoch runs, none when ``max_minutes <= 0``)."""
    start = time.perf_counter()
    for epoch in range(done + 1, total + 1):
        elapsed = time.perf_counter() - start
        if max_minutes <= 0 or (epoch > done + 1 and elapsed * (epoch - done) / (epoch - done - 1) > max_minutes * 60):
            return
        yield epoch


class LongRun:
    """The run folder ``folder`` of a run with settings ``config`` (a JSON-able dict with ``"epochs"``,
    the planned number): created if new, continued if its ``curve.json`` has the same settings,
    refused with a SystemExit naming both if it has others."""

    def __init__(self, folder: Path, config: dict):
        self.folder, self.config = Path(folder), json.loads(json.dumps(config))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.curve_path = self.folder / "curve.json"
        if self.curve_path.exists():
            self.curve = json.loads(self.curve_path.read_text())
            if self.curve["config"] != self.config:
                raise SystemExit(f"{self.curve_path} was written with the settings {self.curve['config']}, but this "
                                 f"run's are {self.config}: continue with those settings, or start a new run in "
                                 "another folder")
        else:
            self.curve = {"config": self.config, "epochs": []}
        self.done_before = len(self.curve["epochs"])
        last = self.rows[-1] if self.rows else {}
        self._seconds, self._cpu_seconds = last.get("seconds", 0.0), last.get("cpu_seconds", 0.0)
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / "checkpoint"

    @property
    def rows(self) -> list[dict]:
        """The curve: one dict per finished epoch, oldest first."""
        return self.curve["epochs"]

    @property
    def planned(self) -> int:
        return self.config["epochs"]

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.planned

    @property
    def trained_now(self) -> bool:
        """Whether this call trained an epoch (if not, the model still has to be loaded from the checkpoint)."""
        return len(self.rows) > self.done_before

    def epochs(self, max_minutes: float) -> Iterator[int]:
        """The epochs this call trains, within ``max_minutes`` (:func:`budgeted_epochs`)."""
        return budgeted_epochs(len(self.rows), self.planned, max_minutes)

    def record(self, row: dict) -> dict:
        """Append ``row`` (with ``"epoch"``) to the curve with the wall and CPU seconds spent since the run began,
        and write the curve."""
        row = {**row, "seconds": round(self._seconds + time.perf_counter() - self._start, 1),
               "cpu_seconds": round(self._cpu_seconds + time.process_time() - self._cpu_start, 1)}
        self.rows.append(row)
        write_json_atomic(self.curve, self.curve_path)
        return row

    def report(self) -> dict:
        """What a results file says of the run so far: status, epochs, wall and CPU hours, settings."""
        last = self.rows[-1] if self.rows else {"seconds": 0.0, "cpu_seconds": 0.0}
        return {"status": "complete" if self.complete else "partial: stopped by the time budget",
                "epochs": len(self.rows), "planned_epochs": self.planned,
                "train_hours": round(last["seconds"] / 3600, 2), "cpu_hours": round(last.get("cpu_seconds", 0) / 3600, 2),
                "config": self.config}

    def result_path(self) -> Path:
        """Where the evaluation is kept: ``result.json`` once complete, ``result-epochN.json`` for the checkpoint
        as it stands."""
        return self.folder / ("result.json" if self.complete else f"result-epoch{len(self.rows)}.json")

    def pieces(self, name: str, count: int, compute: Callable[[int], torch.Tensor]) -> list[torch.Tensor]:
        """``[compute(k) for k in range(count)]``, each piece written (atomically) beside :meth:`result_path`, in
        ``<result>-pieces/<name>/<k>.pt``, as soon as it is computed, and read from there when it is: an
        evaluation of hours stopped part way goes on where it stopped, with the same figures."""
        folder = self.folder / f"{self.result_path().stem}-pieces" / name
        folder.mkdir(parents=True, exist_ok=True)
        done = []
        for k in range(count):
            path = folder / f"{k}.pt"
            if not path.exists():
                save_atomic(compute(k), path)
            done.append(torch.load(path))
        return done


def save_grid(images: torch.Tensor, path: Path, *, rows: int | None = None) -> None:
    """Write 28x28 images (N, 784), values in [0, 1], as one PNG grid, ``rows`` rows (default: square),
    dark digits on white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows or int(len(images) ** 0.5)
    cols = len(images) // rows
    grid = images[: rows * cols].reshape(rows, cols, 28, 28).permute(0, 2, 1, 3).reshape(rows * 28, cols * 28)
    plt.imsave(path, grid.detach().cpu().clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)


class RandomRows:
    """``rows`` rows drawn uniformly, with replacement, from ``x`` (N, D) as ``fit``'s training rows: each indexed
    row is drawn afresh from torch's global generator (as :class:`ppgen.data.DynamicBinarization` draws its
    pixels), which ``fit`` seeds and checkpoints. An epoch is then a few minutes of training on any data size, and
    a resumed run draws the rows an unbroken run would have drawn."""

    def __init__(self, x: torch.Tensor, rows: int):
        self.x, self.shape = x, torch.Size((rows, x.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        return self.x[torch.randint(len(self.x), (torch.as_tensor(idx).numel(),))]

    def check_rows(self, dim: int | None, name: str) -> None:
        if dim is not None and dim != self.shape[1]:
            raise ValueError(f"{name} has {self.shape[1]} columns, but the model expects {dim}")


@contextlib.contextmanager
def trained_parameters(model: torch.nn.Module, run: LongRun) -> Iterator[None]:
    """Inside: ``model`` holds the trained parameters of ``run``'s checkpoint, not the moving averages that
    ``fit(ema=...)`` leaves in it; the averages come back after. So a run with ``ema`` scores both at once: the
    averages' figure against the plain one of the same training, at no extra training time."""
    averaged = {name: p.detach().clone() for name, p in model.named_parameters()}
    load_fitted(model, run.checkpoint_dir, averaged=False)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(averaged[name])
