"""Run tutorials in full mode and store their outputs, as they are committed: ``python scripts/run_notebook.py
tutorials/X.ipynb [...]`` (one CPU thread, the Agg backend; each notebook runs in its own folder). Prints each
notebook's wall-clock time, the figure its first cell quotes as the full run's runtime."""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(notebook, path)
    return seconds


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.pop("PPGEN_FAST", None)
    for name in sys.argv[1:]:
        print(f"{name}: {run(Path(name).resolve()):.0f} s", flush=True)
