r"""Lossless compression with learned models: what a model's NLL promises, in bytes.

A model that assigns p(x) is a compressor: an entropy coder driven by p spends about
:math:`-\log_2 p(x)` bits on x. :func:`compress` turns a ppgen model into one, with the entropy
coders of ``constriction`` (R. Bamler, "Understanding entropy coding with asymmetric numeral
systems (ANS): a statistician's perspective", 2022):

- exact likelihoods -- FVSBN, NADE, MADE (one mask), PixelCNN, :class:`~ppgen.IndependentBernoulli`
  and :class:`~ppgen.BayesNet` -- by range coding every value with its conditional
  (:mod:`ppgen.compression.exact`);
- VAEs with a Bernoulli likelihood by bits-back coding with ANS, BB-ANS
  (:mod:`ppgen.compression.bitsback`), at about the negative ELBO;
- sequence models of text -- :class:`~ppgen.CharNGram`, :class:`~ppgen.CharLSTM`,
  :class:`~ppgen.CharTransformer` and any :class:`~ppgen.models.sequence.SequenceModel` -- by range
  coding every character with its conditional given those before it (:mod:`ppgen.compression.text`):
  a ``str`` comes back as that ``str``, whatever characters it holds, rows of ids as rows of ids.

Not supported yet: normalizing flows (bits-back coding through the dequantization, as in
Ho et al.'s local bits-back), diffusion models (bits-back over the chain of latents, as in Kingma et
al.'s variational diffusion models), energy models and GANs (no normalised density to code with),
and the other latent-variable models (conditional VAE, mixtures).

The result is a ``.ppz`` stream (:mod:`ppgen.compression.container`): a header naming the model
by fingerprint, the image shape, count and dtype, then the coded words. Where the model's code
would be longer than the array it codes (data unlike the model's training data), :func:`compress`
stores the values plainly instead (:mod:`ppgen.compression.stored`: 1 bit per pixel), warns, and
says so in what it returns; the stream is then never longer than the array plus the header. A text
is stored likewise, each character's id in :math:`\lceil \log_2 V \rceil` bits (and the code point of
each one outside the vocabulary in 21), where its code would be longer than that.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ppgen.compression.bitsback import LATENT_BITS, Q_BITS, decode_bbans, encode_bbans, initial_word_count
from ppgen.compression.bitsback import negative_elbo_bits
from ppgen.compression.container import DTYPES, MAX_NDIM, MAX_VALUES, TEXT, CompressedFormatError, Header, data_digest
from ppgen.compression.container import header_error, model_fingerprint, pack, unpack
from ppgen.compression.exact import decode_exact, encode_exact, float64_copy, min_bits_per_image
from ppgen.compression.stored import load, store, stored_words, value_bits
from ppgen.compression.text import (ESCAPE_BITS, check_text_header, decode_rows, encode_rows, ids_digest, load_text,
                                    store_text, text_ids, text_rows, with_escapes)
from ppgen.models.autoregressive._common import AutoregressiveModel
from ppgen.models.bayesnet import BayesNet
from ppgen.models.independent import IndependentBernoulli
from ppgen.models.latent.vae import VAE
from ppgen.models.sequence import SequenceModel

__all__ = ["compress", "decompress", "model_nll_bits", "Compressed", "CompressedFormatError", "UnsupportedModelError",
           "PlainStorageWarning", "model_fingerprint", "PROB_BITS"]

PROB_BITS = 16
_CODED = ("FVSBN, NADE, MADE (one mask), PixelCNN, IndependentBernoulli, BayesNet (range coding), VAE with a "
          "Bernoulli likelihood (bits-back ANS) and sequence models of text (CharNGram, CharLSTM, CharTransformer)")


class UnsupportedModelError(ValueError, TypeError):
    """A model :func:`compress` cannot code. A ValueError, as every refused input; also a TypeError,
    which this error was before (as NumPy's ``AxisError`` is both a ValueError and an IndexError)."""


class PlainStorageWarning(UserWarning):
    """:func:`compress` stored the data plainly: the model's code would have been longer."""


class Compressed(bytes):
    """A ``.ppz`` stream (bytes) that also says how :func:`compress` wrote it.

    Attributes
    ----------
    method : {"range", "bbans", "text", "stored"}
        "stored" when the model's code would have been longer than the values written out.
    model_bytes : int
        The length of the stream the model's code gives (this one's, unless stored).
    """

    def __new__(cls, data: bytes, method: str, model_bytes: int):
        self = super().__new__(cls, data)
        self.method, self.model_bytes = method, model_bytes
        return self

    def __getnewargs__(self):  # pickle and copy rebuild it with its attributes
        return bytes(self), self.method, self.model_bytes


def _method(model) -> str:
    """How ``model`` codes, "range", "bbans" or "text"; an :class:`UnsupportedModelError` naming it otherwise."""
    name = type(model).__name__
    if isinstance(model, (AutoregressiveModel, IndependentBernoulli, BayesNet)):
        return "range"
    if isinstance(model, SequenceModel):
        return "text"
    if isinstance(model, VAE):
        if type(model).model is not VAE.model or type(model).guide is not VAE.guide:
            raise UnsupportedModelError(f"compress supports {_CODED}; got {name}, whose prior or guide is not the "
                                        "VAE's N(0, I) and diagonal Gaussian that bits-back coding uses")
        if model.likelihood != "bernoulli":
            raise ValueError(f"compress codes binary data; this VAE has likelihood={model.likelihood!r} "
                             "(use likelihood='bernoulli')")
        return "bbans"
    raise UnsupportedModelError(
        f"compress supports {_CODED}; got {name}. Flows and diffusion models are not coded yet (they need "
        "bits-back over their dequantization or chain of latents); energy models and GANs have no normalised "
        "density to code with.")


def _cards(model) -> np.ndarray:
    """States per value (D,): a Bayesian network's cardinalities, 2 for binary pixels."""
    return np.asarray(model.cards) if isinstance(model, BayesNet) else np.full(model.x_dim, 2)


def _rows(model, x) -> tuple[np.ndarray, torch.Tensor]:
    """``x`` as it came (NumPy) and as validated float64 rows (N, D); a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        if x.dtype in (torch.bfloat16, torch.float16) or x.is_complex():
            raise TypeError(f"x has dtype {x.dtype}; compress takes bool, integer, float32 or float64 data")
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if x.dtype.newbyteorder("<").str not in DTYPES:
        raise TypeError(f"x must hold bool, integer or float values of at most 64 bits, got dtype {x.dtype}")
    if not 2 <= x.ndim <= MAX_NDIM + 1 or math.prod(x.shape[1:]) != model.x_dim:
        raise ValueError(f"x must have shape (N, ...) with {model.x_dim} values per image (one image per "
                         f"leading index, at most {MAX_NDIM} axes per image), got shape {x.shape}")
    if x.size > MAX_VALUES:
        raise ValueError(f"x holds {x.size:,} values; one stream holds at most {MAX_VALUES:,}: compress it in parts")
    flat = x.reshape(x.shape[0], model.x_dim).astype(np.float64)
    if isinstance(model, BayesNet):
        cards = np.asarray(model.cards)
        bad = ~((flat == np.round(flat)) & (flat >= 0) & (flat < cards))
        what = lambda c: f"a state index of {model.variables[c]!r} (an integer in 0..{model.cards[c] - 1}; " \
                         "missing entries (-1) cannot be compressed)"
    else:
        bad = (flat != 0) & (flat != 1)
        what = lambda c: "0 or 1 (the model is over binary pixels)"
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"x[{row}] holds {flat[row, col]:g} at flat position {col}, expected {what(col)}")
    return x, torch.from_numpy(flat)


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def compress(model, x, *, batch_size: int = 500, seed: int = 0, fallback: bool = True) -> Compressed:
    r"""Losslessly compress images ``x`` with ``model``, or a text with a sequence model; :func:`decompress`
    inverts it exactly.

    Parameters
    ----------
    model : FVSBN, NADE, MADE (one mask), PixelCNN, IndependentBernoulli, BayesNet, VAE (Bernoulli),
            or a sequence model (CharNGram, CharLSTM, CharTransformer)
    x : Tensor or ndarray (N, ...), or str
        N images of ``model.x_dim`` values each, in any shape and dtype (bool, int, float): 0/1
        pixels, or state indices for a Bayesian network. ``N = 0`` gives a valid empty stream.
        For a sequence model: a text (``str``, or ``bytes`` of UTF-8), coded as the rows the model
        is scored on (consecutive pieces of its length; :func:`~ppgen.compression.text.text_rows`),
        a character outside the model's vocabulary as the unknown symbol and then its code point
        (about 20.1 bits more); or rows of ids (N, L) (L at most the model's context), coded as they are.
    batch_size : int
        Rows per network call. It changes the speed, never the bytes. (A sequence model steps 32
        rows at a time whatever it is: the format fixes it, so that both sides compute alike.)
    seed : int
        Bits-back only: seeds the initial random words the first latent is drawn from.
    fallback : bool
        Store the values plainly where the model's code would be longer (the default). False
        keeps the model's code whatever its length (to measure it, or to test the coder).

    Returns
    -------
    Compressed (bytes)
        A ``.ppz`` stream: header (:mod:`ppgen.compression.container`), then the coded data.
        Its length is about :math:`-\log_2 p(x)` bits (exact models) or the negative ELBO plus
        the initial words (VAEs), plus ~70 bytes of header. Where the code would be longer than
        the values written out plainly (1 bit per binary pixel), they are stored plainly instead:
        ``method`` is then "stored", ``model_bytes`` the longer length, and a
        :class:`PlainStorageWarning` says so.

    Raises
    ------
    UnsupportedModelError (a ValueError)
        A model it cannot code (a flow, diffusion model, GAN, energy model, ...), named with those it can.

    Examples
    --------
    >>> import ppgen
    >>> model = ppgen.IndependentBernoulli.from_frequencies(torch.tensor([[0., 1.], [1., 1.]]))
    >>> data = compress(model, torch.tensor([[1., 1.], [0., 1.]]))
    >>> decompress(model, data).tolist()
    [[1.0, 1.0], [0.0, 1.0]]
    """
    method = _method(model)
    batch_size = _check_positive(batch_size, "batch_size")
    if method == "text":
        return _compress_text(model, x, fallback)
    raw, rows = _rows(model, x)
    n, model64 = len(rows), float64_copy(model)
    init_words = initial_word_count(model.z_dim, Q_BITS) if method == "bbans" and n else 0
    header = Header(method, model_fingerprint(model), tuple(raw.shape[1:]), n, raw.dtype.newbyteorder("<").str,
                    PROB_BITS, LATENT_BITS if method == "bbans" else 0, seed if method == "bbans" else 0, init_words,
                    data_digest(rows.numpy()))
    if not n:
        words = np.zeros(0, dtype=np.uint32)
    elif method == "range":
        words = encode_exact(model64, rows, batch_size, PROB_BITS)
    else:
        words = encode_bbans(model64, rows, batch_size=batch_size, prob_bits=PROB_BITS, latent_bits=LATENT_BITS,
                             q_bits=Q_BITS, seed=seed)
    coded = pack(header, words)
    bits = value_bits(_cards(model))
    plain = pack(Header("stored", header.fingerprint, header.shape, n, header.dtype, 0,
                        data_digest=header.data_digest), store(rows.numpy(), bits))
    if len(coded) <= len(plain) or not fallback:
        return Compressed(coded, method, len(coded))
    warnings.warn(f"compress stored {n:,} images plainly, {bits} bit(s) per value, in {len(plain):,} bytes: "
                  f"{type(model).__name__}'s code would take {len(coded):,} (data unlike its training data, or too "
                  "few images for the code's fixed cost)", PlainStorageWarning, stacklevel=2)
    return Compressed(plain, "stored", len(coded))


def decompress(model, data: bytes, *, batch_size: int = 500) -> torch.Tensor | str:
    """The images that :func:`compress` coded or stored into ``data``, exactly: shape (N, ...) and dtype
    as given (in native byte order). With a sequence model: the text as a ``str``, or the rows of ids
    (N, L) as int64.

    Raises
    ------
    CompressedFormatError (a ValueError)
        ``data`` is not a ppgen stream, is truncated or damaged, comes from a newer format
        version, was made with another model, has a header field out of its range (the error
        names the field, its value and what was expected; checked before anything is
        allocated), or decodes to data that fail its digest.
    UnsupportedModelError (a ValueError)
        A model :func:`compress` cannot code.
    """
    method = _method(model)
    batch_size = _check_positive(batch_size, "batch_size")
    header, words = unpack(data, model_fingerprint(model))
    if method == "text":
        return _decompress_text(model, header, words)
    _check_header(model, method, header, len(words))
    n = header.count
    if n == 0:
        rows = torch.zeros(0, model.x_dim, dtype=torch.float64)
    elif header.method == "stored":
        rows = _stored_rows(model, words, n)
    else:
        model64 = float64_copy(model)
        try:
            if method == "range":
                rows = decode_exact(model64, words, n, batch_size, header.prob_bits)
            else:
                rows = decode_bbans(model64, words, n, seed=header.seed, init_words=header.init_words,
                                    prob_bits=header.prob_bits, latent_bits=header.latent_bits, q_bits=Q_BITS)
        except AssertionError as err:  # constriction: words that no encoder of these probabilities writes
            raise CompressedFormatError(f"corrupt stream: the coded data do not decode under this model ({err})") \
                from None
    if data_digest(rows.numpy()) != header.data_digest:
        raise CompressedFormatError("the decoded data fail the stream's digest: the decoder's probabilities "
                                    "drifted from the encoder's, or the stream is damaged")
    out = rows.numpy().astype(np.dtype(header.dtype).newbyteorder("="))
    if not np.array_equal(out, rows.numpy()):
        raise header_error("dtype", header.dtype, f"a type that holds the decoded values (up to {float(rows.max()):g})")
    return torch.from_numpy(out.reshape(n, *header.shape))


def _check_header(model, method: str, header: Header, num_words: int) -> None:
    """What only the model knows, checked before decoding: the method, the image size, and the stream
    the image count needs (stored: exactly its words; range coding: at least 32 bits a word for the
    cheapest images; bits-back: the model's number of initial words)."""
    name, n = type(model).__name__, header.count
    if header.method not in (method, "stored"):
        raise CompressedFormatError(f"the stream was coded by {header.method!r}, but {name} decodes {method!r}")
    if header.dtype == TEXT:
        raise header_error("dtype", header.dtype, f"a NumPy dtype: {name} decodes images, not text")
    if math.prod(header.shape) != model.x_dim:
        raise header_error("shape", header.shape, f"{model.x_dim} values per image ({name}'s x_dim)")
    if header.method == "stored":
        bits = value_bits(_cards(model))
        if num_words != stored_words(n, model.x_dim, bits):
            raise header_error("stream_words", num_words, f"{stored_words(n, model.x_dim, bits)} for {n:,} images of "
                                                          f"{model.x_dim} values stored in {bits} bit(s) each")
    elif header.method == "range":
        least = min_bits_per_image(model, header.prob_bits)
        if n * least > 32 * (num_words + 1):
            raise header_error("count", n, f"at most {math.floor(32 * (num_words + 1) / least):,}: the stream's "
                                           f"{num_words} words hold 32 bits each, and an image costs at least "
                                           f"{least:.3g} bits")
    elif n and header.init_words != initial_word_count(model.z_dim, Q_BITS):
        raise header_error("init_words", header.init_words, f"{initial_word_count(model.z_dim, Q_BITS)} for z_dim "
                                                            f"= {model.z_dim}")


def _stored_rows(model, words: np.ndarray, n: int) -> torch.Tensor:
    """The rows (n, D) float64 that :func:`~ppgen.compression.stored.store` wrote; each value a state of its
    column."""
    cards = _cards(model)
    values = load(words, n, model.x_dim, value_bits(cards))
    bad = values >= cards
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise CompressedFormatError(f"corrupt stream: stored value {values[row, col]} of image {row} at flat "
                                    f"position {col} is not one of its {cards[col]} states")
    return torch.from_numpy(values.astype(np.float64))


def _compress_text(model: SequenceModel, x, fallback: bool = True) -> Compressed:
    """:func:`compress` with a sequence model: a text (its rows, :func:`text_rows`, then the code points of its
    characters outside the vocabulary) or rows of ids, range coded; stored plainly, each id in ceil(log2 V)
    bits and each code point in 21, where that is shorter."""
    ids, dtype, escapes = text_ids(model, x)
    count = 1 if dtype == TEXT else len(ids)
    header = Header("text", model_fingerprint(model), tuple(ids.shape[-1:]), count, dtype, PROB_BITS,
                    data_digest=ids_digest(ids, escapes))
    words = encode_rows(float64_copy(model), text_rows(ids, model.x_dim), PROB_BITS, escapes)
    coded = pack(header, words)
    bits = value_bits([model.vocab_size])
    plain = store_text(ids.view(count, -1), escapes, bits)
    if len(words) <= len(plain) or not fallback:
        return Compressed(coded, "text", len(coded))
    what = f"{ids.numel():,} characters" if dtype == TEXT else f"{count:,} rows of {ids.shape[1]:,} ids"
    stored = pack(Header("stored", header.fingerprint, header.shape, count, dtype, 0, data_digest=header.data_digest),
                  plain)
    warnings.warn(f"compress stored {what} plainly, {bits} bit(s) per character, in {len(stored):,} bytes: "
                  f"{type(model).__name__}'s code would take {len(coded):,} (text unlike its training text)",
                  PlainStorageWarning, stacklevel=3)
    return Compressed(stored, "stored", len(coded))


def _decompress_text(model: SequenceModel, header: Header, words: np.ndarray) -> torch.Tensor | str:
    """:func:`decompress` with a sequence model: the text (str) or rows of ids (N, L) int64 of ``header``."""
    check_text_header(model, header, len(words))
    escaped = header.dtype == TEXT
    if header.method == "stored":
        ids, escapes = load_text(words, header.count, header.shape[0], value_bits([model.vocab_size]), escaped)
        if ids.max() >= model.vocab_size:
            raise CompressedFormatError(f"corrupt stream: stored id {int(ids.max())} is not one of the "
                                        f"{model.vocab_size} symbols of {type(model).__name__}")
    else:
        ids = torch.zeros(header.count, header.shape[0], dtype=torch.long)
        try:
            escapes = decode_rows(float64_copy(model), text_rows(ids[0] if escaped else ids, model.x_dim), words,
                                  header.prob_bits, escaped)
        except AssertionError as err:  # constriction: words that no encoder of these probabilities writes
            raise CompressedFormatError(f"corrupt stream: the coded data do not decode under this model ({err})") \
                from None
    if ids_digest(ids, escapes) != header.data_digest:
        raise CompressedFormatError("the decoded data fail the stream's digest: the decoder's probabilities "
                                    "drifted from the encoder's, or the stream is damaged")
    return with_escapes(model.vocabulary, ids[0], escapes) if escaped else ids


@torch.no_grad()
def model_nll_bits(model, x) -> tuple[float, str]:
    """What the model promises for ``x``, in total bits: -log2 p(x) for exact models (a sequence model: of
    the rows :func:`compress` codes, plus ``ESCAPE_BITS`` for each character outside its vocabulary), the
    negative ELBO (100 Monte Carlo samples per image) for VAEs. Returns (bits, "NLL" or "-ELBO")."""
    method = _method(model)
    if method == "text":  # the rows compress codes, each scored in one teacher-forced pass
        ids, _, escapes = text_ids(model, x)
        model64, groups = float64_copy(model), text_rows(ids, model.x_dim)
        nats = sum(-model64.log_prob(rows).sum().item() for group in groups for rows in group.split(64))
        return nats / math.log(2) + len(escapes) * ESCAPE_BITS, "NLL"
    _, rows = _rows(model, x)
    model64 = float64_copy(model)
    if method == "range":
        return float(-model64.log_prob(rows).sum() / math.log(2)), "NLL"
    return float(negative_elbo_bits(model64, rows).sum()), "-ELBO"
