"""The synth's frame table and its TCP: frames placed on each direction of the wire (FIFO, or
in the gaps the feed leaves), sequence and ack numbers, and the venue's responses with their
splits, swaps and retransmissions."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from engine.protocol.registry import order_protocol
from lab.capture.frames import MIN_CAPTURED_FRAME, TCP_ACK, TCP_FRAME_HEADER, TCP_PSH, UDP_FRAME_HEADER
from lab.capture.records import INBOUND, OUTBOUND
from lab.errors import LabError
from lab.synth.draws import lognormal, pick
from simulator.framing import ethernet_slot_ns, ethernet_wire_ns

# Frame kinds in the frame table.
KIND_MD, KIND_HOST_TCP, KIND_VENUE_TCP = 0, 1, 2
VENUE_FLOOR_NS, VENUE_MEDIAN_NS = 3_000, 5_000
REJECT_FRACTION, FILL_FRACTION, FILL_LATER_FRACTION = 0.02, 0.30, 0.5
FILL_DELAY_NS = (1_000, 20_000)
RESPONSE_SWAPPED_FRACTION = 0.01
RTO_NS = (1_000_000, 5_000_000)                  # a tuned rto_min: spurious retransmissions
RETRANSMIT_FRACTION = 0.005                      # of orders, and of responses


@dataclass
class Frames:
    """The frame table: one row per frame, in stamp order once finished."""

    first_ns: np.ndarray       # int64: first bit at the tap
    kind: np.ndarray           # uint8: KIND_*
    length: np.ndarray         # int64: payload bytes (MD datagram or TCP payload)
    ref: np.ndarray            # int64: MD index, or offset of the payload in its TCP stream
    seq: np.ndarray            # int64: TCP sequence number relative to the sender's ISN
    ack: np.ndarray            # int64: TCP ack number relative to the peer's ISN (-1: no ACK flag)
    flags: np.ndarray          # uint8: TCP flags

    @staticmethod
    def concat(parts: list[Frames]) -> Frames:
        return Frames(*(np.concatenate([getattr(p, name) for p in parts])
                        for name in Frames.__dataclass_fields__))

    def take(self, index) -> Frames:
        return Frames(*(getattr(self, name)[index] for name in Frames.__dataclass_fields__))

    @property
    def direction(self) -> np.ndarray:
        return np.where(self.kind == KIND_HOST_TCP, OUTBOUND, INBOUND).astype(np.int8)

    @property
    def frame_len(self) -> np.ndarray:
        header = np.where(self.kind == KIND_MD, UDP_FRAME_HEADER.itemsize, TCP_FRAME_HEADER.itemsize)
        return np.maximum(header + self.length, MIN_CAPTURED_FRAME)


def tcp_frames(first_ns, kind, ref, length, seq, ack, flags) -> Frames:
    """TCP frames from columns (arrays, or one value for all)."""
    count = len(first_ns)

    def column(value, dtype):
        return np.broadcast_to(np.asarray(value, dtype), (count,)).copy()

    return Frames(column(first_ns, np.int64), column(kind, np.uint8), column(length, np.int64),
                  column(ref, np.int64), column(seq, np.int64), column(ack, np.int64),
                  column(flags, np.uint8))


def fifo_starts(ready: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """First bits of frames sent in this order: start_i = max(ready_i, start_{i-1} + slot_{i-1}).

    The Lindley recursion in closed form: with C the exclusive cumulative slots,
    start = C + running max of (ready - C).
    """
    before = np.cumsum(slot) - slot
    return before + np.maximum.accumulate(ready - before)


def fill_gaps(ready: np.ndarray, slot: np.ndarray, busy_start: np.ndarray, busy_slot: np.ndarray) -> np.ndarray:
    """First bits of low-priority frames (in this order) that only use the gaps between
    fixed frames [busy_start, busy_start + busy_slot), FIFO among themselves."""
    start = fifo_starts(ready, slot)
    busy_end = busy_start + busy_slot
    for _ in range(10_000):
        last_busy = np.searchsorted(busy_start, start + slot, side="left") - 1
        end_of_clash = busy_end[np.maximum(last_busy, 0)]
        clash = (last_busy >= 0) & (end_of_clash > start)
        if not clash.any():
            return start
        start[clash] = end_of_clash[clash]
        start = fifo_starts(start, slot)
    raise LabError("the line rate is too low for this traffic: the inbound wire never goes idle")


def schedule(parts: list[Frames], place) -> tuple[Frames, list[np.ndarray]]:
    """Put the frames of all parts in order of readiness, place them on the wire with
    `place`, and say where each part's rows went."""
    frames = Frames.concat(parts)
    by_ready = np.argsort(frames.first_ns, kind="stable")
    frames = frames.take(by_ready)
    frames.first_ns = place(frames)
    row_of = np.empty_like(by_ready)
    row_of[by_ready] = np.arange(by_ready.size)
    bounds = np.cumsum([0] + [p.first_ns.size for p in parts])
    return frames, [row_of[a:b] for a, b in itertools.pairwise(bounds)]


