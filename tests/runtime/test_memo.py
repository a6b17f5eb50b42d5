"""engine._memo: values kept per object while it lives, and what they cost the collector."""

from __future__ import annotations

import gc

from engine._memo import Memo
from sessions import Content, Part


def test_a_value_is_computed_once_and_dropped_with_its_object() -> None:
    """compute runs on first use only; freeing the object frees the entry (no id reuse hit)."""
    memo: Memo[Content, int] = Memo()
    calls: list[int] = []
    contents = [Content(role="user", parts=[Part(text=str(i))]) for i in range(50)]

    def compute(c: Content) -> int:
        calls.append(1)
        return len(c.parts[0].text or "")

    assert [memo.get(c, compute) for c in contents] == [memo.get(c, compute) for c in contents]
    assert len(calls) == 50 and len(memo) == 50
    del contents
    gc.collect()
    assert len(memo) == 0
    # A new object at a reused address gets its own value, never a dead object's.
    fresh = Content(role="user", parts=[Part(text="abcdef")])
    assert memo.get(fresh, compute) == 6


def test_put_replaces_and_a_replaced_entry_does_not_drop_the_new_one() -> None:
    """The callback of a replaced entry leaves the entry that replaced it in place."""
    memo: Memo[Content, str] = Memo()
    content = Content(role="model")
    memo.put(content, "a")
    memo.put(content, "b")
    gc.collect()
    assert memo.get(content, lambda c: "c") == "b"
    del content
    gc.collect()
    assert len(memo) == 0


def test_an_entry_adds_one_object_for_the_collector() -> None:
    """Each kept value costs the cyclic collector one tracked object (the weak reference that
    carries it); a closure, its cell and a tuple per entry made it four."""
    memo: Memo[Content, int] = Memo()
    contents = [Content(role="user") for _ in range(1000)]
    gc.collect()
    before = len(gc.get_objects())
    for c in contents:
        memo.put(c, 1)
    assert len(gc.get_objects()) - before <= 1000 + 10
