"""Property tests (issue 16) of TCP reassembly (lab.analysis.reassembly) and of the order flows
lab measure reads part by part (lab.analysis.flows): a stream of order messages cut into any
segments, delivered in any order, with any of its ranges delivered again (retransmissions,
repacketised), reassembles into the same bytes and the same messages.

The expectations come from how the streams were built: the messages and their offsets, the
fields of each new order, and which segment first delivered each byte (painted in arrival
order, byte by byte).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simplefix
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.messages import BUY, IOC, SELL
from engine.protocol import fix, orders, ouch42, registry
from lab.analysis.flows import SEGMENT_COLUMNS, OrderFlows
from lab.analysis.match import parse_match
from lab.analysis.reassembly import Segments, reassemble
from wire_mutations import examples

u32 = st.integers(0, 2**32 - 1)
TRIGGERS = st.integers(0, 2**63 - 1)
FIX_TIMES = st.integers(946_684_800_000, 4_102_444_800_000).map(lambda ms: ms * 10**6)


@dataclass
class Built:
    """An order stream and what it holds, as built."""
    protocol: str
    messages: list[bytes]
    new_orders: list[tuple[int, int, int]]       # (index of the message, qty, trigger seq or client order id)

    @property
    def stream(self) -> bytes:
        return b"".join(self.messages)

    def offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum([len(m) for m in self.messages])]).tolist()


@st.composite
def binary_streams(draw) -> Built:
    messages, new = [], []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)):
            qty, trigger = draw(st.integers(-5, 10**9)), draw(TRIGGERS)
            new.append((len(messages), qty, trigger))
            messages.append(orders.NewOrder(draw(u32), draw(st.integers(0, 2**64 - 1)), trigger, draw(u32),
                                            draw(st.sampled_from((BUY, SELL))), draw(st.integers(-2**63, 2**63 - 1)),
                                            qty, IOC, draw(st.integers(0, 1))).encode())
        else:
            messages.append(orders.Cancel(draw(u32), draw(st.integers(0, 2**64 - 1)), draw(TRIGGERS),
                                          draw(st.integers(0, 2**64 - 1))).encode())
    return Built("binary", messages, new)


@st.composite
def fix_streams(draw) -> Built:
    """Fixed-width NewOrderSingles and cancels (engine.protocol.fix), and NewOrderSingles as any FIX
    engine writes them (simplefix: fields of any width, in any order)."""
    messages, new = [], []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(("fixed", "cancel", "simplefix")))
        qty, trigger = draw(st.integers(0, 10**10 - 1)), draw(st.integers(0, 10**18 - 1))
        if kind == "fixed":
            new.append((len(messages), qty, trigger))
            messages.append(fix.NewOrderSingle(
                "WIRELAB1", "VENUEGW1", draw(st.integers(1, 10**9 - 1)), draw(FIX_TIMES), draw(st.integers(0, 10**10 - 1)),
                draw(st.integers(0, 10**18 - 1)), trigger, "I0000007", draw(st.sampled_from((1, 2))), qty,
                draw(st.integers(0, 10**18 - 1)), draw(FIX_TIMES)).encode())
        elif kind == "cancel":
            messages.append(fix.OrderCancelRequest(
                "WIRELAB1", "VENUEGW1", draw(st.integers(1, 10**9 - 1)), draw(FIX_TIMES), 1, 2, 3, trigger,
                "I0000007", 1, qty, draw(FIX_TIMES)).encode())
        else:
            message = simplefix.FixMessage()
            message.append_pair(8, f"FIX.4.{draw(st.integers(0, 4))}", header=True)
            message.append_pair(35, "D", header=True)
            fields = [(38, str(qty)), (fix.TRIGGER_SEQ_TAG, str(trigger)), (55, "I7"), (54, "1"),
                      (58, draw(st.text("abc XYZ", max_size=30)) or "-")]
            for tag, value in draw(st.permutations(fields)):
                message.append_pair(tag, value)
            new.append((len(messages), qty, trigger))
            messages.append(message.encode())
    return Built("fix", messages, new)


@st.composite
def ouch_streams(draw) -> Built:
    """A login, then Enter Orders (the engine's client encodes them), cancels and heartbeats. OUCH
    carries no trigger: the third field of a new order is its client order id (its token)."""
    client = ouch42.PROTOCOL.client(1, "WLAB01", "VENUE")
    messages = [client.login()] if draw(st.booleans()) else []
    new = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("order", "order", "cancel", "heartbeat")))
        wire_id = draw(st.integers(0, 10**14 - 1))
        if kind == "order":
            qty = draw(st.integers(0, 2**32 - 1))
            new.append((len(messages), qty, wire_id))
            messages.append(client.order(wire_id, 0, draw(st.integers(0, 9_999_999)), draw(st.sampled_from((BUY, SELL))),
                                         IOC, draw(st.integers(0, 2**32 - 1)) * ouch42.PRICE_SCALE, qty))
        elif kind == "cancel":
            messages.append(client.cancel(draw(st.integers(0, 10**14 - 1)), 0, wire_id, 7, BUY, 1))
        else:
            messages.append(ouch42.soup(b"R"))
    return Built("ouch42", messages, new)


STREAMS = st.one_of(binary_streams(), fix_streams(), ouch_streams())


@st.composite
def deliveries(draw, size: int) -> list[tuple[int, int]]:
    """Byte ranges [a, b) of a stream of `size` bytes that deliver all of it: a segmentation, plus
    ranges delivered again (retransmitted as they were, or repacketised), in any order."""
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=10))) if size > 1 else []
    bounds = [0, *cuts, size]
    pieces = list(zip(bounds, bounds[1:]))
    again = draw(st.lists(st.one_of(
        st.sampled_from(pieces),
        st.integers(0, size - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, min(size, a + 80))))),
        max_size=4))
    return draw(st.permutations(pieces + again))


@dataclass
class Arrival:
    flow: int
    seq: int          # TCP seq (mod 2**32)
    payload: bytes
    syn: bool = False
    start: int = 0    # stream offset of its first payload byte


@st.composite
def arrivals(draw, streams: list[bytes], known_start: bool) -> list[Arrival]:
    """Each flow's deliveries, flows interleaved at random, each flow's ISN anywhere in the seq space
    (so streams cross 2**32). A flow may have a SYN, arriving at any time, or none. With
    `known_start`, what arrives first tells where the stream starts: its SYN, or (a capture that
    began mid-connection) a segment holding its first byte."""
    per_flow = []
    for flow, stream in enumerate(streams):
        isn = draw(u32)
        rows = [Arrival(flow, (isn + 1 + a) % 2**32, stream[a:b], start=a) for a, b in draw(deliveries(len(stream)))]
        syn = Arrival(flow, isn, b"", syn=True)
        with_syn = draw(st.booleans())
        if known_start and with_syn:
            rows.insert(0, syn)
        elif known_start:
            rows.insert(0, rows.pop(next(k for k, row in enumerate(rows) if row.start == 0)))
        elif with_syn:
            rows.insert(draw(st.integers(0, len(rows))), syn)
        per_flow.append(rows)
    merged = []
    while any(per_flow):
        flow = draw(st.sampled_from([f for f, rows in enumerate(per_flow) if rows]))
        merged.append(per_flow[flow].pop(0))
    return merged


def segments_of(rows: list[Arrival]) -> Segments:
    lengths = np.array([len(r.payload) for r in rows], np.int64)
    return Segments(flow=np.array([r.flow for r in rows], np.int64), seq=np.array([r.seq for r in rows], np.uint32),
                    length=lengths, captured=lengths.copy(), syn=np.array([r.syn for r in rows], bool),
                    payload=np.frombuffer(b"".join(r.payload for r in rows) or b"\0", np.uint8),
                    where=(np.cumsum(lengths) - lengths).astype(np.int64))


def first_arrival(rows: list[Arrival], flow: int, size: int) -> list[int]:
    """The model: each byte of the flow's stream painted by the first segment (arrival index) holding it."""
    first = [-1] * size
    for index, row in enumerate(rows):
        if row.flow == flow:
            for k in range(row.start, row.start + len(row.payload)):
                if first[k] < 0:
                    first[k] = index
    return first


def framed(stream: bytes) -> list[bytes]:
    protocol = registry.sniff_orders(stream[:registry.sniff_bytes()])
    frames = protocol.frame(stream)
    assert frames.error is None and frames.consumed == len(stream)
    return [stream[a:a + n] for a, n in zip(frames.offset.tolist(), frames.length.tolist())]


@settings(max_examples=examples(60))
@given(data=st.data())
def test_any_segmentation_and_reordering_reassembles_the_same_messages(data):
    built = data.draw(st.lists(STREAMS, min_size=1, max_size=2), label="streams")
    rows = data.draw(arrivals([b.stream for b in built], known_start=False), label="arrivals")
    streams = reassemble(segments_of(rows), len(built))
    delivered = sum(len(r.payload) for r in rows)
    assert streams.duplicate_bytes == delivered - sum(len(b.stream) for b in built)
    for flow, b in enumerate(built):
        assert streams.stream(flow).tobytes() == b.stream
        assert framed(b.stream) == b.messages                # the framer, on the unsegmented stream
        assert streams.first_arrival(np.full(len(b.stream), flow), np.arange(len(b.stream))).tolist() == \
            first_arrival(rows, flow, len(b.stream))


def expected_orders(b: Built, rows: list[Arrival], flow: int, stop: int, links: dict[int, int]) -> list[tuple]:
    """(flow, stream offset, trigger, completing packet, first bit) of the stream's new orders that
    trade (qty != 0) and end at or before `stop`."""
    first = first_arrival(rows, flow, len(b.stream))
    offsets = b.offsets()
    out = []
    for index, qty, key in b.new_orders:
        start, end = offsets[index], offsets[index + 1]
        if qty == 0 or end > stop:
            continue
        trigger = links.get(key, -1) if b.protocol == "ouch42" else key
        span = first[start:end]
        out.append((flow, start, trigger, max(span), 1000 * min(span)))
    return out


def hole_stop(rows: list[Arrival], flow: int, size: int, part_ends: list[int]) -> int:
    """Where lab.analysis.flows stops a flow, by its documented rule: a hole (a byte missing below
    one that arrived) still at the same place at the end of the next part, or at the end of the
    last part, stops the flow there. `size` if it never stops."""
    have = np.zeros(size + 1, bool)             # have[size] stays False: argmin finds the first hole
    seen_to, hole_before = 0, -1
    done = 0
    for end in part_ends:
        for row in rows[done:end]:
            if row.flow == flow and row.payload:
                have[row.start:row.start + len(row.payload)] = True
                seen_to = max(seen_to, row.start + len(row.payload))
        done = end
        contiguous = int(np.argmin(have))
        hole = seen_to > contiguous
        if hole and (hole_before == contiguous or end == part_ends[-1]):
            return contiguous
        hole_before = contiguous if hole else -1
    return size


KEYS = [(0x0A00000A_0A000014, 40000 << 16 | 9000), (0x0A00000B_0A000014, 40001 << 16 | 9001)]


def add_part(flows: OrderFlows, rows: list[Arrival], first_index: int, final: bool) -> dict:
    """One part's segments as lab measure collects them (SEGMENT_COLUMNS); first bits and packet
    numbers follow arrival order."""
    lengths = np.array([len(r.payload) for r in rows], np.int64)
    index = np.arange(first_index, first_index + len(rows), dtype=np.int64)
    new = {"key_ips": np.array([KEYS[r.flow][0] for r in rows], np.uint64),
           "key_ports": np.array([KEYS[r.flow][1] for r in rows], np.uint32),
           "seq": np.array([r.seq for r in rows], np.uint32), "length": lengths, "captured": lengths.copy(),
           "syn": np.array([r.syn for r in rows], bool), "where": (np.cumsum(lengths) - lengths).astype(np.int64),
           "first_bit_ns": 1000 * index, "frame_len": lengths + 54, "packet": index}
    assert set(new) == set(SEGMENT_COLUMNS)
    payload = np.frombuffer(b"".join(r.payload for r in rows), np.uint8)
    return flows.add(new, payload, final)


@settings(max_examples=examples(60))
@given(data=st.data())
def test_order_flows_read_in_parts_find_the_same_orders(data):
    """lab measure's OrderFlows, the capture's segments handed over in parts cut anywhere: every new
    order that trades, at its stream offset, with its trigger (OUCH: by its token, through the links),
    the packet that completed it and the first bit of its first byte; a flow stops only at a hole
    that outlived a whole part.

    Each flow's first segment tells where its stream starts (its SYN, or its first byte): a flow
    without a SYN whose first part lacks its lowest byte starts where that part's lowest byte is,
    and the bytes before it that come later are duplicates (one pass over the whole capture starts
    at the lowest byte of all): the parts then find fewer orders than one pass."""
    built = data.draw(st.lists(STREAMS, min_size=1, max_size=2), label="streams")
    rows = data.draw(arrivals([b.stream for b in built], known_start=True), label="arrivals")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), min_size=1, max_size=4), label="part boundaries"))
    part_ends = [*cuts, len(rows)]
    ouch_ids = [key for b in built if b.protocol == "ouch42" for _, _, key in b.new_orders]
    linked = data.draw(st.lists(st.sampled_from(ouch_ids), unique=True), label="linked") if ouch_ids else []
    links = {key: 1000 + k for k, key in enumerate(sorted(linked))}
    flows = OrderFlows(parse_match("trigger"), None, None,
                       (np.array(sorted(links), np.int64), np.array([links[k] for k in sorted(links)], np.int64)))
    found, start = [], 0
    for k, end in enumerate(part_ends):
        out = add_part(flows, rows[start:end], start, final=k == len(part_ends) - 1)
        assert set(out) >= {"trigger_seq", "order_first_bit_ns", "flow", "stream_offset", "packet"}
        found += zip(out["flow"].tolist(), out["stream_offset"].tolist(), out["trigger_seq"].tolist(),
                     out["packet"].tolist(), out["order_first_bit_ns"].tolist())
        start = end
    flow_id = {flows.ids[KEYS[f]]: f for f in range(len(built))}
    found = sorted((flow_id[f], *rest) for f, *rest in found)
    expected, stops = [], []
    for flow, b in enumerate(built):
        stop = hole_stop(rows, flow, len(b.stream), part_ends)
        stops.append(stop < len(b.stream))
        expected += expected_orders(b, rows, flow, stop, links)
    assert found == sorted(expected)
    assert flows.framing_errors == []
    assert set(flows.protocols()) <= {b.protocol for b in built}
    if not any(stops):
        assert flows.protocols() == sorted({b.protocol for b in built})
        figures = flows.figures()
        assert figures["bytes_after_holes"] == 0
        assert figures["duplicate_bytes"] == sum(len(r.payload) for r in rows) - sum(len(b.stream) for b in built)
        assert figures["void_orders"] == sum(qty == 0 for b in built for _, qty, _ in b.new_orders)
