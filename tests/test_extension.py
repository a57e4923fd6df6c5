"""The README's "Write your own model" runs as written (with fewer epochs), and its models learn; its
model of every family, written on the family's base, passes a check against something independent:
enumeration, autograd, quadrature, Pyro's own ELBO, counting. The README's other examples (the coin,
the elbo_report block) run and print what it shows."""

import ast
import io
import itertools
import math
import re
import tokenize
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine

import ppgen

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(subsection: str | None = None) -> str:
    """The Python blocks of the section's LogisticPCA part, or of its "#### " subsection whose title
    starts with ``subsection``."""
    text = README.read_text()
    parts = text.split("\n## Write your own model\n", 1)[1].split("\n## ", 1)[0].split("\n#### ")
    if subsection is None:
        part = parts[0]
    else:
        [part] = [p for p in parts[1:] if p.lower().startswith(subsection.lower())]
    return "\n".join(re.findall(r"```python\n(.*?)```", part, flags=re.S))


@pytest.mark.slow
def test_write_your_own_model_runs_and_learns(capsys):
    code = section_code().replace("epochs=10", "epochs=2")
    assert code.count("epochs=2") == 2 and "class LogisticPCA" in code and "def story" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    model, test = namespace["model"], namespace["test"]
    # both versions beat the factorised baseline's exact test log-likelihood (about -205 nats, README)
    scores = [float(m) for m in re.findall(r"log-likelihood (-?\d+\.\d+) nats/example \(IWAE K=100", printed)]
    assert len(scores) == 2 and all(-200 < s < -100 for s in scores), printed
    assert printed.count("ok: data plate") == 2 and "ELBOReport" not in printed  # print() shows the summary
    # the subclass samples binary images of the data's shape; the plain pair through Predictive
    assert namespace["images"].shape == (16, 784) and set(namespace["images"].unique().tolist()) <= {0.0, 1.0}
    # the fitted IWAE estimate sits above the ELBO of the same model (a bound, not a coincidence)
    result = namespace["ppgen"].log_likelihood(model, test[:300], num_samples=50)
    assert result.mean > result.elbo and not result.exact
    assert {"W", "b", "A", "c"} <= set(pyro.get_param_store().keys())
    assert torch.isfinite(pyro.param("W")).all()


# --- a model of every family, on its base -------------------------------------------------------------


