"""Read and write discrete Bayesian networks in the Bayesian Interchange Format (BIF).

The dialect is the one of the bnlearn repository (https://www.bnlearn.com/bnrepository/)::

    network unknown {
    }
    variable smoke {
      type discrete [ 2 ] { yes, no };
    }
    probability ( lung | smoke ) {
      (yes) 0.1, 0.9;
      (no) 0.01, 0.99;
    }

A probability block lists one row per parent assignment, ``(parent states) P(child states)``,
or ``table`` followed by every entry (with parents: child state slowest, then the parents in
order, the last parent fastest, as pgmpy reads it), and optionally a ``default`` row for the
assignments not listed. ``property`` lines are skipped. Files ending in ``.gz`` are read and
written compressed. Numbers are written with Python's shortest round-trip ``repr``, so a network
read, written and read again has every state name and CPT entry unchanged.

References: F. G. Cozman, "The Interchange Format for Bayesian Networks", 1998.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import math
import os
import re

import torch

__all__ = ["BIFNetwork", "read_bif", "write_bif"]

_TOKEN = re.compile(r"//[^\n]*|/\*.*?\*/|[{}\[\]();,|]|[^\s{}\[\]();,|]+|\s+", re.DOTALL)


@dataclasses.dataclass
class BIFNetwork:
    """What a BIF file holds: the network name, states, parents and CPTs (float64 tensors).

    ``cpts[v]`` has shape ``(card(parents[v][0]), ..., card(v))``: the last axis is the child.
    """

    name: str
    states: dict[str, list[str]]
    parents: dict[str, list[str]]
    cpts: dict[str, torch.Tensor]


class _Tokens:
    """A token stream that knows the line of every token, for error messages."""

    def __init__(self, text: str, source: str):
        self.source = source
        self.items: list[tuple[str, int]] = []
        line = 1
        for match in _TOKEN.finditer(text):
            token = match.group()
            if not (token.isspace() or token.startswith(("//", "/*"))):
                self.items.append((token, line))
            line += token.count("\n")
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def line(self) -> int:
        return self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 1

    def error(self, expected: str) -> ValueError:
        got = repr(self.peek()) if self.peek() is not None else "end of file"
        return ValueError(f"{self.source}, line {self.line()}: expected {expected}, got {got}")

    def next(self, expected: str = "a name") -> str:
        token = self.peek()
        if token is None or token in "{}[]();,|":
            raise self.error(expected)
        self.pos += 1
        return token

    def expect(self, token: str) -> None:
        if self.peek() != token:
            raise self.error(repr(token))
        self.pos += 1

    def skip_to_semicolon(self) -> None:
        while self.peek() not in (";", None):
            self.pos += 1
        self.expect(";")

    def names(self, close: str) -> list[str]:
        """Names separated by commas (or spaces) up to ``close``, which is consumed."""
        names = []
        while self.peek() != close:
            names.append(self.next(f"a name or {close!r}"))
            if self.peek() == ",":
                self.pos += 1
        self.expect(close)
        return names

    def number(self) -> float:
        token = self.next("a probability")
        try:
            value = float(token)
        except ValueError:
            self.pos -= 1
            raise self.error("a probability") from None
        if not math.isfinite(value):
            self.pos -= 1
            raise self.error("a finite probability")
        return value

    def numbers(self) -> list[float]:
        values = [self.number()]
        while self.peek() != ";":
            if self.peek() == ",":
                self.pos += 1
            values.append(self.number())
        self.expect(";")
        return values


def read_bif(path: str | os.PathLike) -> BIFNetwork:
    """Parse a BIF file (``.bif`` or ``.bif.gz``).

    Raises
    ------
    ValueError
        Naming the file, the line and what was expected, when the file is malformed: an
        unknown token, a variable without a ``type discrete`` line, a state count that does not
        match the states listed, a probability block for an undeclared variable or state, a row
        of the wrong length, a parent assignment listed twice or missing.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        tokens = _Tokens(f.read(), path)
    name = "unknown"
    states: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    cpts: dict[str, torch.Tensor] = {}
    while tokens.peek() is not None:
        keyword = tokens.next("'network', 'variable' or 'probability'")
        if keyword == "network":
            name = tokens.next("the network name")
            _skip_block(tokens)
        elif keyword == "variable":
            variable, var_states = _variable_block(tokens)
            if variable in states:
                raise ValueError(f"{path}, line {tokens.line()}: variable {variable!r} is declared twice")
            states[variable] = var_states
        elif keyword == "probability":
            variable, var_parents, cpt = _probability_block(tokens, states)
            if variable in cpts:
                raise ValueError(f"{path}, line {tokens.line()}: a second probability block for {variable!r}")
            parents[variable], cpts[variable] = var_parents, cpt
        else:
            tokens.pos -= 1
            raise tokens.error("'network', 'variable' or 'probability'")
    missing = [v for v in states if v not in cpts]
    if missing:
        raise ValueError(f"{path}: no probability block for variable(s) {missing}")
    return BIFNetwork(name, states, parents, cpts)


def _skip_block(tokens: _Tokens) -> None:
    tokens.expect("{")
    while tokens.peek() != "}":
        tokens.next("'property ...;' or '}'")
        tokens.skip_to_semicolon()
    tokens.expect("}")


