"""The ``.ppz`` container: a small header, then the entropy coder's stream of 32-bit words.

Layout (all integers little-endian)::

    magic        4 bytes   b"PPGZ"
    version      u8        FORMAT_VERSION
    method       u8        1 = range coding (exact models), 2 = bits-back ANS (latent-variable models)
    fingerprint  32 bytes  SHA-256 of the model (:func:`model_fingerprint`)
    ndim         u8        then ndim x u32: the shape of one image
    count        u64       number of images
    dtype        u8 length, then the NumPy dtype string of the data (e.g. "<f4", "|u1")
    prob_bits    u8        probabilities are quantised to multiples of 2**-prob_bits
    latent_bits  u8        bits-back: 2**latent_bits prior buckets per latent dimension (0 otherwise)
                           (q(z | x) is coded with integer masses summing to 2**20 in version 1)
    seed         u64       bits-back: seed of the initial random words (0 otherwise)
    init_words   u32       bits-back: number of initial random words (0 otherwise)
    data_digest  8 bytes   first 8 bytes of SHA-256 of the data's values as uint8
    stream_words u64       number of 32-bit words that follow
    stream_crc   u32       CRC-32 of the stream bytes
    header_crc   u32       CRC-32 of everything above
    stream       4 x stream_words bytes

The fingerprint ties a file to one model: decoding with any other model would produce garbage,
so it is refused before any decoding. The CRCs tell a damaged file from a wrong model; the data
digest is checked after decoding, so a decoder that drifted from the encoder (see the precision
notes in :mod:`ppgen.compression`) is reported, never silently returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

import numpy as np
import torch

__all__ = ["FORMAT_VERSION", "MAGIC", "Header", "CompressedFormatError", "model_fingerprint", "data_digest",
           "pack", "unpack"]

MAGIC = b"PPGZ"
FORMAT_VERSION = 1
METHODS = {"range": 1, "bbans": 2}
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
    """SHA-256 of a model's class, configuration (``extra_repr``) and ``state_dict``.

    Two models that code differently get different fingerprints; a model reloaded from its run
    folder gets the same one as the model that was saved.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model.extra_repr()}\n".encode())
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

    Checks, in order: magic number, format version, header length and CRC, model fingerprint
    (when given), stream length (truncation) and stream CRC.
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
    if version < 1 or method not in METHODS.values():
        raise CompressedFormatError(f"corrupt header: version {version}, method {method}")
    try:
        pos = _FIXED.size
        (ndim,) = struct.unpack_from("<B", data, pos)
        shape = struct.unpack_from(f"<{ndim}I", data, pos + 1)
        pos += 1 + 4 * ndim
        count, dtype_len = struct.unpack_from("<QB", data, pos)
        pos += 9
        dtype = data[pos:pos + dtype_len].decode("ascii")
        pos += dtype_len
        prob_bits, latent_bits, seed, init_words = struct.unpack_from("<BBQI", data, pos)
        pos += 14
        digest = data[pos:pos + 8]
        num_words, stream_crc = struct.unpack_from("<QI", data, pos + 8)
        pos += 20
        (header_crc,) = struct.unpack_from("<I", data, pos)
    except (struct.error, UnicodeDecodeError):
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
    name = {v: k for k, v in METHODS.items()}[method]
    header = Header(name, model_hash, tuple(shape), count, dtype, prob_bits, latent_bits, seed, init_words, digest)
    return header, np.frombuffer(stream, dtype="<u4").astype(np.uint32)
