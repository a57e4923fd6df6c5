"""The structure of a discrete Bayesian network, and the checks on what users hand in.

A :class:`Structure` is the DAG with its state names, fixed when a network is built: the column
of every variable, its parents' columns, a topological order and the axes of every CPT. The
Pyro program, the exact queries and the learning code read it; none of them changes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from ppgen.models.base import DATA_PLATE

__all__ = ["Structure", "check_rows"]


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """Variables, states and parents of a network, with the indices derived from them.

    ``family[i]`` lists the columns of CPT ``i``'s axes (parents in the order given, the variable
    last); ``strides[i]`` turns a family assignment into a flat index of that CPT.
    """

    variables: list[str]
    states: dict[str, list[str]]
    parents: dict[str, list[str]]
    cards: tuple[int, ...]
    column: dict[str, int]
    parent_columns: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]
    family: tuple[tuple[int, ...], ...]
    strides: tuple[torch.Tensor, ...]

    @classmethod
    def build(cls, states, parents) -> "Structure":
        """Check ``states`` and ``parents`` (see :class:`BayesNet`) and derive the indices.

        Raises TypeError or ValueError naming the variable at fault, or the cycle.
        """
        variables, states = _check_states(states)
        parents = _check_parents(parents or {}, states)
        cards = tuple(len(states[v]) for v in variables)
        column = {v: i for i, v in enumerate(variables)}
        parent_columns = tuple(tuple(column[p] for p in parents[v]) for v in variables)
        order = tuple(column[v] for v in _topological_order(variables, parents))
        family = tuple(ps + (i,) for i, ps in enumerate(parent_columns))
        strides = tuple(torch.tensor([math.prod(cards[a] for a in f[k + 1:]) for k in range(len(f))]) for f in family)
        return cls(variables, states, parents, cards, column, parent_columns, order, family, strides)

    def cpt_shape(self, i: int) -> tuple[int, ...]:
        """Shape of CPT ``i``: one axis per parent, the variable last."""
        return tuple(self.cards[p] for p in self.parent_columns[i]) + (self.cards[i],)

    def ancestors(self, columns: set[int]) -> set[int]:
        """``columns`` and all their ancestors."""
        seen, stack = set(), list(columns)
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(self.parent_columns[v])
        return seen

    def family_index(self, rows: torch.Tensor, i: int) -> torch.Tensor:
        """Flat index into CPT ``i`` of each complete row's family assignment, shape (N,)."""
        return (rows[:, list(self.family[i])] * self.strides[i].to(rows.device)).sum(-1)

    def observed_states(self, row: torch.Tensor) -> dict[str, str]:
        """``{variable: state name}`` of a row's observed (>= 0) entries, for messages."""
        return {v: self.states[v][int(row[i])] for i, v in enumerate(self.variables) if row[i] >= 0}

    def impossible_evidence(self, row: torch.Tensor, k: int | None) -> ValueError:
        """The error for evidence ``row`` (row ``k`` of several, or None for one) of probability zero."""
        where = "" if k is None else f"row {k} of "
        return ValueError(f"{where}evidence {self.observed_states(row)} has probability zero under the network; "
                          "posteriors given it are undefined")

    def check_rows(self, x, name: str) -> torch.Tensor:
        """Rows of state indices (-1 = missing) as a float tensor (N, V), or a clear error."""
        return check_rows(x, self.variables, self.cards, name, allow_missing=True)


def check_rows(x, variables, cards, name: str, allow_missing: bool) -> torch.Tensor:
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
    if not x.is_floating_point() or x.itemsize < 4:  # integers, and half floats (widened exactly)
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


def _check_states(states) -> tuple[list[str], dict[str, list[str]]]:
    if not isinstance(states, Mapping) or not states:
        raise TypeError(f"states must be a non-empty dict {{variable: [state names]}}, got {states!r}")
    out = {}
    for v, names in states.items():
        if not isinstance(v, str) or v in ("", DATA_PLATE):
            raise ValueError(f"variable names must be non-empty strings other than {DATA_PLATE!r} (the plate), got {v!r}")
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