def _first_copies(frames: Frames, sender_kind: int) -> Frames:
    """The sender's data segments in sequence order, without retransmitted copies."""
    data = frames.take(np.flatnonzero((frames.kind == sender_kind) & (frames.length > 0)))
    data = data.take(np.lexsort((data.first_ns, data.seq)))
    first = np.concatenate([[True], data.seq[1:] != data.seq[:-1]])
    return data.take(np.flatnonzero(first))


def _received_bytes(frames: Frames, sender_kind: int, at_ns: np.ndarray, delay_ns: int, rate: int):
    """Bytes of the sender's stream received in order `delay_ns` after the tap, by each `at_ns`."""
    data = _first_copies(frames, sender_kind)
    whole_at = np.maximum.accumulate(data.first_ns + ethernet_wire_ns(data.frame_len, rate) + delay_ns)
    count = np.searchsorted(whole_at, at_ns, side="right")
    return np.where(count > 0, (data.seq - 1 + data.length)[np.maximum(count - 1, 0)], 0)


def _sent_bytes(frames: Frames, sender_kind: int, at_ns: np.ndarray):
    """Bytes of the sender's stream put on the wire before each `at_ns` (its next seq - 1)."""
    data = _first_copies(frames, sender_kind)
    data = data.take(np.argsort(data.first_ns, kind="stable"))
    count = np.searchsorted(data.first_ns, at_ns, side="left")
    sent = np.maximum.accumulate(data.seq - 1 + data.length)
    return np.where(count > 0, sent[np.maximum(count - 1, 0)], 0)


def set_seq_and_acks(frames: Frames, one_way: int, rate: int) -> None:
    """Ack numbers (what each side has received in order when a frame leaves its sender)
    and the seq of pure acks (what the sender has sent so far)."""
    for kind, peer, leaves, delay in ((KIND_HOST_TCP, KIND_VENUE_TCP, 0, 0),
                                      (KIND_VENUE_TCP, KIND_HOST_TCP, -one_way, one_way)):
        mine = frames.kind == kind
        frames.ack[mine] = 1 + _received_bytes(frames, peer, frames.first_ns[mine] + leaves, delay, rate)
        pure = mine & (frames.length == 0)
        frames.seq[pure] = 1 + _sent_bytes(frames, kind, frames.first_ns[pure])


