"""Merging streamed parts into one model Content."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.wire import ContentMerger, ImageDelta, TextDelta
from sessions import Blob, Content, Part, decode_part


def _text(text: str, *, thought: bool = False, sig: bytes | None = None) -> Part:
    return Part(text=text, thought=True if thought else None, thought_signature=sig)


def _image(data: bytes, *, sig: bytes | None = None, thought: bool = False) -> Part:
    return Part(
        inline_data=Blob(mime_type="image/png", data=data),
        thought_signature=sig,
        thought=True if thought else None,
    )


def _merge(*chunks: list[Part]) -> Content:
    merger = ContentMerger()
    for chunk in chunks:
        merger.add(chunk)
    return merger.content()


def test_consecutive_text_pieces_become_one_part() -> None:
    """Pieces of the same kind of text are concatenated into one part, role model."""
    content = _merge([_text("Here ")], [_text("is "), _text("the image.")])
    assert content == Content(role="model", parts=[_text("Here is the image.")])


def test_thought_and_answer_text_stay_apart() -> None:
    """A change of thought flag starts a new part."""
    content = _merge(
        [_text("think", thought=True)],
        [_text("ing", thought=True), _text("Answer")],
        [_text(" text")],
    )
    assert content.parts == [_text("thinking", thought=True), _text("Answer text")]


def test_signature_on_first_piece_stays_on_the_merged_part() -> None:
    """A signature arriving with the first piece survives the later pieces."""
    content = _merge([_text("Hel", sig=b"s1")], [_text("lo")])
    assert content.parts == [_text("Hello", sig=b"s1")]


def test_signature_on_trailing_empty_piece_attaches_to_the_text() -> None:
    """`{"text": "", "thoughtSignature": ...}` at the end signs the text before it."""
    trailing = decode_part(b'{"text": "", "thoughtSignature": "c2lnbg=="}')
    content = _merge([_text("Hel")], [_text("lo")], [trailing])
    assert content.parts == [_text("Hello", sig=b"sign")]


def test_a_different_signature_starts_a_new_part() -> None:
    """Two signatures are never folded into one part."""
    content = _merge([_text("one", sig=b"a")], [_text("two", sig=b"b")], [_text("!")])
    assert content.parts == [_text("one", sig=b"a"), _text("two!", sig=b"b")]


def test_the_same_signature_repeated_does_not_split() -> None:
    """A piece repeating the part's own signature just continues it."""
    content = _merge([_text("one", sig=b"a")], [_text("", sig=b"a")])
    assert content.parts == [_text("one", sig=b"a")]


def test_images_are_parts_of_their_own_with_their_signatures() -> None:
    """Each image is its own part; text around it is not merged across it."""
    content = _merge(
        [_text("a")],
        [_image(b"img1", sig=b"s1")],
        [_image(b"img2", sig=b"s2")],
        [_text("b")],
        [_text("c")],
    )
    assert content.parts == [
        _text("a"),
        _image(b"img1", sig=b"s1"),
        _image(b"img2", sig=b"s2"),
        _text("bc"),
    ]


def test_unmodelled_and_function_parts_are_kept_verbatim() -> None:
    """Parts with unknown fields or function calls are their own parts, unchanged."""
    unknown = decode_part(b'{"text": "x", "partMetadata": {"k": [1, 2]}}')
    call = Part(function_call={"name": "f", "args": {}})
    content = _merge([_text("a")], [unknown], [_text("b")], [call], [_text("c")])
    assert content.parts == [_text("a"), unknown, _text("b"), call, _text("c")]
    assert content.parts[1].extra == {"partMetadata": msgspec.Raw(b'{"k": [1, 2]}')}


def test_deltas_report_text_pieces_and_whole_images() -> None:
    """add() returns a TextDelta per non-empty piece and an ImageDelta per image."""
    merger = ContentMerger()
    image = _image(b"png", sig=b"s")
    assert merger.add([_text("th", thought=True), _text("Hi")]) == [
        TextDelta("th", True),
        TextDelta("Hi", False),
    ]
    assert merger.add([_text("", sig=b"z"), image]) == [ImageDelta(image)]
    assert merger.add([Part(function_call={"name": "f"})]) == []


