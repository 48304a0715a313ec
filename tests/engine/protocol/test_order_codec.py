"""Binary order entry: layouts against struct, round trips, the stream framer, bad input."""
import struct

import numpy as np
import pytest

from engine.protocol import orders
from engine.protocol.errors import ProtocolError
from engine.protocol.orders import (
    ACK_TYPE,
    BUY,
    CANCEL_TYPE,
    FILL_TYPE,
    NEW_ORDER_PREFIX_BYTES,
    NEW_ORDER_SIZE,
    NEW_ORDER_TRIGGER_SEQ_OFFSET,
    NEW_ORDER_TYPE,
    REJECT_TYPE,
    SELL,
    Ack,
    Cancel,
    Fill,
    NewOrder,
    Reject,
    decode_new_orders,
    decode_order,
    decode_orders,
    frame_order_stream,
)
from engine.protocol.stream import follow_chain

U64 = 2**64


def random_message(rng, kind=None):
    kind = kind or rng.choice(list("NCAFR"))
    def u64():
        return int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))

    def i64():
        return int(rng.integers(-2**63, 2**63))

    if kind == "N":
        return NewOrder(int(rng.integers(0, 2**32)), u64(), u64(), int(rng.integers(0, 2**32)),
                        int(rng.choice([BUY, SELL])), i64(), i64(), int(rng.choice([0, 3])),
                        int(rng.integers(0, 2)))
    if kind == "C":
        return Cancel(int(rng.integers(0, 2**32)), u64(), u64(), u64(), int(rng.integers(0, 2)))
    if kind == "A":
        return Ack(int(rng.choice([NEW_ORDER_TYPE, CANCEL_TYPE])), u64(), u64(), i64())
    if kind == "F":
        return Fill(int(rng.choice([BUY, SELL])), u64(), u64(), u64(), i64(), i64(), i64(), i64())
    return Reject(int(rng.choice([NEW_ORDER_TYPE, CANCEL_TYPE])), int(rng.integers(1, 2**32)), u64(), i64())


def struct_encode(m) -> bytes:
    """The layouts written out independently with struct (sizes from the docs)."""
    if isinstance(m, NewOrder):
        return struct.pack("<HcBIQQIBB2xqq", 48, b"N", m.flags, m.account, m.client_order_id,
                           m.trigger_seq, m.instrument, m.side, m.time_in_force, m.price, m.qty)
    if isinstance(m, Cancel):
        return struct.pack("<HcBIQQQ", 32, b"C", m.flags, m.account, m.client_order_id,
                           m.trigger_seq, m.orig_client_order_id)
    if isinstance(m, Ack):
        return struct.pack("<HcB4xQQq", 32, b"A", m.acked_type, m.client_order_id,
                           m.venue_order_id, m.venue_ts_ns)
    if isinstance(m, Fill):
        return struct.pack("<HcB4xQQQqqqq", 64, b"F", m.side, m.client_order_id, m.venue_order_id,
                           m.exec_id, m.price, m.qty, m.leaves_qty, m.venue_ts_ns)
    return struct.pack("<HcBIQq", 24, b"R", m.rejected_type, m.reason, m.client_order_id, m.venue_ts_ns)


def test_new_order_constants():
    assert NEW_ORDER_SIZE == 48
    assert NEW_ORDER_PREFIX_BYTES == 16 == NEW_ORDER_TRIGGER_SEQ_OFFSET
    wire = NewOrder(7, 1001, 123456789, 42, BUY, 5, 6).encode()
    assert struct.unpack_from("<Q", wire, NEW_ORDER_TRIGGER_SEQ_OFFSET)[0] == 123456789
    assert wire[:NEW_ORDER_PREFIX_BYTES] == NewOrder(7, 1001, 1, 1, SELL, 1, 1).encode()[:NEW_ORDER_PREFIX_BYTES]


def test_encode_matches_struct_and_round_trips():
    rng = np.random.default_rng(3)
    for _ in range(500):
        message = random_message(rng)
        wire = message.encode()
        assert wire == struct_encode(message)
        assert decode_order(wire) == message


def test_vectorised_decode_equals_scalar_decode():
    rng = np.random.default_rng(4)
    messages = [random_message(rng) for _ in range(2000)]
    wires = [m.encode() for m in messages]
    offsets = np.cumsum([0] + [len(w) for w in wires[:-1]])
    data = np.frombuffer(b"".join(wires), np.uint8)
    new = [i for i, m in enumerate(messages) if isinstance(m, NewOrder)]
    table = decode_new_orders(data, offsets[new])
    for row, i in zip(table, new):
        assert NewOrder(**{f: int(row[f]) for f in NewOrder.__dataclass_fields__}) == messages[i]
    fills = [i for i, m in enumerate(messages) if isinstance(m, Fill)]
    assert decode_orders(data, offsets[fills], FILL_TYPE)["exec_id"].tolist() == \
        [messages[i].exec_id for i in fills]
    with pytest.raises(ProtocolError):
        decode_new_orders(data, offsets[fills[:1]])          # a Fill is not a NewOrder


def stream_of(messages) -> tuple[np.ndarray, list[int]]:
    wires = [m.encode() for m in messages]
    return np.frombuffer(b"".join(wires), np.uint8), np.cumsum([0] + [len(w) for w in wires[:-1]]).tolist()


