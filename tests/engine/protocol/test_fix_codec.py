"""Fixed-width FIX 4.2: checked against simplefix, an independent FIX library."""
import numpy as np
import pytest
import simplefix

from engine.protocol import fix
from engine.protocol.errors import ProtocolError
from engine.protocol.fix import (
    EXECUTION_REPORT_SIZE,
    NEW_ORDER_SINGLE_PREFIX_BYTES,
    NEW_ORDER_SINGLE_SIZE,
    NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET,
    ORDER_CANCEL_REQUEST_SIZE,
    ORDER_QTY_TAG,
    TRIGGER_SEQ_TAG,
    ExecutionReport,
    NewOrderSingle,
    OrderCancelRequest,
    decode_fix,
    decode_fix_messages,
    fix_tag_values,
    frame_fix_stream,
    parse_fix,
)

MS = 10**6
EPOCH_2000, EPOCH_2100 = 946_684_800 * 10**9, 4_102_444_800 * 10**9


def comp_id(rng) -> str:
    return "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), 8))


def random_new_order(rng) -> NewOrderSingle:
    return NewOrderSingle(
        sender=comp_id(rng), target=comp_id(rng), msg_seq_num=int(rng.integers(1, 10**9)),
        sending_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS,
        account=int(rng.integers(0, 10**10)), client_order_id=int(rng.integers(0, 10**18)),
        trigger_seq=int(rng.integers(0, 10**18)), symbol=comp_id(rng), side=int(rng.integers(1, 3)),
        qty=int(rng.integers(0, 10**10)), price=int(rng.integers(0, 10**18)),
        transact_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS,
        time_in_force=int(rng.choice([0, 3])))


def random_cancel(rng) -> OrderCancelRequest:
    ids = [int(x) for x in rng.integers(0, 10**18, 3)]
    return OrderCancelRequest(
        sender=comp_id(rng), target=comp_id(rng), msg_seq_num=int(rng.integers(1, 10**9)),
        sending_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS,
        account=int(rng.integers(0, 10**10)), orig_client_order_id=ids[0], client_order_id=ids[1],
        trigger_seq=ids[2], symbol=comp_id(rng), side=int(rng.integers(1, 3)), qty=int(rng.integers(0, 10**10)),
        transact_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS)


