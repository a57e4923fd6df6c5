"""Discrete Bayesian networks: every exact answer against brute-force enumeration of the joint,
sampling against exact marginals within Monte Carlo error, learning against counts and the
conjugate Dirichlet posterior, BIF round trips and pgmpy's VariableElimination."""

import gzip
import itertools
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from ppgen.inference import fit
from ppgen.models.bayesnet import BayesianCPTs, BayesNet, FullJointTable


def example(name: str) -> Path:
    """A bnlearn network bundled with pgmpy (a test extra) as BIF."""
    pgmpy = pytest.importorskip("pgmpy")
    return Path(pgmpy.__file__).parent / "utils" / "example_models" / f"{name}.bif.gz"


def rain_net():
    return BayesNet({"rain": ["no", "yes"], "wet": ["no", "yes", "puddle"]}, {"wet": ["rain"]},
                    {"rain": [0.7, 0.3], "wet": [[0.8, 0.15, 0.05], [0.1, 0.5, 0.4]]})


def brute_joint(net: BayesNet) -> np.ndarray:
    """p(x) for every configuration, by multiplying CPT entries in plain Python."""
    joint = np.zeros(net.cards)
    cpts = {v: c.numpy() for v, c in net.cpts.items()}
    for config in itertools.product(*(range(c) for c in net.cards)):
        value = dict(zip(net.variables, config))
        joint[config] = math.prod(cpts[v][tuple(value[p] for p in net.parents[v]) + (value[v],)]
                                  for v in net.variables)
    return joint


def brute_posterior(net, joint, evidence: dict[str, int]):
    """p(e) and p(x_v | e) for every variable, by slicing and summing the full joint."""
    index = tuple(evidence.get(v, slice(None)) for v in net.variables)
    sliced = joint[index]
    free = [v for v in net.variables if v not in evidence]
    marginals = {v: sliced.sum(axis=tuple(k for k in range(len(free)) if free[k] != v)) / sliced.sum()
                 for v in free}
    return sliced.sum(), marginals


@st.composite
def random_networks(draw):
    """Random DAGs (parents among earlier variables, shuffled column order) with Dirichlet CPTs."""
    n = draw(st.integers(2, 6))
    cards = draw(st.lists(st.integers(2, 3), min_size=n, max_size=n))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    names = [f"v{i}" for i in range(n)]
    parents = {names[i]: [names[j] for j in sorted(rng.choice(i, size=min(i, rng.integers(0, 4)), replace=False))]
               for i in range(n)}
    cpts = {names[i]: rng.dirichlet(np.ones(cards[i]), size=tuple(cards[names.index(p)] for p in parents[names[i]]))
            for i in range(n)}
    order = list(rng.permutation(n))
    states = {names[i]: [f"s{k}" for k in range(cards[i])] for i in order}
    return BayesNet(states, parents, cpts), rng


@settings(max_examples=12, deadline=None)
@given(random_networks())
def test_random_dags_match_brute_force(case):
    net, rng = case
    joint = brute_joint(net)
    assert joint.sum() == pytest.approx(1.0, abs=1e-12)
    observed = [v for v in net.variables if rng.random() < 0.4]
    evidence = {v: int(rng.integers(net.cards[net.variables.index(v)])) for v in observed}
    evidence_prob, expected = brute_posterior(net, joint, evidence)
    posterior = net.posterior(evidence)
    assert set(posterior) == set(expected)
    for v, p in expected.items():
        np.testing.assert_allclose(posterior[v].numpy(), p, atol=1e-12)
    row = torch.tensor([[evidence.get(v, -1) for v in net.variables]], dtype=torch.float64)
    assert net.log_prob(row).item() == pytest.approx(math.log(evidence_prob), abs=1e-10)
    # MPE: the argmax of the joint over the unobserved variables
    index = tuple(evidence.get(v, slice(None)) for v in net.variables)
    best = np.unravel_index(joint[index].argmax(), joint[index].shape)
    free = [v for v in net.variables if v not in evidence]
    mpe = net.mpe({v: net.states[v][s] for v, s in evidence.items()})
    assert {v: net.states[v].index(mpe[v]) for v in free} == {v: int(b) for v, b in zip(free, best)}


