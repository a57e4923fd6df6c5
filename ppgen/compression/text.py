r"""Range coding of text under a sequence model: each character with its conditional given those before it.

A :class:`~ppgen.models.sequence.SequenceModel` factorises a row of character ids by the chain
rule, :math:`p(x) = \prod_t p(x_t \mid x_{<t})`; a range coder (a queue: first in, first out) fed
those conditionals spends about :math:`-\log_2 p(x)` bits on the row. A text of T characters is
coded as the rows the model is trained and scored on (:func:`text_rows`): consecutive pieces of
the model's length L, the last one shorter, each read from the start symbol. Its code length is
then the :math:`-\log_2 p` that ``log_likelihood`` and ``bits_per_character`` report for those rows.

**One loop both ways.** Encoder and decoder run the same loop (:func:`encode_rows`,
:func:`decode_rows`): ``ROWS`` rows at a time, position by position, the model's stepper (its KV
cache, recurrent state or n-gram context) gives the logits of every row's next character; the
coder encodes the known characters or decodes them, and they are fed back. Both sides therefore
compute every probability with the same operations on the same values (a float64 CPU copy of the
model), and on one machine get the same bits, whatever the model. Each probability is then rounded to a multiple of
``2**-bits`` (at least one unit; constriction's categorical model rescales the counts to its
24-bit fixed point), so that a machine whose float64 arithmetic differs in the last bit still
decodes the stream unless a probability lies within ~1e-16 of a rounding boundary (odds ~1e-9
per character); the container's data digest turns that case into an error, never wrong text.

**Characters outside the vocabulary.** The model codes such a character as what it predicts it to
be, the unknown symbol (id 0), at the model's probability; after the rows, each one's Unicode code
point follows, uniform over the :data:`CODE_POINTS` (about 20.1 bits). A text comes back exactly,
whatever it holds, and costs its model's :math:`-\log_2 p` plus 20.1 bits a character the model
never saw. The data digest covers the code points too.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch

from ppgen.compression.container import MAX_VALUES, TEXT, CompressedFormatError, Header, data_digest, header_error
from ppgen.compression.stored import load, store, stored_words, value_bits
from ppgen.data.text import as_text
from ppgen.models.sequence import SequenceModel

__all__ = ["ROWS", "CODE_POINTS", "ESCAPE_BITS", "text_ids", "text_rows", "ids_digest", "with_escapes",
           "quantised_categorical", "encode_rows", "decode_rows", "store_text", "load_text", "check_text_header",
           "min_bits_per_character"]

ROWS = 32  # rows stepped together: part of the format, since the floats may depend on the batch's shape
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
CODE_POINTS = 0x110000  # Unicode's code points: a character outside the vocabulary is coded uniformly among them
ESCAPE_BITS = math.log2(CODE_POINTS)  # what such a character costs after its unknown symbol, about 20.09 bits
STORED_ESCAPE_BITS = 21  # a code point stored plainly
_CODE_POINT = constriction.stream.model.Uniform(CODE_POINTS)


def text_ids(model: SequenceModel, x) -> tuple[torch.Tensor, str, torch.Tensor]:
    """What :func:`~ppgen.compress` codes with a sequence model, the header's dtype for it, and the code
    points of a text's characters outside the model's vocabulary (in order; empty for rows of ids): a
    text (``str``, or ``bytes`` of UTF-8) as its ids (T,), such a character as the unknown symbol's id 0,
    and "str"; rows of ids as (N, L) int64 and "<i8", coded as they are, id 0 included."""
    if isinstance(x, (str, bytes, bytearray)):
        if model.vocabulary is None:
            raise TypeError(f"a text needs a model built with a Vocabulary; {type(model).__name__} has only a "
                            "number of symbols: pass the text's ids (N, L)")
        text = as_text(x)
        ids = model.vocabulary.encode(text, errors="replace")
        escapes = torch.tensor([ord(text[i]) for i in (ids == 0).nonzero().squeeze(1).tolist()], dtype=torch.long)
        kind = TEXT
    else:
        ids, kind, escapes = model.check_data(x), "<i8", torch.zeros(0, dtype=torch.long)
    if ids.numel() > MAX_VALUES:
        raise ValueError(f"x holds {ids.numel():,} characters; one stream holds at most {MAX_VALUES:,}: compress "
                         "it in parts")
    return ids.cpu(), kind, escapes


def text_rows(ids: torch.Tensor, length: int) -> list[torch.Tensor]:
    """The groups of rows that ids are coded and scored as: a text's ids (T,) as views (T // length,
    length) and (1, T % length), leaving out an empty one; rows of ids (N, L) as they are.

    >>> [r.tolist() for r in text_rows(torch.arange(7), 3)]
    [[[0, 1, 2], [3, 4, 5]], [[6]]]
    """
    if ids.dim() == 2:
        return [ids]
    whole = len(ids) // length * length
    return [rows for rows in (ids[:whole].view(-1, length), ids[whole:].view(1, -1)) if rows.numel()]


def ids_digest(ids: torch.Tensor, escapes: torch.Tensor | None = None) -> bytes:
    """The header's data digest of ids, and of the code points that follow them: of the bytes of their
    little-endian uint32 (every id, not its low byte), one after the other."""
    values = ids.reshape(-1) if escapes is None else torch.cat([ids.reshape(-1), escapes])
    return data_digest(values.numpy().astype("<u4").view(np.uint8))


def with_escapes(vocabulary, ids: torch.Tensor, escapes: torch.Tensor) -> str:
    """The text of ids (T,) with each unknown symbol, in order, the character of its code point."""
    characters = list(vocabulary.decode(ids))
    for position, point in zip((ids == 0).nonzero().squeeze(1).tolist(), escapes.tolist()):
        characters[position] = chr(point)
    return "".join(characters)


def quantised_categorical(logits: torch.Tensor, bits: int) -> np.ndarray:
    """softmax(logits) (n, V) in counts of ``2**-bits``, each at least 1, float64.

    >>> quantised_categorical(torch.tensor([[0.0, 0.0, -50.0]], dtype=torch.float64), 4).tolist()
    [[8.0, 8.0, 1.0]]
    """
    return torch.round(torch.softmax(logits.double(), -1) * 2.0**bits).clamp_(min=1).numpy()


def encode_rows(model, groups: list[torch.Tensor], bits: int, escapes: torch.Tensor | None = None) -> np.ndarray:
    """The range coder's words for every row of ``groups`` (each (n, L) int64) under ``model``, a float64
    CPU copy of a sequence model, then for the code points ``escapes``, uniform."""
    encoder = constriction.stream.queue.RangeEncoder()
    _code_rows(model, groups, bits, encoder=encoder)
    if escapes is not None:
        encoder.encode(escapes.int().numpy(), _CODE_POINT)
    return encoder.get_compressed()


def decode_rows(model, groups: list[torch.Tensor], words: np.ndarray, bits: int, escaped: bool) -> torch.Tensor:
    """The inverse of :func:`encode_rows`: decodes ``words`` into ``groups`` (zeros of the rows' shapes), in place,
    and returns the code points that follow, one for each unknown symbol when ``escaped`` (a text's), else none."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    _code_rows(model, groups, bits, decoder=decoder)
    count = sum(int((group == 0).sum()) for group in groups) if escaped else 0
    return torch.from_numpy(decoder.decode(_CODE_POINT, count).astype(np.int64))


def store_text(ids: torch.Tensor, escapes: torch.Tensor, bits: int) -> np.ndarray:
    """Plain storage of ids (N, L), each in ``bits`` bits, then of the code points, 21 bits each."""
    return np.concatenate([store(ids.view(len(ids), -1).numpy(), bits), store(escapes[None].numpy(),
                                                                               STORED_ESCAPE_BITS)])


def load_text(words: np.ndarray, count: int, length: int, bits: int,
              escaped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`store_text`: ids (count, length) and the code points, one for each unknown
    symbol when ``escaped``; a word count that does not match, or a code point past Unicode's, is refused."""
    first = stored_words(count, length, bits)
    ids = torch.from_numpy(load(words[:first], count, length, bits))
    num_escapes = int((ids == 0).sum()) if escaped else 0
    expected = first + stored_words(1, num_escapes, STORED_ESCAPE_BITS)
    if len(words) != expected:
        raise header_error("stream_words", len(words), f"{expected} for {count * length:,} ids stored in {bits} "
                                                       f"bits each and {num_escapes} code points in 21")
    escapes = torch.from_numpy(load(words[first:], 1, num_escapes, STORED_ESCAPE_BITS)[0])
    if len(escapes) and escapes.max() >= CODE_POINTS:
        raise CompressedFormatError(f"corrupt stream: stored code point {int(escapes.max()):#x} is past Unicode's "
                                    f"last, {CODE_POINTS - 1:#x}")
    return ids, escapes


@torch.no_grad()
def _code_rows(model, groups: list[torch.Tensor], bits: int, *, encoder=None, decoder=None) -> None:
    """Both directions in one loop: ``ROWS`` rows at a time, position by position, the stepper's logits
    for every row's next character, quantised; the encoder codes the known characters, or the decoder
    writes them into the rows; they are fed back to the stepper."""
    for group in groups:
        for chunk in group.split(ROWS):  # views: decoded characters land in ``groups``
            step, new = model._stepper(len(chunk)), chunk[:, :0]
            for t in range(chunk.shape[1]):
                probs = quantised_categorical(step(new), bits)  # (n, V)
                if decoder is None:
                    encoder.encode(chunk[:, t].int().numpy(), _CATEGORICAL, probs)
                else:
                    chunk[:, t] = torch.from_numpy(decoder.decode(_CATEGORICAL, probs).astype(np.int64))
                new = chunk[:, t:t + 1]


def check_text_header(model: SequenceModel, header: Header, num_words: int) -> None:
    """What only the model knows, checked before decoding a text stream: the method, the dtype it can give
    back, rows within its context, and the stream the characters need (stored: exactly their words; coded:
    at least 32 bits a word for the cheapest characters)."""
    name, values, length = type(model).__name__, header.count * math.prod(header.shape), header.shape[-1]
    if header.method not in ("text", "stored"):
        raise CompressedFormatError(f"the stream was coded by {header.method!r}, but {name} decodes 'text'")
    if header.dtype not in (TEXT, "<i8") or len(header.shape) != 1:
        raise header_error("(dtype, shape)", (header.dtype, header.shape), f"({TEXT!r}, (T,)) or ('<i8', (L,)): "
                                                                          f"{name} decodes texts or rows of ids")
    if header.dtype == TEXT and model.vocabulary is None:
        raise header_error("dtype", header.dtype, f"'<i8': {name} has no vocabulary to give a text back")
    if header.dtype != TEXT and model.context is not None and length > model.context:
        raise header_error("shape", header.shape, f"rows of at most {model.context} ids ({name}'s context)")
    if header.method == "stored":  # a text's code points follow its ids: load_text checks the rest
        bits = value_bits([model.vocab_size])
        least = stored_words(header.count, length, bits)
        if num_words < least or (num_words != least and header.dtype != TEXT):
            raise header_error("stream_words", num_words, f"{'at least ' if header.dtype == TEXT else ''}{least} "
                                                          f"for {values:,} ids stored in {bits} bits each")
        return
    least = min_bits_per_character(model.vocab_size)
    most = math.floor(32 * (num_words + 1) / least)  # characters the stream's words can hold
    why = f"the stream's {num_words} words hold 32 bits each, and a character costs at least {least:.3g} bits"
    if values > most and header.dtype == TEXT:
        raise header_error("shape", header.shape, f"(T,) with T at most {most:,}: {why}")
    if values > most:
        raise header_error("count", header.count, f"at most {most // length:,} rows of {length}: {why}")


def min_bits_per_character(vocab_size: int) -> float:
    """The fewest bits a character can cost: constriction gives each of the other V - 1 symbols at
    least ``2**-24``, so no character has probability above :math:`1 - (V - 1) 2^{-24}`."""
    return -math.log1p(-(vocab_size - 1) * 2.0**-24) / math.log(2)
