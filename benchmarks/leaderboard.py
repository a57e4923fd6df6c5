"""One table across every family of ppgen: test NLL on the statically binarized MNIST test rows.

Reads what the benchmarks wrote (run folders and ``benchmarks/results/*.json``), never retrains,
and writes the table between ``<!-- leaderboard -->`` markers in ``benchmarks/RESULTS.md`` and
``README.md``:

    python benchmarks/leaderboard.py            # print, and update both files
    python benchmarks/leaderboard.py --check    # print only
    python benchmarks/leaderboard.py --add-run runs/made-direct-8000-wd100 --as made-wide

``--add-run`` copies the figures of a finished ``ppgen train`` run folder (evaluated on the binarized
MNIST test rows) into ``benchmarks/results/leaderboard_runs.json``, so that the row survives without the
folder, which is not committed.

Each row says what kind of figure it is, since they are not interchangeable, in the label its
``LikelihoodResult`` wrote (``to_dict()["label"]``, from ``ppgen.inference.likelihood.KINDS``); files
written before results carried labels get the same words from ``describe``:

- **exact**: log p(x) in closed form (autoregressive models, the factorised model, Bayesian networks);
- **a lower bound** on log p(x), so the NLL errs *high*: the IWAE estimate (stochastic, its bias shrinks
  with K), a dequantized flow's E_u log p(x + u), a diffusion model's ELBO, AIS over a decoder's latents
  (GAN, Wu et al. 2017: its estimate of p(x) is unbiased, so its log errs low);
- **an estimate that errs high** in log-likelihood on average, so its NLL errs *low*: an RBM's log Z by
  annealed importance sampling errs low; the RAISE figure bounds the NLL from above.

The ± column is the Monte Carlo standard error of the mean wherever the figure is random; where each
row has one random draw (a dequantized flow's noise, a diffusion bound's x_t) it is the spread over
rows / sqrt(rows), which over-states it.

A family with no figure on these rows yet is listed as missing, with the command that makes one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "leaderboard_runs.json"  # rows copied from `ppgen train` run folders by --add-run
MARKERS = ("<!-- leaderboard:start -->", "<!-- leaderboard:end -->")

# model key -> (family, published test NLL on the static Larochelle & Murray split or None, its source);
# binarized_mnist.py takes its targets from here
PUBLISHED = {
    "independent": ("baseline", None, ""),
    "bayesnet": ("Bayesian network", None, ""),
    "fvsbn": ("autoregressive", 97.45, "Larochelle & Murray 2011"),
    "nade": ("autoregressive", 88.86, "Larochelle & Murray 2011"),
    # 88.40 is Germain et al.'s best one-mask network (Table 6); for 784-500-784 with one mask their Figure 2
    # shows about 94.5, the figure Karpathy's pytorch-made reproduces
    "made": ("autoregressive", 88.40, "Germain et al. 2015; ~94.5 for 500 units (their Fig. 2)"),
    # the authors' MNIST network also connects the input straight to the output (MADE(direct=True))
    "made-direct": ("autoregressive", 88.40, "Germain et al. 2015, a wider network with the direct connection"),
    "made-wide": ("autoregressive", 88.40, "Germain et al. 2015, 1 mask (Table 6)"),
    "made-32": ("autoregressive", 86.64, "Germain et al. 2015"),
    "pixelcnn": ("autoregressive", 81.30, "van den Oord et al. 2016"),
    # Burda et al. (2016) report 86.76 (VAE k=1) and 84.78 (IWAE k=50, 1 stochastic layer) on MNIST
    # binarized afresh at every use, trained on 59,600 rows. Their code's README says that on the
    # static 50,000-row split the same models overfit and score "about 2 nats lower"; no exact
    # static-split figure is published, so none is quoted as a target.
    "vae": ("latent variable", None, "Burda et al. 2016 report 86.76 on dynamic binarization only"),
    "iwae": ("latent variable", None, "Burda et al. 2016 report 84.78 on dynamic binarization only"),
    "flow": ("normalizing flow", None, ""),
    "diffusion": ("diffusion", None, ""),
    "rbm": ("energy-based", None, "Salakhutdinov & Murray 2008: about 86.3 (not checked offline)"),
    "gan": ("implicit", None, ""),
}

MISSING = {  # model key -> the command that produces its row
    "flow": "python benchmarks/flow_binary.py --dataset binarized_mnist --root ../shared/data "
            "--models 'RealNVP (dequantized)'",
    "diffusion": "python benchmarks/diffusion.py --root ../shared/data",
    "rbm": "python benchmarks/ebm_gan.py --root ../shared/data --minutes 4",
    "gan": "python benchmarks/ebm_gan.py --root ../shared/data --minutes 4",
    "made-wide": "ppgen train made --data binarized_mnist --root ../shared/data -o hidden_sizes=[8000] -o order=random "
                 "-o direct=true --weight-decay 100 --patience 10 --batch-size 100 --lr 1e-3 --epochs 40 --out "
                 "runs/made-direct-8000-wd100 && python benchmarks/leaderboard.py --add-run runs/made-direct-8000-wd100 "
                 "--as made-wide",
    "made-32": "python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --models made-32 --device cuda",
    "pixelcnn": "python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --models pixelcnn --device cuda",
    "iwae": "python benchmarks/binarized_mnist.py --root ../shared/data --preset paper --models iwae --device cuda",
}


# ebm_gan.py's architectures, for runs written before it recorded parameter counts: the RBM's
# 784 x 500 weights and 1,284 biases; the GAN's generator (the sampler; its discriminator is no part of p(x))
EBM_GAN_PARAMETERS = {"rbm": 784 * 500 + 784 + 500, "gan": (64 * 256 + 256) + (256 * 256 + 256) + (256 * 784 + 784)}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def finished_long_run(report: str, model: str) -> dict | None:
    """``model``'s row of a cpu-long report in ``benchmarks/results`` once its run is complete, else None."""
    row = ((load(RESULTS / report) or {}).get("models") or {}).get(model)
    return row if row and row.get("status") == "complete" else None


