"""The BIF reader and writer on malformed and hostile input: every error is ppgen's, names the
file (and the line, or the variable), and comes before the reader allocates or reads more than
it must; every file ``to_bif`` writes reads back."""

import gzip
import re
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppgen.models.bayesnet import BayesNet, bif

# Every feature of the dialect: comments, properties, a root table, rows, a table with parents,
# a default row.
VALID = """// a small network
network test {
  property author ppgen;
}
variable rain {
  type discrete [ 2 ] { no, yes };
}
variable wet { /* a comment
spanning lines */
  type discrete [ 3 ] { dry, damp, soaked };
  property unit none;
}
variable mud {
  type discrete [ 2 ] { no, yes };
}
probability ( rain ) {
  table 0.75, 0.25;
}
probability ( wet | rain ) {
  (no) 0.8, 0.15, 0.05;
  default 0.1, 0.5, 0.4;
}
probability ( mud | wet ) {
  table 0.9, 0.5, 0.2, 0.1, 0.5, 0.8;
}
"""


def read(tmp_path, text, name="net.bif"):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return BayesNet.from_bif(path)


def test_the_valid_file_reads(tmp_path):
    """The reference file the mutations start from, checked entry by entry."""
    net = read(tmp_path, VALID)
    assert net.states == {"rain": ["no", "yes"], "wet": ["dry", "damp", "soaked"], "mud": ["no", "yes"]}
    torch.testing.assert_close(net.cpts["wet"], torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.5, 0.4]],
                                                             dtype=torch.float64))
    torch.testing.assert_close(net.cpts["mud"], torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]],
                                                             dtype=torch.float64))


# --- duplicates ------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    ("  table 0.75, 0.25;\n", "  table 0.75, 0.25;\n  table 0.5, 0.5;\n",
     r"line 18: a second 'table' line for 'rain' \(the first is at line 17\)"),
    ("  default 0.1, 0.5, 0.4;\n", "  default 0.1, 0.5, 0.4;\n  default 0.2, 0.4, 0.4;\n",
     r"line 22: a second 'default' line for 'wet' \(the first is at line 21\)"),
    ("  type discrete [ 2 ] { no, yes };\n}\nvariable wet",
     "  type discrete [ 2 ] { no, yes };\n  type discrete [ 3 ] { a, b, c };\n}\nvariable wet",
     r"line 7: variable 'rain' has a second 'type' line \(the first is at line 6\)"),
    ("  (no) 0.8, 0.15, 0.05;\n", "  (no) 0.8, 0.15, 0.05;\n  table 0.1, 0.2, 0.3, 0.4, 0.5, 0.5;\n",
     r"line 21: a 'table' line for 'wet' after its rows \(the first is at line 20\)"),
    ("  table 0.9, 0.5, 0.2, 0.1, 0.5, 0.8;\n", "  table 0.9, 0.5, 0.2, 0.1, 0.5, 0.8;\n  (dry) 0.5, 0.5;\n",
     r"line 25: row \('dry',\) of 'mud' after its 'table' line \(line 24\)"),
    ("  (no) 0.8, 0.15, 0.05;\n", "  (no) 0.8, 0.15, 0.05;\n  (no) 0.8, 0.15, 0.05;\n",
     r"line 21: row \('no',\) of 'wet' is listed twice"),
    ("network test {", "network other {\n}\nnetwork test {",
     r"line 4: a second 'network' block \(the first is at line 2\)"),
    ("variable mud {", "variable rain {\n  type discrete [ 1 ] { x };\n}\nvariable mud {",
     r"line 13: variable 'rain' is declared twice \(first at line 5\)"),
    ("probability ( mud | wet ) {", "probability ( rain ) {\n  table 0.5, 0.5;\n}\nprobability ( mud | wet ) {",
     r"line 23: a second probability block for 'rain' \(the first is at line 16\)"),
])
def test_duplicates_are_refused_naming_the_line(tmp_path, old, new, message):
    assert old in VALID
    with pytest.raises(ValueError, match=message):
        read(tmp_path, VALID.replace(old, new, 1))


