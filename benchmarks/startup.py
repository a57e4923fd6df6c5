"""Start-up time: ``ppgen --help`` and ``import ppgen`` against ``import torch, pyro``, in one run.

Each case is a fresh ``python -c`` process (so nothing is cached in ``sys.modules``), timed from
launch to exit. Rounds interleave the cases so machine noise hits them alike; the figures are
medians over rounds and the ratios are taken within this one run. The cases:

- ``python``: ``python -c pass``, the interpreter alone;
- ``torch+pyro``: ``import torch, pyro``, the floor every ppgen model pays;
- ``ppgen --help``: ``ppgen.cli.main(["--help"])``, what the console script runs;
- ``import ppgen``: the package alone (its names import on first use);
- ``ppgen core``: ``import ppgen`` then ``ppgen.fit``, ``ppgen.VAE``, ``ppgen.log_likelihood``,
  ``ppgen.elbo_report``, ``ppgen.compress``: everything but the posterior tools and plots;
- ``ppgen posterior``: ``ppgen.inference.to_arviz`` (ArviZ, xarray, SciPy, pandas), for reference.

Targets: ``ppgen --help`` under 1 s; ``import ppgen`` (and ``ppgen core``) at most 1.25x
``torch+pyro``.

    python benchmarks/startup.py [--rounds 7]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "python": "pass",
    "torch+pyro": "import torch, pyro",
    "ppgen --help": ("import contextlib, io\nfrom ppgen.cli import main\n"
                     "with contextlib.redirect_stdout(io.StringIO()):\n"
                     "    try: main(['--help'])\n    except SystemExit: pass\n"
                     "import sys; assert 'torch' not in sys.modules"),
    "import ppgen": "import ppgen",
    "ppgen core": ("import ppgen; ppgen.fit, ppgen.VAE, ppgen.log_likelihood, ppgen.elbo_report, ppgen.compress\n"
                   "import sys; assert not {'arviz_base', 'xarray', 'matplotlib', 'scipy'} & set(sys.modules)"),
    "ppgen posterior": "import ppgen.inference; ppgen.inference.to_arviz",
}


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()

    for code in CASES.values():  # warm the file-system cache once
        seconds(code)
    times = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, code in CASES.items():
            times[name].append(seconds(code))
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["torch+pyro"]
    result = {
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "median_seconds": median,
        "ratio_to_torch_pyro": {name: m / base for name, m in median.items()},
        "targets": {
            "ppgen --help < 1 s": median["ppgen --help"] < 1.0,
            "import ppgen <= 1.25 x torch+pyro": median["import ppgen"] <= 1.25 * base,
            "ppgen core <= 1.25 x torch+pyro": median["ppgen core"] <= 1.25 * base,
        },
        "all_seconds": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'case':<18} {'median s':>9} {'/ torch+pyro':>13}")
    for name, m in median.items():
        print(f"{name:<18} {m:>9.3f} {m / base:>13.3f}")
    for target, met in result["targets"].items():
        print(f"{target}: {'met' if met else 'NOT met'}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
