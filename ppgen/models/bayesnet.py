r"""Discrete Bayesian networks as Pyro programs, with exact inference by cached tensor contractions.

A Bayesian network over discrete variables :math:`x_1, \dots, x_V` is a DAG and one conditional
probability table (CPT) per variable:

.. math::
    p(x) = \prod_{i=1}^{V} p(x_i \mid \mathrm{pa}(x_i)).

:class:`BayesNet` writes this story as a Pyro program (each variable drawn from its CPT in
topological order, missing observations summed out by enumeration) and answers exact queries
(posterior marginals, log-likelihoods of partial rows, most probable explanations, conditional
samples) by contracting the CPTs as tensors with ``opt_einsum``. A contraction path is computed
once per (observed-variable set, query) pattern and cached; a batch of evidence rows is one more
tensor index. :meth:`BayesNet.fit_mle` learns the CPTs by counting, or by EM when entries are
missing (expected counts for every row in one batched contraction). :class:`BayesianCPTs` puts
Dirichlet priors on the CPT rows and learns their posterior by SVI (:func:`ppgen.inference.fit`).
:class:`FullJointTable` is the baseline with one probability per joint configuration.

References: J. Pearl, *Probabilistic Reasoning in Intelligent Systems*, 1988; D. Koller and
N. Friedman, *Probabilistic Graphical Models*, MIT Press 2009 (chapters 3, 9, 13, 17);
A. Darwiche, "A differential approach to inference in Bayesian networks", JACM 2003, and
*Modeling and Reasoning with Bayesian Networks*, 2009; A. Dempster, N. Laird and D. Rubin,
"Maximum likelihood from incomplete data via the EM algorithm", JRSS B 1977.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence

import opt_einsum
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import infer_discrete
from pyro.ops.indexing import Vindex
from torch import nn

from ppgen.models.base import GenerativeModel, _check_count, local_params, num_rows
from ppgen.models.bif import read_bif, write_bif

__all__ = ["BayesNet", "BayesianCPTs", "FullJointTable"]

ROW_SUM_TOLERANCE = 1e-6
_BATCH_NOMINAL = 1024  # batch size the contraction paths of batched queries are optimised for
_TABLE_LIMIT = 2**16  # batched queries over at most this many joint cells become table lookups
_EM_CHUNK = 1024  # partial rows per E-step contraction (bounds its memory)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A compiled contraction: which CPTs enter, how evidence indexes them, and the pairwise steps.

    ``operands``: (variable, axis permutation putting observed axes first, evidence columns).
    ``steps``: opt_einsum's contraction path as (operand positions to pop, einsum equation in
    letters torch accepts); each result is appended to the operand list, as opt_einsum does.
    """

    operands: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]
    steps: tuple[tuple[tuple[int, ...], str], ...]
    _folded: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __call__(self, *tensors: torch.Tensor, constant: Sequence[bool] = (), version=None) -> torch.Tensor:
        """Run the steps. ``constant[k]`` marks ``tensors[k]`` as a function of the CPTs alone:
        a step whose inputs are all constant is computed once per CPT ``version`` and reused
        (constant folding: most of a query's contraction does not involve the evidence)."""
        tensors = list(tensors)
        flags = [bool(c) for c in constant] + [False] * (len(tensors) - len(constant))
        if version is not None and self._folded.get("version") != version:
            self._folded.clear()
            self._folded["version"] = version
        for j, (positions, equation) in enumerate(self.steps):
            inputs = [tensors.pop(k) for k in positions]
            input_flags = [flags.pop(k) for k in positions]
            folded = version is not None and all(input_flags)
            if folded and j in self._folded:
                result = self._folded[j]
            else:
                result = torch.einsum(equation, *inputs)
                if folded:
                    self._folded[j] = result
            tensors.append(result)
            flags.append(folded)
        return tensors[0]


