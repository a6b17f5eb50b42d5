"""Values computed once per object (a Content, a model spec).

A session's history Contents are immutable and the same objects turn after turn, so what a turn
derives from each of them (its JSON around the images, its encoded size, its token estimate) can
be kept until the Content itself is gone. Entries hold their object weakly: the memo never keeps
a session's images alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Memo"]

K = TypeVar("K")
T = TypeVar("T")


class _Entry(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to the object that also carries its key and kept value.

    One object per entry: a closure per entry for the callback, its cell and a (ref, value)
    tuple made four objects the cyclic collector tracked, about 28 per turn of a session that
    lives on; the collector's passes over them were a tenth of a small turn's CPU.
    """

    __slots__ = ("key", "value")
    key: int
    value: Any

    def __new__(cls, obj: Any, callback: Callable[[Any], None], key: int, value: Any) -> _Entry:
        self = super().__new__(cls, obj, callback)
        self.key = key
        self.value = value
        return self

    def __init__(self, obj: Any, callback: Callable[[Any], None], key: int, value: Any) -> None:
        super().__init__(obj, callback)  # type: ignore[call-arg]


class Memo(Generic[K, T]):
    """`memo.get(obj, compute)`: `compute(obj)` the first time, the kept value while `obj`
    lives. Keyed by identity (the objects are immutable; msgspec structs are not hashable)."""

    __slots__ = ("__weakref__", "_drop", "_values")

    def __init__(self) -> None:
        values: dict[int, _Entry] = {}
        self._values = values

        def drop(entry: _Entry) -> None:
            # Runs when the object is freed (before its id can be reused); the entry may have
            # been replaced by then.
            if values.get(entry.key) is entry:
                del values[entry.key]

        self._drop = drop

    def __len__(self) -> int:
        return len(self._values)

    def get(self, obj: K, compute: Callable[[K], T]) -> T:
        """The value for `obj`, computed on first use."""
        entry = self._values.get(id(obj))
        if entry is not None and entry() is obj:
            value: T = entry.value
            return value
        value = compute(obj)
        self.put(obj, value)
        return value

    def put(self, obj: K, value: T) -> None:
        """Keep `value` for `obj` (replacing what was kept)."""
        key = id(obj)
        self._values[key] = _Entry(obj, self._drop, key, value)