@pytest.mark.parametrize("old, new, message", [
    ("[ 2 ] { no, yes };\n}\nvariable wet", "[ 0 ] { };\n}\nvariable wet", r"line 6: variable 'rain' has no states"),
    ("{ no, yes };\n}\nvariable wet", "{ no, no };\n}\nvariable wet",
     r"line 6: variable 'rain' lists state 'no' twice"),
    ("( mud | wet )", "( mud | wet, wet )", r"line 23: the probability block of 'mud' lists parent 'wet' twice"),
    ("( mud | wet )", "( mud | mud )", r"line 23: the probability block of 'mud' lists it as its own parent"),
    ("[ 2 ] { no, yes };\n}\nvariable wet", "[ ² ] { no, yes };\n}\nvariable wet",
     r"line 6: variable 'rain' declares \[ ² \] states but lists 2"),
    ("0.75, 0.25", "0.75, 1e999", r"line 17: expected a finite probability, got '1e999'"),
    ("(no) 0.8, 0.15, 0.05", "(no) 0.8, 0.15", r"line 20: a row of 'wet' needs 3 probabilities, got 2"),
    ("0.75, 0.25", "0.75, 0.35", r"net.bif: cpts\['rain'\]: the table sums to 1.1"),
    ("0.75, 0.25", "1.25, -0.25", r"net.bif: cpts\['rain'\] must hold finite probabilities >= 0"),
    ("/* a comment", "/* a comment that never closes", r"line 8: a comment '/\*' that is never closed"),
])
def test_other_malformed_blocks_name_the_line_or_variable(tmp_path, old, new, message):
    text = VALID.replace(old, new, 1)
    if "never closes" in new:
        text = text.replace("spanning lines */", "spanning lines")
    with pytest.raises(ValueError, match=message):
        read(tmp_path, text)


def test_empty_file_and_no_variables(tmp_path):
    with pytest.raises(ValueError, match=r"net.bif: the file declares no variables"):
        read(tmp_path, "")
    with pytest.raises(ValueError, match=r"net.bif: the file declares no variables"):
        read(tmp_path, "network x {\n}\n// nothing else\n")


# --- sizes -----------------------------------------------------------------------------------------

def test_huge_tables_are_refused_before_allocation(tmp_path):
    """A child with 200 states and 6 parents of 100 states: 2e14 cells (1.6e15 bytes) would be
    allocated by torch.full; the reader refuses it, naming the variable, the shape and the cap."""
    names = ", ".join(f"s{k}" for k in range(100))
    text = "".join(f"variable p{i} {{ type discrete [ 100 ] {{ {names} }}; }}\n" for i in range(6))
    text += "variable child { type discrete [ 200 ] { %s }; }\n" % ", ".join(f"c{k}" for k in range(200))
    text += "".join(f"probability ( p{i} ) {{ default {', '.join(['0.01'] * 100)}; }}\n" for i in range(6))
    text += "probability ( child | p0, p1, p2, p3, p4, p5 ) {\n  default %s;\n}\n" % ", ".join(["0.005"] * 200)
    with pytest.raises(ValueError, match=r"line 14: the CPT of 'child' would have shape \(100, 100, 100, 100, 100, "
                                         r"100, 200\) = 200,000,000,000,000 cells; ppgen reads networks of at most "
                                         r"134,217,728 CPT cells in all"):
        read(tmp_path, text)


def test_the_cell_cap_counts_all_tables(tmp_path, monkeypatch):
    # With the cap at 10 cells, rain (2) and wet (6) fit, mud (6 more) does not.
    monkeypatch.setattr(bif, "MAX_CELLS", 10)
    with pytest.raises(ValueError, match=r"line 23: the CPT of 'mud' would have shape \(3, 2\) = 6 cells, and the "
                                         r"CPTs before it 8; ppgen reads networks of at most 10 CPT cells"):
        read(tmp_path, VALID)
    monkeypatch.setattr(bif, "MAX_CELLS", 14)
    assert read(tmp_path, VALID).x_dim == 3