def figure_label(figures: dict, method: str, kind: str, num_samples: int | None = 0) -> str:
    """What a figure is: the label its ``LikelihoodResult`` wrote, else (a file written before results
    carried one) the same words from ``method`` and ``kind`` as that file's writer knew them."""
    if figures.get("label"):
        return figures["label"]
    from ppgen.inference.likelihood import describe  # torch: only for such files

    return describe(method, kind, {"exact": None, "bound": "low", "estimate": "high"}[kind], num_samples or 0)


def benchmark_rows(report: dict | None, source: str) -> dict:
    """Rows of binarized_mnist.py's JSON (one per model), keyed by model."""
    rows = {}
    for key, m in ((report or {}).get("models") or {}).items():
        exact = m.get("test_nll_exact", True)
        rows[key] = {
            "model": m["model"], "nll": m["test_nll_nats"], "stderr": m.get("test_nll_stderr") or 0.0,
            "kind": figure_label(m, "exact" if exact else "iwae", "exact" if exact else "bound",
                                 m.get("test_num_samples")),
            "rows": m.get("test_rows") or report.get("test_rows", 10000), "parameters": m["parameters"],
            "train": f"{m['train_seconds'] / 60:.0f} min, {m['epochs']} epochs"
                     + (f" ({m['status']})" if "status" in m and m["status"] != "complete" else ""),
            "device": m.get("device") or report.get("machine", "?"), "source": source,
        }
    return rows


