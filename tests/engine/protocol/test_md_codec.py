"""The MD datagram: layout against struct, round trips, vectorised == scalar, bad input."""
import struct

import numpy as np
import pytest

from engine.protocol.errors import ProtocolError
from engine.protocol.md import (
    ASK,
    BID,
    DELETE,
    SET,
    L2Update,
    MdDatagram,
    Trade,
    decode_md,
    decode_md_headers,
    valid_md_headers,
)


def random_datagram(rng, seq=None) -> MdDatagram:
    n_more, n_trades = int(rng.integers(0, 6)), int(rng.integers(0, 4))
    updates = [L2Update(BID, SET, int(rng.integers(1, 10**12)), int(rng.integers(1, 10**6))),
               L2Update(ASK, int(rng.choice([SET, DELETE])), int(rng.integers(1, 10**12)),
                        int(rng.integers(0, 10**6)))]
    updates += [L2Update(int(rng.choice([BID, ASK])), int(rng.choice([SET, DELETE])),
                         int(rng.integers(-10**12, 10**12)), int(rng.integers(0, 10**6)))
                for _ in range(n_more)]
    trades = [Trade(int(rng.integers(1, 10**12)), int(rng.integers(1, 10**6)), int(rng.integers(0, 3)))
              for _ in range(n_trades)]
    return MdDatagram(venue=int(rng.integers(0, 2**16)),
                      seq=int(rng.integers(0, 2**63)) if seq is None else seq,
                      instrument=int(rng.integers(0, 2**32)),
                      send_ts_ns=int(rng.integers(0, 2**62)), updates=tuple(updates), trades=tuple(trades))


def struct_encode(m: MdDatagram) -> bytes:
    """The contract's layout written out independently with struct."""
    length = 32 + 24 * (len(m.updates) + len(m.trades))
    out = struct.pack("<2sBBHHQIHHq", b"WM", 1, 1, length, m.venue, m.seq, m.instrument,
                      len(m.updates), len(m.trades), m.send_ts_ns)
    for u in m.updates:
        out += struct.pack("<BB6xqq", u.side, u.action, u.price, u.qty)
    for t in m.trades:
        out += struct.pack("<qqB7x", t.price, t.qty, t.aggressor)
    return out


def test_encode_matches_the_contract_layout_and_round_trips():
    rng = np.random.default_rng(1)
    for _ in range(300):
        message = random_datagram(rng)
        wire = message.encode()
        assert wire == struct_encode(message)
        assert decode_md(wire) == message


def test_best_bid_comes_before_best_ask():
    wire = MdDatagram(1, 7, 2, 3, (L2Update(BID, SET, 100, 1), L2Update(ASK, SET, 101, 2))).encode()
    assert struct.unpack_from("<Bx6xqq", wire, 32) == (BID, 100, 1)
    assert struct.unpack_from("<Bx6xqq", wire, 56) == (ASK, 101, 2)


def test_vectorised_headers_equal_scalar_decode():
    rng = np.random.default_rng(2)
    messages = [random_datagram(rng) for _ in range(500)]
    garbage = [bytes(rng.integers(0, 256, int(rng.integers(32, 80)), dtype=np.uint8)) for _ in range(50)]
    payloads = messages + garbage
    order = rng.permutation(len(payloads))
    chunks = [payloads[i].encode() if isinstance(payloads[i], MdDatagram) else payloads[i] for i in order]
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    data = np.frombuffer(b"".join(chunks), np.uint8)
    headers = decode_md_headers(data, offsets)
    valid = valid_md_headers(headers, available=[len(c) for c in chunks])
    for row, i, chunk in zip(headers, order, chunks):
        if isinstance(payloads[i], MdDatagram):
            m = payloads[i]
            assert (row["seq"], row["venue"], row["instrument"], row["send_ts_ns"]) == \
                (m.seq, m.venue, m.instrument, m.send_ts_ns)
            assert (row["n_updates"], row["n_trades"], row["length"]) == \
                (len(m.updates), len(m.trades), len(chunk))
    assert valid.tolist() == [isinstance(payloads[i], MdDatagram) for i in order]


def test_headers_past_the_end_raise():
    data = np.zeros(100, np.uint8)
    with pytest.raises(ProtocolError):
        decode_md_headers(data, [0, 69])
    with pytest.raises(ProtocolError):
        decode_md_headers(data, [-1])
    assert decode_md_headers(data, np.zeros(0, np.int64)).size == 0


def corrupt(wire: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(wire)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = MdDatagram(1, 7, 2, 3, (L2Update(BID, SET, 100, 1), L2Update(ASK, SET, 101, 2)),
                  (Trade(100, 1, BID),)).encode()


@pytest.mark.parametrize("wire", [
    b"", GOOD[:31], GOOD[:-1], GOOD + b"\0",
    corrupt(GOOD, 0, "2s", b"XX"),
    corrupt(GOOD, 2, "B", 2),
    corrupt(GOOD, 3, "B", 9),
    corrupt(GOOD, 4, "<H", len(GOOD) + 24),
    corrupt(GOOD, 4, "<H", 0),
    corrupt(GOOD, 20, "<H", 3),                # n_updates lies
    corrupt(GOOD, 22, "<H", 0),                # n_trades lies
    corrupt(GOOD, 32, "B", ASK),               # first update is not the bid
    corrupt(GOOD, 32, "B", 7),                 # unknown side
    corrupt(GOOD, 33, "B", 0),                 # unknown action
    corrupt(GOOD, 80 + 16, "B", 5),            # unknown aggressor
], ids=["empty", "short-header", "truncated", "trailing", "magic", "version", "type",
        "length-long", "length-zero", "n-updates", "n-trades", "bid-ask-order", "side",
        "action", "aggressor"])
def test_bad_datagrams_raise_protocol_error(wire):
    with pytest.raises(ProtocolError):
        decode_md(wire)


def test_encoder_refuses_datagrams_without_best_bid_and_ask():
    with pytest.raises(ProtocolError):
        MdDatagram(1, 1, 1, 1, (L2Update(BID, SET, 1, 1),)).encode()
    with pytest.raises(ProtocolError):
        MdDatagram(1, 1, 1, 1, (L2Update(ASK, SET, 1, 1), L2Update(BID, SET, 1, 1))).encode()


def test_protocol_error_is_a_user_error():
    from lab.errors import USER_ERRORS
    assert issubclass(ProtocolError, ValueError)
    assert issubclass(ProtocolError, USER_ERRORS)
