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

**Names.** BIF names are words: a run of characters other than whitespace and ``{}[]();,|``,
not starting a comment (``//`` or ``/*``). The format has no quoting, so :func:`write_bif`
refuses a name it could not read back (with a space, a comma, a brace, a comment marker, or
longer than :data:`MAX_TOKEN` characters) instead of writing a file that does not parse.

**Limits.** The reader reads the file in chunks and stops at the first error, so junk is
refused at its first bad token without reading the rest. It refuses a token longer than
:data:`MAX_TOKEN` characters, and a network whose CPTs would hold more than :data:`MAX_CELLS`
cells in all (2^27 float64 cells, 1 GiB), checked before any table is allocated.

References: F. G. Cozman, "The Interchange Format for Bayesian Networks", 1998.

Longer than 500 lines: a streaming reader that refuses malformed input at its first bad token,
and the writer that checks every name reads back, are kept beside the grammar they share.
"""

from __future__ import annotations

import array
import codecs
import dataclasses
import gzip
import itertools
import math
import os
import re
import zlib
from collections.abc import Iterator

import torch

__all__ = ["BIFNetwork", "read_bif", "write_bif", "MAX_CELLS", "MAX_TOKEN"]

MAX_CELLS = 2**27  # CPT cells a network read from BIF may hold in all (1 GiB of float64)
MAX_TOKEN = 2**16  # characters in one name or number
CHUNK = 2**16  # bytes read at a time

_PUNCTUATION = frozenset("{}[]();,|")
_WORD = re.compile(r"[^\s{}\[\]();,|]+")
# whitespace, then a punctuation mark, a comment marker or a word (which may start with '/', not '//' or '/*')
_NEXT = re.compile(r"(?P<space>\s*)(?:(?P<punct>[{}\[\]();,|])|(?P<comment>//|/\*)"
                   r"|(?P<word>(?!//|/\*)[^\s{}\[\]();,|]+))?")


@dataclasses.dataclass
class BIFNetwork:
    """What a BIF file holds: the network name, states, parents and CPTs (float64 tensors).

    ``cpts[v]`` has shape ``(card(parents[v][0]), ..., card(v))``: the last axis is the child.
    """

    name: str
    states: dict[str, list[str]]
    parents: dict[str, list[str]]
    cpts: dict[str, torch.Tensor]


# --- reading --------------------------------------------------------------------------------------

def read_bif(path: str | os.PathLike) -> BIFNetwork:
    """Parse a BIF file (``.bif`` or ``.bif.gz``).

    Raises
    ------
    ValueError
        Naming the file, the line and what was expected, when the file is malformed: not UTF-8
        text or not gzip data, an unknown token, a variable without a ``type discrete`` line or
        with two, a state count that does not match the states listed, a probability block for
        an undeclared variable or state, a row of the wrong length, a parent assignment listed
        twice or missing, a second ``table`` or ``default`` line, CPTs past :data:`MAX_CELLS`.
    OSError
        Of the same kind as the operating system's (``FileNotFoundError``, ``IsADirectoryError``,
        ``PermissionError``), its message naming the path.
    """
    path = os.fspath(path)
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            return _parse(_Tokens(_text_chunks(f, path), path))
    except OSError as err:  # gzip's and decoding errors are ValueErrors by now
        raise _file_error(err, path, "read") from err


def _text_chunks(f, path: str) -> Iterator[str]:
    """The file's text, decoded from UTF-8 a chunk at a time (a leading byte-order mark dropped).

    Bytes that are not UTF-8, or a corrupt gzip stream, raise ValueError naming the line,
    after the text before them has been handed on (so an earlier syntax error is reported first).
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines = 1
    while True:
        try:
            data = f.read(CHUNK)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise ValueError(f"{path}, line {lines}: not a readable gzip file ({err})") from None
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            valid = err.object[:err.start].decode("utf-8", "replace")
            if valid:
                yield valid
            raise ValueError(f"{path}, line {lines + valid.count(chr(10))}: not UTF-8 text "
                             f"(byte 0x{err.object[err.start]:02x})") from None
        if text:
            lines += text.count("\n")
            yield text
        if not data:
            return


