"""The demo's figures, and the paths the ``ppgen`` command writes its figures to.

:func:`demo_figures` draws what ``ppgen demo`` shows of the models it fitted on the digits: a grid
of samples per model (a VAE's are the means of p(x | z) for z ~ p(z), less speckled than binary
draws), a VAE's reconstructions of test digits, and every model's ELBO per epoch beside its test
log-likelihood. :func:`check_out` and :func:`figure_path` turn an ``--out`` argument into a folder
or a PNG file, refusing one that lies under a file before any work is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ppgen.data import load_dataset
from ppgen.models import VAE, GenerativeModel
from ppgen.plots import elbo_curves, image_grid

__all__ = ["demo_figures", "check_out", "figure_path"]


def check_out(path: Path, what: str = "--out") -> Path:
    """``path``, refused (``ValueError`` naming ``what``) when it is a file or lies under one."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} cannot be a folder: {parent} is a file")
            break
    return path


def figure_path(out: Path | None, default: Path) -> Path:
    """The PNG file a figure goes to: ``default`` when ``out`` is None, ``default``'s name inside
    ``out`` when ``out`` is a folder, else ``out`` with ``.png`` appended where it lacks it; its
    folder checked with :func:`check_out`.

    >>> figure_path(Path("/tmp"), Path("run/samples.png")), figure_path(Path("grid"), Path("x.png"))
    (PosixPath('/tmp/samples.png'), PosixPath('grid.png'))
    """
    out = out or default
    if out.is_dir():
        out = out / default.name
    elif out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    check_out(out.parent, "the folder of --out")
    return out


def demo_figures(models: Mapping[str, GenerativeModel], histories: Mapping[str, Mapping],
                 metrics: Mapping[str, Mapping], out: Path, *, seed: int = 0) -> None:
    """Write into ``out``: ``samples_<name>.png`` (64 samples of each model, drawn with ``seed``),
    ``reconstructions_<name>.png`` for each VAE (32 test digits, rows 1 and 3, and their
    reconstructions, rows 2 and 4) and ``elbo_curves.png`` (the ``histories``' per-epoch
    ``train_elbo`` and ``valid_elbo``, with each model's ``metrics["log_likelihood"]`` dotted)."""
    for name, model in models.items():
        torch.manual_seed(seed)
        samples = model.decode(torch.randn(64, model.z_dim)) if _is_vae(model) else model.sample(64)
        image_grid(samples, out / f"samples_{name}.png", title=f"{name}: samples")
    test_x = load_dataset("digits", "test").x[:32]
    for name, model in models.items():
        if _is_vae(model):
            rows = torch.cat([test_x[:16], model.reconstruct(test_x[:16]), test_x[16:], model.reconstruct(test_x[16:])])
            image_grid(rows, out / f"reconstructions_{name}.png",
                       title="VAE: test digits (rows 1, 3) and reconstructions")
    elbo_curves(histories, out / "elbo_curves.png", reference={k: v["log_likelihood"] for k, v in metrics.items()})


def _is_vae(model) -> bool:
    """An unconditional VAE: it decodes z ~ N(0, I) alone and reconstructs rows."""
    return isinstance(model, VAE) and model.y_dim is None