def run_label(metrics: dict, run: str = "a run") -> str:
    """The label of a ``ppgen train`` run's ``metrics.json`` figure. Folders written before figures carried their
    kind said ``method`` and ``exact`` only: an AIS figure of theirs errs high or low with the model, so it is refused
    (its benchmark adds it)."""
    method = metrics.get("method", "exact")
    if metrics.get("kind"):
        return figure_label(metrics, method, metrics["kind"], metrics["num_samples"])
    if method == "ais":
        raise SystemExit(f"{run}'s metrics.json has an AIS figure without its kind "
                         "(written before ppgen labelled figures): evaluate the run again, or let its benchmark add it")
    return figure_label(metrics, method, "exact" if metrics.get("exact", True) else "bound", metrics["num_samples"])


def collect() -> dict[str, dict]:
    """The best-informed row per model: paper-preset runs (GPU, then CPU) first, then the CPU-budget benchmarks;
    a run folder added with ``--add-run`` replaces them all."""
    rows: dict[str, dict] = {}
    for report, source in ((load(RESULTS / "binarized_mnist.json"), "binarized_mnist.py --preset cpu"),
                           (load(RESULTS / "binarized_mnist_latent.json"), "binarized_mnist.py --preset cpu"),
                           (load(RESULTS / "binarized_mnist_made32.json"), "binarized_mnist.py --preset cpu"),
                           (load(RESULTS / "binarized_mnist_paper.json"), "binarized_mnist.py --preset paper"),
                           (load(RESULTS / "binarized_mnist_gpu.json"), "benchmarks/gpu.sh (the paper preset)")):
        for key, row in benchmark_rows(report, source).items():
            rows[key] = row  # later sources (the paper preset) replace the budget runs
    compression = load(RESULTS / "compression.json")
    for key in ("independent", "bayesnet"):
        m = ((compression or {}).get("models") or {}).get(key)
        if m:
            rows[key] = {"model": m["model"], "nll": m["model_nats_per_image"], "stderr": 0.0, "kind": "exact",
                         "rows": compression.get("test_rows", 10000), "parameters": m["parameters"],
                         "train": f"{m['train_seconds']:.0f} s (counting)", "device": compression.get("machine", "?"),
                         "source": "compression.py"}
    ebm_gan = load(RESULTS / "ebm_gan.json")
    if ebm_gan:
        device = ebm_gan.get("device", "cpu")
        for key, label in (("rbm", "RBM(784, hidden=500), PCD-1"), ("gan", "GAN(784, z_dim=64, hidden=[256, 256])")):
            m = ebm_gan[key]
            ll = m["log_likelihood"]
            if key == "rbm":  # AIS of log Z: its log-likelihood errs high, the NLL low; RAISE's NLL errs high
                lo, hi = ll["bracket"]
                kind = (f"{figure_label(ll, 'ais', 'estimate', ll['num_samples'])}; on 100 rows the NLL lies between "
                        f"AIS {-hi:.1f} and RAISE {-lo:.1f}")
            else:  # AIS over z: an unbiased estimate of p(x), so its log is a lower bound in expectation
                kind = f"{figure_label(ll, 'ais', 'bound', ll['num_samples'])}, annealed over z"
            rows[key] = {"model": label, "nll": -ll["log_likelihood"], "stderr": ll["stderr"], "kind": kind,
                         "rows": ll["num_examples"], "parameters": m.get("num_parameters") or EBM_GAN_PARAMETERS[key],
                         "train": f"{m['train_seconds'] / 60:.0f} min, {m['epochs']} epochs", "device": device,
                         "source": "ebm_gan.py"}
    diffusion = load(RESULTS / "diffusion.json")
    binary = (diffusion or {}).get("binary")
    if binary and binary.get("data") == "binarized_mnist":
        bound = binary["test_elbo_nats"]
        rows["diffusion"] = {"model": f"BinaryDiffusion(784, num_steps={binary['num_steps']})", "nll": -bound["mean"],
                             "stderr": bound.get("stderr"), "rows": bound["rows"],
                             "kind": f"{figure_label(bound, 'elbo', 'bound')}, all T terms summed",
                             "parameters": binary["num_parameters"],
                             "train": f"{binary['train_seconds'] / 60:.0f} min, {binary['epochs']} epochs",
                             "device": diffusion["settings"].get("device", "cpu"), "source": "diffusion.py"}
    # the cpu-long runs, once complete, replace the short runs' rows
    m = finished_long_run("diffusion_long.json", "binary")
    if m and "test_bound_nats" in m:
        arguments = ", ".join(f"{k}={v}" for k, v in m["config"]["model"].items())
        rows["diffusion"] = {"model": f"BinaryDiffusion(784, {arguments})", "nll": m["test_bound_nats"],
                             "stderr": m["test_bound_nats_stderr"], "rows": m["test_rows"],
                             "kind": "lower bound (ELBO, all T terms summed)", "parameters": m["num_parameters"],
                             "train": f"{m['cpu_hours']} CPU h, {m['epochs']} epochs", "device": "cpu",
                             "source": "diffusion.py --preset cpu-long"}
    # the longer RBM run where it is complete (rbm-long: the same PCD-1 recipe for 1,000 epochs), else the first
    m = finished_long_run("ebm_gan_long.json", "rbm-long") or finished_long_run("ebm_gan_long.json", "rbm")
    if m and "log_likelihood" in m:
        low, high = m["raise_ais_bracket"]
        rows["rbm"] = {"model": f"RBM(784, hidden={m['config']['hidden']}), PCD-{m['config']['k']}",
                       "nll": -m["log_likelihood"], "stderr": m["rows_stderr"], "rows": m["test_rows"],
                       "kind": f"AIS, {m['ais_chains']} chains x {m['ais_temperatures']:,} temperatures: an estimate "
                               f"of log p(x) that errs high on average; on {m['config']['raise_rows']} rows the NLL "
                               f"lies between AIS {-high:.1f} and RAISE {-low:.1f}",
                       "parameters": m["num_parameters"], "train": f"{m['train_hours']} h, {m['epochs']} epochs",
                       "device": "cpu", "source": "ebm_gan.py --preset cpu-long"}
    flows = load(RESULTS / "flow_binary_mnist.json")
    for name, m in ((flows or {}).get("models") or {}).items():
        if "dequantized" in name:
            rows["flow"] = {"model": name, "nll": -m["log_likelihood"], "stderr": m.get("stderr"),
                            "kind": f"{figure_label(m, 'exact', 'bound')}, mean of {m['noise_draws']} noise draws",
                            "rows": int(flows["settings"]["test_rows"]), "parameters": m["num_parameters"],
                            "train": f"{m['train_seconds'] / 60:.0f} min, {m['epochs']} epochs", "device": "cpu",
                            "source": "flow_binary.py"}
            break
    for key, entry in (load(RUNS) or {}).items():  # last: a row added by hand replaces the benchmarks' figure
        config, m = entry["config"], entry["metrics"]
        rows[key] = {"model": f"{entry['model']}, by `ppgen train`", "nll": -m["log_likelihood"],
                     "stderr": m["stderr"] or 0.0, "kind": run_label(m, entry["run"]),
                     "rows": entry["rows"], "parameters": m["num_parameters"],
                     "train": f"{config['train_seconds'] / 60:.0f} min, {entry['epochs']} epochs",
                     "device": config["device"], "source": entry["run"]}
    return rows