class _Tokens:
    """The tokens of a BIF file, produced one at a time from its text chunks, with their lines.

    ``peek()`` is the current token (None at the end of the file); only the chunk holding it
    (and the rest of a token or comment spanning chunks) is held in memory.
    """

    def __init__(self, chunks: Iterator[str], source: str):
        self.source = source
        self._chunks = chunks
        self._text, self._pos, self._line, self._eof = "", 0, 1, False
        self._token: str | None = None
        self._token_line = 1
        self.advance()

    # --- the stream -------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Drop the consumed text and append the next chunk; False at the end of the file."""
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
            return False
        self._text, self._pos = self._text[self._pos:] + chunk, 0
        return True

    def advance(self) -> None:
        """Move to the next token, skipping whitespace and comments."""
        while True:
            match = _NEXT.match(self._text, self._pos)
            space, kind = match.group("space"), match.lastgroup
            if space:
                self._line += space.count("\n")
                self._pos = match.end("space")
            if kind == "word" and match.end() - self._pos > MAX_TOKEN:
                raise ValueError(f"{self.source}, line {self._line}: a token longer than {MAX_TOKEN:,} characters "
                                 f"(starting {self._text[self._pos:self._pos + 20]!r}...)")
            if match.end() >= len(self._text) and self._fill():
                continue  # a word, or '/' of a comment marker, may go on in the next chunk
            if kind == "comment":
                start = self._line
                if not self._skip_until("\n" if match.group("comment") == "//" else "*/"):
                    if match.group("comment") == "/*":
                        raise ValueError(f"{self.source}, line {start}: a comment '/*' that is never closed")
                continue
            if kind == "space":  # nothing but whitespace left
                self._token = None  # end of file; line() stays at the last token
                return
            self._token, self._token_line, self._pos = match.group(kind), self._line, match.end()
            return

    def _skip_until(self, end: str) -> bool:
        """Skip a comment up to ``end`` (a newline is left for the whitespace skipper to count);
        False if the file ends first."""
        self._pos += 2
        while True:
            found = self._text.find(end, self._pos)
            if found >= 0:
                stop = found if end == "\n" else found + len(end)
                self._line += self._text.count("\n", self._pos, stop)
                self._pos = stop
                return True
            keep = max(self._pos, len(self._text) - len(end) + 1)  # the end marker may straddle chunks
            self._line += self._text.count("\n", self._pos, keep)
            self._pos = keep
            if not self._fill():
                self._pos = len(self._text)
                return False

    # --- what the parser uses ---------------------------------------------------------------------

    def peek(self) -> str | None:
        return self._token

    def line(self) -> int:
        """The line of the current token (of the last one at the end of the file)."""
        return self._token_line

    def fail(self, line: int, message: str) -> ValueError:
        return ValueError(f"{self.source}, line {line}: {message}")

    def error(self, expected: str) -> ValueError:
        got = repr(self._token) if self._token is not None else "end of file"
        return self.fail(self._token_line, f"expected {expected}, got {got}")

    def take(self, expected: str = "a name") -> str:
        """The current token, which must be a name, and advance."""
        token = self._token
        if token is None or token in _PUNCTUATION:
            raise self.error(expected)
        self.advance()
        return token

    def keyword(self, choices: tuple[str, ...], expected: str) -> str:
        """The current token, which must be one of ``choices``, and advance."""
        token = self._token
        if token not in choices:
            raise self.error(expected)
        self.advance()
        return token

    def expect(self, token: str) -> None:
        if self._token != token:
            raise self.error(repr(token))
        self.advance()

    def skip_to_semicolon(self) -> None:
        while self._token not in (";", None):
            self.advance()
        self.expect(";")

    def names(self, close: str) -> list[str]:
        """Names separated by commas (or spaces) up to ``close``, which is consumed."""
        names = []
        while self._token != close:
            names.append(self.take(f"a name or {close!r}"))
            if self._token == ",":
                self.advance()
        self.expect(close)
        return names

    def number(self) -> float:
        token = self._token
        try:
            value = float(token) if token is not None and token not in _PUNCTUATION else None
        except ValueError:
            value = None
        if value is None:
            raise self.error("a probability")
        if not math.isfinite(value):
            raise self.error("a finite probability")
        self.advance()
        return value

    def numbers(self, limit: int) -> tuple[array.array, int]:
        """Numbers separated by commas (or spaces) up to ';': the first ``limit`` of them (as
        float64) and how many there were (the rest are checked but not kept)."""
        values, count = array.array("d"), 0
        while True:
            value = self.number()
            if count < limit:
                values.append(value)
            count += 1
            if self._token == ",":
                self.advance()
            if self._token == ";":
                self.advance()
                return values, count