def random_report(rng) -> ExecutionReport:
    ids = [int(x) for x in rng.integers(0, 10**18, 3)]
    qty = [int(x) for x in rng.integers(0, 10**10, 4)]
    return ExecutionReport(
        sender=comp_id(rng), target=comp_id(rng), msg_seq_num=int(rng.integers(1, 10**9)),
        sending_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS,
        order_id=ids[0], client_order_id=ids[1], exec_id=ids[2],
        exec_type=str(rng.choice(list("01248"))), ord_status=str(rng.choice(list("01248"))),
        symbol=comp_id(rng), side=int(rng.integers(1, 3)), qty=qty[0], last_qty=qty[1],
        last_price=int(rng.integers(0, 10**18)), leaves_qty=qty[2], cum_qty=qty[3],
        avg_price=int(rng.integers(0, 10**18)),
        transact_time_ns=int(rng.integers(EPOCH_2000, EPOCH_2100)) // MS * MS)


def simplefix_fields(wire: bytes) -> list[tuple[int, bytes]]:
    parser = simplefix.FixParser()
    parser.append_buffer(wire)
    message = parser.get_message()
    assert message is not None and parser.get_message() is None
    return [(int(tag), value) for tag, value in message.pairs]


def simplefix_encode(pairs) -> bytes:
    """simplefix computes BodyLength and CheckSum itself for the same fields."""
    message = simplefix.FixMessage()
    for tag, value in pairs:
        if tag not in (9, 10):
            message.append_pair(tag, value, header=tag in (8, 35))
    return message.encode()


@pytest.mark.parametrize("make", [random_new_order, random_cancel, random_report])
def test_encoding_agrees_with_simplefix(make):
    rng = np.random.default_rng(8)
    for _ in range(200):
        message = make(rng)
        wire = message.encode()
        fields = simplefix_fields(wire)
        assert fields == parse_fix(wire)
        reference = simplefix_encode(fields)
        assert simplefix_fields(reference)[1] == fields[1]       # BodyLength
        assert simplefix_fields(reference)[-1] == fields[-1]     # CheckSum
        assert reference == wire
        assert decode_fix(wire) == message


def test_every_message_of_a_type_has_the_same_length_and_offsets():
    rng = np.random.default_rng(9)
    orders = [random_new_order(rng).encode() for _ in range(100)]
    reports = [random_report(rng).encode() for _ in range(100)]
    cancels = [random_cancel(rng).encode() for _ in range(100)]
    assert {len(w) for w in orders} == {NEW_ORDER_SINGLE_SIZE}
    assert {len(w) for w in reports} == {EXECUTION_REPORT_SIZE}
    assert {len(w) for w in cancels} == {ORDER_CANCEL_REQUEST_SIZE}
    for wire in orders:
        fields = dict(simplefix_fields(wire))
        seq = wire[NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET:].split(b"\x01")[0]
        assert wire[NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET - 5:NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET] == b"9001="
        assert int(seq) == int(fields[TRIGGER_SEQ_TAG])


def test_prefix_is_the_decision_free_header_fields():
    rng = np.random.default_rng(10)
    message = random_new_order(rng)
    prefix = message.prefix()
    assert len(prefix) == NEW_ORDER_SINGLE_PREFIX_BYTES
    assert prefix.endswith(b"\x01") and b"\x0159=" in prefix and b"9001=" not in prefix
    tags = [int(field.split(b"=")[0]) for field in prefix[:-1].split(b"\x01")]
    assert tags == [8, 9, 35, 49, 56, 34, 52, 1, 11, 21, 40, 59]
    decided = NewOrderSingle(**{**message.__dict__, "trigger_seq": 5, "side": 3 - message.side,
                                "price": 1, "qty": 2, "symbol": "ZZZZZZZZ"})
    assert decided.encode()[:NEW_ORDER_SINGLE_PREFIX_BYTES] == prefix


def test_times_are_utc_milliseconds():
    message = random_new_order(np.random.default_rng(11))
    wire = NewOrderSingle(**{**message.__dict__, "sending_time_ns": 1_700_000_000_123_456_789}).encode()
    assert dict(simplefix_fields(wire))[52] == b"20231114-22:13:20.123"


def test_vectorised_decode_equals_scalar_decode():
    rng = np.random.default_rng(12)
    messages = [random_new_order(rng) if rng.random() < 0.6 else random_report(rng) for _ in range(400)]
    wires = [m.encode() for m in messages]
    data = np.frombuffer(b"".join(wires), np.uint8)
    frames = frame_fix_stream(data)
    assert frames.offset.tolist() == np.cumsum([0] + [len(w) for w in wires[:-1]]).tolist()
    assert bytes(frames.msg_type) == b"".join(b"D" if isinstance(m, NewOrderSingle) else b"8"
                                             for m in messages)
    for msg_type, cls in ((b"D", NewOrderSingle), (b"8", ExecutionReport)):
        rows = [i for i, m in enumerate(messages) if isinstance(m, cls)]
        table = decode_fix_messages(data, frames.offset[rows], msg_type)
        for row, i in zip(table, rows):
            values = {name: row[name].decode() if isinstance(row[name], bytes) else int(row[name])
                      for name in table.dtype.names}
            assert cls(**values) == messages[i]
    seqs = fix_tag_values(data, frames.offset, frames.length, TRIGGER_SEQ_TAG)
    assert seqs.tolist() == [m.trigger_seq if isinstance(m, NewOrderSingle) else -1 for m in messages]


def test_framer_handles_tails_and_garbage():
    rng = np.random.default_rng(13)
    wire = random_new_order(rng).encode() + random_report(rng).encode()
    for cut in (1, 10, 14, 100):
        frames = frame_fix_stream(wire[:-cut])
        assert len(frames) == 1 and frames.error is None
        assert frames.tail_bytes == len(wire) - cut - NEW_ORDER_SINGLE_SIZE
    frames = frame_fix_stream(wire + b"garbage")
    assert len(frames) == 2 and frames.error_offset == len(wire)
    frames = frame_fix_stream(b"8=FIX.4.2\x019=x\x01" + wire)
    assert len(frames) == 0 and frames.error_offset == 0


def replace(wire: bytes, old: bytes, new: bytes) -> bytes:
    assert old in wire
    return wire.replace(old, new, 1)


GOOD = NewOrderSingle("WIRELAB1", "VENUEGW1", 12, 1_700_000_000_123_000_000, 7, 1001, 5111856,
                      "I0000042", 1, 30, 100_12345678, 1_700_000_000_124_000_000).encode()
BODY_LENGTH = b"9=%d\x01" % fix.NEW_ORDER_SINGLE.body_length


def with_checksum(wire: bytes) -> bytes:
    body = wire[:wire.rindex(b"10=")]
    return body + b"10=%03d\x01" % (sum(body) % 256)


def refix(wire: bytes) -> bytes:
    """Recompute BodyLength and CheckSum after an edit, so only the edit is wrong."""
    start = wire.index(b"\x0135=") + 1
    body = wire[start:wire.rindex(b"10=")]
    return with_checksum(b"8=FIX.4.2\x019=%d\x01" % len(body) + body + b"10=000\x01")


@pytest.mark.parametrize("wire", [
    b"", GOOD[:-1], GOOD[:100], b"8=FIX.4.4" + GOOD[9:],
    GOOD[:-4] + b"%03d\x01" % ((int(GOOD[-4:-1]) + 1) % 256),           # CheckSum wrong
    with_checksum(replace(GOOD, BODY_LENGTH, BODY_LENGTH[:-2] + b"9\x01")),   # BodyLength lies
    refix(replace(GOOD, b"35=D", b"35=G")),                                # unsupported MsgType
    refix(replace(GOOD, b"\x0154=", b"\x0199=7\x0154=")),                 # not the fixed layout
    refix(replace(GOOD, b"\x0138=0", b"\x0138=x")),                        # non-digit
    refix(replace(GOOD, b"\x0154=", b"\x0154=0")),                         # wrong width
    refix(GOOD[:GOOD.index(b"\x0160=") + 4] + b"20231399-25:61:61.000" + GOOD[-8:]),
    refix(replace(GOOD, b"\x0140=2", b"\x0140=1")),                        # a constant changed
], ids=["empty", "no-soh", "truncated", "begin-string", "checksum", "body-length", "msg-type",
        "layout", "digit", "width", "bad-time", "constant"])
def test_bad_fix_raises_protocol_error(wire):
    with pytest.raises(ProtocolError):
        decode_fix(wire)


def test_vectorised_decode_rejects_a_corrupt_message():
    rng = np.random.default_rng(15)
    wires = [random_new_order(rng).encode() for _ in range(10)]
    wires[7] = wires[7][:-4] + b"%03d\x01" % ((int(wires[7][-4:-1]) + 1) % 256)
    data = np.frombuffer(b"".join(wires), np.uint8)
    with pytest.raises(ProtocolError) as info:
        decode_fix_messages(data, np.arange(10) * NEW_ORDER_SINGLE_SIZE)
    assert info.value.offset == 7 * NEW_ORDER_SINGLE_SIZE + NEW_ORDER_SINGLE_SIZE - 7


def test_encoder_refuses_values_that_do_not_fit():
    message = random_new_order(np.random.default_rng(16))
    for change in ({"sender": "SHORT"}, {"symbol": "A\x01BCDEFG"}, {"qty": 10**10}, {"price": -1},
                   {"client_order_id": 10**18}, {"side": 3}):
        with pytest.raises(ProtocolError):
            NewOrderSingle(**{**message.__dict__, **change}).encode()
    assert fix.ID_WIDTH == 18


def as_columns(messages) -> dict:
    columns = {name: [getattr(m, name) for m in messages] for name in type(messages[0]).__dataclass_fields__}
    return {name: np.array([v.encode() for v in values]) if isinstance(values[0], str) else np.array(values)
            for name, values in columns.items()}


def test_batch_encoding_equals_one_at_a_time():
    rng = np.random.default_rng(17)
    for msg_type, make in ((b"D", random_new_order), (b"F", random_cancel), (b"8", random_report)):
        messages = [make(rng) for _ in range(50)]
        batch = fix.encode_fix_batch(msg_type, len(messages), **as_columns(messages))
        assert [row.tobytes() for row in batch] == [m.encode() for m in messages]
    columns = as_columns([random_new_order(rng) for _ in range(5)])
    with pytest.raises(ProtocolError):
        fix.encode_fix_batch(b"D", 5, **{**columns, "qty": np.full(5, 10**10)})
    with pytest.raises(ProtocolError):
        fix.encode_fix_batch(b"D", 5, **{**columns, "price": np.full(5, -1)})
    with pytest.raises(TypeError):
        fix.encode_fix_batch(b"D", 5, **{k: v for k, v in columns.items() if k != "qty"})


def test_tag_values_of_no_messages_in_a_stream_that_holds_the_tag():
    """A flow with a `38=` but no framed NewOrderSingle (a cut order, a report) has no values,
    and no IndexError (issue 16, found 1)."""
    rng = np.random.default_rng(5)
    report = random_report(rng).encode()
    assert b"\x0138=" in report
    for stream in (report, report[:-20], random_new_order(rng).encode()[:-1]):
        assert fix_tag_values(stream, [], [], ORDER_QTY_TAG).tolist() == []