def run_file(path: Path) -> dict:
    """A JSON object of a finished ``ppgen train`` run folder, or SystemExit naming the file."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path.parent} has no {path.name}: not a finished, evaluated `ppgen train` run") from None
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path} is not readable JSON ({err})") from None
    if not isinstance(content, dict):
        raise SystemExit(f"{path} holds {json.dumps(content)[:40]}, not what `ppgen train` writes")
    return content


def add_run(run: Path, key: str) -> None:
    """Copy a finished ``ppgen train`` run folder's figures into RUNS as the row ``key``."""
    config, metrics, history = (run_file(run / name) for name in ("config.json", "metrics.json", "history.json"))
    evaluated = (config.get("data"), metrics.get("split")) == ("binarized_mnist", "test")
    if not evaluated or metrics.get("log_likelihood") is None:
        raise SystemExit(f"{run} was not evaluated on the binarized MNIST test rows (data {config.get('data')!r}, "
                         f"split {metrics.get('split')!r}), so its figure does not belong in this table")
    if key not in PUBLISHED:
        raise SystemExit(f"--as {key!r} is not a row of the table; choose from {list(PUBLISHED)}")
    run_label(metrics, str(run))  # what the figure is, or refuse
    from ppgen.cli import MODELS
    from ppgen.data import load_dataset  # the number of test rows, for folders that predate metrics["rows"]
    from ppgen.inference.checkpoint import write_json_atomic

    rows = metrics.get("rows") or len(load_dataset("binarized_mnist", "test", root=config["root"]).x)
    arguments = ", ".join([str(config["x_dim"])] + [f"{name}={value!r}" for name, value in
                                                  config.get("arguments", config["options"]).items()])
    runs = load(RUNS) or {}
    runs[key] = {"run": str(run), "model": f"{MODELS[config['model']][0].__name__}({arguments})", "config": config,
                 "rows": rows, "epochs": len(history["train_elbo"]),
                 "best_epoch": history["best_epoch"],
                 "metrics": {name: value for name, value in metrics.items() if name != "sample_quality"}}
    write_json_atomic(runs, RUNS)