def _parse(tokens: _Tokens) -> BIFNetwork:
    name, network_line = "unknown", None
    states: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    cpts: dict[str, torch.Tensor] = {}
    declared_at: dict[str, int] = {}  # the line of each variable block
    block_at: dict[str, int] = {}  # the line of each probability block
    cells = 0
    while tokens.peek() is not None:
        line = tokens.line()
        keyword = tokens.keyword(("network", "variable", "probability"), "'network', 'variable' or 'probability'")
        if keyword == "network":
            if network_line is not None:
                raise tokens.fail(line, f"a second 'network' block (the first is at line {network_line})")
            network_line = line
            name = tokens.take("the network name")
            _skip_block(tokens)
        elif keyword == "variable":
            variable, var_states = _variable_block(tokens)
            if variable in states:
                raise tokens.fail(line, f"variable {variable!r} is declared twice "
                                        f"(first at line {declared_at[variable]})")
            states[variable], declared_at[variable] = var_states, line
        else:
            variable, var_parents, cpt = _probability_block(tokens, states, MAX_CELLS - cells)
            if variable in cpts:
                raise tokens.fail(line, f"a second probability block for {variable!r} "
                                        f"(the first is at line {block_at[variable]})")
            parents[variable], cpts[variable], block_at[variable] = var_parents, cpt, line
            cells += cpt.numel()
    if not states:
        raise ValueError(f"{tokens.source}: the file declares no variables")
    missing = [v for v in states if v not in cpts]
    if missing:
        raise ValueError(f"{tokens.source}: no probability block for variable(s) {missing}")
    return BIFNetwork(name, states, parents, cpts)


def _skip_block(tokens: _Tokens) -> None:
    tokens.expect("{")
    while tokens.peek() != "}":
        tokens.take("'property ...;' or '}'")
        tokens.skip_to_semicolon()
    tokens.expect("}")


def _variable_block(tokens: _Tokens) -> tuple[str, list[str]]:
    variable = tokens.take("a variable name")
    tokens.expect("{")
    var_states, type_line = None, None
    while tokens.peek() != "}":
        line = tokens.line()
        if tokens.keyword(("type", "property"), "'type' or 'property'") == "property":
            tokens.skip_to_semicolon()
            continue
        if type_line is not None:
            raise tokens.fail(line, f"variable {variable!r} has a second 'type' line "
                                    f"(the first is at line {type_line})")
        type_line = line
        tokens.keyword(("discrete",), "'discrete' (only discrete variables are supported)")
        tokens.expect("[")
        line = tokens.line()
        count = tokens.take("the number of states")
        tokens.expect("]")
        tokens.expect("{")
        var_states = tokens.names("}")
        tokens.expect(";")
        declared = int(count) if count.isascii() and count.isdigit() and len(count) <= 9 else None
        if declared != len(var_states):
            raise tokens.fail(line, f"variable {variable!r} declares [ {count} ] states but lists "
                                    f"{len(var_states)}: {_shorten(var_states)}")
        if not var_states:
            raise tokens.fail(line, f"variable {variable!r} has no states")
        twice = _first_repeat(var_states)
        if twice is not None:
            raise tokens.fail(line, f"variable {variable!r} lists state {twice!r} twice")
    end = tokens.line()
    tokens.expect("}")
    if var_states is None:
        raise tokens.fail(end, f"variable {variable!r} has no 'type discrete' line")
    return variable, var_states