def test_batched_rows_equal_one_query_per_row():
    net = BayesNet.from_bif(example("asia"))
    joint = brute_joint(net)
    rows = net.sample(60)
    rows[torch.rand(rows.shape) < 0.5] = -1
    rows[0] = -1  # nothing observed: the prior
    posterior = net.posterior(rows)
    log_p = net.log_prob(rows.double())
    for n, row in enumerate(rows.long().tolist()):
        evidence = {v: s for v, s in zip(net.variables, row) if s >= 0}
        evidence_prob, expected = brute_posterior(net, joint, evidence)
        assert log_p[n].item() == pytest.approx(math.log(evidence_prob), abs=1e-10)
        for v in net.variables:
            want = expected[v] if v in expected else np.eye(net.cards[net.variables.index(v)])[evidence[v]]
            np.testing.assert_allclose(posterior[v][n].numpy(), want, atol=1e-12)


@pytest.mark.parametrize("name", ["asia", "alarm"])
def test_contraction_path_equals_table_lookup(name, monkeypatch):
    # Small queries are answered from a cached marginal table, large ones by the folded einsum
    # path; with the table limit at 0 every query takes the einsum path, and the two must agree.
    net = BayesNet.from_bif(example(name))
    rows = net.sample(200)
    rows[torch.rand(rows.shape) < 0.7] = -1
    evidence = {net.variables[1]: 0, net.variables[3]: 1}
    queries = [net.variables[0], net.variables[-1]]
    by_table = net.posterior(rows, queries), net.posterior(evidence), net.log_prob(rows.double())
    monkeypatch.setattr("ppgen.models.bayesnet._TABLE_LIMIT", 0)
    by_einsum = BayesNet.from_bif(example(name))
    by_einsum = by_einsum.posterior(rows, queries), by_einsum.posterior(evidence), by_einsum.log_prob(rows.double())
    for table_result, einsum_result in zip(by_table[:2], by_einsum[:2]):
        for v in table_result:
            torch.testing.assert_close(table_result[v], einsum_result[v], rtol=0, atol=1e-10)
    torch.testing.assert_close(by_table[2], by_einsum[2], rtol=0, atol=1e-9)


def test_log_prob_of_complete_rows_and_normalisation():
    net = BayesNet.from_bif(example("asia"))
    configs = torch.tensor(list(itertools.product(range(2), repeat=8)), dtype=torch.float64)
    log_p = net.log_prob(configs)
    np.testing.assert_allclose(log_p.exp().numpy(), brute_joint(net).reshape(-1), atol=1e-15)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_pyro_program_agrees_with_the_contractions():
    """The model's trace log-density on complete rows, and TraceEnum_ELBO's enumerated sum over
    missing entries, equal the exact log-likelihood."""
    net = BayesNet.from_bif(example("asia"))
    x = net.sample(50).double()
    trace = poutine.trace(net.model).get_trace(x)
    trace.compute_log_prob()
    program = sum(site["log_prob"] for name, site in trace.nodes.items() if name in net.states)
    np.testing.assert_allclose(program.numpy(), net.log_prob(x).numpy(), atol=1e-10)
    partial = x.clone()
    partial[:, [1, 3, 5]] = -1  # tub, lung and either unobserved
    partial[::2, 7] = -1  # dysp unobserved in half the rows (obs_mask)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(net.model, net.guide, partial)
    assert -loss == pytest.approx(net.log_prob(partial).sum().item(), abs=1e-8)


