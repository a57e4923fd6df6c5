"""MAF and neural spline flows in Pyro (``pyro.distributions.transforms``) against zuko: speed and correctness.

For each library and flow, the same architecture (``--transforms`` autoregressive layers, two
hidden layers of max(``--hidden``, D + 1) units, 8 spline bins): training steps per second (log_prob +
backward + Adam), sampling rows per second, and the largest error of log|det| against the
autograd Jacobian in float64 on D = 5 (must be ~1e-12 for both). Writes
benchmarks/results/flow_libraries.json.

    python benchmarks/flow_libraries.py            # D = 784 (MNIST) and D = 8 (tabular)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import zuko
from pyro.nn import AutoRegressiveNN


def pyro_flow(kind: str, dim: int, transforms: int, hidden: int):
    layers = []
    for i in range(transforms):
        if kind == "maf":
            t = T.AffineAutoregressive(AutoRegressiveNN(dim, [hidden, hidden]), stable=False)
        else:
            t = T.SplineAutoregressive(dim, AutoRegressiveNN(dim, [hidden, hidden], param_dims=[8, 8, 7, 8]),
                                       count_bins=8, bound=5.0, order="linear")
        layers.append(t)
        if i < transforms - 1:
            layers.append(T.Permute(torch.randperm(dim)))
    modules = torch.nn.ModuleList([t for t in layers if isinstance(t, torch.nn.Module)])
    base = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    # MAF: density evaluation in one pass is the *inverse* of Pyro's (IAF-direction) transform
    return modules, lambda: dist.TransformedDistribution(base, [t.inv for t in reversed(layers)])


def zuko_flow(kind: str, dim: int, transforms: int, hidden: int):
    cls = zuko.flows.MAF if kind == "maf" else zuko.flows.NSF
    kwargs = {"bins": 8} if kind == "nsf" else {}
    flow = cls(dim, transforms=transforms, hidden_features=(hidden, hidden), **kwargs)
    return flow, flow


def speed(make, dim: int, batch: int, seconds: float) -> dict:
    modules, distribution = make
    opt = torch.optim.Adam(modules.parameters(), lr=1e-4)
    x = torch.randn(batch, dim)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        loss = -distribution().log_prob(x.clone()).mean()  # a new tensor: Pyro caches transforms per input
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    train = steps * batch / (time.perf_counter() - start)
    with torch.no_grad():
        start = time.perf_counter()
        distribution().sample((8,))  # MAF samples pixel by pixel: D network passes per layer
        sample = 8 / (time.perf_counter() - start)
    return {"train_rows_per_s": train, "sample_rows_per_s": sample}


def logdet_error(make, dim: int) -> float:
    torch.set_default_dtype(torch.float64)
    try:
        modules, distribution = make()
        with torch.no_grad():
            for p in modules.parameters():
                p.add_(0.1 * torch.randn_like(p))
        d = distribution()
        x = torch.randn(4, dim)
        base = torch.distributions.Normal(0.0, 1.0)
        errors = []
        for row in x:
            # log p(x) - log N(z) = log|det dz/dx|: z from the library, the Jacobian from autograd
            if hasattr(d, "transform"):  # zuko
                f = d.transform
            else:
                f = T.ComposeTransform(d.transforms).inv
            z = f(row[None])[0]
            jac = torch.autograd.functional.jacobian(lambda r: f(r[None])[0], row)
            expected = base.log_prob(z).sum() + torch.linalg.slogdet(jac)[1]
            errors.append(abs((d.log_prob(row[None])[0] - expected).item()))
        return max(errors)
    finally:
        torch.set_default_dtype(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[784, 8])
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow_libraries.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {"settings": vars(args) | {"out": str(args.out)}, "torch_threads": torch.get_num_threads(),
               "zuko": zuko.__version__, "runs": []}
    for dim in args.dims:
        for kind in ("maf", "nsf"):
            row = {"dim": dim, "flow": kind}
            hidden = max(args.hidden, dim + 1)  # Pyro's AutoRegressiveNN needs hidden >= input dim
            row["hidden"] = hidden
            for lib, build in (("pyro", pyro_flow), ("zuko", zuko_flow)):
                row[lib] = speed(build(kind, dim, args.transforms, hidden), dim, args.batch, args.seconds)
                row[lib]["logdet_error_d5"] = logdet_error(lambda: build(kind, 5, 2, 16), 5)
            row["train_ratio_zuko_over_pyro"] = row["zuko"]["train_rows_per_s"] / row["pyro"]["train_rows_per_s"]
            print(json.dumps(row))
            results["runs"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
