"""MLLP frames cut from what the peer sends, however it is split: each frame whole, once, and what
follows it kept for the next."""
import asyncio

from hypothesis import given, settings, strategies as st

from gateway.hl7v2.mllp import FrameReader, split_file


def frames_read(stream: bytes, cuts: list[int], max_bytes: int = 1 << 20) -> list[bytes]:
    async def read() -> list[bytes]:
        reader = asyncio.StreamReader()
        points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        for start, end in zip(points, points[1:]):
            reader.feed_data(stream[start:end])
        reader.feed_eof()
        frames, got = FrameReader(reader, max_bytes, idle_timeout=5), []
        while (frame := await frames.frame()) is not None:
            got.append(bytes(frame))
        return got

    return asyncio.run(read())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300).filter(lambda b: b"\x1c\r" not in b and b"\x0b" not in b),
                min_size=1, max_size=5), st.lists(st.integers(0, 2000), max_size=6))
def test_every_frame_is_read_whole_however_the_bytes_arrive(messages, cuts):
    stream = b"".join(b"\x0b" + m + b"\x1c\r" for m in messages)
    assert frames_read(stream, cuts) == messages


def test_a_large_frame_then_a_small_one():
    large = b"MSH|" + b"A" * 3_000_000
    assert frames_read(b"\x0b" + large + b"\x1c\r\x0bMSH|small\x1c\r", [65536, 3_000_006],
                       max_bytes=4_000_000) == [large, b"MSH|small"]


A01 = b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A01|C1|P|2.5\rPID|1||1^^^CH&1.2.3&ISO^PI||X^Y\r"
A28 = b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A28|C2|P|2.5\rPID|1||2^^^CH&1.2.3&ISO^PI||Z^W\r"


def test_an_hl7_batch_file_gives_its_messages_without_the_envelope():
    """FHS and BHS were sent as a message of their own (AR), BTS and FTS as segments of the last one."""
    batch = b"FHS|^~\\&|GAM|CH\rBHS|^~\\&|GAM|CH\r" + A01 + A28 + b"BTS|2\rFTS|1\r"
    assert split_file(batch) == ([A01, A28], [])
    assert split_file(batch.replace(b"\r", b"\r\n")) == ([A01, A28], [])
    cut = b"FHS|^~\\&|GAM|CH\rBHS|^~\\&|GAM|CH\r" + A01 + b"BTS|2\rFTS|1\r"
    assert split_file(cut) == ([A01], ["the batch says it holds 2 messages (BTS-1); it holds 1"])
    assert split_file(A01 + A28) == ([A01, A28], [])
    assert split_file(b"\x0b" + A01 + b"\x1c\r\x0b" + A28 + b"\x1c\r") == ([A01, A28], [])


def test_a_frame_not_ended_gives_what_came_of_it_and_bytes_outside_frames_are_counted():
    """The frame cut by the peer's close was dropped with nothing kept; bytes outside any frame,
    line breaks aside, are counted (the listener says so once per connection)."""
    import pytest

    from gateway.hl7v2.mllp import UnendedFrame

    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(b"junk \r\n\x0bMSH|a\x1c\r\r\n\x0bMSH|b")
        reader.feed_eof()
        frames = FrameReader(reader, 1 << 20, idle_timeout=5)
        first = await frames.frame()
        with pytest.raises(UnendedFrame) as cut:
            await frames.frame()
        return bytes(first), cut.value, frames.unframed

    first, cut, unframed = asyncio.run(read())
    assert first == b"MSH|a" and (cut.head, cut.size, cut.idle) == (b"MSH|b", 5, False) and unframed == 4
