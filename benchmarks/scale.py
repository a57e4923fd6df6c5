"""Scaling: data-parallel fit on 1 vs 2 processes (CPU, Gloo), and the GPU path where there is one.

CPU rows: the VAE (784-400-50) trained by ``fit`` for a fixed number of epochs on the embedded
digits, launched by ``torchrun`` with 1 and with 2 processes of one thread each, same global
batch. The figure is training throughput (rows per second of step time, all ranks together) and
the ratio 2-process / 1-process, measured in this one run.

GPU rows (VAE, MADE, PixelCNN and batched Bayesian-network queries against the CPU, with and
without bf16, and seconds per VAE epoch on full MNIST) are open: no GPU was available to
measure them, and this script does not pretend to.

    python benchmarks/scale.py [--epochs 3] [--batch-size 1024]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ppgen.inference.checkpoint import write_json_atomic

WORKER = """
import json, sys, torch
import ppgen
torch.set_num_threads(1)
x, _ = ppgen.load_dataset("digits", "train")
torch.manual_seed(0)
model = ppgen.VAE(784, z_dim=50, hidden=400)
result = ppgen.fit(model, x, epochs=int(sys.argv[1]), batch_size=int(sys.argv[2]), lr=1e-3, progress=False, device="cpu")
import os
if os.environ.get("RANK", "0") == "0":
    print("RESULT " + json.dumps({"examples_per_second": result.examples_per_second, "seconds": result.seconds}))
"""


def cpu_processes(epochs: int, batch_size: int) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        for nproc in (1, 2):
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={nproc}", str(worker), str(epochs), str(batch_size)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise SystemExit(f"the {nproc}-process run failed:\n{done.stderr[-3000:]}")
            line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
            rows[nproc] = json.loads(line[len("RESULT "):])
    return {"processes": rows, "ratio_2_over_1": rows[2]["examples_per_second"] / rows[1]["examples_per_second"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    figures = {"cpu": cpu_processes(args.epochs, args.batch_size), "batch_size": args.batch_size}
    write_json_atomic(figures, args.out)
    cpu = figures["cpu"]
    print("| processes (1 thread each) | rows/s | fit seconds |\n|---:|---:|---:|")
    for nproc, row in cpu["processes"].items():
        print(f"| {nproc} | {row['examples_per_second']:,.0f} | {row['seconds']:.1f} |")
    print(f"\n2 / 1 processes: {cpu['ratio_2_over_1']:.2f}x throughput; wrote {args.out}")


if __name__ == "__main__":
    main()