def run_family(title: str, **data) -> dict:
    """Run the README block of one family after the first block's imports, with ``data`` (the digits'
    splits where a block uses them) in its namespace; return the namespace."""
    imports = [line for line in section_code().splitlines() if line.startswith(("import ", "from "))]
    namespace = dict(data)
    exec(compile("\n".join(imports), str(README), "exec"), namespace)
    exec(compile(section_code(title), f"{README} ({title})", "exec"), namespace)
    return namespace


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64 with its parameters drawn N(0, 1): small initial weights would hide a wrong mask."""
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_a_new_autoregressive_model_sums_to_one_and_is_autoregressive(digits):
    space = run_family("Autoregressive", train=digits["train"].x[:500], valid=digits["valid"].x[:200])
    model = randomised(space["LowRankFVSBN"](8, rank=3))
    every_row = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
    assert abs(model.log_prob(every_row).exp().sum().item() - 1) < 1e-12  # float64 rounding over 2^8 rows
    # the autoregressive property: logit d depends on x_j only for j < d, and on every such x_j
    jacobian = torch.autograd.functional.jacobian(lambda x: model.conditional_logits(x[None])[0], every_row[77])
    assert (jacobian.triu() == 0).all() and (jacobian.tril(-1).abs() > 0).sum() == 8 * 7 // 2
    # the Pyro program scores rows as log_prob does
    trace = poutine.trace(model.model).get_trace(every_row[:20])
    assert torch.allclose(trace.nodes["x"]["fn"].log_prob(every_row[:20]), model.log_prob(every_row[:20]))
    assert space["fvsbn16"].num_parameters == 784 * (2 * 16 + 1)


def test_a_new_flow_has_the_autograd_jacobian_and_integrates_to_one():
    space = run_family("Flow")
    flow, banana = space["flow"].double(), space["banana"].double()
    x = banana[:10]
    z, logdet = flow.transform(x)
    for row, row_logdet in zip(x, logdet):
        jacobian = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None])[0][0], row)
        assert torch.linalg.slogdet(jacobian).logabsdet.item() == pytest.approx(row_logdet.item(), abs=1e-10)
    assert torch.allclose(flow.untransform(z), x, atol=1e-12)
    # the density integrates to 1: a Riemann sum on a grid that holds all but ~1e-5 of its mass
    u, v = torch.meshgrid(torch.linspace(-7, 7, 701, dtype=torch.float64),
                          torch.linspace(-5, 25, 1501, dtype=torch.float64), indexing="ij")
    with torch.no_grad():
        mass = flow.log_prob(torch.stack([u.flatten(), v.flatten()], -1)).exp().sum().item() * 0.02 * 0.02
    assert abs(mass - 1) < 1e-4  # 1e-9 when written
    # it learned the banana: within 0.2 nats of the density that drew it (-1.44 on these rows; -1.52 when
    # written), which the flow's family holds (a(u_1) quadratic, c constant)
    truth = (torch.distributions.Normal(0, 1).log_prob(banana[:, 0])
             + torch.distributions.Normal(banana[:, 0] ** 2 / 2, 0.25).log_prob(banana[:, 1])).mean().item()
    with torch.no_grad():
        assert truth - 0.2 < flow.log_prob(banana).mean().item() < truth + 0.05


def exact_diffusion_log_prob(model) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x_0) of every binary row (2^D, D) by summing the reverse chain over all 2^D states of
    every x_t (T matrix-vector products): the rows and their log-probabilities."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.x_dim)), dtype=model.dtype)
    with torch.no_grad():
        log_p = model.prior(len(states)).log_prob(states)  # p(x_T)
        for t in range(model.num_steps, 0, -1):
            step = model.reverse_step(states, t).log_prob(states[:, None])  # [i, j] = log p(x_{t-1} = i | x_t = j)
            log_p = torch.logsumexp(step + log_p, 1)
    return states, log_p


def test_a_new_diffusion_model_bounds_its_exact_likelihood_and_is_pyros_elbo():
    space = run_family("Diffusion")
    model, bits = space["diffusion"].double(), space["bits"].double()
    states, exact = exact_diffusion_log_prob(model)
    assert abs(exact.exp().sum().item() - 1) < 1e-12
    # the bound, averaged over 2,000 draws of the chain per row, is below log p(x) for every row
    # (Jensen), within 4 standard errors of its Monte Carlo mean
    draws = model.nll_bound(states.repeat_interleave(2000, 0), seed=1).neg().view(len(states), 2000)
    elbo, stderr = draws.mean(1), draws.std(1) / math.sqrt(2000)
    assert (elbo <= exact + 4 * stderr).all(), (elbo - exact).tolist()
    # on the training rows the bound is tight within half a nat: the reverse steps learned the data
    index = (bits * 2 ** torch.arange(3, -1, -1, dtype=bits.dtype)).sum(-1).long()
    gap = (exact[index] - elbo[index]).mean().item()
    assert 0 < gap < 0.5
    # its closed-form terms are Pyro's Trace_ELBO of the reverse chain (model) and forward chain (guide):
    # 20 estimates of 10 particles each, against the bound's mean over 2,000 draws per row
    elbo_fn = pyro.infer.Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    rows = states[index[:200]]
    estimates = torch.tensor([-elbo_fn.loss(model.model, model.guide, rows) / len(rows) for _ in range(20)])
    pyro_stderr = estimates.std().item() / math.sqrt(len(estimates))
    ours = elbo[index[:200]].mean().item()
    assert abs(estimates.mean().item() - ours) < 4 * math.hypot(pyro_stderr, stderr.max().item())


def test_a_new_energy_model_trained_by_contrastive_divergence_reaches_the_mle():
    space = run_family("Energy")
    well, x = space["well"].double(), space["wells"].double()[:, 0]
    grid = torch.linspace(-6, 6, 24001, dtype=torch.float64)  # p(x) < 1e-30 beyond +-6

    def log_likelihood(log_a, b):  # mean log p(x) with log Z by quadrature
        energy = lambda v: log_a.exp() * v ** 4 - b * v ** 2  # noqa: E731
        return -energy(x).mean() - torch.logsumexp(-energy(grid), 0) - math.log(grid[1] - grid[0])

    log_a, b = (torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in range(2))
    lbfgs = torch.optim.LBFGS([log_a, b], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = -log_likelihood(log_a, b)
        loss.backward()
        return loss

    lbfgs.step(closure)  # the exact MLE: a concave problem in (a, b)
    with torch.no_grad():
        fitted = log_likelihood(well.log_a, well.b).item()
        best = log_likelihood(log_a, b).item()
        weights = torch.softmax(-well.energy(grid[:, None]), 0)
    # PCD's noise and the Langevin step's bias leave 0.001-0.01 nats over seeds 0-4 (0.03 with step 0.002)
    assert best - 0.01 < fitted <= best + 1e-9
    # the MLE's moment conditions: E_p[x^2] and E_p[x^4] within 5% and 8% of the data's (seeds 0-4: 2.5%, 4%)
    for power, tolerance in ((2, 0.05), (4, 0.08)):
        data = x.pow(power).mean().item()
        assert abs((weights * grid ** power).sum().item() - data) < tolerance * data


def test_a_gan_trained_by_a_new_objective_covers_every_mode():
    space = run_family("GAN")
    gan, centres, ring = space["gan"], space["centres"], space["ring"]
    torch.manual_seed(1)
    samples = gan.sample(2000)
    distance = torch.cdist(samples, centres)
    near = distance.min(-1).values < 0.5
    share = torch.bincount(distance.argmin(-1)[near], minlength=8) / len(samples)
    # a collapsed GAN leaves modes empty; over seeds 0-7 every mode held 2.3-9.4% of the samples within 0.5
    assert (share >= 0.01).all(), share.tolist()
    assert (samples.mean(0) - ring.mean(0)).norm() < 0.3  # the data's mean is the circle's centre, near 0


def test_a_new_sequence_model_sums_to_one_and_its_fit_reaches_the_counted_bigram():
    space = run_family("Sequence")
    bigram = space["LowRankBigram"]
    model = randomised(bigram(3, length=4, rank=2))
    every_row = torch.tensor(list(itertools.product(range(3), repeat=4)))
    assert abs(model.log_prob(every_row).exp().sum().item() - 1) < 1e-12  # the 3^4 rows
    # position t's logits read x_{t-1} only: rows that agree before t agree there
    x = torch.randint(3, (50, 4))
    changed = x.clone()
    changed[:, 2:] = torch.randint(3, (50, 2))
    assert torch.equal(model.conditional_logits(x)[:, :3], model.conditional_logits(changed)[:, :3])
    # with rank V a bigram's table is free, so its maximum-likelihood fit is the counted frequencies
    g = torch.Generator().manual_seed(0)
    transition = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2]])  # row 3: start
    rows = [torch.multinomial(transition[3], 400, replacement=True, generator=g)]
    for _ in range(5):
        rows.append(torch.multinomial(transition[rows[-1]], 1, generator=g).squeeze(-1))
    rows = torch.stack(rows, 1)  # (400, 6)
    previous = torch.cat([torch.full((400, 1), 3), rows[:, :-1]], 1)
    counts = torch.zeros(4, 3, dtype=torch.float64).index_put_((previous.flatten(), rows.flatten()),
                                                               torch.ones(rows.numel(), dtype=torch.float64),
                                                               accumulate=True)
    counted = torch.xlogy(counts, counts / counts.sum(1, keepdim=True)).sum().item() / len(rows)
    full = bigram(3, length=6, rank=3, seed=0)
    space["ppgen"].fit(full, rows, epochs=40, batch_size=100, lr=0.05, progress=False)
    with torch.no_grad():
        assert counted - 0.01 < full.log_prob(rows).double().mean().item() <= counted + 1e-4


def code_lines(code: str) -> int:
    """The lines of the classes and functions defined at the top of ``code`` that hold code: their
    docstrings, comments and blank lines left out."""
    tree = ast.parse(code)
    spans = {line for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))
             for line in range(node.lineno, node.end_lineno + 1)}
    docstrings = {line for node in ast.walk(tree) if isinstance(node, (ast.ClassDef, ast.FunctionDef))
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                  for line in range(node.body[0].lineno, node.body[0].end_lineno + 1)}
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    code_at = {line for token in tokenize.generate_tokens(io.StringIO(code).readline) if token.type not in skip
               for line in range(token.start[0], token.end[0] + 1)}
    return len(code_at & spans - docstrings)


def test_the_readme_counts_the_lines_of_each_new_model():
    table = README.read_text().split("| family | base | a new model writes |", 1)[1].split("\n\n", 1)[0]
    rows = [row.split("|") for row in table.splitlines()[2:]]
    families = [row[1].strip() for row in rows]
    assert families == ["autoregressive", "flow", "diffusion", "energy-based", "GAN", "sequence"]
    for row in rows:
        assert code_lines(section_code(row[1].strip())) == int(row[5]), row


@pytest.mark.slow
def test_the_readme_coin_runs_as_written_and_finds_the_exact_posterior(capsys):
    use = README.read_text().split("\n## Use\n", 1)[1].split("\n### ", 1)[0]
    [coin] = [block for block in re.findall(r"```python\n(.*?)```", use, flags=re.S) if "def coin" in block]
    namespace: dict = {"ppgen": ppgen}
    exec(compile(coin, f"{README} (coin)", "exec"), namespace)
    low, median, high = namespace["program"].guide.quantiles([0.05, 0.5, 0.95])["p"].tolist()
    exact = namespace["posterior"]
    # the Beta posterior is nearly normal at 1000 flips: the Gaussian guide's median within a third of
    # the posterior sd of its mean, and its 90% interval within 15% of the exact width (1.645 sd each way)
    assert abs(median - exact.mean.item()) < exact.variance.sqrt().item() / 3
    assert abs((high - low) / (2 * 1.645 * exact.variance.sqrt().item()) - 1) < 0.15
    printed = capsys.readouterr().out
    assert "data plate 'flips' ranges over the 1000 rows" in printed
    assert f"{median:.4f}" in use  # the figures the README quotes are the ones it prints


@pytest.mark.slow
def test_the_readme_elbo_report_block_is_what_elbo_report_prints(capsys):
    text = README.read_text().split("Reading `elbo_report`", 1)[1]
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.S)[:2]
    namespace = {"ppgen": ppgen, "x": ppgen.load_dataset("digits", "train").x[:512],
                 "test": ppgen.load_dataset("digits", "test").x}
    exec(compile(code.replace("epochs=5", "epochs=1").replace("test[:500]", "test[:100]"), "README", "exec"),
         namespace)
    printed = capsys.readouterr().out

    def labels(report: str) -> list[str]:  # each line's words before its first figure
        return [re.split(r"\s+-?\d", line.strip(), maxsplit=1)[0] for line in report.strip().splitlines()]

    assert labels(printed) == labels(shown)