def _probability_block(tokens: _Tokens, states: dict[str, list[str]],
                       room: int) -> tuple[str, list[str], torch.Tensor]:
    """One ``probability ( child | parents ) { ... }`` block; its CPT may hold at most ``room`` cells."""
    tokens.expect("(")
    start = tokens.line()
    variable = tokens.take("a variable name")
    if tokens.peek() == "|":
        tokens.advance()
    var_parents = tokens.names(")")
    for v in (variable, *var_parents):
        if v not in states:
            raise tokens.fail(start, f"probability block names {v!r}, which no variable block declares "
                                     "(declare variables before their CPTs)")
    if variable in var_parents:
        raise tokens.fail(start, f"the probability block of {variable!r} lists it as its own parent")
    twice = _first_repeat(var_parents)
    if twice is not None:
        raise tokens.fail(start, f"the probability block of {variable!r} lists parent {twice!r} twice")
    shape = tuple(len(states[p]) for p in var_parents) + (len(states[variable]),)
    cells = math.prod(shape)
    if cells > room:
        before = f", and the CPTs before it {MAX_CELLS - room:,}" if cells <= MAX_CELLS else ""
        raise tokens.fail(start, f"the CPT of {variable!r} would have shape {shape} = {cells:,} cells{before}; "
                                 f"ppgen reads networks of at most {MAX_CELLS:,} CPT cells in all "
                                 "(ppgen.models.bayesnet.bif.MAX_CELLS)")
    cpt = torch.full(shape, math.nan, dtype=torch.float64)
    positions = [{s: i for i, s in enumerate(states[p])} for p in var_parents]  # state name -> index
    default, seen = None, {}  # seen: line of the first 'table', 'default' and row
    tokens.expect("{")
    while tokens.peek() != "}":
        line, keyword = tokens.line(), tokens.peek()
        if keyword not in ("property", "(", "table", "default"):
            raise tokens.error("'(', 'table', 'default' or 'property'")
        tokens.advance()
        if keyword == "property":
            tokens.skip_to_semicolon()
            continue
        if keyword in seen and keyword != "(":
            raise tokens.fail(line, f"a second {keyword!r} line for {variable!r} "
                                    f"(the first is at line {seen[keyword]})")
        if keyword == "(":
            assignment = tokens.names(")")
            index = _parent_index(assignment, var_parents, positions, variable, tokens, line)
            values, count = tokens.numbers(shape[-1])
            if "table" in seen:
                raise tokens.fail(line, f"row {tuple(assignment)} of {variable!r} after its 'table' line "
                                        f"(line {seen['table']}), which gives every row")
            if not torch.isnan(cpt[index]).all():
                raise tokens.fail(line, f"row {tuple(assignment)} of {variable!r} is listed twice")
            cpt[index] = _row(values, count, shape[-1], variable, tokens, line)
        elif keyword == "table":
            if "(" in seen:
                raise tokens.fail(line, f"a 'table' line for {variable!r} after its rows (the first is at "
                                        f"line {seen['(']}); give either a table or rows")
            values, count = tokens.numbers(cells)
            if count != cells:
                raise tokens.fail(line, f"the table of {variable!r} needs {cells} numbers, got {count}")
            table = torch.frombuffer(values, dtype=torch.float64).clone().reshape(shape[-1:] + shape[:-1])
            cpt = table.movedim(0, -1).contiguous()  # child slowest in the file, last axis here
        else:
            values, count = tokens.numbers(shape[-1])
            default = _row(values, count, shape[-1], variable, tokens, line)
        seen.setdefault(keyword, line)
    tokens.expect("}")
    unset = torch.isnan(cpt).any(-1)
    if unset.any():
        if default is None:
            first = [states[p][int(i)] for p, i in zip(var_parents, unset.nonzero()[0])]
            raise tokens.fail(start, f"the probability block of {variable!r} has no row for parents "
                                     f"{dict(zip(var_parents, first))} and no 'default' row")
        cpt[unset] = default
    return variable, var_parents, cpt


