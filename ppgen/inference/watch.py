"""Training you can watch: the TensorBoard log of ``fit(log_dir=...)`` and the line per epoch.

The event files are written by PyTorch's own :class:`torch.utils.tensorboard.SummaryWriter`, which
needs the ``tensorboard`` package (``pip install 'ppgen[tensorboard]'``); the same package shows
them: ``tensorboard --logdir DIR``, then http://localhost:6006.

Tags, with the global step (optimisation steps, across resumes) on the x axis:

- ``loss``: every step's loss, per example of the full data (minus the objective);
- ``grad_norm/<group>``: every step's gradient norm of each parameter group (``params`` for a
  one-group objective; a GAN's ``discriminator`` and ``generator``);
- ``objective/train``, ``objective/valid``: every epoch's mean training objective and validation
  figure, nats per example, higher is better (as ``FitResult.train_elbo`` / ``valid_elbo``);
- ``lr/<group>``: every epoch's learning rate of each group;
- ``samples``: a grid of 16 samples every :data:`IMAGE_EVERY` epochs and after the last, for a
  model of square images (grey or colour).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

__all__ = ["TrainingLog", "epoch_line", "check_log_dir", "IMAGE_EVERY"]

IMAGE_EVERY = 5  # epochs between sample grids
GRID = 16        # samples per grid


def check_log_dir(log_dir) -> None:
    """Refuse ``log_dir`` when the ``tensorboard`` package that writes the event files is missing."""
    if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"log_dir={str(log_dir)!r} writes TensorBoard event files, which needs the tensorboard "
                         "package: pip install 'ppgen[tensorboard]'")


class TrainingLog:
    """The TensorBoard log of one run, in ``log_dir``.

    A run resumed after step s opens it with ``purge_step=s + 1``: TensorBoard then hides what an
    earlier call wrote past s (after its last checkpoint), so the curves continue where the
    checkpoint is.
    """

    def __init__(self, log_dir, start_step: int = 0):
        check_log_dir(log_dir)
        from torch.utils.tensorboard import SummaryWriter  # needs tensorboard: imported only when logging

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def step(self, step: int, loss: float, grad_norms: dict[str, float]) -> None:
        self.writer.add_scalar("loss", loss, step)
        for group, norm in grad_norms.items():
            self.writer.add_scalar(f"grad_norm/{group}", norm, step)

    def epoch(self, step: int, train: float, valid: float | None, lrs: dict[str, float]) -> None:
        self.writer.add_scalar("objective/train", train, step)
        if valid is not None:
            self.writer.add_scalar("objective/valid", valid, step)
        for group, lr in lrs.items():
            self.writer.add_scalar(f"lr/{group}", lr, step)
        self.writer.flush()

    def samples(self, step: int, model, seed: int = 0) -> None:
        """A grid of :data:`GRID` samples of a model of square images (nothing for other models),
        drawn with ``seed`` without disturbing the random state of training."""
        grid = image_grid(model, seed)
        if grid is not None:
            self.writer.add_image("samples", grid, step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def image_grid(model, seed: int = 0) -> torch.Tensor | None:
    """(C, H', W') in [0, 1]: a 4 x 4 grid of samples of a model whose rows are square images
    (D = h^2 grey or 3 h^2 colour, h >= 8); None for other models."""
    from ppgen.inference.sample_quality import draw

    shape = _square_image(model.x_dim)
    if shape is None:
        return None
    channels, side = shape
    device = model.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        x = draw(model, GRID).detach().float().cpu()
    if x.max() > 1:  # pixel levels (a flow's 0..num_levels): scale to [0, 1]
        x = x / (model.num_levels or 255)
    images = x.clamp(0, 1).reshape(4, 4, channels, side, side)  # (rows, cols, C, h, w)
    return images.permute(2, 0, 3, 1, 4).reshape(channels, 4 * side, 4 * side)


def _square_image(x_dim: int) -> tuple[int, int] | None:
    """(channels, side) of rows that are square images, D = side^2 (grey) or 3 side^2 (colour) with
    side >= 8; None for other rows."""
    for channels in (1, 3):
        side = math.isqrt(x_dim // channels)
        if channels * side * side == x_dim and side >= 8:
            return channels, side
    return None


def epoch_line(epoch: int, epochs: int, train: float, valid: float | None, best_epoch: int | None,
               seconds: float, unit: str = "nats/example") -> str:
    """The line ``fit`` prints after each epoch in a terminal; ``unit`` names what the figures are
    (:attr:`FitResult.unit`).

    Examples
    --------
    >>> epoch_line(3, 20, -101.25, -103.5, 3, 12.34)
    'epoch 3/20: train -101.250, valid -103.500 nats/example (best epoch 3), 12.3 s'
    """
    valid_text = f", valid {valid:.3f}" if valid is not None else ""
    best = f" (best epoch {best_epoch})" if best_epoch is not None and valid is not None else ""
    return f"epoch {epoch}/{epochs}: train {train:.3f}{valid_text} {unit}{best}, {seconds:.1f} s"