def test_a_giant_token_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"line 2: a token longer than 65,536 characters \(starting 'xxxxx"):
        read(tmp_path, "// junk\n" + "x" * (3 * bif.MAX_TOKEN))


# --- junk ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["junk.bif", "junk.bif.gz"])
@pytest.mark.parametrize("junk, message", [
    ("lorem ipsum dolor sit amet " * 200_000, r"line 1: expected 'network', 'variable' or 'probability', got 'lorem'"),
    ("variable a { type discrete [ 2 ] { u, v }; }\n" + "( ) ;" * 1_000_000,
     r"line 2: expected 'network', 'variable' or 'probability', got '\('"),
    ("\n" * 100 + "{" * 5_000_000, r"line 101: expected 'network', 'variable' or 'probability', got '\{'"),
])
def test_junk_is_refused_at_its_first_bad_token(tmp_path, name, junk, message):
    """5 MB of junk ending in a byte that is not UTF-8: had the reader read (or tokenised) the
    whole file before parsing, the decoding error at the end would be the one reported."""
    with pytest.raises(ValueError, match=message):
        read(tmp_path, junk.encode() + b"\xff\n", name)


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    with pytest.raises(ValueError, match=r"net.bif, line 5: not UTF-8 text \(byte 0xe9\)"):
        read(tmp_path, VALID.replace("rain {", "r\xe9in {", 1).encode("latin-1"))
    # a byte-order mark is not junk
    assert read(tmp_path, b"\xef\xbb\xbf" + VALID.encode()).x_dim == 3


# --- files -----------------------------------------------------------------------------------------

def test_file_errors_name_the_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(f"cannot read BIF file '{tmp_path}'")):
        BayesNet.from_bif(tmp_path)
    missing = tmp_path / "missing.bif"
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot read BIF file '{missing}'")):
        BayesNet.from_bif(missing)
    net = read(tmp_path, VALID)
    with pytest.raises(IsADirectoryError, match=re.escape(f"cannot write BIF file '{tmp_path}'")):
        net.to_bif(tmp_path)


def test_bad_gzip_files_are_value_errors_naming_the_path(tmp_path):
    path = tmp_path / "plain.bif.gz"
    path.write_text(VALID)
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: not a readable gzip file (Not a gzipped file")):
        BayesNet.from_bif(path)
    compressed = gzip.compress(VALID.encode() * 50)
    path.write_bytes(compressed[: len(compressed) // 2])  # truncated
    with pytest.raises(ValueError, match=re.escape(f"{path}, line ") + r"\d+: not a readable gzip file"):
        BayesNet.from_bif(path)
    corrupt = bytearray(compressed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        BayesNet.from_bif(path)


# --- writing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("states, what", [
    ({"blood pressure": ["low", "high"]}, "variable 'blood pressure'"),
    ({"bp": ["low", "very high"]}, "a state of 'bp', 'very high'"),
    ({"bp": ["low", "high,ish"]}, "a state of 'bp', 'high,ish'"),
    ({"bp{1}": ["low", "high"]}, r"variable 'bp\{1\}'"),
    ({"bp": ["//low", "high"]}, "a state of 'bp', '//low'"),
    ({"bp": ["low", "hi/*gh"]}, r"a state of 'bp', 'hi/\*gh'"),
    ({"bp": ["low", "(high)"]}, r"a state of 'bp', '\(high\)'"),
    ({"bp": ["low", "x" * 70_000]}, "a state of 'bp', 'xxxx"),
])
def test_to_bif_refuses_names_bif_cannot_hold(tmp_path, states, what):
    net = BayesNet(states)
    path = tmp_path / "out.bif"
    with pytest.raises(ValueError, match=f"cannot write {what}.*as BIF, which has no quoting"):
        net.to_bif(path)
    assert not path.exists()  # refused before anything is written
    with pytest.raises(ValueError, match=r"cannot write the network name 'my net'"):
        BayesNet({"a": ["x"]}).to_bif(path, name="my net")


NAME_CHARS = string.ascii_letters + string.digits + string.punctuation + " \t\n\u00e9\u03b1\u2028\u00a0"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(NAME_CHARS, min_size=1, max_size=8), min_size=3, max_size=3, unique=True),
       st.lists(st.text(NAME_CHARS, min_size=1, max_size=8), min_size=2, max_size=2, unique=True))
