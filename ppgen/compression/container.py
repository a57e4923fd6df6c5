"""The ``.ppz`` container: a small header, then the entropy coder's stream of 32-bit words.

Layout (all integers little-endian)::

    magic        4 bytes   b"PPGZ"
    version      u8        FORMAT_VERSION
    method       u8        1 = range coding (exact models), 2 = bits-back ANS (latent-variable models),
                           3 = stored: the values plainly, when the model would code them in more bits,
                           4 = text: range coding of characters under a sequence model
    fingerprint  32 bytes  SHA-256 of the model and its vocabulary (:func:`model_fingerprint`)
    ndim         u8        then ndim x u32: the shape of one image (a text: (T,), its T characters)
    count        u64       number of images (rows of ids; 1 for a text)
    dtype        u8 length, then the NumPy dtype string of the data (e.g. "<f4", "|u1"), or "str" for a text
    prob_bits    u8        probabilities are quantised to multiples of 2**-prob_bits
    latent_bits  u8        bits-back: 2**latent_bits prior buckets per latent dimension (0 otherwise)
                           (q(z | x) is coded with integer masses summing to 2**20 in version 1)
    seed         u64       bits-back: seed of the initial random words (0 otherwise)
    init_words   u32       bits-back: number of initial random words (0 otherwise)
    data_digest  8 bytes   first 8 bytes of SHA-256 of the data's values as uint8 (of a text's or rows'
                           ids, the bytes of their little-endian uint32)
    stream_words u64       number of 32-bit words that follow
    stream_crc   u32       CRC-32 of the stream bytes
    header_crc   u32       CRC-32 of everything above
    stream       4 x stream_words bytes

The fingerprint ties a file to one model: decoding with any other model would produce garbage,
so it is refused before any decoding. The CRCs tell a damaged file from a wrong model; the data
digest is checked after decoding, so a decoder that drifted from the encoder (see the precision
notes in :mod:`ppgen.compression`) is reported, never silently returned.

A CRC guards against damage, not against a header crafted with its CRC recomputed, so every field
is also checked against what this version writes before anything is allocated: ``ndim`` in
1..MAX_NDIM and every axis at least 1, ``count`` times the image size at most MAX_VALUES, ``dtype``
one of DTYPES or "str" ("str" for one text, of shape (T,), or "<i8" for method ``text``),
``prob_bits`` in 1..16 and ``latent_bits`` in 1..16 where the method uses them and 0 where it does
not (so are ``seed`` and ``init_words``), no stream for zero images. What only the model knows (the
image size, the initial words, the stream length an image count needs) is checked by
:func:`ppgen.compression.decompress` before it decodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import zlib

import numpy as np
import torch

from ppgen.models.sequence import SequenceModel

__all__ = ["FORMAT_VERSION", "MAGIC", "METHODS", "MAX_NDIM", "MAX_VALUES", "DTYPES", "TEXT", "Header",
           "CompressedFormatError", "model_fingerprint", "data_digest", "pack", "unpack", "check_fields",
           "header_error"]

MAGIC = b"PPGZ"
FORMAT_VERSION = 1
METHODS = {"range": 1, "bbans": 2, "stored": 3, "text": 4}
MAX_NDIM = 31  # axes of one image: with the leading count, NumPy 1's limit of 32
MAX_VALUES = 2**28  # values in one stream (2 GiB as the decoder's float64 rows)
DTYPES = frozenset(np.dtype(code).newbyteorder("<").str for code in "?bhilqBHILQefd")  # "|b1", "<i8", "<f4", ...
TEXT = "str"  # the dtype field of a text, which decompress gives back as a str
_FIXED = struct.Struct("<4sBB32s")


class CompressedFormatError(ValueError):
    """A ``.ppz`` stream that cannot be decoded: not one, damaged, too new, or from another model."""


@dataclasses.dataclass(frozen=True)
class Header:
    method: str
    fingerprint: bytes
    shape: tuple[int, ...]
    count: int
    dtype: str
    prob_bits: int
    latent_bits: int = 0
    seed: int = 0
    init_words: int = 0
    data_digest: bytes = b"\0" * 8


def model_fingerprint(model: torch.nn.Module) -> bytes:
    """SHA-256 of a model's class, configuration (``extra_repr``) and ``state_dict``, and of a sequence
    model's vocabulary (the characters its ids stand for).

    Two models that code differently get different fingerprints; a model reloaded from its run
    folder gets the same one as the model that was saved.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model.extra_repr()}\n".encode())
    if isinstance(model, SequenceModel) and model.vocabulary is not None:
        h.update(f"vocabulary:{model.vocabulary.characters}\n".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.digest()


def data_digest(values: np.ndarray) -> bytes:
    """First 8 bytes of the SHA-256 of the data's values (as uint8, C order)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.uint8).tobytes()).digest()[:8]


def pack(header: Header, words: np.ndarray) -> bytes:
    """The file: header, then ``words`` (uint32) little-endian."""
    stream = np.asarray(words, dtype="<u4").tobytes()
    dtype = header.dtype.encode()
    head = (_FIXED.pack(MAGIC, FORMAT_VERSION, METHODS[header.method], header.fingerprint)
            + struct.pack(f"<B{len(header.shape)}I", len(header.shape), *header.shape)
            + struct.pack("<QB", header.count, len(dtype)) + dtype
            + struct.pack("<BBQI", header.prob_bits, header.latent_bits, header.seed, header.init_words)
            + header.data_digest + struct.pack("<QI", len(stream) // 4, zlib.crc32(stream)))
    return head + struct.pack("<I", zlib.crc32(head)) + stream


def unpack(data: bytes, fingerprint: bytes | None = None) -> tuple[Header, np.ndarray]:
    """Header and stream words of a file, or a :class:`CompressedFormatError` saying what is wrong.

    Checks, in order: magic number, format version and method, header length and CRC, model
    fingerprint (when given), stream length (truncation), stream CRC, then every field's range
    (:func:`check_fields`).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:4] != MAGIC:
        raise CompressedFormatError(f"not a ppgen compressed stream: it starts with {data[:4]!r}, "
                                    f"expected the magic number {MAGIC!r}")
    if len(data) < _FIXED.size:
        raise CompressedFormatError(f"truncated stream: {len(data)} bytes end inside the header")
    _, version, method, model_hash = _FIXED.unpack_from(data)
    if version > FORMAT_VERSION:
        raise CompressedFormatError(f"format version {version} is from a newer ppgen; this one reads versions "
                                    f"up to {FORMAT_VERSION}")
    names = {v: k for k, v in METHODS.items()}
    if version < 1 or method not in names:
        raise CompressedFormatError(f"corrupt header: version {version}, method {method} (expected version 1.."
                                    f"{FORMAT_VERSION}, method one of {names})")
    try:
        pos = _FIXED.size
        (ndim,) = struct.unpack_from("<B", data, pos)
        shape = struct.unpack_from(f"<{ndim}I", data, pos + 1)
        pos += 1 + 4 * ndim
        count, dtype_len = struct.unpack_from("<QB", data, pos)
        pos += 9
        dtype = data[pos:pos + dtype_len]
        pos += dtype_len
        prob_bits, latent_bits, seed, init_words = struct.unpack_from("<BBQI", data, pos)
        pos += 14
        digest = data[pos:pos + 8]
        num_words, stream_crc = struct.unpack_from("<QI", data, pos + 8)
        pos += 20
        (header_crc,) = struct.unpack_from("<I", data, pos)
    except struct.error:
        raise CompressedFormatError(f"truncated stream: {len(data)} bytes end inside the header") from None
    if zlib.crc32(data[:pos]) != header_crc:
        raise CompressedFormatError("corrupt header: its CRC-32 does not match")
    if fingerprint is not None and model_hash != fingerprint:
        raise CompressedFormatError(f"the stream was compressed with a different model (fingerprint "
                                    f"{model_hash.hex()[:16]}..., this model is {fingerprint.hex()[:16]}...); "
                                    "decode it with the model that encoded it")
    stream = data[pos + 4:]
    if len(stream) < 4 * num_words:
        raise CompressedFormatError(f"truncated stream: the header announces {4 * num_words} bytes of coded "
                                    f"data, {len(stream)} are present")
    if len(stream) > 4 * num_words:
        raise CompressedFormatError(f"{len(stream) - 4 * num_words} unexpected bytes after the coded data")
    if zlib.crc32(stream) != stream_crc:
        raise CompressedFormatError("corrupt stream: the CRC-32 of the coded data does not match its header")
    dtype = dtype.decode("ascii", "backslashreplace")  # a non-ASCII name shows as escapes and fails the allow-list
    header = Header(names[method], model_hash, tuple(shape), count, dtype, prob_bits, latent_bits, seed, init_words,
                    digest)
    check_fields(header, num_words)
    return header, np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def header_error(field: str, value, expected: str) -> CompressedFormatError:
    """The error for a header field out of its range: ``corrupt header: count is 2, expected ...``."""
    return CompressedFormatError(f"corrupt header: {field} is {value!r}, expected {expected}")


