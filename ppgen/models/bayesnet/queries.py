r"""Exact queries on a Bayesian network by compiled tensor contractions.

:math:`p(e)` and :math:`p(x_q, e)` are sums over the unobserved variables of a product of CPTs,
one einsum. :class:`ExactQueries` keeps, per network, the contractions it has compiled in one
cache keyed by :class:`CacheKey`: an opt_einsum path per pattern of observed columns and query
(:class:`Plan`, whose evidence-free steps are folded once per CPT version), the joint marginal
table of few variables (a query on at most :data:`TABLE_LIMIT` cells is a lookup in it), and
the path of EM's E-step. Several marginals at once come from the gradient of one contraction
with indicator factors (Darwiche 2003).

References: A. Darwiche, "A differential approach to inference in Bayesian networks", JACM 2003.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import NamedTuple

import opt_einsum
import torch
from torch import nn

from ppgen.models.bayesnet.structure import Structure

__all__ = ["ExactQueries", "CacheKey", "Kind", "Plan", "patterns", "TABLE_LIMIT", "BATCH_NOMINAL"]

BATCH_NOMINAL = 1024  # batch size the contraction paths of batched queries are optimised for
TABLE_LIMIT = 2**16  # queries over at most this many joint cells become lookups in a marginal table


class Kind(enum.Enum):
    """What a cache entry holds."""

    QUERY = "query"  # a Plan giving p(e) and p(x_q, e) for one pattern of observed columns
    TABLE = "table"  # a MarginalTable p(x_queries), one axis per variable
    E_STEP = "e-step"  # the Plan of EM's E-step: p(e_n) with evidence folded into every CPT


class CacheKey(NamedTuple):
    """The key of every cached contraction (see :class:`Kind`). A named tuple, not a dataclass:
    it is built and hashed on every query, and a tuple's hash is several times cheaper."""

    kind: Kind
    observed: tuple[int, ...] = ()
    queries: tuple[int, ...] = ()
    batched: bool = False


@dataclasses.dataclass
class MarginalTable:
    """A joint marginal table and the CPT version it was computed from."""

    version: tuple
    table: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Plan:
    """A compiled contraction: which CPTs enter, how evidence indexes them, and the pairwise steps.

    ``operands``: (variable, axis permutation putting observed axes first, evidence columns).
    ``steps``: opt_einsum's contraction path as (operand positions to pop, einsum equation in
    letters torch accepts); each result is appended to the operand list, as opt_einsum does.
    """

    operands: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]
    steps: tuple[tuple[tuple[int, ...], str], ...]
    folded: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __call__(self, *tensors: torch.Tensor, constant: Sequence[bool] = (), version=None) -> torch.Tensor:
        """Run the steps. ``constant[k]`` marks ``tensors[k]`` as a function of the CPTs alone:
        a step whose inputs are all constant is computed once per CPT ``version`` and reused
        (constant folding: most of a query's contraction does not involve the evidence)."""
        tensors = list(tensors)
        flags = [bool(c) for c in constant] + [False] * (len(tensors) - len(constant))
        if version is not None and self.folded.get("version") != version:
            self.folded.clear()
            self.folded["version"] = version
        for j, (positions, equation) in enumerate(self.steps):
            inputs = [tensors.pop(k) for k in positions]
            input_flags = [flags.pop(k) for k in positions]
            folded = version is not None and all(input_flags)
            if folded and j in self.folded:
                result = self.folded[j]
            else:
                result = torch.einsum(equation, *inputs)
                if folded:
                    self.folded[j] = result
            tensors.append(result)
            flags.append(folded)
        return tensors[0]

    @classmethod
    def optimise(cls, operands, inputs: list[str], output: str, shapes: list[tuple[int, ...]]) -> "Plan":
        """The plan whose steps are opt_einsum's path for ``inputs -> output`` at these shapes."""
        _, path = opt_einsum.contract_path(",".join(inputs) + "->" + output, *shapes, shapes=True, optimize="auto")
        return cls(tuple(operands), tuple((positions, _ascii_equation(equation))
                                          for positions, _, equation, _, _ in path.contraction_list))


