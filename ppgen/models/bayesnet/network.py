r"""The network: structure, CPTs, the Pyro program and sampling (:class:`BayesNet`).

Exact queries are delegated to :class:`~ppgen.models.bayesnet.queries.ExactQueries`, learning
to :mod:`ppgen.models.bayesnet.learning`, BIF files to :mod:`ppgen.models.bayesnet.bif`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import infer_discrete
from pyro.ops.indexing import Vindex

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, local_params, num_rows
from ppgen.models.bayesnet import learning
from ppgen.models.bayesnet.bif import read_bif, write_bif
from ppgen.models.bayesnet.queries import ExactQueries
from ppgen.models.bayesnet.structure import Structure

__all__ = ["BayesNet", "bayesnet_program", "ROW_SUM_TOLERANCE"]

ROW_SUM_TOLERANCE = 1e-6


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
        structure = Structure.build(states, parents)
        super().__init__(len(structure.variables))
        self.structure = structure
        self.variables, self.states, self.parents = structure.variables, structure.states, structure.parents
        self.cards, self.order = structure.cards, structure.order
        self._cpt_names = tuple(f"cpt_{i}" for i in range(self.x_dim))
        cpts = dict(cpts) if cpts is not None else {v: None for v in self.variables}
        unknown = [v for v in cpts if v not in self.states]
        if unknown:
            raise ValueError(f"cpts names unknown variable(s) {unknown}; the variables are {self.variables}")
        for i, v in enumerate(self.variables):
            if v not in cpts:
                raise ValueError(f"cpts has no entry for variable {v!r} (expected an array of shape "
                                 f"{structure.cpt_shape(i)})")
            self.register_buffer(self._cpt_names[i], self._check_cpt(i, cpts[v]))
        self._exact = ExactQueries(structure)  # compiled contractions, cached per network

    # --- construction ---------------------------------------------------------------------------

    def _check_cpt(self, i: int, cpt) -> torch.Tensor:
        v, shape = self.variables[i], self.structure.cpt_shape(i)
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
        """Read a network from a BIF file (``.bif`` or ``.bif.gz``, bnlearn dialect; see
        :mod:`ppgen.models.bayesnet.bif`).

        Raises ValueError naming the file (and the line, where the syntax is at fault) for a
        malformed file, and an OSError naming the path when it cannot be read."""
        network = read_bif(path)
        try:
            return cls(network.states, network.parents, network.cpts)
        except ValueError as err:  # a cycle, or a CPT row that is negative or does not sum to 1
            raise ValueError(f"{os.fspath(path)}: {err}") from err

    def to_bif(self, path: str | os.PathLike, name: str = "unknown") -> None:
        """Write the network as BIF; :meth:`from_bif` reads back every state name and CPT entry unchanged.

        Raises ValueError, before writing, for a variable or state name that BIF cannot hold (with
        whitespace, any of ``{}[]();,|`` or a comment marker; see :mod:`ppgen.models.bayesnet.bif`)."""
        write_bif(path, self.states, self.parents, self.cpts, name)

    @property
    def cpts(self) -> dict[str, torch.Tensor]:
        """The CPTs by variable name (axis convention in the class docstring)."""
        return dict(zip(self.variables, self._cpt_list()))

    def _cpt_list(self) -> list[torch.Tensor]:
        buffers = self._buffers  # the buffers themselves, so .to() and in-place edits show
        return [buffers[name] for name in self._cpt_names]

    @property
    def num_parameters(self) -> int:
        r""":math:`\sum_i (|x_i| - 1) \prod_{j \in \mathrm{pa}(i)} |x_j|`."""
        return sum((self.cards[i] - 1) * math.prod(self.structure.cpt_shape(i)[:-1]) for i in range(self.x_dim))

    def parameter_counts(self) -> dict[str, int]:
        """Free parameters of the full joint table, of this network, and of the fully factorised model."""
        return {"full_joint": math.prod(self.cards) - 1, "bayes_net": self.num_parameters,
                "factorised": sum(c - 1 for c in self.cards)}

    def extra_repr(self) -> str:
        edges = sum(len(p) for p in self.structure.parent_columns)
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
        return bayesnet_program(self.structure, self._cpt_list(), x, num_rows(x, y, size))

    def check_data(self, x, name: str = "x") -> torch.Tensor:
        """Rows of state indices (floats or integers; -1 = missing) as a float tensor, or a clear error."""
        return self.structure.check_rows(x, name)

    # --- exact inference (queries.py) -------------------------------------------------------------

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
            out = self._exact.posterior(self._cpt_list(), given, queries)
        else:
            rows = self._rows(evidence, "evidence")
            queries = self._queries(query, lambda: (rows < 0).any(0).nonzero().flatten().tolist())
            out = self._exact.posterior_rows(self._cpt_list(), rows, queries)
        return {self.variables[q]: p for q, p in out.items()}

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per row, shape (N,): the joint for complete rows, the marginal likelihood
        of the observed entries for rows with missing (-1) entries (``-inf`` where impossible).
        Computed in float64, returned in the dtype of ``x``."""
        x = self.check_data(x)
        return self._exact.log_prob(self._cpt_list(), x.long().to(self.device)).to(x.dtype)

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

    # --- sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, evidence: Mapping | None = None) -> torch.Tensor:
        r"""``n`` rows of state indices (floats), shape (n, V).

        Without evidence: ancestral sampling, each variable by inverse-CDF lookup in its CPT
        (the story of :meth:`model`, vectorised outside Pyro for speed). With a dict of
        evidence: exact draws from :math:`p(x_u \mid e)` by the Pyro program under
        ``infer_discrete`` at temperature 1 (forward filtering, backward sampling); observed
        columns hold the evidence.
        """
        n = positive_int(n, "n")
        if evidence is None:
            return self._forward_sample(n).to(torch.get_default_dtype())
        if not isinstance(evidence, Mapping):
            raise TypeError(f"evidence must be a dict {{variable: state}}, got {type(evidence).__name__}")
        rows = self._evidence_rows(evidence)
        self._check_possible(rows)
        return self._infer_discrete(rows.expand(n, -1), temperature=1).to(torch.get_default_dtype())

    def _forward_sample(self, n: int) -> torch.Tensor:
        s, columns = self.structure, {}
        cpts = self._cpt_list()
        for i in self.order:
            card = self.cards[i]
            cdf = cpts[i].cumsum(-1).reshape(-1, card)  # one row per parent assignment
            flat = sum(columns[p] * (int(stride) // card) for p, stride in zip(s.parent_columns[i], s.strides[i]))
            cdf = cdf.index_select(0, flat) if s.parent_columns[i] else cdf.expand(n, card).contiguous()
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

    # --- learning (learning.py) -------------------------------------------------------------------

    def counts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Family counts: ``counts[v][pa, s]`` = number of rows with parents ``pa`` and ``v = s``
        (CPT shape, float64). A row with missing (-1) entries adds its *expected* counts under
        the current CPTs, :math:`p(\mathrm{pa}(v) = pa, v = s \mid \text{observed entries})`: the
        E-step of EM."""
        return learning.family_statistics(self._exact, self._cpt_list(), self._rows(x, "x"))[0]

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
        max_iter = learning.check_fit_options(pseudo_count, max_iter, tol)
        rows = self._rows(x, "x")
        if (rows >= 0).all():
            counts = learning.family_statistics(self._exact, self._cpt_list(), rows)[0]
            return BayesNet(self.states, self.parents, learning.cpts_from_counts(counts, pseudo_count))
        cpts = learning.expectation_maximisation(self._exact, self._cpt_list(), rows, pseudo_count, max_iter, tol)
        return BayesNet(self.states, self.parents, cpts)

    # --- evidence ---------------------------------------------------------------------------------

    def _rows(self, x, name: str) -> torch.Tensor:
        return self.structure.check_rows(x, name).long().to(self.device)

    def _variable_index(self, variable, what: str) -> int:
        if not isinstance(variable, str) or variable not in self.structure.column:
            known = self.variables if self.x_dim <= 20 else self.variables[:20] + ["..."]
            raise ValueError(f"{what} names unknown variable {variable!r}; the variables are {known}")
        return self.structure.column[variable]

    def _queries(self, query, default) -> list[int]:
        if query is None:
            return default()
        return [self._variable_index(q, "query") for q in ([query] if isinstance(query, str) else query)]

    def _evidence_dict(self, evidence) -> dict[int, int]:
        """``{variable: state name or index}`` as ``{column: state index}``."""
        return {self._variable_index(v, "evidence"): self._state_index(self.structure.column.get(v), s)
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

    def _check_possible(self, rows: torch.Tensor) -> None:
        impossible = self.log_prob(rows.double()) == -math.inf
        if impossible.any():
            k = int(impossible.nonzero()[0])
            raise self.structure.impossible_evidence(rows[k], k if rows.shape[0] > 1 else None)


def bayesnet_program(structure: Structure, cpts: list[torch.Tensor], x, n: int) -> dict[str, torch.Tensor]:
    """The generative story of a network with CPT tensors ``cpts`` (fixed, or sampled by a prior)."""
    values: dict[int, torch.Tensor] = {}
    with pyro.plate(DATA_PLATE, n):
        for i in structure.order:
            parent_values = (values[p] for p in structure.parent_columns[i])
            probs = Vindex(cpts[i])[(..., *parent_values, slice(None))]  # (..., n, card)
            name = structure.variables[i]
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
    return {structure.variables[i]: v for i, v in values.items()}
