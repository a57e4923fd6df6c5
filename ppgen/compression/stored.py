r"""Plain storage: every value in a fixed number of bits, for data the model would code in more.

A model trained on other data can assign the values of x less probability than chance, and its
code, :math:`-\log_2 p(x)` bits, is then longer than writing the values out. :func:`store` writes
value :math:`v < K` (K the largest cardinality: 2 for binary pixels) as its
:math:`b = \lceil \log_2 K \rceil` bits, least significant first, image after image, padded with
zero bits to whole 32-bit words: :math:`\lceil N D b / 32 \rceil` words for N images of D values.

>>> words = store(np.array([[1, 0, 1], [3, 2, 0]]), 2)
>>> words.tolist(), load(words, 2, 3, 2).tolist()
([721], [[1, 0, 1], [3, 2, 0]])
"""

from __future__ import annotations

import numpy as np

from ppgen.compression.container import CompressedFormatError

__all__ = ["value_bits", "stored_words", "store", "load"]


def value_bits(cards) -> int:
    """Bits per value for states ``0..card - 1`` of every column: at least 1."""
    return max(1, (int(max(cards)) - 1).bit_length())


def stored_words(n: int, dim: int, bits: int) -> int:
    """Words :func:`store` writes for ``n`` images of ``dim`` values at ``bits`` bits each."""
    return -(-n * dim * bits // 32)


def store(values: np.ndarray, bits: int) -> np.ndarray:
    """The values (N, D) (non-negative integers below ``2**bits``) as uint32 words, bit by bit."""
    planes = (values.astype(np.int64)[..., None] >> np.arange(bits)) & 1  # (N, D, bits)
    packed = np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")
    padded = np.zeros(4 * stored_words(*values.shape, bits), dtype=np.uint8)
    padded[:len(packed)] = packed
    return padded.view("<u4").astype(np.uint32)


def load(words: np.ndarray, n: int, dim: int, bits: int) -> np.ndarray:
    """Values (n, dim) int64: the inverse of :func:`store`; the caller has checked the word count."""
    planes = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
    if planes[n * dim * bits:].any():
        raise CompressedFormatError("corrupt stream: the padding after the stored values is not zero")
    planes = planes[:n * dim * bits].reshape(n, dim, bits).astype(np.int64)
    return (planes << np.arange(bits)).sum(-1)