def test_every_file_to_bif_writes_reads_back(tmp_path, variables, names):
    """Any names: to_bif refuses them (ValueError) or writes a file from_bif reads back unchanged."""
    if "data" in variables:
        return
    states = {v: list(names) for v in variables}
    net = BayesNet(states, {variables[2]: variables[:2]},
                   {variables[0]: [0.25, 0.75], variables[1]: [0.5, 0.5],
                    variables[2]: [[[0.1, 0.9], [0.2, 0.8]], [[0.3, 0.7], [1 / 3, 2 / 3]]]})
    path = tmp_path / "names.bif"
    try:
        net.to_bif(path)
    except ValueError as err:
        assert "as BIF, which has no quoting" in str(err)
        return
    again = BayesNet.from_bif(path)
    assert again.states == net.states and again.parents == net.parents
    assert all(torch.equal(again.cpts[v], net.cpts[v]) for v in net.variables)


# --- fuzzing ---------------------------------------------------------------------------------------

PIECES = ["{", "}", "(", ")", "[", "]", ";", ",", "|", " ", "\n", "//", "/*", "*/", "table", "default",
          "property", "type", "discrete", "variable", "probability", "network", "rain", "wet", "no", "yes",
          "dry", "0.5", "1", "0", "-1", "1e999", "nan", "2", "3", "\u00e9", "\x00", "\ufeff"]


@st.composite
def mutations(draw):
    """VALID with 1 to 4 random edits: a span deleted, a piece or random text inserted, a line
    duplicated, moved or cut short; sometimes as bytes with one byte replaced."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "random", "duplicate", "move", "truncate"]))
        if edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif edit == "insert":
            text = text[:at] + draw(st.sampled_from(PIECES)) + text[at:]
        elif edit == "random":
            text = text[:at] + draw(st.text(max_size=10)) + text[at:]
        elif edit == "duplicate":
            k = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:k + 1] + lines[k:])
        elif edit == "move":
            k, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines.insert(j, lines.pop(k))
            text = "\n".join(lines)
        else:
            text = text[:at]
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations(), st.booleans())
def test_fuzzed_bif_gives_a_network_or_ppgens_value_error(tmp_path, data, compressed):
    """Every mutated file either reads (and then writes and reads back unchanged, unless to_bif
    refuses a name with a comment marker inside, which this reader takes but others do not) or
    raises a ValueError naming the file: never another exception type."""
    name = "fuzz.bif.gz" if compressed else "fuzz.bif"
    path = tmp_path / name
    try:
        net = read(tmp_path, data, name)
    except ValueError as err:
        assert str(err).startswith(str(path)), err
        return
    try:
        net.to_bif(tmp_path / "again.bif")
    except ValueError as err:
        assert "as BIF, which has no quoting" in str(err) and re.search(r"//|/\*", str(err)), err
        return
    again = BayesNet.from_bif(tmp_path / "again.bif")
    assert again.states == net.states
    assert all(torch.equal(again.cpts[v], net.cpts[v]) for v in net.variables)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=200))
def test_fuzzed_gzip_bytes_give_ppgens_value_error(tmp_path, data):
    """Corrupt gzip streams: a gzip header followed by random bytes."""
    path = tmp_path / "fuzz.bif.gz"
    path.write_bytes(gzip.compress(VALID.encode())[:10] + data)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        BayesNet.from_bif(path)
