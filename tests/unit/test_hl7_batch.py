"""HL7 batches read and answered (gateway.hl7v2.batch): every message found as it was sent, whatever
of the envelope a sender writes, and every count that is not the batch's told; the answer read back
by python-hl7, a third-party parser."""
import hl7
from hypothesis import given, settings, strategies as st

from gateway.hl7v2 import batch


def message(n: int, segments: int) -> bytes:
    body = b"".join(b"OBX|%d||x^y||%d\r" % (i, n) for i in range(segments))
    return b"MSH|^~\\&|GAM|CH|GW|DMP|20260101||ADT^A28|C%d|P|2.5\rPID|1||%d^^^CH&1.2.3&ISO^PI\r" % (n, n) + body


groups = st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=4), st.booleans(), st.booleans()),
                  min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(groups=groups, file=st.booleans(), trailer=st.booleans(), line_break=st.sampled_from([b"\r", b"\n", b"\r\n"]),
       blank=st.booleans(), wrong=st.one_of(st.none(), st.integers(0, 2)))
def test_every_message_is_found_as_sent_and_a_count_not_the_batch_s_is_told(groups, file, trailer, line_break,
                                                                              blank, wrong):
    """Groups: (the sizes of their messages, a BHS, a BTS); only the first may lack its BHS (without
    one, where a group begins cannot be told). `wrong`: the group whose BTS-1 says one more."""
    sent, expected, n = [b"FHS|^~\\&|GAM|CH\r"] if file else [], [], 0
    for index, (sizes, header, closed) in enumerate(groups):
        if header or index > 0 or file and not sizes:
            sent.append(b"BHS|^~\\&|GAM|CH||||||||B%d\r" % index)
        for size in sizes:
            expected.append(message(n, size))
            sent.append(expected[-1] + (b"\r" if blank else b""))
            n += 1
        if closed or wrong == index:
            sent.append(b"BTS|%d\r" % (len(sizes) + (wrong == index)))
    if file and trailer:
        sent.append(b"FTS|%d\r" % len(groups))
    data = b"".join(sent).replace(b"\r", line_break)
    if not data:
        return
    read = batch.read(data)
    assert read.messages == [m.replace(b"\r", line_break) for m in expected]
    told = [p for p in read.problems if "(BTS-1)" in p]
    if wrong is not None and wrong < len(groups):
        assert told == [f"the batch says it holds {len(groups[wrong][0]) + 1} messages (BTS-1); "
                        f"it holds {len(groups[wrong][0])}"]
    else:
        assert read.problems == []


def test_what_is_not_a_whole_batch_is_told():
    one = message(1, 0)
    assert batch.read(b"BHS|^~\\&\rEVN|x\r" + one).problems == ["a segment (EVN) is outside any message"]
    assert batch.read(b"BHS|^~\\&\r" + one + b"BTS|1\rFTS|1\r" + one).problems == [
        "a segment follows the file trailer (FTS)"]
    assert batch.read(b"BHS|^~\\&\r" + one + b"FHS|^~\\&\r").problems == [
        "the file header (FHS) is not the first segment"]
    assert batch.read(b"FHS|^~\\&\rBHS|^~\\&\r" + one + b"BTS|1\rFTS|2\r").problems == [
        "the file says it holds 2 batches (FTS-1); it holds 1"]
    assert batch.read(b"BHS|^~\\&\r" + one + b"BTS|one\r").problems == [
        "the batch says it holds one messages (BTS-1); it holds 1"]
    assert batch.read(b"\xef\xbb\xbfBHS|^~\\&\r" + one + b"BTS\r").messages == [one]
    assert batch.is_batch(b"\xef\xbb\xbfFHS|") and batch.is_batch(b"BHS|") and not batch.is_batch(one)


def test_the_answer_is_a_batch_of_the_same_shape_that_python_hl7_reads():
    read = batch.read(b"FHS|^~\\&|GAM|CH|GW|DMP|20260101||||F7\rBHS|^~\\&|GAM|CH|||||||B\x1c7\r"
                      + message(1, 0) + message(2, 1) + b"BTS|2\rFTS|1\r")
    acks = [[b"MSH|^~\\&|GW|DMP|GAM|CH|20260101||ACK^A28^ACK|A%d|P|2.5\rMSA|AA|C%d\r" % (n, n) for n in (1, 2)]]
    answer = batch.answer(read, acks)
    assert b"\x1c" not in answer   # an echoed framing byte would end the sender's MLLP frame early
    parsed = hl7.parse_file(answer.decode())
    assert (str(parsed.header[3]), str(parsed.header[5]), str(parsed.header[12])) == ("GW", "GAM", "F7")
    assert str(parsed[0].header[12]) == "B\\X1C\\7"
    assert [str(m.segment("MSA")[2]) for m in parsed[0]] == ["C1", "C2"]
    assert (str(parsed[0].trailer[1]), str(parsed.trailer[1])) == ("2", "1")