def check_fields(header: Header, num_words: int) -> None:
    """Every field against what this version writes (see the module docstring), before anything is
    allocated; a :class:`CompressedFormatError` naming the field, its value and what was expected."""
    if not 1 <= len(header.shape) <= MAX_NDIM:
        raise header_error("ndim (the axes of one image)", len(header.shape), f"1..{MAX_NDIM}")
    size = math.prod(header.shape)
    if min(header.shape) < 1 or size > MAX_VALUES:
        raise header_error("shape", header.shape, f"axes of at least 1, at most {MAX_VALUES:,} values in all")
    if header.count > MAX_VALUES // size:
        raise header_error("count", header.count, f"at most {MAX_VALUES // size:,} images of shape "
                                                  f"{header.shape} (MAX_VALUES = {MAX_VALUES:,} values in one stream)")
    if header.dtype not in DTYPES | {TEXT}:
        raise header_error("dtype", header.dtype, f"one of {sorted(DTYPES | {TEXT})}")
    if header.method == "text" and header.dtype not in (TEXT, "<i8"):
        raise header_error("dtype", header.dtype, f"{TEXT!r} (a text) or '<i8' (rows of ids) for method 'text'")
    if header.dtype == TEXT and (header.count, len(header.shape)) != (1, 1):
        raise header_error("(count, shape)", (header.count, header.shape), "(1, (T,)): one text of T characters")
    ranges = {"range": {"prob_bits": (1, 16)}, "text": {"prob_bits": (1, 16)},
              "bbans": {"prob_bits": (1, 16), "latent_bits": (1, 16), "seed": (0, 2**64 - 1),
                        "init_words": (1, 2**32 - 1) if header.count else (0, 0)},  # checked against the model later
              "stored": {}}[header.method]
    values = {"prob_bits": header.prob_bits, "latent_bits": header.latent_bits, "seed": header.seed,
              "init_words": header.init_words}
    for field, value in values.items():
        low, high = ranges.get(field, (0, 0))
        if not low <= value <= high:
            raise header_error(field, value, (f"{low}..{high}" if high else "0") + f" for method {header.method!r}"
                               + ("" if header.count else " and no images"))
    if not header.count and num_words:
        raise header_error("stream_words", num_words, "0 for a stream of no images")