def _parent_index(assignment: list[str], var_parents: list[str], positions: list[dict[str, int]], variable: str,
                  tokens: _Tokens, line: int) -> tuple[int, ...]:
    """The CPT index of a row's parent states (``positions``: each parent's state indices by name)."""
    if len(assignment) != len(var_parents):
        raise tokens.fail(line, f"a row of {variable!r} must name {len(var_parents)} parent state(s) "
                                f"{var_parents}, got {_shorten(assignment)}")
    index = []
    for parent, state, position in zip(var_parents, assignment, positions):
        if state not in position:
            raise tokens.fail(line, f"{state!r} is not a state of {parent!r} (states: {_shorten(list(position))})")
        index.append(position[state])
    return tuple(index)


def _first_repeat(names: list[str]) -> str | None:
    """The first name listed a second time, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _row(values: array.array, count: int, card: int, variable: str, tokens: _Tokens, line: int) -> torch.Tensor:
    if count != card:
        raise tokens.fail(line, f"a row of {variable!r} needs {card} probabilities, got {count}")
    return torch.tensor(values.tolist(), dtype=torch.float64)


def _shorten(names: list[str], most: int = 20) -> list[str]:
    """``names`` for a message: at most ``most`` of them."""
    return names if len(names) <= most else names[:most] + [f"... ({len(names) - most} more)"]


def _file_error(err: OSError, path: str, verb: str) -> OSError:
    """``err`` again, of the same kind (``FileNotFoundError``, ...), its message naming the BIF file."""
    message = f"cannot {verb} BIF file {path!r}: {err.strerror or err}"
    try:
        return type(err)(err.errno, message) if err.errno is not None else type(err)(message)
    except TypeError:  # a subclass with another signature
        return OSError(message)


# --- writing --------------------------------------------------------------------------------------

def write_bif(path: str | os.PathLike, states: dict[str, list[str]], parents: dict[str, list[str]],
              cpts: dict[str, torch.Tensor], name: str = "unknown") -> None:
    """Write a network in the bnlearn BIF dialect (gzip-compressed when ``path`` ends in ``.gz``).

    Roots are written as ``table`` rows, other variables as one line per parent assignment.

    Raises
    ------
    ValueError
        Before writing anything, for a network, variable or state name that is not a BIF word
        (see the module docstring), naming it: the file would not read back.
    OSError
        Of the operating system's kind, naming the path.
    """
    _check_word(name, "the network name")
    for variable, var_states in states.items():
        _check_word(variable, "variable")
        for state in var_states:
            _check_word(state, f"a state of {variable!r},")
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
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "wt", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise _file_error(err, path, "write") from err


def _check_word(name: str, what: str) -> None:
    if not isinstance(name, str) or not _WORD.fullmatch(name) or "//" in name or "/*" in name \
            or len(name) > MAX_TOKEN:
        raise ValueError(f"cannot write {what} {name!r} as BIF, which has no quoting: a name must be a "
                         f"non-empty word of at most {MAX_TOKEN:,} characters without whitespace, any of "
                         "{}[]();,| or a comment marker (// or /*), or it does not read back")


def _numbers(row: torch.Tensor) -> str:
    return ", ".join(repr(float(v)) for v in row.tolist())
