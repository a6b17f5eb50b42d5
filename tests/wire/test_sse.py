"""Tests for engine.wire._sse: WHATWG event-stream parsing, chunking independence, size limits."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.wire._sse import (
    DEFAULT_MAX_EVENT_BYTES,
    EventTooLarge,
    RawServerSentEvent,
    RawSSEDecoder,
    SSEError,
)
from tests.wire._text_sse import ServerSentEvent, SSEDecoder

BOM = b"\xef\xbb\xbf"


def feed_all(decoder: SSEDecoder, pieces: Iterable[bytes]) -> list[ServerSentEvent]:
    """Feed every piece, then close, and return all events in order."""
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


def feed_all_raw(decoder: RawSSEDecoder, pieces: Iterable[bytes]) -> list[RawServerSentEvent]:
    """Feed every piece to a raw decoder, then close it; collect all events."""
    events: list[RawServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


def decode(stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[ServerSentEvent]:
    """Decode a whole stream in one feed."""
    return feed_all(SSEDecoder(max_event_bytes), [stream])


def split_at(stream: bytes, points: Iterable[int]) -> list[bytes]:
    """Cut ``stream`` at the given offsets (duplicates give empty pieces)."""
    cuts = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(cuts)]


def datas(events: Sequence[ServerSentEvent]) -> list[str]:
    """Return just the data of each event."""
    return [e.data for e in events]


# --- line endings -------------------------------------------------------------------------


def test_lf_line_endings() -> None:
    """LF ends lines and an empty LF line dispatches."""
    assert datas(decode(b"data: a\n\ndata: b\n\n")) == ["a", "b"]


def test_cr_line_endings() -> None:
    """A lone CR ends a line, so CR CR is a line followed by a blank line."""
    assert datas(decode(b"data: a\r\rdata: b\r\r")) == ["a", "b"]


def test_crlf_line_endings() -> None:
    """CRLF is a single line end, not a line end plus an empty line."""
    assert datas(decode(b"data: a\r\ndata: b\r\n\r\n")) == ["a\nb"]


def test_mixed_line_endings() -> None:
    """CR, LF and CRLF may be mixed within one stream."""
    stream = b"data: a\rdata: b\ndata: c\r\n\ndata: d\n\r\n\r"
    assert datas(decode(stream)) == ["a\nb\nc", "d"]


def test_lf_cr_is_two_line_ends() -> None:
    """LF followed by CR is two line ends (only CR then LF pairs up)."""
    assert datas(decode(b"data: a\n\rdata: b\n\n")) == ["a", "b"]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    """A CR ending one feed and an LF opening the next form one CRLF, not an empty line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert datas(decoder.feed(b"\n\r")) == ["a\nb"]
    assert decoder.feed(b"\n") == []
    assert datas(decoder.feed(b"data: c\n\n")) == ["c"]


def test_crlf_split_across_feeds_on_blank_line() -> None:
    """A blank line whose CRLF straddles two feeds dispatches exactly once."""
    decoder = SSEDecoder()
    events = decoder.feed(b"data: a\r\n\r")
    assert datas(events) == ["a"]
    assert decoder.feed(b"\n") == []
    assert datas(decoder.feed(b"data: b\r\n\r\n")) == ["b"]


def test_trailing_cr_survives_empty_feed() -> None:
    """An empty feed between the CR and LF of a CRLF does not break the pair."""
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert datas(decoder.feed(b"\n")) == ["a"]


def test_trailing_cr_followed_by_cr_in_next_feed() -> None:
    """A CR ending a feed and a CR opening the next are two line ends."""
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    assert datas(decoder.feed(b"\rdata: b\r\r")) == ["a", "b"]


def test_unicode_line_separators_do_not_end_lines() -> None:
    """Only CR and LF end lines; U+2028, U+0085, VT and FF are ordinary characters."""
    text = "a\u2028b\x85c\x0bd\x0ce\x1cf"
    assert datas(decode(b"data: " + text.encode() + b"\n\n")) == [text]


# --- byte order mark ----------------------------------------------------------------------


def test_leading_bom_stripped() -> None:
    """One UTF-8 BOM at the very start of the stream is ignored."""
    assert datas(decode(BOM + b"data: x\n\n")) == ["x"]


def test_bom_split_across_feeds_stripped() -> None:
    """A leading BOM delivered one byte per feed is still recognised and ignored."""
    decoder = SSEDecoder()
    assert datas(feed_all(decoder, [b"\xef", b"\xbb", b"\xbf", b"data: x\n\n"])) == ["x"]