def test_content_can_be_read_while_merging() -> None:
    """content() is a snapshot; later pieces do not change an earlier snapshot."""
    merger = ContentMerger()
    assert merger.empty
    merger.add([_text("a")])
    first = merger.content()
    merger.add([_text("b")])
    assert not merger.empty
    assert first.parts == [_text("a")]
    assert merger.content().parts == [_text("ab")]


# --- property: merging a split answer gives the answer back ------------------------------------


@dataclass
class _Spec:
    part: Part
    sig_first: bool  # for text: signature on the first piece (else on a trailing empty piece)


_sig = st.binary(min_size=1, max_size=12)
_text_spec = st.builds(
    lambda text, thought, sig, first: _Spec(_text(text, thought=thought, sig=sig), first),
    st.text(min_size=1, max_size=30),
    st.booleans(),
    st.none() | _sig,
    st.booleans(),
)
_image_spec = st.builds(
    lambda data, sig, thought: _Spec(_image(data, sig=sig, thought=thought), True),
    st.binary(min_size=1, max_size=20),
    st.none() | _sig,
    st.booleans(),
)
_other_spec = st.builds(
    lambda name: _Spec(Part(function_call={"name": name}), True), st.text(max_size=5)
)


def _canonical(specs: list[_Spec]) -> list[_Spec]:
    """What a server's non-streamed answer looks like: two adjacent text parts of one kind
    exist only because each has its own signature, the second's arriving with its first piece."""
    counter = 0
    for prev, cur in itertools.pairwise(specs):
        p, c = prev.part, cur.part
        if p.text is not None and c.text is not None and bool(p.thought) == bool(c.thought):
            counter += 1
            if p.thought_signature is None:
                p.thought_signature = b"prev-%d" % counter
            c.thought_signature = b"cur-%d" % counter
            cur.sig_first = True
    return specs


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(st.one_of(_text_spec, _image_spec, _other_spec), max_size=8), data=st.data())
def test_merging_streamed_pieces_restores_the_non_streamed_content(
    specs: list[_Spec], data: st.DataObject
) -> None:
    """However text is split into pieces and pieces into chunks, the merge equals the original."""
    specs = _canonical(specs)
    original = Content(role="model", parts=[s.part for s in specs])
    pieces: list[Part] = []
    for spec in specs:
        part = spec.part
        if part.text is None:
            pieces.append(part)
            continue
        text = part.text
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
        bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
        texts = [text[a:b] for a, b in itertools.pairwise(bounds)]
        sig = part.thought_signature
        for i, piece in enumerate(texts):
            first_sig = sig if (i == 0 and spec.sig_first) else None
            pieces.append(Part(text=piece, thought=part.thought, thought_signature=first_sig))
        if sig is not None and not spec.sig_first:
            pieces.append(Part(text="", thought=part.thought, thought_signature=sig))
    splits = sorted(data.draw(st.sets(st.integers(0, len(pieces)), max_size=6)))
    bounds = [0, *splits, len(pieces)]
    chunks = [pieces[a:b] for a, b in itertools.pairwise(bounds)]
    merger = ContentMerger()
    streamed = "".join(
        d.text for chunk in chunks for d in merger.add(chunk) if isinstance(d, TextDelta)
    )
    assert merger.content() == original
    assert streamed == "".join(p.text or "" for p in original.parts)


def test_empty_unsigned_closing_piece_adds_no_part() -> None:
    """The closing chunk's empty text piece after an image does not become a part."""
    merger = ContentMerger()
    image = Part(inline_data=Blob(mime_type="image/png", data=b"png"), thought_signature=b"s")
    merger.add([Part(text="Here it is.", thought_signature=b"t")])
    merger.add([image])
    assert merger.add([Part(text="")]) == []
    assert merger.content().parts == [Part(text="Here it is.", thought_signature=b"t"), image]
