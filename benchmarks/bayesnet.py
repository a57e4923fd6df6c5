"""ppgen's BayesNet against pgmpy on bnlearn networks: exact queries, log-probabilities, sampling.

One process, ratios measured in the same run. For each of asia, child, insurance and alarm:

(a) one posterior marginal given 3 evidence variables (warm: the contraction path is cached;
    the first, compiling call is reported too),
(b) every posterior marginal given the same evidence (pgmpy: one query per variable, since its
    ``joint=False`` multi-variable query builds the full joint first),
(c) the marginal of (a) for 1000 different evidence rows: ppgen in one batched call, pgmpy one
    query per row on the first 50 rows, extrapolated linearly to 1000,
(d) log p(x) of 10,000 complete rows (pgmpy: ``get_state_probability`` row by row on 200 rows,
    extrapolated to 10,000),
(e) forward sampling of 10,000 rows.

Both libraries run on one CPU thread (``torch.set_num_threads(1)``; pgmpy's NumPy work is on
small arrays): on a shared 2-core machine, PyTorch's intra-op threads on tiny tensors only
contend. Writes ``benchmarks/results/bayesnet.json`` and prints a markdown table.

    python benchmarks/bayesnet.py
"""

from __future__ import annotations

import gzip
import json
import math
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ppgen.models.bayesnet import BayesNet

NETWORKS = ("asia", "child", "insurance", "alarm")
TARGETS = {"a": 2, "b": 5, "c": 1000, "d": 1000, "e": 20}


def seconds(fn, min_total: float = 0.3, max_runs: int = 50) -> float:
    """Median wall time of ``fn()`` over repeated runs (at least 3, about ``min_total`` seconds)."""
    times = []
    while len(times) < 3 or (sum(times) < min_total and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, example_dir: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgmpy.inference import VariableElimination
        from pgmpy.readwrite import BIFReader
        from pgmpy.sampling import BayesianModelSampling

        path = example_dir / f"{name}.bif.gz"
        theirs = BIFReader(string=gzip.open(path, "rt").read()).get_model()
    ours = BayesNet.from_bif(path)
    ve, sampler = VariableElimination(theirs), BayesianModelSampling(theirs)
    torch.manual_seed(0)
    observed = [ours.variables[i] for i in torch.randperm(ours.x_dim)[:3].tolist()]
    row = ours.sample(1)[0].long()
    evidence = {v: ours.states[v][int(row[ours.variables.index(v)])] for v in observed}
    query = next(v for v in ours.variables if v not in evidence)
    rows = ours.sample(1000)
    rows[:, [i for i, v in enumerate(ours.variables) if v not in evidence]] = -1
    complete = ours.sample(10_000)
    names = [{v: ours.states[v][int(s)] for v, s in zip(ours.variables, r) if s >= 0} for r in rows.long().tolist()]
    out = {"variables": ours.x_dim, "parameters": ours.parameter_counts(), "evidence": evidence, "query": query}

    def pg(variables, ev):
        return ve.query(variables, evidence=ev, show_progress=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # (a)
        start = time.perf_counter()
        ours.posterior(evidence, query)
        out["a_ppgen_first_call_s"] = time.perf_counter() - start
        ref = pg([query], evidence)
        got = ours.posterior(evidence, query)[query].numpy()
        assert np.allclose(got, [ref.values[ref.state_names[query].index(s)] for s in ours.states[query]], atol=1e-6)
        out["a"] = (seconds(lambda: ours.posterior(evidence, query)), seconds(lambda: pg([query], evidence)))
        # (b)
        free = [v for v in ours.variables if v not in evidence]
        out["b"] = (seconds(lambda: ours.posterior(evidence)),
                    seconds(lambda: [pg([v], evidence) for v in free], min_total=0.0))
        # (c)
        ours.posterior(rows, query)
        out["c"] = (seconds(lambda: ours.posterior(rows, query)),
                    seconds(lambda: [pg([query], {k: s for k, s in e.items()}) for e in names[:50]],
                            min_total=0.0) * 1000 / 50)
        # (d)
        frame = [{v: ours.states[v][int(s)] for v, s in zip(ours.variables, r)} for r in complete[:200].long().tolist()]
        theirs_lp = [math.log(theirs.get_state_probability(r)) for r in frame]
        assert np.allclose(ours.log_prob(complete[:200].double()).numpy(), theirs_lp, atol=1e-9)
        out["d"] = (seconds(lambda: ours.log_prob(complete)),
                    seconds(lambda: [theirs.get_state_probability(r) for r in frame], min_total=0.0) * 10_000 / 200)
        # (e)
        out["e"] = (seconds(lambda: ours.sample(10_000)),
                    seconds(lambda: sampler.forward_sample(10_000, show_progress=False), min_total=0.0))
    return out


def main() -> None:
    torch.set_num_threads(1)
    import pgmpy

    example_dir = Path(pgmpy.__file__).parent / "utils" / "example_models"
    start = time.perf_counter()
    results = {name: bench(name, example_dir) for name in NETWORKS}
    meta = {"torch": torch.__version__, "pgmpy": pgmpy.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread, "
                       f"{__import__('os').cpu_count()} CPU cores (shared)",
            "total_seconds": time.perf_counter() - start}
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bayesnet.json").write_text(json.dumps({"meta": meta, "targets": TARGETS, "results": results},
                                                      indent=2, default=str))
    labels = {"a": "(a) 1 marginal | 3 evidence", "b": "(b) all marginals | 3 evidence",
              "c": "(c) 1000 evidence rows (pgmpy: 50, x20)", "d": "(d) log p of 10k rows (pgmpy: 200, x50)",
              "e": "(e) sample 10k rows"}
    print("| query | network | ppgen | pgmpy | speedup | target |")
    print("|---|---|---:|---:|---:|---:|")
    for key, label in labels.items():
        for name in NETWORKS:
            ours, theirs = results[name][key]
            print(f"| {label} | {name} | {_fmt(ours)} | {_fmt(theirs)} | {theirs / ours:,.1f}x | >= {TARGETS[key]}x |")
    firsts = ", ".join(f"{n} {_fmt(results[n]['a_ppgen_first_call_s'])}" for n in NETWORKS)
    print(f"\n(a) first call including path compilation: {firsts}. Total run {meta['total_seconds']:.0f} s.")


def _fmt(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


if __name__ == "__main__":
    main()
