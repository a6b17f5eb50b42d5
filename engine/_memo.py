"""Values computed once per object (a Content, a model spec).

A session's history Contents are immutable and the same objects turn after turn, so what a turn
derives from each of them (its JSON around the images, its encoded size, its token estimate) can
be kept until the Content itself is gone. Entries hold their object weakly: the memo never keeps
a session's images alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
T = TypeVar("T")


class Memo(Generic[K, T]):
    """`memo.get(obj, compute)`: `compute(obj)` the first time, the kept value while `obj`
    lives. Keyed by identity (the objects are immutable; msgspec structs are not hashable)."""

    __slots__ = ("__weakref__", "_values")

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref[K], T]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def get(self, obj: K, compute: Callable[[K], T]) -> T:
        """The value for `obj`, computed on first use."""
        key = id(obj)
        hit = self._values.get(key)
        if hit is not None and hit[0]() is obj:
            return hit[1]
        value = compute(obj)
        self.put(obj, value)
        return value

    def put(self, obj: K, value: T) -> None:
        """Keep `value` for `obj` (replacing what was kept)."""
        key = id(obj)
        memo = weakref.ref(self)

        def drop(_ref: object, key: int = key) -> None:
            # Runs when the object is freed (before its id can be reused).
            owner = memo()
            if owner is not None:
                owner._values.pop(key, None)

        self._values[key] = (weakref.ref(obj, drop), value)