def test_framer_finds_every_message_even_when_fields_look_like_headers():
    rng = np.random.default_rng(5)
    messages = [random_message(rng) for _ in range(3000)]
    # values whose low bytes read as a NewOrder / Fill header, at 8-aligned offsets
    fake_new, fake_fill = 48 | NEW_ORDER_TYPE << 16, 64 | FILL_TYPE << 16
    messages += [NewOrder(1, fake_new, fake_fill, 3, BUY, fake_new, fake_fill) for _ in range(50)]
    messages = [messages[i] for i in rng.permutation(len(messages))]
    data, offsets = stream_of(messages)
    frames = frame_order_stream(data)
    assert frames.offset.tolist() == offsets
    assert frames.length.tolist() == [len(m.encode()) for m in messages]
    assert bytes(frames.msg_type) == bytes(m.encode()[2] for m in messages)
    assert (frames.error, frames.consumed, frames.tail_bytes) == (None, data.size, 0)


def test_framer_resolves_a_long_chain_of_look_alike_headers():
    # Every client_order_id reads as a NewOrder header, so offsets 8, 56, 104, ... form a
    # second chain as long as the real one: pruning alone cannot settle it.
    look_alike = 48 | NEW_ORDER_TYPE << 16
    messages = [NewOrder(1, look_alike, i, 3, BUY, 4, 5) for i in range(200)]
    data, offsets = stream_of(messages)
    assert frame_order_stream(data).offset.tolist() == offsets


def test_follow_chain_matches_a_plain_walk():
    rng = np.random.default_rng(6)
    for _ in range(200):
        count = int(rng.integers(1, 60))
        successor = np.array([int(rng.integers(i + 1, count + 2)) for i in range(count)])
        successor = np.minimum(successor, count)
        head = int(rng.integers(0, count))
        walk, node = [], head
        while node < count:
            walk.append(node)
            node = successor[node]
        assert follow_chain(successor, head).tolist() == walk


def test_framer_keeps_an_incomplete_last_message_as_tail():
    data, offsets = stream_of([random_message(np.random.default_rng(7), "N") for _ in range(3)])
    frames = frame_order_stream(data[:-5])
    assert frames.offset.tolist() == offsets[:2]
    assert (frames.error, frames.consumed, frames.tail_bytes) == (None, 96, 43)
    assert len(frame_order_stream(data[:2])) == 0 and frame_order_stream(data[:2]).error is None


@pytest.mark.parametrize("bad, reason", [
    (b"\x00\x00N" + bytes(45), "length 0"),
    (b"\x02\x00N" + bytes(45), "length 2"),
    (b"\x30\x00Z" + bytes(45), "unknown order message type 0x5a"),
    (b"\x20\x00N" + bytes(45), "NewOrder length field says 32"),
])
def test_framer_reports_a_bad_header_at_its_offset(bad, reason):
    good, offsets = stream_of([Ack(NEW_ORDER_TYPE, 1, 2, 3), NewOrder(1, 2, 3, 4, BUY, 5, 6)])
    data = np.concatenate([good, np.frombuffer(bad, np.uint8), good])
    frames = frame_order_stream(data)
    assert frames.offset.tolist() == offsets
    assert frames.consumed == good.size
    assert reason in frames.error
    assert frames.error_offset in (good.size, good.size + 2)


@pytest.mark.parametrize("wire", [
    b"", b"\x30\x00",
    NewOrder(1, 2, 3, 4, BUY, 5, 6).encode()[:-1],
    NewOrder(1, 2, 3, 4, BUY, 5, 6).encode() + b"\0",
    b"\x30\x00X" + bytes(45),
    b"\x00\x00N" + bytes(45),
    b"\x20\x00N" + bytes(29),
    bytes(NewOrder(1, 2, 3, 4, BUY, 5, 6).encode()[:28]) + b"\x07" + bytes(19),   # side 7
    Ack(NEW_ORDER_TYPE, 1, 2, 3).encode()[:3] + b"Z" + bytes(28),                 # acked_type
], ids=["empty", "short", "truncated", "trailing", "unknown-type", "zero-length",
        "length-lies", "bad-side", "bad-acked-type"])
def test_bad_messages_raise_protocol_error(wire):
    with pytest.raises(ProtocolError):
        decode_order(wire)


def test_encoder_refuses_values_that_do_not_fit():
    with pytest.raises(ProtocolError):
        NewOrder(-1, 2, 3, 4, BUY, 5, 6).encode()
    with pytest.raises(ProtocolError):
        NewOrder(1, U64, 3, 4, BUY, 5, 6).encode()
    with pytest.raises(ProtocolError):
        NewOrder(1, 2, 3, 4, 9, 5, 6).encode()


def test_every_size_is_a_multiple_of_eight():
    assert {layout.size % 8 for layout in orders.LAYOUTS.values()} == {0}
    assert {t: layout.size for t, layout in orders.LAYOUTS.items()} == {
        NEW_ORDER_TYPE: 48, CANCEL_TYPE: 32, ACK_TYPE: 32, FILL_TYPE: 64, REJECT_TYPE: 24}


def test_a_big_endian_packed_layout_packs_as_the_spec_writes_it():
    """Real exchange protocols are big-endian and packed: the struct and the dtype agree with
    int.to_bytes, field by field, at unaligned offsets."""

    from engine.protocol.layout import Field, Layout
    layout = Layout("toy", 15, [Field("type", 0, "S1", ""), Field("locate", 1, ">u2", ""),
                                Field("seq", 3, ">u8", ""), Field("shares", 11, ">u4", "")])
    expected = b"A" + (513).to_bytes(2, "big") + (2**40 + 7).to_bytes(8, "big") + (300).to_bytes(4, "big")
    assert layout.struct.pack(b"A", 513, 2**40 + 7, 300) == expected
    assert layout.pack(type=b"A", locate=513, seq=2**40 + 7, shares=300) == expected
    assert [f.type_name for f in layout.fields] == ["bytes[1]", "u16 BE", "u64 BE", "u32 BE"]
    with pytest.raises(ValueError, match="both byte orders"):
        Layout("mixed", 4, [Field("a", 0, "<u2", ""), Field("b", 2, ">u2", "")])