def venue_responses(rng, config, order: dict, order_done, retx_done, one_way: int, clock_ns: int, stream_at: int):
    """The gateway's frames, ready at the tap (before they share the wire), as
    [responses, retransmitted responses, duplicate acks], and its responses' bytes, which
    start at `stream_at` in its stream."""
    n = order_done.size
    arrived = order_done + one_way
    ready = np.maximum.accumulate(arrived + lognormal(rng, n, VENUE_FLOOR_NS, VENUE_MEDIAN_NS, 0.4)) + one_way
    outcome = rng.random(n)
    rejected = outcome < REJECT_FRACTION
    filled = ~rejected & (outcome < REJECT_FRACTION + FILL_FRACTION)
    fill_later = filled & (rng.random(n) < FILL_LATER_FRACTION)
    swapped = pick(rng, np.flatnonzero(fill_later), RESPONSE_SWAPPED_FRACTION / FILL_LATER_FRACTION)

    # Per order: [reject] or [ack] or [ack][fill], back to back in the stream. The venue's
    # clock (from clock_ns) is content only, not used for timing.
    stream, first_len, fill_len = order_protocol(config.order_format).synth_replies(
        dict(order, exec_id=9_000_000 + np.arange(n)), rejected, filled, clock_ns + np.arange(n))
    response_len = first_len + fill_len
    response_at = stream_at + np.cumsum(response_len) - response_len

    # Segments in send order: one per response, or [ack][fill] when the fill comes later;
    # a swapped pair puts the fill on the wire first.
    seg_order = np.repeat(np.arange(n), np.where(fill_later, 2, 1))
    second = np.zeros(seg_order.size, bool)
    second[1:] = seg_order[1:] == seg_order[:-1]
    is_two = fill_later[seg_order]
    is_swapped = np.isin(seg_order, swapped)
    fill_part = is_two & (second ^ is_swapped)
    seg_start = response_at[seg_order] + np.where(fill_part, first_len[seg_order], 0)
    seg_len = np.where(is_two, np.where(fill_part, fill_len[seg_order], first_len[seg_order]),
                       response_len[seg_order])
    fill_delay = rng.integers(*FILL_DELAY_NS, size=n)
    seg_ready = ready[seg_order] + np.where(is_two & second & ~is_swapped, fill_delay[seg_order], 0)
    seg_ready = np.maximum.accumulate(seg_ready)
    segments = tcp_frames(seg_ready, KIND_VENUE_TCP, seg_start, seg_len, 1 + seg_start, 0,
                           TCP_ACK | TCP_PSH)
    resent = segments.take(pick(rng, np.arange(seg_order.size), RETRANSMIT_FRACTION))
    resent.first_ns = resent.first_ns + rng.integers(*RTO_NS, size=resent.first_ns.size)
    dup_ack = tcp_frames(retx_done + 2 * one_way + 1_000, KIND_VENUE_TCP, 0, 0, 0, 0, TCP_ACK)
    counts = {"responses": n, "rejects": int(rejected.sum()), "fills": int(filled.sum()),
              "swapped_responses": int(swapped.size), "retransmitted_responses": int(resent.first_ns.size)}
    return [segments, resent, dup_ack], stream, counts


def session_frames(host_open: bytes, venue_open: bytes, host_close: bytes, venue_close: bytes, host_len: int,
                   venue_len: int, open_at: int, one_way: int, rate: int, data: Frames, md_first, md_slot) -> list:
    """A session's opening and closing as TCP data frames (none for a protocol without them): the
    client's opening at `open_at`, the venue's answer once it has arrived, and after the last
    data frame the client's closing, then the venue's (in the feed's gaps)."""
    frames = []
    if host_open:
        frames.append(tcp_frames([open_at], KIND_HOST_TCP, 0, len(host_open), 1, 0, TCP_ACK | TCP_PSH))
    if venue_open:
        answer = open_at + ethernet_wire_ns(TCP_FRAME_HEADER.itemsize + len(host_open), rate) + 2 * one_way + 5_000
        frames.append(tcp_frames([answer], KIND_VENUE_TCP, 0, len(venue_open), 1, 0, TCP_ACK | TCP_PSH))
    last = int((data.first_ns + ethernet_slot_ns(data.frame_len, rate)).max(initial=open_at))
    if host_close:
        at = host_len - len(host_close)
        frames.append(tcp_frames([last + 20_000], KIND_HOST_TCP, at, len(host_close), 1 + at, 0, TCP_ACK | TCP_PSH))
    if venue_close:
        at = venue_len - len(venue_close)
        close = tcp_frames([last + 30_000], KIND_VENUE_TCP, at, len(venue_close), 1 + at, 0, TCP_ACK | TCP_PSH)
        close.first_ns = fill_gaps(close.first_ns, ethernet_slot_ns(close.frame_len, rate), md_first, md_slot)
        frames.append(close)
    return frames
