"""EM for Bayesian-network CPTs with missing entries: cost of one E-step and of a whole fit.

For each bnlearn network (the BIF files bundled with pgmpy): 10,000 rows sampled from the
network, each entry hidden with probability 0.3, then ``fit_mle`` from uniform CPTs. Reports the
seconds of one E-step (``counts`` of all rows: one batched contraction per 1,024 rows), the
seconds to convergence (gain < 1e-6 nats per row), and the mean log-likelihood of
the observed entries under the fit and under the generating network (the fit must not be lower).
One CPU thread. Writes ``benchmarks/results/bayesnet_em.json``.

    python benchmarks/bayesnet_em.py
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from ppgen.inference.checkpoint import write_json_atomic
from ppgen.models.bayesnet import BayesNet

NETWORKS = ("asia", "child", "insurance", "alarm")


def main() -> None:
    import pgmpy

    torch.set_num_threads(1)
    examples = Path(pgmpy.__file__).parent / "utils" / "example_models"
    rows = []
    for name in NETWORKS:
        truth = BayesNet.from_bif(examples / f"{name}.bif.gz")
        torch.manual_seed(0)
        x = truth.sample(10_000)
        x[torch.rand(x.shape) < 0.3] = -1
        start = BayesNet(truth.states, truth.parents)
        start.counts(x)  # compile the contraction path once
        t = time.perf_counter()
        start.counts(x)
        e_step = time.perf_counter() - t
        t = time.perf_counter()
        fitted = start.fit_mle(x)
        total = time.perf_counter() - t
        rows.append({"network": name, "variables": truth.x_dim, "e_step_s": e_step,
                     "fit_s": total, "loglik_fit": fitted.log_prob(x.double()).mean().item(),
                     "loglik_truth": truth.log_prob(x.double()).mean().item()})
    print("| network | variables | one E-step (10,000 rows) | EM to convergence | mean log p, fit | mean log p, truth |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {r['variables']} | {r['e_step_s']:.2f} s | {r['fit_s']:.1f} s "
              f"| {r['loglik_fit']:.4f} | {r['loglik_truth']:.4f} |")
    out = Path(__file__).parent / "results" / "bayesnet_em.json"
    write_json_atomic({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "rows": rows}, out)


if __name__ == "__main__":
    main()