def test_sampling_frequencies_match_exact_marginals():
    """Forward and conditional samples: every state frequency within 4.5 standard errors
    sqrt(p (1 - p) / n) of the exact probability (about 1 in 150,000 per check by chance)."""
    net = BayesNet.from_bif(example("asia"))
    n = 4000
    cases = [(net.sample(n), net.posterior()), (net.sample(n, evidence={"dysp": "yes", "asia": "yes"}),
                                               net.posterior({"dysp": "yes", "asia": "yes"}))]
    for samples, exact in cases:
        for v, p in exact.items():
            freq = torch.bincount(samples[:, net.variables.index(v)].long(), minlength=len(p)).double() / n
            se = (p * (1 - p) / n).sqrt()
            assert ((freq - p).abs() <= 4.5 * se + 1e-12).all(), (v, freq, p)
    conditional = cases[1][0]
    assert (conditional[:, net.variables.index("dysp")] == 0).all()
    assert (conditional[:, net.variables.index("asia")] == 0).all()
    # 'either' is a deterministic OR: an impossible combination never appears
    tub, lung, either = (conditional[:, net.variables.index(v)] for v in ("tub", "lung", "either"))
    assert ((either == 0) == ((tub == 0) | (lung == 0))).all()


def test_mle_equals_counts():
    net = BayesNet.from_bif(example("asia"))
    x = net.sample(300)
    rows = x.long().tolist()
    for pseudo in (0.0, 1.5):
        learned = net.fit_mle(x, pseudo_count=pseudo)
        for v in net.variables:
            i, pa = net.variables.index(v), [net.variables.index(p) for p in net.parents[v]]
            counts = Counter((tuple(r[p] for p in pa), r[i]) for r in rows)
            for u in itertools.product(*(range(net.cards[p]) for p in pa)):
                total = sum(counts[(u, s)] for s in range(net.cards[i])) + pseudo * net.cards[i]
                for s in range(net.cards[i]):
                    want = (counts[(u, s)] + pseudo) / total if total else 1 / net.cards[i]
                    assert learned.cpts[v][u + (s,)].item() == pytest.approx(want, abs=1e-15)


def test_learned_cpts_recover_the_generating_ones():
    """Error of every CPT row seen n_u >= 200 times within 5 standard errors, and the largest
    error shrinks as the data grows."""
    net = BayesNet.from_bif(example("child"))
    errors = []
    for n in (500, 20_000):
        x = net.sample(n)
        learned, counts = net.fit_mle(x), net.counts(x)
        worst = 0.0
        for v in net.variables:
            n_u = counts[v].sum(-1, keepdim=True)
            seen = (n_u >= 200).expand_as(counts[v])
            truth = net.cpts[v]
            se = (truth * (1 - truth) / n_u.clamp(min=1)).sqrt()
            assert ((learned.cpts[v] - truth).abs()[seen] <= 5 * se[seen] + 1e-12).all(), v
            worst = max(worst, (learned.cpts[v] - truth).abs().max().item() if n_u.min() > 0 else 0.0)
        errors.append(sum(((learned.cpts[v] - net.cpts[v]) ** 2 * counts[v].sum(-1, keepdim=True)).sum().item()
                          / n for v in net.variables))
    assert errors[1] < errors[0] / 5