def test_only_one_bom_stripped() -> None:
    """A second BOM is part of the first line, making its field name unknown."""
    assert decode(BOM + BOM + b"data: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_bom_not_stripped_mid_stream() -> None:
    """A BOM after the start of the stream is kept as a character of the line."""
    decoder = SSEDecoder()
    events = feed_all(decoder, [b"data: a\n\n", BOM + b"data: b\n\n", b"data: c\n\n"])
    assert datas(events) == ["a", "c"]


def test_short_first_feed_that_is_not_a_bom() -> None:
    """A first feed shorter than a BOM that does not start one is decoded normally."""
    assert datas(feed_all(SSEDecoder(), [b"d", b"ata: x\n\n"])) == ["x"]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    """Held-back bytes that turn out not to be a BOM are decoded (here as U+FFFD)."""
    events = feed_all(SSEDecoder(), [b"\xef\xbb", b"\n\ndata: x\n\n"])
    assert datas(events) == ["x"]


# --- fields -------------------------------------------------------------------------------


def test_comment_lines_ignored() -> None:
    """Lines starting with a colon are comments and never affect the event."""
    stream = b": hello\ndata: x\n:data: y\n\n: only a comment\n\n"
    assert decode(stream) == [ServerSentEvent(data="x")]


def test_multiline_data_joined_with_lf() -> None:
    """Several data lines are joined with LF, and only the final LF is removed."""
    assert datas(decode(b"data: a\ndata: b\ndata:\n\n")) == ["a\nb\n"]


def test_empty_data_line_dispatches_empty_string() -> None:
    """A lone empty data line still dispatches an event, with empty data."""
    assert decode(b"data:\n\n") == [ServerSentEvent(data="")]


def test_field_without_colon_has_empty_value() -> None:
    """A line with no colon is a field name with an empty value."""
    assert decode(b"data\n\n") == [ServerSentEvent(data="")]
    assert decode(b"event: x\nevent\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_exactly_one_leading_space_stripped() -> None:
    """Only one space after the colon is removed; other whitespace is kept."""
    stream = b"data:  two\n\ndata:none\n\ndata:\tx\n\ndata: \n\n"
    assert datas(decode(stream)) == [" two", "none", "\tx", ""]


def test_value_may_contain_colons() -> None:
    """Only the first colon separates field name and value."""
    assert decode(b"event: a:b\ndata: c: d\n\n") == [ServerSentEvent(event="a:b", data="c: d")]


def test_unknown_fields_ignored() -> None:
    """Unknown and differently-cased field names are ignored."""
    stream = b"foo: bar\nDATA: no\nData: no\ndata : no\ndata: yes\n\n"
    assert decode(stream) == [ServerSentEvent(data="yes")]


def test_id_with_nul_ignored() -> None:
    """An id value containing NUL is ignored and does not change the last event ID."""
    decoder = SSEDecoder()
    events = feed_all(decoder, [b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"])
    assert events == [
        ServerSentEvent(data="a", id="1", last_event_id="1"),
        ServerSentEvent(data="b", id=None, last_event_id="1"),
    ]
    assert decoder.last_event_id == "1"


@pytest.mark.parametrize(
    "value",
    [b"10a", b"-5", b"+5", b"  5", b"5 ", b"1.5", b"", b"\xd9\xa3", b"0x10"],
)
def test_invalid_retry_ignored(value: bytes) -> None:
    """A retry value that is not only ASCII digits (or is empty) is ignored."""
    decoder = SSEDecoder()
    events = feed_all(decoder, [b"retry:" + value + b"\ndata: x\n\n"])
    assert events == [ServerSentEvent(data="x", retry=None)]
    assert decoder.retry is None


def test_absurdly_long_retry_ignored() -> None:
    """A retry too long for int() is ignored rather than raising."""
    decoder = SSEDecoder()
    events = feed_all(decoder, [b"retry: " + b"9" * 5000 + b"\ndata: x\n\n"])
    assert events == [ServerSentEvent(data="x")]
    assert decoder.retry is None


def test_valid_retry_sets_attribute_and_event_field() -> None:
    """A valid retry updates decoder.retry and is reported only on its own event."""
    decoder = SSEDecoder()
    events = feed_all(decoder, [b"retry: 3000\ndata: a\n\ndata: b\n\nretry: 0050\n\n"])
    assert events == [ServerSentEvent(data="a", retry=3000), ServerSentEvent(data="b")]
    assert decoder.retry == 50


def test_empty_event_name_becomes_message() -> None:
    """An unset or empty event type dispatches as "message"; a set one is kept."""
    stream = b"event:\ndata: a\n\nevent: custom\ndata: b\n\ndata: c\n\n"
    assert [e.event for e in decode(stream)] == ["message", "custom", "message"]


def test_blank_line_without_data_resets_event_type() -> None:
    """A blank line with an empty data buffer dispatches nothing but resets the event type."""
    assert decode(b"event: foo\n\ndata: x\n\n") == [ServerSentEvent(event="message", data="x")]


def test_last_event_id_persists_and_is_reported_at_dispatch() -> None:
    """The last event ID carries over to later events and is set even by data-less blocks."""
    decoder = SSEDecoder()
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 5\n\ndata: c\n\nid\ndata: d\n\n"
    assert feed_all(decoder, [stream]) == [
        ServerSentEvent(data="a", id="1", last_event_id="1"),
        ServerSentEvent(data="b", id=None, last_event_id="1"),
        ServerSentEvent(data="c", id=None, last_event_id="5"),
        ServerSentEvent(data="d", id="", last_event_id=""),
    ]
    assert decoder.last_event_id == ""


def test_block_state_from_previous_feed_applies() -> None:
    """Fields set in one feed apply to a data line that arrives in a later feed."""
    pieces = [b"event: e\nid: 7\nretry: 9\n", b"data: x\n\n"]
    assert feed_all(SSEDecoder(), pieces) == [
        ServerSentEvent(event="e", data="x", id="7", retry=9, last_event_id="7")
    ]
    assert datas(feed_all(SSEDecoder(), [b"data: a\n", b"data: b\n\n"])) == ["a\nb"]


# --- end of stream ------------------------------------------------------------------------


def test_unterminated_block_discarded_at_close() -> None:
    """Data not followed by a blank line is discarded at end of stream."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ServerSentEvent(data="a")]
    assert decoder.close() == []


def test_unterminated_line_discarded_at_close() -> None:
    """A final line with no line end is discarded at end of stream."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [ServerSentEvent(data="a")]
    assert decoder.close() == []


def test_close_keeps_ids_and_allows_a_new_stream() -> None:
    """close() keeps last_event_id and retry, drops partial input, and re-arms BOM stripping."""
    decoder = SSEDecoder()
    decoder.feed(b"id: 4\nretry: 10\ndata: a\n\nevent: e\ndata: partial\ndata: x")
    assert decoder.close() == []
    assert (decoder.last_event_id, decoder.retry) == ("4", 10)
    assert decoder.feed(BOM + b"data: b\n\n") == [ServerSentEvent(data="b", last_event_id="4")]


# --- UTF-8 --------------------------------------------------------------------------------


def test_multibyte_characters_split_across_feeds() -> None:
    """A UTF-8 character split across feeds is decoded whole, not replaced."""
    text = "héllo 中文 😀"
    stream = b"data: " + text.encode() + b"\n\n"
    emoji = stream.index("😀".encode())
    for pieces in (split_at(stream, range(1, len(stream))), split_at(stream, [emoji + 2])):
        assert datas(feed_all(SSEDecoder(), pieces)) == [text]


def test_multibyte_split_inside_long_line() -> None:
    """A character split between feeds of a long pending data line is decoded whole."""
    text = "😀" * 1000
    stream = b"data: " + text.encode() + b"\n\n"
    pieces = split_at(stream, range(7, len(stream), 1001))
    assert datas(feed_all(SSEDecoder(), pieces)) == [text]


def test_invalid_utf8_replaced() -> None:
    """Invalid UTF-8 decodes to U+FFFD, per line, without failing."""
    stream = b"data: \xff ok \xe2\x82\n\n"
    assert datas(decode(stream)) == ["\ufffd ok \ufffd"]
    assert datas(feed_all(SSEDecoder(), split_at(stream, [7, 12]))) == ["\ufffd ok \ufffd"]


# --- size limit ---------------------------------------------------------------------------


def test_oversized_line_in_many_small_feeds_raises() -> None:
    """A line growing past the limit over many feeds raises EventTooLarge promptly."""
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: ")
    with pytest.raises(EventTooLarge) as info:
        for _ in range(11):
            decoder.feed(b"x" * 100)
    assert info.value.limit == 1000
    assert info.value.size > 1000
    assert "1000" in str(info.value)


def test_oversized_event_of_many_data_lines_raises() -> None:
    """Many data lines that together pass the limit raise EventTooLarge."""
    line = b"data: " + b"y" * 100 + b"\n"
    with pytest.raises(EventTooLarge):
        SSEDecoder(max_event_bytes=1000).feed(line * 20)
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            decoder.feed(line)


def test_oversized_complete_line_in_one_feed_raises() -> None:
    """A complete oversized event delivered in one feed also raises."""
    with pytest.raises(EventTooLarge):
        SSEDecoder(max_event_bytes=1000).feed(b"data: " + b"z" * 2000 + b"\n\n")
    with pytest.raises(EventTooLarge):
        SSEDecoder(max_event_bytes=1000).feed(b"event: a\ndata: " + b"z" * 2000 + b"\n\n")


def test_limit_is_per_event() -> None:
    """Many events each under the limit never raise, however long the stream."""
    event = b"data: " + b"w" * 500 + b"\n\n"
    decoder = SSEDecoder(max_event_bytes=1000)
    events = feed_all(decoder, split_at(event * 50, range(0, 50 * len(event), 300)))
    assert len(events) == 50


def test_decoder_unusable_after_overflow_until_close() -> None:
    """After EventTooLarge, feed raises SSEError until close() resets the stream."""
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 200)
    with pytest.raises(SSEError):
        decoder.feed(b"data: ok\n\n")
    decoder.close()
    assert decoder.feed(b"data: ok\n\n") == [ServerSentEvent(data="ok")]


def test_event_too_large_is_an_sse_error_and_pickles() -> None:
    """EventTooLarge subclasses SSEError and survives pickling with its fields."""
    error = pickle.loads(pickle.dumps(EventTooLarge(10, 11)))
    assert isinstance(error, EventTooLarge)
    assert isinstance(error, SSEError)
    assert (error.limit, error.size) == (10, 11)


def test_default_limit_fits_a_64_mib_data_line() -> None:
    """The default limit admits one 64 MiB data line with its JSON envelope."""
    assert DEFAULT_MAX_EVENT_BYTES >= 64 * 1024 * 1024 + 64 * 1024
    assert SSEDecoder().max_event_bytes == DEFAULT_MAX_EVENT_BYTES


def test_max_event_bytes_must_be_positive() -> None:
    """A non-positive limit is rejected at construction."""
    with pytest.raises(ValueError):
        SSEDecoder(max_event_bytes=0)


# --- large lines and API details ----------------------------------------------------------


def test_20_mb_data_line_in_64_kib_chunks() -> None:
    """A 20 MB data line fed in 64 KiB chunks decodes to exactly its value."""
    payload = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" * 327_680)[
        :20_000_000
    ]
    value = b'{"inlineData":{"mimeType":"image/png","data":"' + payload + b'"}}'
    stream = b"data: " + value + b"\r\n\r\ndata: next\r\n\r\n"
    chunk = 64 * 1024
    events = feed_all(SSEDecoder(), (stream[i : i + chunk] for i in range(0, len(stream), chunk)))
    assert len(events) == 2
    assert events[0].data == value.decode()
    assert events[1].data == "next"


def test_raw_decoder_keeps_a_long_line_as_its_bytes() -> None:
    """The raw decoder hands a line that came in pieces over undecoded, and one that came
    whole as the UTF-8 of its text; both limits and the spec's rules are the same."""
    value = b'{"data":"' + b"QUJD" * 100_000 + b'"}'
    stream = b"data: " + value + b"\r\n\r\nevent: e\ndata: a\ndata: \xc3\xa9\n\n"
    chunk = 64 * 1024
    events = feed_all_raw(
        RawSSEDecoder(), (stream[i : i + chunk] for i in range(0, len(stream), chunk))
    )
    assert events == [
        RawServerSentEvent(data=value),
        RawServerSentEvent(event="e", data="a\né".encode()),
    ]
    with pytest.raises(EventTooLarge):
        RawSSEDecoder(max_event_bytes=1000).feed(b"data: " + b"z" * 2000)


def test_raw_decoder_takes_plain_data_blocks_as_they_are() -> None:
    """Blocks of one-line data events come out as their own bytes (invalid UTF-8 included);
    a block with other fields, in the same feed or the next, follows the spec's text rules."""
    decoder = RawSSEDecoder()
    first = decoder.feed(b"data: a\r\n\r\ndata:\xff\r\n\r\ndata: {}\r\n\r\n")
    assert [e.data for e in first] == [b"a", b"\xff", b"{}"]
    mixed = decoder.feed(b"data: x\n\nid: 7\ndata: y\n\ndata: z\n\n")
    assert [(e.data, e.id, e.last_event_id) for e in mixed] == [
        (b"x", None, ""),
        (b"y", "7", "7"),
        (b"z", None, "7"),
    ]
    # A lone CR or LF inside a CRLF stream still ends a line.
    for odd, values in [
        (b"data: a\rdata: b\r\n\r\n", [b"a\nb"]),
        (b"data: c\ndata: d\r\n\r\n", [b"c\nd"]),
        (b"data: e\r\n\ndata: f\r\n\r\n", [b"e", b"f"]),
    ]:
        assert [e.data for e in decoder.feed(odd)] == values
    with pytest.raises(EventTooLarge):
        RawSSEDecoder(max_event_bytes=100).feed(b"data: " + b"z" * 200 + b"\n\n")


def test_bytes_like_input_accepted_and_copied() -> None:
    """bytearray and memoryview feeds work; mutating the caller's buffer later is harmless."""
    decoder = SSEDecoder()
    buffer = bytearray(b"data: abc")
    decoder.feed(buffer)
    buffer[:] = b"XXXXXXXXX"
    assert decoder.feed(memoryview(b"def\n\n")) == [ServerSentEvent(data="abcdef")]


def test_server_sent_event_is_immutable() -> None:
    """ServerSentEvent fields cannot be reassigned."""
    event = ServerSentEvent(data="x")
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]


# --- chunking independence (property) -----------------------------------------------------

_ALPHABET = st.one_of(
    st.characters(codec="utf-8", exclude_characters="\r\n"),
    st.sampled_from("é中😀\u2028\x85\x0b\x0c\x1c\ufeff: "),
)
_TEXT = st.text(_ALPHABET, max_size=12)
_ID = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=6)


