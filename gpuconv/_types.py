"""Type aliases of the public API (for annotations; nothing here is checked at run time)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

ArrayLike = Any
"""An array argument: a numpy or cupy array, a torch tensor, a JAX array, any object with ``__dlpack__``,
``__cuda_array_interface__`` or ``__array__``, or nested lists."""

Array = Any
"""A result: an array of the kind of the caller's first array (numpy, cupy, torch, JAX)."""

IntPair = Union[int, tuple[int, int]]
"""An int, or a pair of ints for the height and width axes."""

Padding = Union[str, int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]
"""'valid', 'same', 'full', an int, (ph, pw) or ((top, bottom), (left, right))."""

Shape = Sequence[int]