def table(rows: dict[str, dict]) -> str:
    lines = ["| family | model | test NLL (nats) | ± | kind of figure | test rows | parameters | training | "
             "device | published |",
             "|---|---|---:|---:|---|---:|---:|---|---|---|"]
    for key, (family, published, source) in PUBLISHED.items():
        row = rows.get(key)
        paper = f"{published:.2f} ({source})" if published is not None else (source or "—")
        if row is None:
            lines.append(f"| {family} | {key}: **missing** | — | — | — | — | — | — | — | {paper} |")
            continue
        params = f"{row['parameters']:,}" if isinstance(row.get("parameters"), int) else "—"
        stderr = "—" if row["stderr"] is None else f"{row['stderr']:.2f}"
        lines.append(f"| {family} | {row['model']} | {row['nll']:.2f} | {stderr} | {row['kind']} | "
                     f"{row['rows']:,} | {params} | {row['train']} | {row['device']} | {paper} |")
    missing = [k for k in PUBLISHED if k not in rows and k in MISSING]
    notes = [f"- **{k}** is missing; to make its row: `{MISSING[k]}`" for k in missing]
    return "\n".join(lines + ([""] + notes if notes else []))


def splice(path: Path, text: str) -> None:
    """Replace the text between the markers (added at the end when absent)."""
    content = path.read_text()
    block = f"{MARKERS[0]}\n{text}\n{MARKERS[1]}"
    if MARKERS[0] in content:
        content = re.sub(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), lambda _: block, content, flags=re.S)
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(content)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print the table, write nothing")
    parser.add_argument("--add-run", type=Path, metavar="RUN", help="a finished `ppgen train` run folder")
    parser.add_argument("--as", dest="key", help="the row it fills (with --add-run)")
    args = parser.parse_args(argv)
    if (args.add_run is None) != (args.key is None):
        parser.error("--add-run and --as go together")
    if args.check and args.add_run is not None:
        parser.error("--check writes nothing, and --add-run writes leaderboard_runs.json: use one")
    if args.add_run is not None:
        add_run(args.add_run, args.key)
    text = table(collect())
    print(text)
    if not args.check:
        for path in (ROOT / "benchmarks" / "RESULTS.md", ROOT / "README.md"):
            splice(path, text)
    return text


if __name__ == "__main__":
    main()
