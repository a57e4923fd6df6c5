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
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch

from ppgen.compression.container import MAX_VALUES, TEXT, CompressedFormatError, Header, data_digest, header_error
from ppgen.compression.stored import stored_words, value_bits
from ppgen.data.text import as_text
from ppgen.models.sequence import SequenceModel

__all__ = ["ROWS", "text_ids", "text_rows", "ids_digest", "quantised_categorical", "encode_rows", "decode_rows",
           "check_text_header", "min_bits_per_character"]

ROWS = 32  # rows stepped together: part of the format, since the floats may depend on the batch's shape
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def text_ids(model: SequenceModel, x) -> tuple[torch.Tensor, str]:
    """What :func:`~ppgen.compress` codes with a sequence model, and the header's dtype for it: a text
    (``str``, or ``bytes`` of UTF-8) as its ids (T,) and "str", rows of ids as (N, L) int64 and "<i8".

    A text must lie in the model's vocabulary: a character outside it would be coded as the unknown
    symbol and come back as U+FFFD, so it is refused, named. Rows of ids are coded as they are, the
    unknown symbol's id 0 included."""
    if isinstance(x, (str, bytes, bytearray)):
        if model.vocabulary is None:
            raise TypeError(f"a text needs a model built with a Vocabulary; {type(model).__name__} has only a "
                            "number of symbols: pass the text's ids (N, L)")
        text = as_text(x)
        ids = model.vocabulary.encode(text, errors="replace")
        unknown = (ids == 0).nonzero().squeeze(1)  # id 0: the unknown symbol
        if len(unknown):
            missing = "".join(sorted({text[i] for i in unknown.tolist()}))
            raise ValueError(f"text holds {len(missing)} character(s) outside the model's vocabulary: "
                             f"{missing[:20]!r}{' ...' if len(missing) > 20 else ''} (the first at offset "
                             f"{int(unknown[0])}); compress codes only what the vocabulary gives back")
        kind = TEXT
    else:
        ids, kind = model.check_data(x), "<i8"
    if ids.numel() > MAX_VALUES:
        raise ValueError(f"x holds {ids.numel():,} characters; one stream holds at most {MAX_VALUES:,}: compress "
                         "it in parts")
    return ids.cpu(), kind


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


def ids_digest(ids: torch.Tensor) -> bytes:
    """The header's data digest of ids: of the bytes of their little-endian uint32 (every id, not its low byte)."""
    return data_digest(ids.numpy().astype("<u4").view(np.uint8))


def quantised_categorical(logits: torch.Tensor, bits: int) -> np.ndarray:
    """softmax(logits) (n, V) in counts of ``2**-bits``, each at least 1, float64.

    >>> quantised_categorical(torch.tensor([[0.0, 0.0, -50.0]], dtype=torch.float64), 4).tolist()
    [[8.0, 8.0, 1.0]]
    """
    return torch.round(torch.softmax(logits.double(), -1) * 2.0**bits).clamp_(min=1).numpy()


def encode_rows(model, groups: list[torch.Tensor], bits: int) -> np.ndarray:
    """The range coder's words for every row of ``groups`` (each (n, L) int64) under ``model``, a float64
    CPU copy of a sequence model."""
    encoder = constriction.stream.queue.RangeEncoder()
    _code_rows(model, groups, bits, encoder=encoder)
    return encoder.get_compressed()


def decode_rows(model, groups: list[torch.Tensor], words: np.ndarray, bits: int) -> None:
    """The inverse of :func:`encode_rows`: decodes ``words`` into ``groups`` (zeros of the rows' shapes), in place."""
    _code_rows(model, groups, bits, decoder=constriction.stream.queue.RangeDecoder(words))


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
    if header.method == "stored":
        bits = value_bits([model.vocab_size])
        if num_words != stored_words(header.count, length, bits):
            raise header_error("stream_words", num_words, f"{stored_words(header.count, length, bits)} for "
                                                          f"{values:,} ids stored in {bits} bits each")
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