class _Spec(NamedTuple):
    """One generated event: optional fields, data lines and comments."""

    event: str | None
    data: list[str]
    id: str | None
    retry: int | None
    comments: list[str]


_SPECS = st.builds(
    _Spec,
    event=st.none() | _TEXT,
    data=st.lists(_TEXT, min_size=1, max_size=4),
    id=st.none() | _ID,
    retry=st.none() | st.integers(0, 10**9),
    comments=st.lists(_TEXT, max_size=2),
)
_DATA_SLOT = None


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """Draw an encoded event stream together with the events it must decode to."""
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id = ""
    for spec in draw(st.lists(_SPECS, max_size=6)):
        fields: list[str | None] = [":" + c for c in spec.comments]
        if spec.event is not None:
            fields.append(f"event: {spec.event}")
        if spec.id is not None:
            fields.append(f"id: {spec.id}")
        if spec.retry is not None:
            fields.append(f"retry: {spec.retry}")
        fields.extend([_DATA_SLOT] * len(spec.data))
        values = iter(spec.data)
        for field in draw(st.permutations(fields)):
            if field is not None:
                lines.append(field)
                continue
            value = next(values)
            spelling = draw(st.sampled_from(["data: ", "data:", "data"]))
            if (spelling == "data:" and value.startswith(" ")) or (spelling == "data" and value):
                spelling = "data: "
            lines.append(spelling + value)
        lines.extend([""] * draw(st.integers(1, 2)))
        if spec.id is not None:
            last_id = spec.id
        expected.append(
            ServerSentEvent(
                event=spec.event or "message",
                data="\n".join(spec.data),
                id=spec.id,
                retry=spec.retry,
                last_event_id=last_id,
            )
        )
    # Trailing lines never followed by a blank line must be discarded.
    lines.extend(draw(st.lists(_TEXT.map(lambda t: "data: " + t), max_size=2)))

    out = [BOM] if draw(st.booleans()) else []
    previous = ""
    for index, line in enumerate(lines):
        ending = draw(st.sampled_from(["\n", "\r", "\r\n"]))
        # CR then an empty LF-terminated line would merge into one CRLF line end.
        if previous == "\r" and not line and ending == "\n":
            ending = "\r\n"
        unterminated = index == len(lines) - 1 and bool(line)
        out.append(line.encode() + (b"" if unterminated else ending.encode()))
        previous = ending
    return b"".join(out), expected


@settings(max_examples=300, deadline=None)
@given(case=_streams(), data=st.data())
def test_any_chunking_matches_whole_feed(
    case: tuple[bytes, list[ServerSentEvent]], data: st.DataObject
) -> None:
    """Random streams decode to their events, identically for any split into feeds."""
    stream, expected = case
    whole = decode(stream)
    assert whole == expected
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert feed_all(SSEDecoder(), split_at(stream, points)) == whole
    assert feed_all(SSEDecoder(), split_at(stream, range(1, len(stream)))) == whole
    # The raw decoder dispatches the same events with the data's UTF-8 bytes.
    raw = [
        ServerSentEvent(e.event, e.data.decode(), e.id, e.retry, e.last_event_id)
        for e in feed_all_raw(RawSSEDecoder(), split_at(stream, points))
    ]
    assert raw == whole
