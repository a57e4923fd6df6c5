"""Inverse problems on the embedded digits, end to end, in about two minutes on one CPU core.

Trains an FVSBN and a VAE briefly on the binarized digits and restores the bottom half of test
digits with each (exact conditionals; tempered SMC over z), restores grey digits (inpainting the
centre, 4x upsampling, denoising) with PPCA's exact Gaussian posterior, then colourises grey
coloured digits with the exact palette posterior and with an MSE regression. Writes one figure
per restoration and ``summary.json`` (method, ESS, diversity, MSE, consistency with y) to --out.

    OMP_NUM_THREADS=1 python scripts/restore_demo.py --out /tmp/restore_demo
"""

import argparse
import json
import time
from pathlib import Path

import torch

from ppgen import FVSBN, PPCA, VAE, FitConfig, fit, load_dataset
from ppgen.data.colour import coloured_digits
from ppgen.inverse import Greyscale, PaletteColouriser, fit_colour_regression, make_operator, restore, restore_grid, restore_summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("restore_demo"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--num-samples", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, start = {}, time.perf_counter()

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    truth = test.x[:args.rows]
    op = make_operator("inpaint", (1, 28, 28), mask="bottom")
    y = op(truth)
    for name, model, kwargs in (("fvsbn", FVSBN(784), {}),
                                ("vae", VAE(784, z_dim=16, hidden=256), {})):
        fit(model, train, FitConfig(epochs=args.epochs, batch_size=100, lr=1e-3 if name == "vae" else 3e-3,
                                    progress=False, convergence_tol=None))
        result = restore(model, y, op, args.num_samples, seed=0, **kwargs)
        restore_grid(None, result, truth, (1, 28, 28), path=args.out / f"inpaint_{name}.png")
        summary[f"inpaint_{name}"] = restore_summary(result, truth)
        print(name, summary[f"inpaint_{name}"], f"{time.perf_counter() - start:.0f} s", flush=True)

    # PPCA on grey digits: the exact Gaussian posterior for every task
    grey_train, grey_test = load_dataset("digits_grey", "train").x / 255, load_dataset("digits_grey", "test").x / 255
    ppca = PPCA(784, 32).fit_mle(grey_train)
    truth = grey_test[:args.rows]
    for task in ("inpaint", "upsample", "denoise"):
        op = make_operator(task, (1, 28, 28), mask="centre", factor=4, sigma=0.2)
        result = restore(ppca, op(truth, generator=torch.Generator().manual_seed(0)), op, args.num_samples, seed=0)
        restore_grid(None, result, truth, (1, 28, 28), path=args.out / f"{task}_ppca.png")
        summary[f"{task}_ppca"] = restore_summary(result, truth)
        print(task, summary[f"{task}_ppca"], f"{time.perf_counter() - start:.0f} s", flush=True)

    colour_train, colour_test = coloured_digits("train").x[:3000], coloured_digits("test").x[:200]
    grey = Greyscale()(colour_test)
    for name, model in (("exact", PaletteColouriser()),
                        ("regression", fit_colour_regression(colour_train, epochs=3, hidden=16, seed=0))):
        result = restore(model, grey, Greyscale(), args.num_samples, seed=0)
        restore_grid(None, result, colour_test[:args.rows], (3, 28, 28), max_rows=args.rows,
                     path=args.out / f"colourise_{name}.png")
        summary[f"colourise_{name}"] = restore_summary(result, colour_test)
        print(name, summary[f"colourise_{name}"], f"{time.perf_counter() - start:.0f} s", flush=True)
    summary["seconds"] = time.perf_counter() - start
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