def _variable_block(tokens: _Tokens) -> tuple[str, list[str]]:
    variable = tokens.next("a variable name")
    tokens.expect("{")
    var_states = None
    while tokens.peek() != "}":
        keyword = tokens.next("'type' or 'property'")
        if keyword == "property":
            tokens.skip_to_semicolon()
            continue
        if keyword != "type":
            tokens.pos -= 1
            raise tokens.error("'type' or 'property'")
        if tokens.peek() != "discrete":
            raise tokens.error("'discrete' (only discrete variables are supported)")
        tokens.pos += 1
        tokens.expect("[")
        line = tokens.line()
        count = tokens.next("the number of states")
        tokens.expect("]")
        tokens.expect("{")
        var_states = tokens.names("}")
        tokens.expect(";")
        if not count.isdigit() or int(count) != len(var_states):
            raise ValueError(f"{tokens.source}, line {line}: variable {variable!r} declares [ {count} ] states "
                             f"but lists {len(var_states)}: {var_states}")
    tokens.expect("}")
    if var_states is None:
        raise ValueError(f"{tokens.source}, line {tokens.line()}: variable {variable!r} has no 'type discrete' line")
    return variable, var_states


def _probability_block(tokens: _Tokens, states: dict[str, list[str]]) -> tuple[str, list[str], torch.Tensor]:
    tokens.expect("(")
    start = tokens.line()
    variable = tokens.next("a variable name")
    if tokens.peek() == "|":
        tokens.pos += 1
    var_parents = tokens.names(")")
    for v in (variable, *var_parents):
        if v not in states:
            raise ValueError(f"{tokens.source}, line {start}: probability block names {v!r}, "
                             "which no variable block declares (declare variables before their CPTs)")
    shape = tuple(len(states[p]) for p in var_parents) + (len(states[variable]),)
    cpt = torch.full(shape, math.nan, dtype=torch.float64)
    default = None
    tokens.expect("{")
    while tokens.peek() != "}":
        line = tokens.line()
        keyword = tokens.peek()
        tokens.pos += 1
        if keyword == "property":
            tokens.skip_to_semicolon()
            continue
        if keyword == "(":
            assignment = tokens.names(")")
            index = _parent_index(assignment, var_parents, states, variable, tokens.source, line)
            values = tokens.numbers()
            if not torch.isnan(cpt[index]).all():
                raise ValueError(f"{tokens.source}, line {line}: row {tuple(assignment)} of {variable!r} is listed twice")
            cpt[index] = _row(values, shape[-1], variable, tokens.source, line)
        elif keyword == "table":
            values = tokens.numbers()
            if len(values) != math.prod(shape):
                raise ValueError(f"{tokens.source}, line {line}: the table of {variable!r} needs "
                                 f"{math.prod(shape)} numbers, got {len(values)}")
            table = torch.tensor(values, dtype=torch.float64).reshape(shape[-1:] + shape[:-1])
            cpt = table.movedim(0, -1).contiguous()  # child slowest in the file, last axis here
        elif keyword == "default":
            default = _row(tokens.numbers(), shape[-1], variable, tokens.source, line)
        else:
            tokens.pos -= 1
            raise tokens.error("'(', 'table', 'default' or 'property'")
    tokens.expect("}")
    unset = torch.isnan(cpt).any(-1)
    if unset.any():
        if default is None:
            first = [states[p][int(i)] for p, i in zip(var_parents, unset.nonzero()[0])]
            raise ValueError(f"{tokens.source}, line {start}: the probability block of {variable!r} has no row for "
                             f"parents {dict(zip(var_parents, first))} and no 'default' row")
        cpt[unset] = default
    return variable, var_parents, cpt


def _parent_index(assignment, var_parents, states, variable, source, line) -> tuple[int, ...]:
    if len(assignment) != len(var_parents):
        raise ValueError(f"{source}, line {line}: a row of {variable!r} must name {len(var_parents)} parent "
                         f"state(s) {var_parents}, got {assignment}")
    index = []
    for parent, state in zip(var_parents, assignment):
        if state not in states[parent]:
            raise ValueError(f"{source}, line {line}: {state!r} is not a state of {parent!r} "
                             f"(states: {states[parent]})")
        index.append(states[parent].index(state))
    return tuple(index)


def _row(values: list[float], card: int, variable: str, source: str, line: int) -> torch.Tensor:
    if len(values) != card:
        raise ValueError(f"{source}, line {line}: a row of {variable!r} needs {card} probabilities, got {len(values)}")
    return torch.tensor(values, dtype=torch.float64)


def write_bif(path: str | os.PathLike, states: dict[str, list[str]], parents: dict[str, list[str]],
              cpts: dict[str, torch.Tensor], name: str = "unknown") -> None:
    """Write a network in the bnlearn BIF dialect (gzip-compressed when ``path`` ends in ``.gz``).

    Roots are written as ``table`` rows, other variables as one line per parent assignment.
    """
    lines = [f"network {name} {{", "}"]
    for variable, var_states in states.items():
        lines += [f"variable {variable} {{",
                  f"  type discrete [ {len(var_states)} ] {{ {', '.join(var_states)} }};", "}"]
    for variable in states:
        var_parents = parents.get(variable, [])
        cpt = torch.as_tensor(cpts[variable], dtype=torch.float64)
        head = variable + (f" | {', '.join(var_parents)}" if var_parents else "")
        lines.append(f"probability ( {head} ) {{")
        if not var_parents:
            lines.append(f"  table {_numbers(cpt)};")
        else:
            for index in itertools.product(*(range(len(states[p])) for p in var_parents)):
                assignment = ", ".join(states[p][i] for p, i in zip(var_parents, index))
                lines.append(f"  ({assignment}) {_numbers(cpt[index])};")
        lines.append("}")
    text = "\n".join(lines) + "\n"
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)


def _numbers(row: torch.Tensor) -> str:
    return ", ".join(repr(float(v)) for v in row.tolist())