class ExactQueries:
    """Exact p(e), p(x_q | e) and log p(x) for one network structure, with its compiled contractions.

    The CPTs are passed to every call (they may change between calls; what depends on their
    values is recomputed when their version changes), the structure once.
    """

    def __init__(self, structure: Structure):
        self.structure = structure
        self.cache: dict[CacheKey, Plan | MarginalTable] = {}

    # --- answers ----------------------------------------------------------------------------------

    def posterior(self, cpts: list[torch.Tensor], given: dict[int, int], queries: list[int]) -> dict[int, torch.Tensor]:
        """p(x_q | e) for one evidence set ``given`` = {column: state}: (card,) per query column."""
        observed = tuple(sorted(given))
        latent = tuple(q for q in queries if q not in given)
        marginals = dict(zip(latent, self.marginals(cpts, observed, latent, [given[c] for c in observed], None)))
        return {q: marginals[q] if q in marginals else self._point_mass(cpts, q, given[q]) for q in queries}

    def posterior_rows(self, cpts: list[torch.Tensor], rows: torch.Tensor,
                       queries: list[int]) -> dict[int, torch.Tensor]:
        """p(x_q | e_n) for rows (N, V) of evidence (-1 = unobserved): (N, card) per query column."""
        out = {q: torch.empty(rows.shape[0], self.structure.cards[q], dtype=torch.float64, device=rows.device)
               for q in queries}
        for observed, idx in patterns(rows):
            latent = tuple(q for q in queries if q not in observed)
            for q, marginal in zip(latent, self.marginals(cpts, observed, latent, rows[idx], idx)):
                out[q][idx] = marginal
            for q in set(queries) - set(latent):
                out[q][idx] = self._point_mass(cpts, q, rows[idx, q])
        return out

    def log_prob(self, cpts: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """log p(observed entries) of rows (N, V) (-1 = missing), float64 (N,)."""
        out = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
        complete = (rows >= 0).all(1)
        if complete.any():
            out[complete] = self.log_joint(cpts, rows[complete])
        partial = (~complete).nonzero().squeeze(-1)
        for observed, idx in patterns(rows[partial]):
            # nothing observed: log 1
            out[partial[idx]] = self.joint(cpts, observed, (), rows[partial[idx]])[0].log() if observed else 0.0
        return out

    def log_joint(self, cpts: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """log p(x) of complete rows (N, V): one gather per CPT."""
        total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        for i, cpt in enumerate(cpts):
            total += cpt.reshape(-1)[self.structure.family_index(rows, i)].log()
        return total

    def marginals(self, cpts: list[torch.Tensor], observed: tuple[int, ...], queries: tuple[int, ...],
                  evidence, rows) -> list[torch.Tensor]:
        """Normalised p(x_q | e) for each query; ``evidence`` is a list of ints (one evidence set,
        ``rows`` None) or (n, V) rows (``rows`` are their numbers, for error messages)."""
        if not queries:
            return []
        if rows is not None and len(queries) > 1:  # batches: one contraction per query is cheaper
            return [m for q in queries for m in self.marginals(cpts, observed, (q,), evidence, rows)]
        evidence_prob, joints = self.joint(cpts, observed, queries, evidence)
        zero = evidence_prob <= 0
        if zero.any():
            s = self.structure
            if rows is None:
                bad = {s.variables[c]: s.states[s.variables[c]][e] for c, e in zip(observed, evidence)}
                raise ValueError(f"evidence {bad} has probability zero under the network; "
                                 "posteriors given it are undefined")
            k = int(zero.nonzero()[0])
            raise s.impossible_evidence(evidence[k], int(rows[k]))
        return [joint / evidence_prob.unsqueeze(-1) for joint in joints]

    def joint(self, cpts: list[torch.Tensor], observed: tuple[int, ...], queries: tuple[int, ...], evidence):
        """p(e) and p(x_q, e) for each query, by the cached contraction for this pattern.

        ``evidence``: None (nothing observed), a list of state indices for ``observed`` (one
        evidence set: CPTs are sliced, no batch axis), or rows (n, V) (CPTs are gathered, which
        gives them a batch axis). Returns shapes () / (card,) or (n,) / (n, card).
        """
        batched = isinstance(evidence, torch.Tensor) and bool(observed)  # no evidence: the prior, broadcast
        version = tuple((id(t), t._version) for t in cpts)  # changes when a CPT is replaced or edited
        table = self.marginal_table(cpts, observed + queries, version) if not batched or len(queries) <= 1 else None
        if table is not None:  # p(x_observed, x_queries) is small: the evidence is a lookup in it
            if batched:
                joint = table[tuple(evidence[:, c] for c in observed)]  # (n,) or (n, card)
                return (joint.sum(-1), [joint]) if queries else (joint, [])
            joint = table[tuple(evidence)] if observed else table  # one axis per query
            return joint.sum(), [joint.movedim(k, 0).reshape(joint.shape[k], -1).sum(-1) for k in range(joint.dim())]
        plan = self.plan(observed, queries, batched)
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
            indicators = [torch.ones(batch + (self.structure.cards[q],), dtype=torch.float64, device=cpts[0].device,
                                     requires_grad=True) for q in queries]
            evidence_prob = plan(*operands, *indicators, constant=constant, version=version)
            joints = torch.autograd.grad(evidence_prob.sum(), indicators)
        return evidence_prob.detach(), list(joints)

    # --- compiled contractions ----------------------------------------------------------------------

    def marginal_table(self, cpts: list[torch.Tensor], variables: tuple[int, ...], version) -> torch.Tensor | None:
        """The joint marginal p(x_variables) as a table with one axis per variable, in the order
        given, computed once per CPT version by one contraction; None past TABLE_LIMIT cells."""
        s = self.structure
        if math.prod(s.cards[v] for v in variables) > TABLE_LIMIT:
            return None
        key = CacheKey(Kind.TABLE, queries=variables)
        cached = self.cache.get(key)
        if cached is None or cached.version != version:
            relevant = sorted(s.ancestors(set(variables)))
            symbol = opt_einsum.get_symbol
            equation = (",".join("".join(symbol(a) for a in s.family[v]) for v in relevant)
                        + "->" + "".join(symbol(v) for v in variables))
            table = opt_einsum.contract(equation, *[cpts[v] for v in relevant], backend="torch")
            cached = self.cache[key] = MarginalTable(version, table)
        return cached.table

    def plan(self, observed: tuple[int, ...], queries: tuple[int, ...], batched: bool) -> Plan:
        """The compiled contraction of p(e), p(x_q, e) for this pattern (compiled on first use).

        The einsum runs over the CPTs of the ancestors of queries and evidence (the others sum
        to 1). A CPT's observed axes are indexed by the evidence, which leaves a batch axis in
        their place for rows of evidence. One query is the output; several get indicator
        operands (batch, card) instead. ``opt_einsum`` optimises the path once.
        """
        key = CacheKey(Kind.QUERY, observed, queries, batched)
        if key in self.cache:
            return self.cache[key]
        s, symbol = self.structure, opt_einsum.get_symbol
        relevant = s.ancestors(set(observed) | set(queries))
        batch = symbol(len(s.variables)) if batched else ""
        n = (BATCH_NOMINAL,) if batched else ()
        operands, inputs, shapes = [], [], []
        for v in s.order:
            if v not in relevant:
                continue
            axes = s.family[v]
            obs_pos = [k for k, a in enumerate(axes) if a in observed]
            free = [k for k, a in enumerate(axes) if a not in observed]
            operands.append((v, tuple(obs_pos + free), tuple(axes[k] for k in obs_pos)))
            inputs.append((batch if obs_pos else "") + "".join(symbol(axes[k]) for k in free))
            shapes.append((n if obs_pos else ()) + tuple(s.cards[axes[k]] for k in free))
        if len(queries) == 1:
            output = batch + symbol(queries[0])
        else:
            output = batch
            inputs += [batch + symbol(q) for q in queries]
            shapes += [n + (s.cards[q],) for q in queries]
        plan = self.cache[key] = Plan.optimise(operands, inputs, output, shapes)
        return plan

    def e_step_plan(self) -> Plan:
        """The path of EM's E-step contraction: every family with a batch axis, summed to (batch,).
        The batch axis is on every operand, so the best path does not depend on the batch size."""
        key = CacheKey(Kind.E_STEP, batched=True)
        if key not in self.cache:
            s = self.structure
            symbol, batch = opt_einsum.get_symbol, opt_einsum.get_symbol(len(s.variables))
            inputs = [batch + "".join(symbol(a) for a in family) for family in s.family]
            shapes = [(BATCH_NOMINAL,) + s.cpt_shape(i) for i in range(len(s.variables))]
            self.cache[key] = Plan.optimise((), inputs, batch, shapes)
        return self.cache[key]

    def _point_mass(self, cpts: list[torch.Tensor], q: int, state) -> torch.Tensor:
        return nn.functional.one_hot(torch.as_tensor(state, device=cpts[0].device), self.structure.cards[q]).double()


def patterns(rows: torch.Tensor):
    """Group rows by which columns are observed: yields (observed column tuple, row indices)."""
    mask = rows >= 0
    if not len(rows):
        return
    if (mask == mask[0]).all():  # one pattern (the common case): skip the sort
        yield tuple(mask[0].nonzero().flatten().tolist()), torch.arange(rows.shape[0], device=rows.device)
        return
    found, inverse = torch.unique(mask, dim=0, return_inverse=True)
    for k, pattern in enumerate(found):
        yield tuple(pattern.nonzero().flatten().tolist()), (inverse == k).nonzero().squeeze(-1)


def _ascii_equation(equation: str) -> str:
    """An einsum equation with its symbols renamed to a-z, A-Z (torch accepts only those)."""
    letters = {}
    for c in equation:
        if c not in ",->" and c not in letters:
            letters[c] = opt_einsum.get_symbol(len(letters))
    return "".join(letters.get(c, c) for c in equation)
