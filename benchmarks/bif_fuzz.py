"""How fast, and in how little memory, the BIF reader refuses malformed files.

Cases (each in its own process, so that its peak memory is its own):

* ``junk_text``, ``junk_text_gz``: ``--junk-mb`` MB (default 50) of words that are no BIF keyword,
  plain and gzip-compressed;
* ``junk_punctuation``: random punctuation and spaces, one token per character or two;
* ``junk_binary``: random bytes (not UTF-8);
* ``junk_one_token``: one character repeated, a single giant token;
* ``valid_then_junk``: the bnlearn network alarm, then the junk words;
* ``space_then_junk``, ``open_comment``: whitespace, or a ``/*`` comment never closed, the whole
  file long: the reader must read to the end before it can tell, so these show its linear cost;
* ``huge_table``: a child with 200 states and 6 parents of 100 states (2e14 cells, 1.6e15 bytes);
* ``fuzz``: ``--fuzz`` random mutations (default 2000) of bnlearn networks (asia, cancer, child,
  insurance, alarm, win95pts): spans deleted, tokens or random text inserted, lines duplicated,
  moved or cut, bytes replaced, half of them gzip-compressed. Each must read or raise ppgen's
  ValueError naming the file; the script fails otherwise.

Reported: seconds per ``BayesNet.from_bif`` (median and max over 3 runs of each junk case, over
the refused mutations for ``fuzz``) and the peak resident memory the case added to its process
after imports (``ru_maxrss``). Writes ``benchmarks/results/bif_fuzz.json`` and a markdown table.

    python benchmarks/bif_fuzz.py [--junk-mb 50] [--fuzz 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETWORKS = ("asia", "cancer", "child", "insurance", "alarm", "win95pts")
PIECES = ["{", "}", "(", ")", "[", "]", ";", ",", "|", " ", "\n", "//", "/*", "*/", "table", "default",
          "property", "type", "discrete", "variable", "probability", "network", "yes", "no", "0.5", "1", "0",
          "-1", "1e999", "nan", "2", "\u00e9", "\x00"]
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
JUNK_CASES = ("junk_text", "junk_text_gz", "junk_punctuation", "junk_binary", "junk_one_token", "valid_then_junk",
              "space_then_junk", "open_comment", "huge_table")


def example_dir() -> Path:
    import pgmpy

    return Path(pgmpy.__file__).parent / "utils" / "example_models"


def junk_words(size: int, rng: random.Random) -> bytes:
    words, total = [], 0
    while total < size:
        word = rng.choice(WORDS) + rng.choice(" \n")
        words.append(word)
        total += len(word)
    return "".join(words).encode()


def huge_table() -> bytes:
    names = ", ".join(f"s{k}" for k in range(100))
    text = "".join(f"variable p{i} {{ type discrete [ 100 ] {{ {names} }}; }}\n" for i in range(6))
    text += "variable child { type discrete [ 200 ] { %s }; }\n" % ", ".join(f"c{k}" for k in range(200))
    text += "".join(f"probability ( p{i} ) {{ default {', '.join(['0.01'] * 100)}; }}\n" for i in range(6))
    text += "probability ( child | p0, p1, p2, p3, p4, p5 ) {\n  default %s;\n}\n" % ", ".join(["0.005"] * 200)
    return text.encode()


def write_case(case: str, workdir: Path, megabytes: int, rng: random.Random) -> Path:
    """The input file of a junk case."""
    size = megabytes * 2**20
    alarm = gzip.open(example_dir() / "alarm.bif.gz").read()
    data = {
        "junk_text": lambda: junk_words(size, rng),
        "junk_text_gz": lambda: junk_words(size, rng),
        "junk_punctuation": lambda: bytes(rng.choices(b"{}[]();,| \n", k=size)),
        "junk_binary": lambda: rng.randbytes(size),
        "junk_one_token": lambda: b"x" * size,
        "valid_then_junk": lambda: alarm + junk_words(size, rng),
        "space_then_junk": lambda: b" \n" * (size // 2) + b"junk",
        "open_comment": lambda: b"/* " + junk_words(size, rng),
        "huge_table": huge_table,
    }[case]()
    path = workdir / (case + (".bif.gz" if case.endswith("_gz") else ".bif"))
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def mutate(text: str, rng: random.Random) -> bytes:
    """``text`` with 1 to 4 random edits, as in tests/test_bif.py's fuzz test."""
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        at = rng.randint(0, len(text))
        edit = rng.choice(["delete", "insert", "random", "duplicate", "move", "truncate"])
        if edit == "delete":
            text = text[:at] + text[at + rng.randint(1, 40):]
        elif edit == "insert":
            text = text[:at] + rng.choice(PIECES) + text[at:]
        elif edit == "random":
            text = text[:at] + "".join(chr(rng.randint(1, 0x2FF)) for _ in range(rng.randint(1, 10))) + text[at:]
        elif edit == "duplicate":
            k = rng.randrange(len(lines))
            text = "\n".join(lines[:k + 1] + lines[k:])
        elif edit == "move":
            k, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines.insert(j, lines.pop(k))
            text = "\n".join(lines)
        else:
            text = text[:at]
    data = text.encode()
    if rng.random() < 0.5:
        at = rng.randint(0, len(data))
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    return data


