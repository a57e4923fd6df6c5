"""Argument checks shared by every layer of ppgen, in one place.

Each returns the checked value or raises an error that names the argument, what was expected and
what was given (``ValueError``; ``TypeError`` for a seed that is not an int). The lowest layer:
it imports nothing of ppgen, so data sets, models, inference and the CLI all use it.

Examples
--------
>>> positive_int(3, "hidden")
3
>>> integer(1, "num_levels", minimum=2)
Traceback (most recent call last):
    ...
ValueError: num_levels must be an int >= 2, got 1
>>> image_shape_of(784), image_shape_of(2352), image_shape_of(12, (3, 2, 2))
((1, 28, 28), (3, 28, 28), (3, 2, 2))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["integer", "positive_int", "non_negative_int", "positive_number", "non_negative_number", "seed",
           "image_shape", "image_shape_of", "describe"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected(minimum: int | None) -> str:
    return {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")


def integer(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in [minimum, maximum], else ValueError."""
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        expected = _expected(minimum) if maximum is None else f"an int in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def positive_int(value, name: str) -> int:
    """``value`` if it is an int >= 1 (a count: rows, units, steps, samples)."""
    return integer(value, name, minimum=1)


def non_negative_int(value, name: str) -> int:
    """``value`` if it is an int >= 0."""
    return integer(value, name, minimum=0)


def _number(value, name: str, zero_allowed: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if zero_allowed else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if zero_allowed else 'positive'} number, got {value!r}")
    return float(value)


def positive_number(value, name: str) -> float:
    """``value`` as a float if it is a finite number > 0 (a rate, a scale, a temperature)."""
    return _number(value, name, zero_allowed=False)


def non_negative_number(value, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0 (a penalty, a noise level)."""
    return _number(value, name, zero_allowed=True)


def seed(value, name: str = "seed") -> int:
    """``value`` if it is an int (any sign, as ``torch.manual_seed`` takes), else TypeError."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def describe(value) -> str:
    """What ``value`` is, for the "got ..." of an error: its type, with the dtype of an array or tensor.

    >>> import numpy as np
    >>> describe(True), describe(np.zeros(2, dtype=bool))
    ('a bool', 'a numpy.ndarray of bool')
    """
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    return f"a {name}" + (f" of {value.dtype}" if hasattr(value, "dtype") else "")


def image_shape(shape, name: str = "shape", *, x_dim: int | None = None, min_channels: int = 1) -> tuple[int, int, int]:
    """``shape`` as (channels, height, width): three positive ints, at least ``min_channels`` channels, and
    C*H*W = ``x_dim`` when given."""
    if not (isinstance(shape, Sequence) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)) or (
            x_dim is not None and math.prod(shape) != x_dim):
        needs = f" with C*H*W = x_dim = {x_dim}" if x_dim is not None else ""
        raise ValueError(f"{name} must be three positive ints (C, H, W){needs}, got {shape!r}")
    if shape[0] < min_channels:
        raise ValueError(f"{name} must have at least {min_channels} channels, got {tuple(shape)}")
    return tuple(shape)


def image_shape_of(x_dim: int, shape=None) -> tuple[int, int, int]:
    """The (C, H, W) of an image model's rows of ``x_dim`` values: ``shape`` checked against ``x_dim``, or
    by default square images, grey (C = 1) or colour (C = 3): 784 -> (1, 28, 28), 2352 -> (3, 28, 28)."""
    if shape is not None:
        return image_shape(shape, x_dim=x_dim)
    positive_int(x_dim, "x_dim")
    for channels in (1, 3):
        side = math.isqrt(x_dim // channels)
        if x_dim % channels == 0 and side * side * channels == x_dim:
            return channels, side, side
    raise ValueError(f"rows of width {x_dim} are not square grey or colour images (C * H * H with C = 1 or 3): "
                     "give shape=(C, H, W)")