def posterior_means(concentration: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {v: c / c.sum(-1, keepdim=True) for v, c in concentration.items()}


def max_gap(a, b) -> float:
    return max((a[v] - b[v]).abs().max().item() for v in a)


def test_svi_dirichlet_posterior_matches_the_conjugate_closed_form():
    """Complete data: q(theta) -> Dirichlet(alpha + counts). Tolerance 0.03 on the means; the
    maximum-likelihood CPTs (prior ignored) and the prior means (data ignored) are both farther
    than 0.1 from the exact answer, so a fit that returned either would fail."""
    net = rain_net()
    x = net.sample(30)
    bayes = BayesianCPTs(net, concentration=2.0)
    exact = posterior_means(bayes.conjugate_posterior(x))
    fit(bayes, x, epochs=150, batch_size=30, lr=0.1, num_particles=16, seed=0, progress=False)
    svi = posterior_means(bayes.posterior_concentration())
    assert max_gap(svi, exact) < 0.03
    mle = posterior_means(net.counts(x))
    prior = posterior_means({v: torch.ones_like(c) for v, c in exact.items()})
    assert max_gap(mle, exact) > 0.1 and max_gap(prior, exact) > 0.1
    assert max_gap(bayes.posterior_mean().cpts, exact) < 0.03


def test_svi_with_missing_values_is_enumerated():
    """Missing children (parents observed) drop out of the conjugate update: the exact posterior is
    Dirichlet(alpha + counts of the observed entries); the enumerated SVI fit must reach it."""
    net = rain_net()
    x = net.sample(40)
    x[:15, 1] = -1
    bayes = BayesianCPTs(net, concentration=2.0)
    rain_counts = torch.bincount(x[:, 0].long(), minlength=2).double()
    exact = {"rain": 2.0 + rain_counts, "wet": 2.0 + net.counts(x[15:])["wet"]}
    fit(bayes, x, elbo="enum", epochs=150, batch_size=40, lr=0.1, num_particles=16, seed=0, progress=False)
    svi = posterior_means(bayes.posterior_concentration())
    assert max_gap(svi, posterior_means(exact)) < 0.03
    missing_as_state_0 = posterior_means({"rain": exact["rain"], "wet": 2.0 + net.counts(x.clamp(min=0))["wet"]})
    assert max_gap(missing_as_state_0, posterior_means(exact)) > 0.1


@pytest.mark.parametrize("name", ["asia", "child", "insurance", "alarm", "hailfinder", "win95pts"])
def test_bif_round_trip_is_lossless(name, tmp_path):
    net = BayesNet.from_bif(example(name))
    for path in (tmp_path / "net.bif", tmp_path / "net.bif.gz"):
        net.to_bif(path)
        again = BayesNet.from_bif(path)
        assert again.states == net.states and again.parents == net.parents
        for v in net.variables:
            assert torch.equal(again.cpts[v], net.cpts[v])


def test_bif_table_with_parents_and_default_rows(tmp_path):
    text = """network t {
}
variable a { type discrete [ 2 ] { x, y }; }
variable b { type discrete [ 3 ] { p, q, r }; property note; }
probability ( a ) { table 0.25, 0.75; }
probability ( b | a ) { table 0.1, 0.2, 0.3, 0.4, 0.6, 0.4; }
"""
    (tmp_path / "t.bif").write_text(text)
    net = BayesNet.from_bif(tmp_path / "t.bif")
    # child slowest, parent fastest: P(b=p|a=x)=0.1, P(b=p|a=y)=0.2, P(b=q|a=x)=0.3, ...
    np.testing.assert_allclose(net.cpts["b"].numpy(), [[0.1, 0.3, 0.6], [0.2, 0.4, 0.4]])
    (tmp_path / "d.bif").write_text(text.replace("table 0.1, 0.2, 0.3, 0.4, 0.6, 0.4;",
                                                 "(y) 0.5, 0.5, 0.0; default 0.2, 0.2, 0.6;"))
    np.testing.assert_allclose(BayesNet.from_bif(tmp_path / "d.bif").cpts["b"].numpy(),
                               [[0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])


@pytest.mark.parametrize("text, message", [
    ("network x {\n}\nvariable a {\n  type discrete [ 3 ] { u, v };\n}\n", r"line 4: variable 'a' declares \[ 3 \]"),
    ("variable a {\n  type discrete [ 2 ] { u, v };\n}\nprobability ( a ) {\n  table 0.5, zero;\n}\n",
     r"line 5: expected a probability, got 'zero'"),
    ("variable a {\n  type discrete [ 2 ] { u, v };\n}\nprobability ( a | b ) {\n  table 0.5, 0.5;\n}\n",
     r"line 4: probability block names 'b'"),
    ("variable a {\n  type discrete [ 2 ] { u, v }\n}\n", r"line 3: expected ';', got '}'"),
    ("varible a {\n}\n", r"line 1: expected 'network', 'variable' or 'probability', got 'varible'"),
    ("variable a {\n  type discrete [ 2 ] { u, v };\n}\nvariable b {\n  type discrete [ 2 ] { u, v };\n}\n"
     "probability ( a ) {\n  table 0.5, 0.5;\n}\nprobability ( b | a ) {\n  (u) 0.5, 0.5;\n  (w) 0.5, 0.5;\n}\n",
     r"line 12: 'w' is not a state of 'a'"),
    ("variable a {\n  type discrete [ 2 ] { u, v };\n}\nvariable b {\n  type discrete [ 2 ] { u, v };\n}\n"
     "probability ( a ) {\n  table 0.5, 0.5;\n}\nprobability ( b | a ) {\n  (u) 0.5, 0.5;\n}\n",
     r"line 10: the probability block of 'b' has no row for parents \{'a': 'v'\}"),
    ("variable a {\n  type discrete [ 2 ] { u, v };\n}\nprobability ( a ) {\n  table 0.5, 0.5, 0.1;\n}\n",
     r"line 5: the table of 'a' needs 2 numbers, got 3"),
])
def test_malformed_bif_names_the_line(tmp_path, text, message):
    path = tmp_path / "bad.bif.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    with pytest.raises(ValueError, match=message):
        BayesNet.from_bif(path)


def test_parameter_counts_and_full_joint_table():
    net = BayesNet.from_bif(example("asia"))
    # asia: 2 roots, 4 one-parent and 2 two-parent binary variables
    assert net.num_parameters == 2 * 1 + 4 * 2 + 2 * 4 == 18
    assert net.parameter_counts() == {"full_joint": 255, "bayes_net": 18, "factorised": 8}
    table = FullJointTable(8)
    assert table.num_parameters == net.parameter_counts()["full_joint"]
    alarm = BayesNet.from_bif(example("alarm"))
    assert alarm.num_parameters == 509  # the figure bnlearn publishes for ALARM
    assert alarm.parameter_counts()["full_joint"] == math.prod(alarm.cards) - 1


def test_full_joint_table_is_exact():
    x = BayesNet.from_bif(example("asia")).sample(500)[:, :4]
    table = FullJointTable.from_frequencies(x, pseudo_count=0.5)
    configs = torch.tensor(list(itertools.product(range(2), repeat=4)), dtype=torch.float32)
    counts = Counter(tuple(r) for r in x.long().tolist())
    want = [(counts[tuple(c)] + 0.5) / (500 + 8) for c in configs.long().tolist()]
    np.testing.assert_allclose(table.log_prob(configs).detach().exp().numpy(), want, rtol=1e-5)  # differentiable: fit
    samples = table.sample(4000)
    freq = (samples[:, None, :] == configs[None]).all(-1).double().mean(0).numpy()
    se = np.sqrt(np.array(want) * (1 - np.array(want)) / 4000)
    assert (np.abs(freq - want) <= 4.5 * se).all()
    with pytest.raises(ValueError, match=r"needs 2\^25 = 33554432 cells; the limit is 2\^24"):
        FullJointTable(25)
    FullJointTable(3, cardinality=3).log_prob(torch.full((1, 3), 2.0))
    with pytest.raises(ValueError, match=r"x\[0, 1\] = 3 is not a state index of 'column 1'"):
        FullJointTable(3, cardinality=3).log_prob(torch.tensor([[0.0, 3.0, 1.0]]))


def test_errors_name_what_is_wrong():
    states = {"a": ["0", "1"], "b": ["0", "1"], "c": ["0", "1"]}
    with pytest.raises(ValueError, match=r"cycle: a -> b -> c -> a"):
        BayesNet(states, {"b": ["a"], "c": ["b"], "a": ["c"]})
    with pytest.raises(ValueError, match=r"cpts\['b'\]: the row for parents \{'a': '1'\} sums to 0.9"):
        BayesNet(states, {"b": ["a"]}, {"a": [0.5, 0.5], "b": [[0.5, 0.5], [0.3, 0.6]], "c": [1.0, 0.0]})
    with pytest.raises(ValueError, match=r"cpts\['b'\] must have shape \(2, 2\) = \(card\(a\)=2, card\(b\)=2\)"):
        BayesNet(states, {"b": ["a"]}, {"a": [0.5, 0.5], "b": [0.5, 0.5], "c": [1.0, 0.0]})
    with pytest.raises(ValueError, match=r"parents\['b'\] names unknown variable 'z'"):
        BayesNet(states, {"b": ["z"]})
    net = rain_net()
    with pytest.raises(ValueError, match=r"evidence names unknown variable 'snow'"):
        net.posterior({"snow": "yes"})
    with pytest.raises(ValueError, match=r"'dry' is not a state of 'wet'; its states are \['no', 'yes', 'puddle'\]"):
        net.posterior({"wet": "dry"})
    with pytest.raises(ValueError, match=r"state index 3 of 'wet' is out of range 0..2"):
        net.mpe({"wet": 3})
    with pytest.raises(ValueError, match=r"query names unknown variable 'snow'"):
        net.posterior({}, query="snow")
    with pytest.raises(ValueError, match=r"evidence\[0, 1\] = 5 is not a state index of 'wet'"):
        net.posterior(torch.tensor([[0.0, 5.0]]))


def test_zero_probability_evidence_is_refused():
    net = BayesNet.from_bif(example("asia"))
    impossible = {"either": "yes", "tub": "no", "lung": "no"}  # either is a deterministic OR
    for call in (lambda: net.posterior(impossible), lambda: net.posterior(impossible, query="dysp"),
                 lambda: net.mpe(impossible), lambda: net.sample(5, evidence=impossible)):
        with pytest.raises(ValueError, match=r"has probability zero under the network"):
            call()
    rows = torch.full((3, 8), -1.0)
    rows[1, [1, 3, 5]] = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"row 1 of evidence \{'tub': 'no', 'lung': 'no', 'either': 'yes'\}"):
        net.posterior(rows)
    assert net.log_prob(rows.double())[1].item() == -math.inf


@pytest.fixture(scope="module")
def pgmpy_models():
    """pgmpy's VariableElimination on each network (pgmpy warns about its own deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("pgmpy")
        from pgmpy.inference import VariableElimination
        from pgmpy.readwrite import BIFReader

        return {name: VariableElimination(BIFReader(string=gzip.open(example(name), "rt").read()).get_model())
                for name in ("asia", "child", "insurance", "alarm")}


@pytest.mark.parametrize("name", ["asia", "child", "insurance", "alarm"])
def test_posteriors_agree_with_pgmpy(name, pgmpy_models):
    net = BayesNet.from_bif(example(name))
    row = net.sample(1)[0].long()
    observed = [net.variables[i] for i in torch.randperm(net.x_dim)[:3].tolist()]
    evidence = {v: net.states[v][int(row[net.variables.index(v)])] for v in observed}
    ours = net.posterior(evidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v, p in ours.items():
            factor = pgmpy_models[name].query([v], evidence=evidence, show_progress=False)
            theirs = [factor.values[factor.state_names[v].index(s)] for s in net.states[v]]
            np.testing.assert_allclose(p.numpy(), theirs, atol=1e-6)


def brute_expected_counts(net: BayesNet, joint: np.ndarray, rows: torch.Tensor):
    """Sum over rows of p(family | observed entries) for every family, and sum of log p(observed
    entries), by masking and summing the full joint."""
    counts = {v: np.zeros(tuple(net.cpts[v].shape)) for v in net.variables}
    total = 0.0
    for row in rows.long().tolist():
        index = tuple(slice(None) if s < 0 else slice(s, s + 1) for s in row)
        posterior = np.zeros_like(joint)
        posterior[index] = joint[index]
        total += math.log(posterior.sum())
        posterior /= posterior.sum()
        for i, v in enumerate(net.variables):
            family = [net.variables.index(p) for p in net.parents[v]] + [i]
            marginal = posterior.sum(axis=tuple(k for k in range(net.x_dim) if k not in family))
            counts[v] += np.transpose(marginal, [sorted(family).index(f) for f in family])
    return counts, total


@settings(max_examples=10, deadline=None)
@given(random_networks())
def test_expected_counts_equal_brute_force(case):
    net, rng = case
    rows = net.sample(30)
    rows[torch.as_tensor(rng.random(tuple(rows.shape)) < 0.4)] = -1
    rows[0] = -1  # nothing observed: the prior's family marginals
    want, log_likelihood = brute_expected_counts(net, brute_joint(net), rows)
    got = net.counts(rows)
    for v in net.variables:
        np.testing.assert_allclose(got[v].numpy(), want[v], atol=1e-10)
    assert net.log_prob(rows.double()).double().sum().item() == pytest.approx(log_likelihood, abs=1e-4)


def em_step(net: BayesNet, x: torch.Tensor) -> BayesNet:
    """One EM iteration written out: expected counts (checked above against brute force), normalised."""
    return BayesNet(net.states, net.parents, {v: c / c.sum(-1, keepdim=True) for v, c in net.counts(x).items()})


def test_em_climbs_to_a_maximum_of_the_observed_data_likelihood():
    """Asia, 30% of the entries missing at random, EM from uniform CPTs. The log-likelihood of the
    observed entries (computed by log_prob, a separate contraction) never decreases along EM
    steps; fit_mle stops at a fixed point (one more step moves no CPT entry by more than 1e-3
    and gains < 1e-5 nats per row); and there it is at least the generating network's
    log-likelihood, which a maximum of the likelihood must be."""
    truth = BayesNet.from_bif(example("asia"))
    torch.manual_seed(0)
    x = truth.sample(3000)
    x[torch.rand(x.shape) < 0.3] = -1
    start = BayesNet(truth.states, truth.parents)

    def loglik(net):
        return net.log_prob(x.double()).sum().item() / len(x)

    net, history = start, [loglik(start)]
    for _ in range(8):
        net = em_step(net, x)
        history.append(loglik(net))
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:])), history
    fitted = start.fit_mle(x)
    again = em_step(fitted, x)
    assert max_gap(again.cpts, fitted.cpts) < 1e-3
    assert loglik(again) - loglik(fitted) < 1e-5
    assert loglik(fitted) >= max(history) - 1e-9
    assert loglik(fitted) >= loglik(truth)
    # complete-case analysis keeps only the ~190 rows without a gap: even smoothed it fits worse
    complete = x[(x >= 0).all(1)]
    assert loglik(start.fit_mle(complete, pseudo_count=1.0)) < loglik(start.fit_mle(x, pseudo_count=1.0)) - 0.02


def test_em_errors_and_warnings():
    net = BayesNet.from_bif(example("asia"))
    rows = torch.full((2, 8), -1.0)
    rows[1, [1, 3, 5]] = torch.tensor([1.0, 1.0, 0.0])  # either = OR(tub, lung) rules this out
    with pytest.raises(ValueError, match=r"a row of x, \{'tub': 'no', 'lung': 'no', 'either': 'yes'\}, has "
                                         r"probability zero under the current CPTs"):
        net.fit_mle(rows)
    with pytest.raises(ValueError, match=r"x\[0, 1\] = 2 is not a state index of 'tub'"):
        net.counts(torch.tensor([[0.0, 2.0] + [0.0] * 6]))
    with pytest.raises(ValueError, match=r"max_iter must be a positive int, got 0"):
        net.fit_mle(rows, max_iter=0)
    x = net.sample(200)
    x[::2, 3] = -1
    with pytest.warns(RuntimeWarning, match=r"EM did not converge in max_iter=1 iterations"):
        net.fit_mle(x, max_iter=1)
    with pytest.raises(ValueError, match=r"conjugate_posterior needs complete rows"):
        BayesianCPTs(net).conjugate_posterior(x)