class BayesNet(GenerativeModel):
    r"""A discrete Bayesian network: a DAG over categorical variables and their CPTs.

    Generative story, for each row n, visiting the variables in topological order:

    .. math::
        x_{n,i} \mid \mathrm{pa}(x_{n,i}) \sim \mathrm{Categorical}\big(\theta_i[\mathrm{pa}(x_{n,i}), :]\big),
        \qquad p(x_n) = \prod_i \theta_i[\mathrm{pa}(x_{n,i}), x_{n,i}].

    Free parameters: :math:`\sum_i (|x_i| - 1) \prod_{j \in \mathrm{pa}(i)} |x_j|`
    (:attr:`num_parameters`; :meth:`parameter_counts` compares it with the full joint table and
    the fully factorised model).

    **CPT axis convention.** ``cpts[v]`` has shape ``(card(p_1), ..., card(p_k), card(v))`` for
    ``parents[v] = [p_1, ..., p_k]``: one axis per parent in the order listed, the child last.
    ``cpts[v][i_1, ..., i_k, :]`` is :math:`p(v \mid p_1 = s_{i_1}, \dots, p_k = s_{i_k})` and sums
    to 1 (within 1e-6). Roots have shape ``(card(v),)``. CPTs are stored in float64.

    **Data.** A row is a vector of state indices in the column order of ``states`` (its keys),
    held as floats like all ppgen data (integer tensors are accepted and converted exactly);
    ``-1`` marks a missing entry, which :meth:`model` sums out by enumeration and
    :meth:`log_prob` marginalises exactly.

    Parameters
    ----------
    states : dict of str to list of str
        The variables (in column order) and the names of their states.
    parents : dict of str to list of str, optional
        The parents of each variable; variables left out are roots.
    cpts : dict of str to array, optional
        One CPT per variable (convention above). Default: uniform CPTs (to be learned with
        :meth:`fit_mle`).

    Raises
    ------
    ValueError
        For a cycle (the message names it), an unknown parent, a CPT of the wrong shape, with
        negative entries, or a row that does not sum to 1 (naming the parent assignment).

    Examples
    --------
    >>> net = BayesNet(states={"rain": ["no", "yes"], "wet": ["no", "yes"]},
    ...                parents={"wet": ["rain"]},
    ...                cpts={"rain": [0.8, 0.2], "wet": [[0.9, 0.1], [0.2, 0.8]]})
    >>> net.posterior({"wet": "yes"})["rain"]
    tensor([0.3333, 0.6667], dtype=torch.float64)
    >>> net.log_prob(torch.tensor([[1., 1.], [-1., 1.]])).exp()
    tensor([0.1600, 0.2400])
    >>> net.mpe({"wet": "yes"})
    {'rain': 'yes', 'wet': 'yes'}
    >>> net.num_parameters, net.parameter_counts()["full_joint"]
    (3, 3)
    """

    has_exact_likelihood = True
    data_support = "categorical"

    def __init__(self, states: Mapping[str, Sequence[str]], parents: Mapping[str, Sequence[str]] | None = None,
                 cpts: Mapping[str, object] | None = None):
        variables, states = _check_states(states)
        super().__init__(len(variables))
        self.variables, self.states = variables, states
        self.parents = _check_parents(parents or {}, self.states)
        self.cards = tuple(len(self.states[v]) for v in self.variables)
        col = {v: i for i, v in enumerate(self.variables)}
        self._parent_cols = tuple(tuple(col[p] for p in self.parents[v]) for v in self.variables)
        self.order = tuple(col[v] for v in _topological_order(self.variables, self.parents))
        self._column = col
        self._family = tuple(ps + (i,) for i, ps in enumerate(self._parent_cols))  # CPT axes
        self._strides = tuple(torch.tensor([math.prod(self.cards[a] for a in f[k + 1:]) for k in range(len(f))])
                              for f in self._family)  # flat index of a family assignment in its CPT
        cpts = dict(cpts) if cpts is not None else {v: None for v in self.variables}
        unknown = [v for v in cpts if v not in self.states]
        if unknown:
            raise ValueError(f"cpts names unknown variable(s) {unknown}; the variables are {self.variables}")
        for i, v in enumerate(self.variables):
            if v not in cpts:
                raise ValueError(f"cpts has no entry for variable {v!r} (expected an array of shape "
                                 f"{self._cpt_shape(i)})")
            self.register_buffer(f"cpt_{i}", self._check_cpt(i, cpts[v]))
        # compiled contractions by (observed, queries, batched); marginal tables by ("table", variables)
        self._plans: dict[tuple, object] = {}

    # --- construction ---------------------------------------------------------------------------

    def _cpt_shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.cards[p] for p in self._parent_cols[i]) + (self.cards[i],)

    def _check_cpt(self, i: int, cpt) -> torch.Tensor:
        v, shape = self.variables[i], self._cpt_shape(i)
        if cpt is None:
            return torch.full(shape, 1.0 / shape[-1], dtype=torch.float64)
        try:
            cpt = torch.as_tensor(cpt, dtype=torch.float64).clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"cpts[{v!r}] must be an array of numbers, got {type(cpt).__name__}") from err
        if tuple(cpt.shape) != shape:
            axes = ", ".join(f"card({a})={self.cards[self.variables.index(a)]}" for a in (*self.parents[v], v))
            raise ValueError(f"cpts[{v!r}] must have shape {shape} = ({axes}) (parents first, in the order "
                             f"{self.parents[v]}, the variable last), got {tuple(cpt.shape)}")
        if not torch.isfinite(cpt).all() or (cpt < 0).any():
            raise ValueError(f"cpts[{v!r}] must hold finite probabilities >= 0, got {cpt.min().item():g} "
                             f"... {cpt.max().item():g}")
        bad = (cpt.sum(-1) - 1).abs() > ROW_SUM_TOLERANCE
        if bad.any():
            index = tuple(int(j) for j in bad.nonzero()[0])
            assignment = {p: self.states[p][j] for p, j in zip(self.parents[v], index)}
            where = f"the row for parents {assignment}" if assignment else "the table"
            raise ValueError(f"cpts[{v!r}]: {where} sums to {cpt[index].sum().item():.9g}, not 1 "
                             f"(tolerance {ROW_SUM_TOLERANCE:g})")
        return cpt

    @classmethod
    def from_bif(cls, path: str | os.PathLike) -> "BayesNet":
        """Read a network from a BIF file (``.bif`` or ``.bif.gz``, bnlearn dialect; see :mod:`ppgen.models.bif`)."""
        network = read_bif(path)
        return cls(network.states, network.parents, network.cpts)

    def to_bif(self, path: str | os.PathLike, name: str = "unknown") -> None:
        """Write the network as BIF; :meth:`from_bif` reads back every state name and CPT entry unchanged."""
        write_bif(path, self.states, self.parents, self.cpts, name)

    @property
    def cpts(self) -> dict[str, torch.Tensor]:
        """The CPTs by variable name (axis convention in the class docstring)."""
        return dict(zip(self.variables, self._cpt_list()))

    def _cpt_list(self) -> list[torch.Tensor]:
        return [self._buffers[f"cpt_{i}"] for i in range(self.x_dim)]

    @property
    def num_parameters(self) -> int:
        r""":math:`\sum_i (|x_i| - 1) \prod_{j \in \mathrm{pa}(i)} |x_j|`."""
        return sum((self.cards[i] - 1) * math.prod(self._cpt_shape(i)[:-1]) for i in range(self.x_dim))

    def parameter_counts(self) -> dict[str, int]:
        """Free parameters of the full joint table, of this network, and of the fully factorised model."""
        return {"full_joint": math.prod(self.cards) - 1, "bayes_net": self.num_parameters,
                "factorised": sum(c - 1 for c in self.cards)}

    def extra_repr(self) -> str:
        edges = sum(len(p) for p in self._parent_cols)
        return f"variables={self.x_dim}, edges={edges}, parameters={self.num_parameters}"

    # --- the Pyro program -------------------------------------------------------------------------

    def model(self, x=None, y=None, *, size=None):
        """Draw every variable from its CPT in topological order; observe the columns of ``x``.

        Site names are the variable names. Entries of ``x`` equal to -1 are latent, marked
        ``infer={"enumerate": "parallel"}`` (summed out by ``TraceEnum_ELBO``, drawn or maximised
        by ``infer_discrete``): a column missing in every row is one latent site; a column
        missing in some rows is an observed site masked there plus a latent site
        ``"<variable>_missing"`` masked elsewhere. Returns ``{variable: value}``.
        """
        return _bn_program(self, self._cpt_list(), x, num_rows(x, y, size))

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        """Rows of state indices (floats or integers; -1 = missing) as a float tensor, or a clear error."""
        return _check_rows(x, self.variables, self.cards, name, allow_missing=True)

    # --- exact inference --------------------------------------------------------------------------

    @torch.no_grad()
    def posterior(self, evidence=None, query: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        r"""Exact posterior marginals :math:`p(x_q \mid e)`.

        One query variable costs one cached contraction. Several cost one contraction and its
        gradient: with indicator factors :math:`\lambda_q` (all ones) multiplied in,
        :math:`\partial Z / \partial \lambda_q(s) = p(x_q = s, e)` (Darwiche 2003).

        Parameters
        ----------
        evidence : dict, tensor (N, V) or None
            One evidence set ``{variable: state name or index}``, or N rows of state indices with
            -1 for unobserved entries (each row its own evidence; rows sharing a pattern of
            observed columns are answered together, the rows being one more tensor index).
        query : str or list of str, optional
            The variables wanted. Default: every variable not observed (in every row).

        Returns
        -------
        dict of str to tensor
            ``(card,)`` per variable for a dict, ``(N, card)`` for rows; float64. A variable that
            is observed gets a point mass on its observed state.

        Raises
        ------
        ValueError
            For an unknown variable or state, or evidence of probability zero.
        """
        if evidence is None or isinstance(evidence, Mapping):
            given = self._evidence_dict(evidence)
            queries = self._queries(query, lambda: [i for i in range(self.x_dim) if i not in given])
            observed = tuple(sorted(given))
            latent = tuple(q for q in queries if q not in given)
            marginals = dict(zip(latent, self._marginals(observed, latent, [given[c] for c in observed], None)))
            return {self.variables[q]: marginals[q] if q in marginals else self._point_mass(q, given[q])
                    for q in queries}
        rows = self._evidence_rows(evidence)
        queries = self._queries(query, lambda: (rows < 0).any(0).nonzero().flatten().tolist())
        out = {q: torch.empty(rows.shape[0], self.cards[q], dtype=torch.float64, device=rows.device) for q in queries}
        for observed, idx in _patterns(rows):
            latent = tuple(q for q in queries if q not in observed)
            for q, marginal in zip(latent, self._marginals(observed, latent, rows[idx], idx)):
                out[q][idx] = marginal
            for q in set(queries) - set(latent):
                out[q][idx] = self._point_mass(q, rows[idx, q])
        return {self.variables[q]: p for q, p in out.items()}

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per row, shape (N,): the joint for complete rows, the marginal likelihood
        of the observed entries for rows with missing (-1) entries (``-inf`` where impossible).
        Computed in float64, returned in the dtype of ``x``."""
        x = self.check_data(x)
        rows = x.long().to(self.device)
        out = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
        complete = (rows >= 0).all(1)
        if complete.any():
            out[complete] = self._log_joint(rows[complete])
        partial = (~complete).nonzero().squeeze(-1)
        for observed, idx in _patterns(rows[partial]):
            # nothing observed: log 1
            out[partial[idx]] = self._joint(observed, (), rows[partial[idx]])[0].log() if observed else 0.0
        return out.to(x.dtype)

    def _log_joint(self, rows: torch.Tensor) -> torch.Tensor:
        """log p(x) of complete rows (N, V): one gather per CPT."""
        total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        for i, cpt in enumerate(self._cpt_list()):
            total += cpt.reshape(-1)[self._family_index(rows, i)].log()
        return total

    def _family_index(self, rows: torch.Tensor, i: int) -> torch.Tensor:
        """Flat index into CPT ``i`` of each complete row's family assignment, shape (N,)."""
        return (rows[:, list(self._family[i])] * self._strides[i].to(rows.device)).sum(-1)

    def _marginals(self, observed: tuple[int, ...], queries: tuple[int, ...], evidence, rows) -> list[torch.Tensor]:
        """Normalised p(x_q | e) for each query; ``evidence`` is a list of ints (one evidence set,
        ``rows`` None) or (n, V) rows (``rows`` are their numbers, for error messages)."""
        if not queries:
            return []
        if rows is not None and len(queries) > 1:  # batches: one contraction per query is cheaper
            return [m for q in queries for m in self._marginals(observed, (q,), evidence, rows)]
        evidence_prob, joints = self._joint(observed, queries, evidence)
        zero = evidence_prob <= 0
        if zero.any():
            if rows is None:
                bad = {self.variables[c]: self.states[self.variables[c]][s] for c, s in zip(observed, evidence)}
                raise ValueError(f"evidence {bad} has probability zero under the network; "
                                 "posteriors given it are undefined")
            k = int(zero.nonzero()[0])
            self._refuse_impossible(evidence[k], int(rows[k]))
        return [joint / evidence_prob.unsqueeze(-1) for joint in joints]

    def _joint(self, observed: tuple[int, ...], queries: tuple[int, ...], evidence):
        """p(e) and p(x_q, e) for each query, by the cached contraction for this pattern.

        ``evidence``: None (nothing observed), a list of state indices for ``observed`` (one
        evidence set: CPTs are sliced, no batch axis), or rows (n, V) (CPTs are gathered, which
        gives them a batch axis). Returns shapes () / (card,) or (n,) / (n, card).
        """
        batched = isinstance(evidence, torch.Tensor) and bool(observed)  # no evidence: the prior, broadcast
        cpts = self._cpt_list()
        version = tuple((id(t), t._version) for t in cpts)  # changes when a CPT is replaced or edited
        table = self._marginal_table(observed + queries, version) if not batched or len(queries) <= 1 else None
        if table is not None:  # p(x_observed, x_queries) is small: the evidence is a lookup in it
            if batched:
                joint = table[tuple(evidence[:, c] for c in observed)]  # (n,) or (n, card)
                return (joint.sum(-1), [joint]) if queries else (joint, [])
            joint = table[tuple(evidence)] if observed else table  # one axis per query
            return joint.sum(), [joint.movedim(k, 0).reshape(joint.shape[k], -1).sum(-1) for k in range(joint.dim())]
        plan = self._plan(observed, queries, batched)
        if batched:
            operands = [cpts[v].permute(perm)[tuple(evidence[:, c] for c in cols)] if cols else cpts[v]
                        for v, perm, cols in plan.operands]
        else:
            value = dict(zip(observed, evidence)) if observed else {}
            operands = [cpts[v].permute(perm)[tuple(value[c] for c in cols)] if cols else cpts[v]
                        for v, perm, cols in plan.operands]
        constant = [not cols for _, _, cols in plan.operands]
        if len(queries) <= 1:
            joint = plan(*operands, constant=constant, version=version)
            return (joint.sum(-1), [joint]) if queries else (joint, [])
        with torch.enable_grad():
            batch = (evidence.shape[0],) if batched else ()
            indicators = [torch.ones(batch + (self.cards[q],), dtype=torch.float64, device=cpts[0].device,
                                     requires_grad=True) for q in queries]
            evidence_prob = plan(*operands, *indicators, constant=constant, version=version)
            joints = torch.autograd.grad(evidence_prob.sum(), indicators)
        return evidence_prob.detach(), list(joints)

    def _marginal_table(self, variables: tuple[int, ...], version) -> torch.Tensor | None:
        """The joint marginal p(x_variables) as a table with one axis per variable, in the order
        given, computed once per CPT version by one contraction; None past _TABLE_LIMIT cells."""
        if math.prod(self.cards[v] for v in variables) > _TABLE_LIMIT:
            return None
        key = ("table", variables)
        cached = self._plans.get(key)
        if cached is None or cached[0] != version:
            relevant = sorted(self._ancestors(set(variables)))
            symbol = opt_einsum.get_symbol
            cpts = self._cpt_list()
            equation = (",".join("".join(symbol(a) for a in self._family[v]) for v in relevant)
                        + "->" + "".join(symbol(v) for v in variables))
            table = opt_einsum.contract(equation, *[cpts[v] for v in relevant], backend="torch")
            cached = self._plans[key] = (version, table)
        return cached[1]

    def _plan(self, observed: tuple[int, ...], queries: tuple[int, ...], batched: bool) -> _Plan:
        key = (observed, queries, batched)
        if key not in self._plans:
            self._plans[key] = self._compile(observed, queries, batched)
        return self._plans[key]

    def _compile(self, observed: tuple[int, ...], queries: tuple[int, ...], batched: bool) -> _Plan:
        """The einsum over the CPTs of the ancestors of queries and evidence (the others sum to 1).

        A CPT's observed axes are indexed by the evidence, which leaves a batch axis in their
        place for rows of evidence. One query is the output; several get indicator operands
        (batch, card) instead. ``opt_einsum`` optimises the path once, here.
        """
        symbol = opt_einsum.get_symbol
        relevant = self._ancestors(set(observed) | set(queries))
        batch = symbol(self.x_dim) if batched else ""
        n = (_BATCH_NOMINAL,) if batched else ()
        steps, inputs, shapes = [], [], []
        for v in self.order:
            if v not in relevant:
                continue
            axes = self._family[v]
            obs_pos = [k for k, a in enumerate(axes) if a in observed]
            free = [k for k, a in enumerate(axes) if a not in observed]
            steps.append((v, tuple(obs_pos + free), tuple(axes[k] for k in obs_pos)))
            inputs.append((batch if obs_pos else "") + "".join(symbol(axes[k]) for k in free))
            shapes.append((n if obs_pos else ()) + tuple(self.cards[axes[k]] for k in free))
        if len(queries) == 1:
            output = batch + symbol(queries[0])
        else:
            output = batch
            inputs += [batch + symbol(q) for q in queries]
            shapes += [n + (self.cards[q],) for q in queries]
        _, path = opt_einsum.contract_path(",".join(inputs) + "->" + output, *shapes, shapes=True, optimize="auto")
        return _Plan(tuple(steps), tuple((positions, _ascii_equation(equation))
                                         for positions, _, equation, _, _ in path.contraction_list))

    def _ancestors(self, variables: set[int]) -> set[int]:
        seen, stack = set(), list(variables)
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(self._parent_cols[v])
        return seen

    @torch.no_grad()
    def mpe(self, evidence=None):
        r"""Most probable explanation :math:`\arg\max_{x_u} p(x_u, e)` by max-product.

        Runs the Pyro program under ``pyro.infer.infer_discrete(temperature=0)``.
        Returns ``{variable: state name}`` for a dict of evidence, or an (N, V) float tensor of
        state indices (observed entries as given) for rows of evidence.
        """
        single = evidence is None or isinstance(evidence, Mapping)
        rows = self._evidence_rows(evidence)
        self._check_possible(rows)
        values = self._infer_discrete(rows, temperature=0)
        if single:
            return {v: self.states[v][int(values[0, i])] for i, v in enumerate(self.variables)}
        return values.to(torch.get_default_dtype())

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, evidence: Mapping | None = None) -> torch.Tensor:
        r"""``n`` rows of state indices (floats), shape (n, V).

        Without evidence: ancestral sampling, each variable by inverse-CDF lookup in its CPT
        (the story of :meth:`model`, vectorised outside Pyro for speed). With a dict of
        evidence: exact draws from :math:`p(x_u \mid e)` by the Pyro program under
        ``infer_discrete`` at temperature 1 (forward filtering, backward sampling); observed
        columns hold the evidence.
        """
        n = _check_count(n, "n")
        if evidence is None:
            return self._forward_sample(n).to(torch.get_default_dtype())
        if not isinstance(evidence, Mapping):
            raise TypeError(f"evidence must be a dict {{variable: state}}, got {type(evidence).__name__}")
        rows = self._evidence_rows(evidence)
        self._check_possible(rows)
        return self._infer_discrete(rows.expand(n, -1), temperature=1).to(torch.get_default_dtype())

    def _forward_sample(self, n: int) -> torch.Tensor:
        columns: dict[int, torch.Tensor] = {}
        cpts = self._cpt_list()
        for i in self.order:
            card = self.cards[i]
            cdf = cpts[i].cumsum(-1).reshape(-1, card)  # one row per parent assignment
            flat = sum(columns[p] * (int(s) // card) for p, s in zip(self._parent_cols[i], self._strides[i]))
            cdf = cdf.index_select(0, flat) if self._parent_cols[i] else cdf.expand(n, card).contiguous()
            u = torch.rand(n, 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
            columns[i] = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # states with cdf <= u
        return torch.stack([columns[i] for i in range(self.x_dim)], -1)

    def _infer_discrete(self, rows: torch.Tensor, temperature: int) -> torch.Tensor:
        """Values of every variable with the unobserved ones drawn (1) or maximised (0) jointly."""
        if (rows >= 0).all():
            return rows
        program = infer_discrete(self.model, first_available_dim=-2, temperature=temperature)
        with local_params(self):
            nodes = poutine.trace(program).get_trace(rows.double()).nodes
        n = rows.shape[0]
        return torch.stack([torch.where(rows[:, i] >= 0, rows[:, i], nodes[f"{v}_missing"]["value"].reshape(-1))
                            if f"{v}_missing" in nodes else nodes[v]["value"].reshape(-1).expand(n)
                            for i, v in enumerate(self.variables)], -1)

    # --- evidence ---------------------------------------------------------------------------------

    def _variable_index(self, variable, what: str) -> int:
        if not isinstance(variable, str) or variable not in self._column:
            known = self.variables if self.x_dim <= 20 else self.variables[:20] + ["..."]
            raise ValueError(f"{what} names unknown variable {variable!r}; the variables are {known}")
        return self._column[variable]

    def _queries(self, query, default) -> list[int]:
        if query is None:
            return default()
        return [self._variable_index(q, "query") for q in ([query] if isinstance(query, str) else query)]

    def _evidence_dict(self, evidence) -> dict[int, int]:
        """``{variable: state name or index}`` as ``{column: state index}``."""
        return {self._variable_index(v, "evidence"): self._state_index(self._column.get(v), s)
                for v, s in (evidence or {}).items()}

    def _evidence_rows(self, evidence) -> torch.Tensor:
        """Evidence as (N, V) long rows with -1 for unobserved (a dict gives one row)."""
        if evidence is None or isinstance(evidence, Mapping):
            row = torch.full((1, self.x_dim), -1, dtype=torch.long, device=self.device)
            for c, s in self._evidence_dict(evidence).items():
                row[0, c] = s
            return row
        return self._rows(evidence, "evidence")

    def _state_index(self, i: int, state) -> int:
        v, names = self.variables[i], self.states[self.variables[i]]
        if isinstance(state, str):
            if state not in names:
                raise ValueError(f"evidence: {state!r} is not a state of {v!r}; its states are {names}")
            return names.index(state)
        if isinstance(state, numbers.Integral) and not isinstance(state, bool):
            if not 0 <= state < len(names):
                raise ValueError(f"evidence: state index {state} of {v!r} is out of range 0..{len(names) - 1}")
            return int(state)
        raise TypeError(f"evidence[{v!r}] must be a state name or index, got {type(state).__name__} {state!r}")

    def _point_mass(self, q: int, state) -> torch.Tensor:
        return nn.functional.one_hot(torch.as_tensor(state, device=self.device), self.cards[q]).double()

    def _check_possible(self, rows: torch.Tensor) -> None:
        impossible = self.log_prob(rows.double()) == -math.inf
        if impossible.any():
            k = int(impossible.nonzero()[0])
            self._refuse_impossible(rows[k], k if rows.shape[0] > 1 else None)

    def _refuse_impossible(self, row: torch.Tensor, k: int | None) -> None:
        where = "" if k is None else f"row {k} of "
        raise ValueError(f"{where}evidence {self._observed_states(row)} has probability zero under the network; "
                         "posteriors given it are undefined")

    def _observed_states(self, row: torch.Tensor) -> dict[str, str]:
        """``{variable: state name}`` of a row's observed (>= 0) entries, for messages."""
        return {v: self.states[v][int(row[i])] for i, v in enumerate(self.variables) if row[i] >= 0}

    # --- learning ---------------------------------------------------------------------------------

    def counts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Family counts: ``counts[v][pa, s]`` = number of rows with parents ``pa`` and ``v = s``
        (CPT shape, float64). A row with missing (-1) entries adds its *expected* counts under
        the current CPTs, :math:`p(\mathrm{pa}(v) = pa, v = s \mid \text{observed entries})`: the
        E-step of EM."""
        return self._statistics(self._rows(x, "x"))[0]

    def fit_mle(self, x: torch.Tensor, pseudo_count: float = 0.0, *, max_iter: int = 200,
                tol: float = 1e-6) -> "BayesNet":
        r"""A new network with the same structure and the CPTs that maximise the likelihood of ``x``.

        Complete rows: counting, :math:`\hat\theta_i[u, s] = (N_i[u, s] + c) / \sum_{s'} (N_i[u, s'] + c)`
        with ``pseudo_count`` c (c = 0: maximum likelihood; c > 0: the posterior mean under a
        symmetric Dirichlet(c) prior). Parent assignments never seen (with c = 0) get a uniform row.

        Rows with missing (-1) entries: expectation-maximisation (Dempster, Laird and Rubin 1977)
        from this network's CPTs. Each iteration replaces the counts by their expectation given
        the observed entries (:meth:`counts`, one batched contraction) and applies the formula
        above; the log-likelihood of the observed entries (c = 0; c > 0 adds
        :math:`c \sum \log\theta`) never decreases. It stops when the mean log-likelihood per
        row gains less than ``tol``, or warns after ``max_iter`` iterations. EM finds a local
        maximum; a variable that is never observed needs a start that is not uniform (a uniform
        start is a fixed point by symmetry). For the Bayesian posterior of the CPTs use
        :class:`BayesianCPTs`. Named ``fit_mle`` so as not to shadow :func:`ppgen.fit` (SVI).
        """
        if not isinstance(pseudo_count, (int, float)) or isinstance(pseudo_count, bool) or \
                not math.isfinite(pseudo_count) or pseudo_count < 0:
            raise ValueError(f"pseudo_count must be a number >= 0, got {pseudo_count!r}")
        max_iter = _check_count(max_iter, "max_iter")
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0:
            raise ValueError(f"tol must be a number > 0, got {tol!r}")
        rows = self._rows(x, "x")
        if (rows >= 0).all():
            return self._from_counts(self._statistics(rows)[0], pseudo_count)
        net, previous = self, -math.inf
        for _ in range(max_iter):
            counts, log_likelihood = net._statistics(rows)
            mean = log_likelihood / rows.shape[0]
            gain, previous = mean - previous, mean
            if gain < tol:
                return net
            net = self._from_counts(counts, pseudo_count)
        warnings.warn(f"fit_mle: EM did not converge in max_iter={max_iter} iterations (the last gained "
                      f"{gain:.3g} nats per row, tol={tol:g}); raise max_iter or tol",
                      RuntimeWarning, stacklevel=2)
        return net

    def _from_counts(self, counts: dict[str, torch.Tensor], pseudo_count: float) -> "BayesNet":
        cpts = {}
        for v, count in counts.items():
            count = count + pseudo_count
            total = count.sum(-1, keepdim=True)
            cpts[v] = torch.where(total > 0, count / total.clamp(min=1e-300), 1.0 / count.shape[-1])
        return BayesNet(self.states, self.parents, cpts)

    def _statistics(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """(Expected) family counts of ``rows`` (long, -1 = missing) and their total log-likelihood."""
        complete = (rows >= 0).all(1)
        full = rows[complete]
        out = {}
        for i, v in enumerate(self.variables):
            out[v] = torch.bincount(self._family_index(full, i), minlength=math.prod(self._cpt_shape(i))).reshape(self._cpt_shape(i))
            out[v] = out[v].to(torch.float64)
        log_likelihood = self._log_joint(full).sum().item() if len(full) else 0.0
        partial = rows[~complete]
        for start in range(0, partial.shape[0], _EM_CHUNK):
            expected, chunk_log_likelihood = self._expected_counts(partial[start:start + _EM_CHUNK])
            for v, count in zip(self.variables, expected):
                out[v] += count
            log_likelihood += chunk_log_likelihood
        return out, log_likelihood

    def _expected_counts(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        r"""Sum over rows of :math:`p(x_{\mathrm{family}(i)} \mid e_n)` for every family, and
        :math:`\sum_n \log p(e_n)`.

        One contraction for every missingness pattern at once: evidence enters as indicator
        vectors :math:`\lambda_{n,i}` (one-hot where observed, ones where missing), folded into
        the CPTs, so :math:`p(e_n) = \sum_x \prod_i \theta_i[x_{\mathrm{family}(i)}] \lambda_{n,i}[x_i]`.
        Each CPT enters once, so :math:`\theta \, \partial \log p(e_n) / \partial \theta` is the
        family's posterior marginal (Darwiche 2003); autograd sums it over the batch.
        """
        plan = self._plans.get("em")
        if plan is None:
            plan = self._plans["em"] = self._compile_em()
        cpts = [cpt.detach().requires_grad_() for cpt in self._cpt_list()]
        with torch.enable_grad():
            operands = []
            for i, cpt in enumerate(cpts):
                observed = (rows[:, i] >= 0).unsqueeze(-1)
                indicator = torch.where(observed, nn.functional.one_hot(rows[:, i].clamp(min=0), cpt.shape[-1]), 1)
                operands.append(cpt * indicator.to(cpt.dtype).reshape((-1,) + (1,) * (cpt.dim() - 1) + cpt.shape[-1:]))
            evidence_prob = plan(*operands)
            if (evidence_prob <= 0).any():
                given = self._observed_states(rows[int((evidence_prob <= 0).nonzero()[0])])
                raise ValueError(f"a row of x, {given}, has probability zero under the current CPTs, so its "
                                 "expected counts are undefined; start EM from CPTs without such zeros")
            log_likelihood = evidence_prob.log().sum()
            grads = torch.autograd.grad(log_likelihood, cpts)
        return [cpt.detach() * grad for cpt, grad in zip(cpts, grads)], log_likelihood.item()

    def _compile_em(self) -> _Plan:
        """The path of the E-step contraction: every family with a batch axis, summed to (batch,).
        The batch axis is on every operand, so the best path does not depend on the batch size."""
        symbol, batch = opt_einsum.get_symbol, opt_einsum.get_symbol(self.x_dim)
        inputs = [batch + "".join(symbol(a) for a in family) for family in self._family]
        shapes = [(_BATCH_NOMINAL,) + self._cpt_shape(i) for i in range(self.x_dim)]
        _, path = opt_einsum.contract_path(",".join(inputs) + "->" + batch, *shapes, shapes=True, optimize="auto")
        return _Plan((), tuple((positions, _ascii_equation(equation))
                               for positions, _, equation, _, _ in path.contraction_list))

    def _rows(self, x, name: str) -> torch.Tensor:
        return _check_rows(x, self.variables, self.cards, name, allow_missing=True).long().to(self.device)


class BayesianCPTs(GenerativeModel):
    r"""A Bayesian network whose CPT rows have Dirichlet priors, learned by SVI.

    Generative story, with the structure of ``net`` and concentrations :math:`\alpha`:

    .. math::
        \theta_i[u, :] \sim \mathrm{Dirichlet}(\alpha_i[u, :]) \ \text{for every parent assignment } u,
        \qquad x_n \mid \theta \sim \prod_i \theta_i[\mathrm{pa}(x_{n,i}), x_{n,i}].

    The CPTs are global latent variables (outside the ``"data"`` plate, sites ``"cpt_<variable>"``);
    the guide is a Dirichlet per CPT row with free concentrations :math:`\beta` (the
    :attr:`num_parameters` counted are these). Dirichlet-categorical is conjugate: for complete
    data the exact posterior is :math:`\mathrm{Dirichlet}(\alpha + N)` with family counts N
    (:meth:`conjugate_posterior`), which the guide family contains, so SVI can reach it. Missing
    entries (-1) are enumerated: train with ``ppgen.fit(model, x, elbo="enum")``.

    References: D. Heckerman, "A Tutorial on Learning with Bayesian Networks", 1995;
    Koller & Friedman (2009), chapter 17.

    Parameters
    ----------
    net : BayesNet
        Supplies the variables, states and parents (its CPT values are not used).
    concentration : float
        Symmetric prior concentration :math:`\alpha` of every CPT row.
    """

    has_exact_likelihood = False
    data_support = "categorical"

    def __init__(self, net: BayesNet, concentration: float = 1.0):
        if not isinstance(net, BayesNet):
            raise TypeError(f"net must be a BayesNet, got {type(net).__name__}")
        if isinstance(concentration, bool) or not isinstance(concentration, (int, float)) or \
                not math.isfinite(concentration) or concentration <= 0:
            raise ValueError(f"concentration must be a positive number, got {concentration!r}")
        super().__init__(net.x_dim)
        self.net = BayesNet(net.states, net.parents)
        self.concentration = float(concentration)
        shapes = [self.net._cpt_shape(i) for i in range(self.x_dim)]
        self.log_beta = nn.ParameterList([nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes])

    def _prior(self, i: int) -> dist.Distribution:
        alpha = torch.full(self.net._cpt_shape(i), self.concentration, dtype=torch.float64, device=self.device)
        return dist.Dirichlet(alpha).to_event(alpha.dim() - 1)

    def model(self, x=None, y=None, *, size=None):
        cpts = [pyro.sample(f"cpt_{v}", self._prior(i)) for i, v in enumerate(self.net.variables)]
        return _bn_program(self.net, cpts, x, num_rows(x, y, size))

    def guide(self, x=None, y=None, *, size=None):
        for i, v in enumerate(self.net.variables):
            beta = self.log_beta[i].exp()
            pyro.sample(f"cpt_{v}", dist.Dirichlet(beta).to_event(beta.dim() - 1))

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        return self.net.check_data(x, name)

    def posterior_concentration(self) -> dict[str, torch.Tensor]:
        r"""The guide's Dirichlet concentrations :math:`\beta_v` (CPT shape)."""
        return {v: b.detach().exp() for v, b in zip(self.net.variables, self.log_beta)}

    def posterior_mean(self) -> BayesNet:
        r"""The network whose CPTs are the guide's means :math:`\beta / \sum \beta`."""
        return BayesNet(self.net.states, self.net.parents,
                        {v: b / b.sum(-1, keepdim=True) for v, b in self.posterior_concentration().items()})

    def conjugate_posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Exact posterior concentrations :math:`\alpha + N_v` given complete rows ``x``."""
        rows = self.net._rows(x, "x")
        if (rows < 0).any():
            raise ValueError("conjugate_posterior needs complete rows: with missing entries the exact "
                             "posterior is a mixture of Dirichlets; fit this model with elbo='enum'")
        return {v: self.concentration + c for v, c in self.net._statistics(rows)[0].items()}


class FullJointTable(GenerativeModel):
    r"""One categorical distribution over all :math:`K^D` joint configurations.

    Generative story: :math:`x_n \sim \mathrm{Categorical}(\mathrm{softmax}(\ell))` over the
    configurations (decoded to D digits base K); :math:`K^D - 1` free parameters. The baseline
    that assumes nothing; refused past ``MAX_CELLS`` = 2^24 configurations.

    Parameters
    ----------
    dim : int
        Number of variables D.
    cardinality : int
        States per variable K.

    Examples
    --------
    >>> table = FullJointTable(3)
    >>> table.num_parameters
    7
    >>> table.log_prob(torch.zeros(1, 3)).exp()
    tensor([0.1250])
    """

    has_exact_likelihood = True
    data_support = "categorical"
    MAX_CELLS = 2 ** 24

    def __init__(self, dim: int, cardinality: int = 2):
        super().__init__(dim)
        if isinstance(cardinality, bool) or not isinstance(cardinality, int) or cardinality < 2:
            raise ValueError(f"cardinality must be an int >= 2, got {cardinality!r}")
        cells = cardinality ** dim
        if cells > self.MAX_CELLS:
            raise ValueError(f"FullJointTable(dim={dim}, cardinality={cardinality}) needs {cardinality}^{dim} = "
                             f"{cells} cells; the limit is 2^24 = {self.MAX_CELLS}. Use a BayesNet or a factorised "
                             "model for this many variables")
        self.cardinality = cardinality
        self.logits = nn.Parameter(torch.zeros(cells))
        self.register_buffer("place", cardinality ** torch.arange(dim - 1, -1, -1), persistent=False)

    @classmethod
    def from_frequencies(cls, x: torch.Tensor, cardinality: int = 2, pseudo_count: float = 0.0) -> "FullJointTable":
        """Maximum-likelihood table (configuration frequencies, plus ``pseudo_count`` each);
        unseen configurations get probability 0 (log-probability -inf) when ``pseudo_count`` is 0."""
        if isinstance(pseudo_count, bool) or not isinstance(pseudo_count, (int, float)) or pseudo_count < 0:
            raise ValueError(f"pseudo_count must be a number >= 0, got {pseudo_count!r}")
        table = cls(torch.as_tensor(x).shape[-1], cardinality)
        counts = torch.bincount(table.encode(x), minlength=table.logits.numel()).to(table.logits.dtype)
        with torch.no_grad():
            table.logits.copy_((counts + pseudo_count).log())
        return table

    @property
    def num_parameters(self) -> int:
        return self.logits.numel() - 1

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        return _check_rows(x, [f"column {d}" for d in range(self.x_dim)], [self.cardinality] * self.x_dim,
                           name, allow_missing=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Configuration index of each row, shape (N,)."""
        return (self.check_data(x).long().to(self.place.device) * self.place).sum(-1)

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate("data", num_rows(x, y, size)):
            return pyro.sample("x", dist.Categorical(logits=self.logits), obs=None if x is None else self.encode(x))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits.log_softmax(-1)[self.encode(x)].detach()

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` rows of state indices (floats), shape (n, dim)."""
        n = _check_count(n, "n")
        index = dist.Categorical(logits=self.logits).sample((n,))
        return (index[:, None] // self.place % self.cardinality).to(self.logits.dtype)


# --- helpers --------------------------------------------------------------------------------------

def _bn_program(net: BayesNet, cpts: list[torch.Tensor], x, n: int) -> dict[str, torch.Tensor]:
    """The generative story of ``net`` with CPT tensors ``cpts`` (fixed, or sampled by a prior)."""
    values: dict[int, torch.Tensor] = {}
    with pyro.plate("data", n):
        for i in net.order:
            probs = Vindex(cpts[i])[(..., *(values[p] for p in net._parent_cols[i]), slice(None))]  # (..., n, card)
            name = net.variables[i]
            if x is None:
                values[i] = pyro.sample(name, dist.Categorical(probs))
                continue
            column = x[:, i].long()
            observed = column >= 0
            if observed.all():
                values[i] = pyro.sample(name, dist.Categorical(probs), obs=column)
            elif not observed.any():
                values[i] = pyro.sample(name, dist.Categorical(probs), infer={"enumerate": "parallel"})
            else:  # observed where column >= 0, enumerated elsewhere (site "<name>_missing")
                with poutine.mask(mask=observed):
                    seen = pyro.sample(name, dist.Categorical(probs), obs=column.clamp(min=0))
                with poutine.mask(mask=~observed):
                    missing = pyro.sample(f"{name}_missing", dist.Categorical(probs), infer={"enumerate": "parallel"})
                values[i] = torch.where(observed, seen, missing)
    return {net.variables[i]: v for i, v in values.items()}


def _ascii_equation(equation: str) -> str:
    """An einsum equation with its symbols renamed to a-z, A-Z (torch accepts only those)."""
    letters = {}
    for c in equation:
        if c not in ",->" and c not in letters:
            letters[c] = opt_einsum.get_symbol(len(letters))
    return "".join(letters.get(c, c) for c in equation)


def _patterns(rows: torch.Tensor):
    """Group rows by which columns are observed: yields (observed column tuple, row indices)."""
    mask = rows >= 0
    if not len(rows):
        return
    if (mask == mask[0]).all():  # one pattern (the common case): skip the sort
        yield tuple(mask[0].nonzero().flatten().tolist()), torch.arange(rows.shape[0], device=rows.device)
        return
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        yield tuple(pattern.nonzero().flatten().tolist()), (inverse == k).nonzero().squeeze(-1)


def _check_states(states) -> tuple[list[str], dict[str, list[str]]]:
    if not isinstance(states, Mapping) or not states:
        raise TypeError(f"states must be a non-empty dict {{variable: [state names]}}, got {states!r}")
    out = {}
    for v, names in states.items():
        if not isinstance(v, str) or v in ("", "data"):
            raise ValueError(f"variable names must be non-empty strings other than 'data' (the plate), got {v!r}")
        if isinstance(names, str) or not isinstance(names, Sequence) or not names or \
                not all(isinstance(s, str) for s in names):
            raise TypeError(f"states[{v!r}] must be a non-empty list of state names (str), got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"states[{v!r}] lists a state twice: {list(names)}")
        out[v] = list(names)
    return list(out), out


def _check_parents(parents, states) -> dict[str, list[str]]:
    if not isinstance(parents, Mapping):
        raise TypeError(f"parents must be a dict {{variable: [parents]}}, got {type(parents).__name__}")
    out = {v: [] for v in states}
    for v, ps in parents.items():
        if v not in states:
            raise ValueError(f"parents names unknown variable {v!r}; the variables are {list(states)}")
        if isinstance(ps, str) or not isinstance(ps, Sequence):
            raise TypeError(f"parents[{v!r}] must be a list of variable names, got {ps!r}")
        for p in ps:
            if p not in states:
                raise ValueError(f"parents[{v!r}] names unknown variable {p!r}; the variables are {list(states)}")
        if len(set(ps)) != len(ps):
            raise ValueError(f"parents[{v!r}] lists a parent twice: {list(ps)}")
        out[v] = list(ps)
    return out


def _topological_order(variables: list[str], parents: dict[str, list[str]]) -> list[str]:
    """Parents before children (depth-first, in column order); a cycle raises naming it."""
    order, state, stack = [], {}, []

    def visit(v):
        if state.get(v) == "done":
            return
        if state.get(v) == "open":
            cycle = stack[stack.index(v):] + [v]
            raise ValueError(f"the graph has a cycle: {' -> '.join(reversed(cycle))} (each arrow is parent -> child)")
        state[v] = "open"
        stack.append(v)
        for p in parents[v]:
            visit(p)
        stack.pop()
        state[v] = "done"
        order.append(v)

    for v in variables:
        visit(v)
    return order


def _check_rows(x, variables, cards, name: str, allow_missing: bool) -> torch.Tensor:
    """Rows of state indices as a float tensor (N, V); -1 allowed where ``allow_missing``."""
    if hasattr(x, "__array__") and not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array of state indices, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold state indices as floats or integers, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, {len(variables)}) with N >= 1, got {tuple(x.shape)}")
    if x.shape[1] != len(variables):
        raise ValueError(f"{name} has {x.shape[1]} columns, expected {len(variables)} (one per variable)")
    if not x.is_floating_point():
        x = x.double()
    low = -1 if allow_missing else 0
    valid = (x == x.round()) & (x >= low) & (x < torch.as_tensor(cards, device=x.device))  # NaN fails too
    if not valid.all():
        row, col = (int(i) for i in (~valid).nonzero()[0])
        if not math.isfinite(x[row, col]):
            raise ValueError(f"{name} contains NaN or inf at row {row}, column {col} ({variables[col]!r}); "
                             "mark missing entries with -1")
        allowed = f"{low}..{cards[col] - 1}" + (" (-1 = missing)" if allow_missing else "")
        raise ValueError(f"{name}[{row}, {col}] = {x[row, col].item():g} is not a state index of "
                         f"{variables[col]!r}: expected an integer in {allowed}")
    return x