def run_case(case: str, workdir: Path, fuzz: int, seed: int) -> dict:
    """In the child process: time from_bif on the case, and the memory it added."""
    from ppgen.models.bayesnet import BayesNet

    def attempt(path: Path) -> tuple[float, str | None]:
        start = time.perf_counter()
        try:
            BayesNet.from_bif(path)
            error = None
        except ValueError as err:  # anything else escapes and fails the run
            if not str(err).startswith(str(path)):
                raise AssertionError(f"a ValueError that does not name the file: {err}") from err
            error = str(err)[len(str(path)):]
        return time.perf_counter() - start, error

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if case != "fuzz":
        path = next(workdir.glob(case + ".bif*"))
        times, error = zip(*(attempt(path) for _ in range(3)))
        out = {"bytes": path.stat().st_size, "seconds": list(times), "error": error[0]}
    else:
        rng = random.Random(seed)
        texts = [gzip.open(example_dir() / f"{n}.bif.gz", "rt").read() for n in NETWORKS]
        refused, accepted = [], 0
        for k in range(fuzz):
            path = workdir / (f"m{k % 10}.bif.gz" if rng.random() < 0.5 else f"m{k % 10}.bif")
            data = mutate(rng.choice(texts), rng)
            if path.suffix == ".gz":
                with gzip.open(path, "wb", compresslevel=1) as f:
                    f.write(data)
            else:
                path.write_bytes(data)
            seconds, error = attempt(path)
            if error is None:
                accepted += 1
            else:
                refused.append(seconds)
        out = {"mutations": fuzz, "accepted": accepted, "refused": len(refused), "seconds": refused}
    out["peak_rss_added_mb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--junk-mb", type=int, default=50)
    parser.add_argument("--fuzz", type=int, default=2000, help="number of mutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.workdir), args.fuzz, args.seed)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rng = random.Random(args.seed)
        for case in (*JUNK_CASES, "fuzz"):
            if case != "fuzz":
                path = write_case(case, workdir, args.junk_mb, rng)
            child = subprocess.run([sys.executable, __file__, "--case", case, "--workdir", tmp,
                                    "--fuzz", str(args.fuzz), "--seed", str(args.seed)],
                                   capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"{case} failed:\n{child.stderr}")
            results[case] = json.loads(child.stdout.strip().splitlines()[-1])
            if case != "fuzz":
                path.unlink()
            print(f"{case}: done", file=sys.stderr)
    import torch

    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "junk_mb": args.junk_mb, "fuzz": args.fuzz, "seed": args.seed}
    out = Path(__file__).resolve().parent / "results" / "bif_fuzz.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("| case | input | median s | max s | peak RSS added | error |")
    print("|---|---:|---:|---:|---:|---|")
    for case, r in results.items():
        size = f"{r['bytes'] / 2**20:.1f} MB" if "bytes" in r else f"{r['mutations']} mutations"
        what = (r.get("error") or "") if case != "fuzz" else f"{r['refused']} refused, {r['accepted']} read"
        print(f"| {case} | {size} | {statistics.median(r['seconds']):.3g} | {max(r['seconds']):.3g} | "
              f"{r['peak_rss_added_mb']:.0f} MB | {what[:90]} |")


if __name__ == "__main__":
    main()
